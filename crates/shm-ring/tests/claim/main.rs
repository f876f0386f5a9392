//! One producer and one consumer per ring: a second live holder of an end is
//! refused with `OpenError::InUse`, in this process or another, and a dead
//! holder's claim (SIGKILL included) is taken over on open.
//!
//! The cross-process tests re-run this binary in a role (`shm_testkit::role`)
//! that gets the ring through the socket handshake.
#![cfg(not(shm_loom))]
// `fcntl(F_OFD_GETLK)` through libc, to look at the claims' locks from outside.
#![allow(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use shm_ring::{
    ConnectError, Connector, Consumer, ElemLayout, Listener, OpenError, Producer, RingFds, Role,
    channel,
};
use shm_testkit::{Watchdog, role, role_command, unique_name};

fn ring() -> RingFds {
    RingFds::create("claim", 8, ElemLayout::of::<u64>()).unwrap()
}

fn in_use<T>(r: &Result<T, OpenError>, end: &str) -> bool {
    matches!(r, Err(OpenError::InUse { end: e }) if *e == end)
}

#[test]
fn a_second_producer_or_consumer_in_this_process_is_refused() {
    let fds = ring();
    let clone = fds.try_clone().unwrap();
    let mut tx = Producer::<u64>::open(&fds, None).unwrap();
    let mut rx = Consumer::<u64>::open(&fds, None).unwrap();
    assert!(in_use(&Producer::<u64>::open(&fds, None), "producer"));
    assert!(
        in_use(&Producer::<u64>::open(&clone, None), "producer"),
        "dup'ed fds share the open file description; the claim does not"
    );
    assert!(in_use(&Consumer::<u64>::open(&fds, None), "consumer"));
    assert!(in_use(&Consumer::<u64>::open(&clone, None), "consumer"));
    let err = Producer::<u64>::open(&fds, None).unwrap_err().to_string();
    assert!(err.contains("producer end"), "{err}");
    // The refused opens left the holders' lines alone.
    tx.try_send(7).unwrap();
    assert_eq!(rx.try_recv().unwrap(), Some(7));
    tx.try_send(8).unwrap();
    // A dropped end is free again, and the new holder resumes where it stopped.
    drop(tx);
    let mut tx = Producer::<u64>::open(&clone, None).unwrap();
    assert_eq!(tx.position(), 2);
    drop(rx);
    let mut rx = Consumer::<u64>::open(&clone, None).unwrap();
    assert_eq!(rx.try_recv().unwrap(), Some(8));
    tx.try_send(9).unwrap();
    assert_eq!(rx.try_recv().unwrap(), Some(9));
}

#[test]
fn channel_ends_are_claimed() {
    let (tx, rx) = channel::<u64>(8).unwrap();
    drop((tx, rx));
}

