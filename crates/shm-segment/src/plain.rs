//! [`Plain`]: plain-data values with a structural [`Layout`], the copied
//! counterpart of [`Shared`](crate::Shared).
//!
//! A [`Shared`](crate::Shared) type is viewed in place (`&T`), so every byte
//! of it is atomic. A `Plain` type is never viewed in place: its values are
//! copied in and out of shared memory (a mailbox's slots,
//! [`Region::read`](crate::Region::read)), so its fields are ordinary
//! integers and floats. Both carry the same kind of structural fingerprint,
//! so two programs that each declare the same plain struct agree on it.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::layout::Layout;

/// Plain-data types whose [`Layout`] is structural: values that are copied
/// between processes and recognised by their structure, not by their Rust
/// name.
///
/// Implemented for the fixed-size integers, `f32`, `f64` and arrays of
/// `Plain` types; declare your own structs with
/// [`plain_struct!`](crate::plain_struct), which fingerprints every field.
/// `usize`/`isize` are excluded (their size is not fixed across processes of
/// different ABIs), and so are `bool`, enums and anything with padding, which
/// zerocopy's bounds already refuse.
///
/// The trait is safe to implement: zerocopy's bounds make copying sound, and
/// [`PLAIN_LAYOUT`](Plain::PLAIN_LAYOUT) only decides which peers a value is
/// exchanged with. A hand-written implementation should follow the
/// fingerprint rules of [`Layout`] (or use [`Layout::tagged`] with a name of
/// its own).
///
/// # Examples
/// ```
/// use shm_segment::{Layout, Plain};
///
/// assert_eq!(u64::PLAIN_LAYOUT, Layout::tagged::<u64>("u64"));
/// assert_eq!(<[u32; 4]>::PLAIN_LAYOUT.name(), "[u32; 4]");
/// assert_ne!(u64::PLAIN_LAYOUT, i64::PLAIN_LAYOUT);
/// ```
#[doc(alias = "plain data")]
pub trait Plain: FromBytes + IntoBytes + Immutable + KnownLayout {
    /// The type's size, alignment and structural fingerprint.
    const PLAIN_LAYOUT: Layout;
}

macro_rules! impl_plain {
    ($($t:ident),*) => {$(
        impl Plain for $t {
            const PLAIN_LAYOUT: Layout = Layout::tagged::<$t>(stringify!($t));
        }
    )*};
}
impl_plain!(u8, u16, u32, u64, i8, i16, i32, i64, f32, f64);

impl<T: Plain, const N: usize> Plain for [T; N] {
    const PLAIN_LAYOUT: Layout = Layout::array(T::PLAIN_LAYOUT, N);
}

