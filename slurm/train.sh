#!/usr/bin/env bash
# Train hvd_cifar on a Slurm allocation: one task (Horovod rank) per GPU.
#
#   sbatch slurm/train.sh [train flags...]          e.g. sbatch slurm/train.sh --max_steps 5000
#   sbatch --nodes=4 slurm/train.sh                 4 nodes x 4 GPUs = 16 ranks
#   CPU-only partition: sbatch --partition=cpu --gpus-per-task=0 --ntasks-per-node=2 \
#                              --cpus-per-task=4 slurm/train.sh
#
# Every #SBATCH value below can be overridden on the sbatch command line. Environment (export
# before sbatch, or sbatch --export=ALL,NAME=value):
#   HVD_CIFAR_VENV  the environment holding hvd_cifar and Horovod (default: ./.venv)
#   DATA_DIR   CIFAR-10 folder, best on a shared file system (default: data)
#   TRAIN_DIR  checkpoints and events (default: runs/slurm-<job id>; the id survives a requeue,
#              so a preempted job resumes where it was; set it to continue an older run)
#   LAUNCHER   srun (default: srun --mpi=$SRUN_MPI, ranks from the MPI environment) or
#              horovodrun (horovodrun --gloo inside the allocation)
#   SRUN_MPI   pmix (default). Debian's Open MPI lacks Slurm's PMI-2: --mpi=pmi2 aborts in
#              MPI_Init there, while pmix works; sites whose Open MPI was built --with-pmi
#              can use pmi2.
#
#SBATCH --job-name=hvd_cifar
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=TERM@120
# --requeue: a preempted job goes back to the queue with the same job id (and TRAIN_DIR), gets
# SIGTERM first (the trainer checkpoints), and resumes there; --open-mode=append keeps the
# output of every start in the one %x-%j.out, where Slurm would otherwise truncate it.
# --signal=TERM@120: two minutes before the time limit every rank gets SIGTERM, and the trainer
# writes a checkpoint of the current step and exits; submit again with the same TRAIN_DIR.
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
venv=${HVD_CIFAR_VENV:-$PWD/.venv}
data_dir=${DATA_DIR:-data}
train_dir=${TRAIN_DIR:-runs/slurm-${SLURM_JOB_ID}}
launcher=${LAUNCHER:-srun}
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
echo "slurm/train.sh: job ${SLURM_JOB_ID}, ${SLURM_NTASKS} tasks on ${SLURM_JOB_NODELIST}, train_dir $train_dir"
train=(-m hvd_cifar.train --data_dir "$data_dir" --train_dir "$train_dir" "$@")
case $launcher in
  srun)
    # Horovod reads its rank and size from the MPI environment that srun --mpi sets up.
    srun --mpi="${SRUN_MPI:-pmix}" --kill-on-bad-exit=1 "$venv/bin/python" "${train[@]}" ;;
  horovodrun)
    hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST" |
            sed "s/\$/:${SLURM_NTASKS_PER_NODE:-1}/" | paste -sd, -)
    "$venv/bin/horovodrun" -np "$SLURM_NTASKS" -H "$hosts" --gloo "$venv/bin/python" "${train[@]}" ;;
  *)
    echo "hvd_cifar: error: LAUNCHER must be srun or horovodrun, got '$launcher'" >&2
    exit 2 ;;
esac
