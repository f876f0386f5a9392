//! The program's side of the live protocol: [`Client`] edits the work area
//! and commits it into the committed copy; the commit itself is
//! [`RawClient`], generic over where the words live.
//!
//! # Protocol (the client's steps)
//!
//! Commit of generation `g = s / 2 + 1`, where `s` is the even `seq`:
//! store `seq = s + 1` (Release); store `g` into the stamp of every page the
//! dirty ranges touch (Relaxed); Release fence; copy the dirty ranges from
//! the work area into the committed copy (Relaxed); store `seq = s + 2`
//! (Release). Only the client writes any of these, and nothing waits for
//! the host. A client killed between two steps leaves `seq` odd, and the
//! next [`Client::open`] finishes that commit from the work area
//! ([`RawClient::recover`]). The host's side and the argument are in
//! [`super::host`] and `docs/protocol/shm-snapshot.md`.

use std::ops::Range;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, Mutex, OnceLock, TryLockError};
use std::time::Duration;

use shm_segment::{Access, Region, Segment};
use shm_sync::atomic::{Ordering, fence};

use super::copier::{self, Copier};
use super::durable::{Level, RawDurable, WaitError};
use super::layout::{self, CLIENT_LOCK_BYTE, Geometry, MAX_SEQ, SEQ_OFF};
use super::waiter::Waiter;
use super::words::WordsMut;
use crate::error::{ErrorKind, SnapshotError};
use crate::track::{TrackError, TrackErrorKind, Tracker};

/// The client's half of the protocol over any word storage: the real commit
/// and recovery code, which [`Client`] runs on the memfd and the loom models
/// (`tests/loom.rs`) run on heap words.
#[derive(Debug)]
pub(crate) struct RawClient<S> {
    words: S,
    geo: Geometry,
    /// Negative control of the loom models only: skip the Release fence
    /// between the stamps and the copy, which loom must then catch.
    #[cfg(shm_loom)]
    pub(crate) skip_fence: bool,
}

impl<S: WordsMut> RawClient<S> {
    /// The client of the payload in `words`, laid out as `geo`.
    ///
    /// `words` must hold at least `geo.len` bytes (checked against the
    /// mapping at open, or allocated so); an access past it panics in the
    /// storage (a bug, not a reaction to shared data).
    #[inline]
    pub(crate) fn new(words: S, geo: Geometry) -> Self {
        debug_assert!(words.len() >= geo.len);
        Self {
            words,
            geo,
            #[cfg(shm_loom)]
            skip_fence: false,
        }
    }

    /// `seq`. Relaxed: only the (single) client writes it.
    #[inline]
    fn seq(&self) -> u64 {
        self.words.load(SEQ_OFF)
    }

    /// The number of commits so far.
    pub(crate) fn generation(&self) -> u64 {
        self.seq() / 2
    }

