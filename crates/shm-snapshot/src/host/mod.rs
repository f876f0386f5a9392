//! The snapshot host: keeps a program's live memfd state durable in a
//! snapshot file, FILE, and brings it back on a cold start. This is what
//! the `shm-restore` binary runs; a program that wants to host its own
//! snapshots uses it directly.
//!
//! # What the host does
//! * **Opening** ([`SnapshotHost::prepare`], [`SnapshotHost::open`]): FILE
//!   is resolved once if it is a symlink (later renames replace the real
//!   file); stale temporary files of a killed compaction are removed. On a
//!   *warm* start the host takes the memfd it inherited (from systemd's fd
//!   store or a supervisor) and checks it against FILE; an all-zero
//!   inherited fd ([`is_fresh`]) is replaced by a memfd of its own. On a
//!   *cold* start it creates a memfd and restores FILE into it in one pass
//!   (or starts an all-zero state of [`HostConfig::size`] bytes when FILE is
//!   missing and [`HostConfig::create`] is on; a new FILE is created with
//!   mode 0600).
//! * **Damage**: a FILE with invalid records followed by intact snapshots is
//!   refused ([`HostError::Damaged`]) and left unchanged, unless
//!   [`StartFrom::Generation`] or [`StartFrom::Salvage`] asks for a rebuild:
//!   the state is then written to a new file beside FILE, the original is
//!   kept as `FILE.damaged.SECS` ([`keep_aside`]), and the new file is
//!   renamed over FILE.
//! * **Snapshots** ([`SnapshotHost::tick`]): the pages committed since
//!   FILE's generation are streamed from the memfd into FILE (the host
//!   holds no copy of the state), retried when commits rewrite the pages
//!   being copied, spaced by [`HostConfig::max_write_rate`]; a lag behind the
//!   live state longer than [`HostConfig::lag_warn`] is logged. The log is
//!   compacted once it outgrows [`HostConfig::compact_at`] times the image
//!   and [`HostConfig::compact_min`];
//!   after a compaction failed on a full disk the next attempt waits 1 s,
//!   doubling up to 5 min. A commit sequence that is out of range or goes
//!   backwards (a stray write into the memfd) stops snapshots for good
//!   ([`HostError::Refused`]), and FILE keeps its last good generation.
//!   Errors are logged, the same one at most every 10 s.
//! * **Replication** (feature `replica`, `HostConfig::replica`): after
//!   every durable snapshot (and compaction) the host hands FILE's durable
//!   length and a handle of its inode to an uploader thread that ships it
//!   to object storage, never waiting for it; `SnapshotHost::replicated`
//!   says how far it came, a lag longer than [`HostConfig::lag_warn`] is
//!   logged, and [`SnapshotHost::finish`] waits a bounded time for the last
//!   uploads (the [replication protocol][replication]).
//! * **Exit** ([`SnapshotHost::finish`]): one last snapshot, never rate
//!   limited, that also takes a commit the program died inside (as its next
//!   start will finish it), and a summary.
//!
//! The host logs through `tracing` and never prints, exits or panics on
//! what it reads.
//!
//! # The loop
//! The program runs beside the host (usually as a child process that got
//! the memfd, see `shm-restore`); the host only reads the memfd. Call
//! [`SnapshotHost::tick`] once per interval, and between ticks check
//! [`SnapshotHost::wants_snapshot_now`]: it asks for the first snapshot as
//! soon as the program has committed once, so that a program killed early
//! in its first interval still leaves its work on disk. When the program
//! has exited, call [`SnapshotHost::finish`].
//!
//! Rather than polling, sleep in [`SnapshotHost::wait_for_work`] until the
//! next tick (what `shm-restore` does): it returns early for clients
//! waiting in [`Client::wait_durable`](crate::live::Client::wait_durable)
//! ([`Work::Waiters`], answered with [`SnapshotHost::serve_waiters`]), for
//! the program's first commit, for every commit with
//! [`HostConfig::continuous`] ([`Work::Commits`]), and for a [`Waker`]
//! ([`Work::Interrupted`], e.g. from the thread that waits for the child).
//!
//! # Examples
//! A host and a client in one process: the client commits into the memfd
//! the host created, the host writes FILE, and FILE restores the last
//! generation.
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use shm_snapshot::host::{HostConfig, SnapshotHost};
//! use shm_snapshot::live::Client;
//!
//! let dir = std::env::temp_dir().join(format!("host-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let file = dir.join("state.snap");
//! let config = HostConfig {
//!     create: true,
//!     size: 64 << 10,
//!     ..HostConfig::new(&file)
//! };
//! let mut host = SnapshotHost::open(config, None)?;
//!
//! // The program's side (normally another process that got the memfd).
//! let client = Client::open(host.memfd())?;
//! client.work().write_bytes(100, b"hello")?;
//! assert_eq!(client.commit(&[100..105]), 1);
//! assert!(host.wants_snapshot_now());
//! host.tick();
//! assert_eq!(host.persisted(), 1);
//!
//! client.work().write_bytes(100, b"world")?;
//! client.commit(&[100..105]);
//! drop(client); // the program exits
//! let done = host.finish();
//! assert_eq!(done.persisted, 2);
//!
//! let mut state = vec![0u8; 64 << 10];
//! let f = shm_snapshot::FileStorage::open(&file, false)?;
//! shm_snapshot::restore(&f, |off, b| {
//!     // FILE holds an image: the 4096-byte prefix, then the state.
//!     if let Some(at) = off.checked_sub(4096) {
//!         let at = at as usize;
//!         state[at..at + b.len()].copy_from_slice(b);
//!     }
//! })?;
//! assert_eq!(&state[100..105], b"world");
//! std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```
//!
// The replication protocol's page exists only with the `replica` feature; a
// build without it links to the docs.rs page (built with every feature).
#![cfg_attr(
    feature = "replica",
    doc = "[replication]: crate::replica::replication"
)]
#![cfg_attr(
    not(feature = "replica"),
    doc = "[replication]: https://docs.rs/shm-snapshot/latest/shm_snapshot/replica/replication/index.html"
)]

