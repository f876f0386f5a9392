//! The copies of slot data between private buffers and the shared words,
//! through [`shm_sync::copy`].
//!
//! # Safety
//!
//! This crate accesses the data words of a slot (`slot[s].data`) only
//! through [`copy_out`] and [`copy_in`]: `seq` and `len` are separate words
//! outside the data range, and nothing else names the data. So within this
//! process the only accesses to data words that can race with a copy are
//! other copies, which is the contract of `shm_sync::copy::load_words` and
//! `store_words`. It holds even if a peer breaks the hazard protocol and
//! makes a reader and a writer of this process meet in one slot: the copy
//! is then inconsistent, never undefined.
#![allow(unsafe_code)]

use shm_sync::atomic::AtomicU64;

/// Copies the first `out.len()` bytes of a slot's data words `data` into `out`.
///
/// Relaxed loads: the caller orders them after the Acquire load of
/// `published` that named the slot, with the slot's hazard set.
///
/// # Panics
/// If `out` is longer than `data` (`8 * data.len()` bytes): a caller bug.
#[inline]
pub(crate) fn copy_out(data: &[AtomicU64], out: &mut [u8]) {
    // SAFETY: data words race only with other copies (module docs).
    unsafe { shm_sync::copy::load_words(data, out) };
}

/// Copies `src` into a slot's data words `data`, the last word zero-padded.
///
/// Relaxed stores: the caller publishes them with its Release store of
/// `published`.
///
/// # Panics
/// If `src` is longer than `data` (`8 * data.len()` bytes): a caller bug.
#[inline]
pub(crate) fn copy_in(data: &[AtomicU64], src: &[u8]) {
    // SAFETY: data words race only with other copies (module docs).
    unsafe { shm_sync::copy::store_words(data, src) };
}
