//! [`Layout`]: what a segment's payload holds, and the structural
//! [`Fingerprint`] that lets separately built programs agree on it.
//!
//! A payload type is identified by its size, its alignment and a 64-bit
//! fingerprint of its *structure*, computed at compile time:
//!
//! - a leaf (an atomic integer, or a plain-data type given a name with
//!   [`Layout::tagged`]) hashes its name, size and alignment;
//! - an array `[T; N]` hashes `T`'s fingerprint and `N`;
//! - a struct declared with [`shared_struct!`](crate::shared_struct) hashes,
//!   for each field in order, the field's name, its type's fingerprint and its
//!   offset, then the struct's size and alignment. The struct's own name and
//!   module path are *not* part of it: two programs that each declare the same
//!   struct agree, whatever they call it. An optional tag
//!   (`#[shared(tag = "...")]`, [`Layout::with_tag`]) is mixed in on top, to
//!   tell apart structurally equal types that mean different things.
//!
//! Renaming, reordering or retyping a field therefore changes the fingerprint,
//! and an opener that expects another structure is refused with
//! [`SegmentError::LayoutMismatch`](crate::SegmentError::LayoutMismatch),
//! which shows both sides' names, sizes and alignments (the creator's type
//! name is kept in the segment header for that purpose only).
//!
//! The hash is 64-bit FNV-1a over a byte stream in which every string is
//! preceded by its length and every number is 8 little-endian bytes; the exact
//! stream is given in `docs/PROTOCOL.md`.

use core::fmt;
use core::hash::{Hash, Hasher};

/// Bytes of a payload type's name that a [`Layout`] (and the segment header)
/// keeps, for messages.
pub const TYPE_NAME_LEN: usize = 40;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// A 64-bit FNV-1a hash being built at compile time: the structural
/// fingerprint of [`Layout`]s.
///
/// [`shared_struct!`](crate::shared_struct) uses it; hand-written
/// [`Shared`](crate::Shared) implementations can too.
///
/// # Examples
/// ```
/// use shm_segment::Layout;
/// use shm_segment::layout::Fingerprint;
///
/// const ID: Fingerprint = Fingerprint::new().str("x").u64(8);
/// let layout = Layout::structural::<u64>(ID, "Wrapper");
/// assert_eq!(layout.name(), "Wrapper");
/// assert_ne!(layout, Layout::structural::<u64>(Fingerprint::new().str("y").u64(8), "Wrapper"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct Fingerprint(u64);

impl Fingerprint {
    /// The empty hash (the FNV-1a offset basis).
    pub const fn new() -> Fingerprint {
        Fingerprint(FNV_OFFSET)
    }

    const fn raw(self, bytes: &[u8]) -> Fingerprint {
        let mut hash = self.0;
        let mut i = 0;
        while i < bytes.len() {
            hash ^= bytes[i] as u64;
            hash = hash.wrapping_mul(FNV_PRIME);
            i += 1;
        }
        Fingerprint(hash)
    }

    /// Adds a number, as 8 little-endian bytes.
    pub const fn u64(self, value: u64) -> Fingerprint {
        self.raw(&value.to_le_bytes())
    }

    /// Adds a string, preceded by its length (so `"ab", "c"` and `"a", "bc"`
    /// differ).
    pub const fn str(self, s: &str) -> Fingerprint {
        self.u64(s.len() as u64).raw(s.as_bytes())
    }

    /// The fingerprint: never 0, which stands for raw bytes.
    pub const fn finish(self) -> u64 {
        self.0 | 1
    }
}

impl Default for Fingerprint {
    fn default() -> Fingerprint {
        Fingerprint::new()
    }
}

/// A short, possibly truncated, type name kept inline (no allocation, `Copy`,
/// buildable at compile time).
#[derive(Clone, Copy)]
struct TypeName {
    bytes: [u8; TYPE_NAME_LEN],
    len: usize,
}

impl TypeName {
    const EMPTY: TypeName = TypeName {
        bytes: [0; TYPE_NAME_LEN],
        len: 0,
    };

    const fn push(mut self, s: &[u8]) -> TypeName {
        let mut i = 0;
        while i < s.len() && self.len < TYPE_NAME_LEN {
            self.bytes[self.len] = s[i];
            self.len += 1;
            i += 1;
        }
        self
    }

    const fn push_u64(self, mut value: u64) -> TypeName {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        let (_, tail) = digits.split_at(start);
        self.push(tail)
    }

    /// The longest valid UTF-8 prefix (a truncation may have cut a character).
    fn as_str(&self) -> &str {
        let bytes = &self.bytes[..self.len];
        match core::str::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
        }
    }
}

