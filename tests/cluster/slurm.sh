#!/usr/bin/env bash
# A real one-node Slurm cluster on localhost for the tests (no systemd: plain processes).
#
#   tests/cluster/slurm.sh start DIR    installs slurm-wlm and munge when missing, writes
#                                       DIR/slurm.conf, starts munged, slurmctld and slurmd,
#                                       waits until the node is idle
#   tests/cluster/slurm.sh stop DIR     cancels jobs, stops the daemons by their PID files
# Clients need SLURM_CONF=DIR/slurm.conf.
set -euo pipefail
action=${1:?start|stop}
dir=$(mkdir -p "${2:?DIR}" && cd "$2" && pwd)
conf=$dir/slurm.conf
host=$(hostname -s)

start() {
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "slurm.sh: slurm-wlm and munge are missing, and installing them needs root" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
  fi
  mkdir -p "$dir/state" "$dir/spool"
  cat > "$conf" <<CONF
ClusterName=ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  install -d -o munge -g munge -m 755 /run/munge
  if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged
  fi
  slurmctld -f "$conf"
  slurmd -f "$conf"
  for _ in $(seq 100); do
    [ "$(SLURM_CONF=$conf sinfo -h -o %T 2>/dev/null)" = idle ] && return 0
    sleep 0.3
  done
  echo "slurm.sh: the node did not become idle; see $dir/slurmctld.log and slurmd.log" >&2
  exit 1
}

stop() {
  SLURM_CONF=$conf scancel --user="$(id -un)" 2>/dev/null || true
  for pid_file in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
    [ -f "$pid_file" ] || continue
    pid=$(cat "$pid_file")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
}

"$action"
