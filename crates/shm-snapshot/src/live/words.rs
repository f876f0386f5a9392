//! Where the live protocol's words live: the payload of the memfd's segment
//! (a [`Region`] of a mapping), or heap words for the loom models and the
//! unit tests.
//!
//! The protocol code ([`RawClient`](super::client::RawClient) and
//! [`RawHost`](super::host::RawHost)) is generic over these traits and
//! monomorphised for [`Region`], so the memfd path pays nothing for it.
//! Offsets and lengths are bytes from the start of the storage (the segment's
//! payload). Callers keep every access inside [`Words::len`], which the
//! geometry was checked against; an implementation may panic on an access
//! outside it, which is a bug in the protocol code, never a reaction to
//! shared data.
//!
//! Every access is atomic (a peer may write any word at any time), and every
//! load is Relaxed: Rust allows only Relaxed atomic loads on memory mapped
//! read-only, as the host maps the memfd. Where the protocol needs Acquire,
//! it follows the load with an Acquire fence.

use shm_segment::{Region, Segment};
use shm_sync::atomic::Ordering;

/// Read access to the protocol's words: what the host needs.
pub(crate) trait Words {
    /// Bytes of storage.
    fn len(&self) -> usize;

    /// Loads the `u64` at `off` (8-aligned), Relaxed.
    fn load(&self, off: usize) -> u64;

    /// Copies the `dst.len()` bytes at `off` into `dst` as Relaxed atomic
    /// loads would (for a mapping, byte-wise at every length:
    /// `Region::read_bytewise`, of the same access size as the client's
    /// [`WordsMut::copy`] it may race with in one process): a concurrent
    /// writer can make the copy inconsistent, never undefined; the callers
    /// re-check stamps or the sequence after it.
    fn read(&self, off: usize, dst: &mut [u8]);
}

/// Write access as well: what the client needs.
pub(crate) trait WordsMut: Words {
    /// Stores `value` into the `u64` at `off` (8-aligned) with `order`.
    fn store(&self, off: usize, value: u64, order: Ordering);

    /// Stores `value` into each of the `count` words from `off` (8-aligned), Relaxed.
    fn fill(&self, off: usize, count: usize, value: u64);

    /// Copies `len` bytes from `from` to `to` (the ranges disjoint) with
    /// Relaxed atomic loads and stores (on the memfd, byte-wise at every
    /// length: `Region::copy_within`, wide on x86-64).
    fn copy(&self, from: usize, to: usize, len: usize);

    /// Whether the `len` bytes at `a` and at `b` (both 8-aligned) are equal,
    /// by Relaxed loads.
    fn same(&self, a: usize, b: usize, len: usize) -> bool;
}

/// Forwards [`Words`] and [`WordsMut`] through each pointer type given
/// (over a storage type `W`), so that the protocol code can hold its words
/// borrowed or shared.
macro_rules! forward_words {
    ($($ptr:ty),* $(,)?) => {$(
        impl<W: Words + ?Sized> Words for $ptr {
            #[inline]
            fn len(&self) -> usize {
                (**self).len()
            }

            #[inline]
            fn load(&self, off: usize) -> u64 {
                (**self).load(off)
            }

            #[inline]
            fn read(&self, off: usize, dst: &mut [u8]) {
                (**self).read(off, dst);
            }
        }

        impl<W: WordsMut + ?Sized> WordsMut for $ptr {
            #[inline]
            fn store(&self, off: usize, value: u64, order: Ordering) {
                (**self).store(off, value, order);
            }

            #[inline]
            fn fill(&self, off: usize, count: usize, value: u64) {
                (**self).fill(off, count, value);
            }

            #[inline]
            fn copy(&self, from: usize, to: usize, len: usize) {
                (**self).copy(from, to, len);
            }

            #[inline]
            fn same(&self, a: usize, b: usize, len: usize) -> bool {
                (**self).same(a, b, len)
            }
        }
    )*};
}

forward_words!(&W, std::sync::Arc<W>);

/// A segment's payload, for the copy helpers, which own the segment (shared
/// with the client) rather than borrow a [`Region`] of it.
impl Words for Segment {
    #[inline]
    fn len(&self) -> usize {
        Words::len(&self.payload())
    }

