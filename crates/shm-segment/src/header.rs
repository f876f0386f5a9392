//! The common segment header: the one header format of the workspace.
//!
//! Layout (128 bytes at offset 0, every field an atomic so a hostile or
//! crashing peer can never cause undefined behaviour, only a validation error);
//! documented in `docs/PROTOCOL.md`:
//!
//! | offset | field          | meaning |
//! |-------:|----------------|---------|
//! | 0      | `magic`        | `b"OUTLIVE\0"` as a little-endian u64 |
//! | 8      | `state`        | 0 empty, 1 initialising, 2 ready; stored last with Release |
//! | 12     | `version`      | format version ([`FORMAT_VERSION`]) |
//! | 16     | `endian`       | `0x0102_0304` written natively: detects a foreign byte order |
//! | 20     | `header_len`   | 128 |
//! | 24     | `data_offset`  | offset of the payload ([`DATA_OFFSET`], one page) |
//! | 32     | `data_len`     | payload bytes |
//! | 40     | `type_size`    | size of the payload type (0 for raw bytes) |
//! | 48     | `type_align`   | alignment of the payload type |
//! | 56     | `type_id`      | structural fingerprint of the payload type ([`Layout`]; 0 for raw bytes) |
//! | 64     | `flags`        | bit 0 leaked, bit 1 last-one-out-unlinks, bit 2 unlinked |
//! | 68     | `creator_pid`  | pid of the initialiser (diagnostics only) |
//! | 72     | `generation`   | bumped by every (re)initialisation |
//! | 80     | `type_name`    | the payload type's name, UTF-8, zero-padded to 40 bytes (messages only) |
//! | 120    | reserved       | zero |

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence}; // atomics-ok: header fields in shared memory

pub use crate::layout::{Layout, TYPE_NAME_LEN};
use crate::region::Region;
use crate::shared_struct;

/// `b"OUTLIVE\0"` read as a little-endian integer.
pub const MAGIC: u64 = u64::from_le_bytes(*b"OUTLIVE\0");
/// Version of this header format: 2 since `type_id` is a structural
/// fingerprint and the header holds `type_name` (version 1 hashed the type's
/// path, and its readers would misjudge a version 2 segment's type).
pub const FORMAT_VERSION: u32 = 2;
/// The byte-order probe.
pub const ENDIAN_PROBE: u32 = 0x0102_0304;
/// Size of the header in bytes.
pub const HEADER_LEN: usize = 128;
/// Offset of the payload: one 4 KiB page, so the payload is page-aligned
/// (dirty-page tracking and any alignment up to 4096 work).
pub const DATA_OFFSET: usize = 4096;

/// `state`: nobody has started initialising (an all-zero memfd).
pub const STATE_EMPTY: u32 = 0;
/// `state`: an initialiser is writing the payload.
pub const STATE_INITIALISING: u32 = 1;
/// `state`: the payload is initialised and the header valid.
pub const STATE_READY: u32 = 2;

/// `flags`: the object was leaked on purpose and must not be reclaimed.
pub const FLAG_LEAKED: u32 = 1;
/// `flags`: the last process to detach unlinks the name.
pub const FLAG_LAST_OUT_UNLINKS: u32 = 2;
/// `flags`: the name was unlinked; attached processes are on their own.
pub const FLAG_UNLINKED: u32 = 4;

shared_struct! {
    /// The 128-byte header at the start of every segment.
    pub struct RawHeader {
        /// [`MAGIC`].
        pub magic: AtomicU64,
        /// `STATE_*`.
        pub state: AtomicU32,
        /// [`FORMAT_VERSION`].
        pub version: AtomicU32,
        /// [`ENDIAN_PROBE`].
        pub endian: AtomicU32,
        /// [`HEADER_LEN`].
        pub header_len: AtomicU32,
        /// [`DATA_OFFSET`].
        pub data_offset: AtomicU64,
        /// Payload length in bytes.
        pub data_len: AtomicU64,
        /// Payload type size.
        pub type_size: AtomicU64,
        /// Payload type alignment.
        pub type_align: AtomicU64,
        /// Payload type fingerprint.
        pub type_id: AtomicU64,
        /// `FLAG_*`.
        pub flags: AtomicU32,
        /// Initialiser's pid.
        pub creator_pid: AtomicU32,
        /// Bumped by each initialisation.
        pub generation: AtomicU64,
        /// The payload type's name ([`TYPE_NAME_LEN`] bytes, zero-padded), for messages.
        pub type_name: [AtomicU64; TYPE_NAME_LEN / 8],
        /// Zero.
        pub reserved: AtomicU64,
    }
}

const _: () = {
    assert!(size_of::<RawHeader>() == HEADER_LEN);
    assert!(align_of::<RawHeader>() == 8);
    assert!(core::mem::offset_of!(RawHeader, state) == 8);
    assert!(core::mem::offset_of!(RawHeader, version) == 12);
    assert!(core::mem::offset_of!(RawHeader, data_offset) == 24);
    assert!(core::mem::offset_of!(RawHeader, type_id) == 56);
    assert!(core::mem::offset_of!(RawHeader, flags) == 64);
    assert!(core::mem::offset_of!(RawHeader, generation) == 72);
    assert!(core::mem::offset_of!(RawHeader, type_name) == 80);
    assert!(core::mem::offset_of!(RawHeader, reserved) == 120);
    assert!(TYPE_NAME_LEN.is_multiple_of(8));
};

