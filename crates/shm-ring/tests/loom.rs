//! loom models of the ring's index protocol and of its park/wake handshake.
//!
//! Run: `RUSTFLAGS="--cfg shm_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p shm-ring --test loom --release`
#![cfg(shm_loom)]

use std::time::{Duration, Instant};

use loom::sync::{Condvar, Mutex};
use shm_ring::RingError;
use shm_ring::raw::{HeapStorage, Park, RawConsumer, RawProducer};
use shm_sync::sync::Arc;

/// An eventfd: a counter that `park` waits to be non-zero and then resets.
#[derive(Default)]
struct EventFd {
    count: Mutex<u64>,
    cv: Condvar,
}

impl EventFd {
    fn notify(&self) {
        *self.count.lock().unwrap() += 1;
        self.cv.notify_one();
    }
}

struct Waiter(Arc<EventFd>);

impl Park for Waiter {
    fn park(&mut self, _deadline: Option<Instant>) -> Result<(), RingError> {
        let mut count = self.0.count.lock().unwrap();
        while *count == 0 {
            count = self.0.cv.wait(count).unwrap();
        }
        *count = 0;
        Ok(())
    }
}

fn send(p: &mut RawProducer<Arc<HeapStorage>>, value: u64) -> bool {
    let (slot, n) = p.reserve(1).unwrap();
    if n == 0 {
        return false;
    }
    p.write(slot, &value.to_ne_bytes());
    let _ = p.commit(1);
    true
}

fn recv(c: &mut RawConsumer<Arc<HeapStorage>>) -> Option<u64> {
    let (slot, n) = c.peek(1).unwrap();
    if n == 0 {
        return None;
    }
    let mut bytes = [0u8; 8];
    c.read(slot, &mut bytes);
    let _ = c.release(1);
    Some(u64::from_ne_bytes(bytes))
}

/// Index protocol: with a ring of 2 and 4 values, the producer wraps and
/// reuses slots; the consumer must see 1 to 4 with their contents (slot
/// words are Relaxed loom atomics, so a missing Release/Acquire pair on the
/// counters would show up as a stale value).
#[test]
fn index_protocol_delivers_in_order_across_wrap() {
    loom::model(|| {
        let storage = Arc::new(HeapStorage::new(2, 8));
        let mut producer = RawProducer::attach(storage.clone()).unwrap();
        let mut consumer = RawConsumer::attach(storage).unwrap();
        let t = loom::thread::spawn(move || {
            for v in 1..=4u64 {
                while !send(&mut producer, v * 0x0101_0101) {
                    loom::thread::yield_now();
                }
            }
        });
        for v in 1..=4u64 {
            loop {
                if let Some(got) = recv(&mut consumer) {
                    assert_eq!(got, v * 0x0101_0101);
                    break;
                }
                loom::thread::yield_now();
            }
        }
        t.join().unwrap();
        assert_eq!(consumer.position(), 4);
    });
}

/// Park/wake: both sides block on their "eventfd" (no spinning) whenever they
/// cannot proceed; a lost wake-up leaves both blocked, which loom reports as
/// a deadlock. Capacity 1 and 3 values make both sides park, repeatedly.
#[test]
fn park_wake_never_loses_a_wakeup() {
    loom::model(|| {
        let storage = Arc::new(HeapStorage::new(1, 8));
        let data_ready = Arc::new(EventFd::default());
        let space_ready = Arc::new(EventFd::default());
        let mut producer = RawProducer::attach(storage.clone()).unwrap();
        let mut consumer = RawConsumer::attach(storage).unwrap();
        let (dr, sr) = (data_ready.clone(), space_ready.clone());
        let t = loom::thread::spawn(move || {
            let mut park = Waiter(sr);
            for v in 1..=3u64 {
                loop {
                    let (slot, n) = producer.reserve(1).unwrap();
                    if n == 1 {
                        producer.write(slot, &v.to_ne_bytes());
                        if producer.commit(1) {
                            dr.notify();
                        }
                        break;
                    }
                    producer.wait(1, Duration::ZERO, &mut park, None).unwrap();
                }
            }
        });
        let mut park = Waiter(data_ready);
        for v in 1..=3u64 {
            consumer.wait(Duration::ZERO, &mut park, None).unwrap();
            let (slot, n) = consumer.peek(1).unwrap();
            assert_eq!(n, 1);
            let mut bytes = [0u8; 8];
            consumer.read(slot, &mut bytes);
            assert_eq!(u64::from_ne_bytes(bytes), v);
            if consumer.release(1) {
                space_ready.notify();
            }
        }
        t.join().unwrap();
    });
}

/// The same handshake with the SeqCst fences replaced by Release/Acquire
/// (what one might write first): loom finds the store-buffer outcome where
/// the waiter misses the new counter and the waker misses `parked = 1`, and
/// both end up asleep. This is why the fences are there.
#[test]
#[should_panic(expected = "deadlock")]
fn handshake_without_seqcst_fences_loses_wakeups() {
    use shm_sync::atomic::{AtomicU32, AtomicU64, Ordering};
    loom::model(|| {
        let tail = Arc::new(AtomicU64::new(0));
        let parked = Arc::new(AtomicU32::new(0));
        let event = Arc::new(EventFd::default());
        let (t2, p2, e2) = (tail.clone(), parked.clone(), event.clone());
        let producer = loom::thread::spawn(move || {
            t2.store(1, Ordering::Release);
            if p2.load(Ordering::Acquire) != 0 {
                e2.notify();
            }
        });
        parked.store(1, Ordering::Release);
        if tail.load(Ordering::Acquire) == 0 {
            Waiter(event).park(None).unwrap();
        }
        producer.join().unwrap();
    });
}