    #[inline]
    fn load(&self, off: usize) -> u64 {
        self.payload().load(off)
    }

    #[inline]
    fn read(&self, off: usize, dst: &mut [u8]) {
        Words::read(&self.payload(), off, dst);
    }
}

impl WordsMut for Segment {
    #[inline]
    fn store(&self, off: usize, value: u64, order: Ordering) {
        WordsMut::store(&self.payload(), off, value, order);
    }

    #[inline]
    fn fill(&self, off: usize, count: usize, value: u64) {
        self.payload().fill(off, count, value);
    }

    #[inline]
    fn copy(&self, from: usize, to: usize, len: usize) {
        WordsMut::copy(&self.payload(), from, to, len);
    }

    #[inline]
    fn same(&self, a: usize, b: usize, len: usize) -> bool {
        self.payload().same(a, b, len)
    }
}

/// The message of every out-of-range access: a bug in the protocol code, as
/// the geometry was checked against the mapping at open.
const OUTSIDE: &str = "live protocol access outside the checked geometry";

/// The memfd path: the segment's payload. Loads work on a read-only mapping
/// (the host's); stores need a writable one (the client's).
impl Words for Region<'_> {
    #[inline]
    fn len(&self) -> usize {
        Region::len(self)
    }

    #[inline]
    fn load(&self, off: usize) -> u64 {
        self.load_u64(off, Ordering::Relaxed).expect(OUTSIDE)
    }

    #[inline]
    fn read(&self, off: usize, dst: &mut [u8]) {
        // Byte-wise at every length, as the client's `copy`: a host in the
        // client's process reads pages while a commit copies into them.
        self.read_bytewise(off, dst).expect(OUTSIDE);
    }
}

impl WordsMut for Region<'_> {
    #[inline]
    fn store(&self, off: usize, value: u64, order: Ordering) {
        self.atomic_u64(off).expect(OUTSIDE).store(value, order);
    }

    #[inline]
    fn fill(&self, off: usize, count: usize, value: u64) {
        for w in self.atomics_u64(off, count).expect(OUTSIDE) {
            w.store(value, Ordering::Relaxed);
        }
    }

    fn copy(&self, from: usize, to: usize, len: usize) {
        self.copy_within(from, to, len).expect(OUTSIDE);
    }

    fn same(&self, a: usize, b: usize, len: usize) -> bool {
        let words = len / 8;
        let left = self.atomics_u64(a, words).expect(OUTSIDE);
        let right = self.atomics_u64(b, words).expect(OUTSIDE);
        if left
            .iter()
            .zip(right)
            .any(|(l, r)| l.load(Ordering::Relaxed) != r.load(Ordering::Relaxed))
        {
            return false;
        }
        let (mut p, mut q) = ([0u8; 8], [0u8; 8]);
        let tail = len - words * 8;
        self.read_bytes(a + words * 8, &mut p[..tail])
            .expect(OUTSIDE);
        self.read_bytes(b + words * 8, &mut q[..tail])
            .expect(OUTSIDE);
        p == q
    }
}

/// Words on the heap, `shm_sync` atomics (loom's under `--cfg shm_loom`).
/// Bytes are stored little-endian in their word; a byte store is a load and
/// a store of its word, which is sound for the protocol's single writer of
/// every area.
#[cfg(any(test, shm_loom))]
#[derive(Debug)]
pub(crate) struct HeapWords(Box<[shm_sync::atomic::AtomicU64]>);

#[cfg(any(test, shm_loom))]
impl HeapWords {
    /// `len` zero bytes (rounded up to whole words).
    pub(crate) fn new(len: usize) -> HeapWords {
        HeapWords(
            (0..len.div_ceil(8))
                .map(|_| shm_sync::atomic::AtomicU64::new(0))
                .collect(),
        )
    }

    /// Writes `src` at `off` (Relaxed), as the program edits its work area.
    pub(crate) fn write(&self, off: usize, src: &[u8]) {
        let mut i = 0;
        while i < src.len() {
            let (w, from) = ((off + i) / 8, (off + i) % 8);
            let n = (8 - from).min(src.len() - i);
            let mut bytes = if n == 8 {
                [0; 8]
            } else {
                self.0[w].load(Ordering::Relaxed).to_le_bytes()
            };
            bytes[from..from + n].copy_from_slice(&src[i..i + n]);
            self.0[w].store(u64::from_le_bytes(bytes), Ordering::Relaxed);
            i += n;
        }
    }
}

