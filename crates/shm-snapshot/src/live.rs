//! The client/host commit protocol on the live memfd.
//!
//! Layout of the memfd (all little-endian, see `docs/protocol/shm-snapshot.md`):
//! one 4096-byte control page (`magic` at 0, `region_size` at 8, the commit
//! sequence `seq` at 16), then the page-generation table (one `u64` per
//! 4096-byte page of the state: the commit that last changed it), then the
//! work area (`region_size` bytes, rounded up to 4096), then the committed
//! copy (same size).
//!
//! The client edits the work area freely and calls [`Client::commit`] at a
//! consistent point: it makes `seq` odd, stamps the dirty pages with the new
//! generation, copies them from the work area into the committed copy and
//! makes `seq` even again. That is wait-free (no loop waits for anyone). The
//! host maps the memfd read-only. [`Host::copy`] copies the whole committed
//! copy seqlock-style (kept only if `seq` was even and unchanged across it);
//! [`Host::copy_changed`] copies only the pages stamped after a generation the
//! host already has, and keeps each page only if its stamp did not move past
//! the target generation while it was copied. Either way a copy is exactly
//! one committed state.
//!
//! Instead of naming the dirty ranges, a client can let the kernel find them:
//! [`Client::track`] starts write-protect tracking of the work area
//! ([`crate::track`]) and [`Client::commit_tracked`] copies exactly the pages
//! written since the previous commit, with the same seqlock protocol.

use std::ops::Range;
use std::os::fd::BorrowedFd;
use std::sync::{Mutex, TryLockError};

use core::sync::atomic::{AtomicU64, Ordering, fence}; // atomics-ok: views of the mapped memfd
use shm_segment::{Access, Mapping, Region}; // atomics-ok: views of the mmap'd memfd (Region hands out core atomics); modelled in tests/loom.rs

use crate::error::{ErrorKind, SnapshotError};
use crate::track::{TrackError, TrackErrorKind, Tracker};

/// Magic at the start of the control page.
pub const LIVE_MAGIC: u64 = u64::from_le_bytes(*b"OUTLLIV2");
/// Length of the control page.
pub const CONTROL_LEN: u64 = 4096;
/// Largest commit sequence a client accepts at open: a larger one was
/// written by something else (and would overflow the next commits).
const MAX_SEQ: u64 = 1 << 62;
/// The page size of the generation table (and of the snapshot file's records).
pub const PAGE: u64 = 4096;
const SEQ_OFF: usize = 16;

/// `n` rounded up to whole pages, `None` on overflow (a region size read
/// from a memfd another process can write may be anything).
fn round(n: u64) -> Option<u64> {
    n.div_ceil(PAGE).checked_mul(PAGE)
}

/// Where the parts of the memfd are, for a state region of `region` bytes.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    region: usize,
    /// State pages (the last may be partial).
    pages: usize,
    /// Offset of the page-generation table.
    gens: usize,
    work: usize,
    committed: usize,
    total: u64,
}