/// What a segment's payload holds: a size, an alignment and a structural
/// fingerprint, plus the type's name for messages.
///
/// Two processes agree on a segment only if their layouts are equal; equality
/// (and hashing) compare `size`, `align` and `id` only, never the name. See the
/// [module docs](self) for what the fingerprint covers.
///
/// # Examples
/// ```
/// use shm_segment::{Layout, shared_struct};
/// use std::sync::atomic::AtomicU64;
///
/// mod writer {
///     shm_segment::shared_struct! { pub struct Message { pub seq: std::sync::atomic::AtomicU64 } }
/// }
/// shared_struct! { struct Message { seq: AtomicU64 } }
/// shared_struct! { struct Renamed { sequence: AtomicU64 } }
///
/// // Same structure, declared twice: the same layout.
/// assert_eq!(Layout::of::<Message>(), Layout::of::<writer::Message>());
/// // A renamed field: another layout, though size and alignment agree.
/// assert_ne!(Layout::of::<Message>(), Layout::of::<Renamed>());
/// assert_eq!(Layout::of::<Renamed>().to_string().split(' ').next(), Some("Renamed"));
/// ```
#[derive(Clone, Copy)]
pub struct Layout {
    /// Payload type size in bytes (0 for raw bytes).
    pub size: u64,
    /// Payload type alignment.
    pub align: u64,
    /// Structural fingerprint of the type (0 for raw bytes).
    pub id: u64,
    /// The type's name, for messages only.
    name: TypeName,
}

impl Layout {
    /// Raw bytes: no type is checked.
    pub const BYTES: Layout = Layout {
        size: 0,
        align: 1,
        id: 0,
        name: TypeName::EMPTY,
    };

    /// The layout of a [`Shared`](crate::Shared) type: its structural fingerprint.
    pub const fn of<T: crate::Shared>() -> Layout {
        T::SHARED_LAYOUT
    }

    /// The layout of `T` identified by a name of your choosing rather than
    /// by its structure: for plain-data payloads (copied with
    /// [`Region::read`](crate::Region::read)) and for the leaves of
    /// structural fingerprints (the atomics are `tagged::<AtomicU64>("AtomicU64")`
    /// and so on). Every program sharing the payload must use the same name.
    pub const fn tagged<T>(name: &str) -> Layout {
        let size = size_of::<T>() as u64;
        let align = align_of::<T>() as u64;
        Layout {
            size,
            align,
            id: Fingerprint::new()
                .str("leaf")
                .str(name)
                .u64(size)
                .u64(align)
                .finish(),
            name: TypeName::EMPTY.push(name.as_bytes()),
        }
    }

    /// The layout of a struct `T` whose fields were hashed into `fields`
    /// (name, field type's `id`, offset, for each field in order), named
    /// `name` in messages. [`shared_struct!`](crate::shared_struct) calls this.
    pub const fn structural<T>(fields: Fingerprint, name: &str) -> Layout {
        let size = size_of::<T>() as u64;
        let align = align_of::<T>() as u64;
        Layout {
            size,
            align,
            id: fields.str("struct").u64(size).u64(align).finish(),
            name: TypeName::EMPTY.push(name.as_bytes()),
        }
    }

    /// The layout of `[E; n]` for an element layout `elem`.
    pub const fn array(elem: Layout, n: usize) -> Layout {
        let name = TypeName::EMPTY
            .push(b"[")
            .push(elem.name.bytes.split_at(elem.name.len).0)
            .push(b"; ")
            .push_u64(n as u64)
            .push(b"]");
        Layout {
            size: elem.size.wrapping_mul(n as u64),
            align: elem.align,
            id: Fingerprint::new()
                .str("array")
                .u64(elem.id)
                .u64(n as u64)
                .finish(),
            name,
        }
    }

    /// This layout with `tag` mixed into its fingerprint: for structurally
    /// equal types that must not be mistaken for each other (units, versions
    /// of a meaning). The name is kept.
    #[must_use]
    pub const fn with_tag(mut self, tag: &str) -> Layout {
        self.id = Fingerprint::new().u64(self.id).str("tag").str(tag).finish();
        self
    }

    /// The type's name as recorded (possibly truncated to
    /// [`TYPE_NAME_LEN`] bytes; empty for raw bytes or when unknown).
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// The name as stored in the segment header: zero-padded bytes.
    pub(crate) fn name_bytes(&self) -> [u8; TYPE_NAME_LEN] {
        self.name.bytes
    }

    /// A layout read from a header, with the name bytes found there.
    pub(crate) fn from_header(size: u64, align: u64, id: u64, name: [u8; TYPE_NAME_LEN]) -> Layout {
        let len = name.iter().position(|&b| b == 0).unwrap_or(TYPE_NAME_LEN);
        Layout {
            size,
            align,
            id,
            name: TypeName { bytes: name, len },
        }
    }
}

