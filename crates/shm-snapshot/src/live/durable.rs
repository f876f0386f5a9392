//! Durable and replicated commits: the host publishes the newest
//! generation whose snapshot's fdatasync returned, and the newest whose
//! upload to the replica completed; clients wait for either on a futex.
//!
//! # Protocol
//!
//! Shared words (payload offsets of the control page; `layout.rs`):
//! `durable` (`u64`, 256), `durable_seq` (`u32` futex word, 264), `mode`
//! (`u32`, 268), `replicated` (`u64`, 272), `replicated_seq` (`u32` futex
//! word, 280) and `replica` (`u32`, 284) are written only by the host (the
//! replicated pair by its uploader thread); `wanted` (`u64`, 384),
//! `requests` (`u32` futex word, 392) and `wanted_replicated` (`u64`, 400)
//! by clients (and `requests` by the host's own [`Waker`]). The host's
//! liveness is an OFD lock on memfd byte
//! [`HOST_LOCK_BYTE`](super::layout::HOST_LOCK_BYTE), which the kernel drops
//! when the host dies.
//!
//! A *published word* is a value and its futex word: ([`DURABLE`]:
//! `durable`, `durable_seq`) and ([`REPLICATED`]: `replicated`,
//! `replicated_seq`). Both run the one handshake below, parametrized by the
//! pair ([`Published`]).
//!
//! * **Publish** (host, [`RawDurable::publish`]) once generation `G` is
//!   durable in FILE (its fdatasync returned) or in the store (the upload of
//!   the object holding it completed): store `value = G` (Release), then
//!   `seq += 1` (Release), then `FUTEX_WAKE` every sleeper on `seq`.
//! * **Wait** (client, [`RawDurable::wait_step`]): load `seq` (Acquire) as
//!   `s`, then `value` (Acquire); if `value >= G` done, else
//!   `FUTEX_WAIT(seq, s)`. Message passing: if the load of `seq` read the
//!   host's bump, the Acquire makes the `value` stored before it visible;
//!   so a waiter that saw an old `value` saw an old `seq`, and its
//!   `FUTEX_WAIT` either finds the word changed (returns at once) or is
//!   queued before the bump's `FUTEX_WAKE` (the kernel orders the compare
//!   and the wake under its bucket lock).
//! * **Request** (client, [`RawDurable::request`]): `wanted = max(wanted,
//!   G)` (and, for a replicated wait, `wanted_replicated = max(..., G)`),
//!   then `requests += 1` (Release), then `FUTEX_WAKE(requests)`. The host
//!   ([`RawDurable::requests`] then [`RawDurable::wanted`], then
//!   `FUTEX_WAIT(requests, seen)`) follows the same pattern in the other
//!   direction: a host that missed the new `wanted` loaded an old `requests`.
//!   A host that sees `wanted_replicated` rise makes its uploader retry a
//!   failed upload at once.
//! * **Replica flag** (`replica` bit 0): the host stores it (Release) at
//!   start, before its first publish, set when it replicates FILE; a
//!   replicated wait on a memfd whose live host has it clear fails at once.
//!   The host also stores `replicated = 0` at start (its store may differ
//!   from its predecessor's).
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
//! The same holds for `replicated` and the upload. A client killed in a
//! request leaves `wanted` raised: the host takes one snapshot early.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering as StdOrdering}; // atomics-ok: process-local spin state
use std::time::Duration;

use shm_sync::atomic::Ordering;

use super::layout::{
    DURABLE_OFF, DURABLE_SEQ_OFF, MODE_OFF, REPLICA_OFF, REPLICA_ON, REPLICATED_OFF,
    REPLICATED_SEQ_OFF, REQUESTS_OFF, WAKE_ON_COMMIT, WANTED_OFF, WANTED_REPLICATED_OFF,
};
use super::words::Control;

