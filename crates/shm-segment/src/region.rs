//! [`Region`]: a bounds-checked view of bytes that other processes may write.
//!
//! # Safety
//!
//! A `Region<'a>` stands for `len` bytes at `ptr`, valid for `'a`, that any
//! other process may read or write at any time. Rust's memory model only makes
//! concurrent access defined when every access is atomic, so this module never
//! creates `&[u8]` or `&mut [u8]` into the region: it copies with
//! [`shm_sync::copy`] (Relaxed atomic loads and stores: 8 bytes at a time
//! where aligned and 1 byte at the edges, or byte-wise AVX and `rep movsb`
//! copies for long ones on x86-64), and hands out `&AtomicU32`/`&AtomicU64` or `&T` only
//! for [`Shared`] types, whose every byte is inside an atomic. A concurrent
//! writer can make a copy *inconsistent* (torn across words, and inside a
//! word for copies of `shm_sync::copy::WIDE_MIN` bytes or more), never
//! undefined: callers validate what they copy out (checksums, sequence
//! numbers).
//!
//! Mixed sizes: Rust also forbids atomic accesses of different sizes to the
//! same bytes that race *within one process* (unless all only read). A
//! region's word views and its [`Region::read_bytes`] / [`Region::write_bytes`]
//! (words where aligned, bytes at the edges, byte-wise from
//! `shm_sync::copy::WIDE_MIN` bytes on) access bytes with sizes that depend
//! on the call, so two threads of one process must not use them on the
//! same bytes at the same time unless both only read; callers order them by
//! their protocol (the workspace's protocols give every area one writer).
//! [`Region::copy_within`] and [`Region::read_bytewise`] are byte-wise at
//! every length, so they may race with each other: the snapshot's commit
//! copy and its host's page reads, which race by design, use only these.
//! Another process's writes are outside this process's abstract machine:
//! they are what every access here tolerates.
#![allow(unsafe_code)]

use core::marker::PhantomData;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering}; // atomics-ok: views of foreign memory, never loom-modelled

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::shared::Shared;

/// An access fell outside a [`Region`], was misaligned, or wrote a read-only region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "access of {len} bytes at offset {offset} is outside a region of {region_len} bytes, misaligned, writes a read-only region, or overlaps the bytes it copies"
)]
pub struct OutOfBounds {
    /// Offset asked for.
    pub offset: usize,
    /// Length asked for.
    pub len: usize,
    /// Length of the region.
    pub region_len: usize,
}

/// A view of `len` shared bytes that never hands out plain references to them.
///
/// Plain data is copied in and out ([`read`](Region::read),
/// [`write`](Region::write)); single words are used in place as atomics; every
/// access is bounds- and alignment-checked and fails with [`OutOfBounds`]
/// rather than panicking.
///
/// # Examples
/// ```
/// use shm_segment::{Layout, Segment};
/// use std::sync::atomic::Ordering;
///
/// let name = format!("doc-region-{}", std::process::id());
/// // A plain-data payload (no atomics), named so every program agrees on it.
/// let layout = Layout::tagged::<[u64; 4]>("readings-v1");
/// let seg = Segment::builder(&name).with_layout(layout).create()?;
/// let region = seg.payload();
/// region.write(0, &[1u64, 2, 3, 4])?;
/// let copy: [u64; 4] = region.read(0)?;
/// assert_eq!(copy, [1, 2, 3, 4]);
/// // A word used in place, as an atomic.
/// region.atomic_u64(8)?.fetch_add(10, Ordering::Relaxed);
/// assert_eq!(region.load_u64(8, Ordering::Acquire)?, 12);
/// // Out of bounds or misaligned: an error, never a fault.
/// assert!(region.read::<u64>(region.len()).is_err());
/// assert!(region.atomic_u64(3).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Invariants
/// 1. `ptr..ptr+len` is valid for reads (and for writes when `writable`) for `'a`.
/// 2. Every access this type performs to those bytes is atomic.
#[derive(Clone, Copy, Debug)]
pub struct Region<'a> {
    ptr: *mut u8,
    len: usize,
    writable: bool,
    _bytes: PhantomData<&'a [AtomicU8]>,
}

// SAFETY: by invariant 2 every access is atomic, like `&[AtomicU8]`, which is Send + Sync.
unsafe impl Send for Region<'_> {}
// SAFETY: as for Send.
unsafe impl Sync for Region<'_> {}

