//! loom models of the commit protocol of `shm_snapshot::live` (run with
//! `RUSTFLAGS="--cfg shm_loom"`). The models repeat, step for step and with
//! the same orderings, `Client::commit` (Release odd store, page stamps,
//! Release fence, Relaxed copy, Release even store), `Host::copy` (Acquire
//! load, Relaxed copy, Acquire fence, Relaxed load) and `Host::copy_changed`
//! (Acquire load of `seq`, Relaxed stamp scan, Relaxed copy, Acquire fence,
//! Relaxed stamp re-check): the real code copies an mmap'd memfd, which loom
//! cannot track.
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
        self.seq.store(s + 1, Ordering::Release);
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

/// The page-stamped memfd of `Host::copy_changed`: two one-word pages.
struct Stamped {
    seq: AtomicU64,
    stamps: [AtomicU64; 2],
    committed: [AtomicU64; 2],
    client_fence: bool,
    host_fence: bool,
}

/// The pages and values of commits 1 and 2.
const CHANGES: [&[(usize, u64)]; 2] = [&[(0, 1), (1, 1)], &[(1, 2)]];

/// State after `g` commits.
fn model_state(g: u64) -> [u64; 2] {
    let mut v = [0, 0];
    for changes in &CHANGES[..usize::try_from(g).unwrap()] {
        for &(p, x) in *changes {
            v[p] = x;
        }
    }
    v
}

#[derive(Debug, PartialEq)]
enum Changed {
    Complete(u64, [Option<u64>; 2]),
    Nothing,
    Conflict,
}

impl Stamped {
    fn commit(&self, changes: &[(usize, u64)]) {
        let s = self.seq.load(Ordering::Relaxed);
        let g = s / 2 + 1;
        // Release: a host whose Acquire load reads this odd value must see
        // commit g - 1 whole. (A Relaxed store would rely on the C++11 rule
        // that a thread's later stores extend its release sequence, which
        // C++20 and Rust dropped; loom still applies the old rule, so no
        // control can show the difference here.)
        self.seq.store(s + 1, Ordering::Release);
        for &(p, _) in changes {
            self.stamps[p].store(g, Ordering::Relaxed);
        }
        if self.client_fence {
            fence(Ordering::Release);
        }
        for &(p, x) in changes {
            self.committed[p].store(x, Ordering::Relaxed);
        }
        self.seq.store(s + 2, Ordering::Release);
    }

    /// As `Host::copy_changed`, with at most two passes. `got` keeps the
    /// last visit of each page.
    fn copy_changed(&self, since: u64) -> Changed {
        let mut target = self.seq.load(Ordering::Acquire) / 2;
        if target <= since {
            return Changed::Nothing;
        }
        let mut got = [None, None];
        let mut low = since;
        for _ in 0..2 {
            let mut missed = false;
            let mut batch = Vec::new();
            for (p, stamp) in self.stamps.iter().enumerate() {
                let g = stamp.load(Ordering::Relaxed);
                if g <= low {
                    continue;
                }
                if g > target {
                    missed = true;
                    continue;
                }
                batch.push(p);
            }
            let copied: Vec<(usize, u64)> = batch
                .iter()
                .map(|&p| (p, self.committed[p].load(Ordering::Relaxed)))
                .collect();
            if self.host_fence {
                fence(Ordering::Acquire);
            }
            for (p, v) in copied {
                if self.stamps[p].load(Ordering::Relaxed) > target {
                    missed = true;
                } else {
                    got[p] = Some(v);
                }
            }
            if !missed {
                return Changed::Complete(target, got);
            }
            low = target;
            target = self.seq.load(Ordering::Acquire) / 2;
        }
        Changed::Conflict
    }
}

/// One client committing generations 1 and 2 while the host takes the pages
/// changed since generation 0 (all zero) twice; laid over generation 0, an
/// accepted copy must be exactly the state of the generation it reports.
fn changed_model(client_fence: bool, host_fence: bool) {
    loom::model(move || {
        let live = Arc::new(Stamped {
            seq: AtomicU64::new(0),
            stamps: [AtomicU64::new(0), AtomicU64::new(0)],
            committed: [AtomicU64::new(0), AtomicU64::new(0)],
            client_fence,
            host_fence,
        });
        let client = {
            let live = live.clone();
            thread::spawn(move || {
                for changes in CHANGES {
                    live.commit(changes);
                }
            })
        };
        for _ in 0..2 {
            // The host's ticks are apart in time: a scheduling point.
            thread::yield_now();
            let r = live.copy_changed(0);
            if let Changed::Complete(g, got) = r {
                let stitched = [got[0].unwrap_or(0), got[1].unwrap_or(0)];
                assert_eq!(stitched, model_state(g), "torn copy of generation {g}");
            }
        }
        client.join().unwrap();
        assert_eq!(
            live.copy_changed(0),
            Changed::Complete(2, [Some(1), Some(2)])
        );
        assert_eq!(live.copy_changed(2), Changed::Nothing);
    });
}

#[test]
fn changed_pages_are_exactly_one_committed_state() {
    changed_model(true, true);
}

/// Control: without the client's Release fence between stamps and copy, the
/// host can copy a new value and still re-read the old stamp.
#[test]
#[should_panic(expected = "torn copy")]
fn changed_without_the_client_fence_loom_finds_a_torn_copy() {
    changed_model(false, true);
}

/// Control: without the host's Acquire fence before the stamp re-check.
#[test]
#[should_panic(expected = "torn copy")]
fn changed_without_the_host_fence_loom_finds_a_torn_copy() {
    changed_model(true, false);
}
