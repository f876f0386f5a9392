//! Listing a replica, and restoring a snapshot file from it: the newest
//! suitable base of one epoch, then its segments in order, verified as one
//! snapshot log (every record's checksum), cut back to the last consistent
//! generation when an object is missing, corrupt or truncated, and written
//! atomically.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::names::{EpochId, Kind, from_ms, to_ms};
use super::store::{Listed, Store};
use super::{ReplicaError, Target, runtime};
use crate::host::Inspection;
use crate::{FileStorage, create_temp_beside};

/// One object of a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObjectInfo {
    /// Its key below the replica's prefix (`EPOCH/NAME`).
    pub key: String,
    /// A base (a complete snapshot file) or a segment.
    pub base: bool,
    /// The first file generation it holds records of (a base: its newest).
    pub first: u64,
    /// Its newest file generation.
    pub last: u64,
    /// When that generation was durable in FILE.
    pub time: SystemTime,
    /// Its size in bytes.
    pub size: u64,
}

/// One epoch of a replica (a host run): its bases and segments in
/// generation order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EpochInfo {
    /// Its name (`START-TAG`).
    pub id: String,
    /// When the host started.
    pub start: SystemTime,
    /// Its bases, oldest first.
    pub bases: Vec<ObjectInfo>,
    /// Its segments, oldest first.
    pub segments: Vec<ObjectInfo>,
    /// The object a restore of this epoch's newest state ends at, judged by
    /// the names alone: the newest base, or the last of the consecutive
    /// segments after it (the chain [`restore`] follows; a damaged object
    /// would end it earlier). `None` without a base.
    pub newest: Option<ObjectInfo>,
}

/// An object a restore did not use.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Skipped {
    /// Its key (`EPOCH/NAME`), or a description of a missing range.
    pub key: String,
    /// Why.
    pub reason: String,
}

/// What [`restore`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Restored {
    /// The epoch restored from.
    pub epoch: String,
    /// The base's file generation.
    pub base: u64,
    /// The restored file generation.
    pub file_generation: u64,
    /// The program's commit generation it holds.
    pub generation: u64,
    /// Objects downloaded.
    pub objects: usize,
    /// Bytes of the restored file.
    pub bytes: u64,
    /// Objects not used, and why (empty if everything up to the target was
    /// consistent).
    pub skipped: Vec<Skipped>,
}

/// Every epoch of the replica at `url`, oldest first.
///
/// # Errors
/// [`ReplicaError::Url`], [`ReplicaError::Store`].
pub fn list(url: &str) -> Result<Vec<EpochInfo>, ReplicaError> {
    let store = Store::open(url, false)?;
    let all = runtime()?.block_on(store.list())?;
    Ok(group(all)
        .into_iter()
        .map(|(epoch, objs)| {
            let info = |o: &Listed| ObjectInfo {
                key: format!("{}/{}", epoch.name(), o.name.name()),
                base: matches!(o.name.kind, Kind::Base { .. }),
                first: match o.name.kind {
                    Kind::Base { generation } => generation,
                    Kind::Segment { first, .. } => first,
                },
                last: o.name.last(),
                time: from_ms(o.name.time_ms),
                size: o.size,
            };
            let newest = objs.iter().rev().find(|o| is_base(o)).map(|base| {
                let plan = plan(&epoch, base, &objs, Target::Newest);
                info(plan.segments.last().copied().unwrap_or(base))
            });
            EpochInfo {
                id: epoch.name(),
                start: from_ms(epoch.start_ms),
                bases: objs.iter().filter(|o| is_base(o)).map(info).collect(),
                segments: objs.iter().filter(|o| !is_base(o)).map(info).collect(),
                newest,
            }
        })
        .collect())
}

fn is_base(o: &Listed) -> bool {
    matches!(o.name.kind, Kind::Base { .. })
}

/// The objects by epoch, each epoch's in (generation, base first) order.
fn group(all: Vec<Listed>) -> BTreeMap<EpochId, Vec<Listed>> {
    let mut by: BTreeMap<EpochId, Vec<Listed>> = BTreeMap::new();
    for o in all {
        by.entry(o.epoch.clone()).or_default().push(o);
    }
    for objs in by.values_mut() {
        objs.sort_by_key(|o| (o.name.last(), !is_base(o), o.name.time_ms));
    }
    by
}

