//! A live memfd whose writable parts a hostile client has overwritten (the
//! commit sequence, the page stamps, both state areas; the segment header
//! and the control block's magic and geometry too): `Host::open`, `Host::copy_changed`, `Host::read_after_exit`,
//! `Host::copy` and a later `Client::open` give a result or a typed error,
//! never a panic or a fault; the host only ever hands out whole pages of
//! the state it mapped, and only with a generation that a cold start can
//! restore (an out-of-range or backwards sequence visits nothing). With
//! the durable-commit words scribbled, a client's wait answers at once with
//! no host, and never claims a generation beyond the committed one (a
//! scribbled `durable` at or below it is believed: a hostile writer of the
//! memfd can lie about durability, as it can about the state).
#![no_main]

use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

use shm_snapshot::live::{self, Changed, Client, Host, WaitError};

fuzz_target!(|data: &[u8]| {
    let Some((&shape, rest)) = data.split_first() else { return };
    // 1..=8 pages, the last one possibly short.
    let region = u64::from(shape % 8 + 1) * 4096 - u64::from(shape / 8) * 8;
    let fd = shm_segment::memfd::create(
        "fuzz-live",
        live::memfd_size(region),
        shm_segment::memfd::FIXED_SIZE,
    )
    .expect("memfd");
    live::initialize(fd.as_fd(), region, 3, |_| {}).expect("initialize");
    let file = std::fs::File::from(fd.try_clone().expect("dup"));
    let len = live::memfd_size(region);
    let words = len / 8;
    // Patches: (word index: u16, value: u64). Half of them land in the first
    // three pages (the segment header, the control block, the stamp table),
    // where the protocol's words are.
    for rec in rest.chunks_exact(10) {
        let w = u64::from(u16::from_le_bytes([rec[0], rec[1]]));
        let index = if rec[0] & 1 == 0 { w % 1536 } else { w % words };
        let value = u64::from_le_bytes(rec[2..10].try_into().unwrap());
        let value = if rec[1] & 0x80 != 0 { value % 32 } else { value };
        let _ = file.write_all_at(&value.to_ne_bytes(), index * 8);
    }
    let Ok(host) = Host::open(fd.as_fd()) else { return };
    // What a host may hand to a snapshot file: a generation a cold start can
    // restore into a memfd (2 * g within the clients' bound of 2^62).
    let restorable = |g: u64| g.checked_mul(2).is_some_and(|s| s <= 1 << 62);
    let visited = std::cell::Cell::new(0usize);
    let pages = host.region_size().div_ceil(4096);
    let mut check = |p: u64, b: &[u8]| -> Result<(), shm_snapshot::SnapshotError> {
        visited.set(visited.get() + 1);
        assert!(p < pages, "page {p} of {pages}");
        let want = (host.region_size() - p * 4096).min(4096);
        assert_eq!(b.len() as u64, want, "page {p}");
        Ok(())
    };
    for since in [0, 1, 2, 3, u64::MAX] {
        visited.set(0);
        match host.copy_changed(since, &mut check) {
            Ok(Changed::Complete(g)) => {
                assert!(g > since);
                assert!(restorable(g), "generation {g} handed to FILE");
            }
            Ok(Changed::OutOfRange { .. } | Changed::Backwards { .. } | Changed::Nothing) => {
                assert_eq!(visited.get(), 0, "pages visited for no generation");
            }
            Ok(Changed::Conflict) | Err(_) => {}
        }
    }
    match host.read_after_exit(&mut check) {
        Ok(g) => assert!(restorable(g), "generation {g} handed to FILE"),
        Err(e) => assert_eq!(e.kind(), shm_snapshot::ErrorKind::BadSequence),
    }
    if let Ok(g) = host.generation_after_exit() {
        assert!(restorable(g));
    }
    let mut buf = vec![0u8; usize::try_from(host.region_size()).unwrap()];
    let _ = host.copy(&mut buf, 2);
    if let Ok(client) = Client::open(fd.as_fd()) {
        // The region size may have been rewritten to anything that fits.
        let n = client.work().len().min(8);
        client.work().write_bytes(0, &[1u8; 8][..n]).expect("work area");
        let g = client.commit(&[0..8, 4000..9000, usize::MAX - 8..usize::MAX]);
        // Scribbled durable words (`durable`, `durable_seq`, `mode`,
        // `wanted`, `requests`): a wait answers at once (no host holds the
        // liveness lock), and never claims more than was committed.
        for timeout in [Duration::ZERO, Duration::from_secs(5)] {
            let started = Instant::now();
            match client.wait_durable(g, timeout) {
                Ok(d) => assert!(d >= g && d <= client.generation(), "durable {d} for {g}"),
                Err(WaitError::NoHost | WaitError::Future { .. }) => {}
                Err(e) => panic!("{e}"),
            }
            assert!(started.elapsed() < Duration::from_secs(1), "a wait hung");
        }
        if let Ok(Changed::Complete(g)) = host.copy_changed(0, &mut check) {
            assert!(restorable(g), "generation {g} handed to FILE");
        }
    }
});
