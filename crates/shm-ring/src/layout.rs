//! The shared layout of a ring memfd: an `shm-segment` segment whose payload
//! starts with the ring's config block, then the counter lines, then the slots.
//!
//! ```text
//! file    payload  size            contents                               written by
//! 0       -        128             segment header (shm_segment::header)    creator, state last (Release)
//! 4096    0        128             RingConfig: geometry and offsets        creator, before publishing
//! 4224    128      128             ProducerLine { tail, inline_seq, inline } producer
//! 4352    256      128             ConsumerLine { head }                   consumer
//! 4480    384      128             ParkFlag { parked } of the producer      producer
//! 4608    512      128             ParkFlag { parked } of the consumer      consumer
//! 8192    4096     cap * elem_size slots                                  producer (free ones), read by consumer
//! ```
//! Offsets in [`RingConfig`] and the constants below are payload offsets
//! (add [`PAYLOAD_OFFSET`] for the file offset), except the claim bytes,
//! which are file offsets (they are `fcntl` lock ranges, see `claim.rs`).
//! `docs/protocol/shm-ring.md` is the normative description.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `RingConfig::magic`: `b"OLRING\0\0"` read as a little-endian word.
pub const MAGIC: u64 = u64::from_le_bytes(*b"OLRING\0\0");
/// The layout version this crate writes and accepts. 3: the ring is an
/// `shm-segment` segment with a config block (2 had its own `SHMRING` header
/// at offset 0; 1 had no inline copy in the producer's line).
pub const VERSION: u64 = 3;
/// The first eight bytes of a ring memfd of layout version 1 or 2, which
/// had a header of its own (`magic`, then `endian: u32`, `version: u32`).
pub const LEGACY_MAGIC: [u8; 8] = *b"SHMRING\0";
/// File offset of the segment payload (one page after the segment header).
pub const PAYLOAD_OFFSET: usize = shm_segment::header::DATA_OFFSET;
/// Payload offset of the [`RingConfig`].
pub const CONFIG: usize = 0;
/// Payload offset of the [`crate::raw::ProducerLine`].
pub const PRODUCER_LINE: usize = 128;
/// Payload offset of the [`crate::raw::ConsumerLine`].
pub const CONSUMER_LINE: usize = 256;
/// Payload offset of the producer's [`crate::raw::ParkFlag`].
pub const PRODUCER_PARKED: usize = 384;
/// Payload offset of the consumer's [`crate::raw::ParkFlag`].
pub const CONSUMER_PARKED: usize = 512;
/// Payload offset of slot 0 (page-aligned, so slots are aligned for any element up to 4 KiB).
pub const SLOTS: usize = 4096;
/// File offset of the byte whose `fcntl` lock is the producer's claim: the
/// first byte of the producer's line.
pub const PRODUCER_CLAIM: u64 = (PAYLOAD_OFFSET + PRODUCER_LINE) as u64;
/// File offset of the byte whose `fcntl` lock is the consumer's claim: the
/// first byte of the consumer's line.
pub const CONSUMER_CLAIM: u64 = (PAYLOAD_OFFSET + CONSUMER_LINE) as u64;
/// Largest accepted element alignment.
pub const MAX_ELEM_ALIGN: usize = 4096;
/// Largest accepted slot area (1 TiB): keeps every offset computation far from overflow.
pub const MAX_DATA_BYTES: u64 = 1 << 40;