mod error;
mod file;
mod inspect;
mod open;
mod policy;
#[cfg(feature = "replica")]
mod replica;
mod snapshot;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use crate::live::Waker;
pub use error::{HostError, StrayWrite};
pub use file::{is_fresh, keep_aside, prefix};
pub use inspect::Inspection;

use crate::live::{Host, Publisher};
use crate::{FileStorage, SnapshotWriter};
use policy::{Backoff, Lag, RateLimit, Repeats};

/// How the host starts: what it restores from FILE.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartFrom {
    /// The newest generation of FILE, refusing a damaged FILE (the default).
    #[default]
    Newest,
    /// Exactly this generation (at most the newest before any damage), into
    /// a fresh memfd (refused if one was inherited), continued in a new FILE;
    /// the original is kept aside.
    Generation(u64),
    /// The newest state in which every page has an intact version (from an
    /// inherited memfd on a warm start), continued in a new FILE; the
    /// original is kept aside, and pages that could only be taken from
    /// before the damage are logged.
    Salvage,
}

/// What the host does, and with which file.
///
/// Build one with [`HostConfig::new`] and change the fields that differ:
/// `HostConfig { create: true, ..HostConfig::new(path) }`.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// FILE, the snapshot file (a symlink is resolved once).
    pub path: PathBuf,
    /// Start an all-zero state if FILE is missing (it is created). Default: off.
    pub create: bool,
    /// The state size when FILE is created, in bytes. Default: 1 MiB.
    pub size: u64,
    /// Average limit on snapshot writes in bytes per second (`None`: none).
    /// Periodic snapshots wait until the bytes already written fit the
    /// rate; the snapshot at exit is never delayed. Default: none.
    pub max_write_rate: Option<u64>,
    /// Log a warning when FILE has been behind the live commit generation
    /// for this long (repeated at most that often). Default: 10 s.
    pub lag_warn: Duration,
    /// Compact FILE when its log grows past this many times the image size
    /// (state plus 4096 bytes): at least 1.5, or 0 to never compact.
    /// Default: 2.
    pub compact_at: f64,
    /// Never compact a log smaller than this many bytes, whatever
    /// `compact_at` says. A small state whose commits rewrite most of it
    /// would otherwise pass `compact_at` at nearly every snapshot and pay a
    /// compaction (a new file, synced, renamed, the directory synced) each
    /// time; with the floor the cost is spread over many snapshots, for at
    /// most this much more disk and restore reading. Default: 16 MiB
    /// ([`DEFAULT_COMPACT_MIN`]).
    pub compact_min: u64,
    /// The name of a memfd the host creates (`memfd_create`), and of the
    /// inherited memfd in messages. Default: `state`.
    pub name: String,
    /// What to restore from FILE. Default: [`StartFrom::Newest`].
    pub start_from: StartFrom,
    /// Snapshot continuously (`shm-restore --interval 0`): every commit
    /// wakes the host ([`SnapshotHost::wait_for_work`] returns
    /// [`Work::Commits`]), which snapshots back to back while commits arrive
    /// and sleeps when idle. Default: off.
    pub continuous: bool,
    /// Replicate FILE to object storage ([`crate::replica`]): every durable
    /// snapshot is shipped by an uploader thread. Default: none.
    #[cfg(feature = "replica")]
    #[cfg_attr(docsrs, doc(cfg(feature = "replica")))]
    pub replica: Option<crate::replica::ReplicaConfig>,
}