/// A base and the segments that continue it, up to the target.
struct Plan<'a> {
    epoch: &'a EpochId,
    base: &'a Listed,
    segments: Vec<&'a Listed>,
    /// Segments after a gap or past the target's time are not in the plan;
    /// gaps are reported.
    gap: Option<Skipped>,
}

/// Restores the state `target` names from the replica at `url` into
/// `dest`, written atomically (a temporary file beside it, fsynced, renamed
/// over it, the directory fsynced). The newest epoch that has the target is
/// used, never more than one epoch; the file is its newest suitable base
/// and the consecutive segments after it, verified as one log: at a
/// missing, corrupt or truncated object the file is cut back to the last
/// consistent generation, and the objects left out are listed in
/// [`Restored::skipped`] (and logged).
///
/// # Errors
/// [`ReplicaError::Nothing`] if no epoch has a usable base for the target;
/// store and file errors.
pub fn restore(url: &str, dest: &Path, target: Target) -> Result<Restored, ReplicaError> {
    let store = Store::open(url, false)?;
    let rt = runtime()?;
    let by = group(rt.block_on(store.list())?);
    let mut skipped = Vec::new();
    for (epoch, objs) in by.iter().rev() {
        let mut bases: Vec<&Listed> = objs
            .iter()
            .filter(|o| is_base(o) && base_fits(o, target))
            .collect();
        bases.reverse();
        for base in bases {
            let plan = plan(epoch, base, objs, target);
            if target_unreachable(&plan, target) {
                continue;
            }
            match assemble(&rt, &store, &plan, dest, target)? {
                Ok(mut done) => {
                    skipped.append(&mut done.skipped);
                    done.skipped = skipped;
                    for s in &done.skipped {
                        tracing::warn!("restore: skipped {}: {}", s.key, s.reason);
                    }
                    return Ok(done);
                }
                Err(s) => skipped.push(s),
            }
        }
    }
    for s in &skipped {
        tracing::warn!("restore: skipped {}: {}", s.key, s.reason);
    }
    Err(ReplicaError::Nothing {
        url: url.to_owned(),
        target: describe(target),
    })
}

fn describe(target: Target) -> String {
    match target {
        Target::Newest => "the newest state".into(),
        Target::Generation(g) => format!("file generation {g}"),
        Target::Time(t) => format!("time {}", humantime_ms(to_ms(t))),
    }
}

fn humantime_ms(ms: u64) -> String {
    format!("{}.{:03} (unix seconds)", ms / 1000, ms % 1000)
}

fn base_fits(b: &Listed, target: Target) -> bool {
    match target {
        Target::Newest => true,
        Target::Generation(g) => b.name.last() <= g,
        Target::Time(t) => b.name.time_ms <= to_ms(t),
    }
}

/// Whether the names alone show that the plan cannot reach the wanted generation.
fn target_unreachable(plan: &Plan<'_>, target: Target) -> bool {
    match target {
        Target::Generation(g) => {
            let end = plan
                .segments
                .last()
                .map_or(plan.base.name.last(), |s| s.name.last());
            end < g
        }
        _ => false,
    }
}

/// The base and the consecutive segments after it (each `first` the
/// previous `last + 1`) up to the target.
fn plan<'a>(epoch: &'a EpochId, base: &'a Listed, objs: &'a [Listed], target: Target) -> Plan<'a> {
    let mut next = base.name.last() + 1;
    let mut segments = Vec::new();
    let mut gap = None;
    let mut after: Vec<&Listed> = objs
        .iter()
        .filter(|o| matches!(o.name.kind, Kind::Segment { first, .. } if first >= next))
        .collect();
    after.sort_by_key(|o| match o.name.kind {
        Kind::Segment { first, .. } => first,
        Kind::Base { .. } => 0,
    });
    for s in after {
        let Kind::Segment { first, last } = s.name.kind else {
            continue;
        };
        let past = match target {
            Target::Newest => false,
            Target::Generation(g) => first > g,
            Target::Time(t) => s.name.time_ms > to_ms(t),
        };
        if past {
            break;
        }
        if first != next {
            gap = Some(Skipped {
                key: format!("{}/generations {next}..{}", epoch.name(), first - 1),
                reason: format!(
                    "missing from the store: segments from file generation {first} on are not used"
                ),
            });
            break;
        }
        segments.push(s);
        next = last + 1;
    }
    Plan {
        epoch,
        base,
        segments,
        gap,
    }
}

