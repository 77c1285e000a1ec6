#!/usr/bin/env bash
# Train across the machines of a Horovod hostfile (rented multi-node GPUs).
#
#   launch/multinode.sh HOSTFILE [train flags...]
#   NETWORK_INTERFACE=ens5 launch/multinode.sh hosts --data_dir /shared/cifar --train_dir runs/big
#
# First runs launch/check_cluster.sh HOSTFILE and stops on any problem it lists; then starts one
# rank per slot with horovodrun. NETWORK_INTERFACE names the interface the ranks talk over
# (horovodrun --network-interface, and NCCL_SOCKET_IFNAME for NCCL). The controller is Open MPI
# (extra mpirun options in MPI_ARGS) unless HVD_CONTROLLER=gloo. The ranks run HOST_PYTHON, by
# the same path on every host (see launch/common.sh).
set -euo pipefail
hostfile=${1:?usage: launch/multinode.sh HOSTFILE [train flags...]}
shift
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

"$repo_root/launch/check_cluster.sh" "$hostfile"

ranks=$(total_slots "$hostfile")
options=(-np "$ranks" -hostfile "$hostfile" "--$controller")
if [ -n "${NETWORK_INTERFACE:-}" ]; then
  options+=(--network-interface "$NETWORK_INTERFACE")
  export NCCL_SOCKET_IFNAME=$NETWORK_INTERFACE
fi
if [ "$controller" = mpi ] && [ -n "${MPI_ARGS:-}" ]; then
  options+=(--mpi-args="$MPI_ARGS")
fi
echo "launch/multinode.sh: $ranks ranks on the hosts of $hostfile, $controller controller"
exec "$bin/horovodrun" "${options[@]}" "$host_python" -m hvd_cifar.train "$@"
