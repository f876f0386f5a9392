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

use crate::layout::Layout;

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
///
/// [`LAYOUT`](Shared::SHARED_LAYOUT) is not part of the safety contract: views check
/// size and alignment against the real type, and a wrong fingerprint only
/// makes processes disagree about whether they share a type.
pub unsafe trait Shared: FromBytes + KnownLayout + Sync {
    /// The type's size, alignment and structural fingerprint (see
    /// [`Layout`]): what segments record at creation and check at open.
    const SHARED_LAYOUT: Layout;
}

macro_rules! impl_shared {
    ($($t:ident),*) => {$(
        // SAFETY: an atomic integer is an UnsafeCell around a fixed-size integer:
        // every bit pattern is valid, all its bytes are interior-mutable, no drop glue.
        unsafe impl Shared for atomic::$t {
            const SHARED_LAYOUT: Layout = Layout::tagged::<atomic::$t>(stringify!($t));
        }
    )*};
}
impl_shared!(
    AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicI8, AtomicI16, AtomicI32, AtomicI64
);

// SAFETY: an array has no padding between elements, so each of the four
// properties of `T` holds for `[T; N]`.
unsafe impl<T: Shared, const N: usize> Shared for [T; N] {
    const SHARED_LAYOUT: Layout = Layout::array(T::SHARED_LAYOUT, N);
}

/// The structural [`Layout`](crate::Layout) of a struct, for
/// [`shared_struct!`](crate::shared_struct) and
/// [`plain_struct!`](crate::plain_struct): each field's name, the
/// fingerprint its type gives through `$trait::$konst` and its offset, then
/// the struct's size and alignment, and the tag if one is given. Not part of
/// the API.
#[doc(hidden)]
#[macro_export]
macro_rules! __structural_layout {
    ($name:ident, $trait:ident :: $konst:ident, [$($field:ident : $ty:ty),*], [$($tag:tt)*]) => {
        $crate::Layout::structural::<$name>(
            $crate::layout::Fingerprint::new()
                $(
                    .str(::core::stringify!($field))
                    .u64(<$ty as $crate::$trait>::$konst.id)
                    .u64(::core::mem::offset_of!($name, $field) as u64)
                )*,
            ::core::stringify!($name),
        )
        $( .with_tag($tag) )*
    };
}

/// Declares a `#[repr(C)]` struct whose fields are all [`Shared`], and
/// implements `Shared` (and zerocopy's `FromBytes` + `KnownLayout`, and `Debug`) for it.
///
/// Every field type is checked to be `Shared` at compile time, and the struct
/// is checked to have no drop glue. zerocopy is derived through this crate's
/// re-export ([`shm_segment::zerocopy`](crate::zerocopy)), so the calling crate
/// needs no zerocopy dependency of its own (it must name this crate
/// `shm_segment`, the default). Fields are the real (`core`) atomics: loom's
/// model atomics cannot live in shared memory, so loom models keep their
/// state in heap-backed storage of `shm_sync` atomics instead.
///
/// # Fingerprint
///
/// The struct's [`Shared::SHARED_LAYOUT`] is computed at compile time from its
/// structure: each field's name, type (recursively: a field that is itself a
/// shared struct contributes its own structural fingerprint) and offset, then
/// the size and alignment (see [`Layout`]). Two programs that each declare
/// the same struct, under any name or module, share segments; a renamed,
/// reordered or retyped field makes them refuse each other with
/// [`SegmentError::LayoutMismatch`](crate::SegmentError::LayoutMismatch).
///
/// `#[shared(tag = "...")]` among the struct's attributes mixes a tag of
/// your choosing into the fingerprint, for structurally equal types that mean
/// different things, or to retire a meaning without changing the fields.
///
/// # Examples
/// ```
/// use shm_segment::{Layout, shared_struct};
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
/// shared_struct! {
///     /// The same fields, with a meaning of its own.
///     #[shared(tag = "bytes-sent")]
///     pub struct BytesSent {
///         pub value: AtomicU64,
///         pub writers: [AtomicU32; 2],
///     }
/// }
/// fn assert_shared<T: shm_segment::Shared>() {}
/// assert_shared::<Counter>();
/// assert_ne!(Layout::of::<Counter>(), Layout::of::<BytesSent>());
/// assert_eq!(Layout::of::<Counter>().name(), "Counter");
/// ```
#[macro_export]
macro_rules! shared_struct {
    // Attributes, one at a time: `#[shared(tag = "...")]` is taken as the tag,
    // any other is kept for the struct.
    (@attrs [$($attr:tt)*] [$($tag:tt)*] #[shared(tag = $t:literal)] $($rest:tt)*) => {
        $crate::shared_struct!(@attrs [$($attr)*] [$t] $($rest)*);
    };
    (@attrs [$($attr:tt)*] [$($tag:tt)*] #[$meta:meta] $($rest:tt)*) => {
        $crate::shared_struct!(@attrs [$($attr)* #[$meta]] [$($tag)*] $($rest)*);
    };
    (
        @attrs [$($attr:tt)*] [$($tag:tt)*]
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $($attr)*
        #[repr(C)]
        #[derive(Debug)]
        #[derive($crate::zerocopy::FromBytes, $crate::zerocopy::KnownLayout)]
        #[zerocopy(crate = "::shm_segment::zerocopy")]
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field : $ty ),*
        }

        // SAFETY: `$name` is repr(C) and each field is `Shared` (checked by the
        // const below), so every non-padding byte is inside an UnsafeCell, every
        // bit pattern is valid (FromBytes derive), the layout is fixed, and there
        // is no drop glue (also asserted below).
        #[allow(unsafe_code)]
        unsafe impl $crate::Shared for $name {
            const SHARED_LAYOUT: $crate::Layout = $crate::__structural_layout!(
                $name, Shared::SHARED_LAYOUT, [$($field: $ty),*], [$($tag)*]
            );
        }

        const _: () = {
            const fn field_is_shared<T: $crate::Shared>() {}
            $( field_is_shared::<$ty>(); )*
            assert!(!::core::mem::needs_drop::<$name>(), "shared structs must not have drop glue");
        };
    };
    (@attrs $($bad:tt)*) => {
        ::core::compile_error!(
            "shared_struct! expects `[attributes] [pub] struct Name { field: Type, ... }`"
        );
    };
    ($($input:tt)*) => {
        $crate::shared_struct!(@attrs [] [] $($input)*);
    };
}
