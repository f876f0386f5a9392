//! Durable commits: the host publishes the newest generation whose
//! snapshot's fdatasync returned, and clients wait for it on a futex.
//!
//! # Protocol
//!
//! Shared words (payload offsets of the control page; `layout.rs`):
//! `durable` (`u64`, 256) and `durable_seq` (`u32` futex word, 264) and
//! `mode` (`u32`, 268) are written only by the host; `wanted` (`u64`, 384)
//! and `requests` (`u32` futex word, 392) by clients (and `requests` by the
//! host's own [`Waker`]). The host's liveness is an OFD lock on memfd byte
//! [`HOST_LOCK_BYTE`](super::layout::HOST_LOCK_BYTE), which the kernel drops
//! when the host dies.
//!
//! * **Publish** (host, [`RawDurable::publish`]) after the snapshot of
//!   generation `G` was committed to FILE (its fdatasync returned): store
//!   `durable = G` (Release), then `durable_seq += 1` (Release), then
//!   `FUTEX_WAKE` every sleeper on `durable_seq`.
//! * **Wait** (client, [`RawDurable::wait_step`]): load `durable_seq`
//!   (Acquire) as `s`, then `durable` (Acquire); if `durable >= G` done,
//!   else `FUTEX_WAIT(durable_seq, s)`. Message passing: if the load of
//!   `durable_seq` read the host's bump, the Acquire makes the `durable`
//!   stored before it visible; so a waiter that saw an old `durable` saw an
//!   old `durable_seq`, and its `FUTEX_WAIT` either finds the word changed
//!   (returns at once) or is queued before the bump's `FUTEX_WAKE` (the
//!   kernel orders the compare and the wake under its bucket lock).
//! * **Request** (client, [`RawDurable::request`]): `wanted = max(wanted,
//!   G)`, then `requests += 1` (Release), then `FUTEX_WAKE(requests)`. The
//!   host ([`RawDurable::requests`] then [`RawDurable::wanted`], then
//!   `FUTEX_WAIT(requests, seen)`) follows the same pattern in the other
//!   direction: a host that missed the new `wanted` loaded an old `requests`.
//! * **Wake on commit** (`mode` bit 0): a continuous host (interval 0) sets
//!   it; then every commit bumps `requests` and wakes the host after its
//!   final store of `seq` (always-wake: no sleeper count, so no store-load
//!   pairing is needed; the cost is one `FUTEX_WAKE` syscall per commit,
//!   only in that mode). Otherwise a commit pays one Relaxed load of `mode`.
//!
//! What a crash leaves: a host killed before its fdatasync returned
//! published nothing (the generation is not claimed durable); killed between
//! the fdatasync and the store of `durable`, FILE holds more than claimed
//! (harmless); killed after the store but before the wake, sleepers notice
//! the lock's release within 50 ms ([`HostGone`](super::WaitError::HostGone)).
//! A client killed in a request leaves `wanted` raised: the host takes one
//! snapshot early.

use std::time::Duration;

use shm_sync::atomic::Ordering;

use super::layout::{
    DURABLE_OFF, DURABLE_SEQ_OFF, MODE_OFF, REQUESTS_OFF, WAKE_ON_COMMIT, WANTED_OFF,
};
use super::words::Control;

/// Both halves of the durable-commit protocol over any storage of the
/// control words: the real code, which [`super::Client`] and
/// [`super::Publisher`] run on the memfd and the loom models on heap words.
#[derive(Debug)]
pub(crate) struct RawDurable<C> {
    ctl: C,
    /// Negative control of the loom models only: the host skips the bump of
    /// `durable_seq` after storing `durable`, which loom must catch.
    #[cfg(shm_loom)]
    pub(crate) skip_bump: bool,
}

impl<C: Control> RawDurable<C> {
    pub(crate) fn new(ctl: C) -> Self {
        Self {
            ctl,
            #[cfg(shm_loom)]
            skip_bump: false,
        }
    }

    /// `durable`. SYNC: Acquire, pairs with the Release store in `publish`.
    #[inline]
    pub(crate) fn durable(&self) -> u64 {
        self.ctl.load_u64(DURABLE_OFF, Ordering::Acquire)
    }

    /// The client asks the host for generation `generation` (group commit:
    /// the host snapshots at once rather than at its next tick).
    pub(crate) fn request(&self, generation: u64) {
        // Relaxed: published by the Release bump of `requests` below.
        self.ctl
            .fetch_max_u64(WANTED_OFF, generation, Ordering::Relaxed);
        self.bump_requests();
    }

    /// `requests += 1` and wake the host.
    #[inline]
    fn bump_requests(&self) {
        // SYNC: Release, pairs with the host's Acquire load of `requests` in
        // `requests()`: a host that sees the bump sees `wanted` and `seq`
        // stored before it.
        self.ctl.fetch_add_u32(REQUESTS_OFF, 1, Ordering::Release);
        self.ctl.futex_wake(REQUESTS_OFF);
    }

