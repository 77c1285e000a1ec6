#!/usr/bin/env bash
# Two "hosts" on this machine for the multi-host tests: network namespaces hvdA (10.200.0.2)
# and hvdB (10.200.0.3) on a bridge hvdbr0 (10.200.0.1, the launcher's side), each joined by a
# veth pair (vethA, vethB in the root namespace).
#
#   tests/cluster/netns.sh up      create them (needs root and iproute2)
#   tests/cluster/netns.sh down    remove them
#
# The veth end inside each namespace is also named hvdbr0, so one interface name is valid on
# the launcher and on both hosts (horovodrun --network-interface hvdbr0). Each namespace gets
# /etc/netns/<ns>/hosts mapping this machine's hostname to its own address: Horovod 0.28.1's
# Gloo resolves gethostname() and must not get 127.0.x.x.
set -euo pipefail
action=${1:?up|down}
bridge=hvdbr0
declare -A address=([hvdA]=10.200.0.2 [hvdB]=10.200.0.3)

down() {
  for ns in "${!address[@]}"; do
    ip netns del "$ns" 2>/dev/null || true
    ip link del "veth${ns#hvd}" 2>/dev/null || true
    rm -rf "/etc/netns/$ns"
  done
  ip link del "$bridge" 2>/dev/null || true
}

up() {
  down
  ip link add "$bridge" type bridge
  ip addr add 10.200.0.1/24 dev "$bridge"
  ip link set "$bridge" up
  for ns in "${!address[@]}"; do
    local outer="veth${ns#hvd}"
    ip netns add "$ns"
    ip link add "$outer" type veth peer name "$bridge" netns "$ns"
    ip link set "$outer" master "$bridge" up
    ip -n "$ns" addr add "${address[$ns]}/24" dev "$bridge"
    ip -n "$ns" link set "$bridge" up
    ip -n "$ns" link set lo up
    mkdir -p "/etc/netns/$ns"
    printf '127.0.0.1 localhost\n%s %s\n' "${address[$ns]}" "$(hostname)" > "/etc/netns/$ns/hosts"
  done
}

"$action"
