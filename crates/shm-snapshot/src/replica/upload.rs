//! The uploader: a thread that ships FILE's durable bytes to the store.
//!
//! The host hands it a [`Notice`] after every durable snapshot: FILE's
//! durable length and file generation, and a duplicate of FILE's handle.
//! The notices go through a slot of one: a newer notice replaces one not
//! yet taken, so the host never waits (the uploader skips ahead). Bytes of
//! FILE up to a durable length never change, and a compaction renames a new
//! inode over FILE, so the uploader reads with `pread` from the handle it
//! got: the segment after the last uploaded generation, or, for a new inode
//! (a compaction, or the first notice of this epoch), a new base. A failed
//! upload is retried with back-off (100 ms doubling up to
//! [`ReplicaConfig::retry_max`]) from where the chain stands, so no
//! generation is ever skipped within a base's chain.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::names::{EpochId, Kind, ObjectName, from_ms, now_ms, to_ms};
use super::store::{Listed, Store};
use super::{ReplicaConfig, ReplicaError, runtime};

/// FILE durable up to `len` bytes at file generation `file_generation`.
#[derive(Debug)]
#[non_exhaustive]
pub struct Notice {
    /// A handle of FILE's current inode (a duplicate of the writer's).
    pub file: File,
    /// FILE's durable length.
    pub len: u64,
    /// FILE's newest durable file generation (the log's numbering).
    pub file_generation: u64,
    /// The program's commit generation it holds.
    pub generation: u64,
    /// When it became durable.
    pub at: SystemTime,
}

impl Notice {
    /// A notice of FILE durable up to `len` bytes at these generations, now.
    pub fn new(file: File, len: u64, file_generation: u64, generation: u64) -> Self {
        Self {
            file,
            len,
            file_generation,
            generation,
            at: SystemTime::now(),
        }
    }
}

/// How far replication has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replicated {
    /// The program's newest commit generation completely in the store (0: none).
    pub generation: u64,
    /// Its file generation.
    pub file_generation: u64,
    /// When that generation was durable in FILE (`None`: nothing replicated).
    pub durable_at: Option<SystemTime>,
    /// Objects uploaded.
    pub objects: u64,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Bases among them.
    pub bases: u64,
    /// Failed upload attempts.
    pub failures: u64,
    /// Whether the last attempt failed (the store is unreachable or refusing).
    pub failing: bool,
}

/// What the host and the uploader share.
#[derive(Debug, Default)]
struct Slot {
    newest: Option<Notice>,
    /// Stop once the newest notice is uploaded, or at this instant.
    stop: Option<Instant>,
    /// End the back-off pause after a failed upload now ([`Replicator::kick`]).
    kick: bool,
    status: Replicated,
}

#[derive(Debug, Default)]
struct Shared {
    slot: Mutex<Slot>,
    cond: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // A panic of the other side leaves plain data behind: keep using it.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The uploader of one host: a thread shipping FILE's durable snapshots to
/// the store. See the [module docs](super).
#[derive(Debug)]
pub struct Replicator {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Receives once the thread is done.
    done: std::sync::mpsc::Receiver<()>,
    epoch: EpochId,
}

impl Replicator {
    /// Starts the uploader of a new epoch. Nothing is contacted yet: a store
    /// that is down only delays the uploads.
    ///
    /// # Errors
    /// [`ReplicaError::Url`] for a URL that is not supported;
    /// [`ReplicaError::Io`] if the thread or its runtime cannot start.
    pub fn start(config: ReplicaConfig) -> Result<Self, ReplicaError> {
        Self::start_with(config, None)
    }

    /// [`Replicator::start`], calling `on_uploaded(generation)` on the
    /// uploader thread after every completed upload, with the program
    /// generation the store now holds.
    pub(crate) fn start_with(
        config: ReplicaConfig,
        on_uploaded: Option<OnUploaded>,
    ) -> Result<Self, ReplicaError> {
        let store = Store::open(&config.url, true)?;
        let rt = runtime()?;
        let epoch = EpochId::new_now();
        let shared = Arc::new(Shared::default());
        let (done_tx, done) = std::sync::mpsc::sync_channel(1);
        let mut up = Uploader {
            store,
            rt,
            config,
            epoch: epoch.clone(),
            shared: shared.clone(),
            chain: None,
            on_uploaded,
        };
        let thread = std::thread::Builder::new()
            .name("replica".into())
            .spawn(move || {
                up.run();
                let _ = done_tx.send(());
            })
            .map_err(ReplicaError::io("starting the replica thread"))?;
        tracing::info!("replicating to epoch {}", epoch.name());
        Ok(Self {
            shared,
            thread: Some(thread),
            done,
            epoch,
        })
    }

