//! The live memfd's layout: an `shm-segment` segment whose payload starts
//! with the control page (a config block carrying the geometry, then the
//! commit words), followed by the page-stamp table, the work area and the
//! committed copy; and how a memfd is initialized, mapped and validated.
//!
//! `docs/protocol/shm-snapshot.md` ("Live memfd") is the normative
//! description. Offsets below are bytes from the start of the payload, which
//! is at [`DATA_OFFSET`] (4096) of the memfd, after the segment header page.
//!
//! | payload offset | field | written by |
//! |---:|---|---|
//! | 0 | `magic` [`LIVE_MAGIC`] | [`Initializer::finish`], last (Release) |
//! | 8 | `version` [`LIVE_VERSION`] | [`Initializer::new`] |
//! | 16 | `page_size` (4096) | [`Initializer::new`] |
//! | 24 | `pages` `P = ceil(R / 4096)` | [`Initializer::new`] |
//! | 32 | `state_size` `R` | [`Initializer::new`] |
//! | 40 | `stamps` offset (4096) | [`Initializer::new`] |
//! | 48 | `work` offset (`4096 + T`) | [`Initializer::new`] |
//! | 56 | `committed` offset (`4096 + T + A`) | [`Initializer::new`] |
//! | 64..128 | reserved, zero | |
//! | 128 | `seq`, the commit sequence | client |
//! | 136..256 | reserved, zero | |
//! | 256 | `durable`: newest generation whose snapshot fdatasync returned (`u64`) | host |
//! | 264 | `durable_seq`: futex word, bumped after each publish of `durable` (`u32`) | host |
//! | 268 | `mode`: bit 0 `wake_on_commit` (`u32`) | host |
//! | 272 | `replicated`: newest generation whose upload to the replica completed (`u64`) | host (its uploader thread) |
//! | 280 | `replicated_seq`: futex word, bumped after each publish of `replicated` (`u32`) | host (its uploader thread) |
//! | 284 | `replica`: bit 0 `replica_on`, the host replicates FILE (`u32`) | host |
//! | 288..384 | reserved, zero | |
//! | 384 | `wanted`: highest generation a client waits for (`u64`, `fetch_max`) | clients |
//! | 392 | `requests`: futex word clients bump to wake the host (`u32`) | clients, host's waker |
//! | 400 | `wanted_replicated`: highest generation a client waits to see replicated (`u64`, `fetch_max`) | clients |
//! | 408..4096 | reserved, zero | |
//!
//! The host's liveness lock is an OFD lock on memfd byte [`HOST_LOCK_BYTE`]
//! (4608, payload offset 512; the lock guards no bytes).
//! | 4096 | page stamps, `8P` bytes | client |
//! | `4096 + T` | work area, `A` bytes | client |
//! | `4096 + T + A` | committed copy, `A` bytes | client |
//!
//! with `T = round_up(8P, 4096)` and `A = round_up(R, 4096)`.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use shm_segment::header::DATA_OFFSET;
use shm_segment::{Access, Region, Segment, SegmentError};
use shm_sync::atomic::{Ordering, fence};

use crate::error::{ErrorKind, SnapshotError};

/// Magic of the control block (the first word of the segment's payload).
pub const LIVE_MAGIC: u64 = u64::from_le_bytes(*b"OUTLLIV3");
/// Version of the live layout (5: the replication words at 272..288 and
/// 400..408 of the control page; 4 had the durable-commit words at 256..400
/// and those reserved and zero; 3 had all of them reserved; 3, 4 and 5
/// share the magic `OUTLLIV3`, a segment with a config block; 2 was a bare
/// control page with the magic `OUTLLIV2`).
pub const LIVE_VERSION: u64 = 5;
/// The magic of layout version 2, recognised only to name it in the error.
const V2_MAGIC: u64 = u64::from_le_bytes(*b"OUTLLIV2");
/// Length of the control page (config block and commit words) at the start
/// of the payload.
pub const CONTROL_LEN: u64 = 4096;
/// The page size of the stamp table (and of the snapshot file's records).
pub const PAGE: u64 = 4096;
/// Largest commit sequence a client accepts at open: a larger one was
/// written by something else (and would overflow the next commits).
pub(crate) const MAX_SEQ: u64 = 1 << 62;

