//! The program's side of the live protocol: [`Client`] edits the work area
//! and commits it into the committed copy.

use std::ops::Range;
use std::os::fd::BorrowedFd;
use std::sync::{Mutex, TryLockError};

use core::sync::atomic::{AtomicU64, Ordering, fence}; // atomics-ok: views of the mapped memfd
use shm_segment::{Access, Mapping, Region}; // atomics-ok: views of the mmap'd memfd (Region hands out core atomics); modelled in tests/loom.rs

use super::layout::{Geometry, MAX_SEQ, PAGE, SEQ_OFF, map};
use crate::error::{ErrorKind, SnapshotError};
use crate::track::{TrackError, TrackErrorKind, Tracker};

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
pub(crate) fn copy_bytes(r: Region<'_>, from: usize, to: usize, len: usize) {
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
pub(crate) fn same_bytes(region: Region<'_>, a: usize, b: usize, len: usize) -> bool {
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
