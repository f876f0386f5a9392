//! Word-atomic copies between private buffers and shared memory that another
//! process may write at any time.
//!
//! A plain `memcpy` from bytes that someone else writes concurrently is a
//! data race: undefined behaviour under the language's memory model, which
//! lets the compiler assume the bytes do not change under the copy (and, for
//! instance, read them twice). These copies never race in that sense: every
//! access to the shared side is atomic, a `Relaxed` `AtomicU64` load or store
//! for each whole aligned word and an `AtomicU8` one for the bytes before the
//! first and after the last aligned word. A concurrent writer can make the
//! copy *inconsistent* (a mix of old and new words), never undefined. This
//! is the approach of the `atomic-memcpy` crate, of crossbeam's discussion
//! of the seqlock behind `AtomicCell` (whose volatile read it calls
//! technically undefined), of the C++ proposal P1478 ("Byte-wise atomic
//! memcpy"), and what `shm_segment::Region` does.
//!
//! Mixed sizes: the copies of one range use words where the range covers a
//! whole aligned word and bytes elsewhere, so two copies of different ranges
//! may access one word with different sizes. Under the ring protocol two
//! such copies in this process never overlap in time on the same bytes
//! (they touch disjoint slots, or are ordered by the counters' Release /
//! Acquire), so no racing mixed-size accesses arise within the process.
//!
//! On x86-64 and `AArch64` a `Relaxed` load or store of an aligned word is a
//! plain `mov` / `ldr` / `str`; what is lost against `memcpy` is vector width
//! (the compiler does not merge atomic accesses), not fences.
//!
//! # Safety
//!
//! The callers (`storage.rs`) pass pointers into a mapping that outlives the
//! call, after bounds-checking the range; nothing in this process holds a
//! reference to those bytes.
#![allow(unsafe_code)]

use shm_sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Copies `src` into the shared bytes at `dst` with `Relaxed` atomic stores.
///
/// The caller publishes the bytes with a Release store of its own (the
/// ring's `tail`), which orders these stores before it.
///
/// # Safety
/// - `dst .. dst + src.len()` is valid for writes for the whole call (inside
///   a live shared mapping);
/// - this process accesses those bytes only atomically (no `&`/`&mut` to them
///   exists), except where a caller of an `unsafe` trusted call vouched for
///   exclusive access.
#[inline]
pub(crate) unsafe fn store(dst: *mut u8, src: &[u8]) {
    // Bytes up to the first 8-aligned address (all of them if `align_offset`
    // cannot tell, which it may do: then the copy is byte-wise, still correct).
    let head = dst.align_offset(8).min(src.len());
    let (edge, rest) = src.split_at(head);
    // SAFETY: `dst .. dst + head` is a prefix of the caller's range.
    unsafe { store_bytes(dst, edge) };
    let (words, tail) = rest.as_chunks::<8>();
    #[allow(
        clippy::cast_ptr_alignment,
        reason = "8-aligned whenever `words` is not empty (see `head`)"
    )]
    let aligned = dst.wrapping_add(head).cast::<u64>();
    for (i, word) in words.iter().enumerate() {
        // SAFETY:
        // - `aligned + i` is 8-aligned (`head` reached alignment, or `words`
        //   is empty) and its 8 bytes lie inside the caller's range;
        // - every access this process makes to them is atomic (caller's contract).
        let cell = unsafe { AtomicU64::from_ptr(aligned.wrapping_add(i)) };
        // Relaxed: published by the caller's Release store (see above).
        cell.store(u64::from_ne_bytes(*word), Ordering::Relaxed);
    }
    // SAFETY: the suffix of the caller's range after the last whole word.
    unsafe { store_bytes(dst.wrapping_add(head + words.len() * 8), tail) };
}

/// Copies the shared bytes at `src` into `dst` with `Relaxed` atomic loads.
///
/// The caller orders them after an Acquire load of its own (the ring's
/// `tail`), which made the bytes visible.
///
/// # Safety
/// As for [`store`], with `src .. src + dst.len()` valid for reads.
#[inline]
pub(crate) unsafe fn load(src: *const u8, dst: &mut [u8]) {
    let head = src.align_offset(8).min(dst.len());
    let (edge, rest) = dst.split_at_mut(head);
    // SAFETY: `src .. src + head` is a prefix of the caller's range.
    unsafe { load_bytes(src, edge) };
    let (words, tail) = rest.as_chunks_mut::<8>();
    #[allow(
        clippy::cast_ptr_alignment,
        reason = "8-aligned whenever `words` is not empty (see `head`)"
    )]
    let aligned = src.wrapping_add(head).cast_mut().cast::<u64>();
    let whole = words.len();
    for (i, word) in words.iter_mut().enumerate() {
        // SAFETY: as in `store`: 8-aligned, inside the caller's range, and
        // only ever accessed atomically by this process. Only loads are made.
        let cell = unsafe { AtomicU64::from_ptr(aligned.wrapping_add(i)) };
        // Relaxed: ordered after the caller's Acquire load (see above).
        *word = cell.load(Ordering::Relaxed).to_ne_bytes();
    }
    // SAFETY: the suffix of the caller's range after the last whole word.
    unsafe { load_bytes(src.wrapping_add(head + whole * 8), tail) };
}

/// Byte-wise atomic stores (the unaligned edges of [`store`]).
///
/// # Safety
/// As for [`store`].
#[inline]
unsafe fn store_bytes(dst: *mut u8, src: &[u8]) {
    for (i, byte) in src.iter().enumerate() {
        // SAFETY: inside the caller's range; bytes need no alignment; atomic only.
        let cell = unsafe { AtomicU8::from_ptr(dst.wrapping_add(i)) };
        // Relaxed: as in `store`.
        cell.store(*byte, Ordering::Relaxed);
    }
}

/// Byte-wise atomic loads (the unaligned edges of [`load`]).
///
/// # Safety
/// As for [`load`].
#[inline]
unsafe fn load_bytes(src: *const u8, dst: &mut [u8]) {
    for (i, byte) in dst.iter_mut().enumerate() {
        // SAFETY: inside the caller's range; bytes need no alignment; only loads.
        let cell = unsafe { AtomicU8::from_ptr(src.wrapping_add(i).cast_mut()) };
        // Relaxed: as in `load`.
        *byte = cell.load(Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::{load, store};

    /// Every start alignment and length round-trips, and nothing outside the
    /// range is touched.
    #[test]
    fn copies_round_trip_at_every_alignment_and_length() {
        let mut shared = vec![0u64; 16];
        for offset in 0..17 {
            for len in 0..70 {
                shared.fill(0);
                let base = shared.as_mut_ptr().cast::<u8>();
                let src: Vec<u8> = (0..len).map(|i| (i * 7 + offset + 1) as u8).collect();
                // SAFETY: `offset + len <= 128`, inside `shared`, which no
                // reference touches while the raw copies run.
                unsafe { store(base.wrapping_add(offset), &src) };
                let mut dst = vec![0u8; len];
                // SAFETY: as above.
                unsafe { load(base.wrapping_add(offset), &mut dst) };
                assert_eq!(src, dst, "offset {offset} len {len}");
                let bytes = zerocopy::IntoBytes::as_bytes(&shared[..]);
                assert!(bytes[..offset].iter().all(|b| *b == 0), "before the range");
                assert!(
                    bytes[offset + len..].iter().all(|b| *b == 0),
                    "after the range"
                );
            }
        }
    }
}
