//! The live memfd's layout: the control page, the geometry of the stamp
//! table and the two state areas, and mapping and initializing a memfd.

use std::os::fd::BorrowedFd;

use core::sync::atomic::Ordering; // atomics-ok: views of the mapped memfd
use shm_segment::{Access, Mapping}; // atomics-ok: views of the mmap'd memfd (Region hands out core atomics); modelled in tests/loom.rs

use crate::error::{ErrorKind, SnapshotError};

/// Magic at the start of the control page.
pub const LIVE_MAGIC: u64 = u64::from_le_bytes(*b"OUTLLIV2");
/// Length of the control page.
pub const CONTROL_LEN: u64 = 4096;
/// Largest commit sequence a client accepts at open: a larger one was
/// written by something else (and would overflow the next commits).
pub(crate) const MAX_SEQ: u64 = 1 << 62;
/// The page size of the generation table (and of the snapshot file's records).
pub const PAGE: u64 = 4096;
pub(crate) const SEQ_OFF: usize = 16;

/// `n` rounded up to whole pages, `None` on overflow (a region size read
/// from a memfd another process can write may be anything).
pub(crate) fn round(n: u64) -> Option<u64> {
    n.div_ceil(PAGE).checked_mul(PAGE)
}

/// Where the parts of the memfd are, for a state region of `region` bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub(crate) region: usize,
    /// State pages (the last may be partial).
    pub(crate) pages: usize,
    /// Offset of the page-generation table.
    pub(crate) gens: usize,
    pub(crate) work: usize,
    pub(crate) committed: usize,
    pub(crate) total: u64,
}

impl Geometry {
    pub(crate) fn new(region: u64) -> Option<Self> {
        let pages = region.div_ceil(PAGE);
        let table = round(pages.checked_mul(8)?)?;
        let area = round(region)?;
        let total = CONTROL_LEN
            .checked_add(table)?
            .checked_add(area.checked_mul(2)?)?;
        let work = CONTROL_LEN + table;
        Some(Self {
            region: usize::try_from(region).ok()?,
            pages: usize::try_from(pages).ok()?,
            gens: CONTROL_LEN as usize,
            work: usize::try_from(work).ok()?,
            committed: usize::try_from(work + area).ok()?,
            total: usize::try_from(total).ok().map(|_| total)?,
        })
    }

    /// Bytes of state page `p` (the last one may be short).
    pub(crate) fn page_len(&self, p: usize) -> usize {
        (self.region - p * PAGE as usize).min(PAGE as usize)
    }
}

/// Total memfd size for a state region of `region_size` bytes (0 if it
/// cannot be addressed).
#[must_use]
pub fn memfd_size(region_size: u64) -> u64 {
    Geometry::new(region_size).map_or(0, |g| g.total)
}

#[allow(clippy::needless_pass_by_value)] // used as a `map_err` function
pub(crate) fn bad(msg: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::new(ErrorKind::BadGeometry, msg)
}

pub(crate) fn map(
    fd: BorrowedFd<'_>,
    access: Access,
) -> Result<(Mapping, Geometry), SnapshotError> {
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
    if size < CONTROL_LEN {
        return Err(bad(format!(
            "memfd of {size} bytes is smaller than the control page"
        )));
    }
    let len = usize::try_from(size).map_err(|_| bad("memfd too large"))?;
    let m = Mapping::map(fd, 0, len, access).map_err(|e| bad(format!("map memfd: {e}")))?;
    let r = m.region();
    // Relaxed: magic and size are written once before the memfd is shared.
    let magic = r.load_u64(0, Ordering::Relaxed).map_err(bad)?;
    let region = r.load_u64(8, Ordering::Relaxed).map_err(bad)?;
    if magic != LIVE_MAGIC {
        return Err(SnapshotError::new(
            ErrorKind::Foreign,
            "memfd has no snapshot control page",
        ));
    }
    match Geometry::new(region) {
        Some(g) if region > 0 && g.total == size => Ok((m, g)),
        _ => Err(bad(format!(
            "memfd size {size} does not fit region size {region}"
        ))),
    }
}

