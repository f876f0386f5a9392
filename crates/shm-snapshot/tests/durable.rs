//! Durable commits across real processes: a host process serves the memfd
//! (warm start on the memfd this test keeps), the test's threads and a
//! second process commit and wait, and FILE is read back with
//! `shm_snapshot::restore` after every successful wait.

mod common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering}; // atomics-ok: test bookkeeping, not a shared layout
use std::time::{Duration, Instant};

use shm_snapshot::host::{HostConfig, SnapshotHost, Work};
use shm_snapshot::live::{Client, WaitError, Waiter};
use shm_snapshot::{FileStorage, restore};

const REGION: u64 = 64 * 4096;

/// The program generation FILE holds (its newest commit's tag) and the
/// first 8 bytes of page `page` of its state.
fn file_state(path: &Path, page: usize) -> (u64, u64) {
    let f = FileStorage::open(path, false).unwrap();
    let mut word = [0u8; 8];
    let at = 4096 + (page as u64) * 4096;
    let r = restore(&f, |off, b| {
        let end = off + b.len() as u64;
        if off <= at && at + 8 <= end {
            let o = usize::try_from(at - off).unwrap();
            word.copy_from_slice(&b[o..o + 8]);
        }
    })
    .unwrap();
    (r.info.tag, u64::from_le_bytes(word))
}