/// One downloaded object's place in the assembled file.
struct Placed<'a> {
    obj: &'a Listed,
    start: u64,
    end: u64,
}

/// The assembled file: its objects, and those that could not be read.
struct Assembled<'a> {
    st: FileStorage,
    tmp: TempFile,
    placed: Vec<Placed<'a>>,
    skipped: Vec<Skipped>,
}

/// `EPOCH/NAME` of an object.
fn key_of(epoch: &EpochId, o: &Listed) -> String {
    format!("{}/{}", epoch.name(), o.name.name())
}

/// Downloads the plan into a temporary file beside `dest`, verifies it,
/// cuts it to the last consistent generation (and to the target's), and
/// renames it over `dest`. `Ok(Err(skipped))`: the base itself is unusable.
fn assemble(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    plan: &Plan<'_>,
    dest: &Path,
    target: Target,
) -> Result<Result<Restored, Skipped>, ReplicaError> {
    let mut a = match download(rt, store, plan, dest)? {
        Ok(a) => a,
        Err(s) => return Ok(Err(s)),
    };
    let info = match crate::inspect(&a.st) {
        Ok(i) if !i.all_zero && i.generation >= plan.base.name.last() => i,
        Ok(i) => {
            return Ok(Err(Skipped {
                key: key_of(plan.epoch, plan.base),
                reason: format!(
                    "corrupt or truncated base: it restores file generation {}, not {}",
                    i.generation,
                    plan.base.name.last()
                ),
            }));
        }
        Err(e) => {
            return Ok(Err(Skipped {
                key: key_of(plan.epoch, plan.base),
                reason: format!("not a valid snapshot file: {e}"),
            }));
        }
    };
    let (cut, generation) = match target {
        // The names promised `g`, the bytes do not reach it (a corrupt or
        // truncated segment): this plan cannot give exactly `g`.
        Target::Generation(g) if g > info.generation => {
            let mut why = beyond(plan.epoch, &a.placed, info.valid_end, info.generation);
            let first = why.drain(..).next().unwrap_or_else(|| Skipped {
                key: key_of(plan.epoch, plan.base),
                reason: format!(
                    "the consistent log ends at file generation {}",
                    info.generation
                ),
            });
            return Ok(Err(first));
        }
        Target::Generation(g) if g < info.generation => {
            // Where generation g's commit record ends: the format's own
            // replay up to it (`valid_end`), which also proves g restores
            // exactly.
            let opts = crate::RestoreOptions {
                until: Some(g),
                ..crate::RestoreOptions::default()
            };
            let r = crate::restore_with(&a.st, opts, |_, _| {}, |_, _| {})
                .map_err(|source| ReplicaError::Invalid { source })?;
            (r.info.valid_end, g)
        }
        _ => (info.valid_end, info.generation),
    };
    a.skipped.extend(beyond(
        plan.epoch,
        &a.placed,
        info.valid_end,
        info.generation,
    ));
    a.skipped.extend(plan.gap.clone());
    let generation_of_program = install(a.st, a.tmp, dest, cut)?;
    Ok(Ok(Restored {
        epoch: plan.epoch.name(),
        base: plan.base.name.last(),
        file_generation: generation,
        generation: generation_of_program,
        objects: a.placed.iter().filter(|p| p.start < cut).count(),
        bytes: cut,
        skipped: a.skipped,
    }))
}

/// How many objects a restore downloads at once.
pub(crate) const PARALLEL_GETS: usize = 8;