    /// After a commit: wakes the host if it asked for every commit.
    #[inline]
    pub(crate) fn after_commit(&self) {
        // Relaxed: the host sets the mode before the program starts (or a
        // restarted host sets it while it runs, seen a little later); the
        // commit itself is published by the Release bump in `bump_requests`.
        if self.ctl.load_u32(MODE_OFF, Ordering::Relaxed) & WAKE_ON_COMMIT != 0 {
            self.bump_requests();
        }
    }

    /// One step of a wait for `generation`: `Some(durable)` once it is at
    /// least `generation`, else sleeps on `durable_seq` (at most `timeout`;
    /// `None`: until woken) and checks once more.
    pub(crate) fn wait_step(&self, generation: u64, timeout: Option<Duration>) -> Option<u64> {
        // SYNC: Acquire, pairs with the Release bump in `publish`: if this
        // reads the bump, the `durable` stored before it is visible below.
        let seen = self.ctl.load_u32(DURABLE_SEQ_OFF, Ordering::Acquire);
        let d = self.durable();
        if d >= generation {
            return Some(d);
        }
        self.ctl.futex_wait(DURABLE_SEQ_OFF, seen, timeout);
        let d = self.durable();
        (d >= generation).then_some(d)
    }

    /// The host: `generation` is durable in FILE (its fdatasync returned).
    pub(crate) fn publish(&self, generation: u64) {
        // SYNC: Release, pairs with the clients' Acquire loads of `durable`.
        self.ctl
            .store_u64(DURABLE_OFF, generation, Ordering::Release);
        #[cfg(shm_loom)]
        if self.skip_bump {
            self.ctl.futex_wake(DURABLE_SEQ_OFF);
            return;
        }
        // SYNC: Release, pairs with the Acquire load of `durable_seq` in
        // `wait_step`: orders the store of `durable` before the bump.
        self.ctl
            .fetch_add_u32(DURABLE_SEQ_OFF, 1, Ordering::Release);
        self.ctl.futex_wake(DURABLE_SEQ_OFF);
    }

    /// The host sets or clears `wake_on_commit`.
    pub(crate) fn set_wake_on_commit(&self, on: bool) {
        // Relaxed: a hint; clients load it Relaxed (see `after_commit`).
        self.ctl.store_u32(
            MODE_OFF,
            if on { WAKE_ON_COMMIT } else { 0 },
            Ordering::Relaxed,
        );
    }

    /// The host: `requests`, loaded before it looks for work.
    /// SYNC: Acquire, pairs with the Release bump in `bump_requests`.
    #[inline]
    pub(crate) fn requests(&self) -> u32 {
        self.ctl.load_u32(REQUESTS_OFF, Ordering::Acquire)
    }

    /// The host: `wanted` (after `requests()`).
    #[inline]
    pub(crate) fn wanted(&self) -> u64 {
        // Relaxed: ordered by the Acquire load of `requests` before it.
        self.ctl.load_u64(WANTED_OFF, Ordering::Relaxed)
    }

    /// The host sleeps until `requests` moves from `seen` (at most `timeout`).
    pub(crate) fn sleep(&self, seen: u32, timeout: Option<Duration>) {
        self.ctl.futex_wait(REQUESTS_OFF, seen, timeout);
    }

    /// The host's waker: bumps `requests` and wakes the host.
    pub(crate) fn interrupt(&self) {
        self.bump_requests();
    }
}

/// Why [`Client::wait_durable`](super::Client::wait_durable) returned without
/// the generation being durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The generation was not committed yet: no snapshot can hold it.
    #[error("generation {requested} is not committed yet (the last commit is {committed})")]
    Future {
        /// The generation asked for.
        requested: u64,
        /// The newest committed generation.
        committed: u64,
    },
    /// The timeout passed before the generation became durable.
    #[error("generation {requested} is not durable yet (durable: {durable})")]
    Timeout {
        /// The generation asked for.
        requested: u64,
        /// The durable generation at the end of the wait.
        durable: u64,
    },
    /// No host serves this memfd (nobody holds its liveness lock).
    #[error("no snapshot host serves this memfd")]
    NoHost,
    /// The host died (released its liveness lock) during the wait.
    #[error("the snapshot host went away during the wait")]
    HostGone,
    /// Checking the host's liveness lock failed.
    #[error("checking the snapshot host's liveness lock: {0}")]
    Lock(rustix::io::Errno),
    /// The async form's blocking task did not finish (its runtime shut down).
    #[error("the waiting task did not finish: {0}")]
    Runtime(String),
}