impl PartialEq for Layout {
    fn eq(&self, other: &Layout) -> bool {
        (self.size, self.align, self.id) == (other.size, other.align, other.id)
    }
}

impl Eq for Layout {}

impl Hash for Layout {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.size, self.align, self.id).hash(state);
    }
}

impl fmt::Debug for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layout")
            .field("name", &self.name())
            .field("size", &self.size)
            .field("align", &self.align)
            .field("id", &format_args!("{:#018x}", self.id))
            .finish()
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Layout::BYTES {
            return f.write_str("raw bytes");
        }
        let name = match self.name() {
            "" => "a type",
            name => name,
        };
        write!(
            f,
            "{name} (size {}, align {}, fingerprint {:#018x})",
            self.size, self.align, self.id
        )
    }
}

/// Why two layouts differ, in words, for [`SegmentError::LayoutMismatch`](crate::SegmentError::LayoutMismatch).
pub(crate) fn mismatch_hint(expected: &Layout, found: &Layout) -> &'static str {
    if *found == Layout::BYTES {
        "it was created as raw bytes"
    } else if *expected == Layout::BYTES {
        "raw bytes were asked for"
    } else if (expected.size, expected.align) != (found.size, found.align) {
        "the types differ in size or alignment"
    } else {
        "same size and alignment, but the fields' names, order or types (or the tags) differ"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_strings_are_length_prefixed() {
        let ab_c = Fingerprint::new().str("ab").str("c").finish();
        let a_bc = Fingerprint::new().str("a").str("bc").finish();
        assert_ne!(ab_c, a_bc);
    }

    #[test]
    fn fingerprint_matches_fnv1a_reference() {
        // FNV-1a 64 of the 8 bytes of 1u64 LE, then `| 1`.
        let mut h = FNV_OFFSET;
        for b in 1u64.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(FNV_PRIME);
        }
        assert_eq!(Fingerprint::new().u64(1).finish(), h | 1);
    }

    #[test]
    fn array_names_and_sizes() {
        let elem = Layout::tagged::<u32>("AtomicU32");
        let sut = Layout::array(elem, 12);
        assert_eq!(sut.name(), "[AtomicU32; 12]");
        assert_eq!(sut.size, 48);
        assert_ne!(sut, Layout::array(elem, 11));
    }

    #[test]
    fn long_names_are_truncated_on_a_char_boundary() {
        let name = "é".repeat(30);
        let sut = Layout::tagged::<u8>(&name);
        assert_eq!(sut.name(), "é".repeat(TYPE_NAME_LEN / 2));
        let odd = format!("x{name}");
        assert_eq!(
            Layout::tagged::<u8>(&odd).name(),
            format!("x{}", "é".repeat(TYPE_NAME_LEN / 2 - 1))
        );
    }

    #[test]
    fn struct_fingerprint_follows_the_documented_stream() {
        use core::sync::atomic::{AtomicU32, AtomicU64}; // atomics-ok: fields of a layout under test
        crate::shared_struct! { struct Pair { a: AtomicU32, b: [AtomicU64; 2] } }
        // docs/PROTOCOL.md, "Type fingerprint", written out by hand.
        fn fnv(stream: &[Vec<u8>]) -> u64 {
            let mut h = FNV_OFFSET;
            for b in stream.concat() {
                h ^= u64::from(b);
                h = h.wrapping_mul(FNV_PRIME);
            }
            h | 1
        }
        let num = |v: u64| v.to_le_bytes().to_vec();
        let string = |s: &str| [num(s.len() as u64), s.as_bytes().to_vec()].concat();
        let leaf =
            |name: &str, size: u64| fnv(&[string("leaf"), string(name), num(size), num(size)]);
        let array = fnv(&[string("array"), num(leaf("AtomicU64", 8)), num(2)]);
        let pair = fnv(&[
            string("a"),
            num(leaf("AtomicU32", 4)),
            num(0),
            string("b"),
            num(array),
            num(8),
            string("struct"),
            num(24),
            num(8),
        ]);
        let sut = Layout::of::<Pair>();
        assert_eq!(
            (sut.id, sut.size, sut.align, sut.name()),
            (pair, 24, 8, "Pair")
        );
        let tagged = fnv(&[num(pair), string("tag"), string("v2")]);
        assert_eq!(sut.with_tag("v2").id, tagged);
    }

    #[test]
    fn names_do_not_take_part_in_equality() {
        let a = Layout::structural::<u64>(Fingerprint::new(), "A");
        let b = Layout::structural::<u64>(Fingerprint::new(), "B");
        assert_eq!(a, b);
        assert_ne!(a.with_tag("t"), b);
    }
}