/// The type of the lock (`F_WRLCK`, or `F_UNLCK` for none) that a new open
/// file description of `fds.memfd` would run into on byte `byte`.
fn lock_on(fds: &RingFds, byte: u64) -> libc::c_short {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", fds.memfd.as_raw_fd());
    let probe = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: `libc::flock` is a plain C struct for which all-zero bytes are valid.
    let mut fl: libc::flock = unsafe { core::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte as libc::off_t;
    fl.l_len = 1;
    // SAFETY: `probe` is open for the whole call; `fl` is a valid, initialised
    // `struct flock` (`l_pid` 0, as F_OFD_GETLK requires) that outlives it.
    let rc = unsafe { libc::fcntl(probe.as_raw_fd(), libc::F_OFD_GETLK, &raw mut fl) };
    assert_eq!(rc, 0, "F_OFD_GETLK: {}", std::io::Error::last_os_error());
    fl.l_type
}

/// The claims lock the bytes that `docs/protocol/shm-ring.md` and the config
/// block name (the first byte of each end's line), and nothing else.
#[test]
fn claims_lock_the_documented_bytes() {
    use shm_ring::layout::{CONSUMER_CLAIM, PAYLOAD_OFFSET, PRODUCER_CLAIM, PRODUCER_LINE};
    assert_eq!(PRODUCER_CLAIM, (PAYLOAD_OFFSET + PRODUCER_LINE) as u64);
    assert_eq!((PRODUCER_CLAIM, CONSUMER_CLAIM), (4224, 4352));
    let fds = ring();
    let unlocked = libc::F_UNLCK as libc::c_short;
    let locked = libc::F_WRLCK as libc::c_short;
    assert_eq!(lock_on(&fds, PRODUCER_CLAIM), unlocked);
    let tx = Producer::<u64>::open(&fds, None).unwrap();
    assert_eq!(lock_on(&fds, PRODUCER_CLAIM), locked);
    assert_eq!(lock_on(&fds, CONSUMER_CLAIM), unlocked);
    let rx = Consumer::<u64>::open(&fds, None).unwrap();
    assert_eq!(lock_on(&fds, CONSUMER_CLAIM), locked);
    for byte in [
        0,
        1,
        PRODUCER_CLAIM - 1,
        PRODUCER_CLAIM + 1,
        CONSUMER_CLAIM + 1,
    ] {
        assert_eq!(lock_on(&fds, byte), unlocked, "byte {byte}");
    }
    drop((tx, rx));
    assert_eq!(lock_on(&fds, PRODUCER_CLAIM), unlocked);
    assert_eq!(lock_on(&fds, CONSUMER_CLAIM), unlocked);
}

fn socket_path() -> PathBuf {
    std::env::temp_dir().join(format!("{}.sock", unique_name("claim")))
}

fn env_path() -> PathBuf {
    PathBuf::from(std::env::var("RING_SOCK").expect("RING_SOCK"))
}

/// Starts `role` of `test`, connected to `path`, with its stdout piped.
fn start(test: &str, role: &str, path: &PathBuf) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = role_command(test, role)
        .env("RING_SOCK", path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

/// The first line the child prints that is ours (the harness prints its own too).
fn said(out: &mut BufReader<std::process::ChildStdout>) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the child said nothing"
        );
        if let Some(word) = line.trim().split(' ').next_back()
            && word.starts_with("said:")
        {
            return word.trim_start_matches("said:").to_owned();
        }
    }
}

#[test]
fn a_live_producer_in_another_process_is_refused_and_a_sigkilled_one_is_taken_over() {
    const TEST: &str =
        "a_live_producer_in_another_process_is_refused_and_a_sigkilled_one_is_taken_over";
    if let Some(role) = role() {
        assert_eq!(role, "holder");
        let mut tx = Connector::new(env_path())
            .connect_producer::<u64>()
            .unwrap();
        tx.try_send(1).unwrap();
        println!("said:claimed");
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let path = socket_path();
    let listener = Listener::bind(&path).unwrap();
    let fds = ring();
    let (mut child, mut out) = start(TEST, "holder", &path);
    let link = listener
        .accept(&fds, Role::Producer, ElemLayout::of::<u64>())
        .unwrap();
    assert_eq!(said(&mut out), "claimed");
    assert!(
        in_use(&Producer::<u64>::open(&fds, None), "producer"),
        "the other process holds the producer end"
    );
    let mut rx = Consumer::<u64>::open(&fds, Some(link)).unwrap();
    assert_eq!(rx.try_recv().unwrap(), Some(1));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    // The kernel dropped the dead holder's lock with its last fd: the end is ours.
    let mut tx = Producer::<u64>::open(&fds, None).unwrap();
    assert_eq!(tx.position(), 1);
    tx.try_send(2).unwrap();
    assert_eq!(rx.try_recv().unwrap(), Some(2));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_second_consumer_process_is_refused_while_one_lives() {
    const TEST: &str = "a_second_consumer_process_is_refused_while_one_lives";
    if let Some(role) = role() {
        assert_eq!(role, "second");
        match Connector::new(env_path()).connect_consumer::<u64>() {
            Err(ConnectError::Open(OpenError::InUse { end })) => println!("said:in-use-{end}"),
            Err(e) => println!("said:error:{e}"),
            Ok(_) => println!("said:opened"),
        }
        return;
    }
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let path = socket_path();
    let listener = Listener::bind(&path).unwrap();
    let fds = ring();
    let _rx = Consumer::<u64>::open(&fds, None).unwrap();
    let (mut child, mut out) = start(TEST, "second", &path);
    listener
        .accept(&fds, Role::Consumer, ElemLayout::of::<u64>())
        .unwrap();
    assert_eq!(said(&mut out), "in-use-consumer");
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_file(&path);
}
