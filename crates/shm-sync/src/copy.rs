//! Copies between private buffers and shared memory that another process may
//! write at any time.
//!
//! A plain `memcpy` from bytes that someone else writes concurrently is a
//! data race: undefined behaviour under the language's memory model, which
//! lets the compiler assume the bytes do not change under the copy (and, for
//! instance, read them twice). These copies never race in that sense: every
//! access to the shared side is, in the language's abstract machine, a
//! `Relaxed` atomic access. A concurrent writer can make the copy
//! *inconsistent* (a mix of old and new bytes), never undefined. This is
//! the approach of the `atomic-memcpy` crate, of crossbeam's discussion of
//! the seqlock behind `AtomicCell` (whose volatile read it calls technically
//! undefined), and of the C++ proposal P1478 ("Byte-wise atomic memcpy").
//!
//! Every shared-memory copy of the workspace goes through here: the slot
//! copies of `shm-ring`, the message copies of `shm-mailbox` and the byte
//! copies of `shm_segment::Region`.
//!
//! # Two paths
//!
//! - **Word path** (every target; always under `cfg(shm_loom)` and Miri): a
//!   `Relaxed` `AtomicU64` load or store for each whole aligned word, and
//!   (for [`load`] and [`store`], whose range may start anywhere) an
//!   `AtomicU8` one for the bytes before the first and after the last
//!   aligned word. Each aligned word is copied single-copy atomically.
//!   [`copy_within`] and [`load_bytewise`] instead make an `AtomicU8`
//!   access for every byte, so that their access size never depends on
//!   the length or the alignment. On
//!   x86-64 and `AArch64` such a load or store is a plain `mov` / `ldr` /
//!   `str`; what it loses against `memcpy` is vector width (the compiler
//!   never merges atomic accesses), not fences.
//! - **Wide path** (x86-64 outside loom and Miri): inline assembly, a loop
//!   of 32-byte AVX loads and stores over the whole 128-byte blocks of a
//!   copy under 64 KiB (when the CPU has AVX), then one `rep movsb` for the
//!   rest, or for the whole copy (which the ERMS / FSRM microcode runs close
//!   to `memcpy` speed). In the abstract machine both are a sequence of
//!   `Relaxed` *byte-wise* atomic accesses (P1478's byte-wise atomic memcpy;
//!   the argument is at `rep_movsb` and `avx_blocks` in the source). It is **not single-copy
//!   atomic per word**: a copy that races with a writer may mix the bytes
//!   of one word from before and after the write.
//!
//! [`load`] and [`store`] take the wide path from [`WIDE_MIN`] bytes on and
//! the word path below. [`load_words`] and [`store_words`], for data held as
//! `[AtomicU64]`, take one path for every length (the wide one where it
//! exists), so that they never mix access sizes with each other; so do
//! [`copy_within`] and [`load_bytewise`], byte-wise at every length (the
//! wide path, or `AtomicU8` accesses where it does not exist).
//!
//! So a caller must tolerate a copy torn at any byte, and must not rely on
//! a word inside a copy being read or written whole. Every caller in the
//! workspace does (`docs/protocol/*.md` says where for each): the ring
//! validates what it copies from an untrusted peer like any input, the
//! mailbox copies only slots its hazard protects and reads `seq` and `len`
//! as separate atomic words, and `Region` documents its copies as
//! inconsistent under a racing writer (the snapshot's readers re-check a
//! sequence after copying). A word whose value matters alone (a length, a
//! sequence) is loaded as its own atomic, never through a copy.
//!
//! # Mixed sizes
//!
//! Rust forbids racing atomic accesses of different sizes to the same bytes
//! *within a process* (unless all of them only read): "every pair of
//! non-synchronized atomic accesses must be either disjoint, access the
//! exact same memory (including using the same access size), or both be
//! reads" (`core::sync::atomic`, "Memory model for atomic accesses"). [`load`] and
//! [`store`] access the shared bytes with sizes that depend on the length
//! and the alignment, so two of them in this process must never overlap in
//! time on the same bytes unless both only read: the caller's protocol
//! orders them (the ring's counters and claims, the snapshot's single
//! writer). [`load_words`] and [`store_words`] need less: racing only with
//! each other, they never mix sizes; nor do [`copy_within`] and
//! [`load_bytewise`] (the snapshot's commit copy and the host's page reads,
//! which race by design when both run in one process). A write by *another* process is outside
//! this process's abstract machine; it appears as a racing byte-wise store,
//! which is exactly what these copies tolerate.
//!
//! # Ordering
//!
//! The copies are `Relaxed`: callers publish stores with a Release store of
//! their own (the ring's `tail`, the mailbox's `published`) and order loads
//! after an Acquire load or fence. On x86-64 those Release stores and
//! Acquire loads are plain `mov`s that rely on the hardware's ordering, so
//! the wide path must keep it too: the Intel SDM (Vol. 3A, "Memory Ordering
//! for String Operations") lets the stores *within* one fast-string
//! operation complete out of order, but orders the operation as a whole
//! with earlier and later stores; the Linux kernel's seqlocks rely on the
//! same (`memcpy` between `smp_rmb`/`smp_wmb`, which are compiler barriers
//! on x86).

