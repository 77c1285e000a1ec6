#!/usr/bin/env bash
# Check that the hosts of a Horovod hostfile can run hvd_cifar together, before launching.
#
#   launch/check_cluster.sh HOSTFILE        (lines: `host slots=N`, `host:N` or `host`)
#
# For every host: reachable by ssh without a password; the same Python, TensorFlow and Horovod
# versions and the same Horovod build (TensorFlow, Gloo, MPI, NCCL) as this machine; at least
# `slots` GPUs when this machine has GPUs; its hostname not resolving to a loopback address
# (Horovod 0.28.1's Gloo ranks then try to reach each other at 127.0.x.x and fail); and the data
# present in DATA_DIR or the archive at DATA_URL reachable. Prints every problem, then exits 1
# if there was any.
#
# Environment: HOST_PYTHON (the interpreter on every host, see launch/common.sh), DATA_DIR
# (default data, relative to this folder on every host), DATA_URL, SSH_TIMEOUT (seconds,
# default 10).
set -uo pipefail
hostfile=${1:?usage: launch/check_cluster.sh HOSTFILE}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
data_dir=${DATA_DIR:-data}
# Without DATA_URL, hvd_cifar.check's own default: the official archive.
data_url=${DATA_URL:-}
ssh_options=(-o BatchMode=yes -o ConnectTimeout="${SSH_TIMEOUT:-10}")

[ -r "$hostfile" ] || { echo "hvd_cifar: error: cannot read hostfile $hostfile" >&2; exit 2; }

field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }
# One line of key=value pairs describing a host: what must match everywhere, and what it has.
report_command="-m hvd_cifar.check --host_report --data_dir '$data_dir'${data_url:+ --data_url '$data_url'}"

local_report=$(cd "$repo_root" && "$host_python" -m hvd_cifar.check --host_report \
  --data_dir "$data_dir" ${data_url:+--data_url "$data_url"} 2>/dev/null | tail -n 1)
[ -n "$local_report" ] || { echo "hvd_cifar: error: $host_python cannot import tensorflow and horovod here" >&2; exit 2; }
local_versions=$(field "$local_report" versions)
local_gpus=$(field "$local_report" gpus)

problems=0
problem() { echo "check_cluster: $1: $2"; problems=$((problems + 1)); }
hosts=0
while read -r host slots; do
  hosts=$((hosts + 1))
  if ! ssh "${ssh_options[@]}" "$host" true </dev/null >/dev/null 2>&1; then
    problem "$host" "not reachable by ssh without a password (ssh $host true failed)"
    continue
  fi
  report=$(ssh "${ssh_options[@]}" "$host" \
    "cd '$repo_root' 2>/dev/null; '$host_python' $report_command" \
    </dev/null 2>/dev/null | tail -n 1)
  if [ -z "$report" ]; then
    problem "$host" "$host_python cannot import tensorflow and horovod there (install the same environment on every host)"
    continue
  fi
  versions=$(field "$report" versions)
  [ "$versions" = "$local_versions" ] ||
    problem "$host" "build differs: $versions there, $local_versions here"
  gpus=$(field "$report" gpus)
  if (( local_gpus > 0 && gpus < slots )); then
    problem "$host" "$gpus GPUs visible for $slots slots"
  fi
  case $(field "$report" address) in
    127.*) problem "$host" "its hostname $(field "$report" hostname) resolves to $(field "$report" address): Gloo ranks would connect to loopback; map it to the host's own address in /etc/hosts" ;;
  esac
  [ "$(field "$report" data)" != False ] ||
    problem "$host" "no CIFAR-10 in $data_dir and ${data_url:-the official archive} is not reachable from it"
done < <(hostfile_entries "$hostfile")

if (( problems )); then
  echo "hvd_cifar: error: $problems problem$( ((problems == 1)) || echo s) on the hosts of $hostfile (listed above)" >&2
  exit 1
fi
echo "check_cluster: $hosts host$( ((hosts == 1)) || echo s) ready ($local_versions, $local_gpus GPUs here)"
