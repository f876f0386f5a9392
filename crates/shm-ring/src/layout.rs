//! The shared layout of a ring memfd: header, counter lines, slots.
//!
//! ```text
//! offset    size  contents                               written by
//! 0         64    Header (magic, version, capacity, ...)   creator, once, before sharing
//! 128       128   ProducerLine { tail, inline_seq, inline } producer
//! 256       128   ConsumerLine { head }                    consumer
//! 384       128   ParkFlag { parked } of the producer      producer
//! 512       128   ParkFlag { parked } of the consumer      consumer
//! 4096      cap * elem_size   slots                        producer (free ones), read by consumer
//! ```
//! `docs/protocol/shm-ring.md` is the normative description.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `Header::magic`.
pub const MAGIC: [u8; 8] = *b"SHMRING\0";
/// `Header::endian`: reads back as this only on a machine of the creator's byte order.
pub const ENDIAN: u32 = 0x0102_0304;
/// The layout version this crate writes and accepts (2: the producer's line
/// carries a copy of the last single element, `ProducerLine::inline`).
pub const VERSION: u32 = 2;
/// Offset of the [`crate::raw::ProducerLine`].
pub const PRODUCER_LINE: usize = 128;
/// Offset of the [`crate::raw::ConsumerLine`].
pub const CONSUMER_LINE: usize = 256;
/// Offset of the producer's [`crate::raw::ParkFlag`].
pub const PRODUCER_PARKED: usize = 384;
/// Offset of the consumer's [`crate::raw::ParkFlag`].
pub const CONSUMER_PARKED: usize = 512;
/// Offset of slot 0 (page-aligned, so slots are aligned for any element up to 4 KiB).
pub const DATA_OFFSET: usize = 4096;
/// Largest accepted element alignment.
pub const MAX_ELEM_ALIGN: usize = 4096;
/// Largest accepted slot area (1 TiB): keeps every offset computation far from overflow.
pub const MAX_DATA_BYTES: u64 = 1 << 40;

/// The ring's parameters, at offset 0 of the memfd. Written once by the creator
/// before the fd is shared; every opener copies it out and validates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`ENDIAN`] in the creator's byte order.
    pub endian: u32,
    /// [`VERSION`]; 0 while the creator is still writing the header.
    pub version: u32,
    /// Number of slots, a power of two.
    pub capacity: u64,
    /// Bytes per slot (`size_of::<T>()`), at least 1.
    pub elem_size: u32,
    /// Alignment of the element type, a power of two up to [`MAX_ELEM_ALIGN`].
    pub elem_align: u32,
    /// Offset of slot 0: [`DATA_OFFSET`].
    pub data_offset: u64,
    /// Size of the memfd: `data_offset + capacity * elem_size`.
    pub total_size: u64,
    /// A user-chosen tag naming the element type (0 if unused); both ends must agree.
    pub tag: u64,
    /// Zero.
    pub reserved: u64,
}

const _: () = {
    assert!(size_of::<Header>() == 64);
    assert!(align_of::<Header>() == 8);
    assert!(core::mem::offset_of!(Header, version) == 12);
    assert!(core::mem::offset_of!(Header, capacity) == 16);
    assert!(core::mem::offset_of!(Header, elem_size) == 24);
    assert!(core::mem::offset_of!(Header, data_offset) == 32);
    assert!(core::mem::offset_of!(Header, total_size) == 40);
    assert!(core::mem::offset_of!(Header, tag) == 48);
};

/// Offset of `Header::version` (stored last, with Release).
pub const VERSION_OFFSET: usize = 12;

/// The element layout a ring carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElemLayout {
    /// Bytes per element.
    pub size: usize,
    /// Alignment of the element type.
    pub align: usize,
    /// User tag naming the element type (0 if unused).
    pub tag: u64,
}

impl ElemLayout {
    /// The layout of `T`, with tag 0.
    pub const fn of<T>() -> ElemLayout {
        ElemLayout {
            size: size_of::<T>(),
            align: align_of::<T>(),
            tag: 0,
        }
    }

    /// The same layout with a user tag (both ends must use the same).
    #[must_use]
    pub const fn with_tag(mut self, tag: u64) -> ElemLayout {
        self.tag = tag;
        self
    }
}

