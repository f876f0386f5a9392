//! The `shm-fd` binary, end to end: exec mode, `--supervise`, and bad input.
//!
//! The program under `shm-fd` is this test binary re-run in a role: it adopts
//! the `state` region from `LISTEN_FDS`, bumps a counter in it and prints it.

use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering; // atomics-ok: a word of the shared region
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use shm_fd::listen::ListenFds;
use shm_segment::Segment;
use shm_testkit::{Child, Watchdog, role, role_command, spawn};

const SHM_FD: &str = env!("CARGO_BIN_EXE_shm-fd");

/// The role: bump the counter in `state`, report it, then behave per `MODE`.
fn program(mode: &str) {
    let mut fds = ListenFds::from_env().expect("LISTEN_* must be valid and name us");
    let names: Vec<String> = fds.names().map(str::to_owned).collect();
    let fd = fds.take("state").expect("a region named state");
    let seg = Segment::adopt(fd).size(64).open_or_create().unwrap();
    let word = seg.payload().atomic_u64(0).unwrap();
    // Relaxed: the count is the only data, and one run at a time bumps it
    // (the runs are ordered by the supervisor's wait and restart).
    let n = word.fetch_add(1, Ordering::Relaxed) + 1;
    println!("COUNT {n} NAMES {}", names.join(","));
    match mode {
        "exit0" => {}
        "hang" => std::thread::sleep(Duration::from_secs(60)),
        // Runs 3 and 5 on hang (to be SIGKILLed, SIGTERMed); the others exit 0.
        "hang_at_3_and_5" => {
            if n == 3 || n >= 5 {
                std::thread::sleep(Duration::from_secs(600));
            }
        }
        "store_extra" => {
            if fds.take("extra").is_none() {
                let extra = shm_fd::state::create("extra", 8192).unwrap();
                assert!(shm_fd::notify::store_fd("extra", extra.as_fd()).unwrap());
            }
        }
        "remove_extra" => {
            assert!(shm_fd::notify::remove_fd("extra").unwrap());
        }
        "intruder" => {
            // A grandchild (not the supervised pid) tries to store an fd.
            let status = Command::new(std::env::current_exe().unwrap())
                .args(["supervise_ignores_other_senders", "--exact", "--nocapture"])
                .env(shm_testkit::ROLE_ENV, "grandchild")
                .status()
                .unwrap();
            assert!(status.success());
        }
        other => panic!("unknown mode {other}"),
    }
}

fn dispatch() -> bool {
    match role().as_deref() {
        None => false,
        Some("grandchild") => {
            let fd = shm_fd::state::create("intruder", 8192).unwrap();
            assert!(shm_fd::notify::store_fd("intruder", fd.as_fd()).unwrap());
            true
        }
        Some(mode) => {
            program(mode);
            true
        }
    }
}

/// `shm-fd [opts] -- <this test binary in role MODE>`.
fn wrapped(test: &str, mode: &str, opts: &[&str]) -> Command {
    let inner = role_command(test, mode);
    let mut cmd = Command::new(SHM_FD);
    cmd.args(opts)
        .arg("--")
        .arg(inner.get_program())
        .args(inner.get_args());
    cmd.env(shm_testkit::ROLE_ENV, mode)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID");
    cmd
}

/// `--supervise`, restarting the program after any exit, 10 ms later.
const RESTART_ALWAYS: &[&str] = &["--supervise", "--restart=always", "--restart-delay=10ms"];

/// [`wrapped`], started with its stdout piped and its stderr to `stderr`;
/// the lines of that stdout.
fn start_wrapped(
    test: &str,
    mode: &str,
    opts: &[&str],
    stderr: Stdio,
) -> (Child, impl Iterator<Item = String>) {
    let mut cmd = wrapped(test, mode, opts);
    cmd.stdout(Stdio::piped()).stderr(stderr);
    let mut sup = spawn(cmd).unwrap();
    let lines = sup.stdout_lines();
    (sup, lines)
}