/// A validated copy of a header's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderInfo {
    /// Payload length.
    pub data_len: u64,
    /// Payload layout.
    pub layout: Layout,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Initialisation generation.
    pub generation: u64,
}

/// A header check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeaderFault {
    Empty,
    Initialising,
    Corrupt(&'static str),
    Version(u32),
}

impl RawHeader {
    /// Writes every field but `state`, for a payload of `data_len` bytes of `layout`.
    pub(crate) fn write_fields(&self, data_len: u64, layout: Layout, flags: u32) {
        // Relaxed: these stores are published by the Release store of `state`
        // in `publish` (SYNC: pairs with the Acquire fence after the load of `state` in `check`).
        self.magic.store(MAGIC, Ordering::Relaxed);
        self.version.store(FORMAT_VERSION, Ordering::Relaxed);
        self.endian.store(ENDIAN_PROBE, Ordering::Relaxed);
        self.header_len.store(HEADER_LEN as u32, Ordering::Relaxed);
        self.data_offset
            .store(DATA_OFFSET as u64, Ordering::Relaxed);
        self.data_len.store(data_len, Ordering::Relaxed);
        self.type_size.store(layout.size, Ordering::Relaxed);
        self.type_align.store(layout.align, Ordering::Relaxed);
        self.type_id.store(layout.id, Ordering::Relaxed);
        for (word, bytes) in self
            .type_name
            .iter()
            .zip(layout.name_bytes().chunks_exact(8))
        {
            let mut le = [0u8; 8];
            le.copy_from_slice(bytes);
            word.store(u64::from_le_bytes(le), Ordering::Relaxed);
        }
        self.flags.store(flags, Ordering::Relaxed);
        self.creator_pid
            .store(std::process::id(), Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks the header and payload valid.
    pub(crate) fn publish(&self) {
        // SYNC: Release, pairs with the Acquire fence after the load of `state` in `check`;
        // publishes the header fields and the initialised payload.
        self.state.store(STATE_READY, Ordering::Release);
    }

    /// Validates the header at the start of `region` (read-only regions work:
    /// every load is Relaxed),
    /// for an object of `file_len` bytes.
    pub(crate) fn check(region: &Region<'_>, file_len: u64) -> Result<HeaderInfo, HeaderFault> {
        use core::mem::offset_of;
        let u32_at = |off: usize| {
            region
                .load_u32(off, Ordering::Relaxed)
                .map_err(|_| HeaderFault::Corrupt("object too small for a header"))
        };
        let u64_at = |off: usize| {
            region
                .load_u64(off, Ordering::Relaxed)
                .map_err(|_| HeaderFault::Corrupt("object too small for a header"))
        };
        // Relaxed: `region` may be a read-only mapping, where Rust allows only
        // Relaxed atomic loads; the fence below gives it Acquire semantics.
        let state = region
            .load_u32(offset_of!(RawHeader, state), Ordering::Relaxed)
            .map_err(|_| HeaderFault::Corrupt("object too small for a header"))?;
        // SYNC: Acquire fence, pairs with the Release store in `publish`: the
        // Relaxed loads below see the fields written before it.
        fence(Ordering::Acquire);
        let magic = u64_at(offset_of!(RawHeader, magic))?;
        match state {
            STATE_EMPTY if magic == 0 => return Err(HeaderFault::Empty),
            STATE_INITIALISING if magic == MAGIC || magic == 0 => {
                return Err(HeaderFault::Initialising);
            }
            STATE_READY => {}
            _ => {
                return Err(HeaderFault::Corrupt(
                    "bad magic or init state: not an outlive segment",
                ));
            }
        }
        if magic != MAGIC {
            return Err(HeaderFault::Corrupt("bad magic: not an outlive segment"));
        }
        if u32_at(offset_of!(RawHeader, endian))? != ENDIAN_PROBE {
            return Err(HeaderFault::Corrupt("written with another byte order"));
        }
        let version = u32_at(offset_of!(RawHeader, version))?;
        if version != FORMAT_VERSION {
            return Err(HeaderFault::Version(version));
        }
        if u32_at(offset_of!(RawHeader, header_len))? as usize != HEADER_LEN
            || u64_at(offset_of!(RawHeader, data_offset))? != DATA_OFFSET as u64
        {
            return Err(HeaderFault::Corrupt(
                "unexpected header length or data offset",
            ));
        }
        let data_len = u64_at(offset_of!(RawHeader, data_len))?;
        if data_len == 0 || data_len > file_len.saturating_sub(DATA_OFFSET as u64) {
            return Err(HeaderFault::Corrupt(
                "payload length does not fit the object",
            ));
        }
        let mut name = [0u8; TYPE_NAME_LEN];
        for (i, bytes) in name.chunks_exact_mut(8).enumerate() {
            bytes.copy_from_slice(&u64_at(offset_of!(RawHeader, type_name) + i * 8)?.to_le_bytes());
        }
        let layout = Layout::from_header(
            u64_at(offset_of!(RawHeader, type_size))?,
            u64_at(offset_of!(RawHeader, type_align))?,
            u64_at(offset_of!(RawHeader, type_id))?,
            name,
        );
        if !layout.align.is_power_of_two()
            || layout.align > DATA_OFFSET as u64
            || layout.size > data_len
        {
            return Err(HeaderFault::Corrupt(
                "payload layout does not fit the payload",
            ));
        }
        Ok(HeaderInfo {
            data_len,
            layout,
            flags: u32_at(offset_of!(RawHeader, flags))?,
            generation: u64_at(offset_of!(RawHeader, generation))?,
        })
    }
}
