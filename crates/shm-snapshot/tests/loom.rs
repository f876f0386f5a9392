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
    /// The two fences the argument rests on; the controls below drop one
    /// each, and loom must then find a torn copy.
    client_fence: bool,
    host_fence: bool,
}

impl Live {
    fn new(client_fence: bool, host_fence: bool) -> Live {
        Live {
            seq: AtomicU64::new(0),
            committed: [AtomicU64::new(0), AtomicU64::new(0)],
            client_fence,
            host_fence,
        }
    }
}

impl Live {
    fn commit(&self, value: u64) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s + 1, Ordering::Relaxed);
        if self.client_fence {
            fence(Ordering::Release);
        }
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
            if self.host_fence {
                fence(Ordering::Acquire);
            }
            let s2 = self.seq.load(Ordering::Relaxed);
            if s1 == s2 {
                return Some((s1 / 2, v));
            }
        }
        None
    }
}

/// One client committing generations 1 and 2 while the host copies.
fn model(client_fence: bool, host_fence: bool) {
    loom::model(move || {
        let live = Arc::new(Live::new(client_fence, host_fence));
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

#[test]
fn host_copy_is_exactly_one_committed_state() {
    model(true, true);
}

/// Control: without the client's Release fence after the odd store, the
/// host can read new bytes and still see the old even `seq`.
#[test]
#[should_panic(expected = "torn or mismatched copy")]
fn without_the_client_fence_loom_finds_a_torn_copy() {
    model(false, true);
}

/// Control: without the host's Acquire fence before the second load.
#[test]
#[should_panic(expected = "torn or mismatched copy")]
fn without_the_host_fence_loom_finds_a_torn_copy() {
    model(true, false);
}