/// How far a generation has come: the level a client waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Level {
    /// In the host's FILE: its snapshot's fdatasync returned (survives the
    /// program, the host and a power loss).
    Durable,
    /// In the host's replica (feature `replica`): the upload of the base or
    /// segment holding it completed (survives the loss of the machine).
    Replicated,
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Level::Durable => "durable",
            Level::Replicated => "replicated",
        })
    }
}

/// A published word: the value the host publishes and the futex word it
/// bumps after each store of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Published {
    /// Payload offset of the value (`u64`).
    value: usize,
    /// Payload offset of its futex word (`u32`).
    seq: usize,
}

/// `durable` and `durable_seq`.
pub(crate) const DURABLE: Published = Published {
    value: DURABLE_OFF,
    seq: DURABLE_SEQ_OFF,
};

/// `replicated` and `replicated_seq`.
pub(crate) const REPLICATED: Published = Published {
    value: REPLICATED_OFF,
    seq: REPLICATED_SEQ_OFF,
};

impl Level {
    /// The word the host publishes this level in.
    pub(crate) fn word(self) -> Published {
        match self {
            Level::Durable => DURABLE,
            Level::Replicated => REPLICATED,
        }
    }
}

/// Both halves of the durable-commit protocol over any storage of the
/// control words: the real code, which [`super::Client`] and
/// [`super::Publisher`] run on the memfd and the loom models on heap words.
#[derive(Debug)]
pub(crate) struct RawDurable<C> {
    ctl: C,
    /// Negative control of the loom models only: the host skips the bump of
    /// the futex word after storing the value, which loom must catch.
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

    /// `durable`.
    #[inline]
    pub(crate) fn durable(&self) -> u64 {
        self.published(DURABLE)
    }

    /// The value of `word`. SYNC: Acquire, pairs with the Release store in
    /// `publish`.
    #[inline]
    pub(crate) fn published(&self, word: Published) -> u64 {
        self.ctl.load_u64(word.value, Ordering::Acquire)
    }

