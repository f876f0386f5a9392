//! The commit protocol on a real memfd, and a full real filesystem.
#![allow(clippy::single_range_in_vec_init, clippy::cast_possible_truncation)]

use std::fs::OpenOptions;
use std::os::fd::AsFd;

use shm_snapshot::live::{self, Client, Host};
use shm_snapshot::{FileStorage, SnapshotWriter, inspect, restore};

fn memfd(region: u64) -> std::os::fd::OwnedFd {
    let fd = shm_segment::memfd::create(
        "live-test",
        live::memfd_size(region),
        shm_segment::memfd::FIXED_SIZE,
    )
    .unwrap();
    live::initialize(fd.as_fd(), region, 0, |_| {}).unwrap();
    fd
}

#[test]
fn host_sees_only_committed_state_and_reopen_discards_uncommitted() {
    let region = 3 * 4096 + 8;
    let fd = memfd(region);
    let client = Client::open(fd.as_fd()).unwrap();
    let host = Host::open(fd.as_fd()).unwrap();
    let mut buf = vec![0u8; region as usize];
    assert_eq!(host.copy(&mut buf, 1), Some(0));
    client.work().write_bytes(100, b"first").unwrap();
    assert_eq!(client.commit(&[100..105]), 1);
    client.work().write_bytes(5000, b"uncommitted").unwrap();
    assert_eq!(host.copy(&mut buf, 1), Some(1));
    assert_eq!(&buf[100..105], b"first");
    assert!(
        buf[5000..5011].iter().all(|&b| b == 0),
        "uncommitted bytes reached the host"
    );
    drop(client);
    // A new client starts from the committed state.
    let client = Client::open(fd.as_fd()).unwrap();
    let mut w = [0u8; 11];
    client.work().read_bytes(5000, &mut w).unwrap();
    assert_eq!(w, [0u8; 11]);
    assert_eq!(client.generation(), 1);
}

#[test]
fn foreign_memfd_is_refused() {
    let fd =
        shm_segment::memfd::create("foreign", 3 * 4096, shm_segment::memfd::FIXED_SIZE).unwrap();
    assert!(Host::open(fd.as_fd()).is_err());
    assert!(Client::open(fd.as_fd()).is_err());
}

/// A real full filesystem: a 1 MiB tmpfs (needs root; skipped with a message otherwise).
#[test]
fn full_tmpfs_keeps_previous_snapshot() {
    let dir = std::env::temp_dir().join(format!("shm-snapshot-full-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m"])
        .arg("tmpfs")
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        std::fs::remove_dir(&dir).unwrap();
        eprintln!(
            "full_tmpfs_keeps_previous_snapshot: cannot mount tmpfs here (not root?); only the injected ENOSPC test ran"
        );
        return;
    }
    let path = dir.join("s.snap");
    let region = 768 * 1024usize;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let mut w = SnapshotWriter::create(FileStorage(f), 4096, region as u64).unwrap();
    let mut state = vec![0u8; region];
    state[..100].fill(7);
    w.snapshot(&state).unwrap();
    let mut durable = (1u64, state.clone());
    let mut err = None;
    for v in 9u8..14 {
        state.fill(v);
        match w.snapshot(&state) {
            Ok(g) => durable = (g, state.clone()),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let e = err.expect("a 1 MiB filesystem never filled up");
    let full = e.is_disk_full();
    let f = std::fs::File::open(&path).unwrap();
    let info = inspect(&FileStorage(f.try_clone().unwrap())).unwrap();
    let mut restored = vec![0u8; region];
    restore(&FileStorage(f), |o, b| {
        restored[o as usize..o as usize + b.len()].copy_from_slice(b);
    })
    .unwrap();
    drop(w);
    let _ = std::process::Command::new("umount").arg(&dir).status();
    let _ = std::fs::remove_dir(&dir);
    assert!(full, "{e}");
    assert_eq!(info.generation, durable.0);
    assert!(
        restored == durable.1,
        "restored state is not the last durable one"
    );
}

/// Generation `g` of the exit test: `g` written into 3 pages chosen by `g`
/// (so each commit names three ranges and the crash point falls between them).
#[cfg(feature = "fault-injection")]
fn exit_generation(c: &Client, g: u64) -> Vec<std::ops::Range<usize>> {
    let pages = [
        g as usize % 8,
        (g as usize * 3 + 1) % 8,
        (g as usize * 5 + 2) % 8,
    ];
    pages
        .iter()
        .map(|p| {
            let at = p * 4096 + 16 * g as usize;
            c.work().write(at, &g).unwrap();
            at..at + 8
        })
        .collect()
}

#[cfg(feature = "fault-injection")]
fn exit_model(g: u64) -> Vec<u8> {
    let mut v = vec![0u8; 8 * 4096];
    for k in 1..=g {
        for p in [
            k as usize % 8,
            (k as usize * 3 + 1) % 8,
            (k as usize * 5 + 2) % 8,
        ] {
            let at = p * 4096 + 16 * k as usize;
            v[at..at + 8].copy_from_slice(&k.to_ne_bytes());
        }
    }
    v
}

/// A client SIGKILLed inside its n-th commit (crash point `client.mid_commit`,
/// the committed copy half written): `Host::copy` refuses the torn copy, but
/// once the program is gone `Host::copy_after_exit` takes exactly the state
/// of that commit from the work area, under the generation the next client
/// then gives it; so `shm-restore`'s exit snapshot loses nothing.
#[cfg(feature = "fault-injection")]
#[test]
fn host_after_exit_takes_the_commit_a_killed_client_was_inside() {
    const REGION: u64 = 8 * 4096;
    if let Some(role) = shm_testkit::role() {
        assert_eq!(role, "client");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(std::env::var("STATE_PATH").unwrap())
            .unwrap();
        let c = Client::open(f.as_fd()).unwrap();
        for g in 1..=4 {
            let ranges = exit_generation(&c, g);
            assert_eq!(c.commit(&ranges), g);
        }
        return;
    }
    let _w = shm_testkit::Watchdog::new(std::time::Duration::from_secs(60));
    for nth in [1u64, 2, 4] {
        let fd = memfd(REGION);
        let path = format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        );
        let out = shm_testkit::role_command(
            "host_after_exit_takes_the_commit_a_killed_client_was_inside",
            "client",
        )
        .env("STATE_PATH", &path)
        .env("SHM_CRASH_AT", format!("client.mid_commit@{nth}"))
        .output()
        .unwrap();
        assert!(!out.status.success(), "crash point {nth} did not fire");
        let host = Host::open(fd.as_fd()).unwrap();
        let mut buf = vec![0u8; REGION as usize];
        assert_eq!(host.copy(&mut buf, 3), None, "half-written commit copied");
        assert_eq!(host.generation(), nth - 1);
        assert_eq!(host.generation_after_exit(), nth);
        assert_eq!(host.copy_after_exit(&mut buf), Some(nth));
        assert!(buf == exit_model(nth), "exit copy is not generation {nth}");
        // The next client finishes that commit: the same generation, the same bytes.
        let client = Client::open(fd.as_fd()).unwrap();
        assert_eq!(client.generation(), nth);
        let mut again = vec![0u8; REGION as usize];
        assert_eq!(host.copy(&mut again, 1), Some(nth));
        assert!(again == buf);
        // With no commit in flight, the exit copy is the committed copy.
        drop(client);
        assert_eq!(host.copy_after_exit(&mut again), Some(nth));
        assert!(again == buf);
    }
}