/// Payload offset of the magic.
pub(crate) const MAGIC_OFF: usize = 0;
/// Payload offset of the layout version; the config words follow it.
const VERSION_OFF: usize = 8;
/// Words of the config block from `version` on: version, page size, pages,
/// state size, stamps, work, committed.
const CONFIG_WORDS: usize = 7;
/// Bytes of the config block, reserved words included.
const CONFIG_LEN: usize = 128;
/// Payload offset of the commit sequence `seq` (its own 128-byte line: only
/// the client writes it).
pub(crate) const SEQ_OFF: usize = 128;
/// Payload offset of `durable` (`u64`), the newest generation whose
/// snapshot's fdatasync returned (its own 128-byte line: only the host
/// writes it and the two words after it).
pub(crate) const DURABLE_OFF: usize = 256;
/// Payload offset of `durable_seq` (`u32` futex word), bumped by the host
/// after each store of `durable`.
pub(crate) const DURABLE_SEQ_OFF: usize = 264;
/// Payload offset of `mode` (`u32`): bit 0 [`WAKE_ON_COMMIT`].
pub(crate) const MODE_OFF: usize = 268;
/// Bit of `mode`: every commit bumps `requests` and wakes the host (a host
/// with interval 0, snapshotting continuously).
pub(crate) const WAKE_ON_COMMIT: u32 = 1;
/// Payload offset of `replicated` (`u64`), the newest generation whose
/// upload to the replica completed (the host's line).
pub(crate) const REPLICATED_OFF: usize = 272;
/// Payload offset of `replicated_seq` (`u32` futex word), bumped by the
/// host after each store of `replicated`.
pub(crate) const REPLICATED_SEQ_OFF: usize = 280;
/// Payload offset of `replica` (`u32`): bit 0 [`REPLICA_ON`].
pub(crate) const REPLICA_OFF: usize = 284;
/// Bit of `replica`: the host serving the memfd replicates FILE to an
/// object store (a wait for [`Level::Replicated`](super::Level::Replicated)
/// can succeed).
pub(crate) const REPLICA_ON: u32 = 1;
/// Payload offset of `wanted` (`u64`), the highest generation a client
/// waits for (its own 128-byte line: the clients' words).
pub(crate) const WANTED_OFF: usize = 384;
/// Payload offset of `requests` (`u32` futex word the host sleeps on).
pub(crate) const REQUESTS_OFF: usize = 392;
/// Payload offset of `wanted_replicated` (`u64`), the highest generation a
/// client waits to see replicated.
pub(crate) const WANTED_REPLICATED_OFF: usize = 400;
/// Payload offset of the byte whose OFD lock is the host's liveness.
const HOST_LOCK_OFF: usize = 512;
/// The memfd byte whose OFD lock the live host holds (kernel-released when
/// it dies): the segment header page, then payload offset 512.
pub const HOST_LOCK_BYTE: u64 = (DATA_OFFSET + HOST_LOCK_OFF) as u64;
/// Payload offset of the byte whose OFD lock is the client's claim.
const CLIENT_LOCK_OFF: usize = 513;
/// The memfd byte whose OFD lock the one [`Client`](super::Client) holds
/// (kernel-released when it is dropped or its process dies): payload
/// offset 513, next to the host's.
pub const CLIENT_LOCK_BYTE: u64 = (DATA_OFFSET + CLIENT_LOCK_OFF) as u64;
/// Bytes of the memfd the host maps writable for the durable words: the
/// segment header page and the control page.
pub(crate) const CONTROL_MAP_LEN: usize = DATA_OFFSET + CONTROL_LEN as usize;

const _: () = {
    assert!(VERSION_OFF == MAGIC_OFF + 8);
    assert!(VERSION_OFF + 8 * CONFIG_WORDS <= CONFIG_LEN);
    assert!(CONFIG_LEN <= SEQ_OFF && SEQ_OFF.is_multiple_of(128));
    assert!(SEQ_OFF + 128 <= DURABLE_OFF && DURABLE_OFF.is_multiple_of(128));
    assert!(DURABLE_SEQ_OFF == DURABLE_OFF + 8 && MODE_OFF == DURABLE_SEQ_OFF + 4);
    assert!(REPLICATED_OFF == MODE_OFF + 4 && REPLICATED_OFF.is_multiple_of(8));
    assert!(REPLICATED_SEQ_OFF == REPLICATED_OFF + 8 && REPLICA_OFF == REPLICATED_SEQ_OFF + 4);
    assert!(REPLICA_OFF + 4 <= DURABLE_OFF + 128);
    assert!(WANTED_OFF == DURABLE_OFF + 128 && REQUESTS_OFF == WANTED_OFF + 8);
    assert!(WANTED_REPLICATED_OFF == REQUESTS_OFF + 8);
    assert!(WANTED_REPLICATED_OFF.is_multiple_of(8));
    assert!(WANTED_REPLICATED_OFF + 8 <= WANTED_OFF + 128);
    assert!(WANTED_OFF + 128 <= HOST_LOCK_OFF && HOST_LOCK_OFF < CONTROL_LEN as usize);
    assert!(HOST_LOCK_BYTE == 4608);
    assert!(CLIENT_LOCK_OFF == HOST_LOCK_OFF + 1 && CLIENT_LOCK_BYTE == 4609);
    assert!(DATA_OFFSET as u64 == PAGE && CONTROL_LEN == PAGE);
};