/// Downloads the base and the segments of the plan into a temporary file
/// beside `dest`, [`PARALLEL_GETS`] at a time, each written at its place
/// (the listed sizes of the objects before it); the results are taken in
/// plan order, and a segment that cannot be read (or whose length is not
/// the listed one) ends the chain. `Ok(Err(skipped))`: the base cannot be
/// read.
fn download<'a>(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    plan: &Plan<'a>,
    dest: &Path,
) -> Result<Result<Assembled<'a>, Skipped>, ReplicaError> {
    use futures::StreamExt;
    let (file, tmp) = create_temp_beside(dest).map_err(ReplicaError::io(format!(
        "creating a file beside {}",
        dest.display()
    )))?;
    let tmp = TempFile(Some(tmp));
    let objs: Vec<&Listed> = std::iter::once(plan.base)
        .chain(plan.segments.iter().copied())
        .collect();
    let starts: Vec<u64> = objs
        .iter()
        .scan(0u64, |at, o| {
            let start = *at;
            *at += o.size;
            Some(start)
        })
        .collect();
    let results: Vec<Result<u64, ReplicaError>> = rt.block_on(
        futures::stream::iter(objs.iter().zip(&starts))
            .map(|(o, &at)| store.get_at(store.key(plan.epoch, &o.name), &file, at))
            .buffered(PARALLEL_GETS)
            .collect(),
    );
    let mut placed = Vec::new();
    let mut skipped = Vec::new();
    let mut end = 0u64;
    for ((o, start), got) in objs.iter().zip(starts).zip(results) {
        match got {
            Ok(n) => {
                placed.push(Placed {
                    obj: o,
                    start,
                    end: start + n,
                });
                end = start + n;
                if n != o.size {
                    // Replaced since the listing: the objects after it are
                    // not where they were written. Verification cuts here.
                    break;
                }
            }
            Err(ReplicaError::Store { source, .. }) => {
                let s = Skipped {
                    key: key_of(plan.epoch, o),
                    reason: format!("cannot be read: {source}"),
                };
                if placed.is_empty() {
                    return Ok(Err(s));
                }
                skipped.push(s);
                break;
            }
            Err(e) => return Err(e),
        }
    }
    // Cut off what was written past the chain's end (objects after a
    // failed one, or the part of one that failed midway).
    file.set_len(end)
        .map_err(ReplicaError::io("truncating the restored file"))?;
    Ok(Ok(Assembled {
        st: FileStorage(file),
        tmp,
        placed,
        skipped,
    }))
}

/// The objects beyond the consistent end `valid_end`: the one it cuts into
/// is corrupt or truncated, the later ones follow it.
fn beyond(epoch: &EpochId, placed: &[Placed<'_>], valid_end: u64, generation: u64) -> Vec<Skipped> {
    let mut out = Vec::new();
    for p in placed.iter().filter(|p| p.end > valid_end) {
        let reason = if out.is_empty() {
            format!("corrupt or truncated: the consistent log ends at file generation {generation}")
        } else {
            "follows a corrupt or truncated object".to_owned()
        };
        out.push(Skipped {
            key: key_of(epoch, p.obj),
            reason,
        });
    }
    out
}

/// Cuts the assembled file to `cut` bytes, syncs it, renames it over
/// `dest` and syncs the directory; returns the program generation it holds.
fn install(st: FileStorage, tmp: TempFile, dest: &Path, cut: u64) -> Result<u64, ReplicaError> {
    let file = st.0;
    file.set_len(cut)
        .map_err(ReplicaError::io("truncating the restored file"))?;
    file.sync_all()
        .map_err(ReplicaError::io("fsync of the restored file"))?;
    drop(file);
    let path = tmp.keep();
    let program = Inspection::of(&path).map_or(0, |i| i.program_generation);
    if let Err(e) = std::fs::rename(&path, dest) {
        let _ = std::fs::remove_file(&path);
        return Err(ReplicaError::io(format!(
            "renaming {} to {}",
            path.display(),
            dest.display()
        ))(e));
    }
    sync_dir(dest)?;
    Ok(program)
}

/// The temporary file of a restore: removed unless kept.
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn keep(mut self) -> PathBuf {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `fsync` of the directory holding `path` (makes a rename durable).
fn sync_dir(path: &Path) -> Result<(), ReplicaError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ReplicaError::io(format!("fsync of {}", dir.display())))
}