/// The first child of the supervisor `sup` (the program it runs: the
/// trampoline exec'd into it, same pid).
fn first_child(sup: &Child) -> u32 {
    let pid = sup.pid();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    children.split_whitespace().next().unwrap().parse().unwrap()
}

fn counts(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| {
            l.split("COUNT ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn exec_mode_without_a_manager_starts_fresh_and_says_why() {
    if dispatch() {
        return;
    }
    for _ in 0..2 {
        let out = wrapped(
            "exec_mode_without_a_manager_starts_fresh_and_says_why",
            "exit0",
            &[],
        )
        .output()
        .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(counts(&String::from_utf8_lossy(&out.stdout)), vec![1]);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no $NOTIFY_SOCKET"),
            "{out:?}"
        );
    }
}

/// Sends each line of `r` to a channel, from a thread.
fn line_channel(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line of `lines` that contains `needle` (the watchdog bounds the wait).
fn next_with(lines: &Receiver<String>, needle: &str) -> String {
    loop {
        let line = lines
            .recv()
            .unwrap_or_else(|_| panic!("output ended before a {needle:?} line"));
        if line.contains(needle) {
            return line;
        }
    }
}

#[test]
fn supervise_keeps_state_across_restarts_and_sigkill() {
    if dispatch() {
        return;
    }
    let _w = Watchdog::new(Duration::from_secs(60));
    // Runs 1 and 2 exit 0; run 3 hangs and is SIGKILLed; run 4 exits 0; run
    // 5 hangs until the supervisor is stopped.
    let mut cmd = wrapped(
        "supervise_keeps_state_across_restarts_and_sigkill",
        "hang_at_3_and_5",
        RESTART_ALWAYS,
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut sup = spawn(cmd).unwrap();
    let out = line_channel(sup.inner_mut().stdout.take().unwrap());
    let log = line_channel(sup.inner_mut().stderr.take().unwrap());
    for expected in 1..=5 {
        let line = next_with(&out, "COUNT ");
        assert_eq!(
            counts(&line),
            vec![expected],
            "the region survives every restart, SIGKILL included"
        );
        // The supervisor logs each start ("started \"...\" as pid N ...").
        let started = next_with(&log, "as pid ");
        let pid: i32 = started
            .split("as pid ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|e| panic!("{started:?}: {e}"));
        if expected == 3 {
            // Run 3 has committed its count and now hangs: kill it mid-run.
            rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid).unwrap(),
                rustix::process::Signal::KILL,
            )
            .unwrap();
            let died = next_with(&log, "exited");
            assert!(died.contains("killed by signal 9"), "{died}");
        }
    }
    // Run 5 hangs: SIGTERM to the supervisor reaches it, it dies of it, and
    // the supervisor, stopping, does not restart it but dies the same way.
    sup.kill(rustix::process::Signal::TERM).unwrap();
    let status = sup.wait_status(Duration::from_secs(20));
    assert_eq!(status.signal(), Some(libc_sigterm()), "{status:?}");
}

#[test]
fn supervise_restarts_a_sigkilled_child_with_its_state() {
    if dispatch() {
        return;
    }
    let _w = Watchdog::new(Duration::from_secs(60));
    let (sup, mut lines) = start_wrapped(
        "supervise_restarts_a_sigkilled_child_with_its_state",
        "hang",
        &[
            "--supervise",
            "--restart=on-failure",
            "--restart-delay=10ms",
        ],
        Stdio::null(),
    );
    for expected in 1..=3 {
        let line = lines.find(|l| l.contains("COUNT")).expect("child reports");
        assert_eq!(counts(&line), vec![expected]);
        // SIGKILL the supervised child.
        let child = i32::try_from(first_child(&sup)).unwrap();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(child).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
    }
    drop(sup);
}

#[test]
fn supervise_mirrors_death_by_signal_and_forwards_sigterm() {
    if dispatch() {
        return;
    }
    let _w = Watchdog::new(Duration::from_secs(60));
    let (mut sup, mut lines) = start_wrapped(
        "supervise_mirrors_death_by_signal_and_forwards_sigterm",
        "hang",
        &["--supervise"],
        Stdio::null(),
    );
    assert!(lines.any(|l| l.contains("COUNT")));
    // SIGTERM to the supervisor reaches the child, which dies of it; the
    // supervisor then dies of the same signal (so Restart=on-abnormal would fire).
    sup.kill(rustix::process::Signal::TERM).unwrap();
    let status = sup.wait_status(Duration::from_secs(20));
    assert_eq!(status.signal(), Some(libc_sigterm()), "{status:?}");
}

fn libc_sigterm() -> i32 {
    rustix::process::Signal::TERM.as_raw()
}

#[test]
fn supervised_child_dies_with_a_sigkilled_supervisor() {
    if dispatch() {
        return;
    }
    let _w = Watchdog::new(Duration::from_secs(60));
    let (mut sup, mut lines) = start_wrapped(
        "supervised_child_dies_with_a_sigkilled_supervisor",
        "hang",
        &["--supervise"],
        Stdio::null(),
    );
    assert!(lines.any(|l| l.contains("COUNT")));
    let child = first_child(&sup);
    sup.sigkill_and_wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{child}/stat")).exists()
        && !std::fs::read_to_string(format!("/proc/{child}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "child {child} outlived its supervisor"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn supervise_stores_and_removes_fds_pushed_by_the_child() {
    if dispatch() {
        return;
    }
    let _w = Watchdog::new(Duration::from_secs(60));
    let test = "supervise_stores_and_removes_fds_pushed_by_the_child";
    let (sup, mut lines) = start_wrapped(test, "store_extra", RESTART_ALWAYS, Stdio::null());
    let first = lines.find(|l| l.contains("COUNT")).unwrap();
    assert!(first.ends_with("NAMES state"), "{first}");
    let second = lines.find(|l| l.contains("COUNT")).unwrap();
    assert!(
        second.ends_with("NAMES state,extra"),
        "the pushed fd comes back: {second}"
    );
    drop(lines);
    drop(sup);

    // FDSTOREREMOVE: a child that removes "extra" does not get it back.
    let (_sup, mut lines) = start_wrapped(test, "remove_extra", RESTART_ALWAYS, Stdio::null());
    let first = lines.find(|l| l.contains("COUNT")).unwrap();
    let second = lines.find(|l| l.contains("COUNT")).unwrap();
    assert!(
        first.ends_with("NAMES state") && second.ends_with("NAMES state"),
        "{first} / {second}"
    );
}

#[test]
fn supervise_ignores_other_senders() {
    if dispatch() {
        return;
    }
    let _w = Watchdog::new(Duration::from_secs(60));
    let (_sup, mut lines) = start_wrapped(
        "supervise_ignores_other_senders",
        "intruder",
        RESTART_ALWAYS,
        Stdio::piped(),
    );
    let _ = lines.find(|l| l.contains("COUNT")).unwrap();
    let second = lines.find(|l| l.contains("COUNT")).unwrap();
    assert!(
        second.ends_with("NAMES state"),
        "an fd from another process must not be stored: {second}"
    );
}

#[test]
fn bad_inherited_state_gives_clear_errors() {
    if dispatch() {
        return;
    }
    // A LISTEN_PID for another process.
    let out = Command::new(SHM_FD)
        .arg("true")
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("LISTEN_PID=1 but we are"),
        "{out:?}"
    );
    // A malformed count.
    let script = format!("LISTEN_PID=$$ LISTEN_FDS=-1 exec {SHM_FD} true");
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert_eq!(out.status.code(), Some(65));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("LISTEN_FDS=\"-1\""),
        "{out:?}"
    );
    // A region named "state" that is not a memfd: a shell hands us /dev/null as fd 3 with LISTEN_PID=$$ (exec keeps it).
    let script = format!(
        "exec 3</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=state exec {SHM_FD} true"
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert_eq!(out.status.code(), Some(65), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("fd 3 (\"state\") is a character device (/dev/null), not a memfd"),
        "{out:?}"
    );
    // A --name systemd would refuse: a usage error that says why.
    let out = Command::new(SHM_FD)
        .args(["--name", "a:b", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid fd name \"a:b\": it holds ':'"),
        "{out:?}"
    );
    // A missing command, and a command that does not exist.
    assert_eq!(
        Command::new(SHM_FD).output().unwrap().status.code(),
        Some(2)
    );
    let out = Command::new(SHM_FD)
        .arg("/nonexistent/program")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127), "{out:?}");
}

#[test]
fn region_that_is_too_small_is_refused() {
    if dispatch() {
        return;
    }
    // Hand shm-fd a 16 KiB memfd as "state" while asking for 1 MiB.
    let small = shm_fd::state::create("state", 16384).unwrap();
    let dup = rustix::io::fcntl_dupfd_cloexec(&small, 50).unwrap();
    rustix::io::fcntl_setfd(&dup, rustix::io::FdFlags::empty()).unwrap();
    let n = std::os::fd::AsRawFd::as_raw_fd(&dup);
    let script = format!(
        "exec 3<&{n}; exec {n}<&-; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=state exec {SHM_FD} true"
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    drop(dup);
    assert_eq!(out.status.code(), Some(65), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("16384 bytes"),
        "{out:?}"
    );
}

#[test]
fn a_socket_handed_over_as_a_region_is_called_a_socket() {
    if dispatch() {
        return;
    }
    let (sock, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let dup = rustix::io::fcntl_dupfd_cloexec(&sock, 50).unwrap();
    rustix::io::fcntl_setfd(&dup, rustix::io::FdFlags::empty()).unwrap();
    let n = std::os::fd::AsRawFd::as_raw_fd(&dup);
    let script = format!(
        "exec 3<&{n}; exec {n}<&-; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=state exec {SHM_FD} true"
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    drop(dup);
    assert_eq!(out.status.code(), Some(65), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fd 3 (\"state\") is a socket, not a memfd"),
        "{out:?}"
    );
    assert!(!stderr.contains("0 bytes"), "{out:?}");
}

/// Command-line conventions: an unknown option before COMMAND is a usage
/// error (exit 2), not a program to run; everything from COMMAND on is its
/// own; sizes and durations take every spelling of the one parser;
/// `--version`; `-q` keeps only warnings and errors.
#[test]
fn options_before_the_command_follow_the_conventions() {
    if dispatch() {
        return;
    }
    let run = |args: &[&str]| {
        let out = Command::new(SHM_FD)
            .args(args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("INVOCATION_ID")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let (code, text) = run(&["--bogus", "true"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("'--bogus'"), "{text}");
    // After `--`, or after COMMAND, options belong to the program.
    let (code, text) = run(&["--", "--bogus"]);
    assert_eq!(code, Some(127), "{text}");
    let (code, text) = run(&["echo", "-n", "--bogus", "-q"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("--bogus -q"), "{text}");
    for size in ["1048576", "1M", "1MiB", "1 MiB", "1024K"] {
        let (code, text) = run(&["--size", size, "true"]);
        assert_eq!(code, Some(0), "--size {size}: {text}");
        assert!(text.contains("(1048576 bytes)"), "--size {size}: {text}");
    }
    for delay in ["0.05", "50ms", "1s"] {
        let (code, text) = run(&["--supervise", "--restart-delay", delay, "true"]);
        assert_eq!(code, Some(0), "--restart-delay {delay}: {text}");
    }
    let (code, text) = run(&["--restart-delay", "soon", "true"]);
    assert_eq!(code, Some(2), "{text}");
    let (code, text) = run(&["--version"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("shm-fd "), "{text}");
    let (code, text) = run(&["-q", "true"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("created region"), "{text}");
}
