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
trap 'rm -f "$out" "$out.server" primes.snap' EXIT
rm -f primes.snap
# run CMD LIMIT WANT [typed]: runs CMD with bash for at most LIMIT seconds
# (stdin empty, or the typed input of board/run.sh), and fails this script
# unless it exited 0 (or, with an expected WANT, was stopped by the
# timeout: 124) and printed WANT.
run() {
    local cmd=$1 limit=$2 want=$3 typed=${4:-no} rc=0
    echo "readme.sh: $cmd"
    if [ "$typed" = yes ]; then
        # Kill process 1, start it again, quit.
        timeout -s TERM "$limit" bash -c "$cmd" >"$out" 2>&1 < <(sleep 3; echo 1; sleep 1; echo 1; sleep 1; echo q) || rc=$?
    else
        timeout -s TERM "$limit" bash -c "$cmd" >"$out" 2>&1 </dev/null || rc=$?
    fi
    if ! { [ "$rc" = 0 ] || { [ -n "$want" ] && [ "$rc" = 124 ]; }; }; then
        echo "readme.sh: exit status $rc from: $cmd" >&2; tail -n 20 "$out" >&2; exit 1
    fi
    if [ -n "$want" ] && ! grep -aq -- "$want" "$out"; then
        echo "readme.sh: no '$want' in the output of: $cmd" >&2; tail -c 2000 "$out" >&2; exit 1
    fi
}

n=0
while IFS= read -r cmd; do
    case "$cmd" in
        cargo\ build*) limit=1800 want='' ;;
        *" watch "*primes*) limit=3 want='total 1000' ;;
        *--supervise*shm-restore*) limit=4 want='durable generation' ;;
        *--supervise*primes*) limit=3 want='total 3000' ;;
        *) echo "readme.sh: no expectation for README command: $cmd" >&2; exit 1 ;;
    esac
    run "$cmd" "$limit" "$want"
    n=$((n + 1))
done <<< "$cmds"
echo "readme.sh: $n commands of 'Running without systemd' ran as written"

# The seed command map: every command in the "original command" column of a
# row whose "here" column says "same", and every command in the "here"
# column, is run as written (the systemd ones are docs/systemd.md's, run by
# its tests).
map=$(awk '/^## The seeds. commands/ { f = 1; next } f && /^## / { exit } f && /^\| [0-9]/' README.md)
[ -n "$map" ] || { echo "readme.sh: no seed command map in README.md" >&2; exit 1; }
seeds=$(printf '%s\n' "$map" | awk -F'|' '{
    here = $4; n = split($3, a, "`")
    if (here ~ /^ *same/) for (i = 2; i <= n; i += 2) print a[i]
    n = split(here, b, "`")
    for (i = 2; i <= n; i += 2) print b[i]
}' | grep -E '^(cargo|\./|examples/|envsubst|truncate|systemctl)' || true)
server=
m=0
while IFS= read -r cmd; do
    [ -n "$cmd" ] || continue
    [ -d "$cmd" ] && continue   # a directory named in the map, not a command
    typed=no limit=1800 want=''
    case "$cmd" in
        envsubst*|truncate*|systemctl*) continue ;;   # docs/systemd.md's blocks, run by the systemd tests
        cargo\ build*) ;;
        *" watch "*primes*) limit=3 want='total 1000' ;;
        "cargo run --example message-passing") want='reader saw all 10 messages in order' ;;
        "cargo run --release --bin server")
            # Runs until stopped; the client below talks to it.
            rm -f /tmp/shmem-test.sock
            bash -c "$cmd" >"$out.server" 2>&1 </dev/null &
            server=$!
            for _ in $(seq 600); do [ -S /tmp/shmem-test.sock ] && break; sleep 0.1; done
            echo "readme.sh: $cmd (in the background)"
            m=$((m + 1)); continue ;;
        "cargo run --release --bin client") limit=8 want='Sending' ;;
        "examples/board/run.sh 3")
            # Typed input: kill process 1, start it again, quit.
            limit=120 want='stopped; boards removed'
            typed=yes ;;
        *) echo "readme.sh: no expectation for seed command: $cmd" >&2; exit 1 ;;
    esac
    run "$cmd" "$limit" "$want" "$typed"
    m=$((m + 1))
done <<< "$seeds"
if [ -n "$server" ]; then
    # The client hung up when stopped: the server reports its sums.
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    grep -aq 'Sum:' "$out.server" || { echo "readme.sh: the server printed no sum:" >&2; tail -n 20 "$out.server" >&2; exit 1; }
fi
echo "readme.sh: $m seed commands ran as written"