/// Fills a fresh (all-zero) memfd of [`memfd_size`] bytes: the state is
/// written into both areas with [`Initializer::write`], then
/// [`Initializer::finish`] writes the control page. Until then the memfd has
/// no magic, so a half-initialized memfd is refused by [`Client::open`](super::Client::open) and
/// [`Host::open`](super::Host::open).
#[derive(Debug)]
pub struct Initializer {
    map: Mapping,
    geo: Geometry,
}

impl Initializer {
    /// Maps a fresh memfd for a state of `region_size` bytes.
    ///
    /// # Errors
    /// A memfd of the wrong size, or a region too large to address.
    pub fn new(fd: BorrowedFd<'_>, region_size: u64) -> Result<Self, SnapshotError> {
        let geo = Geometry::new(region_size)
            .filter(|_| region_size > 0)
            .ok_or_else(|| bad(format!("region of {region_size} bytes cannot be mapped")))?;
        let st = rustix::fs::fstat(fd).map_err(|e| SnapshotError::io("fstat memfd", e.into()))?;
        if u64::try_from(st.st_size).ok() != Some(geo.total) {
            return Err(bad(format!(
                "memfd of {} bytes, but a state of {region_size} bytes needs {}",
                st.st_size, geo.total
            )));
        }
        let len = usize::try_from(geo.total).map_err(|_| bad("region too large"))?;
        let map = Mapping::map(fd, 0, len, Access::ReadWrite)
            .map_err(|e| bad(format!("map memfd: {e}")))?;
        Ok(Self { map, geo })
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
        let r = self.map.region();
        let _ = r.write_bytes(self.geo.work + s, src);
        let _ = r.write_bytes(self.geo.committed + s, src);
    }

    /// Writes the control page: commit sequence `2 * generation`, the region
    /// size, then the magic.
    ///
    /// # Errors
    /// Never in practice (the control page is inside the checked mapping).
    pub fn finish(self, generation: u64) -> Result<(), SnapshotError> {
        let r = self.map.region();
        r.write(8, &(self.geo.region as u64)).map_err(bad)?;
        let seq = generation
            .checked_mul(2)
            .filter(|&s| s <= MAX_SEQ)
            .ok_or_else(|| bad(format!("generation {generation} is out of range")))?;
        // Relaxed: nobody else has the memfd yet (it is handed over later, which orders it).
        r.atomic_u64(SEQ_OFF)
            .map_err(bad)?
            .store(seq, Ordering::Relaxed);
        r.write(0, &LIVE_MAGIC).map_err(bad)?;
        Ok(())
    }
}

/// Writes the control page of a fresh (all-zero) memfd and fills both areas
/// with `fill` (a restored state), with commit sequence `2 * generation`.
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

/// The error for a commit sequence beyond [`MAX_SEQ`].
pub(crate) fn bad_sequence(s: u64) -> SnapshotError {
    SnapshotError::new(
        ErrorKind::BadSequence,
        format!(
            "commit sequence {s} is out of range (at most {MAX_SEQ}): written by something other than a client"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::{CONTROL_LEN, Geometry, SEQ_OFF, memfd_size};

    /// The layout of docs/protocol/shm-snapshot.md, "Live memfd".
    #[test]
    fn layout_matches_the_protocol_document() {
        assert_eq!((CONTROL_LEN, SEQ_OFF), (4096, 16));
        // R = 1: one page of stamps, one page each for work and committed.
        assert_eq!(memfd_size(1), 4 * 4096);
        // R = 3 pages + 8 bytes: 4 stamps (one page), A = 4 pages.
        let g = Geometry::new(3 * 4096 + 8).unwrap();
        assert_eq!(
            (g.pages, g.gens, g.work, g.committed),
            (4, 4096, 8192, 8192 + 16384)
        );
        assert_eq!(memfd_size(3 * 4096 + 8), 4096 + 4096 + 2 * 16384);
        // 1 GiB: 262144 stamps = 2 MiB of table.
        assert_eq!(memfd_size(1 << 30), 4096 + (2 << 20) + (2 << 30));
        assert_eq!(g.page_len(3), 8);
        assert_eq!(memfd_size(u64::MAX), 0);
    }
}
