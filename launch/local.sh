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
# The launcher tags every line with its rank (`[1,0]<stdout>:` from mpirun, `[0]<stdout>:` from
# Gloo): rank 0's lines are shown bare, another rank's as `rank N: `, through two filters that
# read from FIFOs, so stdout and stderr stay apart. Started before the job, SIGINT-ignoring (as
# background commands of a script are), they end when the job's last process closes its output.
untag() {
  sed -u -E -e 's/^\[([0-9]+,)?0\]<std(out|err)>://' \
    -e 's/^\[([0-9]+,)?([0-9]+)\]<std(out|err)>:/rank \2: /'
}
fifos=$(mktemp -d "${TMPDIR:-/tmp}/hvd_cifar_local.XXXXXX")
mkfifo "$fifos/stdout" "$fifos/stderr"
untag < "$fifos/stdout" &
untag_stdout=$!
untag < "$fifos/stderr" >&2 &
untag_stderr=$!
setsid "$bin/horovodrun" -np "$ranks" -H "localhost:$ranks" "--$controller" \
  "$bin/python" -m hvd_cifar.train "$@" > "$fifos/stdout" 2> "$fifos/stderr" &
job=$!
stopping=0
stop() {
  if [ "$stopping" = 0 ]; then
    stopping=1
    echo "launch/local.sh: stopping: every rank ends after rank 0's checkpoint (kill -9 -$job ends the job at once)" >&2
    kill -TERM -- "-$job" 2>/dev/null || true
  fi
}
job_alive() {  # any process left in the job's session: mpirun and the ranks outlive its pid
  local stat line session
  for stat in /proc/[0-9]*/stat; do
    { read -r line < "$stat"; } 2>/dev/null || continue
    line=${line##*) }  # the fields after the command name, which may hold spaces
    read -r _ _ _ session _ <<< "$line"
    [ "$session" = "$job" ] && return 0
  done
  return 1
}
trap stop INT TERM HUP
while true; do
  status=0
  wait "$job" || status=$?
  kill -0 "$job" 2>/dev/null || break
done
# horovodrun --mpi runs mpirun under `sh -c`, whose end (on SIGTERM) is not the job's: return
# only when every process of the job has stopped, so nothing writes after the prompt is back.
while job_alive; do
  sleep 0.5
done
wait "$untag_stdout" "$untag_stderr" 2>/dev/null || true
rm -rf "$fifos"
exit "$status"
