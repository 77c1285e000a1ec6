#!/usr/bin/env bash
# Horovod elastic host discovery: print the available hosts as `host:slots`, one a line.
#
#   HOSTS_FILE=hosts.elastic launch/discover_hosts.sh
#
# Reads HOSTS_FILE (default: hosts.elastic beside the current directory), skipping blank lines
# and # comments; edit the file while the job runs to add or remove hosts. horovodrun calls
# this every second; on a cloud, replace it with a query of your instance group's API.
set -euo pipefail
hosts_file=${HOSTS_FILE:-hosts.elastic}
if [ ! -r "$hosts_file" ]; then
  echo "discover_hosts.sh: cannot read HOSTS_FILE $hosts_file" >&2
  exit 1
fi
grep -Ev '^[[:space:]]*(#|$)' "$hosts_file" || true
