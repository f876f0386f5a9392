//! The host's side of the live protocol: [`Host`] copies committed states
//! out of a read-only mapping; the copies themselves are [`RawHost`],
//! generic over where the words live.
//!
//! # Protocol (the host's steps)
//!
//! The host never writes. Every load is Relaxed (the only atomic load Rust
//! allows on a read-only mapping), and an Acquire fence after a load of
//! `seq` makes it synchronize with the client's Release store it read, as an
//! Acquire load would. [`Host::copy`] is a seqlock read: `seq` (even, else
//! retry), copy, Acquire fence, `seq` again, kept if unchanged.
//! [`Host::copy_changed`] copies only the pages stamped after a generation
//! the host already has, then re-reads each copied page's stamp after an
//! Acquire fence and keeps the page only if the stamp did not move past the
//! target generation. Why either copy is exactly one committed state is in
//! `docs/protocol/shm-snapshot.md`; `tests/loom.rs` runs this code on heap
//! words under loom, with a control per fence.

use std::os::fd::BorrowedFd;

use shm_segment::{Access, Region, Segment};
use shm_sync::atomic::{Ordering, fence};

use super::layout::{self, Geometry, MAX_SEQ, SEQ_OFF, bad_sequence};
use super::words::Words;
use crate::error::SnapshotError;

/// The host's half of the protocol over any word storage: the real copy
/// code, which [`Host`] runs on the memfd and the loom models run on heap
/// words. Never writes.
#[derive(Debug)]
pub(crate) struct RawHost<S> {
    words: S,
    geo: Geometry,
    /// Negative control of the loom models only: skip the Acquire fence
    /// before the re-check (of `seq` in `copy`, of the stamps in
    /// `copy_changed`), which loom must then catch.
    #[cfg(shm_loom)]
    pub(crate) skip_fence: bool,
}

impl<S: Words> RawHost<S> {
    /// The host of the payload in `words`, laid out as `geo` (`words` holds
    /// at least `geo.len` bytes, as for `RawClient::new`).
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

    /// `seq`, as if loaded with Acquire.
    #[inline]
    fn seq(&self) -> u64 {
        // Relaxed: the mapping is read-only; ordered by the fence below.
        let s = self.words.load(SEQ_OFF);
        // SYNC: Acquire fence, pairs with the client's Release stores of
        // `seq` (the odd and the even one, in `RawClient::publish` and
        // `RawClient::recover`): what the client wrote before the store this
        // load read is visible after it.
        fence(Ordering::Acquire);
        s
    }

