#!/usr/bin/env bash
# Elastic training: keep going while hosts leave (spot instances, failures) or join.
#
#   launch/elastic.sh HOSTS_FILE MIN_NP MAX_NP [train flags...]
#   launch/elastic.sh hosts.elastic 2 8 --data_dir /shared/cifar --train_dir runs/elastic
#
# HOSTS_FILE lists `host:slots` lines and may be edited while the job runs (it is read every
# second by launch/discover_hosts.sh). Starts with every slot the file lists, up to MAX_NP, and
# stops when fewer than MIN_NP remain. Elastic Horovod runs on Gloo. The trainer commits its
# state in memory every --commit_every_steps steps and rescales the learning rate at every
# change; the data must already be in --data_dir on every host. NETWORK_INTERFACE names the
# interface the workers talk over (e.g. ens5; lo for hosts that are all this machine): without
# it Horovod waits until two hosts are listed, to find an interface they share. The ranks run
# HOST_PYTHON, by the same path on every host (see launch/common.sh).
set -euo pipefail
usage="usage: launch/elastic.sh HOSTS_FILE MIN_NP MAX_NP [train flags...]"
hosts_file=${1:?$usage}
min_np=${2:?$usage}
max_np=${3:?$usage}
shift 3
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
for number in "$min_np" "$max_np"; do
  if ! [[ "$number" =~ ^[1-9][0-9]*$ ]]; then
    echo "hvd_cifar: error: MIN_NP and MAX_NP must be positive integers, got '$number'" >&2
    exit 2
  fi
done
HOSTS_FILE=$(cd "$(dirname "$hosts_file")" && pwd)/$(basename "$hosts_file")
export HOSTS_FILE
slots=$("$repo_root/launch/discover_hosts.sh" | total_slots)
np=$(( slots < max_np ? slots : max_np ))
if (( np < min_np )); then
  echo "hvd_cifar: error: $HOSTS_FILE lists $slots slots, fewer than MIN_NP $min_np" >&2
  exit 2
fi
options=(--gloo -np "$np" --min-np "$min_np" --max-np "$max_np"
         --host-discovery-script "$repo_root/launch/discover_hosts.sh")
if [ -n "${NETWORK_INTERFACE:-}" ]; then
  options+=(--network-interface "$NETWORK_INTERFACE")
fi
echo "launch/elastic.sh: $np ranks to start, between $min_np and $max_np, hosts from $HOSTS_FILE"
exec "$bin/horovodrun" "${options[@]}" "$host_python" -m hvd_cifar.train --elastic "$@"
