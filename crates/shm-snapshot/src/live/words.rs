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

use shm_segment::Region;
use shm_sync::atomic::Ordering;

/// Read access to the protocol's words: what the host needs.
pub(crate) trait Words {
    /// Bytes of storage.
    fn len(&self) -> usize;

    /// Loads the `u64` at `off` (8-aligned), Relaxed.
    fn load(&self, off: usize) -> u64;

    /// Copies the `dst.len()` bytes at `off` into `dst`, with Relaxed atomic
    /// loads (8 bytes at a time where aligned): a concurrent writer can make
    /// the copy inconsistent, never undefined.
    fn read(&self, off: usize, dst: &mut [u8]);
}

/// Write access as well: what the client needs.
pub(crate) trait WordsMut: Words {
    /// Stores `value` into the `u64` at `off` (8-aligned) with `order`.
    fn store(&self, off: usize, value: u64, order: Ordering);

    /// Stores `value` into each of the `count` words from `off` (8-aligned), Relaxed.
    fn fill(&self, off: usize, count: usize, value: u64);

    /// Copies `len` bytes from `from` to `to` (congruent modulo 8) with
    /// Relaxed atomic loads and stores: 8 bytes at a time in the aligned
    /// middle, byte by byte at the edges.
    fn copy(&self, from: usize, to: usize, len: usize);

    /// Whether the `len` bytes at `a` and at `b` (both 8-aligned) are equal,
    /// by Relaxed loads.
    fn same(&self, a: usize, b: usize, len: usize) -> bool;
}

impl<W: Words + ?Sized> Words for &W {
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

impl<W: WordsMut + ?Sized> WordsMut for &W {
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
        self.read_bytes(off, dst).expect(OUTSIDE);
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
        let head = ((8 - from % 8) % 8).min(len);
        let words = (len - head) / 8;
        let tail = len - head - words * 8;
        let mut edge = [0u8; 8];
        if head > 0 {
            self.read_bytes(from, &mut edge[..head]).expect(OUTSIDE);
            self.write_bytes(to, &edge[..head]).expect(OUTSIDE);
        }
        let src = self.atomics_u64(from + head, words).expect(OUTSIDE);
        let dst = self.atomics_u64(to + head, words).expect(OUTSIDE);
        for (d, s) in dst.iter().zip(src) {
            d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        if tail > 0 {
            let o = head + words * 8;
            self.read_bytes(from + o, &mut edge[..tail]).expect(OUTSIDE);
            self.write_bytes(to + o, &edge[..tail]).expect(OUTSIDE);
        }
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