    /// The client asks the host for generation `generation` at `level`
    /// (group commit: the host snapshots at once rather than at its next
    /// tick; for [`Level::Replicated`] its uploader also retries a failed
    /// upload at once).
    pub(crate) fn request(&self, generation: u64, level: Level) {
        // Relaxed: published by the Release bump of `requests` below.
        self.ctl
            .fetch_max_u64(WANTED_OFF, generation, Ordering::Relaxed);
        if level == Level::Replicated {
            // Relaxed: as `wanted`.
            self.ctl
                .fetch_max_u64(WANTED_REPLICATED_OFF, generation, Ordering::Relaxed);
        }
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

    /// One step of a wait for `generation` in `word`: `Some(value)` once it
    /// is at least `generation`, else sleeps on the word's futex (at most
    /// `timeout`; `None`: until woken) and checks once more.
    pub(crate) fn wait_step(
        &self,
        word: Published,
        generation: u64,
        timeout: Option<Duration>,
    ) -> Option<u64> {
        // SYNC: Acquire, pairs with the Release bump in `publish`: if this
        // reads the bump, the value stored before it is visible below.
        let seen = self.ctl.load_u32(word.seq, Ordering::Acquire);
        let d = self.published(word);
        if d >= generation {
            return Some(d);
        }
        self.ctl.futex_wait(word.seq, seen, timeout);
        let d = self.published(word);
        (d >= generation).then_some(d)
    }

    /// The host: `generation` reached `word`'s level (durable in FILE: its
    /// fdatasync returned; replicated: its upload completed).
    pub(crate) fn publish(&self, word: Published, generation: u64) {
        // SYNC: Release, pairs with the clients' Acquire loads of the value
        // (`published`).
        self.ctl
            .store_u64(word.value, generation, Ordering::Release);
        #[cfg(shm_loom)]
        if self.skip_bump {
            self.ctl.futex_wake(word.seq);
            return;
        }
        // SYNC: Release, pairs with the Acquire load of the futex word in
        // `wait_step`: orders the store of the value before the bump.
        self.ctl.fetch_add_u32(word.seq, 1, Ordering::Release);
        self.ctl.futex_wake(word.seq);
    }

    /// The host says whether it replicates FILE.
    pub(crate) fn set_replica(&self, on: bool) {
        // SYNC: Release, pairs with the Acquire load in `replica_on`
        // (publishes the reset of `replicated` stored before it).
        self.ctl.store_u32(
            REPLICA_OFF,
            if on { REPLICA_ON } else { 0 },
            Ordering::Release,
        );
    }

    /// Whether the host replicates FILE. SYNC: Acquire, pairs with the
    /// Release store in `set_replica`.
    pub(crate) fn replica_on(&self) -> bool {
        self.ctl.load_u32(REPLICA_OFF, Ordering::Acquire) & REPLICA_ON != 0
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

    /// The host: `wanted_replicated` (after `requests()`).
    #[inline]
    pub(crate) fn wanted_replicated(&self) -> u64 {
        // Relaxed: ordered by the Acquire load of `requests` before it.
        self.ctl.load_u64(WANTED_REPLICATED_OFF, Ordering::Relaxed)
    }

    /// The host sleeps until `requests` moves from `seen` (at most `timeout`).
    pub(crate) fn sleep(&self, seen: u32, timeout: Option<Duration>) {
        self.ctl.futex_wait(REQUESTS_OFF, seen, timeout);
    }

    /// The host polls until `requests` moves from `seen` (`true`) or `until`
    /// passes; the loads are `requests()`'s, so what follows a move is what
    /// follows a wake from `sleep`.
    pub(crate) fn poll_requests(&self, seen: u32, until: std::time::Instant) -> bool {
        poll(until, || (self.requests() != seen).then_some(())).is_some()
    }

    /// The host's waker: bumps `requests` and wakes the host.
    pub(crate) fn interrupt(&self) {
        self.bump_requests();
    }
}

/// A durable wait's poll before it parks (process-local, one per
/// [`Client`](super::Client)).
///
/// Parking costs two cross-core wake-ups per durable commit: the client's
/// `FUTEX_WAKE` of the host and the host's of the client. Each wakes a
/// sleeping core (an inter-processor interrupt, and on a virtual machine an
/// exit to the hypervisor): a parked round trip between two threads took
/// 70-90 us on a 2-vCPU VM against 1-3 us polling, as long as the
/// `fdatasync` of a small commit. So a waiter first polls the published
/// word, for at most 1.5 times the last wait's length plus 20 us (it learns
/// from each durable wait, parked or not), and not at all when the last
/// wait took longer than the cap ([`Client::set_wait_spin`](super::Client::set_wait_spin);
/// zero, the default, turns polling off). Only a client's sole waiting
/// thread polls: when several wait, group commit wakes them together, and a
/// polling thread would take a core the others need to commit. The poll
/// only loads the published value (Acquire, as `wait_step`'s check): the
/// handshake after it is unchanged.
#[derive(Debug)]
pub(crate) struct WaitSpin {
    /// The cap, in nanoseconds.
    cap: AtomicU64, // atomics-ok: process-local setting
    /// The last durable wait's length, in nanoseconds (0: none yet).
    last: AtomicU64, // atomics-ok: process-local estimate
    /// Threads of this client in a durable wait.
    waiting: AtomicU32, // atomics-ok: process-local count
}

impl WaitSpin {
    pub(crate) fn new() -> Self {
        Self {
            cap: AtomicU64::new(0),
            last: AtomicU64::new(0),
            waiting: AtomicU32::new(0),
        }
    }

    pub(crate) fn set_cap(&self, cap: Duration) {
        // Relaxed here and below: process-local hints that order nothing.
        self.cap.store(duration_ns(cap), StdOrdering::Relaxed);
    }

    pub(crate) fn cap(&self) -> Duration {
        Duration::from_nanos(self.cap.load(StdOrdering::Relaxed))
    }

    /// A durable wait took `took` (from its request to its return).
    pub(crate) fn learn(&self, took: Duration) {
        self.last.store(duration_ns(took), StdOrdering::Relaxed);
    }

    /// How long the next wait polls.
    fn budget(&self) -> Duration {
        let cap = self.cap.load(StdOrdering::Relaxed);
        let last = self.last.load(StdOrdering::Relaxed);
        if cap == 0 || last > cap {
            return Duration::ZERO;
        }
        Duration::from_nanos((last + last / 2 + 20_000).min(cap))
    }

    /// A thread of the client starts a durable wait; it ends when the
    /// guard drops.
    pub(crate) fn enter(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, StdOrdering::Relaxed);
        Waiting(self)
    }

    /// Polls `word` until it reaches `generation` (its value) or the budget
    /// runs out (`None`; at once when another thread of the client waits
    /// too: group commit wakes them together, and a polling thread would
    /// only take a core the others need to commit).
    pub(crate) fn poll<C: Control>(
        &self,
        raw: &RawDurable<C>,
        word: Published,
        generation: u64,
    ) -> Option<u64> {
        let budget = self.budget();
        if budget.is_zero() {
            return None;
        }
        let waiting = &self.waiting;
        poll(std::time::Instant::now() + budget, || {
            if waiting.load(StdOrdering::Relaxed) > 1 {
                // Another thread of the client waits: park at once.
                return Some(None);
            }
            let d = raw.published(word);
            (d >= generation).then_some(Some(d))
        })
        .flatten()
    }
}

/// A thread's durable wait, counted in [`WaitSpin`] while it lasts.
pub(crate) struct Waiting<'a>(&'a WaitSpin);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, StdOrdering::Relaxed);
    }
}