/// `n` rounded up to a multiple of `page`, `None` on overflow (a size read
/// from a memfd another process can write may be anything).
fn round(n: u64, page: u64) -> Option<u64> {
    n.div_ceil(page).checked_mul(page)
}

/// Where the parts of the payload are, for a state region of `region` bytes.
///
/// # Invariants
/// `page` is a power of two and a multiple of 8; `stamps`, `work` and
/// `committed` are multiples of 8; `stamps + 8 * pages <= work`,
/// `work + region <= committed` and `committed + region <= len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// State bytes `R`.
    pub(crate) region: usize,
    /// Bytes per page (4096 for a memfd; smaller in the loom models).
    pub(crate) page: usize,
    /// `page.trailing_zeros()`.
    shift: u32,
    /// State pages (the last may be partial).
    pub(crate) pages: usize,
    /// Offset of the page-stamp table.
    pub(crate) stamps: usize,
    /// Offset of the work area.
    pub(crate) work: usize,
    /// Offset of the committed copy.
    pub(crate) committed: usize,
    /// Bytes of payload.
    pub(crate) len: usize,
}

impl Geometry {
    /// The memfd layout: 4096-byte pages after a 4096-byte control page.
    pub(crate) fn new(region: u64) -> Option<Self> {
        Self::build(region, PAGE, CONTROL_LEN)
    }

    /// A layout of `page`-byte pages (a power of two, at least 8) after
    /// `control` bytes (a multiple of 8); `None` if it cannot be addressed.
    pub(crate) fn build(region: u64, page: u64, control: u64) -> Option<Self> {
        if !page.is_power_of_two() || page < 8 || !control.is_multiple_of(8) {
            return None;
        }
        let pages = region.div_ceil(page);
        let table = round(pages.checked_mul(8)?, page)?;
        let area = round(region, page)?;
        let work = control.checked_add(table)?;
        let committed = work.checked_add(area)?;
        let len = committed.checked_add(area)?;
        // The whole memfd, header page included, must be addressable.
        let _ = usize::try_from(len.checked_add(DATA_OFFSET as u64)?).ok()?;
        Some(Self {
            region: usize::try_from(region).ok()?,
            page: usize::try_from(page).ok()?,
            shift: page.trailing_zeros(),
            pages: usize::try_from(pages).ok()?,
            stamps: usize::try_from(control).ok()?,
            work: usize::try_from(work).ok()?,
            committed: usize::try_from(committed).ok()?,
            len: usize::try_from(len).ok()?,
        })
    }

    /// Bytes of state page `p` (the last one may be short).
    #[inline]
    pub(crate) fn page_len(&self, p: usize) -> usize {
        (self.region - (p << self.shift)).min(self.page)
    }

    /// The page holding byte `offset` of the state.
    #[inline]
    pub(crate) fn page_of(&self, offset: usize) -> usize {
        offset >> self.shift
    }

    /// Byte offset of page `p` in the state.
    #[inline]
    pub(crate) fn page_start(&self, p: usize) -> usize {
        p << self.shift
    }

    /// Bytes of each area (the state rounded up to whole pages).
    pub(crate) fn area(&self) -> usize {
        self.committed - self.work
    }

    /// Size of the memfd: the segment header page and the payload.
    pub(crate) fn memfd_len(&self) -> u64 {
        (DATA_OFFSET + self.len) as u64
    }

    /// The config block from `version` on.
    fn config_words(&self) -> [u64; CONFIG_WORDS] {
        [
            LIVE_VERSION,
            self.page as u64,
            self.pages as u64,
            self.region as u64,
            self.stamps as u64,
            self.work as u64,
            self.committed as u64,
        ]
    }

