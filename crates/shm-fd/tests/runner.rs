//! `shm_fd::child::Runner` with real children (`/bin/sh`): signals this
//! process receives reach the child, a child that ignores SIGTERM is
//! SIGKILLed after the stop timeout, and the waits end when they should.
//!
//! The runner's signal handlers are process-wide, and a signal this test
//! sends itself reaches every runner alive: the tests take turns (`LOCK`).

use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use shm_fd::child::{FORWARDED_SIGNALS, Runner, STOP_SIGNALS, Wake};
use shm_testkit::Watchdog;

static LOCK: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts `sh -c script` under `runner` and waits until it prints `ready`.
fn start(runner: &mut Runner, script: &str) -> u32 {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let pid = {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script).stdout(Stdio::from(write));
        runner.spawn(&mut cmd).unwrap()
        // `cmd` and with it our copy of the write end are dropped here.
    };
    let mut line = String::new();
    BufReader::new(std::fs::File::from(read))
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n", "the child did not start");
    pid
}

/// Sends `sig` to this process, as a service manager or a shell would.
fn raise(sig: Signal) {
    rustix::process::kill_process(rustix::process::getpid(), sig).unwrap();
}

fn long() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

#[test]
fn a_child_that_ignores_sigterm_is_killed_after_the_stop_timeout() {
    let _turn = one_at_a_time();
    let _w = Watchdog::new(Duration::from_secs(120));
    let mut sut = Runner::new(Some(Duration::from_millis(300))).unwrap();
    // SIG_IGN survives exec: `sleep` ignores SIGTERM too.
    start(&mut sut, "trap '' TERM; echo ready; exec sleep 60");
    raise(Signal::TERM);
    let status = sut
        .wait_until(long())
        .unwrap()
        .expect("killed well before 60 s");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert_eq!(sut.stop_requested(), Some(Signal::TERM));
    assert_eq!(sut.pid(), None);
}

#[test]
fn without_a_stop_timeout_the_child_is_never_killed() {
    let _turn = one_at_a_time();
    let _w = Watchdog::new(Duration::from_secs(120));
    let mut sut = Runner::new(None).unwrap();
    start(&mut sut, "trap '' TERM; echo ready; exec sleep 60");
    raise(Signal::TERM);
    let deadline = Instant::now() + Duration::from_millis(500);
    assert_eq!(sut.wait_until(deadline).unwrap(), None);
    assert!(sut.pid().is_some());
    sut.signal(Signal::KILL).unwrap();
    assert_eq!(sut.wait().unwrap().signal(), Some(libc::SIGKILL));
}

#[test]
fn every_forwarded_signal_reaches_the_child() {
    let _turn = one_at_a_time();
    let _w = Watchdog::new(Duration::from_secs(120));
    let mut sut = Runner::new(Some(Duration::from_secs(60))).unwrap();
    for (i, &raw) in FORWARDED_SIGNALS.iter().enumerate() {
        let sig = Signal::from_named_raw(raw).unwrap();
        let code = 10 + i as i32;
        // The trap runs when `wait` is interrupted; it ends the sleep too.
        start(
            &mut sut,
            &format!("trap 'kill $! 2>/dev/null; exit {code}' {raw}; echo ready; sleep 60 & wait"),
        );
        raise(sig);
        let status = sut
            .wait_until(long())
            .unwrap()
            .expect("exits on the signal");
        assert_eq!(status.code(), Some(code), "signal {raw}: {status:?}");
        // Only the stop signals count as a stop request.
        let first_stop = FORWARDED_SIGNALS[..=i]
            .iter()
            .find(|s| STOP_SIGNALS.contains(s))
            .map(|&s| Signal::from_named_raw(s).unwrap());
        assert_eq!(sut.stop_requested(), first_stop, "after signal {raw}");
    }
}

#[test]
fn wait_until_returns_none_at_the_deadline_and_the_child_runs_on() {
    let _turn = one_at_a_time();
    let _w = Watchdog::new(Duration::from_secs(120));
    let mut sut = Runner::new(Some(Duration::from_secs(60))).unwrap();
    let pid = start(&mut sut, "echo ready; exec sleep 60");
    for wait in [
        Duration::ZERO,
        Duration::from_millis(1),
        Duration::from_millis(200),
    ] {
        let deadline = Instant::now() + wait;
        assert_eq!(sut.wait_until(deadline).unwrap(), None);
        assert!(Instant::now() >= deadline, "returned before the deadline");
        assert_eq!(sut.pid(), Some(pid));
    }
    // A non-stop signal is forwarded without ending the wait.
    raise(Signal::USR1);
    let status = sut.wait_until(long()).unwrap().expect("USR1 ends `sleep`");
    assert_eq!(status.signal(), Some(libc::SIGUSR1));
    assert_eq!(sut.stop_requested(), None);
    let err = sut.wait().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
}

#[test]
fn with_no_child_a_stop_signal_ends_the_wait() {
    let _turn = one_at_a_time();
    let _w = Watchdog::new(Duration::from_secs(120));
    let mut sut = Runner::new(Some(Duration::from_secs(60))).unwrap();
    let deadline = Instant::now() + Duration::from_millis(100);
    assert_eq!(sut.wait_until(deadline).unwrap(), None);
    assert!(Instant::now() >= deadline);
    raise(Signal::USR2); // not a stop: the wait goes on
    raise(Signal::INT);
    let asked = Instant::now();
    assert_eq!(sut.wait_until(long()).unwrap(), None);
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "waited for the deadline, not for the stop signal"
    );
    assert_eq!(sut.stop_requested(), Some(Signal::INT));
    // A stop already requested ends the next wait at once.
    assert_eq!(sut.wait_until(long()).unwrap(), None);
}

#[test]
fn wait_or_readable_wakes_for_the_fd_and_reports_the_exit() {
    let _turn = one_at_a_time();
    let _w = Watchdog::new(Duration::from_secs(120));
    let mut sut = Runner::new(Some(Duration::from_secs(60))).unwrap();
    let pid = start(&mut sut, "echo ready; exec sleep 60");
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    std::io::Write::write_all(&mut &a, b"x").unwrap();
    assert_eq!(
        sut.wait_or_readable(b.as_fd(), None).unwrap(),
        Wake::Readable
    );
    assert_eq!(sut.pid(), Some(pid));
    // A second child while the first runs is refused.
    let err = sut.spawn(&mut Command::new("/bin/true")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ResourceBusy, "{err}");
    sut.signal(Signal::TERM).unwrap();
    let (c, d) = std::os::unix::net::UnixStream::pair().unwrap();
    match sut.wait_or_readable(d.as_fd(), None).unwrap() {
        Wake::Exited(status) => assert_eq!(status.signal(), Some(libc::SIGTERM)),
        other => panic!("{other:?}"),
    }
    drop(c);
}