    /// SYNC: Release fence: orders the odd store of `seq` and the stamps
    /// before every store of the copy after it; pairs with the host's Acquire
    /// fences in `RawHost::copy` (before its second load of `seq`) and in
    /// `RawHost::copy_changed` (before it re-reads the stamps).
    #[inline]
    #[cfg_attr(
        not(shm_loom),
        allow(clippy::unused_self, reason = "the knob exists only under loom")
    )]
    fn release_fence(&self) {
        #[cfg(shm_loom)]
        if self.skip_fence {
            return;
        }
        fence(Ordering::Release);
    }

    /// Starts a client's tenure. If the previous client died inside a
    /// commit (`seq` odd), its work area holds the complete state it was
    /// committing: the commit is finished page by page with the steps of
    /// [`RawClient::publish`] after the odd store (stamp, fence, copy), for
    /// every page where the work area and the committed copy differ (pages
    /// it had already copied compare equal and keep their stamp), and `seq`
    /// is made even. Otherwise the work area is reset to the committed copy.
    ///
    /// # Errors
    /// [`ErrorKind::BadSequence`]: `seq` beyond what any client reaches.
    pub(crate) fn recover(&self) -> Result<(), SnapshotError> {
        let g = self.geo;
        let s = self.seq();
        if s > MAX_SEQ {
            return Err(SnapshotError::new(
                ErrorKind::BadSequence,
                format!("commit sequence {s} is corrupt (no memfd commits 2^61 times)"),
            ));
        }
        if s.is_multiple_of(2) {
            self.words.copy(g.committed, g.work, g.region);
            return Ok(());
        }
        let generation = s.div_ceil(2);
        for p in 0..g.pages {
            let (o, n) = (g.page_start(p), g.page_len(p));
            if !self.words.same(g.work + o, g.committed + o, n) {
                // Relaxed: published by the fence below.
                self.words
                    .store(g.stamps + 8 * p, generation, Ordering::Relaxed);
                self.release_fence();
                self.words.copy(g.work + o, g.committed + o, n);
            }
        }
        // SYNC: Release, pairs with the host's Acquire fence after its loads of `seq`.
        self.words.store(SEQ_OFF, s + 1, Ordering::Release);
        Ok(())
    }

    /// Hands `found` the byte range of every state page where the work area
    /// and the committed copy differ.
    pub(crate) fn differing_pages(&self, mut found: impl FnMut(Range<usize>)) {
        let g = self.geo;
        for p in 0..g.pages {
            let (o, n) = (g.page_start(p), g.page_len(p));
            if !self.words.same(g.work + o, g.committed + o, n) {
                found(o..o + n);
            }
        }
    }

    /// The commit: `seq` odd, stamp the pages of `dirty` with the new
    /// generation, Release fence, copy `dirty` work → committed, `seq` even.
    /// Returns the new generation.
    pub(crate) fn publish(&self, dirty: &[Range<usize>]) -> u64 {
        self.publish_on(dirty, |_, _| false)
    }

    /// [`RawClient::publish`], with the copy offered first to `spread`,
    /// which either copies every range of `dirty` (running the given
    /// closure, which copies and, the first time, passes the crash point, on
    /// each chunk that falls to this thread) and returns `true` only once
    /// all of it is copied, or copies nothing and returns `false` (see
    /// [`Copier::copy`](super::copier::Copier::copy)).
    pub(crate) fn publish_on(
        &self,
        dirty: &[Range<usize>],
        spread: impl FnOnce(&[Range<usize>], &mut dyn FnMut(&[Range<usize>])) -> bool,
    ) -> u64 {
        let g = self.geo;
        // Relaxed (`seq`). Clamped: a value another process scribbled there
        // must not overflow the stores below (it was checked at open; the
        // memfd stays writable for others).
        let s = self.seq().min(MAX_SEQ) & !1;
        let generation = s / 2 + 1;
        // SYNC: Release, pairs with the host's Acquire fence after its load
        // of `seq`: a host that sees this odd value sees every earlier commit whole.
        self.words.store(SEQ_OFF, s + 1, Ordering::Release);
        for r in dirty {
            let end = r.end.min(g.region);
            let start = r.start.min(end);
            let (first, last) = (g.page_of(start), g.page_of(end + g.page - 1));
            // Relaxed: published by the fence below.
            self.words
                .fill(g.stamps + 8 * first, last - first, generation);
        }
        self.release_fence();
        // The crash point sits after this thread's first chunk (with helpers,
        // which may be copying theirs) or between the two halves of the
        // ranges, so a kill there leaves the committed copy partly written.
        let mut first = true;
        let spread = spread(dirty, &mut |own| {
            self.copy_ranges(own);
            if std::mem::take(&mut first) {
                crate::format::crash_point_client();
            }
        });
        if !spread {
            let (first, rest) = dirty.split_at(dirty.len() / 2);
            self.copy_ranges(first);
            crate::format::crash_point_client();
            self.copy_ranges(rest);
        }
        // SYNC: Release, pairs with the host's Acquire fence after its load
        // of `seq`: a host that sees `s + 2` sees every byte of this copy
        // (a helper's too: `spread` returned after locking the mutex each
        // helper unlocked after its copy).
        self.words.store(SEQ_OFF, s + 2, Ordering::Release);
        generation
    }

    /// Copies ranges of the work area into the committed copy, clipped to
    /// the state region. Relaxed: published by the caller's Release store of `seq`.
    fn copy_ranges(&self, ranges: &[Range<usize>]) {
        copier::copy_ranges(&self.words, self.geo, ranges);
    }
}