#![allow(unsafe_code)]

use crate::atomic::AtomicU64;

/// Copies of at least this many bytes take the wide path (on x86-64 outside
/// loom and Miri). Below it, the startup cost of `rep movsb` exceeds what
/// its width saves over the word loop: on an AMD EPYC with FSRM, an
/// L1-resident load took 8-15 ns by words and 15-17 ns by `rep movsb` for
/// 256-448 bytes, about even at 512-640, and 33 ns against 25 ns at 1 KiB.
pub const WIDE_MIN: usize = 512;

/// Copies `src` into the shared bytes at `dst` with `Relaxed` atomic stores.
///
/// The caller publishes the bytes with a Release store of its own, which
/// orders these stores before it. Not single-copy atomic per word from
/// [`WIDE_MIN`] bytes on (see the [module docs](self)).
///
/// # Examples
/// ```
/// let mut shared = [0u64; 4];
/// let dst = shared.as_mut_ptr().cast::<u8>();
/// // SAFETY: `shared` outlives the calls and no reference to it is used
/// // until they are done; nothing else accesses it.
/// unsafe { shm_sync::copy::store(dst.wrapping_add(3), b"hello") };
/// let mut out = [0u8; 5];
/// // SAFETY: as above.
/// unsafe { shm_sync::copy::load(dst.wrapping_add(3), &mut out) };
/// assert_eq!(&out, b"hello");
/// ```
///
/// # Safety
/// - `dst .. dst + src.len()` is valid for writes for the whole call (for
///   instance inside a live shared mapping) and does not overlap `src`;
/// - this process accesses those bytes only atomically: no `&`/`&mut` to
///   them is used while the copy runs, except where the caller's own
///   `unsafe` contract vouched for exclusive access;
/// - no other access of this process to those bytes races with the copy
///   unless both only read (see "Mixed sizes" in the [module docs](self)).
#[inline]
pub unsafe fn store(dst: *mut u8, src: &[u8]) {
    #[cfg(all(target_arch = "x86_64", not(shm_loom), not(miri)))]
    if src.len() >= WIDE_MIN {
        // SAFETY: `dst .. + len` is valid for writes and only accessed
        // atomically (caller's contract), `src` is a live slice that does
        // not overlap it (caller's contract).
        unsafe { wide(dst, src.as_ptr(), src.len()) };
        return;
    }
    // SAFETY: preconditions forwarded to the caller.
    unsafe { words::store(dst, src) };
}

/// Copies the shared bytes at `src` into `dst` with `Relaxed` atomic loads.
///
/// The caller orders them after an Acquire load or fence of its own, which
/// made the bytes visible. Not single-copy atomic per word from
/// [`WIDE_MIN`] bytes on (see the [module docs](self)).
///
/// # Safety
/// As for [`store`], with `src .. src + dst.len()` valid for reads (a
/// read-only mapping will do: only loads are made).
#[inline]
pub unsafe fn load(src: *const u8, dst: &mut [u8]) {
    #[cfg(all(target_arch = "x86_64", not(shm_loom), not(miri)))]
    if dst.len() >= WIDE_MIN {
        // SAFETY: `src .. + len` is valid for reads and only accessed
        // atomically (caller's contract); `dst` is a live, exclusive slice
        // of the same length, so it cannot overlap shared bytes.
        unsafe { wide(dst.as_mut_ptr(), src, dst.len()) };
        return;
    }
    // SAFETY: preconditions forwarded to the caller.
    unsafe { words::load(src, dst) };
}

