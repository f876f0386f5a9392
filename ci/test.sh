#!/usr/bin/env bash
# The whole test suite: formatting, lints, docs, tests in debug and release,
# loom models, the examples, and a check that no test leaked /dev/shm objects.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
step() { printf '\n==> %s\n' "$*"; }
start=$(date +%s)
# Disk: the suite builds the workspace five ways (checks, debug and release
# tests, loom, the fuzz targets). With full debug info every debug test binary
# (each links tokio, object_store and reqwest) was over 100 MiB, 4.8 GiB in
# all; line tables keep file and line in panics and backtraces at under half
# that. Incremental caches only help a rebuild, which CI never does. A plain
# `cargo test` keeps the usual profile.
export CARGO_PROFILE_DEV_DEBUG=line-tables-only
[ "${CI:-}" = true ] && export CARGO_INCREMENTAL=0
target="${CARGO_TARGET_DIR:-target}"
# drop_dir DIR: under CI, removes a build directory no later step uses.
drop_dir() { if [ "${CI:-}" = true ]; then rm -rf "$1"; fi; }
df -h . | tail -n 1 | awk '{ print "disk: " $4 " free of " $2 " at the start" }'
# Shared-memory objects present before the suite: only objects that appear
# during it are the tests' leaks (other programs' objects are not).
shm_before=$(mktemp)
ls /dev/shm | sort > "$shm_before"

step "format"
cargo fmt --all -- --check

step "atomics only through shm-sync"
bash ci/check-atomics.sh

step "clippy (all targets, all features, -D warnings; then default features)"
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo clippy --workspace --all-targets -- -D warnings

step "docs (-D warnings), no repository-relative or unresolved links in the protocol pages"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features -q
# The protocol documents are Markdown shared with the repository browser; their
# crates give rustdoc its own link targets (docs.rs addresses: an intra-doc path
# into another crate renders as plain text when that crate's pages are written
# later in a parallel doc build). A link left to a
# `.md` file, or a path rustdoc did not resolve, is dead on docs.rs.
if grep -rnoE 'href="([^":#]*\.md(#[^"]*)?|[a-z_]+::[^"]*)"' "${CARGO_TARGET_DIR:-target}"/doc/shm_*/protocol/ \
    "${CARGO_TARGET_DIR:-target}"/doc/shm_snapshot/replica/replication/; then
    echo "dead links in the rendered protocol documents (above)"; exit 1
fi

step "files pulled in by include_str!/include_bytes! are in each crate's package"
bash ci/check-package-includes.sh

step "the peers bench crate (its own workspace): format and clippy"
cargo fmt --manifest-path crates/shm-bench-peers/Cargo.toml -- --check
cargo clippy --manifest-path crates/shm-bench-peers/Cargo.toml --target-dir "${CARGO_TARGET_DIR:-target}/peers" \
    --release --all-targets -- -D warnings

step "fuzz targets build (run them with: cargo +nightly fuzz run -O TARGET, in crates/*/fuzz)"
for fuzz in crates/*/fuzz; do
    CARGO_TARGET_DIR=target/fuzz-check cargo check -q --manifest-path "$fuzz/Cargo.toml" --bins
done
drop_dir target/fuzz-check

step "tests (debug)"
cargo test --workspace --all-features

drop_dir "$target/debug"
drop_dir "$target/nested/debug" # what the debug tests built with shm_testkit::build_bins

step "tests (release)"
cargo test --workspace --all-features --release
drop_dir "$target/nested/release"

step "loom models"
bash ci/loom.sh
drop_dir "$target/loom"

step "examples, and the README's first command"
cargo run -q --release -p shm-segment --example message-passing | tail -n 1
cargo run -q --release -p shm-segment --example message-passing -- --version | grep -q '^message-passing '
if cargo run -q --release -p shm-segment --example message-passing -- --bogus 2>/dev/null; then
    echo "message-passing accepted an unknown option"; exit 1
fi
cargo run -q --release --bin tour -- --plain | tail -n 8
bash ci/readme.sh

step "every binary: --version, --help with -q/-v and its own description, usage errors exit 2"
cargo build -q --release --workspace --bins --all-features
release="${CARGO_TARGET_DIR:-target}/release"
for b in shm-fd shm-restore primes primes-snapshot board server client tour writer reader mismatched; do
    "$release/$b" --version | grep -q "^$b " || { echo "$b --version"; exit 1; }
    "$release/$b" --help | grep -q -- '--quiet' || { echo "$b --help has no --quiet"; exit 1; }
    "$release/$b" --help | grep -q -- '--verbose' || { echo "$b --help has no --verbose"; exit 1; }
    # The binary's own description, not the docs of a flattened argument struct.
    if "$release/$b" --help | grep -q 'how much a binary logs'; then
        echo "$b --help shows shm_fd::cli::Verbosity's docs as its description"; exit 1
    fi
    rc=0; "$release/$b" --no-such-option >/dev/null 2>&1 || rc=$?
    [ "$rc" = 2 ] || { echo "$b --no-such-option exited $rc, not 2"; exit 1; }
done

step "crash points compile to nothing without fault-injection"
bash ci/check-crash-points.sh

step "every bench runs (--quick; no timing is checked) and the README's table matches bench/results.json"
bench_out=$(mktemp -d)
bash ci/bench.sh --quick --out "$bench_out"
test -s "$bench_out/results.json" && test -s "$bench_out/results.md"
rm -rf "$bench_out"
bash ci/bench.sh --check

step "no shared-memory objects left behind by tests"
# iceoryx2 (the peers bench) keeps one management segment per configuration in
# /dev/shm for all its processes, on purpose, after they exit: not a leak.
leftover=$(ls /dev/shm | sort | comm -13 "$shm_before" - | grep -v '^iox2_.*\.global_mgmt$' || true)
rm -f "$shm_before"
if [ -n "$leftover" ]; then
    echo "tests left these objects in /dev/shm:"; echo "$leftover"; exit 1
fi

echo
du -sh "$target" | awk '{ print "disk: " $1 " in the build directory at the end" }'
echo "ci/test.sh: all checks passed in $(( $(date +%s) - start ))s"