    /// The geometry a config block describes, checked against the memfd
    /// layout of its state size and against the payload length.
    fn from_config(words: [u64; CONFIG_WORDS], payload: usize) -> Result<Self, SnapshotError> {
        let [version, page, _, region, ..] = words;
        if version != LIVE_VERSION {
            return Err(SnapshotError::new(
                ErrorKind::Version,
                format!(
                    "memfd has live layout version {version}, this library reads {LIVE_VERSION}"
                ),
            ));
        }
        if page != PAGE {
            return Err(bad(format!(
                "memfd has {page}-byte pages, this library uses {PAGE}"
            )));
        }
        let memfd = (DATA_OFFSET + payload) as u64;
        match Geometry::new(region) {
            Some(g) if region > 0 && g.config_words() == words && g.len == payload => Ok(g),
            _ => Err(bad(format!(
                "memfd size {memfd} does not fit region size {region} (or its control block does not)"
            ))),
        }
    }
}

/// Total memfd size for a state region of `region_size` bytes (0 if it
/// cannot be addressed).
#[must_use]
pub fn memfd_size(region_size: u64) -> u64 {
    Geometry::new(region_size).map_or(0, |g| g.memfd_len())
}

#[allow(clippy::needless_pass_by_value)] // used as a `map_err` function
pub(crate) fn bad(msg: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::new(ErrorKind::BadGeometry, msg)
}

/// The error for a commit sequence beyond [`MAX_SEQ`].
pub(crate) fn bad_sequence(s: u64) -> SnapshotError {
    SnapshotError::new(
        ErrorKind::BadSequence,
        format!(
            "commit sequence {s} is out of range (at most {MAX_SEQ}): written by something other than a client"
        ),
    )
}

/// A segment error as a snapshot error.
fn segment_error(e: &SegmentError) -> SnapshotError {
    let kind = match e {
        SegmentError::VersionMismatch { .. } => ErrorKind::Version,
        SegmentError::TooSmall { .. } => ErrorKind::BadGeometry,
        SegmentError::Io { .. } | SegmentError::Map { .. } | SegmentError::Memfd(_) => {
            ErrorKind::Io
        }
        _ => ErrorKind::Foreign,
    };
    SnapshotError::new(kind, format!("not a snapshot memfd: {e}"))
}

/// Checks that `fd` is a regular file (a memfd) of at least `min` bytes,
/// naming what it is otherwise; returns its size.
fn file_size(fd: BorrowedFd<'_>, min: u64) -> Result<u64, SnapshotError> {
    let st = rustix::fs::fstat(fd).map_err(|e| SnapshotError::io("fstat memfd", e.into()))?;
    let ty = rustix::fs::FileType::from_raw_mode(st.st_mode);
    if ty != rustix::fs::FileType::RegularFile {
        let what = match ty {
            rustix::fs::FileType::Socket => "a socket",
            rustix::fs::FileType::Fifo => "a pipe",
            rustix::fs::FileType::Directory => "a directory",
            rustix::fs::FileType::CharacterDevice | rustix::fs::FileType::BlockDevice => "a device",
            _ => "not a regular file",
        };
        return Err(SnapshotError::new(
            ErrorKind::Foreign,
            format!(
                "fd {} is {what}, not a memfd",
                std::os::fd::AsRawFd::as_raw_fd(&fd)
            ),
        ));
    }
    let size = u64::try_from(st.st_size).unwrap_or(0);
    if size < min {
        return Err(bad(format!(
            "memfd of {size} bytes is smaller than the segment header and control pages"
        )));
    }
    Ok(size)
}

/// Refuses a memfd of layout version 2 by name (its first word was its magic).
fn refuse_version_2(fd: BorrowedFd<'_>) -> Result<(), SnapshotError> {
    let mut first = [0u8; 8];
    let n = rustix::io::pread(fd, &mut first, 0).unwrap_or(0);
    if n == 8 && u64::from_le_bytes(first) == V2_MAGIC {
        return Err(SnapshotError::new(
            ErrorKind::Version,
            format!(
                "memfd has live layout version 2 (OUTLLIV2), this library reads {LIVE_VERSION}: restore it from its snapshot file"
            ),
        ));
    }
    Ok(())
}