impl HostConfig {
    /// The defaults, with FILE at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            create: false,
            size: 1 << 20,
            max_write_rate: None,
            lag_warn: Duration::from_secs(10),
            compact_at: 2.0,
            compact_min: DEFAULT_COMPACT_MIN,
            name: "state".to_owned(),
            start_from: StartFrom::Newest,
            continuous: false,
            #[cfg(feature = "replica")]
            replica: None,
        }
    }

    /// Checks the values that have a valid range.
    ///
    /// # Errors
    /// [`HostError::CompactAt`].
    pub fn validate(&self) -> Result<(), HostError> {
        let f = self.compact_at;
        if f.is_finite() && (f == 0.0 || f >= 1.5) {
            Ok(())
        } else {
            Err(HostError::CompactAt { factor: f })
        }
    }
}

/// [`HostConfig::compact_min`]'s default: 16 MiB.
pub const DEFAULT_COMPACT_MIN: u64 = 16 << 20;

/// Progress of reading FILE on a cold start (a large FILE can take a while):
/// for a progress bar. Every method does nothing by default; `()` ignores
/// progress.
pub trait LoadProgress {
    /// Reading FILE starts: it has `file_len` bytes.
    fn start(&mut self, file_len: u64) {
        let _ = file_len;
    }
    /// `done` of `total` bytes were read.
    fn update(&mut self, done: u64, total: u64) {
        let _ = (done, total);
    }
    /// FILE was read completely (not called when reading fails).
    fn finish(&mut self) {}
}

impl LoadProgress for () {}

/// The snapshot host of one memfd and FILE. See the [module docs](self).
#[derive(Debug)]
pub struct SnapshotHost {
    /// FILE (resolved).
    path: PathBuf,
    /// The memfd's read-only mapping.
    live: Host,
    /// The memfd the program gets.
    memfd: OwnedFd,
    writer: SnapshotWriter<FileStorage>,
    /// The program's newest commit generation that is durable in FILE.
    persisted: u64,
    limit: RateLimit,
    lag: Lag,
    compact_at: f64,
    compact_min: u64,
    compaction: Backoff,
    stats: HostStats,
    /// Set once the live commit sequence was seen out of range or moving
    /// backwards: the memfd was written by something other than the
    /// protocol, and no more snapshots are taken from it (FILE keeps its
    /// last good generation).
    refused: Option<StrayWrite>,
    repeats: Repeats,
    /// A snapshot is owed before the next tick: no tick ran yet, or the
    /// last one skipped its snapshot because commits kept rewriting the
    /// pages it copied.
    snapshot_owed: bool,
    /// The durable words and the liveness lock.
    durable: Publisher,
    /// [`HostConfig::continuous`].
    continuous: bool,
    /// After a failed snapshot for waiters or commits: not before then again.
    retry_at: Option<Instant>,
    /// After a snapshot for waiters: [`SnapshotHost::wait_for_work`] polls
    /// `requests` until then rather than parking, so that a waiter's next
    /// request finds the host awake (see [`HOST_POLL`]).
    poll_until: Option<Instant>,
    /// Group commit ([`SnapshotHost::serve_waiters`]): `requests` when the
    /// last snapshot for waiters started, how many requests that snapshot
    /// served, and how long it took.
    batch: Batch,
    /// The uploader, when FILE is replicated.
    #[cfg(feature = "replica")]
    replica: Option<replica::Replica>,
}

