//! What the `shm-restore` tests of `primes-snapshot` share: the host binary
//! and the numbers they read from its log and from the program's output.
#![allow(dead_code)] // each test file uses its own part

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Primes per commit (`primes-snapshot`'s CHUNK).
pub(crate) const CHUNK: u64 = 1000;

/// `shm-restore`, built once for the tests.
pub(crate) fn shm_restore() -> PathBuf {
    shm_testkit::build_bins(&[
        "-p",
        "shm-snapshot",
        "--features",
        "shm-restore",
        "--bin",
        "shm-restore",
    ])
    .join("shm-restore")
}

/// `BIN OPTS FILE -- primes-snapshot ARGS` in a process group of its own
/// (so that a test can kill host and program together), with none of the
/// socket-activation or notification settings of this test process.
pub(crate) fn host_command(bin: &Path, opts: &[&str], file: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(opts)
        .arg(file)
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_primes-snapshot"))
        .args(args)
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("NOTIFY_SOCKET")
        .process_group(0);
    cmd
}

/// The number right after each `key` in `text`, in order.
pub(crate) fn numbers_after(text: &str, key: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.split_once(key).map(|(_, r)| r))
        .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect()
}

/// The number after the last `key` in `text`.
pub(crate) fn last_number_after(text: &str, key: &str) -> Option<u64> {
    numbers_after(text, key).pop()
}