/// Copies `len` shared bytes at `src` to the shared bytes at `dst` (for
/// instance from one area of a mapping to another), with `Relaxed` byte-wise
/// atomic loads and stores on both sides, at every length.
///
/// On x86-64 (outside loom and Miri) one wide copy; elsewhere one `AtomicU8`
/// load and store per byte. Byte-wise at every length, unlike [`load`] and
/// [`store`]: so this copy and [`load_bytewise`] never mix access sizes with
/// each other, whatever their lengths and alignments, and two threads of
/// this process may race them on the same bytes (see "Mixed sizes" in the
/// module docs). A word-by-word loop between two shared areas (what this
/// replaces in `shm-snapshot`'s commit) ran at a fraction of the wide copy's
/// speed: the compiler never merges atomic accesses into vector ones.
///
/// # Safety
/// - `src .. src + len` is valid for reads and `dst .. dst + len` for
///   writes, and the two do not overlap;
/// - this process accesses both ranges only atomically, and no access of
///   another size (a word load or store, [`load`], [`store`]) races with
///   the copy on them unless both only read.
#[inline]
pub unsafe fn copy_within(dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(all(target_arch = "x86_64", not(shm_loom), not(miri)))]
    // SAFETY: both ranges valid and disjoint, only accessed atomically and
    // by no racing access of another size (caller's contract). A racing
    // `copy_within` or `load_bytewise` of this process accesses each byte
    // it shares with this one as one byte too: "the exact same memory
    // (including using the same access size)", which the memory model
    // allows (module docs, "Mixed sizes").
    unsafe {
        wide(dst, src, len);
    }
    #[cfg(not(all(target_arch = "x86_64", not(shm_loom), not(miri))))]
    {
        let mut buf = [0u8; 256];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len());
            // SAFETY: `src + done .. + n` is inside the caller's readable
            // range; `buf` is private.
            unsafe { words::load_bytes(src.wrapping_add(done), &mut buf[..n]) };
            // SAFETY: `dst + done .. + n` is inside the caller's writable range.
            unsafe { words::store_bytes(dst.wrapping_add(done), &buf[..n]) };
            done += n;
        }
    }
}

/// Copies the shared bytes at `src` into `dst` with `Relaxed` byte-wise
/// atomic loads, at every length: [`load`] without its word path, so that
/// it never mixes access sizes with [`copy_within`] or another of these
/// (see [`copy_within`]). Not single-copy atomic per word at any length.
///
/// # Safety
/// - `src .. src + dst.len()` is valid for reads (a read-only mapping will
///   do: only loads are made);
/// - this process accesses those bytes only atomically, and no access of
///   another size races with the copy unless both only read.
#[inline]
pub unsafe fn load_bytewise(src: *const u8, dst: &mut [u8]) {
    #[cfg(all(target_arch = "x86_64", not(shm_loom), not(miri)))]
    // SAFETY: `src .. + len` is valid for reads and only accessed atomically
    // by no racing access of another size (caller's contract; byte-wise
    // copies race with this one at the same size, as in `copy_within`);
    // `dst` is a live, exclusive slice, so it cannot overlap shared bytes.
    unsafe {
        wide(dst.as_mut_ptr(), src, dst.len());
    }
    #[cfg(not(all(target_arch = "x86_64", not(shm_loom), not(miri))))]
    // SAFETY: forwarded (caller's contract).
    unsafe {
        words::load_bytes(src, dst);
    }
}

/// Copies `src` into the shared words `dst`, the bytes in memory order and
/// the last partial word padded with zeros.
///
/// Like [`store`] for data held as `[AtomicU64]`, but with one access size
/// for every length: bytes (the wide path) on x86-64,
/// whole words elsewhere and under `cfg(shm_loom)` (one loom word at a
/// time, so the models check every ordering) and Miri. So two of these
/// copies and [`load_words`] never mix sizes, even when they race because
/// a peer broke the caller's protocol.
///
/// # Safety
/// Within this process, no access to `dst` other than through
/// [`load_words`] and [`store_words`] races with the copy.
///
/// # Panics
/// If `src` is longer than `dst` (`8 * dst.len()` bytes): a caller bug.
#[inline]
pub unsafe fn store_words(dst: &[AtomicU64], src: &[u8]) {
    assert!(
        src.len().div_ceil(8) <= dst.len(),
        "copy longer than its words"
    );
    #[cfg(all(target_arch = "x86_64", not(shm_loom), not(miri)))]
    {
        let base = dst.as_ptr().cast::<u8>().cast_mut();
        let pad = src.len().next_multiple_of(8) - src.len();
        // SAFETY:
        // - `dst` is a live slice of atomics, so its first
        //   `src.len() <= 8 * dst.len()` bytes are valid for writes (interior
        //   mutability), and `src` is a private slice that cannot overlap it;
        // - this process accesses them only atomically (they are atomics),
        //   and only through byte-wise copies while this one runs (caller's
        //   contract), so no racing access of another size.
        unsafe { wide(base, src.as_ptr(), src.len()) };
        // SAFETY: as above, for the `pad < 8` bytes after `src.len()`,
        // still inside the last word `src` touched; `ZEROS` is private.
        unsafe { rep_movsb(base.wrapping_add(src.len()), ZEROS.as_ptr(), pad) };
    }
    #[cfg(not(all(target_arch = "x86_64", not(shm_loom), not(miri))))]
    for (w, chunk) in dst.iter().zip(src.chunks(8)) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        // Relaxed: as in `store`, published by the caller.
        w.store(u64::from_ne_bytes(word), crate::atomic::Ordering::Relaxed);
    }
}