    /// This run's epoch.
    pub fn epoch(&self) -> &EpochId {
        &self.epoch
    }

    /// Hands over FILE's newest durable state; replaces a notice not yet
    /// taken. Never blocks on the store.
    pub fn notify(&self, notice: Notice) {
        let mut slot = self.shared.lock();
        slot.newest = Some(notice);
        drop(slot);
        self.shared.cond.notify_all();
    }

    /// How far replication has come.
    pub fn replicated(&self) -> Replicated {
        self.shared.lock().status
    }

    /// Ends a back-off pause after a failed upload: the uploader retries at
    /// once (for a client waiting to see a generation replicated).
    pub fn kick(&self) {
        self.shared.lock().kick = true;
        self.shared.cond.notify_all();
    }

    /// Waits until the newest notice is uploaded or `timeout` passes, then
    /// stops the thread; returns how far replication came.
    pub fn finish(mut self, timeout: Duration) -> Replicated {
        self.stop(timeout);
        self.replicated()
    }

    /// Stops the thread once the newest notice is uploaded or `timeout`
    /// passes. A request still in flight a little after that (a store that
    /// neither answers nor refuses) is abandoned with its thread, which
    /// then cannot delay the host's exit.
    fn stop(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        self.shared.lock().stop = Some(deadline);
        self.shared.cond.notify_all();
        let Some(t) = self.thread.take() else { return };
        let give_up = (deadline + STOP_GRACE).saturating_duration_since(Instant::now());
        if self.done.recv_timeout(give_up).is_ok() {
            let _ = t.join();
        } else {
            tracing::warn!("replica: an upload is still in flight; not waiting for it");
        }
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        // Not finished: stop at once (an upload in flight completes or is
        // abandoned; neither leaves a visible partial object).
        if self.thread.is_some() {
            self.stop(Duration::ZERO);
        }
    }
}

/// Where the uploaded chain stands: the log it follows, how many of its
/// bytes and which file generation are in the store.
#[derive(Debug, Clone, Copy)]
struct Chain {
    log: LogId,
    end: u64,
    file_generation: u64,
}

/// Called on the uploader thread after each completed upload.
pub(crate) type OnUploaded = Box<dyn FnMut(u64) + Send>;

struct Uploader {
    store: Store,
    rt: tokio::runtime::Runtime,
    config: ReplicaConfig,
    epoch: EpochId,
    shared: Arc<Shared>,
    chain: Option<Chain>,
    on_uploaded: Option<OnUploaded>,
}

/// How long [`Replicator::finish`] waits past its timeout for a request in flight.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The first pause after a failed upload.
const RETRY_FIRST: Duration = Duration::from_millis(100);

impl Uploader {
    fn run(&mut self) {
        let mut pause = RETRY_FIRST;
        let mut failed_since: Option<Instant> = None;
        while let Some(job) = self.next_job() {
            match self.upload(&job) {
                Ok(()) => {
                    if let Some(t) = failed_since.take() {
                        tracing::info!(
                            "replica: uploads succeed again after {:.1}s; caught up to file generation {}",
                            t.elapsed().as_secs_f64(),
                            job.file_generation
                        );
                    }
                    pause = RETRY_FIRST;
                }
                Err(e) => {
                    let first = failed_since.is_none();
                    failed_since.get_or_insert_with(Instant::now);
                    let n = {
                        let mut slot = self.shared.lock();
                        slot.status.failures += 1;
                        slot.status.failing = true;
                        slot.status.failures
                    };
                    if first || n.is_power_of_two() {
                        tracing::warn!(
                            "replica: upload failed ({n} failures so far), retrying in {pause:?}: {e}"
                        );
                    }
                    if !self.pause(pause) {
                        break;
                    }
                    pause = (pause * 2).min(self.config.retry_max.max(RETRY_FIRST));
                }
            }
        }
    }