/// Declares a `#[repr(C)]` struct of [`Plain`] fields, and implements `Plain`
/// (and zerocopy's `FromBytes`, `IntoBytes`, `Immutable`, `KnownLayout`, and
/// `Clone`, `Copy`, `Debug`) for it.
///
/// The plain-data counterpart of [`shared_struct!`](crate::shared_struct),
/// with the same fingerprint: each field's name, its type's fingerprint
/// (recursively, for a field that is itself a plain struct) and offset, then
/// the struct's size and alignment; the struct's own name and module take no
/// part. Two programs that each declare the same struct agree; a renamed,
/// reordered or retyped field gives another fingerprint. A struct with padding
/// does not compile (zerocopy's `IntoBytes`): padding bytes cannot be copied.
///
/// `#[plain(tag = "...")]` among the struct's attributes mixes a tag of your
/// choosing into the fingerprint, for structurally equal types that mean
/// different things. zerocopy is derived through this crate's re-export, so
/// the calling crate needs no zerocopy dependency (it must name this crate
/// `shm_segment`, the default).
///
/// # Examples
/// ```
/// use shm_segment::{Plain, plain_struct};
///
/// plain_struct! {
///     /// A position, as one program declares it.
///     #[derive(PartialEq)]
///     pub struct Position { pub x: f64, pub y: f64, pub id: u32, pub flags: u32 }
/// }
/// mod other_program {
///     shm_segment::plain_struct! {
///         /// The same fields, declared again elsewhere.
///         pub struct Pos { pub x: f64, pub y: f64, pub id: u32, pub flags: u32 }
///     }
/// }
/// plain_struct! {
///     /// `flags` renamed.
///     pub struct Renamed { pub x: f64, pub y: f64, pub id: u32, pub bits: u32 }
/// }
/// assert_eq!(Position::PLAIN_LAYOUT, other_program::Pos::PLAIN_LAYOUT);
/// assert_ne!(Position::PLAIN_LAYOUT, Renamed::PLAIN_LAYOUT);
/// assert_eq!(Position::PLAIN_LAYOUT.name(), "Position");
/// ```
///
/// Padding is refused at compile time:
/// ```compile_fail
/// shm_segment::plain_struct! { struct Padded { a: u8, b: u64 } }
/// ```
#[macro_export]
macro_rules! plain_struct {
    // Attributes, one at a time: `#[plain(tag = "...")]` is taken as the tag,
    // any other is kept for the struct.
    (@attrs [$($attr:tt)*] [$($tag:tt)*] #[plain(tag = $t:literal)] $($rest:tt)*) => {
        $crate::plain_struct!(@attrs [$($attr)*] [$t] $($rest)*);
    };
    (@attrs [$($attr:tt)*] [$($tag:tt)*] #[$meta:meta] $($rest:tt)*) => {
        $crate::plain_struct!(@attrs [$($attr)* #[$meta]] [$($tag)*] $($rest)*);
    };
    (
        @attrs [$($attr:tt)*] [$($tag:tt)*]
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $($attr)*
        #[repr(C)]
        #[derive(Clone, Copy, Debug)]
        #[derive(
            $crate::zerocopy::FromBytes,
            $crate::zerocopy::IntoBytes,
            $crate::zerocopy::Immutable,
            $crate::zerocopy::KnownLayout
        )]
        #[zerocopy(crate = "::shm_segment::zerocopy")]
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field : $ty ),*
        }

        impl $crate::Plain for $name {
            const PLAIN_LAYOUT: $crate::Layout = $crate::__structural_layout!(
                $name, Plain::PLAIN_LAYOUT, [$($field: $ty),*], [$($tag)*]
            );
        }
    };
    (@attrs $($bad:tt)*) => {
        ::core::compile_error!(
            "plain_struct! expects `[attributes] [pub] struct Name { field: Type, ... }`"
        );
    };
    ($($input:tt)*) => {
        $crate::plain_struct!(@attrs [] [] $($input)*);
    };
}

#[cfg(test)]
mod tests {
    use crate::layout::Fingerprint;
    use crate::{Layout, Plain};

    crate::plain_struct! { struct Inner { a: u32, b: [u16; 2] } }
    crate::plain_struct! { struct Outer { inner: Inner, c: u64 } }
    crate::plain_struct! { #[plain(tag = "v2")] struct Tagged { inner: Inner, c: u64 } }

    #[test]
    fn plain_struct_fingerprint_follows_the_shared_struct_stream() {
        let inner = Layout::structural::<Inner>(
            Fingerprint::new()
                .str("a")
                .u64(Layout::tagged::<u32>("u32").id)
                .u64(0)
                .str("b")
                .u64(Layout::array(Layout::tagged::<u16>("u16"), 2).id)
                .u64(4),
            "Inner",
        );
        assert_eq!(Inner::PLAIN_LAYOUT, inner);
        let outer = Layout::structural::<Outer>(
            Fingerprint::new()
                .str("inner")
                .u64(inner.id)
                .u64(0)
                .str("c")
                .u64(Layout::tagged::<u64>("u64").id)
                .u64(8),
            "Outer",
        );
        assert_eq!(Outer::PLAIN_LAYOUT, outer);
        assert_eq!((outer.size, outer.align), (16, 8));
        assert_eq!(Tagged::PLAIN_LAYOUT, outer.with_tag("v2"));
    }
}
