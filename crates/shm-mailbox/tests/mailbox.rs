//! The mailbox through its public API, in one process and with hostile bytes.
#![cfg(not(shm_loom))]

use std::sync::atomic::{AtomicBool, Ordering}; // atomics-ok: a test-local stop flag
use std::time::Duration;

use shm_mailbox::{Config, LayoutError, Mailbox, MailboxError};
use shm_testkit::{Watchdog, unique_name};

struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        // Dropped before the test's mailbox handles (declared after them), so
        // the object is still open here: only a forced removal unlinks it.
        let _ = Mailbox::force_remove(&self.0);
    }
}

fn fresh(readers: usize, slot_bytes: usize) -> (Mailbox, Cleanup) {
    let name = unique_name("mbox");
    (
        Mailbox::open_or_create(
            &name,
            Config {
                readers,
                slot_bytes,
            },
        )
        .unwrap(),
        Cleanup(name),
    )
}

#[test]
fn reader_sees_newest_message_and_sequence() {
    let (sut, _c) = fresh(2, 16);
    let mut r = sut.reader(1).unwrap();
    let mut buf = [0u8; 16];
    assert!(
        r.read(&mut buf).unwrap().is_none(),
        "empty until the first publish"
    );
    let mut w = sut.writer().unwrap();
    assert_eq!(w.publish(b"one").unwrap(), 1);
    assert_eq!(w.publish(b"second").unwrap(), 2);
    let m = r.read(&mut buf).unwrap().unwrap();
    assert_eq!((m.seq, &buf[..m.len]), (2, &b"second"[..]));
    assert!(matches!(
        w.publish(&[0; 17]),
        Err(MailboxError::TooLarge { len: 17, max: 16 })
    ));
}

#[test]
fn writer_never_waits_even_with_every_reader_holding() {
    let (sut, _c) = fresh(3, 8);
    let mut w = sut.writer().unwrap();
    for i in 0..1000u64 {
        w.publish(&i.to_le_bytes()).unwrap();
    }
    let mut buf = [0u8; 8];
    assert_eq!(w.last(&mut buf).unwrap().unwrap().seq, 1000);
    assert_eq!(u64::from_le_bytes(buf), 999);
}

#[test]
fn duplicate_roles_are_refused_while_held() {
    let (sut, c) = fresh(2, 8);
    // A second open of the same name is a second open file description, like another process.
    let other = Mailbox::open(&c.0).unwrap();
    let r0 = sut.reader(0).unwrap();
    assert!(matches!(other.reader(0), Err(MailboxError::InUse { .. })));
    assert!(other.reader(1).is_ok());
    assert!(matches!(
        other.reader(2),
        Err(MailboxError::NoSuchReader {
            index: 2,
            readers: 2
        })
    ));
    let w = sut.writer().unwrap();
    assert!(matches!(other.writer(), Err(MailboxError::InUse { .. })));
    drop((r0, w));
    assert!(other.reader(0).is_ok(), "released on drop");
    assert!(other.writer().is_ok());
}

#[test]
fn other_shape_is_refused() {
    let (_sut, c) = fresh(3, 64);
    let err = Mailbox::open_or_create(
        &c.0,
        Config {
            readers: 4,
            slot_bytes: 64,
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            MailboxError::Layout(LayoutError::Mismatch {
                readers: 4,
                found_readers: 3,
                ..
            })
        ),
        "{err}"
    );
    let err = Mailbox::open_or_create(
        &c.0,
        Config {
            readers: 3,
            slot_bytes: 128,
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, MailboxError::Layout(LayoutError::Mismatch { .. })),
        "{err}"
    );
    assert_eq!(
        Mailbox::open(&c.0).unwrap().config(),
        Config {
            readers: 3,
            slot_bytes: 64
        }
    );
}

/// Byte offset of the `waiters` word: word 25 of the layout
/// (`crates/shm-mailbox/src/layout.rs`), counting readers inside `wait_newer`.
const WAITERS_BYTE: usize = 25 * 8;

