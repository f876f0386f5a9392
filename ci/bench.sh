#!/usr/bin/env bash
# Every benchmark, with the peers, through the shm-bench harness.
#
#   ci/bench.sh [--quick] [--out DIR]   run the benches of shm-ring, shm-mailbox,
#                                       shm-snapshot and the peers crate; write
#                                       DIR/results.json and DIR/results.md
#                                       (default DIR: bench/)
#   ci/bench.sh --readme                rewrite the README's figures table from
#                                       bench/results.json (between the markers)
#   ci/bench.sh --check                 fail if the README's table differs from
#                                       what bench/results.json generates
#
# Figures are ratios to a baseline measured in the same process, repetition by
# repetition; a repetition during which other processes took more than
# OUTLIVE_BENCH_MAX_FOREIGN % (default 5) of the CPU time is run again (see
# crates/shm-bench). --quick only checks that every bench runs: its figures
# are not worth quoting. Run full benches on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

usage() { sed -n '4,12p' "$0" | sed 's/^# \{0,1\}//'; }
quick=()
out=bench
mode=run
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=(--quick) ;;
        --out) [ $# -ge 2 ] || { usage >&2; exit 2; }; out=$2; shift ;;
        --readme) mode=readme ;;
        --check) mode=check ;;
        -h|--help) usage; exit 0 ;;
        *) echo "ci/bench.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

tool() { cargo run -q --release -p shm-bench --bin shm-bench -- "$@"; }
case "$mode" in
    readme) tool readme bench/results.json README.md; exit ;;
    check) tool readme --check bench/results.json README.md; exit ;;
esac

mkdir -p "$out"
rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
export OUTLIVE_BENCH_JSON=$rows
start=$(date +%s)
# shm-snapshot's replication rows need its feature `replica` (and `weed`).
for bench in shm-ring:ring: shm-mailbox:mailbox: shm-snapshot:snapshot:replica shm-snapshot:copy_free:; do
    IFS=: read -r crate name features <<< "$bench"
    printf '\n==> cargo bench -p %s --bench %s %s-- %s\n' "$crate" "$name" "${features:+--features $features }" "${quick[*]:-}"
    cargo bench -q -p "$crate" --bench "$name" ${features:+--features "$features"} -- "${quick[@]}"
done
printf '\n==> peers (crates/shm-bench-peers) %s\n' "${quick[*]:-}"
cargo run -q --release --manifest-path crates/shm-bench-peers/Cargo.toml \
    --target-dir "${CARGO_TARGET_DIR:-target}/peers" -- "${quick[@]}"

commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD -- crates Cargo.toml Cargo.lock || commit="$commit-dirty"
tool collect "$rows" "$out" "$commit" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo
echo "ci/bench.sh: $(wc -l < "$rows") rows in $(( $(date +%s) - start ))s: $out/results.json, $out/results.md"
