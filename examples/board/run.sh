#!/usr/bin/env bash
# Interactive board demo: ./run.sh N starts N processes (indices 0..N-1).
# Type a digit I (then Enter) to kill process I if it runs, or start it if it
# does not. Type q (or end input) to stop everything and remove the boards.
set -euo pipefail
N="${1:?usage: run.sh N (number of processes, 1-10)}"
[[ "$N" =~ ^[0-9]+$ ]] && [ "$N" -ge 1 ] && [ "$N" -le 10 ] || { echo "N must be 1..10" >&2; exit 1; }
cd "$(dirname "$0")/../.."
cargo build --release -q -p board
BOARD="${CARGO_TARGET_DIR:-target}/release/board"
PREFIX="outlive-board-$$"
declare -a PIDS
start() { "$BOARD" --index "$1" --count "$N" --prefix "$PREFIX" & PIDS[$1]=$!; }
running() { [ -n "${PIDS[$1]:-}" ] && kill -0 "${PIDS[$1]}" 2>/dev/null; }
stop_all() {
    for i in $(seq 0 $((N - 1))); do running "$i" && kill -9 "${PIDS[$i]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    "$BOARD" --count "$N" --prefix "$PREFIX" --cleanup
    echo "stopped; boards removed"
}
trap stop_all EXIT
for i in $(seq 0 $((N - 1))); do start "$i"; done
echo "type a digit 0-$((N - 1)) to kill/restart that process, q to quit"
while read -r key; do
    case "$key" in
        q) break ;;
        [0-9])
            if [ "$key" -ge "$N" ]; then echo "no process $key"; continue; fi
            if running "$key"; then kill -9 "${PIDS[$key]}"; wait "${PIDS[$key]}" 2>/dev/null || true; echo "killed $key"
            else start "$key"; echo "started $key"; fi ;;
        *) echo "type a digit 0-$((N - 1)) or q" ;;
    esac
done
