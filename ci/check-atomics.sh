#!/usr/bin/env bash
# Atomics, fences and UnsafeCell are named only through shm-sync, so loom can swap them.
set -euo pipefail
cd "$(dirname "$0")/.."
hits=$(grep -rnE '(core|std)::(sync::atomic|cell::UnsafeCell)' --include='*.rs' crates examples \
    | grep -v '^crates/shm-sync/' | grep -v '^crates/shm-testkit/' | grep -v '// atomics-ok' | grep -vE '^[^:]+:[0-9]+:\s*//[/!]' || true)
if [ -n "$hits" ]; then
    echo "atomics named outside shm-sync (use shm_sync::atomic, or mark a non-shared use with '// atomics-ok'):"
    echo "$hits"
    exit 1
fi
echo "check-atomics: ok"