    /// Sleeps `d` unless stopping or kicked; false if the stop deadline
    /// passed.
    fn pause(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        // A kick that came during the failed attempt ends the pause at once.
        let mut slot = self.shared.lock();
        loop {
            let now = Instant::now();
            if slot.stop.is_some_and(|t| now >= t) {
                return false;
            }
            if now >= until || std::mem::take(&mut slot.kick) {
                return true;
            }
            let mut end = until;
            if let Some(t) = slot.stop {
                end = end.min(t);
            }
            slot = self
                .shared
                .cond
                .wait_timeout(slot, end - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits for a notice the store does not hold yet; `None` when stopping
    /// (and everything is uploaded, or the deadline passed).
    fn next_job(&self) -> Option<Job> {
        let mut slot = self.shared.lock();
        loop {
            if let Some(n) = &slot.newest
                && self.behind(n)
                && let Ok(file) = n.file.try_clone()
            {
                if slot.stop.is_some_and(|t| Instant::now() >= t) {
                    return None;
                }
                return Some(Job {
                    file,
                    len: n.len,
                    file_generation: n.file_generation,
                    generation: n.generation,
                    at: n.at,
                });
            }
            if slot.stop.is_some() {
                return None;
            }
            slot = self
                .shared
                .cond
                .wait(slot)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Whether `n` holds something the store does not.
    fn behind(&self, n: &Notice) -> bool {
        if n.file_generation == 0 {
            return false;
        }
        match (&self.chain, log_id(&n.file)) {
            (Some(c), Some(i)) => c.log != i || n.file_generation > c.file_generation,
            _ => true,
        }
    }

    /// Uploads what `job` has beyond the chain: a segment on the same inode,
    /// else a new base (then old objects are pruned).
    fn upload(&mut self, job: &Job) -> Result<(), ReplicaError> {
        let log = log_id(&job.file).ok_or_else(|| ReplicaError::Io {
            what: "stat FILE".into(),
            source: std::io::Error::last_os_error(),
        })?;
        let at = to_ms(job.at);
        let (kind, range) = match self.chain {
            Some(c)
                if c.log == log && job.len >= c.end && job.file_generation > c.file_generation =>
            {
                (
                    Kind::Segment {
                        first: c.file_generation + 1,
                        last: job.file_generation,
                    },
                    c.end..job.len,
                )
            }
            _ => (
                Kind::Base {
                    generation: job.file_generation,
                },
                0..job.len,
            ),
        };
        let name = ObjectName { kind, time_ms: at };
        let key = self.store.key(&self.epoch, &name);
        self.rt
            .block_on(self.store.put_range(&key, &job.file, range.clone()))?;
        self.chain = Some(Chain {
            log,
            end: job.len,
            file_generation: job.file_generation,
        });
        {
            let mut slot = self.shared.lock();
            let st = &mut slot.status;
            st.objects += 1;
            st.bytes += range.end - range.start;
            st.bases += u64::from(matches!(kind, Kind::Base { .. }));
            st.failing = false;
            st.generation = job.generation;
            st.file_generation = job.file_generation;
            st.durable_at = Some(job.at);
        }
        if let Some(f) = &mut self.on_uploaded {
            f(job.generation);
        }
        tracing::info!(
            "replicated generation {} (file generation {}): {key}, {} bytes",
            job.generation,
            job.file_generation,
            range.end - range.start
        );
        if let Kind::Base { generation } = kind {
            tracing::info!(
                "replica: base at file generation {generation} uploaded ({} bytes)",
                range.end
            );
            if let Err(e) = self.rt.block_on(self.prune()) {
                tracing::warn!(
                    "replica: pruning old objects failed (retried after the next base): {e}"
                );
            }
        }
        Ok(())
    }

    /// Deletes what the retention rule no longer needs: everything older
    /// than the oldest base kept (the newest [`ReplicaConfig::keep_bases`]
    /// bases, and those younger than [`ReplicaConfig::keep_for`]).
    async fn prune(&self) -> Result<(), ReplicaError> {
        let all = self.store.list().await?;
        let Some(oldest) = oldest_kept(&all, &self.config, now_ms()) else {
            return Ok(());
        };
        let mut deleted = 0;
        for o in all.iter().filter(|o| obsolete(o, &oldest)) {
            self.store
                .delete(&self.store.key(&o.epoch, &o.name))
                .await?;
            deleted += 1;
        }
        if deleted > 0 {
            tracing::info!(
                "replica: deleted {deleted} objects older than base {} of epoch {}",
                oldest.1,
                oldest.0.name()
            );
        }
        Ok(())
    }
}

/// The oldest base kept, as (epoch, generation).
fn oldest_kept(all: &[Listed], config: &ReplicaConfig, now: u64) -> Option<(EpochId, u64)> {
    let mut bases: Vec<(&EpochId, u64, u64)> = all
        .iter()
        .filter_map(|o| match o.name.kind {
            Kind::Base { generation } => Some((&o.epoch, generation, o.name.time_ms)),
            Kind::Segment { .. } => None,
        })
        .collect();
    bases.sort_unstable_by(|a, b| (b.0, b.1).cmp(&(a.0, a.1)));
    let young = |t: u64| {
        config.keep_for.is_some_and(|d| {
            from_ms(now)
                .duration_since(from_ms(t))
                .is_ok_and(|age| age <= d)
        })
    };
    let keep = config.keep_bases.max(1);
    bases
        .iter()
        .enumerate()
        .rfind(|(i, b)| *i < keep || young(b.2))
        .map(|(_, b)| (b.0.clone(), b.1))
}

/// Whether `o` lies before the oldest base kept (no restore from a kept base uses it).
fn obsolete(o: &Listed, oldest: &(EpochId, u64)) -> bool {
    match o.epoch.cmp(&oldest.0) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        std::cmp::Ordering::Equal => match o.name.kind {
            Kind::Base { generation } => generation < oldest.1,
            Kind::Segment { first, .. } => first <= oldest.1,
        },
    }
}

/// A notice taken by the uploader.
struct Job {
    file: File,
    len: u64,
    file_generation: u64,
    generation: u64,
    at: SystemTime,
}

/// Which log a handle holds: its device and inode number, and its header.
///
/// The header matters because a host reuses the inode of a log that a
/// compaction replaced for a later compaction (once no reader pins it):
/// the same inode then holds a new log, whose header names another base
/// generation. A chain continues only on the very log it started on.
type LogId = (u64, u64, [u8; crate::format::HEADER_LEN as usize]);

/// The [`LogId`] of the log `f` holds.
fn log_id(f: &File) -> Option<LogId> {
    use std::os::unix::fs::FileExt;
    let m = f.metadata().ok()?;
    let mut header = [0u8; crate::format::HEADER_LEN as usize];
    f.read_exact_at(&mut header, 0).ok()?;
    Some((m.dev(), m.ino(), header))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(epoch: u64, kind: Kind, time_ms: u64) -> Listed {
        Listed {
            epoch: EpochId {
                start_ms: epoch,
                tag: 1,
            },
            name: ObjectName { kind, time_ms },
            size: 1,
        }
    }

    #[test]
    fn prune_keeps_the_newest_bases_and_their_chains() {
        let all = vec![
            listed(1, Kind::Base { generation: 5 }, 10),
            listed(1, Kind::Segment { first: 6, last: 7 }, 11),
            listed(2, Kind::Base { generation: 3 }, 20),
            listed(2, Kind::Segment { first: 4, last: 9 }, 21),
            listed(2, Kind::Base { generation: 9 }, 22),
            listed(
                2,
                Kind::Segment {
                    first: 10,
                    last: 10,
                },
                23,
            ),
        ];
        let config = ReplicaConfig::new("file:///x");
        let oldest = oldest_kept(&all, &config, 100).expect("bases");
        assert_eq!(oldest.1, 3);
        let gone: Vec<bool> = all.iter().map(|o| obsolete(o, &oldest)).collect();
        assert_eq!(gone, [true, true, false, false, false, false]);

        let config = ReplicaConfig {
            keep_bases: 1,
            ..config
        };
        let oldest = oldest_kept(&all, &config, 100).expect("bases");
        assert_eq!(oldest.1, 9);
        let gone: Vec<bool> = all.iter().map(|o| obsolete(o, &oldest)).collect();
        assert_eq!(gone, [true, true, true, true, false, false]);

        let config = ReplicaConfig {
            keep_for: Some(Duration::from_millis(85)),
            ..config
        };
        assert_eq!(oldest_kept(&all, &config, 100).map(|o| o.1), Some(3));
    }
}
