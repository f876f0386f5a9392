//! Building other packages' binaries from a test.

use std::path::PathBuf;
use std::process::Command;

/// The target directory for binaries a test builds itself, and whether the
/// running test is a release build: `(<target>/nested, release)`.
///
/// A directory of its own because `cargo build` of a subset of the workspace
/// resolves other features than the `cargo test` that runs the test, and
/// building into the test's own directory would replace binaries that the
/// `CARGO_BIN_EXE_*` paths of later tests point at.
pub fn nested_target_dir() -> (PathBuf, bool) {
    // A test runs as <target>/<profile>/deps/<name>-<hash>.
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("a test binary lives in <target>/<profile>/deps");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let target = profile_dir
        .parent()
        .expect("a profile directory has a parent");
    (target.join("nested"), release)
}

/// Runs `cargo build ARGS` into [`nested_target_dir`], in the profile of the
/// running test, from the workspace root, and returns the directory that holds
/// the binaries. Building package `shm-fd` enables its feature `cli`,
/// which its binary requires.
pub fn build_bins(args: &[&str]) -> PathBuf {
    let (target, release) = nested_target_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q", "--manifest-path", manifest])
        .args(args)
        .arg("--target-dir")
        .arg(&target);
    if args.windows(2).any(|w| w == ["-p", "shm-fd"]) {
        cmd.args(["--features", "cli"]);
    }
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo build");
    assert!(status.success(), "cargo build {args:?} failed: {status}");
    target.join(if release { "release" } else { "debug" })
}
