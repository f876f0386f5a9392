//! loom model of the commit protocol of `shm_snapshot::live` (run with
//! `RUSTFLAGS="--cfg shm_loom"`). The model repeats, step for step and with
//! the same orderings, `Client::commit` (odd store, Release fence, Relaxed
//! copy, Release even store) and `Host::copy` (Acquire load, Relaxed copy,
//! Acquire fence, Relaxed load): the real code copies an mmap'd memfd, which
//! loom cannot track.
#![cfg(shm_loom)]

use shm_sync::atomic::{AtomicU64, Ordering, fence};
use shm_sync::sync::Arc;
use shm_sync::thread;

struct Live {
    seq: AtomicU64,
    /// The committed copy: two words that must always agree.
    committed: [AtomicU64; 2],
}

impl Live {
    fn commit(&self, value: u64) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        for w in &self.committed {
            w.store(value, Ordering::Relaxed);
        }
        self.seq.store(s + 2, Ordering::Release);
    }

    fn copy(&self, tries: usize) -> Option<(u64, [u64; 2])> {
        for _ in 0..tries {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 % 2 == 1 {
                thread::yield_now();
                continue;
            }
            let v = [
                self.committed[0].load(Ordering::Relaxed),
                self.committed[1].load(Ordering::Relaxed),
            ];
            fence(Ordering::Acquire);
            let s2 = self.seq.load(Ordering::Relaxed);
            if s1 == s2 {
                return Some((s1 / 2, v));
            }
        }
        None
    }
}

#[test]
fn host_copy_is_exactly_one_committed_state() {
    loom::model(|| {
        let live = Arc::new(Live {
            seq: AtomicU64::new(0),
            committed: [AtomicU64::new(0), AtomicU64::new(0)],
        });
        let client = {
            let live = live.clone();
            thread::spawn(move || {
                // Generation g holds value g in both words.
                live.commit(1);
                live.commit(2);
            })
        };
        let mut last = 0;
        for _ in 0..2 {
            if let Some((g, v)) = live.copy(2) {
                assert_eq!(v, [g, g], "torn or mismatched copy at generation {g}");
                assert!(g >= last, "generation went back");
                last = g;
            }
        }
        client.join().unwrap();
        let (g, v) = live.copy(1).unwrap();
        assert_eq!((g, v), (2, [2, 2]));
    });
}