/// Adopts an initialized snapshot memfd as a segment (read-only for a host)
/// and validates its control block.
pub(crate) fn open(
    fd: BorrowedFd<'_>,
    access: Access,
) -> Result<(Segment, Geometry), SnapshotError> {
    file_size(fd, DATA_OFFSET as u64 + CONTROL_LEN)?;
    refuse_version_2(fd)?;
    let own = fd
        .try_clone_to_owned()
        .map_err(|e| SnapshotError::io("dup memfd", e))?;
    // No waiting: a memfd is initialized before it is handed over.
    let builder = Segment::adopt(own).open_timeout(Duration::ZERO);
    let builder = match access {
        Access::ReadOnly => builder.read_only(),
        Access::ReadWrite => builder,
    };
    let segment = builder.open().map_err(|e| segment_error(&e))?;
    let geo = control_block(segment.payload())?;
    Ok((segment, geo))
}

/// Reads and validates the control block of `payload` (a read-only region works).
fn control_block(payload: Region<'_>) -> Result<Geometry, SnapshotError> {
    let word = |off: usize| {
        // Relaxed: the only ordering allowed on a read-only mapping; ordered
        // by the fence below.
        payload
            .load_u64(off, Ordering::Relaxed)
            .map_err(|_| bad("memfd too small for a control block"))
    };
    let magic = word(MAGIC_OFF)?;
    // SYNC: Acquire fence, pairs with the Release store of the magic in
    // `Initializer::finish`: the config words, `seq` and both state areas
    // written before it are visible below.
    fence(Ordering::Acquire);
    if magic == 0 {
        return Err(SnapshotError::new(
            ErrorKind::Foreign,
            "memfd has no snapshot control block (its initialization never finished)",
        ));
    }
    if magic != LIVE_MAGIC {
        return Err(SnapshotError::new(
            ErrorKind::Foreign,
            "memfd has no snapshot control block (a segment of something else)",
        ));
    }
    let mut config = [0u64; CONFIG_WORDS];
    for (i, w) in config.iter_mut().enumerate() {
        *w = word(VERSION_OFF + 8 * i)?;
    }
    Geometry::from_config(config, payload.len())
}

/// Fills a fresh (all-zero) memfd of [`memfd_size`] bytes: [`Initializer::new`]
/// makes it a segment whose control block holds the geometry, the state is
/// written into both areas with [`Initializer::write`], then
/// [`Initializer::finish`] writes the commit sequence and, last, the magic.
/// Until then the control block has no magic, so a half-initialized memfd is
/// refused by [`Client::open`](super::Client::open) and
/// [`Host::open`](super::Host::open).
#[derive(Debug)]
pub struct Initializer {
    segment: Segment,
    geo: Geometry,
}

impl Initializer {
    /// Makes a fresh memfd a segment for a state of `region_size` bytes and
    /// writes the geometry into its control block.
    ///
    /// # Errors
    /// A memfd of the wrong size, one that is already a segment, or a region
    /// too large to address.
    pub fn new(fd: BorrowedFd<'_>, region_size: u64) -> Result<Self, SnapshotError> {
        let geo = Geometry::new(region_size)
            .filter(|_| region_size > 0)
            .ok_or_else(|| bad(format!("region of {region_size} bytes cannot be mapped")))?;
        let size = file_size(fd, 0)?;
        if size != geo.memfd_len() {
            return Err(bad(format!(
                "memfd of {size} bytes, but a state of {region_size} bytes needs {}",
                geo.memfd_len()
            )));
        }
        let own = fd
            .try_clone_to_owned()
            .map_err(|e| SnapshotError::io("dup memfd", e))?;
        let mut written = true;
        let segment = Segment::adopt(own)
            .size(geo.len)
            .open_timeout(Duration::ZERO)
            .create_with(|payload| {
                // The control page: zeros (magic, `seq` and the reserved
                // words), then the config words after the magic.
                written = payload.zero(0, CONTROL_LEN as usize).is_ok();
                for (i, w) in geo.config_words().iter().enumerate() {
                    written &= payload.write(VERSION_OFF + 8 * i, w).is_ok();
                }
            })
            .map_err(|e| segment_error(&e))?;
        if !written || segment.len() != geo.len {
            return Err(bad("the segment's payload does not hold the geometry"));
        }
        Ok(Self { segment, geo })
    }

