#!/usr/bin/env bash
# Evaluate a training run's newest checkpoint on a Slurm allocation (one GPU is plenty).
#
#   TRAIN_DIR=runs/slurm-1234 sbatch slurm/eval.sh [evaluate flags...]
#   TRAIN_DIR=runs/slurm-1234 sbatch slurm/eval.sh --eval_interval_secs 600   (follow a run)
#
# By default it evaluates once (--run_once) and writes TRAIN_DIR/eval.json; pass evaluator
# flags after the script to change that. Environment: HVD_CIFAR_VENV, DATA_DIR, TRAIN_DIR,
# SRUN_MPI as in slurm/train.sh. With several tasks each evaluates a shard and the counts are all-reduced.
#
#SBATCH --job-name=hvd_cifar-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --time=00:30:00
#SBATCH --output=%x-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
venv=${HVD_CIFAR_VENV:-$PWD/.venv}
: "${TRAIN_DIR:?set TRAIN_DIR to the training run to evaluate}"
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
flags=("$@")
[ ${#flags[@]} -gt 0 ] || flags=(--run_once)
srun --mpi="${SRUN_MPI:-pmix}" --kill-on-bad-exit=1 "$venv/bin/python" -m hvd_cifar.evaluate \
  --data_dir "${DATA_DIR:-data}" --checkpoint_dir "$TRAIN_DIR" "${flags[@]}"
