#!/usr/bin/env bash
# Runs every crate's loom models (tests/loom.rs, #![cfg(shm_loom)]) in release mode.
# LOOM_MAX_PREEMPTIONS defaults to 2 here (3 for deeper local runs).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg shm_loom"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom"
found=0
for t in crates/*/tests/loom.rs; do
    [ -f "$t" ] || continue
    crate=$(basename "$(dirname "$(dirname "$t")")")
    echo "--- loom: $crate"
    cargo test -p "$crate" --test loom --release
    found=$((found + 1))
done
echo "loom: ran the models of $found crate(s)"