/// An in-process host on a fresh FILE (`state.snap` in a new directory
/// named after `name`), created with a state of [`REGION`] bytes.
fn new_host(name: &str) -> (PathBuf, SnapshotHost) {
    let dir = std::env::temp_dir().join(format!("durable-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("state.snap");
    let config = HostConfig {
        create: true,
        size: REGION,
        ..HostConfig::new(&file)
    };
    let host = SnapshotHost::open(config, None).unwrap();
    (file, host)
}

/// A fresh FILE (through an in-process host, dropped again) and its memfd,
/// kept by the test; `/proc/self/fd/N` of it for the children.
fn setup(name: &str) -> (PathBuf, OwnedFd, String) {
    let (file, host) = new_host(name);
    let memfd = host.memfd().try_clone_to_owned().unwrap();
    drop(host);
    // A child another test forks in this process may hold a copy of the
    // dropped host's lock description until it execs: wait for the release.
    let t = Instant::now();
    while shm_segment::is_locked(memfd.as_fd(), shm_snapshot::live::HOST_LOCK_BYTE).unwrap() {
        assert!(t.elapsed() < Duration::from_secs(10), "the lock stays held");
        std::thread::yield_now();
    }
    let path = format!("/proc/{}/fd/{}", std::process::id(), memfd.as_raw_fd());
    (file, memfd, path)
}

/// The host role: a warm start on the test's memfd, then the
/// `shm-restore` loop until killed.
fn host_role() {
    let fd: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(std::env::var("MEMFD_PATH").unwrap())
        .unwrap()
        .into();
    let file = std::env::var("FILE").unwrap();
    #[allow(unused_mut)]
    let mut config = HostConfig::new(file);
    #[cfg(feature = "replica")]
    if let Ok(url) = std::env::var("REPLICA_URL") {
        config.replica = Some(shm_snapshot::replica::ReplicaConfig::new(url));
    }
    let mut host = SnapshotHost::open(config, Some(fd)).unwrap();
    println!("host ready");
    loop {
        match host.wait_for_work(Instant::now() + Duration::from_secs(1)) {
            Work::Waiters | Work::Commits => host.serve_waiters(),
            _ => host.tick(),
        }
    }
}

/// Starts a host process on `memfd_path` and waits until it holds the lock.
fn start_host(test: &str, memfd_path: &str, file: &Path) -> shm_testkit::Child {
    start_host_with(test, memfd_path, file, &[])
}

/// [`start_host`] with extra environment (`REPLICA_URL`, `AWS_*`).
fn start_host_with(
    test: &str,
    memfd_path: &str,
    file: &Path,
    env: &[(&str, &str)],
) -> shm_testkit::Child {
    let mut cmd = shm_testkit::role_command(test, "host");
    cmd.envs(env.iter().copied());
    cmd.env("MEMFD_PATH", memfd_path)
        .env("FILE", file)
        .stdout(Stdio::piped());
    let mut child = shm_testkit::spawn(cmd).unwrap();
    let mut lines = child.stdout_lines();
    lines.wait_for("host ready");
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

/// Commits generation `g`: writes `g` into page `g % 64` and commits it.
fn commit(c: &Client, g: u64) -> u64 {
    let page = usize::try_from(g % 64).unwrap() * 4096;
    c.work().write_bytes(page, &g.to_le_bytes()).unwrap();
    c.commit(std::slice::from_ref(&(page..page + 8)))
}

#[test]
fn wait_returns_once_file_holds_the_generation_even_if_the_host_dies_right_after() {
    const TEST: &str =
        "wait_returns_once_file_holds_the_generation_even_if_the_host_dies_right_after";
    if shm_testkit::role().is_some() {
        host_role();
        return;
    }
    let _w = shm_testkit::Watchdog::new(Duration::from_secs(120));
    let (file, memfd, path) = setup("basic");
    let client = Client::open(memfd.as_fd()).unwrap();
    // No host: NoHost at once, even with a long timeout.
    let g = commit(&client, 1);
    let t = Instant::now();
    assert_eq!(
        client.wait_durable(g, Duration::from_secs(30)),
        Err(WaitError::NoHost)
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    // Future: a generation not committed yet.
    assert_eq!(
        client.wait_durable(g + 1, Duration::from_secs(1)),
        Err(WaitError::Future {
            requested: g + 1,
            committed: g
        })
    );
    for round in 0..3 {
        let mut host = start_host(TEST, &path, &file);
        for _ in 0..5 {
            let g = commit(&client, client.generation() + 1);
            let d = client.wait_durable(g, Duration::from_secs(30)).unwrap();
            assert!(d >= g);
            let (fg, word) = file_state(&file, usize::try_from(g % 64).unwrap());
            assert!(fg >= g, "Ok({d}) for {g} but FILE holds {fg}");
            assert_eq!(word, g, "FILE's page of generation {g}");
            // Timeout zero: a durable generation answers at once.
            assert_eq!(client.wait_durable(g, Duration::ZERO), Ok(d));
        }
        // Killed right after a wait returned: a cold restore has it.
        let g = commit(&client, client.generation() + 1);
        client.wait_durable(g, Duration::from_secs(30)).unwrap();
        host.sigkill_and_wait().unwrap();
        let (fg, word) = file_state(&file, usize::try_from(g % 64).unwrap());
        assert!(
            fg >= g,
            "round {round}: FILE holds {fg} < {g} after the kill"
        );
        assert_eq!(word, g);
        // With the host gone: NoHost at once for a generation not durable.
        let g = commit(&client, g + 1);
        assert_eq!(
            client.wait_durable(g, Duration::from_secs(30)),
            Err(WaitError::NoHost)
        );
        assert_eq!(
            client.wait_durable(g, Duration::ZERO),
            Err(WaitError::NoHost)
        );
    }
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}

/// Timeout zero with a live host that has not snapshotted yet: `Timeout`.
#[test]
fn timeout_zero_checks_once() {
    const TEST: &str = "timeout_zero_checks_once";
    if shm_testkit::role().is_some() {
        host_role();
        return;
    }
    let _w = shm_testkit::Watchdog::new(Duration::from_secs(60));
    let (file, memfd, path) = setup("zero");
    let client = Client::open(memfd.as_fd()).unwrap();
    let _host = start_host(TEST, &path, &file);
    // The host's next tick is up to a second away and nobody asked yet.
    let g = commit(&client, 1);
    match client.wait_durable(g, Duration::ZERO) {
        Err(WaitError::Timeout { requested, .. }) => assert_eq!(requested, g),
        // The first commit wakes the host at once: it may have been that fast.
        Ok(d) => assert!(d >= g && file_state(&file, 1).0 >= g),
        other => panic!("{other:?}"),
    }
    assert!(client.wait_durable(g, Duration::from_secs(30)).unwrap() >= g);
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}

#[test]
fn polling_and_parked_waits_return_only_once_file_holds_the_generation() {
    const TEST: &str = "polling_and_parked_waits_return_only_once_file_holds_the_generation";
    if shm_testkit::role().is_some() {
        host_role();
        return;
    }
    let _w = shm_testkit::Watchdog::new(Duration::from_secs(120));
    let (file, memfd, path) = setup("poll");
    let client = Client::open(memfd.as_fd()).unwrap();
    assert_eq!(client.wait_spin(), Duration::ZERO, "off by default");
    let _host = start_host(TEST, &path, &file);
    for round in 0..60u64 {
        // Never polling, polling within a 1 ms cap, and a cap so long
        // that every wait polls until it ends.
        let cap = [
            Duration::ZERO,
            Duration::from_millis(1),
            Duration::from_secs(1),
        ][(round % 3) as usize];
        client.set_wait_spin(cap);
        assert_eq!(client.wait_spin(), cap);
        let g = commit(&client, round + 1);
        let d = client.wait_durable(g, Duration::from_secs(30)).unwrap();
        assert!(d >= g, "{d} < {g}");
        let (tag, word) = file_state(&file, usize::try_from(g % 64).unwrap());
        assert!(
            tag >= g,
            "wait returned {d} for {g}, FILE holds {tag} (cap {cap:?})"
        );
        assert_eq!(word, g, "page of generation {g}");
    }
    // Several threads of one client (one polls, the others park) all
    // return, each with its generation in FILE.
    client.set_wait_spin(Duration::from_secs(1));
    let commits = std::sync::Mutex::new(100u64);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..20 {
                    let g = {
                        let mut next = commits.lock().unwrap();
                        *next += 1;
                        commit(&client, *next)
                    };
                    assert!(client.wait_durable(g, Duration::from_secs(30)).unwrap() >= g);
                    assert!(file_state(&file, 0).0 >= g);
                }
            });
        }
    });
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}