#[cfg(any(test, shm_loom))]
impl Words for HeapWords {
    fn len(&self) -> usize {
        self.0.len() * 8
    }

    fn load(&self, off: usize) -> u64 {
        assert!(off.is_multiple_of(8), "{OUTSIDE}");
        self.0[off / 8].load(Ordering::Relaxed)
    }

    fn read(&self, off: usize, dst: &mut [u8]) {
        let mut at = off;
        while at < off + dst.len() {
            let word = self.0[at / 8].load(Ordering::Relaxed).to_le_bytes();
            let from = at % 8;
            let n = (8 - from).min(off + dst.len() - at);
            dst[at - off..at - off + n].copy_from_slice(&word[from..from + n]);
            at += n;
        }
    }
}

#[cfg(any(test, shm_loom))]
impl WordsMut for HeapWords {
    fn store(&self, off: usize, value: u64, order: Ordering) {
        assert!(off.is_multiple_of(8), "{OUTSIDE}");
        self.0[off / 8].store(value, order);
    }

    fn fill(&self, off: usize, count: usize, value: u64) {
        for k in 0..count {
            self.store(off + 8 * k, value, Ordering::Relaxed);
        }
    }

    fn copy(&self, from: usize, to: usize, len: usize) {
        if from.is_multiple_of(8) && to.is_multiple_of(8) && len.is_multiple_of(8) {
            for k in 0..len / 8 {
                let w = self.load(from + 8 * k);
                self.store(to + 8 * k, w, Ordering::Relaxed);
            }
        } else {
            let mut buf = vec![0u8; len];
            self.read(from, &mut buf);
            self.write(to, &buf);
        }
    }

    fn same(&self, a: usize, b: usize, len: usize) -> bool {
        let (mut x, mut y) = (vec![0u8; len], vec![0u8; len]);
        self.read(a, &mut x);
        self.read(b, &mut y);
        x == y
    }
}

/// The durable-commit words of the control page (`layout::DURABLE_OFF` and
/// the words after it): ordered loads and read-modify-writes, and a futex on
/// the 32-bit words. Implemented by a writable [`Region`] (the client's
/// mapping, and the host's small writable mapping of the control page) and
/// by [`HeapControl`] for the loom models.
pub(crate) trait Control {
    /// Loads the `u64` at `off` with `order`.
    fn load_u64(&self, off: usize, order: Ordering) -> u64;
    /// Stores the `u64` at `off` with `order`.
    fn store_u64(&self, off: usize, value: u64, order: Ordering);
    /// `fetch_max` on the `u64` at `off`; returns the previous value.
    fn fetch_max_u64(&self, off: usize, value: u64, order: Ordering) -> u64;
    /// Loads the `u32` at `off` with `order`.
    fn load_u32(&self, off: usize, order: Ordering) -> u32;
    /// Stores the `u32` at `off` with `order`.
    fn store_u32(&self, off: usize, value: u32, order: Ordering);
    /// Wrapping `fetch_add` on the `u32` at `off`; returns the previous value.
    fn fetch_add_u32(&self, off: usize, value: u32, order: Ordering) -> u32;
    /// Sleeps while the `u32` at `off` is `expected`, at most `timeout`
    /// (`None`: until woken). May return early (spuriously, or on a
    /// signal): callers re-check their condition.
    fn futex_wait(&self, off: usize, expected: u32, timeout: Option<std::time::Duration>);
    /// Wakes every sleeper on the `u32` at `off`.
    fn futex_wake(&self, off: usize);
}

impl<C: Control + ?Sized> Control for &C {
    fn load_u64(&self, off: usize, order: Ordering) -> u64 {
        (**self).load_u64(off, order)
    }
    fn store_u64(&self, off: usize, value: u64, order: Ordering) {
        (**self).store_u64(off, value, order);
    }
    fn fetch_max_u64(&self, off: usize, value: u64, order: Ordering) -> u64 {
        (**self).fetch_max_u64(off, value, order)
    }
    fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        (**self).load_u32(off, order)
    }
    fn store_u32(&self, off: usize, value: u32, order: Ordering) {
        (**self).store_u32(off, value, order);
    }
    fn fetch_add_u32(&self, off: usize, value: u32, order: Ordering) -> u32 {
        (**self).fetch_add_u32(off, value, order)
    }
    fn futex_wait(&self, off: usize, expected: u32, timeout: Option<std::time::Duration>) {
        (**self).futex_wait(off, expected, timeout);
    }
    fn futex_wake(&self, off: usize) {
        (**self).futex_wake(off);
    }
}

