#!/usr/bin/env bash
# Crash points (shm_sync::crash_point!) cost nothing without `fault-injection`:
# a release build of the programs without the feature holds none of their names,
# nor the variable that arms them, while a build with the libraries'
# `fault-injection` features holds them (so the check can fail).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
bins=(board server client primes-snapshot)
pattern='SHM_CRASH_AT|mailbox\.writer_mid_slot|ring\.before_commit|ring\.parked|client\.mid_commit'
pkgs=(-p board -p ring-sum -p primes-snapshot)
names() { grep -a -o -E "$pattern" "$target/release/$1" | sort -u | tr '\n' ' ' || true; }

cargo build -q --release "${pkgs[@]}" \
    --features shm-mailbox/fault-injection,shm-ring/fault-injection,shm-snapshot/fault-injection
for b in "${bins[@]}"; do
    found=$(names "$b")
    [ -n "$found" ] || { echo "$b built with fault-injection holds no crash point: the check is blind"; exit 1; }
done

cargo build -q --release "${pkgs[@]}"
for b in "${bins[@]}"; do
    found=$(names "$b")
    [ -z "$found" ] || { echo "$b built without fault-injection still holds crash points: $found"; exit 1; }
done
echo "check-crash-points: none in release builds without fault-injection (${bins[*]})"
