//! The client/host commit protocol on the live memfd.
//!
//! Layout of the memfd (all little-endian, see `docs/protocol/shm-snapshot.md`):
//! one 4096-byte control page (`magic` at 0, `region_size` at 8, the commit
//! sequence `seq` at 16), then the work area (`region_size` bytes, rounded up
//! to 4096), then the committed copy (same size).
//!
//! The client edits the work area freely and calls [`Client::commit`] at a
//! consistent point: it makes `seq` odd, copies the dirty ranges of the work
//! area into the committed copy and makes `seq` even again. That is wait-free
//! (no loop waits for anyone). The host maps the memfd read-only and copies the
//! committed copy seqlock-style: it keeps a copy only if `seq` was even and
//! unchanged across it, so a copy is always exactly one committed state.
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
pub const LIVE_MAGIC: u64 = u64::from_le_bytes(*b"OUTLLIV1");
/// Length of the control page.
pub const CONTROL_LEN: u64 = 4096;
const SEQ_OFF: usize = 16;

fn round(n: u64) -> u64 {
    n.div_ceil(CONTROL_LEN) * CONTROL_LEN
}

/// Total memfd size for a state region of `region_size` bytes.
#[must_use]
pub fn memfd_size(region_size: u64) -> u64 {
    CONTROL_LEN + 2 * round(region_size)
}

#[allow(clippy::needless_pass_by_value)] // used as a `map_err` function
fn bad(msg: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::new(ErrorKind::BadGeometry, msg)
}

fn map(fd: BorrowedFd<'_>, access: Access) -> Result<(Mapping, u64), SnapshotError> {
    let st = rustix::fs::fstat(fd).map_err(|e| SnapshotError::io("fstat memfd", e.into()))?;
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
    if region == 0 || memfd_size(region) != size {
        return Err(bad(format!(
            "memfd size {size} does not fit region size {region}"
        )));
    }
    Ok((m, region))
}

/// Writes the control page of a fresh (all-zero) memfd and fills both areas
/// with `init` (a restored state), with commit sequence `2 * generation`.
///
/// # Errors
/// A memfd of the wrong size.
pub fn initialize(
    fd: BorrowedFd<'_>,
    region_size: u64,
    generation: u64,
    mut fill: impl FnMut(&mut dyn FnMut(u64, &[u8])),
) -> Result<(), SnapshotError> {
    let len = usize::try_from(memfd_size(region_size)).map_err(|_| bad("region too large"))?;
    let m =
        Mapping::map(fd, 0, len, Access::ReadWrite).map_err(|e| bad(format!("map memfd: {e}")))?;
    let r = m.region();
    let area = round(region_size);
    fill(&mut |off, bytes| {
        // Bounds: `off + bytes.len() <= region_size` is guaranteed by `restore`.
        let o = usize::try_from(CONTROL_LEN + off).unwrap_or(usize::MAX);
        let _ = r.write_bytes(o, bytes);
        let _ = r.write_bytes(o + usize::try_from(area).unwrap_or(0), bytes);
    });
    r.write(8, &region_size).map_err(bad)?;
    // Relaxed: nobody else has the memfd yet (it is handed over later, which orders it).
    r.atomic_u64(SEQ_OFF)
        .map_err(bad)?
        .store(2 * generation, Ordering::Relaxed);
    r.write(0, &LIVE_MAGIC).map_err(bad)?;
    Ok(())
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
    region: u64,
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
}

impl Client {
    /// Maps an initialized memfd read-write.
    ///
    /// # Errors
    /// Not a snapshot memfd, or the wrong size.
    ///
    /// Recovery of a previous client's death: if it died inside `commit`
    /// (`seq` odd), its work area held the complete state it was committing,
    /// so the commit is finished (the whole work area is copied and `seq`
    /// made even). Otherwise the work area is reset to the committed copy,
    /// discarding uncommitted edits. Either way the client starts from exactly
    /// one committed state, and work area and committed copy agree (which
    /// `commit`'s dirty ranges rely on).
    pub fn open(fd: BorrowedFd<'_>) -> Result<Self, SnapshotError> {
        let (map, region) = map(fd, Access::ReadWrite)?;
        let c = Self {
            tracking: None,
            map,
            region,
        };
        let len = usize::try_from(region).unwrap_or(0);
        let seq = c.seq();
        // Relaxed: only the (single) client writes `seq`, and we are it now.
        let s = seq.load(Ordering::Relaxed);
        if s % 2 == 1 {
            // Finish the interrupted commit: same steps as `commit` after the odd store.
            fence(Ordering::Release);
            c.copy_ranges(std::slice::from_ref(&(0..len)), true);
            // SYNC: Release, pairs with the host's Acquire load in `Host::copy`.
            seq.store(s + 1, Ordering::Release);
        } else {
            c.copy_ranges(std::slice::from_ref(&(0..len)), false);
        }
        Ok(c)
    }

    /// Copies ranges work → committed (`to_committed`) or committed → work.
    /// Ranges are clipped to the state region.
    fn copy_ranges(&self, ranges: &[Range<usize>], to_committed: bool) {
        let r = self.map.region();
        let region = usize::try_from(self.region).unwrap_or(0);
        let area = usize::try_from(round(self.region)).unwrap_or(0);
        let work = CONTROL_LEN as usize;
        let (from, to) = if to_committed {
            (work, work + area)
        } else {
            (work + area, work)
        };
        for range in ranges {
            let end = range.end.min(region);
            let start = range.start.min(end);
            copy_bytes(r, from + start, to + start, end - start);
        }
    }

