//! `--cleanup` under running boards, and a board's object shrunk under it.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use shm_testkit::{Child, Watchdog, shm_objects_with_prefix, spawn, unique_name};

/// Starts board `index` of `count` and waits until it is ready.
fn start_ready(
    prefix: &str,
    index: usize,
    count: usize,
) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_board"));
    cmd.args(["--index", &index.to_string(), "--count", &count.to_string()])
        .args(["--prefix", prefix, "--max-interval-ms", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn(cmd).unwrap();
    let mut out = BufReader::new(child.inner_mut().stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("ready") {
        line.clear();
        assert_ne!(
            out.read_line(&mut line).unwrap(),
            0,
            "board exited before ready"
        );
    }
    (child, out)
}

fn cleanup(prefix: &str, count: usize, force: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_board"));
    cmd.args([
        "--count",
        &count.to_string(),
        "--prefix",
        prefix,
        "--cleanup",
    ]);
    if force {
        cmd.arg("--force");
    }
    cmd.output().unwrap()
}

#[test]
fn cleanup_refuses_live_boards_unless_forced() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let prefix = unique_name("board-clean");
    let (mut board, _out) = start_ready(&prefix, 0, 2);
    let refused = cleanup(&prefix, 2, false);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("in use") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(
        shm_objects_with_prefix(&prefix).len(),
        2,
        "live boards are kept"
    );
    let forced = cleanup(&prefix, 2, true);
    assert!(forced.status.success(), "{forced:?}");
    assert!(shm_objects_with_prefix(&prefix).is_empty());
    board.sigkill_and_wait().unwrap();

    // Boards that are gone (killed) leave objects nobody has open: removed.
    let (mut board, _out) = start_ready(&prefix, 1, 2);
    board.sigkill_and_wait().unwrap();
    assert_eq!(shm_objects_with_prefix(&prefix).len(), 2);
    let stale = cleanup(&prefix, 2, false);
    assert!(stale.status.success(), "{stale:?}");
    assert!(shm_objects_with_prefix(&prefix).is_empty());
}

#[test]
fn truncated_board_stops_with_an_error_and_restarts() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let prefix = unique_name("board-trunc");
    let (mut board, out) = start_ready(&prefix, 0, 1);
    // `truncate -s 0 /dev/shm/PREFIX-0`
    std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/{prefix}-0"))
        .unwrap()
        .set_len(0)
        .unwrap();
    let status = board.wait_status(Duration::from_secs(20));
    drop(out);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut board.inner_mut().stderr.take().unwrap(), &mut stderr)
        .unwrap();
    assert_eq!(
        status.signal(),
        None,
        "not killed by a signal: {status:?} {stderr}"
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("truncated"), "{stderr}");
    // Nobody has the shrunken object open: the next start replaces it.
    let (mut again, _out) = start_ready(&prefix, 0, 1);
    again.sigkill_and_wait().unwrap();
    assert!(cleanup(&prefix, 1, false).status.success());
    assert!(shm_objects_with_prefix(&prefix).is_empty());
}
