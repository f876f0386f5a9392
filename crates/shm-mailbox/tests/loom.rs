//! loom models of the mailbox protocol (run with `RUSTFLAGS="--cfg shm_loom"`).
#![cfg(shm_loom)]

use shm_mailbox::model::{Config, HeapMailbox};
use shm_sync::sync::Arc;
use shm_sync::thread;

/// A two-word message whose halves must agree: `[v, !v]`.
fn message(v: u64) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[..8].copy_from_slice(&v.to_le_bytes());
    m[8..].copy_from_slice(&(!v).to_le_bytes());
    m
}

fn value_of(m: &[u8; 16]) -> u64 {
    let v = u64::from_le_bytes(m[..8].try_into().unwrap());
    let w = u64::from_le_bytes(m[8..].try_into().unwrap());
    assert_eq!(w, !v, "torn message: {v:#x} / {w:#x}");
    v
}

#[test]
fn reader_never_sees_a_torn_or_older_message() {
    loom::model(|| {
        let mb = Arc::new(HeapMailbox::new(Config {
            readers: 1,
            slot_bytes: 16,
        }));
        let epoch = mb.attach(0);
        let writer = {
            let mb = mb.clone();
            thread::spawn(move || {
                for v in 1..=3 {
                    mb.publish(&message(v), None).unwrap();
                }
            })
        };
        let mut last = 0;
        for _ in 0..2 {
            let mut buf = [0u8; 16];
            if let Some(m) = mb.read(0, epoch, &mut buf).unwrap() {
                let v = value_of(&buf);
                assert_eq!(m.seq, v, "sequence numbers match the values published");
                assert!(v >= last, "went backwards");
                last = v;
            }
        }
        writer.join().unwrap();
    });
}

#[test]
fn two_readers_and_a_writer_with_all_slots_in_play() {
    loom::model(|| {
        let mb = Arc::new(HeapMailbox::new(Config {
            readers: 2,
            slot_bytes: 16,
        }));
        mb.publish(&message(1), None).unwrap();
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let mb = mb.clone();
                thread::spawn(move || {
                    let epoch = mb.attach(r);
                    let mut buf = [0u8; 16];
                    let m = mb.read(r, epoch, &mut buf).unwrap().unwrap();
                    assert_eq!(m.seq, value_of(&buf));
                })
            })
            .collect();
        for v in 2..=3 {
            mb.publish(&message(v), None).unwrap();
        }
        for r in readers {
            r.join().unwrap();
        }
    });
}

/// The writer is "killed" after every possible step of its second publish
/// (the production `publish`, told where to stop); a concurrent reader and
/// then a restarted writer must see message 1 or message 2 complete, never a
/// mix.
#[test]
fn writer_stopped_at_every_step_leaves_a_complete_message() {
    // publish() of a 16-byte message takes 4 steps: choose, word 0, word 1, len+seq; then the store.
    for stop_after in 0..=5 {
        loom::model(move || {
            let mb = Arc::new(HeapMailbox::new(Config {
                readers: 1,
                slot_bytes: 16,
            }));
            mb.publish(&message(1), None).unwrap();
            let epoch = mb.attach(0);
            let writer = {
                let mb = mb.clone();
                thread::spawn(move || {
                    let _ = mb.publish(&message(2), Some(stop_after));
                })
            };
            let mut buf = [0u8; 16];
            let m = mb.read(0, epoch, &mut buf).unwrap().unwrap();
            assert!(matches!(value_of(&buf), 1 | 2));
            assert_eq!(m.seq, value_of(&buf));
            writer.join().unwrap();
            // Recovery: a restarted writer finds the last complete message and goes on.
            let mut buf = [0u8; 16];
            let last = mb.last(&mut buf).unwrap().unwrap();
            let v = value_of(&buf);
            assert_eq!(last.seq, v);
            assert_eq!(v, if stop_after >= 4 { 2 } else { 1 });
            assert_eq!(mb.publish(&message(v + 1), None).unwrap(), Some(v + 1));
        });
    }
}