    /// The Acquire fence before a re-check; see the uses.
    #[inline]
    #[cfg_attr(
        not(shm_loom),
        allow(clippy::unused_self, reason = "the knob exists only under loom")
    )]
    fn recheck_fence(&self) {
        #[cfg(shm_loom)]
        if self.skip_fence {
            return;
        }
        fence(Ordering::Acquire);
    }

    /// `seq`, refused if beyond the bound every client keeps
    /// ([`Client::open`](super::Client::open) refuses more, and commits
    /// clamp to it): only a stray write puts it there.
    pub(crate) fn checked_seq(&self) -> Result<u64, SnapshotError> {
        let s = self.seq();
        if s > MAX_SEQ {
            return Err(bad_sequence(s));
        }
        Ok(s)
    }

    /// See [`Host::died_in_commit`].
    pub(crate) fn died_in_commit(&self) -> bool {
        self.seq() % 2 == 1
    }

    /// See [`Host::read_after_exit`].
    pub(crate) fn read_after_exit<E: From<SnapshotError>>(
        &self,
        mut visit: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        let g = self.geo;
        let s = self.checked_seq()?;
        let from = if s % 2 == 1 { g.work } else { g.committed };
        let mut buf = vec![0u8; g.page];
        for p in 0..g.pages {
            let n = g.page_len(p);
            self.words.read(from + g.page_start(p), &mut buf[..n]);
            visit(p as u64, &buf[..n])?;
        }
        Ok(s.div_ceil(2))
    }

    /// See [`Host::copy`].
    pub(crate) fn copy(&self, dst: &mut [u8], tries: usize) -> Option<u64> {
        let n = dst.len().min(self.geo.region);
        for _ in 0..tries {
            // With the fence in `seq`: pairs with the Release store ending a commit.
            let s1 = self.seq();
            if s1 > MAX_SEQ {
                return None;
            }
            if s1 % 2 == 1 {
                shm_sync::thread::yield_now();
                continue;
            }
            self.words.read(self.geo.committed, &mut dst[..n]);
            // SYNC: Acquire fence, pairs with the client's Release fence after
            // the odd store: if any byte read came from a later commit's copy,
            // the load below sees that commit's odd (or later) value.
            self.recheck_fence();
            // Relaxed: ordered by the fence above.
            let s2 = self.words.load(SEQ_OFF);
            if s1 == s2 {
                return Some(s1 / 2);
            }
        }
        None
    }

    /// See [`Host::copy_changed`].
    pub(crate) fn copy_changed<E>(
        &self,
        since: u64,
        visit: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<Changed, E> {
        self.copy_changed_into(since, &mut Visit::new(visit))
    }

    /// [`Host::copy_changed`], each page copied into a slot `sink` hands
    /// out, then kept or discarded once its stamp is checked again.
    pub(crate) fn copy_changed_into<K: PageSink>(
        &self,
        since: u64,
        sink: &mut K,
    ) -> Result<Changed, K::Error> {
        let geo = self.geo;
        // `seq` as if loaded with Acquire (even: the end of commit G; odd:
        // the start of commit G+1, which the client also stores with
        // Release) makes the stamps and the copies of every commit up to G
        // visible.
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
        // Relaxed: ordered by the fence after the load of `seq` and by the
        // Acquire fence after each page's copy.
        let stamp = |p: usize| self.words.load(geo.stamps + 8 * p);
        // Pages stamped in `(low, target]` are copied by this pass.
        let mut low = since;
        for _ in 0..COPY_PASSES {
            let mut missed = false;
            for p in 0..geo.pages {
                // A stale value is still at least the last stamp of a commit
                // up to `target` (the fence after the load of `seq`).
                let g = stamp(p);
                if g <= low {
                    continue;
                }
                if g > target {
                    // A later commit is rewriting this page: the next pass.
                    missed = true;
                    continue;
                }
                let slot = sink.slot(p as u64, geo.page_len(p))?;
                self.words.read(geo.committed + geo.page_start(p), slot);
                // SYNC: Acquire fence, pairs with the Release fence in
                // `RawClient::publish` between its stamps and its copy: if a
                // byte read above was stored by a commit after `target`, the
                // re-read stamp below shows that commit's generation.
                self.recheck_fence();
                if stamp(p) > target {
                    // Rewritten while copied: the next pass takes it.
                    sink.discard();
                    missed = true;
                } else {
                    sink.keep()?;
                }
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
                shm_sync::thread::yield_now();
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

/// Where [`RawHost::copy_changed_into`] puts the pages it copies: it asks
/// for a slot, copies the page into it, re-checks the page's stamp, then
/// keeps or discards the slot. Slots never overlap in time: each is kept or
/// discarded before the next is asked for.
pub(crate) trait PageSink {
    /// What [`PageSink::slot`] and [`PageSink::keep`] fail with.
    type Error;
    /// Room for page `page`, `len` bytes long, which the copy overwrites whole.
    fn slot(&mut self, page: u64, len: usize) -> Result<&mut [u8], Self::Error>;
    /// The last slot holds its page as of the pass's target generation.
    fn keep(&mut self) -> Result<(), Self::Error>;
    /// The last slot's copy may be torn: forget it (a later pass copies the page again).
    fn discard(&mut self);
}

/// The sink of [`Host::copy_changed`]: each kept page is handed to a
/// closure from a one-page buffer.
struct Visit<F> {
    buf: Vec<u8>,
    /// The page in `buf`, and its length.
    page: u64,
    len: usize,
    to: F,
}

impl<F> Visit<F> {
    fn new(visit: F) -> Self {
        Self {
            buf: Vec::new(),
            page: 0,
            len: 0,
            to: visit,
        }
    }
}

impl<E, F: FnMut(u64, &[u8]) -> Result<(), E>> PageSink for Visit<F> {
    type Error = E;

    fn slot(&mut self, page: u64, len: usize) -> Result<&mut [u8], E> {
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        (self.page, self.len) = (page, len);
        Ok(&mut self.buf[..len])
    }

    fn keep(&mut self) -> Result<(), E> {
        (self.to)(self.page, &self.buf[..self.len])
    }

    fn discard(&mut self) {}
}

/// The host's side: a read-only mapping of the memfd.
#[derive(Debug)]
pub struct Host {
    segment: Segment,
    geo: Geometry,
}

impl Host {
    /// Maps an initialized memfd read-only.
    ///
    /// # Errors
    /// Not a snapshot memfd, or the wrong size.
    /// A commit sequence beyond what any client can reach ([`ErrorKind::BadSequence`](crate::ErrorKind::BadSequence)):
    /// a stray write, which must never reach a snapshot file.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use shm_snapshot::host::{HostConfig, SnapshotHost};
    /// use shm_snapshot::live::{Client, Host};
    ///
    /// let dir = std::env::temp_dir().join(format!("live-host-open-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let config = HostConfig { create: true, size: 8192, ..HostConfig::new(dir.join("s.snap")) };
    /// let snapshots = SnapshotHost::open(config, None)?;
    ///
    /// let client = Client::open(snapshots.memfd())?;
    /// client.work().write_bytes(0, b"state")?;
    /// client.commit(&[0..5]);
    ///
    /// let host = Host::open(snapshots.memfd())?;
    /// assert_eq!(host.region_size(), 8192);
    /// assert_eq!(host.generation()?, 1);
    /// # drop((host, client, snapshots));
    /// std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn open(fd: BorrowedFd<'_>) -> Result<Self, SnapshotError> {
        let (segment, geo) = layout::open(fd, Access::ReadOnly)?;
        let host = Self { segment, geo };
        host.raw().checked_seq()?;
        Ok(host)
    }

    /// The protocol over this host's mapping.
    #[inline]
    fn raw(&self) -> RawHost<Region<'_>> {
        // INVARIANT: the geometry was checked against the payload at open.
        RawHost::new(self.segment.payload(), self.geo)
    }

    /// The state region size.
    #[must_use]
    pub fn region_size(&self) -> u64 {
        self.geo.region as u64
    }

    /// The latest committed generation.
    ///
    /// # Errors
    /// [`ErrorKind::BadSequence`](crate::ErrorKind::BadSequence): the commit sequence is out of range.
    pub fn generation(&self) -> Result<u64, SnapshotError> {
        Ok(self.raw().checked_seq()? / 2)
    }

    /// The generation of the program's last commit once no client can run
    /// any more: like [`Host::generation`], but a commit the program died
    /// inside counts (the next [`Client::open`](super::Client::open) finishes it under this number,
    /// and [`Host::read_after_exit`] reads its state).
    ///
    /// # Errors
    /// [`ErrorKind::BadSequence`](crate::ErrorKind::BadSequence): the commit sequence is out of range.
    pub fn generation_after_exit(&self) -> Result<u64, SnapshotError> {
        Ok(self.raw().checked_seq()?.div_ceil(2))
    }

    /// Whether the last client died inside a commit (`seq` odd). Only
    /// meaningful once no client runs.
    #[must_use]
    pub fn died_in_commit(&self) -> bool {
        self.raw().died_in_commit()
    }

    /// Hands every page of the state of the program's last commit to
    /// `visit(page_index, bytes)`, in order, once no client can run any more
    /// (the program exited or was killed, and no other process maps the
    /// memfd writable); returns its generation.
    ///
    /// If the program died inside `commit` (`seq` odd), the committed copy
    /// is half written, but the work area holds the complete state that
    /// commit was publishing: it is what the next [`Client::open`](super::Client::open) finishes
    /// the commit with, under the same generation. So the work area is read
    /// then, and this never gives up as [`Host::copy`] must while a client
    /// runs. Called while a client still runs, it may return a mix of two states.
    ///
    /// # Errors
    /// [`ErrorKind::BadSequence`](crate::ErrorKind::BadSequence) (nothing is visited) if the commit sequence
    /// is out of range; the first error of `visit`.
    pub fn read_after_exit<E: From<SnapshotError>>(
        &self,
        visit: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        self.raw().read_after_exit(visit)
    }

    /// Copies the state of the program's last commit into `dst` once no
    /// client can run any more; see [`Host::read_after_exit`]. Returns its
    /// generation.
    ///
    /// # Errors
    /// [`ErrorKind::BadSequence`](crate::ErrorKind::BadSequence): the commit sequence is out of range.
    pub fn copy_after_exit(&self, dst: &mut [u8]) -> Result<u64, SnapshotError> {
        let n = dst.len().min(self.geo.region);
        let dst = &mut dst[..n];
        let page = self.geo.page;
        self.read_after_exit(|p, bytes| {
            let o = usize::try_from(p)
                .unwrap_or(usize::MAX)
                .saturating_mul(page);
            if let Some(d) = dst.get_mut(o..o.saturating_add(bytes.len()).min(n)) {
                d.copy_from_slice(&bytes[..d.len()]);
            }
            Ok(())
        })
    }

    /// Copies the state of the program's last commit into `dst` once no
    /// client can run any more; see [`Host::read_after_exit`]. Returns its
    /// generation.
    ///
    /// # Errors
    /// [`ErrorKind::BadSequence`](crate::ErrorKind::BadSequence): the commit sequence is out of range.
    pub fn copy(&self, dst: &mut [u8], tries: usize) -> Option<u64> {
        self.raw().copy(dst, tries)
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
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use shm_snapshot::host::{HostConfig, SnapshotHost};
    /// use shm_snapshot::live::{Changed, Client, Host};
    ///
    /// let dir = std::env::temp_dir().join(format!("live-host-changed-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let config = HostConfig { create: true, size: 4 * 4096, ..HostConfig::new(dir.join("s.snap")) };
    /// let snapshots = SnapshotHost::open(config, None)?;
    /// let client = Client::open(snapshots.memfd())?;
    /// let host = Host::open(snapshots.memfd())?;
    ///
    /// client.work().write_bytes(2 * 4096, b"only this page")?;
    /// client.commit(&[2 * 4096..2 * 4096 + 14]);
    ///
    /// let mut pages = Vec::new();
    /// let changed = host.copy_changed(0, |offset, bytes| {
    ///     if bytes.windows(14).any(|w| w == b"only this page") {
    ///         pages.push(offset);
    ///     }
    ///     Ok::<(), std::convert::Infallible>(())
    /// })?;
    /// assert_eq!(changed, Changed::Complete(1));
    /// assert_eq!(pages.len(), 1);
    /// assert_eq!(host.copy_changed(1, |_, _| Ok::<(), std::convert::Infallible>(()))?, Changed::Nothing);
    /// # drop((host, client, snapshots));
    /// std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn copy_changed<E>(
        &self,
        since: u64,
        visit: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<Changed, E> {
        self.raw().copy_changed(since, visit)
    }

    /// [`Host::copy_changed`] into a [`PageSink`]: each page is copied
    /// straight into the slot the sink hands out (the snapshot writer's
    /// record for it), not through a buffer of its own.
    pub(crate) fn copy_changed_into<K: PageSink>(
        &self,
        since: u64,
        sink: &mut K,
    ) -> Result<Changed, K::Error> {
        self.raw().copy_changed_into(since, sink)
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
