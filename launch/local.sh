#!/usr/bin/env bash
# Train on this machine: one rank per GPU, or N CPU ranks.
#
#   launch/local.sh [-np N] [train flags...]
#   launch/local.sh -np 2 --max_steps 1000 --data_dir data
#
# The controller is Open MPI unless HVD_CONTROLLER=gloo (see launch/common.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi
ranks=$(( gpus > 0 ? gpus : 2 ))
if [ "${1:-}" = "-np" ]; then
  ranks=${2:?-np needs a number}
  shift 2
fi
if ! [[ "$ranks" =~ ^[1-9][0-9]*$ ]]; then
  echo "hvd_cifar: error: -np must be a positive integer, got '$ranks'" >&2
  exit 2
fi
if (( gpus > 0 && ranks > gpus )); then
  echo "hvd_cifar: error: -np $ranks is more than the $gpus GPUs of this host" >&2
  exit 2
fi
echo "launch/local.sh: $ranks ranks on $(hostname) ($([ "$gpus" -gt 0 ] && echo "$gpus GPUs" || echo CPU)), $controller controller"

# The job runs in a session of its own, so a terminal's Ctrl-C reaches this script alone. The
# first Ctrl-C (or SIGTERM/SIGHUP, as make and supervisors send) is passed on once as SIGTERM,
# and rank 0 writes a checkpoint; later ones are not passed on, because mpirun ends its ranks at
# once on a second signal within 5 s, however far their checkpoint has got.
setsid "$bin/horovodrun" -np "$ranks" -H "localhost:$ranks" "--$controller" \
  "$bin/python" -m hvd_cifar.train "$@" &
job=$!
stopping=0
stop() {
  if [ "$stopping" = 0 ]; then
    stopping=1
    echo "launch/local.sh: stopping: every rank ends after rank 0's checkpoint (kill -9 -$job ends the job at once)" >&2
    kill -TERM -- "-$job" 2>/dev/null || true
  fi
}
trap stop INT TERM HUP
while true; do
  status=0
  wait "$job" || status=$?
  kill -0 "$job" 2>/dev/null || break
done
exit "$status"