/// The padding of [`store_words`]' last word.
#[cfg(all(target_arch = "x86_64", not(shm_loom), not(miri)))]
static ZEROS: [u8; 8] = [0; 8];

/// Copies the first `dst.len()` bytes of the shared words `src` into `dst`,
/// in memory order.
///
/// Like [`load`] for data held as `[AtomicU64]`, with one access size for
/// every length, as [`store_words`] (whose contract this shares).
///
/// # Safety
/// As for [`store_words`].
///
/// # Panics
/// If `dst` is longer than `src` (`8 * src.len()` bytes): a caller bug.
#[inline]
pub unsafe fn load_words(src: &[AtomicU64], dst: &mut [u8]) {
    assert!(
        dst.len().div_ceil(8) <= src.len(),
        "copy longer than its words"
    );
    #[cfg(all(target_arch = "x86_64", not(shm_loom), not(miri)))]
    // SAFETY: as in `store_words`, reading: the first `dst.len()` bytes of
    // `src` are valid for reads; `dst` is private; no racing access of
    // another size (caller's contract).
    unsafe {
        wide(dst.as_mut_ptr(), src.as_ptr().cast::<u8>(), dst.len());
    }
    #[cfg(not(all(target_arch = "x86_64", not(shm_loom), not(miri))))]
    for (w, chunk) in src.iter().zip(dst.chunks_mut(8)) {
        // Relaxed: as in `load`, ordered by the caller.
        let word = w.load(crate::atomic::Ordering::Relaxed);
        chunk.copy_from_slice(&word.to_ne_bytes()[..chunk.len()]);
    }
}

/// From this many bytes on, [`wide`] leaves the whole copy to `rep movsb`,
/// whose microcode handles long copies as well as a vector loop.
#[cfg(all(target_arch = "x86_64", not(shm_loom), not(miri)))]
const VECTOR_MAX: usize = 64 << 10;

/// The wide path: a loop of 32-byte AVX loads and stores over the whole
/// 128-byte blocks when the CPU has AVX and the copy is shorter than
/// [`VECTOR_MAX`], then `rep movsb` for what is left (or for everything).
///
/// Why not `rep movsb` alone: on an AMD EPYC (Zen, FSRM) a 4 KiB copy
/// between two L1-resident buffers took 100 ns with `rep movsb` and 37-48 ns
/// with the AVX loop (16 KiB: 330 against 214 ns); a 4 KiB copy out of
/// lines another core had just written, 157-198 ns against 150 ns; at
/// 64 KiB both were even. `memcpy` is not an option (a plain-memory copy
/// is a data race here), and no crate offers a byte-wise atomic vector
/// copy.
///
/// # Safety
/// As for [`rep_movsb`].
#[cfg(all(target_arch = "x86_64", not(shm_loom), not(miri)))]
#[inline]
unsafe fn wide(dst: *mut u8, src: *const u8, len: usize) {
    let blocks = len & !127;
    if blocks != 0 && len < VECTOR_MAX && std::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX (checked above); the first `blocks <=
        // len` bytes of both ranges are valid and do not overlap (caller's
        // contract), and `blocks` is a non-zero multiple of 128.
        unsafe { avx_blocks(dst, src, blocks) };
        let (dst, src) = (dst.wrapping_add(blocks), src.wrapping_add(blocks));
        // SAFETY: the rest of the same ranges.
        unsafe { rep_movsb(dst, src, len - blocks) };
    } else {
        // SAFETY: forwarded (caller's contract).
        unsafe { rep_movsb(dst, src, len) };
    }
}

