//! The mailbox's shared layout: an array of 64-bit words (see `docs/protocol/shm-mailbox.md`).
//!
//! | words | what | written by |
//! |---|---|---|
//! | 0..16 | config: magic, version, readers `N`, slots `S`, data words per slot `W` | creator, once |
//! | 5 | payload type fingerprint (`shm_segment::Layout::id`), 0 = untyped | first typed handle, once (compare-and-swap) |
//! | 6, 7..12 | the bound type's size, and its name (40 bytes): for messages only | the handle that bound it, right after |
//! | 16 | `published`: `seq << 16 \| slot`, 0 = nothing yet | writer |
//! | 24 (low 32 bits) | `notify`: futex word, bumped after each publish | writer |
//! | 25 | `waiters`: readers blocked on `notify` | readers |
//! | 32 + 16 r | reader `r`: `hazard` (+0), `epoch` (+1), `pid` (+2) | reader `r` (and reaping writers) |
//! | `slots_base + stride * s` | slot `s`: `seq` (+0), `len` in bytes (+1), data (+2 ..) | writer |
//!
//! Each reader record and each slot starts on its own 128-byte line.

/// `b"OLMBOX\0\x01"` as a little-endian word.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"OLMBOX\0\x01");
/// Layout version (3: word 5 holds the payload type's 64-bit structural
/// fingerprint, words 6..12 its size and name; 2 had a 32-bit hash of the
/// type's name in word 5).
pub(crate) const VERSION: u64 = 3;
/// Most readers a mailbox can have (the published word holds the slot in 16 bits).
pub const MAX_READERS: usize = 4096;
/// Largest payload per slot, in bytes.
pub const MAX_SLOT_BYTES: usize = 1 << 24;

pub(crate) const W_MAGIC: usize = 0;
pub(crate) const W_VERSION: usize = 1;
pub(crate) const W_READERS: usize = 2;
pub(crate) const W_SLOTS: usize = 3;
pub(crate) const W_SLOT_WORDS: usize = 4;
/// The payload type fingerprint of typed mailboxes (`TypedMailbox`); 0 until a typed handle binds it.
#[cfg_attr(shm_loom, allow(dead_code, reason = "typed handles are not modelled"))]
pub(crate) const W_TYPE: usize = 5;
/// The bound type's size in bytes, for messages (0 until recorded).
#[cfg_attr(shm_loom, allow(dead_code, reason = "typed handles are not modelled"))]
pub(crate) const W_TYPE_SIZE: usize = 6;
/// The bound type's name, UTF-8, zero-padded, in 5 words, for messages.
#[cfg_attr(shm_loom, allow(dead_code, reason = "typed handles are not modelled"))]
pub(crate) const W_TYPE_NAME: usize = 7;
pub(crate) const W_PUBLISHED: usize = 16;
/// Byte offset of the 32-bit futex word (never accessed as a 64-bit word).
pub(crate) const NOTIFY_BYTE: usize = 24 * 8;
pub(crate) const W_WAITERS: usize = 25;
const READERS_BASE: usize = 32;
const LINE_WORDS: usize = 16;

pub(crate) const R_HAZARD: usize = 0;
pub(crate) const R_EPOCH: usize = 1;
pub(crate) const R_PID: usize = 2;

pub(crate) const S_SEQ: usize = 0;
pub(crate) const S_LEN: usize = 1;
pub(crate) const S_DATA: usize = 2;

/// A mailbox's shape: how many readers and how large a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Number of reader indices (`0..readers`).
    pub readers: usize,
    /// Largest message in bytes (rounded up to a multiple of 8 in the layout).
    pub slot_bytes: usize,
}

/// Why a configuration or a layout found in shared memory was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// The configuration asked for is out of range.
    #[error("invalid mailbox configuration: {0}")]
    InvalidConfig(&'static str),
    /// The shared block is not a mailbox of this version.
    #[error("not a mailbox of this version: {0}")]
    Foreign(&'static str),
    /// The mailbox was created with another shape.
    #[error(
        "mailbox has {found_readers} readers and {found_slot_bytes}-byte slots, expected {readers} and {slot_bytes}"
    )]
    Mismatch {
        /// Readers asked for.
        readers: usize,
        /// Slot bytes asked for.
        slot_bytes: usize,
        /// Readers found.
        found_readers: usize,
        /// Slot bytes found.
        found_slot_bytes: usize,
    },
    /// The region is too small for the shape its config block claims.
    #[error("mailbox region holds {have} bytes, its shape needs {need}")]
    TooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
}

/// The shape in words, derived from a validated [`Config`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) readers: usize,
    pub(crate) slots: usize,
    pub(crate) slot_words: usize,
    stride: usize,
}

