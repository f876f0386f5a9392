//! One snapshot: stream the pages committed since FILE's generation from the
//! memfd into FILE (retrying on conflicts, refusing a stray sequence for
//! good), then compact when the log has outgrown its limit; the periodic
//! tick and the exit snapshot around it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Finished, HostError, SnapshotHost, StrayWrite, prefix};
use crate::ErrorKind;
use crate::live::{Changed, PageSink};
use crate::{FileStorage, Snapshot, SnapshotError};

/// How a snapshot reads the live state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    /// Only the pages committed after FILE's generation
    /// ([`crate::live::Host::copy_changed`]), while the program may run.
    Changed,
    /// Every page, compared with FILE's checksums: before the program
    /// starts on an inherited memfd (whose history FILE may not share), and
    /// after it died inside a commit ([`crate::live::Host::read_after_exit`]).
    Full,
}

/// Attempts of one snapshot before it is reported as skipped.
const CONFLICT_TRIES: u32 = 50;

/// The sleep after the first conflict of a snapshot; it doubles with every
/// further one, up to [`MAX_CONFLICT_SLEEP`].
const FIRST_CONFLICT_SLEEP: Duration = Duration::from_micros(20);

/// The longest sleep between two attempts: the 50 attempts span about
/// 200 ms, so a program preempted in the middle of a commit (its `seq` odd,
/// its pages stamped above the last complete commit) is waited for, where 50
/// attempts back to back gave up within a millisecond and left the state off
/// disk until the next interval.
const MAX_CONFLICT_SLEEP: Duration = Duration::from_millis(5);

/// The sleep after the `tries`-th conflict in a row (1-based).
fn conflict_sleep(tries: u32) -> Duration {
    FIRST_CONFLICT_SLEEP
        .saturating_mul(1 << (tries - 1).min(16))
        .min(MAX_CONFLICT_SLEEP)
}

/// Why a snapshot attempt ended without a new generation.
enum Stop {
    /// FILE is up to date.
    Nothing,
    Failed(HostError),
    Refuse(StrayWrite),
}

/// Takes a snapshot unless the live state is already on disk; compacts the
/// log afterwards when it has outgrown `compact_at` times the image.
pub(crate) fn snapshot(h: &mut SnapshotHost, read: Read) -> Result<(), HostError> {
    if let Some(why) = &h.refused {
        return Err(refused(h, why.clone()));
    }
    let started = Instant::now();
    let before = h.persisted;
    let g = match copy_into_file(h, read) {
        Ok(g) => g,
        Err(Stop::Nothing) => return Ok(()),
        Err(Stop::Failed(e)) => return Err(e),
        Err(Stop::Refuse(why)) => {
            h.refused = Some(why.clone());
            return Err(refused(h, why));
        }
    };
    let wrote = h.writer.last_bytes_written;
    // The recovery point just before FILE catches up: the largest lag since
    // the last snapshot (the live state only grows until then).
    let live = h.live.generation().ok();
    if let Some(live) = live
        && let Some(w) = h.lag.observe(Instant::now(), live, before)
    {
        tracing::warn!("{w}");
    }
    h.persisted = g;
    // The writer's commit returned only after its fdatasync.
    h.durable.publish(g);
    h.lag.caught_up(live.unwrap_or(g), g, started);
    h.stats.snapshots += 1;
    h.stats.bytes += wrote;
    h.limit.wrote(started, wrote);
    tracing::info!("durable generation {g} ({wrote} bytes written)");
    let compacted = maybe_compact(h);
    // After a compaction the notice carries the new inode: a new base.
    #[cfg(feature = "replica")]
    super::replica::notify(h);
    compacted
}

/// The error for a snapshot not taken because of `why`.
fn refused(h: &SnapshotHost, why: StrayWrite) -> HostError {
    HostError::Refused {
        path: h.path.clone(),
        generation: h.persisted,
        reason: why,
    }
}

/// Copies the live state into one new generation of FILE; returns it.
fn copy_into_file(h: &mut SnapshotHost, read: Read) -> Result<u64, Stop> {
    let persisted = h.persisted;
    let failed = |h: &SnapshotHost, source| {
        Stop::Failed(HostError::Write {
            path: h.path.clone(),
            source,
        })
    };
    let mut tries = 0;
    let tagged = h.writer.version() >= 2;
    loop {
        let mut tx = h.writer.begin();
        let got = match read {
            Read::Full => h.live.read_after_exit(|p, b| tx.page(p + 1, b).map(drop)),
            Read::Changed => match h.live.copy_changed_into(persisted, &mut IntoFile(&mut tx)) {
                Ok(Changed::Complete(g)) => Ok(g),
                Ok(Changed::Nothing) => return Err(Stop::Nothing),
                Ok(Changed::Conflict) => {
                    drop(tx);
                    h.stats.conflicts += 1;
                    tries += 1;
                    if tries == CONFLICT_TRIES {
                        return Err(Stop::Failed(HostError::Conflicts {
                            tries: CONFLICT_TRIES,
                        }));
                    }
                    // A commit is under way, or the program commits faster
                    // than a pass copies: give it the core for a while.
                    std::thread::sleep(conflict_sleep(tries));
                    continue;
                }
                Ok(Changed::OutOfRange { seq }) => {
                    return Err(Stop::Refuse(StrayWrite::OutOfRange { seq }));
                }
                Ok(Changed::Backwards { generation }) => {
                    return Err(Stop::Refuse(StrayWrite::Backwards {
                        from: persisted,
                        to: generation,
                    }));
                }
                Err(e) => Err(e),
            },
        };
        let g = match got {
            Ok(g) => g,
            Err(e) if e.kind() == ErrorKind::BadSequence => {
                return Err(Stop::Refuse(StrayWrite::BadSequence(Arc::new(e))));
            }
            Err(e) => {
                drop(tx);
                return Err(failed(h, e));
            }
        };
        if g < persisted {
            return Err(Stop::Refuse(StrayWrite::Backwards {
                from: persisted,
                to: g,
            }));
        }
        if g == persisted && tx.pages_written() == 0 {
            return Err(Stop::Nothing);
        }
        // The program's generation is the commit's tag; a version 1 FILE
        // (until its next compaction upgrades it) keeps it in image page 0.
        let committed = if tagged {
            tx.commit_tagged(g)
        } else {
            tx.page(0, &prefix(g)).and_then(|_| tx.commit_tagged(g))
        };
        if let Err(e) = committed {
            return Err(failed(h, e));
        }
        return Ok(g);
    }
}

