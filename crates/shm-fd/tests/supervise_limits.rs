//! `shm-fd --supervise` bounds what a misbehaving program can do, as systemd
//! does: a stop timeout, a restart rate limit (give up, or back off), a limit
//! on stored fds, and rate-limited logging of rejected notifications. Each is
//! tested with a real child: one that ignores SIGTERM, one that exits at once,
//! one that floods the store, one whose child (another uid) floods the socket.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool; // atomics-ok: a signal flag of the test's child
use std::time::{Duration, Instant};

use shm_fd::listen::ListenFds;
use shm_testkit::{Watchdog, role, role_command, spawn};

const SHM_FD: &str = env!("CARGO_BIN_EXE_shm-fd");
/// Datagrams the foreign sender sends.
const FOREIGN: usize = 20_000;
/// Fds the flooding child pushes per run.
const FLOOD: usize = 640;

/// The children, by role.
fn dispatch() -> bool {
    let Some(mode) = role() else { return false };
    match mode.as_str() {
        "ignore_term" => {
            let flag = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(libc::SIGTERM, flag).unwrap();
            println!("READY");
            std::thread::sleep(Duration::from_secs(120));
        }
        "exit_at_once" => std::process::exit(3),
        "flood_store" => {
            let fds = ListenFds::from_env().unwrap();
            println!("INHERITED {}", fds.len());
            for i in 0..FLOOD {
                let fd = shm_fd::state::create("flood", 8192).unwrap();
                // Under a limit the store refuses some: sending still succeeds.
                assert!(shm_fd::notify::store_fd(&format!("f{i}"), fd.as_fd()).unwrap());
            }
        }
        "flood_foreign" => {
            // Our own child, as another user, floods the supervisor's socket.
            // That user may not reach this binary where it was built (a
            // checkout under a 0700 directory): it runs a copy in a directory
            // everyone can read.
            use std::os::unix::fs::PermissionsExt;
            let dir = std::env::temp_dir().join(shm_testkit::unique_name("foreign-exe"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            let exe = dir.join("supervise_limits");
            std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
            std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
            let mut cmd = role_command("foreign_notifications_are_logged_rate_limited", "foreign");
            let args: Vec<_> = cmd.get_args().map(ToOwned::to_owned).collect();
            let envs: Vec<_> = cmd
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
                .collect();
            cmd = Command::new(&exe);
            cmd.args(args).envs(envs);
            let status = cmd.uid(65534).gid(65534).status();
            std::fs::remove_dir_all(&dir).unwrap();
            let status = status.unwrap();
            assert!(status.success(), "{status}");
        }
        "oversized" => {
            // Cut at 4096 bytes, it would still read as a complete FDSTORE=1.
            let fd = shm_fd::state::create("big", 8192).unwrap();
            let message = format!("FDSTORE=1\nFDNAME=big\nSTATUS={}\n", "x".repeat(5000));
            assert!(shm_fd::notify::notify(&message, &[fd.as_fd()]).unwrap());
            let fd = shm_fd::state::create("small", 8192).unwrap();
            assert!(shm_fd::notify::store_fd("small", fd.as_fd()).unwrap());
        }
        "foreign" => {
            for _ in 0..FOREIGN {
                assert!(shm_fd::notify::notify("FDSTORE=1\nFDNAME=intruder", &[]).unwrap());
            }
        }
        other => panic!("unknown role {other}"),
    }
    true
}

/// `shm-fd --supervise OPTS -- <this test binary as MODE>`.
fn supervise(test: &str, mode: &str, opts: &[&str]) -> Command {
    let inner = role_command(test, mode);
    let mut cmd = Command::new(SHM_FD);
    cmd.arg("--supervise")
        .args(opts)
        .arg("--")
        .arg(inner.get_program())
        .args(inner.get_args())
        .env(shm_testkit::ROLE_ENV, mode)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `cmd` to its end (at most `timeout`): its status, stdout and stderr.
fn run(mut cmd: Command, timeout: Duration) -> (std::process::ExitStatus, String, String) {
    let mut child = spawn(&mut cmd).unwrap();
    let mut out = child.inner_mut().stdout.take().unwrap();
    let mut err = child.inner_mut().stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let Some(status) = child.wait_timeout(timeout).unwrap() else {
        let _ = child.sigkill_and_wait();
        panic!(
            "shm-fd --supervise still ran after {timeout:?}:\n{}",
            t_err.join().unwrap()
        )
    };
    (status, t_out.join().unwrap(), t_err.join().unwrap())
}

#[test]
fn a_child_that_ignores_sigterm_is_killed_after_the_stop_timeout() {
    if dispatch() {
        return;
    }
    let _w = Watchdog::new(Duration::from_secs(60));
    let test = "a_child_that_ignores_sigterm_is_killed_after_the_stop_timeout";
    let mut cmd = supervise(test, "ignore_term", &["--stop-timeout", "1s"]);
    let mut sup = spawn(&mut cmd).unwrap();
    let out = sup.inner_mut().stdout.take().unwrap();
    let mut err = sup.inner_mut().stderr.take().unwrap();
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut lines = BufReader::new(out).lines().map_while(Result::ok);
    // libtest prints "test NAME ... " before the role's own output.
    assert!(lines.any(|l| l.ends_with("READY")));
    sup.kill(rustix::process::Signal::TERM).unwrap();
    let asked = Instant::now();
    let status = sup.wait_timeout(Duration::from_secs(20)).unwrap();
    let took = asked.elapsed();
    let err = t_err.join().unwrap();
    let status = status.unwrap_or_else(|| panic!("still running 20 s after SIGTERM:\n{err}"));
    // It exits like its child: killed by SIGKILL.
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}\n{err}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{took:?}\n{err}"
    );
    assert!(
        err.contains("did not exit within 1s of the stop signal: sending SIGKILL"),
        "{err}"
    );
}

#[test]
fn a_child_that_exits_at_once_is_not_restarted_forever() {
    if dispatch() {
        return;
    }
    let _w = Watchdog::new(Duration::from_secs(60));
    let test = "a_child_that_exits_at_once_is_not_restarted_forever";
    // The defaults: 5 starts within 10 s, then give up, exiting like the child.
    let started = Instant::now();
    let (status, _, err) = run(
        supervise(
            test,
            "exit_at_once",
            &["--restart=always", "--restart-delay=10ms"],
        ),
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(3), "{err}");
    assert_eq!(err.matches("shm-fd: started \"").count(), 5, "{err}");
    assert!(
        err.contains("not restarting it: it was started 5 times within 10s (--restart-burst 5 --restart-interval 10s)"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // Configured: 3 starts.
    let (status, _, err) = run(
        supervise(
            test,
            "exit_at_once",
            &[
                "--restart=on-failure",
                "--restart-delay=0",
                "--restart-burst=3",
                "--restart-interval=1min",
            ],
        ),
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(3), "{err}");
    assert_eq!(err.matches("shm-fd: started \"").count(), 3, "{err}");

    // Backing off instead: the delays double (200 ms, 400 ms, then at most
    // 400 ms), so in 3 s there are a handful of starts, not hundreds; a
    // stop request while it waits ends it.
    let mut cmd = supervise(
        test,
        "exit_at_once",
        &[
            "--restart=always",
            "--restart-delay=10ms",
            "--restart-burst=2",
            "--restart-max-backoff=400ms",
        ],
    );
    let mut sup = spawn(&mut cmd).unwrap();
    let mut err = sup.inner_mut().stderr.take().unwrap();
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    std::thread::sleep(Duration::from_secs(3));
    sup.kill(rustix::process::Signal::TERM).unwrap();
    let status = sup.wait_timeout(Duration::from_secs(10)).unwrap();
    let err = t_err.join().unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(3), "{err}");
    let starts = err.matches("shm-fd: started \"").count();
    assert!((5..=12).contains(&starts), "{starts} starts in 3 s:\n{err}");
    assert!(err.contains("restarting in 200ms, backing off"), "{err}");
    assert!(err.contains("restarting in 400ms, backing off"), "{err}");
    assert!(!err.contains("restarting in 800ms"), "{err}");
}

#[test]
fn the_store_holds_at_most_fd_store_max_fds() {
    if dispatch() {
        return;
    }
    let _w = Watchdog::new(Duration::from_secs(120));
    let test = "the_store_holds_at_most_fd_store_max_fds";
    for (opts, max) in [
        (
            &["--restart=always", "--restart-delay=0", "--restart-burst=3"][..],
            256,
        ),
        (
            &[
                "--restart=always",
                "--restart-delay=0",
                "--restart-burst=3",
                "--fd-store-max=100",
            ][..],
            100,
        ),
    ] {
        let (status, out, err) = run(
            supervise(test, "flood_store", opts),
            Duration::from_secs(60),
        );
        assert!(status.success(), "{status:?}\n{err}");
        let inherited: Vec<usize> = out
            .lines()
            .filter_map(|l| l.split("INHERITED ").nth(1)?.trim().parse().ok())
            .collect();
        // The region "state", then a full store at each restart.
        assert_eq!(inherited, vec![1, max, max], "{err}");
        // Refusals: one line per datagram, at most 10 in a 5 s window, then a count.
        let refusals = err.matches("the store is full").count();
        assert!(
            (1..=10).contains(&refusals),
            "{refusals} refusal lines:\n{err}"
        );
        assert!(
            err.contains("more refusals of fds for a full store not logged"),
            "{err}"
        );
    }
}

#[test]
fn foreign_notifications_are_logged_rate_limited() {
    if dispatch() {
        return;
    }
    let _w = Watchdog::new(Duration::from_secs(120));
    let test = "foreign_notifications_are_logged_rate_limited";
    let (status, _, err) = run(
        supervise(test, "flood_foreign", &[]),
        Duration::from_secs(100),
    );
    assert!(status.success(), "{status:?}\n{err}");
    let shown = err.matches("ignoring a notification from pid").count();
    assert!(err.contains("(uid Some(65534))"), "{err}");
    let suppressed: usize = err
        .lines()
        .filter_map(|l| {
            let n = l
                .split(" more notifications from other processes not logged")
                .next()?;
            (n.len() < l.len()).then_some(())?;
            n.rsplit(' ').next()?.parse::<usize>().ok()
        })
        .sum();
    assert!(
        shown <= 10 * (1 + err.matches("not logged").count()),
        "{shown} lines:\n{err}"
    );
    assert_eq!(
        shown + suppressed,
        FOREIGN,
        "every datagram is counted:\n{err}"
    );
    assert!(
        err.lines().count() < 100,
        "{} lines of log",
        err.lines().count()
    );
}

#[test]
fn an_oversized_notification_is_ignored_not_applied_in_part() {
    if dispatch() {
        return;
    }
    let _w = Watchdog::new(Duration::from_secs(60));
    let test = "an_oversized_notification_is_ignored_not_applied_in_part";
    let (status, _, err) = run(supervise(test, "oversized", &[]), Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{err}");
    assert!(
        err.contains("ignoring a truncated notification from pid"),
        "{err}"
    );
    assert!(err.contains("stored fd(s) as \"small\""), "{err}");
    assert!(!err.contains("\"big\""), "{err}");
}