/// The ring's geometry, at the start of the segment payload. Written once by
/// the creator before the segment is published; every opener copies it out
/// (word-atomically, through `shm_segment::Region`) and validates it.
///
/// The offsets are fixed by [`VERSION`]; they are recorded so that a reader
/// of another build reports which one disagrees instead of misreading.
///
/// # Examples
/// The block [`config_for`] computes, and the one a created ring carries
/// (read out of its memfd as an opener does):
/// ```
/// use shm_ring::layout::{self, RingConfig};
/// use shm_ring::{ElemLayout, RingFds};
/// use shm_segment::Segment;
///
/// let elem = ElemLayout::of::<u64>();
/// let config = layout::config_for(layout::round_capacity(1000)?, elem)?;
/// assert_eq!((config.magic, config.version), (layout::MAGIC, layout::VERSION));
/// assert_eq!((config.capacity, config.elem_size, config.slots_len), (1024, 8, 1024 * 8));
/// assert_eq!(size_of::<RingConfig>(), 128);
///
/// let ring = RingFds::create("doc", 1000, elem)?;
/// let segment = Segment::adopt(ring.memfd.try_clone()?).open()?;
/// let found: RingConfig = segment.payload().read(layout::CONFIG)?;
/// assert_eq!(found, config);
/// found.validate(segment.payload().len() as u64, elem)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RingConfig {
    /// [`MAGIC`].
    pub magic: u64,
    /// [`VERSION`].
    pub version: u64,
    /// Number of slots, a power of two.
    pub capacity: u64,
    /// Bytes per slot (`size_of::<T>()`), at least 1.
    pub elem_size: u64,
    /// Alignment of the element type, a power of two up to [`MAX_ELEM_ALIGN`].
    pub elem_align: u64,
    /// A user-chosen tag naming the element type (0 if unused); both ends must agree.
    pub tag: u64,
    /// [`PRODUCER_LINE`].
    pub producer_line: u64,
    /// [`CONSUMER_LINE`].
    pub consumer_line: u64,
    /// [`PRODUCER_PARKED`].
    pub producer_parked: u64,
    /// [`CONSUMER_PARKED`].
    pub consumer_parked: u64,
    /// [`PRODUCER_CLAIM`] (a file offset).
    pub producer_claim: u64,
    /// [`CONSUMER_CLAIM`] (a file offset).
    pub consumer_claim: u64,
    /// [`SLOTS`].
    pub slots: u64,
    /// `capacity * elem_size`.
    pub slots_len: u64,
    /// Zero.
    pub reserved: [u64; 2],
}

const _: () = {
    assert!(size_of::<RingConfig>() == 128);
    assert!(align_of::<RingConfig>() == 8);
    assert!(core::mem::offset_of!(RingConfig, version) == 8);
    assert!(core::mem::offset_of!(RingConfig, capacity) == 16);
    assert!(core::mem::offset_of!(RingConfig, tag) == 40);
    assert!(core::mem::offset_of!(RingConfig, producer_line) == 48);
    assert!(core::mem::offset_of!(RingConfig, producer_claim) == 80);
    assert!(core::mem::offset_of!(RingConfig, slots) == 96);
    assert!(core::mem::offset_of!(RingConfig, slots_len) == 104);
    assert!(CONFIG + size_of::<RingConfig>() <= PRODUCER_LINE);
    assert!(PAYLOAD_OFFSET == 4096 && SLOTS.is_multiple_of(MAX_ELEM_ALIGN));
};

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

/// Why a config block or a requested geometry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// The capacity recorded in a config block (or given to [`config_for`])
    /// is zero or not a power of two. Capacities asked of
    /// [`RingFds::create`](crate::RingFds::create) and
    /// [`channel`](crate::channel) are rounded up instead ([`round_capacity`]).
    #[error("capacity {0} is not a power of two")]
    Capacity(u64),
    /// A ring of zero slots was asked for.
    #[error("capacity 0: a ring needs at least one slot")]
    ZeroCapacity,
    /// The capacity asked for has no power of two at or above it that a
    /// 64-bit counter can hold (it exceeds 2^63).
    #[error("capacity {requested} cannot be rounded up to a power of two (at most 2^63)")]
    CapacityOverflow {
        /// The capacity asked for.
        requested: u64,
    },
    /// The element size is zero, its alignment is not a power of two or too large.
    #[error("element layout (size {size}, align {align}) is not supported")]
    Element {
        /// Size asked for.
        size: u64,
        /// Alignment asked for.
        align: u64,
    },
    /// The slot area would exceed [`MAX_DATA_BYTES`].
    #[error("capacity {capacity} x {elem_size} bytes is too large (at most 2^40 bytes of slots)")]
    TooLarge {
        /// Slots.
        capacity: u64,
        /// Bytes per slot.
        elem_size: u64,
    },
    /// The memfd holds a ring of layout version 1 or 2, which had a header of
    /// its own at offset 0 instead of a segment header and a config block.
    #[error(
        "the memfd holds a ring of layout version {found} (its own SHMRING header), this build speaks layout version {VERSION} (an shm-segment segment): both ends must run the same shm-ring layout"
    )]
    Legacy {
        /// The version in the old header.
        found: u32,
    },
    /// The segment payload does not start with a ring config block.
    #[error("not an shm-ring memfd: the segment payload does not start with a ring config block")]
    NotARing,
    /// The config block's version is not one we speak.
    #[error("ring layout version {found}, this build speaks {VERSION}")]
    Version {
        /// Version found.
        found: u64,
    },
    /// A config field contradicts this layout version, the file or the other fields.
    #[error("ring config field {field} is {found}, expected {expected}")]
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
        /// Size in the config block.
        found_size: u64,
        /// Alignment in the config block.
        found_align: u64,
        /// Tag in the config block.
        found_tag: u64,
        /// Size expected.
        size: u64,
        /// Alignment expected.
        align: u64,
        /// Tag expected.
        tag: u64,
    },
}

