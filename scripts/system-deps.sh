#!/usr/bin/env bash
# System packages some tests and benchmarks use: nftables and iproute2 (network-fault
# tests in a private namespace), chromium (the JS client's browser tests), redis-server
# and etcd-server (the networked state store and directory; tests start their own
# instances on free ports, never the system services), nginx (relay benchmark only,
# with --bench).
# Installs only what is missing, only as root with apt; otherwise says what it skips.
set -u
want=(nftables iproute2 chromium redis-server etcd-server)
[ "${1:-}" = "--bench" ] && want+=(nginx-light)
missing=()
for p in "${want[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "[dev] not installing ${missing[*]} (needs root and apt); tests that need them will skip" >&2
    exit 0
fi
echo "[dev] installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || echo "[dev] could not install ${missing[*]}; tests that need them will skip" >&2
exit 0
