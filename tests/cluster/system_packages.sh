#!/usr/bin/env bash
# Debian packages the test suite's real clusters need: Slurm and munge (tests/test_launch.py)
# and iproute2 for network namespaces (tests/test_multihost.py). Installs what is missing.
set -euo pipefail
missing=()
command -v slurmctld >/dev/null || missing+=(slurm-wlm)
command -v munged >/dev/null || missing+=(munge)
command -v ip >/dev/null || missing+=(iproute2)
command -v unshare >/dev/null || missing+=(util-linux)
[ ${#missing[@]} -gt 0 ] || exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "system_packages.sh: the Slurm and multi-host tests need ${missing[*]} (root and apt-get to install them); those tests will fail" >&2
  exit 0
fi
echo "system_packages.sh: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
