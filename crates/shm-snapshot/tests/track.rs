//! Automatic dirty tracking (`Client::track`, `Client::commit_tracked`) on a
//! real memfd: every write is captured, nothing else is reported, and the
//! committed copy equals the work area after each tracked commit.
//!
//! These tests need Linux 6.7 or later (userfaultfd asynchronous
//! write-protection and `PAGEMAP_SCAN`), which is the supported platform; on
//! an older kernel they fail with the reason rather than pass vacuously.
#![allow(clippy::cast_possible_truncation, clippy::single_range_in_vec_init)]

mod common;

use std::os::fd::{AsFd, OwnedFd};

use proptest::prelude::*;
use shm_snapshot::live::{Client, Host};
use shm_snapshot::track::TrackErrorKind;

const PAGE: usize = 4096;

fn memfd(region: u64) -> OwnedFd {
    common::live_memfd("track-test", region, 0)
}

fn tracked(fd: &OwnedFd) -> Client {
    let mut c = Client::open(fd.as_fd()).unwrap();
    c.track()
        .expect("dirty tracking needs Linux 6.7+ (userfaultfd WP_ASYNC, PAGEMAP_SCAN)");
    assert!(c.is_tracking());
    c
}

fn committed(host: &Host) -> (u64, Vec<u8>) {
    let mut buf = vec![0u8; host.region_size() as usize];
    let g = host.copy(&mut buf, 1).expect("no commit runs concurrently");
    (g, buf)
}

fn work(c: &Client) -> Vec<u8> {
    let mut buf = vec![0u8; c.work().len()];
    c.work().read_bytes(0, &mut buf).unwrap();
    buf
}

#[test]
fn tracked_commit_needs_track() {
    let fd = memfd(4 * PAGE as u64);
    let c = Client::open(fd.as_fd()).unwrap();
    assert!(!c.is_tracking());
    let e = c.commit_tracked().unwrap_err();
    assert_eq!(e.kind(), TrackErrorKind::NotTracking);
    assert_eq!(c.generation(), 0, "a refused commit must not publish");
}

#[test]
fn untouched_state_reports_nothing() {
    let fd = memfd(64 * PAGE as u64);
    let c = tracked(&fd);
    let host = Host::open(fd.as_fd()).unwrap();
    for g in 1..=3 {
        let t = c.commit_tracked().unwrap();
        assert_eq!((t.generation, t.bytes), (g, 0));
    }
    // Reading the work area is not writing it.
    let _ = work(&c);
    assert_eq!(c.commit_tracked().unwrap().bytes, 0);
    assert_eq!(committed(&host), (4, vec![0u8; 64 * PAGE]));
}

#[test]
fn write_right_after_commit_is_caught_in_the_next_epoch() {
    let fd = memfd(16 * PAGE as u64);
    let c = tracked(&fd);
    let host = Host::open(fd.as_fd()).unwrap();
    c.work().write(3 * PAGE + 8, &1u64).unwrap();
    assert_eq!(c.commit_tracked().unwrap().bytes, PAGE as u64);
    // The same page again, immediately: it was re-protected by the scan.
    c.work().write(3 * PAGE + 16, &2u64).unwrap();
    let t = c.commit_tracked().unwrap();
    assert_eq!((t.generation, t.bytes), (2, PAGE as u64));
    let (g, img) = committed(&host);
    assert_eq!(g, 2);
    assert_eq!(img[3 * PAGE + 8], 1);
    assert_eq!(img[3 * PAGE + 16], 2);
    assert_eq!(c.commit_tracked().unwrap().bytes, 0);
}

#[test]
fn edits_before_track_are_committed_by_the_first_tracked_commit() {
    let fd = memfd(8 * PAGE as u64);
    let mut c = Client::open(fd.as_fd()).unwrap();
    c.work().write_bytes(5 * PAGE + 1, b"before").unwrap();
    c.track().unwrap();
    c.work().write_bytes(PAGE, b"after").unwrap();
    let t = c.commit_tracked().unwrap();
    assert_eq!(t.bytes, 2 * PAGE as u64);
    let host = Host::open(fd.as_fd()).unwrap();
    let (_, img) = committed(&host);
    assert_eq!(&img[5 * PAGE + 1..5 * PAGE + 7], b"before");
    assert_eq!(&img[PAGE..PAGE + 5], b"after");
    assert_eq!(img, work(&c));
}

#[test]
fn last_partial_page_is_tracked_and_clipped() {
    let region = 3 * PAGE as u64 + 100;
    let fd = memfd(region);
    let c = tracked(&fd);
    c.work().write_bytes(3 * PAGE + 90, b"0123456789").unwrap();
    let t = c.commit_tracked().unwrap();
    assert_eq!(
        t.bytes, 100,
        "only the part of the last page inside the region"
    );
    let host = Host::open(fd.as_fd()).unwrap();
    assert_eq!(committed(&host).1, work(&c));
}