/// What [`SnapshotHost::wait_for_work`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Work {
    /// Clients wait for a generation FILE does not hold: call
    /// [`SnapshotHost::serve_waiters`] now.
    Waiters,
    /// Continuous mode: commits arrived that FILE does not hold; call
    /// [`SnapshotHost::serve_waiters`].
    Commits,
    /// The deadline passed (or the program's first commit awaits its first
    /// snapshot): call [`SnapshotHost::tick`].
    Tick,
    /// A [`Waker`] woke the host.
    Interrupted,
}

/// How long the host waits before serving waiters again after a failed snapshot.
const RETRY_AFTER: Duration = Duration::from_millis(100);

/// The longest a snapshot for waiters waits to gather the next batch.
const MAX_GATHER: Duration = Duration::from_micros(200);
/// How long the host polls for the next request after a snapshot for
/// waiters, rather than parking: a waiter that polled for its wait
/// ([`crate::live::Client::set_wait_spin`]) commits again within
/// microseconds, and its request then needs no cross-core wake-up (35-45 us
/// on one 2-vCPU virtual machine, 4 us at the median on another: see
/// [`crate::live::Client::set_wait_spin`]). The poll ends at the first request (several
/// waiters are then gathered, parked, by [`SnapshotHost::serve_waiters`]):
/// at most this much of a core per snapshot served to waiters.
const HOST_POLL: Duration = Duration::from_micros(100);

/// What the last snapshot for waiters served (see [`SnapshotHost::serve_waiters`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Batch {
    /// `requests` when it started.
    requests_at: u32,
    /// Requests between the start of the one before it and its start.
    size: u32,
    /// How long it took.
    took: Duration,
}

/// Counts of a host's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostStats {
    /// Snapshots written.
    pub snapshots: u64,
    /// Bytes written by them.
    pub bytes: u64,
    /// Compactions of FILE.
    pub compactions: u64,
    /// Copy attempts abandoned because a commit rewrote a page being copied.
    pub conflicts: u64,
    /// The largest lag of FILE behind the live state, in generations.
    pub max_lag_generations: u64,
    /// The longest time FILE was behind the live state.
    pub max_lag: Duration,
}

/// What [`SnapshotHost::finish`] leaves: FILE's generation, the memfd's, and
/// the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Finished {
    /// The program's generation durable in FILE.
    pub persisted: u64,
    /// The program's last generation in the memfd (`None`: its commit
    /// sequence is out of range).
    pub live: Option<u64>,
    /// The counts.
    pub stats: HostStats,
    /// How far replication came before the host stopped (`None`: not replicated).
    #[cfg(feature = "replica")]
    #[cfg_attr(docsrs, doc(cfg(feature = "replica")))]
    pub replicated: Option<crate::replica::Replicated>,
}

/// A host whose memfd is ready (created and restored, or inherited and
/// checked) but that has not written FILE yet: the memfd can be handed on
/// (to a supervisor's fd store, say) before [`Prepared::start`] takes the
/// first snapshot and completes a rebuild.
#[derive(Debug)]
pub struct Prepared {
    path: PathBuf,
    config: HostConfig,
    memfd: OwnedFd,
    loaded: Option<file::Loaded>,
    /// Whether the first snapshot (before the program starts) compares every page.
    first_full: bool,
    created: bool,
    replaced: bool,
}

impl Prepared {
    /// The memfd the program is to get.
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }

    /// FILE, resolved.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the memfd is new (a cold start), rather than the inherited one.
    pub fn created_memfd(&self) -> bool {
        self.created
    }

    /// Whether an inherited fd was all zeros ([`is_fresh`]) and replaced by
    /// the new memfd.
    pub fn replaced_inherited(&self) -> bool {
        self.replaced
    }
}

impl SnapshotHost {
    /// Opens FILE and readies the memfd (`inherited`, or a new one), reading
    /// FILE once with `progress`; see the [module docs](self). The memfd is
    /// ready for the program after this, FILE is not written yet:
    /// [`Prepared::start`] follows.
    ///
    /// # Errors
    /// Every [`HostError`] about FILE and the memfd; FILE is unchanged.
    pub fn prepare(
        config: HostConfig,
        inherited: Option<OwnedFd>,
        progress: &mut dyn LoadProgress,
    ) -> Result<Prepared, HostError> {
        open::prepare(config, inherited, progress)
    }