/// Waits again and again, until `stop`, for the generation `behind` the
/// newest committed one; after each successful wait FILE must hold it. A
/// host that dies during a wait (`HostGone`) or is not there (`NoHost`) is
/// expected; `who` names the waiter in a failure. Returns the successful
/// waits and the `HostGone` ones.
fn wait_until_stopped(
    on: &Waits<'_>,
    file: &Path,
    behind: u64,
    stop: &AtomicBool,
    who: &str,
) -> (u64, u64) {
    let (mut oks, mut gone) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let g = on.generation().saturating_sub(behind);
        match on.wait_durable(g) {
            Ok(d) => {
                assert!(d >= g);
                let (fg, _) = file_state(file, 0);
                assert!(fg >= g, "Ok({d}) for {g} but FILE holds {fg}");
                oks += 1;
            }
            Err(WaitError::HostGone) => gone += 1,
            Err(WaitError::NoHost) => std::thread::yield_now(),
            Err(e) => panic!("{who}: {e}"),
        }
    }
    (oks, gone)
}

/// Who waits: the committing client, or a waiter of another process.
enum Waits<'a> {
    Client(&'a Client),
    Waiter(&'a Waiter),
}

impl Waits<'_> {
    fn generation(&self) -> u64 {
        match self {
            Waits::Client(c) => c.generation(),
            Waits::Waiter(w) => w.generation(),
        }
    }

    fn wait_durable(&self, g: u64) -> Result<u64, WaitError> {
        let timeout = Duration::from_secs(20);
        match self {
            Waits::Client(c) => c.wait_durable(g, timeout),
            Waits::Waiter(w) => w.wait_durable(g, timeout),
        }
    }
}

/// The waiter role: opens a waiter (a waiter never touches the state, so
/// it may open at any time), then waits
/// for whatever is committed until told to stop (its stdin closes).
fn waiter_role() {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(std::env::var("MEMFD_PATH").unwrap())
        .unwrap();
    let file = PathBuf::from(std::env::var("FILE").unwrap());
    let waiter = Waiter::open(f.as_fd()).unwrap();
    println!("waiter ready");
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().lines().count();
        s.store(true, Ordering::Relaxed);
    });
    let (oks, gone) =
        wait_until_stopped(&Waits::Waiter(&waiter), &file, 0, &stop, "waiter process");
    println!("waiter done: {oks} ok, {gone} host gone");
}