impl Geometry {
    fn new(region: u64) -> Option<Self> {
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
    fn page_len(&self, p: usize) -> usize {
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
fn bad(msg: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::new(ErrorKind::BadGeometry, msg)
}

fn map(fd: BorrowedFd<'_>, access: Access) -> Result<(Mapping, Geometry), SnapshotError> {
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
/// no magic, so a half-initialized memfd is refused by [`Client::open`] and
/// [`Host::open`].
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

/// The program's side: edits the work area and commits.
///
/// Single writer: the work area must be written only through this client's
/// mapping ([`Client::work`]) by this process, and commits must not overlap
/// (they would interleave their `seq` stores).
#[derive(Debug)]
pub struct Client {
    /// Dirty tracking, when started (declared before `map`: unregistered first).
    tracking: Option<Mutex<Tracked>>,
    map: Mapping,
    geo: Geometry,
}

/// What [`Client::commit_tracked`] published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackedCommit {
    /// The new commit generation.
    pub generation: u64,
    /// Bytes copied into the committed copy: whole written pages, clipped to
    /// the state region (0 when nothing was written).
    pub bytes: u64,
}

/// The state of automatic dirty tracking.
#[derive(Debug)]
struct Tracked {
    tracker: Tracker,
    /// Byte ranges of the work area to copy at the next commit.
    dirty: Vec<Range<usize>>,
    /// A scan failed: pages may have been re-protected without being
    /// reported, so the next commit copies the whole work area.
    owe_full: bool,
    /// Fault injection: fail the next scan ([`Client::fail_next_scan`]).
    fail_next_scan: bool,
}

impl Client {
    /// Maps an initialized memfd read-write.
    ///
    /// # Errors
    /// Not a snapshot memfd, or the wrong size.
    ///
    /// Recovery of a previous client's death: if it died inside `commit`
    /// (`seq` odd), its work area held the complete state it was committing,
    /// so the commit is finished (every page where the work area and the
    /// committed copy differ is stamped and copied, and `seq` made even).
    /// Otherwise the work area is reset to the committed copy, discarding
    /// uncommitted edits. Either way the client starts from exactly one
    /// committed state, and work area and committed copy agree (which
    /// `commit`'s dirty ranges rely on).
    pub fn open(fd: BorrowedFd<'_>) -> Result<Self, SnapshotError> {
        let (map, geo) = map(fd, Access::ReadWrite)?;
        let client = Self {
            tracking: None,
            map,
            geo,
        };
        let seq = client.seq();
        // Relaxed: only the (single) client writes `seq`, and we are it now.
        let s = seq.load(Ordering::Relaxed);
        if s > MAX_SEQ {
            return Err(SnapshotError::new(
                ErrorKind::BadSequence,
                format!("commit sequence {s} is corrupt (no memfd commits 2^61 times)"),
            ));
        }
        let region = client.map.region();
        if s % 2 == 1 {
            // Finish the interrupted commit, page by page with the same
            // steps as `publish` after the odd store: stamp, fence, copy.
            // Pages it had already copied compare equal and keep their stamp.
            let generation = s.div_ceil(2);
            for (p, stamp) in client.gens().iter().enumerate() {
                let (o, n) = (p * PAGE as usize, geo.page_len(p));
                if !same_bytes(region, geo.work + o, geo.committed + o, n) {
                    stamp.store(generation, Ordering::Relaxed);
                    // SYNC: Release, pairs with the host's Acquire fence in
                    // `Host::copy_changed` (as in `publish`).
                    fence(Ordering::Release);
                    copy_bytes(region, geo.work + o, geo.committed + o, n);
                }
            }
            // SYNC: Release, pairs with the host's Acquire loads of `seq`.
            seq.store(s + 1, Ordering::Release);
        } else {
            copy_bytes(region, geo.committed, geo.work, geo.region);
        }
        Ok(client)
    }

    /// The page-generation table.
    fn gens(&self) -> &[AtomicU64] {
        self.map
            .region()
            .atomics_u64(self.geo.gens, self.geo.pages)
            .expect("checked at open")
    }

    /// Copies ranges of the work area into the committed copy, clipped to
    /// the state region.
    fn copy_ranges(&self, ranges: &[Range<usize>]) {
        let r = self.map.region();
        let g = self.geo;
        for range in ranges {
            let end = range.end.min(g.region);
            let start = range.start.min(end);
            copy_bytes(r, g.work + start, g.committed + start, end - start);
        }
    }

    /// The work area (the program's state).
    ///
    /// # Panics
    /// Never: the bounds were checked at open.
    #[must_use]
    pub fn work(&self) -> Region<'_> {
        self.map
            .region()
            .sub(self.geo.work, self.geo.region)
            .expect("checked at open")
    }

    /// The number of commits so far (including those before a restore).
    #[must_use]
    pub fn generation(&self) -> u64 {
        // Relaxed: only this client writes `seq`.
        self.seq().load(Ordering::Relaxed) / 2
    }

    fn seq(&self) -> &AtomicU64 {
        self.map
            .region()
            .atomic_u64(SEQ_OFF)
            .expect("checked at open")
    }

    /// Publishes the work area's bytes in `dirty` (byte ranges; everything
    /// changed since the last commit must be covered) as the next committed
    /// state. Wait-free: it copies the ranges and never waits for the host.
    /// Returns the new generation.
    ///
    /// With tracking started, this still copies only `dirty`; the pages the
    /// tracker saw written stay pending and are copied (again) by the next
    /// [`Client::commit_tracked`].
    pub fn commit(&self, dirty: &[Range<usize>]) -> u64 {
        self.publish(dirty)
    }

    /// Starts automatic dirty tracking of the work area (Linux 6.7 or later;
    /// see [`crate::track`]). Afterwards [`Client::commit_tracked`] commits
    /// without being told what changed.
    ///
    /// Edits made before this call and not yet committed are found by
    /// comparing the work area with the committed copy once (a read of both,
    /// proportional to the state size) and are included in the next tracked
    /// commit. Calling it again while tracking does nothing.
    ///
    /// # Errors
    /// [`TrackErrorKind::Unsupported`] when the kernel or the sandbox does not
    /// offer the mechanism: keep committing with named ranges.
    pub fn track(&mut self) -> Result<(), TrackError> {
        if self.tracking.is_some() {
            return Ok(());
        }
        let g = self.geo;
        let area = g.committed - g.work;
        let r = self.map.region();
        let work = r.sub(g.work, area).map_err(|_| {
            TrackError::new(
                TrackErrorKind::Unsupported,
                "work area outside the mapping",
                None,
            )
        })?;
        // Arm first, then compare: a write before arming shows in the
        // comparison, one after it in the first scan.
        let tracker = Tracker::new(work.as_ptr(), area)?;
        let mut dirty = Vec::new();
        for p in 0..g.pages {
            let (o, n) = (p * PAGE as usize, g.page_len(p));
            if !same_bytes(r, g.work + o, g.committed + o, n) {
                push_range(&mut dirty, o..o + n);
            }
        }
        self.tracking = Some(Mutex::new(Tracked {
            tracker,
            dirty,
            owe_full: false,
            fail_next_scan: false,
        }));
        Ok(())
    }

    /// Whether [`Client::track`] has started dirty tracking.
    #[must_use]
    pub fn is_tracking(&self) -> bool {
        self.tracking.is_some()
    }

    /// Publishes every page of the work area written since the previous
    /// commit as the next committed state, found by the dirty tracker (one
    /// `PAGEMAP_SCAN` walk that also re-arms it), then copied under the same
    /// seqlock as [`Client::commit`]. Never waits for the host or for another
    /// thread. Returns the new generation and the bytes copied.
    ///
    /// Only writes through this client's mapping are seen (see
    /// `docs/protocol/shm-snapshot.md`, "Dirty tracking").
    ///
    /// # Errors
    /// [`TrackErrorKind::NotTracking`] before [`Client::track`];
    /// [`TrackErrorKind::Busy`] when another thread is committing;
    /// [`TrackErrorKind::Failed`] when the scan failed. In each case nothing
    /// was committed; after a failed scan the next successful tracked commit
    /// copies the whole work area, and `commit(&[0..region_size])` is always
    /// a correct fallback.
    pub fn commit_tracked(&self) -> Result<TrackedCommit, TrackError> {
        let Some(tracking) = &self.tracking else {
            return Err(TrackError::new(
                TrackErrorKind::NotTracking,
                "tracking was not started",
                None,
            ));
        };
        let mut t = match tracking.try_lock() {
            Ok(t) => t,
            // A panic inside a commit leaves `owe_full` or the pending list
            // conservative (both only ever grow before the copy).
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                return Err(TrackError::new(
                    TrackErrorKind::Busy,
                    "another commit is in progress",
                    None,
                ));
            }
        };
        let t = &mut *t;
        let dirty = &mut t.dirty;
        let scanned = if std::mem::take(&mut t.fail_next_scan) {
            Err(rustix::io::Errno::IO)
        } else {
            t.tracker.collect(|r| push_range(dirty, r))
        };
        if let Err(e) = scanned {
            t.owe_full = true;
            return Err(TrackError::new(
                TrackErrorKind::Failed,
                "PAGEMAP_SCAN failed",
                Some(e),
            ));
        }
        let region = self.geo.region;
        let (generation, bytes) = if t.owe_full {
            (self.publish(std::slice::from_ref(&(0..region))), region)
        } else {
            let bytes = t
                .dirty
                .iter()
                .map(|r| r.end.min(region) - r.start.min(region))
                .sum();
            (self.publish(&t.dirty), bytes)
        };
        t.owe_full = false;
        t.dirty.clear();
        Ok(TrackedCommit {
            generation,
            bytes: bytes as u64,
        })
    }

    /// Makes the next [`Client::commit_tracked`] fail as if its scan had
    /// failed (tests of the recovery path).
    #[cfg(feature = "fault-injection")]
    pub fn fail_next_scan(&self) {
        if let Some(t) = &self.tracking {
            let mut t = t.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            t.fail_next_scan = true;
        }
    }

    /// Holds the tracked-commit lock until the returned guard is dropped, as
    /// a commit in another thread would (tests of [`TrackErrorKind::Busy`]).
    #[cfg(feature = "fault-injection")]
    #[must_use]
    pub fn hold_commit_lock(&self) -> Option<impl Drop + '_> {
        self.tracking
            .as_ref()
            .map(|t| t.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The commit: `seq` odd, stamp the pages of `dirty` with the new
    /// generation, copy `dirty` work → committed, `seq` even.
    fn publish(&self, dirty: &[Range<usize>]) -> u64 {
        let seq = self.seq();
        // Relaxed: only this client writes `seq`. Clamped: a value another
        // process scribbled there must not overflow the stores below (it was
        // checked at open; the memfd stays writable for others).
        let s = seq.load(Ordering::Relaxed).min(MAX_SEQ) & !1;
        let generation = s / 2 + 1;
        // SYNC: Release, pairs with the host's Acquire load of `seq`: a host
        // that sees this odd value sees every earlier commit whole.
        seq.store(s + 1, Ordering::Release);
        let gens = self.gens();
        let page = PAGE as usize;
        for r in dirty {
            let end = r.end.min(self.geo.region);
            let start = r.start.min(end);
            for stamp in &gens[start / page..end.div_ceil(page)] {
                // Relaxed: published by the fence below.
                stamp.store(generation, Ordering::Relaxed);
            }
        }
        // SYNC: Release fence: orders the odd store and the stamps before
        // every store of the copy below; pairs with the host's Acquire fences
        // in `Host::copy` (before its second load of `seq`) and in
        // `Host::copy_changed` (before it re-reads the stamps).
        fence(Ordering::Release);
        // The crash point sits between the two halves of the ranges, so a
        // kill there leaves the committed copy partly written.
        let (first, rest) = dirty.split_at(dirty.len() / 2);
        self.copy_ranges(first);
        crate::format::crash_point_client();
        self.copy_ranges(rest);
        // SYNC: Release, pairs with the host's Acquire load of `seq` in `Host::copy`:
        // a host that sees `s + 2` sees every byte of this copy.
        seq.store(s + 2, Ordering::Release);
        generation
    }
}

/// Appends `r` to `v`, merging it with the last range when adjacent.
fn push_range(v: &mut Vec<Range<usize>>, r: Range<usize>) {
    match v.last_mut() {
        Some(last) if last.end == r.start => last.end = r.end,
        _ => v.push(r),
    }
}

/// Copies `len` bytes of the mapping from offset `from` to offset `to`
/// (`from` and `to` congruent modulo 8): 8-byte Relaxed atomic loads and
/// stores in the aligned middle, byte copies at the edges. Ordering against the
/// host comes from the caller's seqlock.
fn copy_bytes(r: Region<'_>, from: usize, to: usize, len: usize) {
    let head = ((8 - from % 8) % 8).min(len);
    let words = (len - head) / 8;
    let tail = len - head - words * 8;
    let mut edge = [0u8; 8];
    if head > 0 {
        let _ = r.read_bytes(from, &mut edge[..head]);
        let _ = r.write_bytes(to, &edge[..head]);
    }
    if let (Ok(src), Ok(dst)) = (
        r.atomics_u64(from + head, words),
        r.atomics_u64(to + head, words),
    ) {
        for (d, s) in dst.iter().zip(src) {
            // Relaxed: published by the caller's Release store of `seq`.
            d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
    if tail > 0 {
        let o = head + words * 8;
        let _ = r.read_bytes(from + o, &mut edge[..tail]);
        let _ = r.write_bytes(to + o, &edge[..tail]);
    }
}

/// Whether `len` bytes at offsets `a` and `b` of the mapping are equal (both
/// 8-aligned). Relaxed loads: only the calling client writes either side.
fn same_bytes(region: Region<'_>, a: usize, b: usize, len: usize) -> bool {
    let words = len / 8;
    let (Ok(left), Ok(right)) = (region.atomics_u64(a, words), region.atomics_u64(b, words)) else {
        return false;
    };
    if left
        .iter()
        .zip(right)
        .any(|(l, r)| l.load(Ordering::Relaxed) != r.load(Ordering::Relaxed))
    {
        return false;
    }
    let (mut p, mut q) = ([0u8; 8], [0u8; 8]);
    let tail = len - words * 8;
    let _ = region.read_bytes(a + words * 8, &mut p[..tail]);
    let _ = region.read_bytes(b + words * 8, &mut q[..tail]);
    p == q
}

/// The host's side: a read-only mapping of the memfd.
#[derive(Debug)]
pub struct Host {
    map: Mapping,
    geo: Geometry,
}

/// State pages copied per batch by [`Host::copy_changed`] and
/// [`Host::read_after_exit`] (256 KiB).
const BATCH_PAGES: usize = 64;

impl Host {
    /// Maps an initialized memfd read-only.
    ///
    /// # Errors
    /// Not a snapshot memfd, or the wrong size.
    /// A commit sequence beyond what any client can reach ([`ErrorKind::BadSequence`]):
    /// a stray write, which must never reach a snapshot file.
    pub fn open(fd: BorrowedFd<'_>) -> Result<Self, SnapshotError> {
        let (map, geo) = map(fd, Access::ReadOnly)?;
        let host = Self { map, geo };
        host.checked_seq()?;
        Ok(host)
    }

    /// The state region size.
    #[must_use]
    pub fn region_size(&self) -> u64 {
        self.geo.region as u64
    }

    fn seq(&self) -> u64 {
        // SYNC: Acquire, pairs with the client's Release stores of `seq`
        // (both the odd and the even one).
        self.map
            .region()
            .load_u64(SEQ_OFF, Ordering::Acquire)
            .unwrap_or(0)
    }

    /// `seq`, refused if beyond the bound every client keeps ([`Client::open`]
    /// refuses more, and commits clamp to it): only a stray write puts it there.
    fn checked_seq(&self) -> Result<u64, SnapshotError> {
        let s = self.seq();
        if s > MAX_SEQ {
            return Err(bad_sequence(s));
        }
        Ok(s)
    }

    /// The latest committed generation.
    ///
    /// # Errors
    /// [`ErrorKind::BadSequence`]: the commit sequence is out of range.
    pub fn generation(&self) -> Result<u64, SnapshotError> {
        Ok(self.checked_seq()? / 2)
    }

    /// The generation of the program's last commit once no client can run
    /// any more: like [`Host::generation`], but a commit the program died
    /// inside counts (the next [`Client::open`] finishes it under this number,
    /// and [`Host::read_after_exit`] reads its state).
    ///
    /// # Errors
    /// [`ErrorKind::BadSequence`]: the commit sequence is out of range.
    pub fn generation_after_exit(&self) -> Result<u64, SnapshotError> {
        Ok(self.checked_seq()?.div_ceil(2))
    }

    /// Whether the last client died inside a commit (`seq` odd). Only
    /// meaningful once no client runs.
    #[must_use]
    pub fn died_in_commit(&self) -> bool {
        self.seq() % 2 == 1
    }

    /// Hands every page of the state of the program's last commit to
    /// `visit(page_index, bytes)`, in order, once no client can run any more
    /// (the program exited or was killed, and no other process maps the
    /// memfd writable); returns its generation.
    ///
    /// If the program died inside `commit` (`seq` odd), the committed copy
    /// is half written, but the work area holds the complete state that
    /// commit was publishing: it is what the next [`Client::open`] finishes
    /// the commit with, under the same generation. So the work area is read
    /// then, and this never gives up as [`Host::copy`] must while a client
    /// runs. Called while a client still runs, it may return a mix of two states.
    ///
    /// # Errors
    /// [`ErrorKind::BadSequence`] (nothing is visited) if the commit sequence
    /// is out of range; the first error of `visit`.
    pub fn read_after_exit<E: From<SnapshotError>>(
        &self,
        mut visit: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        let s = self.checked_seq()?;
        let from = if s % 2 == 1 {
            self.geo.work
        } else {
            self.geo.committed
        };
        let r = self.map.region();
        let mut buf = vec![0u8; PAGE as usize];
        for p in 0..self.geo.pages {
            let n = self.geo.page_len(p);
            let _ = r.read_bytes(from + p * PAGE as usize, &mut buf[..n]);
            visit(p as u64, &buf[..n])?;
        }
        Ok(s.div_ceil(2))
    }

    /// Copies the state of the program's last commit into `dst` once no
    /// client can run any more; see [`Host::read_after_exit`]. Returns its
    /// generation.
    ///
    /// # Errors
    /// [`ErrorKind::BadSequence`]: the commit sequence is out of range.
    pub fn copy_after_exit(&self, dst: &mut [u8]) -> Result<u64, SnapshotError> {
        let n = dst.len().min(self.geo.region);
        let dst = &mut dst[..n];
        self.read_after_exit(|p, bytes| {
            let o = usize::try_from(p).unwrap_or(usize::MAX) * PAGE as usize;
            if let Some(d) = dst.get_mut(o..o.saturating_add(bytes.len()).min(n)) {
                d.copy_from_slice(&bytes[..d.len()]);
            }
            Ok(())
        })
    }

    /// Copies one committed state into `dst` (`region_size` bytes) and returns
    /// its generation, or `None` if a commit overlapped each of `tries`
    /// attempts or the commit sequence is out of range.
    ///
    /// This reads the whole state; [`Host::copy_changed`] reads only what
    /// changed and is not starved by frequent commits.
    pub fn copy(&self, dst: &mut [u8], tries: usize) -> Option<u64> {
        let r = self.map.region();
        let n = dst.len().min(self.geo.region);
        for _ in 0..tries {
            // SYNC: Acquire, pairs with the Release store ending `Client::commit`.
            let s1 = r.load_u64(SEQ_OFF, Ordering::Acquire).ok()?;
            if s1 > MAX_SEQ {
                return None;
            }
            if s1 % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            r.read_bytes(self.geo.committed, &mut dst[..n]).ok()?;
            // SYNC: Acquire fence, pairs with the client's Release fence after
            // the odd store: if any byte read came from a later commit's copy,
            // the load below sees that commit's odd (or later) value.
            fence(Ordering::Acquire);
            // Relaxed: ordered by the fence above.
            let s2 = r.load_u64(SEQ_OFF, Ordering::Relaxed).ok()?;
            if s1 == s2 {
                return Some(s1 / 2);
            }
        }
        None
    }

    /// Hands to `visit(page_index, bytes)` every page of the state that
    /// changed after generation `since`, as of one complete commit `G`, and
    /// returns `Ok(Changed::Complete(G))`: laid over a copy of generation
    /// `since` in the order visited (a page may be visited more than once;
    /// the last visit wins), the pages make exactly state `G`. Returns
    /// `Ok(Changed::Nothing)` when nothing was committed after `since`, and
    /// `Ok(Changed::Conflict)` when commits kept rewriting pages as they were
    /// copied for [`COPY_PASSES`] passes (discard what was visited; retry).
    /// A commit sequence that is out of range ([`Changed::OutOfRange`]) or
    /// behind `since` ([`Changed::Backwards`]) was not written by the
    /// protocol: nothing is visited, and the stamps are not trusted.
    ///
    /// Each pass reads the page-generation table (8 bytes per 4096-byte
    /// page) and copies the pages stamped after the previous pass's target;
    /// a page a commit rewrote while it was copied is not visited, and is
    /// taken by the next pass, whose target is the newest commit then. So a
    /// client that keeps rewriting a few pages costs a few short passes, not
    /// a restart. Never writes the memfd.
    ///
    /// # Errors
    /// The first error of `visit` (nothing more is visited).
    pub fn copy_changed<E>(
        &self,
        since: u64,
        mut visit: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<Changed, E> {
        let r = self.map.region();
        // The Acquire load of `seq` (even: the end of commit G; odd: the
        // start of commit G+1, which the client also stores with Release)
        // makes the stamps and the copies of every commit up to G visible.
        let s = self.seq();
        if s > MAX_SEQ {
            return Ok(Changed::OutOfRange { seq: s });
        }
        let mut target = s / 2;
        if target < since {
            return Ok(Changed::Backwards { generation: target });
        }
        if target == since {
            return Ok(Changed::Nothing);
        }
        // Read-only mapping: the stamps are read with single atomic loads
        // (`Region` hands out atomic slices only for writable mappings).
        // Relaxed: ordered by the Acquire load of `seq` and by the Acquire
        // fence in `flush`.
        let gens = self.geo.gens;
        let stamp = |p: usize| {
            r.load_u64(gens + 8 * p, Ordering::Relaxed)
                .unwrap_or(u64::MAX)
        };
        let mut batch: Vec<usize> = Vec::with_capacity(BATCH_PAGES);
        let mut buf = vec![0u8; BATCH_PAGES * PAGE as usize];
        // Pages stamped in `(low, target]` are copied by this pass.
        let mut low = since;
        for _ in 0..COPY_PASSES {
            let mut missed = false;
            let mut flush = |batch: &mut Vec<usize>, target: u64| -> Result<bool, E> {
                for (k, &p) in batch.iter().enumerate() {
                    let n = self.geo.page_len(p);
                    let dst = &mut buf[k * PAGE as usize..k * PAGE as usize + n];
                    let _ = r.read_bytes(self.geo.committed + p * PAGE as usize, dst);
                }
                // SYNC: Acquire fence, pairs with the Release fence in
                // `Client::publish` between its stamps and its copy: if a byte
                // read above was stored by a commit after `target`, the re-read
                // stamp of that page below shows that commit's generation.
                fence(Ordering::Acquire);
                let mut all = true;
                for (k, &p) in batch.iter().enumerate() {
                    if stamp(p) > target {
                        // Rewritten while copied: the next pass takes it.
                        all = false;
                        continue;
                    }
                    let n = self.geo.page_len(p);
                    visit(p as u64, &buf[k * PAGE as usize..k * PAGE as usize + n])?;
                }
                batch.clear();
                Ok(all)
            };
            for p in 0..self.geo.pages {
                // A stale value is still at least the last stamp of a commit
                // up to `target` (the Acquire load of `seq`).
                let g = stamp(p);
                if g <= low {
                    continue;
                }
                if g > target {
                    // A later commit is rewriting this page: the next pass.
                    missed = true;
                    continue;
                }
                batch.push(p);
                if batch.len() == BATCH_PAGES && !flush(&mut batch, target)? {
                    missed = true;
                }
            }
            if !batch.is_empty() && !flush(&mut batch, target)? {
                missed = true;
            }
            if !missed {
                return Ok(Changed::Complete(target));
            }
            // Every page visited so far holds its newest version up to
            // `target`; what changed since is stamped above it.
            low = target;
            let mut s = self.seq();
            if s / 2 <= low {
                // A commit is under way: let it finish.
                std::thread::yield_now();
                s = self.seq();
            }
            if s > MAX_SEQ {
                return Ok(Changed::OutOfRange { seq: s });
            }
            if s / 2 < low {
                return Ok(Changed::Backwards { generation: s / 2 });
            }
            target = s / 2;
        }
        Ok(Changed::Conflict)
    }
}

/// Passes [`Host::copy_changed`] makes before it reports a conflict.
pub const COPY_PASSES: usize = 8;

/// What [`Host::copy_changed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changed {
    /// Every page changed after `since` was visited, as of this generation.
    Complete(u64),
    /// No commit after `since`: nothing was visited.
    Nothing,
    /// Commits kept rewriting pages as they were copied, for
    /// [`COPY_PASSES`] passes: discard what was visited and try again.
    Conflict,
    /// The commit sequence is beyond what any client reaches: a stray write.
    /// Discard what was visited.
    OutOfRange {
        /// The value found.
        seq: u64,
    },
    /// The committed generation is behind one the host already had: the
    /// sequence was rewritten. Discard what was visited; the page stamps
    /// no longer tell what changed.
    Backwards {
        /// The generation found.
        generation: u64,
    },
}

/// The error for a commit sequence beyond [`MAX_SEQ`].
fn bad_sequence(s: u64) -> SnapshotError {
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
