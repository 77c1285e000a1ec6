#!/usr/bin/env bash
# Train 2 CPU ranks with each of two Horovod builds (two clones with their own .venv) under MPI
# and Gloo on the same data, and print each run's weights digests: a GPU (NCCL) build must train
# on CPU to exactly the CPU build's weights (docs/results/gpu_build.md).
#
#   tools/builds_train_alike.sh CPU_CLONE NCCL_CLONE DATA_DIR [STEPS]
set -u
cpu_clone=${1:?CPU_CLONE}; nccl_clone=${2:?NCCL_CLONE}; data_dir=${3:?DATA_DIR}; steps=${4:-30}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 TF_CPP_MIN_LOG_LEVEL=2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for build in "cpu:$cpu_clone" "nccl:$nccl_clone"; do
  name=${build%%:*}; root=${build#*:}
  for controller in mpi gloo; do
    out=$work/$name-$controller
    start=$(date +%s)
    (cd "$root" && .venv/bin/horovodrun -np 2 "--$controller" .venv/bin/python -m hvd_cifar.train \
      --data_dir "$data_dir" --train_dir "$out" --max_steps "$steps" --batch_size 16 \
      --no_download --seed 3 --log_frequency 10 > "$out.log" 2>&1)
    status=$?
    echo "$name build, $controller: exit $status in $(( $(date +%s) - start )) s, $(grep -o 'weights sha256 by rank: .*' "$out.log" | sed 's/\[[0-9,]*\]<stdout>://')"
  done
done