/// Why a header or a requested geometry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// The capacity is zero or not a power of two.
    #[error("capacity {0} is not a power of two")]
    Capacity(u64),
    /// The element size is zero, its alignment is not a power of two or too large.
    #[error("element layout (size {size}, align {align}) is not supported")]
    Element {
        /// Size asked for.
        size: u64,
        /// Alignment asked for.
        align: u64,
    },
    /// The slot area would exceed [`MAX_DATA_BYTES`].
    #[error("capacity {capacity} x {elem_size} bytes is too large")]
    TooLarge {
        /// Slots.
        capacity: u64,
        /// Bytes per slot.
        elem_size: u64,
    },
    /// The magic or byte order is wrong: not a ring, or made on another machine.
    #[error("not an shm-ring memfd (bad magic or byte order)")]
    NotARing,
    /// The header's version is not one we speak (0: creation never finished).
    #[error("ring layout version {found}, this build speaks {VERSION}")]
    Version {
        /// Version found.
        found: u32,
    },
    /// A header field contradicts the file or the other fields.
    #[error("ring header field {field} is {found}, expected {expected}")]
    Field {
        /// Which field.
        field: &'static str,
        /// Value found.
        found: u64,
        /// Value expected.
        expected: u64,
    },
    /// The element layout differs from the one the caller expects.
    #[error(
        "ring carries elements of size {found_size} align {found_align} tag {found_tag:#x}, expected size {size} align {align} tag {tag:#x}"
    )]
    WrongElement {
        /// Size in the header.
        found_size: u64,
        /// Alignment in the header.
        found_align: u64,
        /// Tag in the header.
        found_tag: u64,
        /// Size expected.
        size: u64,
        /// Alignment expected.
        align: u64,
        /// Tag expected.
        tag: u64,
    },
}

/// Size of a memfd holding `capacity` elements of `elem`, after checking the geometry.
pub fn total_size(capacity: u64, elem: ElemLayout) -> Result<u64, LayoutError> {
    if capacity == 0 || !capacity.is_power_of_two() {
        return Err(LayoutError::Capacity(capacity));
    }
    if elem.size == 0 || !elem.align.is_power_of_two() || elem.align > MAX_ELEM_ALIGN {
        return Err(LayoutError::Element {
            size: elem.size as u64,
            align: elem.align as u64,
        });
    }
    let too_large = LayoutError::TooLarge {
        capacity,
        elem_size: elem.size as u64,
    };
    let data = capacity
        .checked_mul(elem.size as u64)
        .ok_or(too_large.clone())?;
    if data > MAX_DATA_BYTES || elem.size > u32::MAX as usize {
        return Err(too_large);
    }
    Ok(DATA_OFFSET as u64 + data)
}

/// The header a creator writes for `capacity` elements of `elem`.
pub fn header_for(capacity: u64, elem: ElemLayout) -> Result<Header, LayoutError> {
    let total = total_size(capacity, elem)?;
    Ok(Header {
        magic: MAGIC,
        endian: ENDIAN,
        version: VERSION,
        capacity,
        elem_size: elem.size as u32,
        elem_align: elem.align as u32,
        data_offset: DATA_OFFSET as u64,
        total_size: total,
        tag: elem.tag,
        reserved: 0,
    })
}

impl Header {
    /// Checks a header copied out of a memfd of `file_size` bytes against what
    /// the opener expects. Never panics, whatever the bytes.
    pub fn validate(&self, file_size: u64, expect: ElemLayout) -> Result<(), LayoutError> {
        if self.magic != MAGIC || self.endian != ENDIAN {
            return Err(LayoutError::NotARing);
        }
        if self.version != VERSION {
            return Err(LayoutError::Version {
                found: self.version,
            });
        }
        let found = ElemLayout {
            size: self.elem_size as usize,
            align: self.elem_align as usize,
            tag: self.tag,
        };
        let total = total_size(self.capacity, found)?;
        let field = |field, found, expected| {
            Err(LayoutError::Field {
                field,
                found,
                expected,
            })
        };
        if self.data_offset != DATA_OFFSET as u64 {
            return field("data_offset", self.data_offset, DATA_OFFSET as u64);
        }
        if self.total_size != total {
            return field("total_size", self.total_size, total);
        }
        if file_size != total {
            return field("file size", file_size, total);
        }
        if found != expect {
            return Err(LayoutError::WrongElement {
                found_size: found.size as u64,
                found_align: found.align as u64,
                found_tag: found.tag,
                size: expect.size as u64,
                align: expect.align as u64,
                tag: expect.tag,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_for_validates_against_itself() {
        let elem = ElemLayout::of::<f64>().with_tag(7);
        let sut = header_for(1024, elem).unwrap();
        sut.validate(sut.total_size, elem).unwrap();
        assert_eq!(sut.total_size, 4096 + 8192);
    }

    #[test]
    fn bad_geometry_is_refused() {
        let elem = ElemLayout::of::<u64>();
        assert!(matches!(header_for(3, elem), Err(LayoutError::Capacity(3))));
        assert!(matches!(header_for(0, elem), Err(LayoutError::Capacity(0))));
        assert!(header_for(1 << 40, elem).is_err());
        let zst = ElemLayout {
            size: 0,
            align: 1,
            tag: 0,
        };
        assert!(header_for(4, zst).is_err());
        let sut = header_for(4, elem).unwrap();
        assert!(matches!(
            sut.validate(sut.total_size + 1, elem),
            Err(LayoutError::Field { .. })
        ));
        assert!(matches!(
            sut.validate(sut.total_size, ElemLayout::of::<u32>()),
            Err(LayoutError::WrongElement { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_header_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 64), size in 0u64..1 << 20) {
            let header = Header::read_from_bytes(&bytes).unwrap();
            let _ = header.validate(size, ElemLayout::of::<u64>());
        }
    }
}