/// Calls `check` until it returns `Some` (returned) or `until` passes
/// (`None`): the one poll loop of the host's and the waiters' polls.
/// Between looks at the clock it calls `check` [`LOADS_PER_CHECK`] times,
/// then yields the core to any thread runnable on it (the other side may
/// share it, and this poll must not delay its work). The loom models take
/// one round: each load is a branch point, and real time is not theirs to
/// read.
fn poll<T>(until: std::time::Instant, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    loop {
        for _ in 0..LOADS_PER_CHECK {
            if let Some(found) = check() {
                return Some(found);
            }
            std::hint::spin_loop();
        }
        #[cfg(not(shm_loom))]
        {
            if std::time::Instant::now() >= until {
                return None;
            }
            std::thread::yield_now();
        }
        #[cfg(shm_loom)]
        {
            let _ = until;
            return None;
        }
    }
}

/// Loads of a polled word between two looks at the clock.
#[cfg(not(shm_loom))]
const LOADS_PER_CHECK: usize = 16;
#[cfg(shm_loom)]
const LOADS_PER_CHECK: usize = 1;

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Why [`Client::wait_durable`](super::Client::wait_durable) (or
/// [`Client::wait_replicated`](super::Client::wait_replicated)) returned
/// without the generation being durable (or replicated).
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
    /// The timeout passed before the generation reached the level waited for.
    #[error("generation {requested} is not {level} yet ({level}: {reached})")]
    Timeout {
        /// The generation asked for.
        requested: u64,
        /// The level waited for.
        level: Level,
        /// The newest generation at that level at the end of the wait.
        reached: u64,
    },
    /// No host serves this memfd (nobody holds its liveness lock).
    #[error("no snapshot host serves this memfd")]
    NoHost,
    /// A wait for [`Level::Replicated`]: the host serving the memfd does not
    /// replicate FILE (no replica is configured).
    #[error("the snapshot host has no replica configured: nothing is ever replicated")]
    NoReplica,
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
        self.raw().publish(DURABLE, generation);
    }

    /// Says whether this host replicates FILE (at start, before the first
    /// publish), and resets the replicated generation to 0: what a previous
    /// host uploaded may be in another store.
    pub fn set_replica(&self, on: bool) {
        let raw = self.raw();
        raw.publish(REPLICATED, 0);
        raw.set_replica(on);
    }

    /// The published replicated generation.
    #[must_use]
    pub fn replicated(&self) -> u64 {
        self.raw().published(REPLICATED)
    }

    /// A handle that publishes replicated generations from the uploader
    /// thread.
    #[must_use]
    pub fn replicated_publisher(&self) -> ReplicatedPublisher {
        ReplicatedPublisher {
            control: self.control.clone(),
        }
    }

    /// The highest generation a client waits to see replicated (read after
    /// [`Publisher::requests`]); a hint, like [`Publisher::wanted`].
    #[must_use]
    pub fn wanted_replicated(&self) -> u64 {
        self.raw().wanted_replicated()
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

    /// Polls until `requests` moves from `seen` or `until` passes, without
    /// parking: a client's request then finds the host awake, sparing the
    /// cross-core wake-up (see [`Client::set_wait_spin`](super::Client::set_wait_spin)).
    /// Returns whether it moved.
    pub fn poll(&self, seen: u32, until: std::time::Instant) -> bool {
        self.raw().poll_requests(seen, until)
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

/// Publishes the replicated generation from the host's uploader thread;
/// cloneable and `Send`. Obtained from [`Publisher::replicated_publisher`].
#[derive(Debug, Clone)]
pub struct ReplicatedPublisher {
    control: std::sync::Arc<shm_segment::Mapping>,
}

impl ReplicatedPublisher {
    /// Publishes `generation` as replicated (the upload of the object
    /// holding it completed) and wakes every waiter.
    pub fn publish(&self, generation: u64) {
        RawDurable::new(control_region(&self.control)).publish(REPLICATED, generation);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::words::HeapControl;

    #[test]
    fn the_poll_budget_follows_the_last_wait_within_the_cap() {
        let cap = Duration::from_millis(1);
        let spin = WaitSpin::new();
        assert_eq!(spin.cap(), Duration::ZERO, "off by default");
        assert_eq!(spin.budget(), Duration::ZERO);
        spin.set_cap(cap);
        assert_eq!(spin.cap(), cap);
        // No wait yet: a short first poll.
        assert_eq!(spin.budget(), Duration::from_micros(20));
        spin.learn(Duration::from_micros(200));
        assert_eq!(spin.budget(), Duration::from_micros(320));
        spin.learn(Duration::from_micros(900));
        assert_eq!(spin.budget(), cap, "clipped to the cap");
        // A wait longer than the cap: no poll at all, until a short one.
        spin.learn(Duration::from_millis(3));
        assert_eq!(spin.budget(), Duration::ZERO);
        spin.learn(Duration::from_micros(100));
        assert_eq!(spin.budget(), Duration::from_micros(170));
        spin.set_cap(Duration::ZERO);
        assert_eq!(spin.budget(), Duration::ZERO, "zero turns polling off");
    }

    #[test]
    fn a_poll_sees_the_published_value_and_gives_way_to_a_second_waiter() {
        let ctl = HeapControl::default();
        let raw = RawDurable::new(&ctl);
        let spin = WaitSpin::new();
        spin.set_cap(Duration::from_secs(10));
        spin.learn(Duration::from_secs(5));
        let first = spin.enter();
        raw.publish(DURABLE, 7);
        assert_eq!(spin.poll(&raw, DURABLE, 7), Some(7));
        // Not yet published: polls its whole budget, then gives up.
        spin.learn(Duration::from_millis(1));
        let t = std::time::Instant::now();
        assert_eq!(spin.poll(&raw, DURABLE, 8), None);
        assert!(t.elapsed() >= Duration::from_millis(1));
        // Another thread waits too: no poll (it would take 7.5 s here).
        spin.learn(Duration::from_secs(5));
        let second = spin.enter();
        assert_eq!(spin.poll(&raw, DURABLE, 8), None);
        drop((first, second));
        // The host's poll of `requests`.
        let seen = raw.requests();
        assert!(!raw.poll_requests(seen, std::time::Instant::now()));
        raw.request(9, Level::Durable);
        assert!(raw.poll_requests(seen, std::time::Instant::now() + Duration::from_secs(10)));
    }
}