/// The host's side of durable commits on one memfd: its liveness lock and a
/// small writable mapping of the control page (the state stays mapped
/// read-only in [`super::Host`]).
#[derive(Debug)]
pub struct Publisher {
    control: std::sync::Arc<shm_segment::Mapping>,
    /// Held for the host's lifetime; the kernel drops it when the host dies.
    _lock: shm_segment::OfdLock,
    interrupted: std::sync::Arc<shm_sync::atomic::AtomicBool>,
}

/// Wakes [`Publisher::sleep`] (the host's `wait_for_work`) from another
/// thread; cloneable and `Send`.
#[derive(Debug, Clone)]
pub struct Waker {
    control: std::sync::Arc<shm_segment::Mapping>,
    interrupted: std::sync::Arc<shm_sync::atomic::AtomicBool>,
}

/// The control page's region of a mapping of the first [`CONTROL_MAP_LEN`]
/// bytes (checked at map time).
fn control_region(map: &shm_segment::Mapping) -> shm_segment::Region<'_> {
    map.region()
        .sub(
            shm_segment::header::DATA_OFFSET,
            super::CONTROL_LEN as usize,
        )
        .expect("mapped CONTROL_MAP_LEN bytes")
}

use super::layout::CONTROL_MAP_LEN;

impl Publisher {
    /// Takes the host's liveness lock on the memfd (already validated by
    /// [`super::Host::open`]) and maps its control page writable.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io): another live host holds the
    /// lock, or the lock or the mapping failed.
    pub fn open(fd: std::os::fd::BorrowedFd<'_>) -> Result<Self, crate::SnapshotError> {
        use crate::{ErrorKind, SnapshotError};
        let control =
            shm_segment::Mapping::map(fd, 0, CONTROL_MAP_LEN, shm_segment::Access::ReadWrite)
                .map_err(|e| {
                    SnapshotError::new(ErrorKind::Io, format!("map the control page: {e}"))
                })?;
        let lock = shm_segment::OfdLock::try_acquire(fd, super::HOST_LOCK_BYTE)
            .map_err(|e| {
                SnapshotError::new(ErrorKind::Io, format!("the host's liveness lock: {e}"))
            })?
            .ok_or_else(|| {
                SnapshotError::new(
                    ErrorKind::Io,
                    "another snapshot host serves this memfd (it holds the liveness lock)",
                )
            })?;
        Ok(Self {
            control: std::sync::Arc::new(control),
            _lock: lock,
            interrupted: std::sync::Arc::default(),
        })
    }

    fn raw(&self) -> RawDurable<shm_segment::Region<'_>> {
        RawDurable::new(control_region(&self.control))
    }

    /// Publishes `generation` as durable (its snapshot's fdatasync returned)
    /// and wakes every waiter.
    pub fn publish(&self, generation: u64) {
        self.raw().publish(generation);
    }

    /// The published durable generation.
    #[must_use]
    pub fn durable(&self) -> u64 {
        self.raw().durable()
    }

    /// Sets or clears `wake_on_commit` (every commit wakes the host).
    pub fn set_wake_on_commit(&self, on: bool) {
        self.raw().set_wake_on_commit(on);
    }

    /// The `requests` word, to pass to [`Publisher::sleep`] after looking
    /// for work.
    #[must_use]
    pub fn requests(&self) -> u32 {
        self.raw().requests()
    }

    /// The highest generation a client waits for (read after
    /// [`Publisher::requests`]). Anything may be written there: only a
    /// hint.
    #[must_use]
    pub fn wanted(&self) -> u64 {
        self.raw().wanted()
    }

    /// Whether a [`Waker`] woke the host since the last call (clears it).
    pub fn take_interrupt(&self) -> bool {
        // SYNC: Acquire, pairs with the Release store in `Waker::wake`
        // (which happens before its bump of `requests`).
        self.interrupted.swap(false, Ordering::Acquire)
    }

    /// Sleeps until `requests` moves from `seen`, or `timeout` passes.
    pub fn sleep(&self, seen: u32, timeout: Duration) {
        self.raw().sleep(seen, Some(timeout));
    }

    /// A waker for [`Publisher::sleep`].
    #[must_use]
    pub fn waker(&self) -> Waker {
        Waker {
            control: self.control.clone(),
            interrupted: self.interrupted.clone(),
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // Commits stop waking a host that is gone (a killed host leaves the
        // bit set: commits then make a useless FUTEX_WAKE until the next host
        // sets the mode).
        self.set_wake_on_commit(false);
    }
}

impl Waker {
    /// Wakes the host's [`Publisher::sleep`] (and makes
    /// [`Publisher::take_interrupt`] true).
    pub fn wake(&self) {
        // SYNC: Release, pairs with the Acquire swap in `take_interrupt`;
        // the host loads `requests` before it, so either it sees the flag or
        // its sleep finds `requests` moved by the bump below.
        self.interrupted.store(true, Ordering::Release);
        RawDurable::new(control_region(&self.control)).interrupt();
    }
}