/// The live state's page `p` is the snapshot's image page `p + 1` (image
/// page 0 is the prefix): the host copies each changed page straight into
/// its record in the writer's buffer.
struct IntoFile<'t, 'w>(&'t mut Snapshot<'w, FileStorage>);

impl PageSink for IntoFile<'_, '_> {
    type Error = SnapshotError;

    fn slot(&mut self, page: u64, len: usize) -> Result<&mut [u8], SnapshotError> {
        self.0.slot(page + 1, len)
    }

    fn keep(&mut self) -> Result<(), SnapshotError> {
        self.0.keep().map(drop)
    }

    fn discard(&mut self) {
        self.0.discard();
    }
}

/// Compacts the log when it has outgrown `compact_at` times the image and
/// `compact_min`, unless a full disk made the last attempt fail recently.
fn maybe_compact(h: &mut SnapshotHost) -> Result<(), HostError> {
    #[allow(clippy::cast_precision_loss)] // sizes far below 2^52
    let grown = h.writer.len() as f64 > h.compact_at * h.writer.region_size() as f64
        && h.writer.len() >= h.compact_min;
    if !(h.compact_at > 0.0 && grown && h.compaction.due(Instant::now())) {
        return Ok(());
    }
    let before = h.writer.len();
    if let Err(source) = h.writer.compact_file(&h.path) {
        let retry_in = source
            .is_disk_full()
            .then(|| h.compaction.failed(Instant::now()));
        return Err(HostError::Compact {
            path: h.path.clone(),
            source,
            retry_in,
        });
    }
    h.compaction.succeeded();
    h.stats.compactions += 1;
    tracing::info!(
        "compacted {}: {before} -> {} bytes",
        h.path.display(),
        h.writer.len()
    );
    Ok(())
}

/// Logs an error, the same one at most every 10 s.
pub(crate) fn report(h: &mut SnapshotHost, e: &HostError) {
    let msg = e.to_string();
    if h.repeats.due(Instant::now(), &msg) {
        tracing::error!("{msg}");
    }
}

/// A periodic tick: snapshot if the rate limit allows, then check the lag.
pub(crate) fn tick(h: &mut SnapshotHost) {
    h.snapshot_owed = false;
    if h.limit.ready(Instant::now())
        && let Err(e) = snapshot(h, Read::Changed)
    {
        if matches!(e, HostError::Conflicts { .. }) {
            // Skipped: try again soon rather than an interval later.
            h.snapshot_owed = true;
            h.retry_at = Some(Instant::now() + super::RETRY_AFTER);
        }
        report(h, &e);
    }
    if let Ok(live) = h.live.generation()
        && let Some(w) = h.lag.observe(Instant::now(), live, h.persisted)
    {
        tracing::warn!("{w}");
    }
    #[cfg(feature = "replica")]
    super::replica::check_lag(h);
}

/// The last snapshot at the program's exit (never rate-limited), and the summary.
pub(crate) fn finish(h: &mut SnapshotHost) -> Finished {
    // No client runs: a commit the program died inside is taken whole
    // from its work area, as the next `Client::open` will finish it.
    let read = if h.live.died_in_commit() {
        Read::Full
    } else {
        Read::Changed
    };
    if let Err(e) = snapshot(h, read) {
        tracing::error!("{e}");
    }
    let live = h.live.generation_after_exit();
    let behind = match &live {
        Ok(g) if *g >= h.persisted => format!("{} behind", g - h.persisted),
        Ok(_) => "went backwards: not persisted".into(),
        Err(_) => "not persisted".into(),
    };
    let shown = match &live {
        Ok(g) => g.to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    if let Some(kb) = private_memory_kb() {
        tracing::info!(
            "host private memory at exit: {kb} kB (state: {} kB in the memfd)",
            h.live.region_size() / 1024
        );
    }
    let stats = h.stats();
    tracing::info!(
        "at exit: file at generation {}, live at {shown} ({behind}); {} snapshots, {} bytes written, {} compactions, {} copy conflicts; largest lag {} generations, {:.1}s",
        h.persisted,
        stats.snapshots,
        stats.bytes,
        stats.compactions,
        stats.conflicts,
        stats.max_lag_generations,
        stats.max_lag.as_secs_f64()
    );
    Finished {
        persisted: h.persisted,
        live: live.ok(),
        stats,
        #[cfg(feature = "replica")]
        replicated: super::replica::finish(h),
    }
}

/// `RssAnon` of this process (kB): its private memory, without the mapped memfd.
fn private_memory_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