impl<'a> Region<'a> {
    /// Makes a region from raw parts, e.g. for heap-backed storage in tests.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be valid for reads, and for writes if `writable`,
    /// for the whole of `'a`, and must not be accessed through non-atomic
    /// references while the region (or anything it hands out) is used.
    pub unsafe fn from_raw_parts(ptr: *mut u8, len: usize, writable: bool) -> Region<'a> {
        Region {
            ptr,
            len,
            writable,
            _bytes: PhantomData,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether writes are allowed.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The start address (for callers with their own `unsafe` contract).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    fn check(
        &self,
        offset: usize,
        len: usize,
        align: usize,
        write: bool,
    ) -> Result<*mut u8, OutOfBounds> {
        let err = OutOfBounds {
            offset,
            len,
            region_len: self.len,
        };
        let end = offset.checked_add(len).ok_or(err)?;
        if end > self.len || (write && !self.writable) {
            return Err(err);
        }
        let ptr = self.ptr.wrapping_add(offset);
        if ptr.align_offset(align) != 0 {
            return Err(err);
        }
        Ok(ptr)
    }

    /// The sub-region `offset..offset + len`.
    pub fn sub(&self, offset: usize, len: usize) -> Result<Region<'a>, OutOfBounds> {
        let ptr = self.check(offset, len, 1, false)?;
        // SAFETY: `ptr..ptr+len` lies inside `self` (checked), so invariant 1 carries over.
        Ok(unsafe { Region::from_raw_parts(ptr, len, self.writable) })
    }