    /// Writes `bytes` at `offset` of the state (both areas); bytes beyond the
    /// state region are ignored.
    pub fn write(&self, offset: u64, bytes: &[u8]) {
        let region = self.geo.region as u64;
        let start = offset.min(region);
        let end = offset.saturating_add(bytes.len() as u64).min(region);
        // Both fit in usize: they are at most the region size.
        let (s, n) = (start as usize, (end - start) as usize);
        let src = &bytes[..n];
        let r = self.segment.payload();
        let _ = r.write_bytes(self.geo.work + s, src);
        let _ = r.write_bytes(self.geo.committed + s, src);
    }

    /// Writes the commit sequence `2 * generation`, then the magic.
    ///
    /// # Errors
    /// A generation beyond what a client can continue from.
    pub fn finish(self, generation: u64) -> Result<(), SnapshotError> {
        let r = self.segment.payload();
        let seq = generation
            .checked_mul(2)
            .filter(|&s| s <= MAX_SEQ)
            .ok_or_else(|| bad(format!("generation {generation} is out of range")))?;
        // Relaxed: published by the Release store of the magic below.
        r.atomic_u64(SEQ_OFF)
            .map_err(bad)?
            .store(seq, Ordering::Relaxed);
        // SYNC: Release, pairs with the Acquire fence after the load of the
        // magic in `control_block` (every open): publishes the state areas
        // and `seq`.
        r.atomic_u64(MAGIC_OFF)
            .map_err(bad)?
            .store(LIVE_MAGIC, Ordering::Release);
        Ok(())
    }
}

/// Initializes a fresh (all-zero) memfd and fills both areas with `fill` (a
/// restored state), with commit sequence `2 * generation`.
///
/// # Errors
/// A memfd of the wrong size.
pub fn initialize(
    fd: BorrowedFd<'_>,
    region_size: u64,
    generation: u64,
    fill: impl FnOnce(&mut dyn FnMut(u64, &[u8])),
) -> Result<(), SnapshotError> {
    let init = Initializer::new(fd, region_size)?;
    fill(&mut |off, bytes| init.write(off, bytes));
    init.finish(generation)
}

#[cfg(test)]
mod tests {
    use super::{
        CONTROL_LEN, DURABLE_OFF, DURABLE_SEQ_OFF, Geometry, HOST_LOCK_BYTE, LIVE_VERSION,
        MODE_OFF, REPLICA_OFF, REPLICATED_OFF, REPLICATED_SEQ_OFF, REQUESTS_OFF, SEQ_OFF,
        WANTED_OFF, WANTED_REPLICATED_OFF, memfd_size,
    };

    /// The layout of docs/protocol/shm-snapshot.md, "Live memfd".
    #[test]
    fn layout_matches_the_protocol_document() {
        assert_eq!(CONTROL_LEN, 4096);
        assert_eq!(SEQ_OFF, 128);
        assert_eq!((DURABLE_OFF, DURABLE_SEQ_OFF, MODE_OFF), (256, 264, 268));
        assert_eq!(
            (REPLICATED_OFF, REPLICATED_SEQ_OFF, REPLICA_OFF),
            (272, 280, 284)
        );
        assert_eq!((WANTED_OFF, REQUESTS_OFF, HOST_LOCK_BYTE), (384, 392, 4608));
        assert_eq!(WANTED_REPLICATED_OFF, 400);
        assert_eq!(LIVE_VERSION, 5);
        // R = 1: the segment header page, the control page, one page of
        // stamps, one page each for work and committed.
        assert_eq!(memfd_size(1), 5 * 4096);
        // R = 3 pages + 8 bytes: 4 stamps (one page), A = 4 pages.
        let g = Geometry::new(3 * 4096 + 8).unwrap();
        assert_eq!(
            (g.pages, g.stamps, g.work, g.committed, g.len),
            (4, 4096, 8192, 8192 + 16384, 8192 + 2 * 16384)
        );
        assert_eq!(memfd_size(3 * 4096 + 8), 4096 + 4096 + 4096 + 2 * 16384);
        // 1 GiB: 262144 stamps = 2 MiB of table.
        assert_eq!(memfd_size(1 << 30), 8192 + (2 << 20) + (2 << 30));
        assert_eq!(g.page_len(3), 8);
        assert_eq!(memfd_size(u64::MAX), 0);
        assert_eq!(
            g.config_words(),
            [5, 4096, 4, 3 * 4096 + 8, 4096, 8192, 8192 + 16384]
        );
    }
}