impl Control for Region<'_> {
    #[inline]
    fn load_u64(&self, off: usize, order: Ordering) -> u64 {
        self.atomic_u64(off).expect(OUTSIDE).load(order)
    }

    #[inline]
    fn store_u64(&self, off: usize, value: u64, order: Ordering) {
        self.atomic_u64(off).expect(OUTSIDE).store(value, order);
    }

    #[inline]
    fn fetch_max_u64(&self, off: usize, value: u64, order: Ordering) -> u64 {
        self.atomic_u64(off).expect(OUTSIDE).fetch_max(value, order)
    }

    #[inline]
    fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        self.atomic_u32(off).expect(OUTSIDE).load(order)
    }

    #[inline]
    fn store_u32(&self, off: usize, value: u32, order: Ordering) {
        self.atomic_u32(off).expect(OUTSIDE).store(value, order);
    }

    #[inline]
    fn fetch_add_u32(&self, off: usize, value: u32, order: Ordering) -> u32 {
        self.atomic_u32(off).expect(OUTSIDE).fetch_add(value, order)
    }

    fn futex_wait(&self, off: usize, expected: u32, timeout: Option<std::time::Duration>) {
        let ts = timeout.map(|t| rustix::time::Timespec {
            tv_sec: t.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: t.subsec_nanos().into(),
        });
        // Shared (not PRIVATE): the word is in a memfd other processes map.
        // EAGAIN (the word moved), ETIMEDOUT and EINTR all mean "re-check".
        let _ = rustix::thread::futex::wait(
            self.atomic_u32(off).expect(OUTSIDE),
            rustix::thread::futex::Flags::empty(),
            expected,
            ts.as_ref(),
        );
    }

    fn futex_wake(&self, off: usize) {
        // The kernel reads the count as an `int`: `u32::MAX` would be -1,
        // and `futex_wake` stops after the first sleeper once its count of
        // woken ones reaches it. `i32::MAX` is "every sleeper" (futex(2)).
        let _ = rustix::thread::futex::wake(
            self.atomic_u32(off).expect(OUTSIDE),
            rustix::thread::futex::Flags::empty(),
            i32::MAX as u32,
        );
    }
}

/// The durable-commit words on the heap, `shm_sync` atomics (loom's under
/// `--cfg shm_loom`), with a futex modelled by a mutex and a condition
/// variable: a wait compares the word under the mutex and sleeps on the
/// condition variable (releasing the mutex atomically), a wake takes the
/// mutex and notifies all, as the kernel's futex hash-bucket lock orders a
/// `FUTEX_WAIT`'s compare against a `FUTEX_WAKE`. Timeouts are ignored (a
/// wait sleeps until woken), so a lost wake-up is a deadlock loom reports.
#[cfg(any(test, shm_loom))]
#[derive(Debug, Default)]
pub(crate) struct HeapControl {
    durable: shm_sync::atomic::AtomicU64,
    durable_seq: shm_sync::atomic::AtomicU32,
    mode: shm_sync::atomic::AtomicU32,
    replicated: shm_sync::atomic::AtomicU64,
    replicated_seq: shm_sync::atomic::AtomicU32,
    replica: shm_sync::atomic::AtomicU32,
    wanted: shm_sync::atomic::AtomicU64,
    requests: shm_sync::atomic::AtomicU32,
    wanted_replicated: shm_sync::atomic::AtomicU64,
    futex: (shm_sync::sync::Mutex<()>, shm_sync::sync::Condvar),
}

#[cfg(any(test, shm_loom))]
impl HeapControl {
    fn u64_at(&self, off: usize) -> &shm_sync::atomic::AtomicU64 {
        use super::layout::{DURABLE_OFF, REPLICATED_OFF, WANTED_OFF, WANTED_REPLICATED_OFF};
        match off {
            DURABLE_OFF => &self.durable,
            REPLICATED_OFF => &self.replicated,
            WANTED_OFF => &self.wanted,
            WANTED_REPLICATED_OFF => &self.wanted_replicated,
            _ => panic!("{OUTSIDE}"),
        }
    }

