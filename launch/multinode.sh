#!/usr/bin/env bash
# Train across the machines of a Horovod hostfile (rented multi-node GPUs).
#
#   launch/multinode.sh HOSTFILE [train flags...]
#   NETWORK_INTERFACE=ens5 launch/multinode.sh hosts --data_dir /shared/cifar --train_dir runs/big
#
# First runs launch/check_cluster.sh HOSTFILE and stops on any problem it lists; then starts one
# rank per slot with horovodrun. NETWORK_INTERFACE names the interface the ranks talk over
# (horovodrun --network-interface, and NCCL_SOCKET_IFNAME for NCCL); HVD_CONTROLLER=mpi uses
# Open MPI instead of Gloo (extra mpirun options in MPI_ARGS). HOST_PYTHON is the interpreter's
# path, the same on every host (default this checkout's .venv; PYTHON is install.sh's, the one
# the venv is made from).
set -euo pipefail
hostfile=${1:?usage: launch/multinode.sh HOSTFILE [train flags...]}
shift
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
python=${HOST_PYTHON:-$bin/python}
controller=${HVD_CONTROLLER:-gloo}

"$repo_root/launch/check_cluster.sh" "$hostfile"

ranks=$(awk '!/^[[:space:]]*(#|$)/ {
          n = 1
          for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) { sub("slots=", "", $i); n = $i }
          if ($1 ~ /:/) { split($1, parts, ":"); n = parts[2] }
          total += n
        } END { print total + 0 }' "$hostfile")
options=(-np "$ranks" -hostfile "$hostfile" "--$controller")
if [ -n "${NETWORK_INTERFACE:-}" ]; then
  options+=(--network-interface "$NETWORK_INTERFACE")
  export NCCL_SOCKET_IFNAME=$NETWORK_INTERFACE
fi
if [ "$controller" = mpi ] && [ -n "${MPI_ARGS:-}" ]; then
  options+=(--mpi-args="$MPI_ARGS")
fi
echo "launch/multinode.sh: $ranks ranks on the hosts of $hostfile, $controller controller"
exec "$bin/horovodrun" "${options[@]}" "$python" -m hvd_cifar.train "$@"
