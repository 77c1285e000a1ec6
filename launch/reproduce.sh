#!/usr/bin/env bash
# Reproduce the tutorial's learning curve on a class-folder tree of CIFAR-10 images.
#
#   launch/reproduce.sh DATA           (DATA: a folder or tar(.gz) with train/<class>/*, test/<class>/*)
#   make reproduce DATA=../shared/data/cifar10-jpeg.tar.gz [RANKS=2] [STEPS=10000] [EVAL_EVERY=1000]
#
# Converts DATA to the binary layout, trains with horovodrun at the tutorial's schedule and
# global batch (GLOBAL_BATCH=128 split over RANKS, learning rate 0.1 and SGD: the global batch
# is the tutorial's, so neither the rate nor the optimizer follows the ranks), keeps a
# checkpoint every EVAL_EVERY steps, then evaluates each with the moving averages:
# OUT/train/eval_curve.json (step, precision @ 1, wall seconds) and eval_curve.png.
# EXTRA_TRAIN_FLAGS adds trainer flags (the last of a flag given twice counts). The controller
# is Open MPI unless HVD_CONTROLLER=gloo (see launch/common.sh).
set -euo pipefail
data=${1:?usage: launch/reproduce.sh DATA}
ranks=${RANKS:-2}
steps=${STEPS:-10000}
eval_every=${EVAL_EVERY:-1000}
global_batch=${GLOBAL_BATCH:-128}
out=${OUT:-runs/reproduce-np$ranks-b$global_batch}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if (( global_batch % ranks )); then
  echo "reproduce: error: GLOBAL_BATCH $global_batch does not split over RANKS $ranks" >&2
  exit 2
fi
mkdir -p "$out"
[ -d "$out/data/cifar-10-batches-bin" ] || "$bin/python" -m hvd_cifar.data convert "$data" "$out/data"
"$bin/horovodrun" -np "$ranks" "--$controller" "$bin/python" -m hvd_cifar.train \
  --data_dir "$out/data" --train_dir "$out/train" --no_download \
  --max_steps "$steps" --batch_size $((global_batch / ranks)) --lr 0.1 --lr_scaling none \
  --warmup_epochs 0 --optimizer sgd --checkpoint_every_steps "$eval_every" --keep_checkpoints 100000 \
  --log_frequency 100 ${EXTRA_TRAIN_FLAGS:-}
"$bin/python" -m hvd_cifar.evaluate --data_dir "$out/data" --checkpoint_dir "$out/train" \
  --all_checkpoints
echo "reproduce: learning curve in $out/train/eval_curve.json and eval_curve.png"