impl Config {
    /// Checks the ranges and derives the word layout.
    pub(crate) fn shape(self) -> Result<Shape, LayoutError> {
        if self.readers == 0 || self.readers > MAX_READERS {
            return Err(LayoutError::InvalidConfig("readers must be 1..=4096"));
        }
        if self.slot_bytes == 0 || self.slot_bytes > MAX_SLOT_BYTES {
            return Err(LayoutError::InvalidConfig("slot size must be 1..=16 MiB"));
        }
        let slot_words = self.slot_bytes.div_ceil(8);
        // N readers can pin N slots and the published message one more:
        // N + 2 slots leave the writer a free one, always.
        let slots = self.readers + 2;
        let stride = (S_DATA + slot_words).div_ceil(LINE_WORDS) * LINE_WORDS;
        Ok(Shape {
            readers: self.readers,
            slots,
            slot_words,
            stride,
        })
    }

    /// Bytes of shared memory a mailbox of this shape needs.
    pub fn region_bytes(self) -> Result<usize, LayoutError> {
        Ok(self.shape()?.total_words() * 8)
    }
}

impl Shape {
    fn slots_base(&self) -> usize {
        READERS_BASE + self.readers * LINE_WORDS
    }

    pub(crate) fn total_words(&self) -> usize {
        self.slots_base() + self.slots * self.stride
    }

    pub(crate) fn reader(&self, r: usize, field: usize) -> usize {
        debug_assert!(r < self.readers);
        READERS_BASE + r * LINE_WORDS + field
    }

    pub(crate) fn slot(&self, s: usize, field: usize) -> usize {
        debug_assert!(s < self.slots);
        self.slots_base() + s * self.stride + field
    }

    pub(crate) fn slot_bytes(&self) -> usize {
        self.slot_words * 8
    }

    /// Reads the shape from a config block, validating it against the region length.
    pub(crate) fn from_words(config: [u64; 5], region_words: usize) -> Result<Shape, LayoutError> {
        if config[W_MAGIC] != MAGIC {
            return Err(LayoutError::Foreign("bad magic"));
        }
        if config[W_VERSION] != VERSION {
            return Err(LayoutError::Foreign("unsupported version"));
        }
        let readers = usize::try_from(config[W_READERS]).unwrap_or(usize::MAX);
        let slot_words = usize::try_from(config[W_SLOT_WORDS]).unwrap_or(usize::MAX);
        let shape = Config {
            readers,
            slot_bytes: slot_words.saturating_mul(8),
        }
        .shape()
        .map_err(|_| LayoutError::Foreign("reader count or slot size out of range"))?;
        if config[W_SLOTS] != shape.slots as u64 {
            return Err(LayoutError::Foreign(
                "slot count does not match reader count",
            ));
        }
        if shape.total_words() > region_words {
            return Err(LayoutError::TooSmall {
                need: shape.total_words() * 8,
                have: region_words * 8,
            });
        }
        Ok(shape)
    }

    pub(crate) fn config_words(&self) -> [u64; 5] {
        [
            MAGIC,
            VERSION,
            self.readers as u64,
            self.slots as u64,
            self.slot_words as u64,
        ]
    }
}

/// Packs a published word.
pub(crate) fn pack(seq: u64, slot: usize) -> u64 {
    (seq << 16) | slot as u64
}

/// Unpacks a published word into `(seq, slot)`.
pub(crate) fn unpack(word: u64) -> (u64, usize) {
    (word >> 16, (word & 0xffff) as usize)
}

/// A hazard word: the reader's attach epoch and the slot it holds (+1; 0 = none).
pub(crate) fn hazard(epoch: u64, slot: usize) -> u64 {
    (epoch << 16) | (slot as u64 + 1)
}

/// The slot a hazard word holds, if any.
pub(crate) fn hazard_slot(word: u64) -> Option<usize> {
    match word & 0xffff {
        0 => None,
        s => Some(s as usize - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_always_leaves_a_free_slot() {
        for readers in [1, 2, 3, 31, 32, 100, MAX_READERS] {
            let sut = Config {
                readers,
                slot_bytes: 24,
            }
            .shape()
            .unwrap();
            assert!(sut.slots >= readers + 2);
            assert_eq!(
                sut.slot(1, 0) - sut.slot(0, 0),
                16,
                "a 24-byte slot fits one 128-byte line"
            );
        }
        assert!(
            Config {
                readers: 0,
                slot_bytes: 8
            }
            .shape()
            .is_err()
        );
        assert!(
            Config {
                readers: 1,
                slot_bytes: 0
            }
            .shape()
            .is_err()
        );
        assert!(
            Config {
                readers: MAX_READERS + 1,
                slot_bytes: 8
            }
            .shape()
            .is_err()
        );
    }

    #[test]
    fn words_round_trip_and_validate() {
        let shape = Config {
            readers: 3,
            slot_bytes: 100,
        }
        .shape()
        .unwrap();
        let words = shape.config_words();
        assert_eq!(
            Shape::from_words(words, shape.total_words()).unwrap(),
            shape
        );
        assert!(matches!(
            Shape::from_words(words, shape.total_words() - 1),
            Err(LayoutError::TooSmall { .. })
        ));
        let mut bad = words;
        bad[W_SLOTS] = 2;
        assert!(Shape::from_words(bad, usize::MAX).is_err());
        let (seq, slot) = unpack(pack(77, 4));
        assert_eq!((seq, slot), (77, 4));
        assert_eq!(hazard_slot(hazard(9, 0)), Some(0));
        assert_eq!(hazard_slot(0), None);
    }
}
