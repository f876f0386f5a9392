//! The host's side of replication: a notice to the uploader after every
//! durable snapshot, the replicated generation published in the memfd after
//! every completed upload (by the uploader thread), a retry at once for a
//! client waiting to see a generation replicated, the replication lag in
//! the log, and the wait for the last uploads at exit.

use std::time::{Duration, Instant};

use super::{HostError, SnapshotHost};
use crate::live::ReplicatedPublisher;
use crate::replica::{Notice, ReplicaConfig, Replicated, Replicator};

/// The uploader and the lag bookkeeping.
#[derive(Debug)]
pub(crate) struct Replica {
    up: Replicator,
    drain: Duration,
    /// [`super::HostConfig::lag_warn`].
    lag_warn: Duration,
    /// The newest file generation handed to the uploader.
    notified: u64,
    /// Since when the store has been behind FILE.
    behind_since: Option<Instant>,
    /// When the lag was last logged.
    warned: Option<Instant>,
    max_lag: Duration,
    max_lag_generations: u64,
    /// The highest `wanted_replicated` the uploader was kicked for.
    kicked: u64,
}

impl Replica {
    pub(crate) fn start(
        config: ReplicaConfig,
        lag_warn: Duration,
        words: ReplicatedPublisher,
    ) -> Result<Self, HostError> {
        let drain = config.drain;
        let on_uploaded = Box::new(move |generation| words.publish(generation));
        let up = Replicator::start_with(config, Some(on_uploaded))
            .map_err(|source| HostError::Replica { source })?;
        Ok(Self {
            up,
            drain,
            lag_warn,
            notified: 0,
            behind_since: None,
            warned: None,
            max_lag: Duration::ZERO,
            max_lag_generations: 0,
            kicked: 0,
        })
    }

    pub(crate) fn replicated(&self) -> Replicated {
        self.up.replicated()
    }
}

/// Hands FILE's newest durable state to the uploader.
pub(crate) fn notify(h: &mut SnapshotHost) {
    let Some(r) = &mut h.replica else { return };
    let fg = h.writer.generation();
    if fg == 0 || fg == r.notified {
        return;
    }
    // A pinned description of its own, not a dup of the writer's: the
    // writer then never reuses this inode for a compaction while the
    // uploader may still read it.
    match crate::format::files::pinned_reader(&h.writer.storage().0) {
        Ok(file) => {
            r.up.notify(Notice::new(file, h.writer.len(), fg, h.persisted));
            r.notified = fg;
            r.behind_since.get_or_insert_with(Instant::now);
        }
        Err(e) => tracing::warn!("replica: cannot open a pinned handle of FILE: {e}"),
    }
}

/// A client waits to see `wanted` replicated (`wanted_replicated`, read
/// after `requests`): if that is news and the store does not have it yet,
/// the uploader retries a failed upload at once rather than after its
/// back-off (once per new wanted generation, so waiters cannot make it
/// hammer a store that is down).
pub(crate) fn kick(h: &mut SnapshotHost, wanted: u64) {
    let Some(r) = &mut h.replica else { return };
    if wanted <= r.kicked {
        return;
    }
    r.kicked = wanted;
    if r.up.replicated().generation < wanted {
        r.up.kick();
    }
}

/// Logs the replication lag when the store has been behind FILE for longer
/// than `lag_warn` (at most that often).
pub(crate) fn check_lag(h: &mut SnapshotHost) {
    let persisted = h.persisted;
    let Some(r) = &mut h.replica else { return };
    let now = Instant::now();
    let lag_warn = r.lag_warn;
    let got = r.up.replicated();
    if got.file_generation >= r.notified {
        r.behind_since = None;
        return;
    }
    let Some(since) = r.behind_since else { return };
    let lag = now - since;
    let behind = persisted.saturating_sub(got.generation);
    r.max_lag = r.max_lag.max(lag);
    r.max_lag_generations = r.max_lag_generations.max(behind);
    if lag >= lag_warn && r.warned.is_none_or(|t| now - t >= lag_warn) {
        r.warned = Some(now);
        tracing::warn!(
            "replica behind FILE for {:.1}s: replicated generation {}, durable {persisted} ({behind} behind){}",
            lag.as_secs_f64(),
            got.generation,
            if got.failing {
                "; uploads are failing"
            } else {
                ""
            }
        );
    }
}

/// Waits for the last uploads (at most [`ReplicaConfig::drain`]), stops the
/// uploader and logs how far it came.
pub(crate) fn finish(h: &mut SnapshotHost) -> Option<Replicated> {
    notify(h);
    let r = h.replica.take()?;
    let started = Instant::now();
    let got = r.up.finish(r.drain);
    let behind = h.persisted.saturating_sub(got.generation);
    tracing::info!(
        "at exit: replicated generation {} of durable {} ({behind} behind, waited {:.1}s); {} objects ({} bases), {} bytes uploaded, {} failed attempts; largest replication lag {} generations, {:.1}s",
        got.generation,
        h.persisted,
        started.elapsed().as_secs_f64(),
        got.objects,
        got.bases,
        got.bytes,
        got.failures,
        r.max_lag_generations,
        r.max_lag.as_secs_f64()
    );
    Some(got)
}