    /// [`SnapshotHost::prepare`] then [`Prepared::start`], without progress.
    ///
    /// # Errors
    /// As both.
    pub fn open(config: HostConfig, inherited: Option<OwnedFd>) -> Result<Self, HostError> {
        Self::prepare(config, inherited, &mut ())?.start()
    }

    /// The memfd the program is to get (a client maps it with
    /// [`crate::live::Client::open`]).
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }

    /// FILE, resolved.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The program's newest generation that is durable in FILE.
    pub fn persisted(&self) -> u64 {
        self.persisted
    }

    /// The counts so far.
    pub fn stats(&self) -> HostStats {
        HostStats {
            max_lag_generations: self.lag.max_generations(),
            max_lag: self.lag.max_time(),
            ..self.stats
        }
    }

    /// Why snapshots stopped for good, if they did ([`HostError::Refused`]).
    pub fn refused(&self) -> Option<&StrayWrite> {
        self.refused.as_ref()
    }

    /// Whether a snapshot is due before the next tick: no tick ran yet (or
    /// the last one skipped its snapshot because commits kept rewriting the
    /// pages it copied) and the program has committed a generation FILE does
    /// not hold. Polled between ticks, it gets the program's first work to
    /// disk at once rather than an interval later; [`SnapshotHost::wait_for_work`]
    /// retries a skipped tick after 100 ms.
    pub fn wants_snapshot_now(&self) -> bool {
        self.snapshot_owed
            && self.may_retry(Instant::now())
            && self.live.generation().is_ok_and(|g| g > self.persisted)
    }

    /// The periodic step: a snapshot of what was committed since the last
    /// one (unless the write-rate limit defers it), then the lag check.
    /// Errors are logged, the same one at most every 10 s.
    pub fn tick(&mut self) {
        snapshot::tick(self);
    }

    /// Takes a snapshot of what was committed since the last one now,
    /// ignoring the write-rate limit; returns the generation written, `None`
    /// if FILE was up to date. Logs nothing on error.
    ///
    /// # Errors
    /// [`HostError::Refused`], [`HostError::Conflicts`], [`HostError::Write`],
    /// [`HostError::Compact`] (the snapshot itself is then durable).
    pub fn snapshot_now(&mut self) -> Result<Option<u64>, HostError> {
        let before = self.persisted;
        snapshot::snapshot(self, snapshot::Read::Changed)?;
        Ok((self.persisted != before).then_some(self.persisted))
    }

    /// The generation published as durable in the memfd (FILE's, after its
    /// fdatasync returned).
    pub fn durable(&self) -> u64 {
        self.durable.durable()
    }

    /// The generation published as replicated in the memfd (the upload of
    /// the object holding it completed; 0: none yet, or no replica).
    pub fn replicated_generation(&self) -> u64 {
        self.durable.replicated()
    }

    /// How far replication has come (`None`: FILE is not replicated).
    #[cfg(feature = "replica")]
    #[cfg_attr(docsrs, doc(cfg(feature = "replica")))]
    pub fn replicated(&self) -> Option<crate::replica::Replicated> {
        self.replica.as_ref().map(replica::Replica::replicated)
    }

    /// A cloneable, `Send` handle that interrupts [`SnapshotHost::wait_for_work`]
    /// from another thread (which then returns [`Work::Interrupted`]).
    pub fn waker(&self) -> Waker {
        self.durable.waker()
    }

    /// Whether a snapshot may be tried at `now`: none failed for waiters or
    /// commits, or the 100 ms after it passed.
    fn may_retry(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| now >= t)
    }

    /// Whether clients wait for a generation FILE does not hold yet and the
    /// memfd has it (a `wanted` beyond the last commit is a stray write, and
    /// ignored beyond that commit).
    fn has_waiters(&self, wanted: u64, live: u64) -> bool {
        wanted.min(live) > self.persisted
    }

    /// Sleeps on the memfd's `requests` futex word until there is work or
    /// `deadline` passes; see [`Work`]. Never busy-waits: after a failed
    /// snapshot for waiters it reports them again only after 100 ms.
    pub fn wait_for_work(&mut self, deadline: Instant) -> Work {
        /// How often the lag is sampled while FILE is behind.
        const LAG_SAMPLE: Duration = Duration::from_millis(10);
        loop {
            // `requests` first: a request or wake after this load moves it,
            // and the sleep below returns at once.
            let seen = self.durable.requests();
            if self.durable.take_interrupt() {
                return Work::Interrupted;
            }
            let now = Instant::now();
            let ready = self.refused.is_none() && self.may_retry(now);
            if !self.continuous && !self.lag.behind() {
                // Caught up: the next commit wakes the sleep below, so the
                // time FILE falls behind is known (one futex wake per
                // snapshot for the program). Armed before `live` is read: a
                // commit that this read misses sees the mode set (short of
                // the instant its store of `seq` waits in its core's store
                // buffer; no fence on the program's commit path pays for
                // that instant: then the lag counts from the next sample).
                self.durable.set_wake_on_commit(true);
            }
            #[cfg(feature = "replica")]
            replica::kick(self, self.durable.wanted_replicated());
            let live = self.live.generation().ok();
            // The recovery point, sampled while FILE is behind: at least
            // every LAG_SAMPLE, and at the first commit after a snapshot.
            if let Some(live) = live
                && let Some(w) = self.lag.observe(now, live, self.persisted)
            {
                tracing::warn!("{w}");
            }
            if ready && let Some(live) = live {
                if self.has_waiters(self.durable.wanted(), live) {
                    return Work::Waiters;
                }
                if self.continuous && live > self.persisted {
                    return Work::Commits;
                }
                if self.snapshot_owed && live > self.persisted {
                    return Work::Tick;
                }
            }
            if now >= deadline {
                return Work::Tick;
            }
            let mut until = deadline;
            if let Some(t) = self.retry_at.filter(|&t| t > now) {
                until = until.min(t);
            }
            if !self.continuous && self.lag.behind() {
                // Behind: sample the lag again soon; no wake-up per commit.
                until = until.min(now + LAG_SAMPLE);
                self.durable.set_wake_on_commit(false);
            }
            if let Some(t) = self.poll_until.take().filter(|&t| t > now) {
                if self.durable.poll(seen, t.min(until)) {
                    // Keep polling after this request's snapshot too.
                    self.poll_until = Some(t);
                }
                continue;
            }
            self.durable
                .sleep(seen, until.saturating_duration_since(now));
        }
    }

    /// Waits for the next batch of requests (see [`SnapshotHost::serve_waiters`]).
    fn gather(&self) {
        let Batch {
            requests_at,
            size,
            took,
        } = self.batch;
        if size < 2 || self.continuous {
            return;
        }
        let deadline = Instant::now() + (took / 4).min(MAX_GATHER);
        loop {
            let seen = self.durable.requests();
            let now = Instant::now();
            if seen.wrapping_sub(requests_at) >= size || now >= deadline {
                return;
            }
            self.durable.sleep(seen, deadline - now);
        }
    }

    /// A snapshot now, ignoring the write-rate limit (for [`Work::Waiters`]
    /// and [`Work::Commits`]): one fdatasync covers every generation
    /// committed meanwhile. An error is logged, and waiters are served again
    /// only 100 ms later.
    ///
    /// Group commit: when the last snapshot served several requests, the
    /// threads it woke are committing again, each about to ask. The host
    /// then waits (parked on `requests`, at most a quarter of the last
    /// snapshot's time and 200 µs) until as many requests have come as the
    /// last snapshot served, so that one fdatasync covers them all; without
    /// the wait it would start on the first request and leave the others to
    /// the next snapshot. A single waiter never waits.
    pub fn serve_waiters(&mut self) {
        self.gather();
        let started = Instant::now();
        let requests = self.durable.requests();
        self.batch.size = requests.wrapping_sub(self.batch.requests_at);
        self.batch.requests_at = requests;
        match snapshot::snapshot(self, snapshot::Read::Changed) {
            Ok(()) => {
                self.batch.took = started.elapsed();
                self.retry_at = None;
                // The next request is polled for (several waiters are then
                // gathered, parked, by the next `serve_waiters`).
                self.poll_until = Some(Instant::now() + HOST_POLL);
            }
            Err(e) => {
                self.retry_at = Some(Instant::now() + RETRY_AFTER);
                snapshot::report(self, &e);
            }
        }
    }

    /// The last snapshot once the program has exited (never rate limited;
    /// a commit the program died inside is taken whole, as its next start
    /// will finish it), and the summary, both logged.
    pub fn finish(mut self) -> Finished {
        snapshot::finish(&mut self)
    }
}