/// The capacity a ring gets when `requested` slots are asked for: the
/// smallest power of two at or above it (slot indices are `counter &
/// (capacity - 1)`, so the ring needs a power of two).
///
/// # Errors
/// [`LayoutError::ZeroCapacity`] for 0, [`LayoutError::CapacityOverflow`]
/// above 2^63. Whether the rounded ring fits is checked on creation
/// ([`LayoutError::TooLarge`]).
///
/// # Examples
/// ```
/// use shm_ring::layout::{round_capacity, LayoutError};
/// assert_eq!(round_capacity(1000)?, 1024);
/// assert_eq!(round_capacity(1024)?, 1024);
/// assert_eq!(round_capacity(0), Err(LayoutError::ZeroCapacity));
/// # Ok::<(), LayoutError>(())
/// ```
pub fn round_capacity(requested: u64) -> Result<u64, LayoutError> {
    if requested == 0 {
        return Err(LayoutError::ZeroCapacity);
    }
    requested
        .checked_next_power_of_two()
        .ok_or(LayoutError::CapacityOverflow { requested })
}

/// Bytes of slots for `capacity` elements of `elem`, after checking the geometry.
fn slots_len(capacity: u64, elem: ElemLayout) -> Result<u64, LayoutError> {
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
    if data > MAX_DATA_BYTES {
        return Err(too_large);
    }
    Ok(data)
}

/// Size of the segment payload for `capacity` elements of `elem`: config
/// block and lines (one page), then the slots.
pub fn payload_size(capacity: u64, elem: ElemLayout) -> Result<u64, LayoutError> {
    Ok(SLOTS as u64 + slots_len(capacity, elem)?)
}

/// Size of the whole memfd: the segment header page and the payload.
pub fn total_size(capacity: u64, elem: ElemLayout) -> Result<u64, LayoutError> {
    Ok(PAYLOAD_OFFSET as u64 + payload_size(capacity, elem)?)
}

/// The config block a creator writes for `capacity` elements of `elem`.
pub fn config_for(capacity: u64, elem: ElemLayout) -> Result<RingConfig, LayoutError> {
    Ok(RingConfig {
        magic: MAGIC,
        version: VERSION,
        capacity,
        elem_size: elem.size as u64,
        elem_align: elem.align as u64,
        tag: elem.tag,
        producer_line: PRODUCER_LINE as u64,
        consumer_line: CONSUMER_LINE as u64,
        producer_parked: PRODUCER_PARKED as u64,
        consumer_parked: CONSUMER_PARKED as u64,
        producer_claim: PRODUCER_CLAIM,
        consumer_claim: CONSUMER_CLAIM,
        slots: SLOTS as u64,
        slots_len: slots_len(capacity, elem)?,
        reserved: [0; 2],
    })
}

impl RingConfig {
    /// Checks a config block copied out of a segment payload of `payload_len`
    /// bytes against this layout version and what the opener expects. Never
    /// panics, whatever the bytes.
    pub fn validate(&self, payload_len: u64, expect: ElemLayout) -> Result<(), LayoutError> {
        if self.magic != MAGIC {
            return Err(LayoutError::NotARing);
        }
        if self.version != VERSION {
            return Err(LayoutError::Version {
                found: self.version,
            });
        }
        let found = ElemLayout {
            size: usize::try_from(self.elem_size).unwrap_or(usize::MAX),
            align: usize::try_from(self.elem_align).unwrap_or(usize::MAX),
            tag: self.tag,
        };
        let want = config_for(self.capacity, found)?;
        for (field, found, expected) in [
            ("producer_line", self.producer_line, want.producer_line),
            ("consumer_line", self.consumer_line, want.consumer_line),
            (
                "producer_parked",
                self.producer_parked,
                want.producer_parked,
            ),
            (
                "consumer_parked",
                self.consumer_parked,
                want.consumer_parked,
            ),
            ("producer_claim", self.producer_claim, want.producer_claim),
            ("consumer_claim", self.consumer_claim, want.consumer_claim),
            ("slots", self.slots, want.slots),
            ("slots_len", self.slots_len, want.slots_len),
            ("payload size", payload_len, want.slots + want.slots_len),
        ] {
            if found != expected {
                return Err(LayoutError::Field {
                    field,
                    found,
                    expected,
                });
            }
        }
        if found != expect {
            return Err(LayoutError::WrongElement {
                found_size: self.elem_size,
                found_align: self.elem_align,
                found_tag: found.tag,
                size: expect.size as u64,
                align: expect.align as u64,
                tag: expect.tag,
            });
        }
        Ok(())
    }
}