/// A producer that dies between writing a slot and publishing it leaves no
/// trace: its successor attaches at the shared `tail` and overwrites the
/// slot, and the consumer sees 1 then 2, never the unpublished 99.
#[test]
fn restarted_producer_resumes_at_tail() {
    loom::model(|| {
        let storage = Arc::new(HeapStorage::new(2, 8));
        let mut consumer = RawConsumer::attach(storage.clone()).unwrap();
        let shared = storage.clone();
        let t = loom::thread::spawn(move || {
            let mut first = RawProducer::attach(shared.clone()).unwrap();
            assert!(send(&mut first, 1));
            let (slot, n) = first.reserve(1).unwrap();
            if n == 1 {
                first.write(slot, &99u64.to_ne_bytes());
            }
            drop(first); // killed before `commit`
            let mut second = RawProducer::attach(shared).unwrap();
            assert_eq!(second.position(), 1);
            while !send(&mut second, 2) {
                loom::thread::yield_now();
            }
        });
        for v in 1..=2u64 {
            loop {
                if let Some(got) = recv(&mut consumer) {
                    assert_eq!(got, v);
                    break;
                }
                loom::thread::yield_now();
            }
        }
        t.join().unwrap();
    });
}

fn send_one_with(
    p: &mut RawProducer<Arc<HeapStorage>>,
    elem: &[u8],
    commit_one: fn(&mut RawProducer<Arc<HeapStorage>>, &[u8]) -> bool,
) -> bool {
    let (slot, n) = p.reserve(1).unwrap();
    if n == 0 {
        return false;
    }
    p.write(slot, elem);
    let _ = commit_one(p, elem);
    true
}

fn recv_one(c: &mut RawConsumer<Arc<HeapStorage>>, dst: &mut [u8]) -> bool {
    let (slot, n) = c.peek(1).unwrap();
    if n == 0 {
        return false;
    }
    c.read_one(slot, dst);
    let _ = c.release(1);
    true
}

fn pair(v: u64) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&v.to_ne_bytes());
    bytes[8..].copy_from_slice(&(!v).to_ne_bytes());
    bytes
}

/// Small elements are also copied into the producer's line (a seqlock), and a
/// consumer that has just loaded `tail` reads them from there. Two-word
/// elements `(v, !v)` with a ring of 2 make the producer rewrite the copy
/// while the consumer may be reading it: the consumer must never take a mix
/// of two elements, nor an element other than the one at its head.
#[test]
fn inline_copy_is_never_torn() {
    loom::model(|| inline_copy_run(RawProducer::commit_one));
}

/// The negative control of `inline_copy_is_never_torn`: the same run with a
/// producer that skips the `inline_seq = 0` mark before it rewrites the copy
/// (`commit_one_unmarked`, the real code minus that step). loom finds the run
/// where the consumer takes a mix of two elements, such as `(2, !3)`.
#[test]
#[should_panic(expected = "left == right")]
fn inline_copy_without_the_rewrite_mark_tears() {
    loom::model(|| inline_copy_run(RawProducer::commit_one_unmarked));
}

/// Two-word elements `(v, !v)` for v = 1..=3 through a ring of 2, sent with
/// `commit_one` and received with `read_one`.
fn inline_copy_run(commit_one: fn(&mut RawProducer<Arc<HeapStorage>>, &[u8]) -> bool) {
    let storage = Arc::new(HeapStorage::new(2, 16));
    let mut producer = RawProducer::attach(storage.clone()).unwrap();
    let mut consumer = RawConsumer::attach(storage).unwrap();
    let t = loom::thread::spawn(move || {
        for v in 1..=3u64 {
            while !send_one_with(&mut producer, &pair(v), commit_one) {
                loom::thread::yield_now();
            }
        }
    });
    for v in 1..=3u64 {
        let mut got = [0u8; 16];
        while !recv_one(&mut consumer, &mut got) {
            loom::thread::yield_now();
        }
        assert_eq!(got, pair(v));
    }
    t.join().unwrap();
}

/// A producer killed after it stored `inline_seq = n + 1` and the copy, but
/// before it published element `n`, leaves a copy of an element that never
/// existed. Its successor publishes a different element `n` (through the slot
/// only, as a batch does); the consumer must see the successor's element.
#[test]
fn restarted_producer_never_leaks_an_unpublished_inline_copy() {
    use shm_ring::raw::Storage;
    use shm_sync::atomic::Ordering;
    loom::model(|| {
        let storage = Arc::new(HeapStorage::new(2, 8));
        let mut consumer = RawConsumer::attach(storage.clone()).unwrap();
        let shared = storage.clone();
        let t = loom::thread::spawn(move || {
            let first = RawProducer::attach(shared.clone()).unwrap();
            let line = first.storage().producer();
            line.inline_seq.store(0, Ordering::Relaxed);
            line.inline[0].store(99, Ordering::Relaxed);
            line.inline_seq.store(1, Ordering::Release);
            drop(first); // killed before publishing element 0
            let mut second = RawProducer::attach(shared).unwrap();
            assert!(send(&mut second, 2));
        });
        let mut got = [0u8; 8];
        while !recv_one(&mut consumer, &mut got) {
            loom::thread::yield_now();
        }
        assert_eq!(u64::from_ne_bytes(got), 2);
        t.join().unwrap();
    });
}