/// Copies `len` bytes (a non-zero multiple of 128) from `src` to `dst`,
/// 128 bytes per iteration through four `ymm` registers (`vmovdqu`:
/// unaligned loads and stores).
///
/// Not a data race for the reasons given at [`rep_movsb`]: the accesses are
/// inside `asm!` (`asm.rules.mem-same-as-ffi`, `asm.rules.black-box`), and
/// what the block does is what Rust code could have done, a sequence of
/// `Relaxed` byte-wise atomic loads and stores. A 32-byte access is not
/// single-copy atomic as a whole on x86 (the Intel SDM, Vol. 3A 9.1.1,
/// guarantees atomicity only up to 8 aligned bytes; the AVX extension
/// guarantees nothing wider), which byte-wise atomic accesses do not need.
/// Ordering: these are ordinary loads and stores, ordered like every other
/// (x86-TSO: loads with loads, stores with stores, in program order), so
/// a caller's Release store after the copy and Acquire load before it keep
/// their meaning. `asm.rules.reg-not-output`: the four `ymm` registers and
/// `rsi`, `rdi` and `rcx` are declared as clobbered or `inout`; `vzeroupper` at the end avoids the AVX-SSE transition penalty
/// (it zeroes the upper halves of every `ymm` register, which the Rust ABI
/// treats as caller-saved, and the block declares the four it uses;
/// `clobber_abi("C")` declares the rest). `add`/`sub` change the flags, so
/// `preserves_flags` is not claimed.
///
/// # Safety
/// - the CPU supports AVX;
/// - as for [`rep_movsb`], for `len` bytes.
#[cfg(all(target_arch = "x86_64", not(shm_loom), not(miri)))]
#[target_feature(enable = "avx")]
unsafe fn avx_blocks(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: see the function docs.
    unsafe {
        core::arch::asm!(
            "2:",
            "vmovdqu ymm0, [rsi]",
            "vmovdqu ymm1, [rsi + 32]",
            "vmovdqu ymm2, [rsi + 64]",
            "vmovdqu ymm3, [rsi + 96]",
            "vmovdqu [rdi], ymm0",
            "vmovdqu [rdi + 32], ymm1",
            "vmovdqu [rdi + 64], ymm2",
            "vmovdqu [rdi + 96], ymm3",
            "add rsi, 128",
            "add rdi, 128",
            "sub rcx, 128",
            "jnz 2b",
            "vzeroupper",
            inout("rsi") src => _,
            inout("rdi") dst => _,
            inout("rcx") len => _,
            clobber_abi("C"),
            options(nostack),
        );
    }
}

/// Copies `len` bytes from `src` to `dst` with one `rep movsb`.
///
/// # Why this is not a data race
///
/// Memory accessed inside `asm!` is not accessed by Rust code: the
/// compiler sees only the block's interface, and the Rust reference bounds
/// what the block may do by what Rust code (or an FFI call) could have
/// done. The rules relied on, from "Rules for inline assembly":
///
/// - `asm.rules.mem-same-as-ffi`: "The set of memory locations that
///   assembly code is allowed to read and write are the same as those
///   allowed for an FFI function." Both ranges are reachable from pointers
///   passed as input operands, and Rust code could access them.
/// - `asm.rules.black-box`: "the compiler must treat the `asm!` as a black
///   box and only take the interface specification into account, not the
///   instructions themselves." So the compiler cannot assume the shared
///   bytes are stable, nor split, repeat or merge the accesses.
/// - `asm.rules.x86-df`: "On x86, the direction flag (DF in `EFLAGS`) is
///   clear on entry to an asm block and must be clear on exit." `rep
///   movsb` therefore copies forwards, and leaves DF alone.
/// - `asm.rules.reg-not-output`: "Any registers not specified as outputs
///   must have the same value upon exiting the asm block as they had on
///   entry". `rcx`, `rsi` and `rdi` change, so they are `inout` operands;
///   `movs` changes no status flag (`preserves_flags`) and uses no stack
///   (`nostack`).
///
/// The effect the block has is one that Rust code could have had: a
/// sequence of `Relaxed` `AtomicU8` loads from `src` and `AtomicU8` stores
/// to `dst` (or plain ones on the private side), one per byte, in some
/// order. That is P1478's byte-wise atomic memcpy, and it is the argument
/// of the `atomic-maybe-uninit` crate, which performs atomic accesses
/// through inline assembly for the same reason. Racing with another
/// process's writes to the shared side is then racing with atomic
/// accesses: not a data race, only an inconsistent copy.
///
/// # Safety
/// - `src .. src + len` is valid for reads and `dst .. dst + len` for
///   writes, and the two do not overlap;
/// - the shared side of the copy is accessed only atomically by this
///   process and by no racing access of another size (see [`store`]).
#[cfg(all(target_arch = "x86_64", not(shm_loom), not(miri)))]
#[inline]
unsafe fn rep_movsb(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: see the function docs: valid, non-overlapping ranges reached
    // through pointers passed as operands; DF is clear on entry and left
    // clear; every changed register is declared; no flags or stack touched.
    unsafe {
        core::arch::asm!(
            "rep movsb",
            inout("rcx") len => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags),
        );
    }
}