/// Recognises the first bytes of a ring memfd of layout version 1 or 2 (its
/// own header: [`LEGACY_MAGIC`], `endian: u32`, `version: u32`), so that an
/// opener can say so instead of "not a segment".
pub fn legacy_version(first: &[u8; 16]) -> Option<u32> {
    let (magic, rest) = first.split_first_chunk::<8>()?;
    let (_endian, rest) = rest.split_first_chunk::<4>()?;
    let version = rest.first_chunk::<4>()?;
    (*magic == LEGACY_MAGIC).then(|| u32::from_ne_bytes(*version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_for_validates_against_itself() {
        let elem = ElemLayout::of::<f64>().with_tag(7);
        let sut = config_for(1024, elem).unwrap();
        let payload = payload_size(1024, elem).unwrap();
        sut.validate(payload, elem).unwrap();
        assert_eq!(payload, 4096 + 8192);
        assert_eq!(total_size(1024, elem).unwrap(), 4096 + 4096 + 8192);
    }

    #[test]
    fn bad_geometry_is_refused() {
        let elem = ElemLayout::of::<u64>();
        assert!(matches!(config_for(3, elem), Err(LayoutError::Capacity(3))));
        assert!(matches!(config_for(0, elem), Err(LayoutError::Capacity(0))));
        assert!(config_for(1 << 40, elem).is_err());
        let zst = ElemLayout {
            size: 0,
            align: 1,
            tag: 0,
        };
        assert!(config_for(4, zst).is_err());
        let sut = config_for(4, elem).unwrap();
        let payload = payload_size(4, elem).unwrap();
        assert!(matches!(
            sut.validate(payload + 1, elem),
            Err(LayoutError::Field {
                field: "payload size",
                ..
            })
        ));
        assert!(matches!(
            sut.validate(payload, ElemLayout::of::<u32>()),
            Err(LayoutError::WrongElement { .. })
        ));
    }

    type Edit = fn(&mut RingConfig);

    #[test]
    fn every_recorded_offset_is_checked() {
        let elem = ElemLayout::of::<u64>();
        let good = config_for(8, elem).unwrap();
        let payload = payload_size(8, elem).unwrap();
        let cases: [(&str, Edit); 8] = [
            ("producer_line", |c| c.producer_line += 8),
            ("consumer_line", |c| c.consumer_line = 0),
            ("producer_parked", |c| c.producer_parked = 1),
            ("consumer_parked", |c| c.consumer_parked = 4096),
            ("producer_claim", |c| c.producer_claim = 0),
            ("consumer_claim", |c| c.consumer_claim = 1),
            ("slots", |c| c.slots = 8192),
            ("slots_len", |c| c.slots_len = 8),
        ];
        for (name, break_it) in cases {
            let mut sut = good;
            break_it(&mut sut);
            match sut.validate(payload, elem) {
                Err(LayoutError::Field { field, .. }) => assert_eq!(field, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        let mut sut = good;
        sut.magic = u64::from_le_bytes(*b"OLMBOX\0\x01");
        assert_eq!(sut.validate(payload, elem), Err(LayoutError::NotARing));
        let mut sut = good;
        sut.version = 2;
        assert_eq!(
            sut.validate(payload, elem),
            Err(LayoutError::Version { found: 2 })
        );
    }

    #[test]
    fn legacy_headers_are_recognised() {
        let mut first = [0u8; 16];
        first[..8].copy_from_slice(b"SHMRING\0");
        first[8..12].copy_from_slice(&0x0102_0304u32.to_ne_bytes());
        first[12..].copy_from_slice(&2u32.to_ne_bytes());
        assert_eq!(legacy_version(&first), Some(2));
        first[0] = b'O';
        assert_eq!(legacy_version(&first), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_config_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u64>(), 16), size in 0u64..1 << 20) {
            let config = RingConfig::read_from_bytes(bytes.as_bytes()).unwrap();
            let _ = config.validate(size, ElemLayout::of::<u64>());
        }
    }
}