/// The program's side: edits the work area and commits.
///
/// Single writer: the work area must be written only through this client's
/// mapping ([`Client::work`]) by this process, by no thread while another
/// commits, and one `Client` at a time commits to a memfd. Commits from
/// several threads of one client are serialized: each waits for the one in
/// progress, so each gets its own generation (they would otherwise
/// interleave their `seq` stores). A client claims the memfd while it lives
/// (an OFD lock on [`CLIENT_LOCK_BYTE`](super::CLIENT_LOCK_BYTE), released
/// when it is dropped or its process dies): a second `Client::open` on the
/// same memfd, in this process or another, fails with
/// [`ErrorKind::Busy`].
#[derive(Debug)]
pub struct Client {
    /// Dirty tracking, when started (declared before `segment`: unregistered first).
    tracking: Option<Mutex<Tracked>>,
    /// The copy's helper threads, started at the first commit large enough
    /// to split (or by [`Client::set_copy_threads`]); dropping it stops and
    /// joins them (they share the segment, so its mapping outlives them).
    copier: OnceLock<Copier<Arc<Segment>>>,
    /// Threads a commit's copy may use, this one included.
    copy_threads: usize,
    /// The fewest bytes handed to one thread.
    part_min: usize,
    segment: Arc<Segment>,
    geo: Geometry,
    /// The waits, over the same mapping.
    waiter: Waiter,
    /// Held by each commit's copy: commits of several threads never overlap.
    commits: Mutex<()>,
    /// The client's claim on the memfd ([`CLIENT_LOCK_BYTE`]), released last.
    _claim: shm_segment::OfdLock,
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
    /// Not a snapshot memfd, or the wrong size; [`ErrorKind::Busy`]: another
    /// live client holds the memfd (see [`Client`]).
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
        let (segment, geo) = layout::open(fd, Access::ReadWrite)?;
        // Before the recovery below, which rewrites the work area: a second
        // client would discard the first one's uncommitted edits.
        let claim = shm_segment::OfdLock::try_acquire(fd, CLIENT_LOCK_BYTE)
            .map_err(|e| SnapshotError::new(ErrorKind::Io, format!("the client's claim: {e}")))?
            .ok_or_else(|| {
                SnapshotError::new(
                    ErrorKind::Busy,
                    "another Client commits to this memfd (it holds the client's claim)",
                )
            })?;
        let segment = Arc::new(segment);
        let client = Self {
            tracking: None,
            copier: OnceLock::new(),
            copy_threads: copier::cores(),
            part_min: copier::DEFAULT_PART_MIN,
            waiter: Waiter::new(segment.clone(), geo),
            segment,
            geo,
            commits: Mutex::new(()),
            _claim: claim,
        };
        client.raw().recover()?;
        Ok(client)
    }

    /// The segment's payload (the control page, the stamps and both areas).
    #[inline]
    fn payload(&self) -> Region<'_> {
        self.segment.payload()
    }

    /// The protocol over this client's mapping.
    #[inline]
    fn raw(&self) -> RawClient<Region<'_>> {
        // INVARIANT: the geometry was checked against the payload at open.
        RawClient::new(self.payload(), self.geo)
    }

    /// The work area (the program's state).
    ///
    /// # Panics
    /// Never: the bounds were checked at open.
    #[must_use]
    pub fn work(&self) -> Region<'_> {
        self.payload()
            .sub(self.geo.work, self.geo.region)
            .expect("checked at open")
    }

    /// The number of commits so far (including those before a restore).
    #[must_use]
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use shm_snapshot::host::{HostConfig, SnapshotHost};
    /// use shm_snapshot::live::Client;
    ///
    /// let dir = std::env::temp_dir().join(format!("client-generation-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let config = HostConfig { create: true, size: 4096, ..HostConfig::new(dir.join("s.snap")) };
    /// let host = SnapshotHost::open(config, None)?;
    /// let client = Client::open(host.memfd())?;
    /// assert_eq!(client.generation(), 0);
    /// client.commit(&[]);
    /// assert_eq!(client.generation(), 1);
    /// # drop((client, host));
    /// std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn generation(&self) -> u64 {
        self.raw().generation()
    }

    /// Publishes the work area's bytes in `dirty` (byte ranges; everything
    /// changed since the last commit must be covered) as the next committed
    /// state. It copies the ranges (on several threads when they are large
    /// enough, see [`Client::set_copy_threads`]) and never waits for the host.
    /// Returns the new generation.
    ///
    /// With tracking started, this still copies only `dirty`; the pages the
    /// tracker saw written stay pending and are copied (again) by the next
    /// [`Client::commit_tracked`].
    pub fn commit(&self, dirty: &[Range<usize>]) -> u64 {
        let g = self.publish(dirty);
        self.durable_raw().after_commit();
        g
    }

    /// The commit of `dirty`, its copy spread over the helper threads when
    /// it is large enough.
    fn publish(&self, dirty: &[Range<usize>]) -> u64 {
        let _one = self.commits.lock().unwrap_or_else(|poisoned| {
            // A commit panicked (a bug) and may have left `seq` odd with its
            // copy cut short: finish it from the work area first, as the
            // next client would after a crash.
            self.commits.clear_poison();
            let raw = self.raw();
            if raw.seq() % 2 == 1
                && let Err(e) = raw.recover()
            {
                tracing::warn!("cannot finish a commit cut short by a panic: {e}");
            }
            poisoned.into_inner()
        });
        let threads = self
            .copy_threads
            .min(copier::clipped_bytes(dirty, self.geo.region) / self.part_min.max(1));
        if threads < 2 {
            return self.raw().publish(dirty);
        }
        let helpers = self.copier.get_or_init(|| self.start_copier());
        self.raw()
            .publish_on(dirty, |d, lead| helpers.copy(d, threads, lead))
    }

    /// Starts the helper threads for [`Client::copy_threads`].
    fn start_copier(&self) -> Copier<Arc<Segment>> {
        Copier::start(self.segment.clone(), self.geo, self.copy_threads - 1)
    }

    /// Sets how many threads a commit's copy may use, the committing thread
    /// included (clamped to 1..=64). The default is the number of cores this
    /// process may run on (`std::thread::available_parallelism`: the CPU
    /// affinity mask, lowered by a cgroup CPU quota). 1 copies on the
    /// committing thread alone, as on a single core.
    ///
    /// With `threads > 1`, the client owns `threads - 1` helper threads,
    /// started here (by default at the first commit large enough to split)
    /// and parked on a futex between commits; they stop when the client is
    /// dropped or this is called again. A commit of `b` bytes uses
    /// `min(threads, b / part_min)` threads (see
    /// [`Client::set_copy_part_min`]); from two on, its ranges are split
    /// into chunks of about equal bytes (four per thread; a long run of
    /// dirty pages is cut at page boundaries), which the committing thread
    /// and the helpers claim one at a time. The committing thread never
    /// waits for a helper to start (one the scheduler has not run yet
    /// leaves its chunks to the others); it returns only after every chunk
    /// is copied, and no helper touches the memfd afterwards. A thread the
    /// system refuses to start is logged and done without. So a commit still
    /// never waits for the host, but it can wait for the end of a chunk one
    /// of its helpers is copying.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use shm_snapshot::host::{HostConfig, SnapshotHost};
    /// use shm_snapshot::live::Client;
    ///
    /// let dir = std::env::temp_dir().join(format!("copy-threads-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let config = HostConfig { create: true, size: 1 << 20, ..HostConfig::new(dir.join("s.snap")) };
    /// let host = SnapshotHost::open(config, None)?;
    /// let mut client = Client::open(host.memfd())?;
    /// client.set_copy_threads(2); // the committing thread and one helper
    /// client.set_copy_part_min(64 << 10); // split copies of 128 KiB or more
    /// assert_eq!(client.copy_threads(), 2);
    /// client.work().write_bytes(0, &[7; 1 << 20])?;
    /// assert_eq!(client.commit(&[0..1 << 20]), 1); // copied on both threads
    /// # drop((client, host));
    /// std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_copy_threads(&mut self, threads: usize) {
        self.copier = OnceLock::new();
        self.copy_threads = threads.clamp(1, copier::MAX_THREADS);
        if self.copy_threads > 1 {
            let _ = self.copier.set(self.start_copier());
        }
    }

    /// Threads a commit's copy may use, the committing thread included (see
    /// [`Client::set_copy_threads`]).
    #[must_use]
    pub fn copy_threads(&self) -> usize {
        self.copy_threads
    }

    /// Sets the fewest bytes worth handing to a thread of their own
    /// (default 256 KiB, at least 1): a commit's copy uses at most
    /// `bytes / part_min` threads, so a small commit is copied on the
    /// committing thread alone, sparing the wake-up of a helper that would
    /// cost about as much as it saves.
    pub fn set_copy_part_min(&mut self, part_min: usize) {
        self.part_min = part_min.max(1);
    }

    /// The durable-commit words over this client's mapping.
    #[inline]
    fn durable_raw(&self) -> RawDurable<Region<'_>> {
        RawDurable::new(self.payload())
    }

    /// The newest generation the host has made durable in FILE (its
    /// snapshot's fdatasync returned), as published in the memfd; 0 before
    /// the first host published one.
    #[must_use]
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use shm_snapshot::host::{HostConfig, SnapshotHost};
    /// use shm_snapshot::live::Client;
    ///
    /// let dir = std::env::temp_dir().join(format!("client-durable-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let config = HostConfig { create: true, size: 4096, ..HostConfig::new(dir.join("s.snap")) };
    /// let mut host = SnapshotHost::open(config, None)?;
    /// let client = Client::open(host.memfd())?;
    ///
    /// client.work().write_bytes(0, b"x")?;
    /// let g = client.commit(&[0..1]);
    /// assert_eq!(client.durable_generation(), 0); // committed, not yet in FILE
    /// host.tick(); // the host writes and fdatasyncs FILE
    /// assert_eq!(host.persisted(), g);
    /// assert_eq!(client.durable_generation(), g);
    /// # drop((client, host));
    /// std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn durable_generation(&self) -> u64 {
        self.waiter.durable_generation()
    }

    /// Waits until generation `generation` (committed already) is durable in
    /// the host's FILE; returns the durable generation (at least
    /// `generation`). Asks the host for a snapshot at once (group commit: one
    /// fdatasync covers every generation committed meanwhile), then sleeps
    /// on a futex, re-checking the host's liveness lock at least every 50 ms.
    /// A `timeout` of zero checks once.
    ///
    /// A durable word beyond the committed generation was not written by a
    /// host (a stray write) and is not believed.
    ///
    /// # Errors
    /// [`WaitError::Future`]: `generation` is not committed yet;
    /// [`WaitError::NoHost`] (at once): no host serves the memfd;
    /// [`WaitError::HostGone`]: the host died during the wait;
    /// [`WaitError::Timeout`]; [`WaitError::Lock`]: the liveness check failed.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::{Duration, Instant};
    /// use shm_snapshot::host::{HostConfig, SnapshotHost, Work};
    /// use shm_snapshot::live::{Client, WaitError};
    ///
    /// let dir = std::env::temp_dir().join(format!("wait-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let config = HostConfig { create: true, size: 4096, ..HostConfig::new(dir.join("s.snap")) };
    /// let mut host = SnapshotHost::open(config, None)?;
    /// let client = std::sync::Arc::new(Client::open(host.memfd())?);
    ///
    /// client.work().write_bytes(0, b"paid")?;
    /// let g = client.commit(&[0..4]);
    /// assert!(matches!(client.wait_durable(g, Duration::ZERO), Err(WaitError::Timeout { .. })));
    /// // Normally another process: the program waits while the host works.
    /// let waiter = std::thread::spawn({
    ///     let client = client.clone();
    ///     move || client.wait_durable(g, Duration::from_secs(10))
    /// });
    /// while host.persisted() < g {
    ///     if host.wait_for_work(Instant::now() + Duration::from_secs(1)) == Work::Waiters {
    ///         host.serve_waiters();
    ///     }
    /// }
    /// assert!(waiter.join().unwrap()? >= g);
    /// assert!(client.durable_generation() >= g);
    /// # drop(host);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn wait_durable(&self, generation: u64, timeout: Duration) -> Result<u64, WaitError> {
        self.wait_durable_level(generation, Level::Durable, timeout)
    }

    /// The newest generation the host has replicated (the upload of the
    /// base or segment of its replica holding it completed), as published in
    /// the memfd; 0 before the serving host replicated one (each host starts
    /// from 0) or when it has no replica.
    #[must_use]
    pub fn replicated_generation(&self) -> u64 {
        self.waiter.replicated_generation()
    }

    /// Waits until generation `generation` (committed already) is in the
    /// host's replica (feature `replica` of the host: `shm-restore
    /// --replica URL`), so that a restore from the store alone gives it or a
    /// later one; returns the replicated generation. Like
    /// [`Client::wait_durable`]: asks the host to snapshot at once (and its
    /// uploader to retry a failed upload at once), then sleeps on a futex,
    /// re-checking the host's liveness at least every 50 ms.
    ///
    /// # Errors
    /// As [`Client::wait_durable`], and [`WaitError::NoReplica`] (at once):
    /// the host serving the memfd has no replica configured.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use shm_snapshot::host::{HostConfig, SnapshotHost};
    /// use shm_snapshot::live::{Client, WaitError};
    ///
    /// let dir = std::env::temp_dir().join(format!("wait-replicated-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let config = HostConfig { create: true, size: 4096, ..HostConfig::new(dir.join("s.snap")) };
    /// let host = SnapshotHost::open(config, None)?; // no replica
    /// let client = Client::open(host.memfd())?;
    /// let g = client.commit(&[]);
    /// assert_eq!(client.wait_replicated(g, Duration::from_secs(10)), Err(WaitError::NoReplica));
    /// assert_eq!(client.replicated_generation(), 0);
    /// # drop((client, host));
    /// std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn wait_replicated(&self, generation: u64, timeout: Duration) -> Result<u64, WaitError> {
        self.wait_durable_level(generation, Level::Replicated, timeout)
    }

    /// Lets [`Client::wait_durable`] poll the durable word before it parks
    /// on the futex, for at most `cap` ([`Duration::ZERO`], the default:
    /// never poll, always park; 1 ms suits flash devices).
    ///
    /// Parking costs two cross-core wake-ups per durable commit (the
    /// client's of the host, the host's of the client). What one costs
    /// depends on how the hypervisor wakes an idle vCPU: 35-45 us each on
    /// one 2-vCPU virtual machine, as long as the `fdatasync` of a small
    /// commit on a flash device; on another, a thread parked on a futex
    /// woke 3.5-4 us (median; 16-18 us at the 90th percentile) after a
    /// thread coming out of an `fdatasync` woke it and ran on, as the host
    /// does. A polling waiter is found awake instead. It polls
    /// for at most 1.5 times its last wait plus 20 us, and not at all when
    /// its last wait took longer than the cap, so it never burns a core for
    /// a wait it cannot see end; and only while it is the client's sole
    /// waiting thread (several are served by one group commit, and need the
    /// cores to commit).
    ///
    /// The price is that core's time while it polls, and on a virtual
    /// machine whose host is shared a longer tail: measured on a 2-vCPU VM
    /// with 1-page commits, polling cut the 10th percentile by 60-100 us and
    /// the median in 8 of 12 alternating rounds, but raised the 90th
    /// percentile in half of them (a vCPU that burns its time is
    /// descheduled by the hypervisor more). Hence off by default; the
    /// snapshot benchmark reports both.
    pub fn set_wait_spin(&self, cap: Duration) {
        self.waiter.set_wait_spin(cap);
    }

    /// The cap set by [`Client::set_wait_spin`].
    #[must_use]
    pub fn wait_spin(&self) -> Duration {
        self.waiter.wait_spin()
    }

    /// [`Client::wait_durable`] or [`Client::wait_replicated`] by `level`
    /// ([`Waiter::wait_durable_level`], the one routine behind every wait).
    ///
    /// # Errors
    /// As those two.
    pub fn wait_durable_level(
        &self,
        generation: u64,
        level: Level,
        timeout: Duration,
    ) -> Result<u64, WaitError> {
        self.waiter.wait_durable_level(generation, level, timeout)
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
        let area = self.geo.area();
        let work = self.payload().sub(self.geo.work, area).map_err(|_| {
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
        self.raw().differing_pages(|r| push_range(&mut dirty, r));
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
        self.durable_raw().after_commit();
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
}

#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl Client {
    /// [`Client::wait_durable`] for async code (feature `tokio`): the
    /// blocking wait runs on tokio's blocking pool (`spawn_blocking`), so
    /// the runtime's workers never block. Its cost: one blocking-pool thread
    /// parked on the futex per pending wait (the pool grows to 512 threads
    /// by default, then waits queue), and a thread hand-off at each end (a
    /// few microseconds, next to the fdatasync being waited for). Dropping
    /// the future does not cancel the wait: its thread runs until the wait
    /// ends, at most `timeout`.
    ///
    /// # Errors
    /// As [`Client::wait_durable`]; [`WaitError::Runtime`] if the runtime
    /// shut down first.
    pub async fn wait_durable_async(
        self: std::sync::Arc<Self>,
        generation: u64,
        timeout: Duration,
    ) -> Result<u64, WaitError> {
        super::waiter::blocking(move || self.wait_durable(generation, timeout)).await
    }

    /// [`Client::wait_replicated`] on tokio's blocking pool, as
    /// [`Client::wait_durable_async`].
    ///
    /// # Errors
    /// As [`Client::wait_replicated`]; [`WaitError::Runtime`] if the
    /// blocking task did not finish.
    #[cfg(feature = "tokio")]
    pub async fn wait_replicated_async(
        self: std::sync::Arc<Self>,
        generation: u64,
        timeout: Duration,
    ) -> Result<u64, WaitError> {
        super::waiter::blocking(move || self.wait_replicated(generation, timeout)).await
    }
}

/// Appends `r` to `v`, merging it with the last range when adjacent.
fn push_range(v: &mut Vec<Range<usize>>, r: Range<usize>) {
    match v.last_mut() {
        Some(last) if last.end == r.start => last.end = r.end,
        _ => v.push(r),
    }
}
