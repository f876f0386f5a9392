//! [`Shared`]: the types that may be viewed as `&T` across processes.
//!
//! # Safety
//!
//! Handing out `&T` into memory another process writes is sound only when the
//! compiler may not assume the bytes are immutable or of a restricted form:
//! every byte that can change must sit inside an `UnsafeCell` (an atomic), and
//! every bit pattern must be a valid `T`. zerocopy's [`FromBytes`] proves the
//! second half; this module's `unsafe` marker asserts the first.
#![allow(unsafe_code)]

// The marker covers the real atomics that live in shared memory.
use core::sync::atomic; // atomics-ok

use zerocopy::{FromBytes, KnownLayout};

/// Types that are sound to share by `&T` between processes.
///
/// Implemented for the fixed-size atomic integers and arrays of `Shared`
/// types; declare your own structs with [`shared_struct!`](crate::shared_struct),
/// which checks every field. `bool`, enums, references, pointers, `usize`
/// (its size is not fixed across processes of different ABIs) and any type
/// with plain, non-atomic fields are excluded: a peer's write to a plain field
/// while we hold `&T` would be undefined behaviour, and a crashed writer can
/// leave any bit pattern behind.
///
/// Plain-data values (no atomics) are shared by copy instead: see
/// [`Region::read`](crate::Region::read) and [`Region::write`](crate::Region::write).
///
/// # Safety
/// Implementors guarantee that:
/// 1. every bit pattern is a valid value (implied by the `FromBytes` bound);
/// 2. every byte of `Self` that is not padding lies inside an `UnsafeCell`,
///    so no `&Self` promises immutability of anything another process may write;
/// 3. `Self` has no drop glue and holds no pointers or references;
/// 4. its layout is fixed (`#[repr(C)]` or primitive), the same in every process.
pub unsafe trait Shared: FromBytes + KnownLayout + Sync {}

macro_rules! impl_shared {
    ($($t:ty),*) => {$(
        // SAFETY: an atomic integer is an UnsafeCell around a fixed-size integer:
        // every bit pattern is valid, all its bytes are interior-mutable, no drop glue.
        unsafe impl Shared for $t {}
    )*};
}
impl_shared!(
    atomic::AtomicU8,
    atomic::AtomicU16,
    atomic::AtomicU32,
    atomic::AtomicU64,
    atomic::AtomicI8,
    atomic::AtomicI16,
    atomic::AtomicI32,
    atomic::AtomicI64
);

// SAFETY: an array has no padding between elements, so each of the four
// properties of `T` holds for `[T; N]`.
unsafe impl<T: Shared, const N: usize> Shared for [T; N] {}

/// Declares a `#[repr(C)]` struct whose fields are all [`Shared`], and
/// implements `Shared` (and zerocopy's `FromBytes` + `KnownLayout`, and `Debug`) for it.
///
/// Every field type is checked to be `Shared` at compile time, and the struct
/// is checked to have no drop glue. The calling crate must depend on `zerocopy`
/// (with its `derive` feature). Fields are the real (`core`) atomics: loom's
/// model atomics cannot live in shared memory, so loom models keep their
/// state in heap-backed storage of `shm_sync` atomics instead.
///
/// # Examples
/// ```
/// use shm_segment::shared_struct;
/// use std::sync::atomic::{AtomicU32, AtomicU64};
///
/// shared_struct! {
///     /// A counter another process can bump.
///     pub struct Counter {
///         /// Total so far.
///         pub value: AtomicU64,
///         /// Bumped by every writer.
///         pub writers: [AtomicU32; 2],
///     }
/// }
/// fn assert_shared<T: shm_segment::Shared>() {}
/// assert_shared::<Counter>();
/// ```
#[macro_export]
macro_rules! shared_struct {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Debug)]
        #[derive(::zerocopy::FromBytes, ::zerocopy::KnownLayout)]
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field : $ty ),*
        }

        // SAFETY: `$name` is repr(C) and each field is `Shared` (checked by the
        // const below), so every non-padding byte is inside an UnsafeCell, every
        // bit pattern is valid (FromBytes derive), the layout is fixed, and there
        // is no drop glue (also asserted below).
        #[allow(unsafe_code)]
        unsafe impl $crate::Shared for $name {}

        const _: () = {
            const fn field_is_shared<T: $crate::Shared>() {}
            $( field_is_shared::<$ty>(); )*
            assert!(!::core::mem::needs_drop::<$name>(), "shared structs must not have drop glue");
        };
    };
}
