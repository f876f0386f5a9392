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
