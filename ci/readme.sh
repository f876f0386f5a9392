#!/usr/bin/env bash
# Runs the commands of the README's "Running without systemd" block as
# written, from the repository root, and checks what each one prints.
# Commands that run until stopped (a watcher, a supervisor) get a few
# seconds, then SIGTERM, as a user's Ctrl-C. A command this script has no
# expectation for fails it: a new README command needs a check here.
set -euo pipefail
cd "$(dirname "$0")/.."
# `watch` draws a screen and needs a terminal type (CI has none).
case "${TERM:-dumb}" in dumb) export TERM=xterm ;; esac

block=$(awk '/^## Running without systemd/ { f = 1 } f && /^```bash/ { b = 1; next } b && /^```/ { exit } b' README.md)
[ -n "$block" ] || { echo "readme.sh: no 'Running without systemd' bash block in README.md" >&2; exit 1; }
# One command per line: join backslash continuations, drop comments.
cmds=$(printf '%s\n' "$block" | sed -e ':a' -e '/\\$/N; s/\\\n//; ta' | sed -e 's/[[:space:]]*#.*$//' | grep -v '^[[:space:]]*$')

out=$(mktemp)
trap 'rm -f "$out" primes.snap' EXIT
rm -f primes.snap
n=0
while IFS= read -r cmd; do
    case "$cmd" in
        cargo\ build*) limit=1800 want='' ;;
        *" watch "*primes*) limit=3 want='total 1000' ;;
        *--supervise*shm-restore*) limit=4 want='durable generation' ;;
        *--supervise*primes*) limit=3 want='total 3000' ;;
        *) echo "readme.sh: no expectation for README command: $cmd" >&2; exit 1 ;;
    esac
    echo "readme.sh: $cmd"
    rc=0
    timeout -s TERM "$limit" bash -c "$cmd" >"$out" 2>&1 </dev/null || rc=$?
    # 124: stopped by the timeout, as intended for the long-running ones.
    ok=no
    if [ "$rc" = 0 ]; then ok=yes; elif [ -n "$want" ] && [ "$rc" = 124 ]; then ok=yes; fi
    if [ "$ok" != yes ]; then
        echo "readme.sh: exit status $rc from: $cmd" >&2; tail -n 20 "$out" >&2; exit 1
    fi
    if [ -n "$want" ] && ! grep -aq -- "$want" "$out"; then
        echo "readme.sh: no '$want' in the output of: $cmd" >&2; tail -c 2000 "$out" >&2; exit 1
    fi
    n=$((n + 1))
done <<< "$cmds"
echo "readme.sh: $n README commands ran as written"