#[test]
fn named_range_commit_still_works_while_tracking() {
    let fd = memfd(8 * PAGE as u64);
    let c = tracked(&fd);
    let host = Host::open(fd.as_fd()).unwrap();
    c.work().write_bytes(2 * PAGE, b"named").unwrap();
    assert_eq!(c.commit(&[2 * PAGE..2 * PAGE + 5]), 1);
    assert_eq!(&committed(&host).1[2 * PAGE..2 * PAGE + 5], b"named");
    // The tracker still has the page pending; copying it again is harmless.
    assert_eq!(c.commit_tracked().unwrap().bytes, PAGE as u64);
    assert_eq!(committed(&host).1, work(&c));
}

/// Writes by other threads of the process go through the same mapping.
#[test]
fn writes_from_other_threads_are_tracked() {
    let fd = memfd(32 * PAGE as u64);
    let c = tracked(&fd);
    std::thread::scope(|s| {
        for t in 0..4usize {
            let c = &c;
            s.spawn(move || {
                for k in 0..4 {
                    c.work()
                        .write((t * 8 + k * 2) * PAGE + 40, &(t as u64 + 1))
                        .unwrap();
                }
            });
        }
    });
    let t = c.commit_tracked().unwrap();
    assert_eq!(t.bytes, 16 * PAGE as u64);
    let host = Host::open(fd.as_fd()).unwrap();
    assert_eq!(committed(&host).1, work(&c));
}

/// The kernel writing into the work area through the client's mapping (here
/// `read(2)` from a pipe) is a write like any other.
#[test]
#[allow(unsafe_code)]
fn kernel_writes_through_the_mapping_are_tracked() {
    let fd = memfd(16 * PAGE as u64);
    let c = tracked(&fd);
    let (r, w) = rustix::pipe::pipe().unwrap();
    assert_eq!(rustix::io::write(&w, b"from the kernel").unwrap(), 15);
    let at = 5 * PAGE + 3;
    assert!(at + 15 <= c.work().len());
    let ptr = c.work().as_ptr().wrapping_add(at);
    // SAFETY: `ptr..ptr + 15` lies inside the work area (checked above), which
    // stays mapped while `c` lives; only this thread touches it meanwhile, and
    // the bytes are read back below through `Region` only.
    let dst = unsafe { std::slice::from_raw_parts_mut(ptr, 15) };
    assert_eq!(rustix::io::read(&r, dst).unwrap(), 15);
    let t = c.commit_tracked().unwrap();
    assert_eq!(t.bytes, PAGE as u64);
    let host = Host::open(fd.as_fd()).unwrap();
    assert_eq!(&committed(&host).1[at..at + 15], b"from the kernel");
}

/// Generation `g` of the crash test: writes `g` into `g` pages.
/// A tracked commit while another thread is inside one is refused as busy,
/// publishes nothing and loses nothing: the next one copies the pages.
#[cfg(feature = "fault-injection")]
#[test]
fn concurrent_tracked_commit_is_busy_and_loses_nothing() {
    let fd = memfd(4 * PAGE as u64);
    let c = tracked(&fd);
    let host = Host::open(fd.as_fd()).unwrap();
    c.work().write(2 * PAGE, &7u64).unwrap();
    let held = c.hold_commit_lock().expect("tracking");
    let e = std::thread::scope(|s| s.spawn(|| c.commit_tracked()).join().unwrap()).unwrap_err();
    assert_eq!(e.kind(), TrackErrorKind::Busy);
    assert_eq!(c.generation(), 0);
    drop(held);
    let next = c.commit_tracked().unwrap();
    assert_eq!((next.generation, next.bytes), (1, PAGE as u64));
    assert_eq!(committed(&host), (1, work(&c)));
}

/// A failed scan publishes nothing, and the next tracked commit copies the
/// whole work area (the failed walk may have re-protected pages without
/// reporting them): the committed copy equals the work area again, including
/// writes made before the failure.
#[cfg(feature = "fault-injection")]
#[test]
fn failed_scan_is_reported_and_the_next_commit_copies_everything() {
    let region = 6 * PAGE as u64 + 100;
    let fd = memfd(region);
    let c = tracked(&fd);
    let host = Host::open(fd.as_fd()).unwrap();
    c.work().write(PAGE + 8, &11u64).unwrap();
    assert_eq!(c.commit_tracked().unwrap().generation, 1);
    c.work().write(3 * PAGE, &33u64).unwrap();
    c.fail_next_scan();
    let e = c.commit_tracked().unwrap_err();
    assert_eq!(e.kind(), TrackErrorKind::Failed);
    assert_eq!(c.generation(), 1, "a failed commit must not publish");
    assert_eq!(committed(&host).0, 1);
    c.work().write(5 * PAGE + 16, &55u64).unwrap();
    let next = c.commit_tracked().unwrap();
    assert_eq!(next.generation, 2);
    assert_eq!(
        next.bytes, region,
        "after a failed scan the whole state is copied"
    );
    assert_eq!(committed(&host), (2, work(&c)));
    // Back to normal: only what is written next.
    c.work().write(16, &1u64).unwrap();
    assert_eq!(c.commit_tracked().unwrap().bytes, PAGE as u64);
    assert_eq!(committed(&host), (3, work(&c)));
}