/// The word loop of [`load`] and [`store`]: every target, every length
/// under loom and Miri.
///
/// Uses `core`'s atomics even under `cfg(shm_loom)`: loom's cannot be made
/// from a pointer, and raw shared memory is never loom-modelled (the models
/// use heap words through [`load_words`] / [`store_words`]).
mod words {
    use core::sync::atomic::{AtomicU8, AtomicU64, Ordering}; // atomics-ok: foreign memory, never loom-modelled

    /// See [`super::store`].
    ///
    /// # Safety
    /// As for [`super::store`].
    #[inline]
    pub(super) unsafe fn store(dst: *mut u8, src: &[u8]) {
        // Bytes up to the first 8-aligned address (all of them if
        // `align_offset` cannot tell, which it may: then the copy is
        // byte-wise, still correct).
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
            // - `aligned + i` is 8-aligned (`head` reached alignment, or
            //   `words` is empty) and its 8 bytes lie inside the caller's range;
            // - every access this process makes to them is atomic and none
            //   of another size races with it (caller's contract).
            let cell = unsafe { AtomicU64::from_ptr(aligned.wrapping_add(i)) };
            // Relaxed: published by the caller's Release store.
            cell.store(u64::from_ne_bytes(*word), Ordering::Relaxed);
        }
        // SAFETY: the suffix of the caller's range after the last whole word.
        unsafe { store_bytes(dst.wrapping_add(head + words.len() * 8), tail) };
    }

    /// See [`super::load`].
    ///
    /// # Safety
    /// As for [`super::load`].
    #[inline]
    pub(super) unsafe fn load(src: *const u8, dst: &mut [u8]) {
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
            // SAFETY: as in `store`: 8-aligned, inside the caller's range,
            // only accessed atomically. Only loads are made.
            let cell = unsafe { AtomicU64::from_ptr(aligned.wrapping_add(i)) };
            // Relaxed: ordered after the caller's Acquire load or fence.
            *word = cell.load(Ordering::Relaxed).to_ne_bytes();
        }
        // SAFETY: the suffix of the caller's range after the last whole word.
        unsafe { load_bytes(src.wrapping_add(head + whole * 8), tail) };
    }

    /// Byte-wise atomic stores (the unaligned edges of [`store`], and
    /// [`super::copy_within`] off the wide path).
    ///
    /// # Safety
    /// As for [`super::store`].
    #[inline]
    pub(super) unsafe fn store_bytes(dst: *mut u8, src: &[u8]) {
        for (i, byte) in src.iter().enumerate() {
            // SAFETY: inside the caller's range; bytes need no alignment; atomic only.
            let cell = unsafe { AtomicU8::from_ptr(dst.wrapping_add(i)) };
            // Relaxed: as in `store`.
            cell.store(*byte, Ordering::Relaxed);
        }
    }

    /// Byte-wise atomic loads (the unaligned edges of [`load`], and
    /// [`super::load_bytewise`] and [`super::copy_within`] off the wide path).
    ///
    /// # Safety
    /// As for [`super::load`].
    #[inline]
    pub(super) unsafe fn load_bytes(src: *const u8, dst: &mut [u8]) {
        for (i, byte) in dst.iter_mut().enumerate() {
            // SAFETY: inside the caller's range; bytes need no alignment; only loads.
            let cell = unsafe { AtomicU8::from_ptr(src.wrapping_add(i).cast_mut()) };
            // Relaxed: as in `load`.
            *byte = cell.load(Ordering::Relaxed);
        }
    }
}

#[cfg(all(test, not(shm_loom)))]
mod tests;