    /// The `u32` at `offset` (4-aligned) as an atomic; writable regions only.
    pub fn atomic_u32(&self, offset: usize) -> Result<&'a AtomicU32, OutOfBounds> {
        let ptr = self.check(offset, 4, 4, true)?;
        // SAFETY: in bounds, 4-aligned and writable (checked); AtomicU32 has the
        // layout of u32 and every bit pattern is valid; all accesses are atomic (invariant 2).
        Ok(unsafe { AtomicU32::from_ptr(ptr.cast()) })
    }

    /// The `u64` at `offset` (8-aligned) as an atomic; writable regions only.
    pub fn atomic_u64(&self, offset: usize) -> Result<&'a AtomicU64, OutOfBounds> {
        let ptr = self.check(offset, 8, 8, true)?;
        // SAFETY: in bounds, 8-aligned and writable (checked); layout of u64, any bits valid.
        Ok(unsafe { AtomicU64::from_ptr(ptr.cast()) })
    }

    /// `count` consecutive `u64`s at `offset` (8-aligned) as atomics; writable regions only.
    pub fn atomics_u64(&self, offset: usize, count: usize) -> Result<&'a [AtomicU64], OutOfBounds> {
        let len = count.checked_mul(8).ok_or(OutOfBounds {
            offset,
            len: usize::MAX,
            region_len: self.len,
        })?;
        let ptr = self.check(offset, len, 8, true)?;
        // `ptr..ptr+8*count` is in bounds, 8-aligned and writable (checked);
        // AtomicU64 has the size and alignment of u64 and any bits are valid;
        // every access through the slice is atomic (invariant 2), valid for 'a (invariant 1).
        #[allow(
            clippy::cast_ptr_alignment,
            reason = "`check` verified 8-byte alignment"
        )]
        let words = ptr.cast::<AtomicU64>();
        // SAFETY: see above.
        Ok(unsafe { core::slice::from_raw_parts(words, count) })
    }

    /// Loads the `u64` at `offset` (8-aligned) with `order`; works on read-only
    /// regions, where `order` must be `Relaxed` (Rust allows no other atomic
    /// load on read-only memory: follow it with an Acquire fence instead).
    pub fn load_u64(&self, offset: usize, order: Ordering) -> Result<u64, OutOfBounds> {
        let ptr = self.check(offset, 8, 8, false)?;
        // SAFETY: in bounds and aligned (checked); only loads are performed, which a
        // read-only mapping allows; the reference does not escape this call.
        Ok(unsafe { AtomicU64::from_ptr(ptr.cast()) }.load(order))
    }

    /// Loads the `u32` at `offset` (4-aligned) with `order`; works on read-only
    /// regions, where `order` must be `Relaxed` (see [`Region::load_u64`]).
    pub fn load_u32(&self, offset: usize, order: Ordering) -> Result<u32, OutOfBounds> {
        let ptr = self.check(offset, 4, 4, false)?;
        // SAFETY: as in `load_u64`.
        Ok(unsafe { AtomicU32::from_ptr(ptr.cast()) }.load(order))
    }

    /// A `&T` at `offset` for a type whose every mutable byte is atomic; writable regions only.
    pub fn get<T: Shared>(&self, offset: usize) -> Result<&'a T, OutOfBounds> {
        let ptr = self.check(offset, size_of::<T>(), align_of::<T>(), true)?;
        // SAFETY:
        // - in bounds and aligned for T (checked), valid for 'a (invariant 1);
        // - T: FromBytes, so any bytes are a valid T;
        // - T: Shared, so every byte another process may change is inside an
        //   UnsafeCell (an atomic), making shared `&T` access sound.
        Ok(unsafe { &*ptr.cast::<T>() })
    }

    /// Copies `dst.len()` bytes starting at `offset` out of the region.
    ///
    /// Uses Relaxed atomic loads ([`shm_sync::copy::load`]): 8 bytes at a
    /// time where aligned, and byte-wise (wide AVX and `rep movsb` copies on x86-64) from
    /// [`shm_sync::copy::WIDE_MIN`] bytes on. A concurrent writer can make
    /// the copy inconsistent, even torn inside a word, but never undefined;
    /// a word that must be read whole is read with [`Region::load_u64`] (or
    /// a `read` shorter than `WIDE_MIN`, such as `read::<u64>`).
    pub fn read_bytes(&self, offset: usize, dst: &mut [u8]) -> Result<(), OutOfBounds> {
        let src = self.check(offset, dst.len(), 1, false)?;
        // SAFETY:
        // - `src..src+dst.len()` is inside the region (checked) and valid for
        //   reads (invariant 1); `dst` is a private slice, not in the region;
        // - every access this type makes to the region is atomic (invariant 2);
        // - racing copies of other sizes in this process: see "Mixed sizes"
        //   in the module docs.
        // Relaxed loads: ordering against other shared data is the caller's
        // protocol (an Acquire load of a sequence or flag before and/or after).
        unsafe { shm_sync::copy::load(src, dst) };
        Ok(())
    }

    /// [`Region::read_bytes`], byte-wise at every length
    /// ([`shm_sync::copy::load_bytewise`]): never single-copy atomic per
    /// word, but never of another access size than [`Region::copy_within`]
    /// or another `read_bytewise`, so these may race with each other on the
    /// same bytes within this process (see "Mixed sizes" in the module docs).
    pub fn read_bytewise(&self, offset: usize, dst: &mut [u8]) -> Result<(), OutOfBounds> {
        let src = self.check(offset, dst.len(), 1, false)?;
        // SAFETY:
        // - `src..src+dst.len()` is inside the region (checked) and valid for
        //   reads (invariant 1); `dst` is a private slice, not in the region;
        // - every access this type makes to the region is atomic (invariant 2);
        // - racing accesses of other sizes in this process: see "Mixed
        //   sizes" in the module docs (the caller's to avoid).
        unsafe { shm_sync::copy::load_bytewise(src, dst) };
        Ok(())
    }

    /// Copies `src` into the region at `offset` with atomic stores (Relaxed; the
    /// caller publishes with a Release store of its own flag or sequence).
    ///
    /// As [`Region::read_bytes`], not single-copy atomic per word from
    /// [`shm_sync::copy::WIDE_MIN`] bytes on.
    pub fn write_bytes(&self, offset: usize, src: &[u8]) -> Result<(), OutOfBounds> {
        let dst = self.check(offset, src.len(), 1, true)?;
        // SAFETY: as in `read_bytes`, with the range writable (checked).
        unsafe { shm_sync::copy::store(dst, src) };
        Ok(())
    }

    /// Copies the `len` bytes at `from` to `to`, inside the region (both
    /// ranges must not overlap; an overlapping copy is refused with
    /// [`OutOfBounds`] for the destination).
    ///
    /// Relaxed atomic loads and stores on both sides
    /// ([`shm_sync::copy::copy_within`]), byte-wise at every length (wide on
    /// x86-64): inconsistent under a racing writer, never undefined, and of
    /// one access size with [`Region::read_bytewise`], so the two may race on
    /// the same bytes within this process.
    pub fn copy_within(&self, from: usize, to: usize, len: usize) -> Result<(), OutOfBounds> {
        let src = self.check(from, len, 1, false)?;
        let dst = self.check(to, len, 1, true)?;
        // `check` bounded both ends by `self.len`, so neither sum overflows.
        if len > 0 && from < to + len && to < from + len {
            return Err(OutOfBounds {
                offset: to,
                len,
                region_len: self.len,
            });
        }
        // SAFETY:
        // - both ranges are inside the region (checked), valid for reads and
        //   (the destination) writes (invariant 1), and disjoint (checked);
        // - every access this type makes to the region is atomic (invariant 2);
        // - racing copies of other sizes in this process: see "Mixed sizes"
        //   in the module docs.
        unsafe { shm_sync::copy::copy_within(dst, src, len) };
        Ok(())
    }

    /// Sets `len` bytes at `offset` to zero.
    pub fn zero(&self, offset: usize, len: usize) -> Result<(), OutOfBounds> {
        let zeros = [0u8; 256];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len());
            self.write_bytes(offset + done, &zeros[..n])?;
            done += n;
        }
        Ok(())
    }

    /// Copies a plain-data value out of the region.
    pub fn read<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, OutOfBounds> {
        let mut value = T::new_zeroed();
        self.read_bytes(offset, value.as_mut_bytes())?;
        Ok(value)
    }

    /// Copies a plain-data value into the region.
    pub fn write<T: IntoBytes + Immutable>(
        &self,
        offset: usize,
        value: &T,
    ) -> Result<(), OutOfBounds> {
        self.write_bytes(offset, value.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap(len: usize) -> (Vec<u64>, usize) {
        (vec![0u64; len.div_ceil(8)], len)
    }

    #[test]
    fn copy_within_moves_bytes_and_refuses_overlap_and_out_of_bounds() {
        let wide = shm_sync::copy::WIDE_MIN;
        let (mut buf, len) = heap(4 * wide);
        // SAFETY: `buf` outlives `sut` and is only accessed through it.
        let sut = unsafe { Region::from_raw_parts(buf.as_mut_ptr().cast(), len, true) };
        let src: Vec<u8> = (0..len).map(|i| (i * 13 + 5) as u8).collect();
        for n in [0, 7, 64, wide + 3] {
            sut.write_bytes(0, &src).unwrap();
            sut.copy_within(3, 2 * wide + 1, n).unwrap();
            let mut got = vec![0u8; n];
            sut.read_bytes(2 * wide + 1, &mut got).unwrap();
            assert_eq!(got, src[3..3 + n], "len {n}");
        }
        let refused = |from, to, n| sut.copy_within(from, to, n).unwrap_err();
        assert_eq!(refused(0, 8, 16).offset, 8, "overlap");
        assert_eq!(refused(8, 0, 16).offset, 0, "overlap");
        assert_eq!(refused(len - 4, 0, 8).offset, len - 4, "source outside");
        assert_eq!(
            refused(0, len - 4, 8).offset,
            len - 4,
            "destination outside"
        );
        sut.copy_within(0, 16, 16).unwrap();
        // SAFETY: as above; read-only now.
        let ro = unsafe { Region::from_raw_parts(buf.as_mut_ptr().cast(), len, false) };
        assert!(ro.copy_within(0, 64, 8).is_err(), "read-only");
    }

    #[test]
    fn copies_round_trip_at_every_alignment() {
        // Long enough for copies on both sides of `WIDE_MIN`.
        let (mut buf, len) = heap(2 * shm_sync::copy::WIDE_MIN + 32);
        // SAFETY: `buf` outlives `sut` and is only accessed through it.
        let sut = unsafe { Region::from_raw_parts(buf.as_mut_ptr().cast(), len, true) };
        let wide = shm_sync::copy::WIDE_MIN;
        for offset in 0..16 {
            for n in (0..40).chain([wide - 1, wide, 2 * wide + 9]) {
                let src: Vec<u8> = (0..n).map(|i| (i * 7 + offset + 1) as u8).collect();
                sut.write_bytes(offset, &src).unwrap();
                let mut dst = vec![0u8; n];
                sut.read_bytes(offset, &mut dst).unwrap();
                assert_eq!(src, dst, "offset {offset} len {n}");
            }
        }
    }

    #[test]
    fn out_of_bounds_and_read_only_are_refused() {
        let (mut buf, len) = heap(16);
        // SAFETY: `buf` outlives both regions and is only accessed through them.
        let sut = unsafe { Region::from_raw_parts(buf.as_mut_ptr().cast(), len, true) };
        assert!(sut.write_bytes(10, &[0; 7]).is_err());
        assert!(sut.read_bytes(usize::MAX, &mut [0; 2]).is_err());
        assert!(sut.atomic_u64(4).is_err(), "misaligned");
        assert!(sut.sub(8, 9).is_err());
        assert_eq!(sut.atomics_u64(8, 1).unwrap().len(), 1);
        assert!(sut.atomics_u64(8, 2).is_err());
        assert!(sut.atomics_u64(0, usize::MAX).is_err());
        // SAFETY: as above.
        let ro = unsafe { Region::from_raw_parts(buf.as_mut_ptr().cast(), len, false) };
        assert!(ro.write_bytes(0, &[1]).is_err());
        assert!(ro.atomic_u32(0).is_err());
        assert_eq!(ro.load_u64(8, Ordering::Relaxed).unwrap(), 0);
    }
}