#[cfg(feature = "fault-injection")]
fn write_generation(c: &Client, g: u64) {
    for j in 0..g as usize {
        let page = (g as usize * 7 + j * 5) % 32;
        c.work().write(page * PAGE + 8 * j, &g).unwrap();
    }
}

/// The state after generations `1..=g`.
#[cfg(feature = "fault-injection")]
fn model_generation(g: u64) -> Vec<u8> {
    let mut v = vec![0u8; 32 * PAGE];
    for k in 1..=g {
        for j in 0..k as usize {
            let at = (k as usize * 7 + j * 5) % 32 * PAGE + 8 * j;
            v[at..at + 8].copy_from_slice(&k.to_ne_bytes());
        }
    }
    v
}

/// SIGKILL of a tracking client inside its n-th tracked commit (crash point
/// `client.mid_commit`: after the scan, with `seq` odd and half of the dirty
/// ranges copied, or with copy helpers the committing thread's part, the
/// helpers' parts in any state): the host never takes that half-published
/// state, the next client finishes the commit from the work area, and
/// tracking works again afterwards.
#[cfg(feature = "fault-injection")]
#[test]
fn client_killed_inside_a_tracked_commit() {
    if let Some(role) = shm_testkit::role() {
        assert_eq!(role, "client");
        let mut c = common::role_client();
        c.set_copy_part_min(PAGE);
        c.track().unwrap();
        for g in 1..=5 {
            write_generation(&c, g);
            assert_eq!(c.commit_tracked().unwrap().generation, g);
        }
        return;
    }
    let _w = shm_testkit::Watchdog::new(std::time::Duration::from_secs(120));
    // One thread, and helpers that may be mid-copy when the committing
    // thread is killed after its own part (commits 3 and 5 are split).
    for (threads, nth) in [(1, 1u64), (1, 3), (1, 5), (3, 1), (3, 3), (3, 5)] {
        let fd = memfd(32 * PAGE as u64);
        common::kill_client_mid_commit("client_killed_inside_a_tracked_commit", &fd, threads, nth);
        let host = Host::open(fd.as_fd()).unwrap();
        let mut buf = vec![0u8; 32 * PAGE];
        assert_eq!(host.copy(&mut buf, 1), None, "half-published commit copied");
        let mut c = Client::open(fd.as_fd()).unwrap();
        assert_eq!(c.generation(), nth);
        assert_eq!(committed(&host), (nth, model_generation(nth)));
        c.track().unwrap();
        write_generation(&c, nth + 1);
        assert_eq!(c.commit_tracked().unwrap().generation, nth + 1);
        assert_eq!(committed(&host), (nth + 1, model_generation(nth + 1)));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random writes to random pages over several epochs: each tracked
    /// commit reports exactly the written pages, and afterwards the committed
    /// copy equals both the work area and a model of every write, whether
    /// the copy runs on one thread or is split over helpers.
    #[test]
    fn random_writes_are_all_captured(
        threads in 1usize..4,
        pages in 1usize..96,
        tail in 0usize..PAGE,
        epochs in prop::collection::vec(
            prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255, 1usize..64), 0..24),
            1..6,
        ),
    ) {
        let region = pages * PAGE + tail;
        let fd = memfd(region as u64);
        let mut c = tracked(&fd);
        // One page per thread at least: most commits are split.
        c.set_copy_threads(threads);
        c.set_copy_part_min(PAGE);
        let host = Host::open(fd.as_fd()).unwrap();
        let mut model = vec![0u8; region];
        for (k, writes) in epochs.iter().enumerate() {
            let mut touched = std::collections::BTreeSet::new();
            for &(at, xor, len) in writes {
                let start = at.index(region);
                let end = (start + len).min(region);
                let mut bytes = model[start..end].to_vec();
                for b in &mut bytes {
                    *b ^= xor;
                }
                c.work().write_bytes(start, &bytes).unwrap();
                model[start..end].copy_from_slice(&bytes);
                for p in start / PAGE..=(end - 1) / PAGE {
                    touched.insert(p);
                }
            }
            let t = c.commit_tracked().unwrap();
            prop_assert_eq!(t.generation, k as u64 + 1);
            let expect: usize = touched.iter().map(|&p| (region - p * PAGE).min(PAGE)).sum();
            prop_assert_eq!(t.bytes, expect as u64, "reported bytes != written pages");
            let (g, img) = committed(&host);
            prop_assert_eq!(g, k as u64 + 1);
            prop_assert!(img == model, "committed copy misses a write");
            prop_assert!(work(&c) == model);
        }
    }
}
