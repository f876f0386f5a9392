#!/usr/bin/env bash
# Every file a crate's sources pull in with include_str!/include_bytes! must be
# inside the crate and in the crate's package (`cargo package --list`):
# docs.rs and crates.io users build from the package, where a path out of the
# crate folder (`../../../docs/...`) does not exist. A file linked from the
# workspace (crates/X/PROTOCOL.md -> ../../docs/...) is packaged as a copy.
# Only reads file lists (no build): a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
for manifest in crates/*/Cargo.toml; do
    dir=${manifest%/Cargo.toml}
    # A crate with a workspace of its own (the peers bench) is not built by
    # this workspace; one that is never published has no package to check.
    grep -qxE '\[workspace\]|publish = false' "$manifest" && continue
    name=$(sed -n 's/^name = "\(.*\)"$/\1/p' "$manifest" | head -n 1)
    list=$(cargo package --list -p "$name" --allow-dirty 2>/dev/null) || {
        echo "check-package-includes: cargo package --list -p $name failed" >&2; exit 1; }
    while IFS= read -r file; do
        case $file in *.rs) ;; *) continue ;; esac
        src="$dir/$file"
        # A path that is not a string literal cannot be checked here: refuse it.
        if grep -nE 'include_(str|bytes)!\(\s*[^" ]' "$src"; then
            echo "$src: include_str!/include_bytes! without a literal path" >&2; fail=1
        fi
        while IFS= read -r path; do
            [ -n "$path" ] || continue
            rel=$(realpath -m -s --relative-to="$dir" "$(dirname "$src")/$path")
            case $rel in
                ../*) echo "$src: includes $path, outside the crate folder" >&2; fail=1 ;;
                *) grep -qxF "$rel" <<<"$list" || {
                       echo "$src: includes $path ($rel), missing from the $name package" >&2; fail=1; } ;;
            esac
        done < <(grep -oE 'include_(str|bytes)!\(\s*"[^"]+"' "$src" | sed -E 's/.*"([^"]+)"/\1/' || true)
    done <<<"$list"
done
[ "$fail" = 0 ] || exit 1
echo "check-package-includes: every included file is packaged"
