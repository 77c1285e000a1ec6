#!/usr/bin/env bash
# Check a Slurm allocation before a long run: every task runs hvd_cifar.check (GPUs against
# nvidia-smi, CUDA, XLA, an exact all-reduce and its bandwidth across the nodes, stragglers,
# disk, MPI alone). A few minutes of the same shape as the training job.
#
#   sbatch slurm/check.sh [check flags...]           e.g. sbatch --nodes=4 slurm/check.sh --json
#
# The report is in hvd_cifar-check-<job id>.out; the job fails when a check fails. Environment:
# HVD_CIFAR_VENV, DATA_DIR, TRAIN_DIR, SRUN_MPI as in slurm/train.sh.
#
#SBATCH --job-name=hvd_cifar-check
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --time=00:15:00
#SBATCH --output=%x-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
venv=${HVD_CIFAR_VENV:-$PWD/.venv}
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
echo "slurm/check.sh: job ${SLURM_JOB_ID}, ${SLURM_NTASKS} tasks on ${SLURM_JOB_NODELIST}"
srun --mpi="${SRUN_MPI:-pmix}" --kill-on-bad-exit=1 "$venv/bin/python" -m hvd_cifar.check \
  --data_dir "${DATA_DIR:-data}" --train_dir "${TRAIN_DIR:-runs/slurm-${SLURM_JOB_ID}}" "$@"