#[test]
fn many_waiters_survive_host_kills_and_restarts() {
    const TEST: &str = "many_waiters_survive_host_kills_and_restarts";
    match shm_testkit::role().as_deref() {
        Some("host") => return host_role(),
        Some("waiter") => return waiter_role(),
        _ => {}
    }
    let _w = shm_testkit::Watchdog::new(Duration::from_secs(240));
    let (file, memfd, path) = setup("many");
    let client = Arc::new(Client::open(memfd.as_fd()).unwrap());
    let mut waiter = {
        let mut cmd = shm_testkit::role_command(TEST, "waiter");
        cmd.env("MEMFD_PATH", &path)
            .env("FILE", &file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        shm_testkit::spawn(cmd).unwrap()
    };
    let mut waiter_lines = waiter.stdout_lines();
    waiter_lines.wait_for("waiter ready");
    let mut host = start_host(TEST, &path, &file);
    let stop = Arc::new(AtomicBool::new(false));
    // The committer: one thread (commits never overlap).
    let committer = {
        let (c, stop) = (client.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                commit(&c, c.generation() + 1);
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    // Waiters on different generations: the newest, and ones behind it.
    let waiters: Vec<_> = (0..6u64)
        .map(|k| {
            let (c, stop, file) = (client.clone(), stop.clone(), file.clone());
            std::thread::spawn(move || {
                wait_until_stopped(&Waits::Client(&c), &file, k, &stop, &format!("waiter {k}"))
            })
        })
        .collect();
    for _ in 0..4 {
        let until = client.generation() + 20;
        let t = Instant::now();
        while client.durable_generation() < until {
            assert!(t.elapsed() < Duration::from_secs(60), "no progress");
            std::thread::sleep(Duration::from_millis(5));
        }
        host.sigkill_and_wait().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        host = start_host(TEST, &path, &file);
    }
    stop.store(true, Ordering::Relaxed);
    committer.join().unwrap();
    let mut total = 0;
    for w in waiters {
        let (oks, _gone) = w.join().unwrap();
        total += oks;
    }
    assert!(total > 0);
    drop(waiter.inner_mut().stdin.take());
    let status = waiter.wait_status(Duration::from_secs(60));
    assert!(status.success(), "the waiter process failed");
    drop(host);
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}

/// The async form, with the host on a thread of this process.
#[cfg(feature = "tokio")]
#[test]
fn async_wait_returns_once_durable() {
    let _w = shm_testkit::Watchdog::new(Duration::from_secs(60));
    let (file, mut host) = new_host("async");
    let client = Arc::new(Client::open(host.memfd()).unwrap());
    let (waker, stop) = (host.waker(), Arc::new(AtomicBool::new(false)));
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            match host.wait_for_work(Instant::now() + Duration::from_secs(1)) {
                Work::Waiters | Work::Commits => host.serve_waiters(),
                Work::Interrupted => {}
                _ => host.tick(),
            }
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for g in 1..=3 {
        assert_eq!(commit(&client, g), g);
        let d = rt
            .block_on(
                client
                    .clone()
                    .wait_durable_async(g, Duration::from_secs(30)),
            )
            .unwrap();
        assert!(d >= g);
        assert!(file_state(&file, usize::try_from(g).unwrap()).0 >= g);
    }
    stop.store(true, Ordering::Relaxed);
    waker.wake();
    thread.join().unwrap();
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}

/// A replicated wait on a host without a replica fails at once with
/// `NoReplica`, whatever the timeout (and without a host: `NoHost`).
#[test]
fn replicated_wait_without_a_replica_fails_at_once() {
    const TEST: &str = "replicated_wait_without_a_replica_fails_at_once";
    if shm_testkit::role().is_some() {
        host_role();
        return;
    }
    let _w = shm_testkit::Watchdog::new(Duration::from_secs(60));
    let (file, memfd, path) = setup("noreplica");
    let client = Client::open(memfd.as_fd()).unwrap();
    let g = commit(&client, 1);
    assert_eq!(
        client.wait_replicated(g, Duration::from_secs(30)),
        Err(WaitError::NoHost)
    );
    let _host = start_host(TEST, &path, &file);
    let t = Instant::now();
    assert_eq!(
        client.wait_replicated(g, Duration::from_secs(30)),
        Err(WaitError::NoReplica)
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(client.replicated_generation(), 0);
    // The durable wait is unaffected.
    assert!(client.wait_durable(g, Duration::from_secs(30)).unwrap() >= g);
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}

/// A host whose store never answers: a replicated wait times out with the
/// timeout error once its generation is durable; a host killed during the
/// wait wakes it with `HostGone`, as for a durable wait.
#[cfg(feature = "replica")]
#[test]
fn replicated_wait_ends_with_host_gone_when_the_host_dies() {
    const TEST: &str = "replicated_wait_ends_with_host_gone_when_the_host_dies";
    if shm_testkit::role().is_some() {
        host_role();
        return;
    }
    let _w = shm_testkit::Watchdog::new(Duration::from_secs(60));
    let (file, memfd, path) = setup("replicagone");
    let client = Arc::new(Client::open(memfd.as_fd()).unwrap());
    // Port 9 (discard) on loopback: nothing listens, every upload fails.
    let env = [
        ("REPLICA_URL", "s3://nowhere/p"),
        ("AWS_ENDPOINT", "http://127.0.0.1:9"),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "x"),
        ("AWS_SECRET_ACCESS_KEY", "x"),
    ];
    let mut host = start_host_with(TEST, &path, &file, &env);
    let g = commit(&client, 1);
    let t = Instant::now();
    match client.wait_replicated(g, Duration::from_millis(300)) {
        Err(WaitError::Timeout {
            requested,
            level: shm_snapshot::live::Level::Replicated,
            reached: 0,
        }) => assert_eq!(requested, g),
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // Its request made the host snapshot at once.
    assert!(client.durable_generation() >= g);
    let waiter = std::thread::spawn({
        let client = client.clone();
        move || client.wait_replicated(g, Duration::from_secs(60))
    });
    // Let the waiter park on the futex (a late one finds the host gone at
    // its first liveness check: the same error).
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    host.sigkill_and_wait().unwrap();
    assert_eq!(waiter.join().unwrap(), Err(WaitError::HostGone));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}