    /// The work area (the program's state).
    ///
    /// # Panics
    /// Never: the bounds were checked at open.
    #[must_use]
    pub fn work(&self) -> Region<'_> {
        let len = usize::try_from(self.region).unwrap_or(0);
        self.map
            .region()
            .sub(CONTROL_LEN as usize, len)
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
        let area = usize::try_from(round(self.region)).unwrap_or(0);
        let r = self.map.region();
        let work = r.sub(CONTROL_LEN as usize, area).map_err(|_| {
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
        let page = CONTROL_LEN as usize;
        let region = usize::try_from(self.region).unwrap_or(0);
        let committed = CONTROL_LEN as usize + area;
        for off in (0..region).step_by(page) {
            let n = page.min(region - off);
            if !same_bytes(r, CONTROL_LEN as usize + off, committed + off, n) {
                push_range(&mut dirty, off..off + n);
            }
        }
        self.tracking = Some(Mutex::new(Tracked {
            tracker,
            dirty,
            owe_full: false,
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
        if let Err(e) = t.tracker.collect(|r| push_range(dirty, r)) {
            t.owe_full = true;
            return Err(TrackError::new(
                TrackErrorKind::Failed,
                "PAGEMAP_SCAN failed",
                Some(e),
            ));
        }
        let region = usize::try_from(self.region).unwrap_or(usize::MAX);
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

    /// The seqlock commit: `seq` odd, copy `dirty` work → committed, `seq` even.
    fn publish(&self, dirty: &[Range<usize>]) -> u64 {
        let seq = self.seq();
        // Relaxed: only this client writes `seq`.
        let s = seq.load(Ordering::Relaxed);
        // SYNC: Relaxed store + Release fence: the fence orders the odd store
        // before every store of the copy below; pairs with the host's Acquire
        // fence before its second load of `seq` in `Host::copy`.
        seq.store(s + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        // The crash point sits between the two halves of the ranges, so a
        // kill there leaves the committed copy partly written.
        let (first, rest) = dirty.split_at(dirty.len() / 2);
        self.copy_ranges(first, true);
        crate::format::crash_point_client();
        self.copy_ranges(rest, true);
        // SYNC: Release, pairs with the host's Acquire load of `seq` in `Host::copy`:
        // a host that sees `s + 2` sees every byte of this copy.
        seq.store(s + 2, Ordering::Release);
        s / 2 + 1
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
    region: u64,
}

impl Host {
    /// Maps an initialized memfd read-only.
    ///
    /// # Errors
    /// Not a snapshot memfd, or the wrong size.
    pub fn open(fd: BorrowedFd<'_>) -> Result<Self, SnapshotError> {
        let (map, region) = map(fd, Access::ReadOnly)?;
        Ok(Self { map, region })
    }

    /// The state region size.
    #[must_use]
    pub fn region_size(&self) -> u64 {
        self.region
    }

    /// The latest committed generation.
    #[must_use]
    pub fn generation(&self) -> u64 {
        // Acquire: pairs with the client's Release store in `commit`.
        self.map
            .region()
            .load_u64(SEQ_OFF, Ordering::Acquire)
            .unwrap_or(0)
            / 2
    }

    /// The generation of the program's last commit once no client can run
    /// any more: like [`Host::generation`], but a commit the program died
    /// inside counts (the next [`Client::open`] finishes it under this number,
    /// and [`Host::copy_after_exit`] copies its state).
    #[must_use]
    pub fn generation_after_exit(&self) -> u64 {
        // Acquire: as in `generation`.
        self.map
            .region()
            .load_u64(SEQ_OFF, Ordering::Acquire)
            .unwrap_or(0)
            .div_ceil(2)
    }

    /// Copies the state of the program's last commit into `dst` once no
    /// client can run any more (the program exited or was killed, and no
    /// other process maps the memfd writable), and returns its generation.
    ///
    /// If the program died inside `commit` (`seq` odd), the committed copy
    /// is half written, but the work area holds the complete state that
    /// commit was publishing: it is what the next [`Client::open`] finishes
    /// the commit with, under the same generation. So this copies the work
    /// area then, and never gives up as [`Host::copy`] must while a client runs.
    /// `None` only if the mapping cannot be read.
    ///
    /// Called while a client still runs, it may return a mix of two states.
    pub fn copy_after_exit(&self, dst: &mut [u8]) -> Option<u64> {
        let r = self.map.region();
        let area = usize::try_from(round(self.region)).unwrap_or(0);
        let n = dst.len().min(usize::try_from(self.region).unwrap_or(0));
        // Acquire: pairs with the last Release store of `seq` by the client
        // (its exit, observed by the caller through wait(), orders it anyway).
        let s = r.load_u64(SEQ_OFF, Ordering::Acquire).ok()?;
        let from = if s % 2 == 1 {
            CONTROL_LEN as usize
        } else {
            CONTROL_LEN as usize + area
        };
        r.read_bytes(from, &mut dst[..n]).ok()?;
        Some(s.div_ceil(2))
    }

    /// Copies one committed state into `dst` (`region_size` bytes) and returns
    /// its generation, or `None` if a commit overlapped each of `tries` attempts.
    pub fn copy(&self, dst: &mut [u8], tries: usize) -> Option<u64> {
        let r = self.map.region();
        let area = usize::try_from(round(self.region)).unwrap_or(0);
        let n = dst.len().min(usize::try_from(self.region).unwrap_or(0));
        for _ in 0..tries {
            // SYNC: Acquire, pairs with the Release store ending `Client::commit`.
            let s1 = r.load_u64(SEQ_OFF, Ordering::Acquire).ok()?;
            if s1 % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            r.read_bytes(CONTROL_LEN as usize + area, &mut dst[..n])
                .ok()?;
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
}