#[test]
fn wait_newer_wakes_on_publish_and_times_out() {
    // The reader below waits far longer than this watchdog: only the
    // publish's wake-up lets the test finish.
    let _w = Watchdog::new(Duration::from_secs(60));
    let (sut, c) = fresh(1, 8);
    let reader_box = Mailbox::open(&c.0).unwrap();
    let r = reader_box.reader(0).unwrap();
    assert!(
        !r.wait_newer(0, Duration::from_millis(20)),
        "nothing published: times out"
    );
    let seg = shm_segment::Segment::builder(&c.0).open().unwrap();
    let waiters = seg.payload().atomic_u64(WAITERS_BYTE).unwrap();
    assert_eq!(waiters.load(Ordering::SeqCst), 0, "nobody waits yet");
    std::thread::scope(|s| {
        let parked = s.spawn(|| r.wait_newer(0, Duration::from_secs(3600)));
        // Publish only once the reader has announced itself as a waiter.
        while waiters.load(Ordering::SeqCst) == 0 {
            assert!(
                !parked.is_finished(),
                "returned before anything was published"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        sut.writer().unwrap().publish(b"x").unwrap();
        assert!(parked.join().unwrap(), "woken by the publish");
    });
    assert_eq!(waiters.load(Ordering::SeqCst), 0, "the waiter left");
}

#[test]
fn threads_never_see_torn_messages() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let (sut, c) = fresh(3, 64);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for idx in 0..3 {
            let name = c.0.clone();
            let stop = &stop;
            s.spawn(move || {
                let mb = Mailbox::open(&name).unwrap();
                let mut r = mb.reader(idx).unwrap();
                let mut buf = [0u8; 64];
                let mut last = 0;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(m) = r.read(&mut buf).unwrap() {
                        let v = u64::from_le_bytes(buf[..8].try_into().unwrap());
                        for k in 1..8 {
                            let w = u64::from_le_bytes(buf[k * 8..k * 8 + 8].try_into().unwrap());
                            assert_eq!(w, v.wrapping_mul(k as u64 + 1), "torn message");
                        }
                        assert!(m.seq >= last, "sequence went backwards");
                        last = m.seq;
                    }
                }
            });
        }
        let mut w = sut.writer().unwrap();
        for v in 0..200_000u64 {
            let msg: Vec<u8> = (0..8u64)
                .flat_map(|k| v.wrapping_mul(k + 1).to_le_bytes())
                .collect();
            w.publish(&msg).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(sut.held_slots(), 0);
}

#[test]
fn hostile_bytes_give_errors_not_panics() {
    use proptest::prelude::*;
    let (sut, c) = fresh(2, 16);
    let seg = shm_segment::Segment::builder(&c.0).open().unwrap();
    let payload = seg.payload();
    let len = payload.len();
    let mut pristine = vec![0u8; len];
    payload.read_bytes(0, &mut pristine).unwrap();
    proptest!(ProptestConfig::with_cases(400), |(writes in proptest::collection::vec((0usize..4096, any::<u64>()), 1..8))| {
        for (off, val) in &writes {
            let off = (off * 8) % (len - 8);
            payload.write(off, val).unwrap();
        }
        // Whatever the bytes: an error or a value, never a panic or a hang.
        let _ = Mailbox::open(&c.0).map(|mb| {
            if let Ok(mut r) = mb.reader(0) {
                let _ = r.read(&mut [0u8; 16]);
            }
            if let Ok(mut w) = mb.writer() {
                let _ = w.publish(b"ok");
            }
        });
        // Restore a valid, empty mailbox for the next case.
        payload.write_bytes(0, &pristine).unwrap();
    });
    drop(sut);
}

#[test]
fn reaping_neverclears_a_live_reader_of_the_same_handle() {
    let (sut, c) = fresh(2, 8);
    let mut w = sut.writer().unwrap();
    w.publish(b"a").unwrap();
    let r = sut.reader(0).unwrap();
    // Simulate reader 0 in the middle of a copy: its hazard is set.
    let seg = shm_segment::Segment::builder(&c.0).open().unwrap();
    let hazard = seg.payload().atomic_u64(32 * 8).unwrap();
    hazard.store((1 << 16) | 1, Ordering::SeqCst);
    assert_eq!(
        w.reap_dead_readers(),
        0,
        "reader 0 is alive (held through this very handle)"
    );
    assert_eq!(sut.held_slots(), 1);
    drop(r);
    assert_eq!(sut.held_slots(), 0, "dropping a reader releases its hold");
    // A hold left by a dead tenant (lock free, not local) is reaped.
    hazard.store((5 << 16) | 2, Ordering::SeqCst);
    assert_eq!(w.reap_dead_readers(), 1);
    assert_eq!(sut.held_slots(), 0);
}

#[test]
fn remove_refuses_an_open_mailbox_unless_forced() {
    let name = unique_name("mbox-rm");
    let sut = Mailbox::open_or_create(
        &name,
        Config {
            readers: 1,
            slot_bytes: 8,
        },
    )
    .unwrap();
    let err = Mailbox::remove(&name).unwrap_err();
    assert!(
        matches!(
            err,
            MailboxError::Segment(shm_segment::SegmentError::InUse { .. })
        ),
        "{err}"
    );
    assert!(Mailbox::open(&name).is_ok(), "still there");
    assert!(Mailbox::force_remove(&name).unwrap());
    assert!(matches!(
        Mailbox::open(&name),
        Err(MailboxError::Segment(_))
    ));
    drop(sut);
}