    fn u32_at(&self, off: usize) -> &shm_sync::atomic::AtomicU32 {
        use super::layout::{
            DURABLE_SEQ_OFF, MODE_OFF, REPLICA_OFF, REPLICATED_SEQ_OFF, REQUESTS_OFF,
        };
        match off {
            DURABLE_SEQ_OFF => &self.durable_seq,
            MODE_OFF => &self.mode,
            REPLICATED_SEQ_OFF => &self.replicated_seq,
            REPLICA_OFF => &self.replica,
            REQUESTS_OFF => &self.requests,
            _ => panic!("{OUTSIDE}"),
        }
    }
}

#[cfg(any(test, shm_loom))]
impl Control for HeapControl {
    fn load_u64(&self, off: usize, order: Ordering) -> u64 {
        self.u64_at(off).load(order)
    }

    fn store_u64(&self, off: usize, value: u64, order: Ordering) {
        self.u64_at(off).store(value, order);
    }

    fn fetch_max_u64(&self, off: usize, value: u64, order: Ordering) -> u64 {
        self.u64_at(off).fetch_max(value, order)
    }

    fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        self.u32_at(off).load(order)
    }

    fn store_u32(&self, off: usize, value: u32, order: Ordering) {
        self.u32_at(off).store(value, order);
    }

    fn fetch_add_u32(&self, off: usize, value: u32, order: Ordering) -> u32 {
        self.u32_at(off).fetch_add(value, order)
    }

    fn futex_wait(&self, off: usize, expected: u32, _timeout: Option<std::time::Duration>) {
        let guard = self.futex.0.lock().unwrap();
        // Relaxed: the kernel's compare is a plain load; ordering comes from
        // the callers' Acquire loads and the mutex.
        if self.u32_at(off).load(Ordering::Relaxed) == expected {
            drop(self.futex.1.wait(guard).unwrap());
        }
    }

    fn futex_wake(&self, _off: usize) {
        let _guard = self.futex.0.lock().unwrap();
        self.futex.1.notify_all();
    }
}

#[cfg(all(test, not(shm_loom)))]
mod tests {
    use super::Control;
    // A test-local count, not shared memory.
    use shm_sync::atomic::Ordering;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed}; // atomics-ok

    /// One wake reaches every sleeper: with a count the kernel reads as -1
    /// it woke one, and the others slept on (durable waiters then returned
    /// only at their 50 ms liveness check, one per publish).
    #[test]
    fn one_wake_wakes_every_sleeper() {
        let fd =
            shm_segment::memfd::create("futex-wake", 4096, shm_segment::memfd::FIXED_SIZE).unwrap();
        let map = shm_segment::Mapping::map(
            std::os::fd::AsFd::as_fd(&fd),
            0,
            4096,
            shm_segment::Access::ReadWrite,
        )
        .unwrap();
        let region = map.region();
        let woke = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    // No timeout: a sleeper the wake misses never returns.
                    while Control::load_u32(&region, 0, Ordering::Acquire) == 0 {
                        Control::futex_wait(&region, 0, 0, None);
                    }
                    woke.fetch_add(1, Relaxed);
                });
            }
            // Let the sleepers reach the kernel (a late one sees the value
            // changed and does not sleep: the test then passes either way).
            std::thread::sleep(std::time::Duration::from_millis(100));
            Control::store_u32(&region, 0, 1, Ordering::Release);
            Control::futex_wake(&region, 0);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while woke.load(Relaxed) < 4 {
                if std::time::Instant::now() > deadline {
                    // Free the missed sleepers so the scope can end, then fail.
                    let missed = 4 - woke.load(Relaxed);
                    for _ in 0..missed {
                        Control::futex_wake(&region, 0);
                        let _ = rustix::thread::futex::wake(
                            region.atomic_u32(0).unwrap(),
                            rustix::thread::futex::Flags::empty(),
                            1,
                        );
                    }
                    panic!("{missed} sleepers missed the wake");
                }
                std::thread::yield_now();
            }
        });
    }
}
