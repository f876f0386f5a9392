//! Starting a host: FILE is read once, on a warm start checked against the
//! inherited memfd, on a cold start straight into a new memfd; then the
//! writer continues FILE (or starts a new one for a rebuild), the first
//! snapshot is taken before the program runs, and a rebuilt FILE replaces
//! the original.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use super::file::{self, Loaded, Opened};
use super::policy::{Backoff, Lag, RateLimit, Repeats};
use super::snapshot::{self, Read};
use super::{
    HostConfig, HostError, HostStats, LoadProgress, Prepared, SnapshotHost, StartFrom, is_fresh,
};
use crate::live::{self, Host, Initializer, Publisher};
use crate::{OnDamage, RestoreOptions};

impl StartFrom {
    /// Whether the start writes a new FILE.
    fn rebuilds(self) -> bool {
        self != StartFrom::Newest
    }

    /// How FILE is read: to its newest generation (refusing damage), to a
    /// chosen one, or salvaging.
    fn options(self) -> RestoreOptions {
        RestoreOptions {
            until: match self {
                StartFrom::Generation(g) => Some(g),
                _ => None,
            },
            on_damage: if self == StartFrom::Salvage {
                OnDamage::Salvage
            } else {
                OnDamage::Refuse
            },
        }
    }
}

/// [`super::SnapshotHost::prepare`].
pub(super) fn prepare(
    config: HostConfig,
    inherited: Option<OwnedFd>,
    progress: &mut dyn LoadProgress,
) -> Result<Prepared, HostError> {
    config.validate()?;
    let path = file::resolve(&config.path)?;
    file::cleanup_temp(&path);
    // A supervisor that creates regions itself (`shm-fd --supervise`) hands
    // over an all-zero memfd the first time: not a snapshot memfd yet, and
    // nobody's data. It is replaced by ours. A memfd with other contents is
    // never ignored: `Host::open` refuses it below.
    let replaced = inherited.as_ref().is_some_and(|fd| is_fresh(fd.as_fd()));
    if replaced {
        tracing::info!(
            "the inherited memfd {:?} is all zeros (a fresh region, not yet a snapshot memfd): replacing it",
            config.name
        );
    }
    let warm = inherited.filter(|_| !replaced);
    let created = warm.is_none();
    let started = Instant::now();
    let opened = file::open_file(&path)?;
    if opened.is_none() && !config.create && warm.is_none() {
        return Err(HostError::NotFound { path });
    }
    if config.start_from.rebuilds() && opened.is_none() {
        return Err(HostError::NothingToRebuild { path });
    }
    // FILE is read once: on a cold start straight into the new memfd.
    let (memfd, loaded, first_full) = match warm {
        Some(fd) => warm_start(&config, &path, fd, opened, progress)?,
        None => cold_start(&config, &path, opened, progress, started)?,
    };
    Ok(Prepared {
        path,
        config,
        memfd,
        loaded,
        first_full,
        created,
        replaced,
    })
}

/// The inherited memfd, checked against FILE (read, not restored).
fn warm_start(
    config: &HostConfig,
    path: &Path,
    fd: OwnedFd,
    opened: Option<Opened>,
    progress: &mut dyn LoadProgress,
) -> Result<(OwnedFd, Option<Loaded>, bool), HostError> {
    let host = Host::open(fd.as_fd()).map_err(|source| HostError::Inherited { source })?;
    if let StartFrom::Generation(generation) = config.start_from {
        return Err(HostError::GenerationWithInherited { generation });
    }
    let loaded = match opened {
        Some(o) => {
            if host.region_size() != o.region {
                return Err(HostError::SizeMismatch {
                    path: path.to_path_buf(),
                    memfd: host.region_size(),
                    file: o.region,
                });
            }
            let opts = config.start_from.options();
            Some(file::load(path, o, opts, progress, |_, _| {})?)
        }
        None => None,
    };
    let file_gen = loaded.as_ref().map_or(0, |l| l.generation);
    // No program runs yet: a commit the last one died inside counts.
    let live_gen = host
        .generation_after_exit()
        .map_err(|source| HostError::Inherited { source })?;
    if live_gen < file_gen {
        return Err(HostError::InheritedBehind {
            path: path.to_path_buf(),
            memfd: live_gen,
            file: file_gen,
        });
    }
    tracing::info!("warm start from the inherited memfd at generation {live_gen}");
    Ok((fd, loaded, true))
}

/// A new memfd, holding FILE's state (or an all-zero one without FILE).
fn cold_start(
    config: &HostConfig,
    path: &Path,
    opened: Option<Opened>,
    progress: &mut dyn LoadProgress,
    started: Instant,
) -> Result<(OwnedFd, Option<Loaded>, bool), HostError> {
    let region = opened.as_ref().map_or(config.size, |o| o.region);
    let fd = shm_segment::memfd::create(
        &config.name,
        live::memfd_size(region),
        shm_segment::memfd::FIXED_SIZE,
    )
    .map_err(|source| HostError::CreateMemfd { source })?;
    let memfd = |source| HostError::Memfd { source };
    let init = Initializer::new(fd.as_fd(), region).map_err(memfd)?;
    let opts = config.start_from.options();
    let loaded = match opened {
        Some(o) => Some(file::load(path, o, opts, progress, |off, b| {
            init.write(off, b);
        })?),
        None => None,
    };
    let generation = loaded.as_ref().map_or(0, |l| l.generation);
    init.finish(generation).map_err(memfd)?;
    let show = path.display();
    if loaded.is_some() {
        tracing::info!(
            "cold start: restored generation {generation} ({region} bytes) from {show} in {:.3}s",
            started.elapsed().as_secs_f64()
        );
    } else {
        tracing::info!("{show} missing: starting a fresh state of {region} bytes");
    }
    Ok((fd, loaded, config.start_from.rebuilds()))
}

impl Prepared {
    /// Opens the writer and takes the first snapshot before the program
    /// starts: an inherited memfd is compared with FILE page by page (a
    /// commit its predecessor died inside is taken from the work area, as
    /// its next start will); a cold start's memfd is FILE. A rebuild's new
    /// file then replaces FILE, the original kept aside.
    ///
    /// # Errors
    /// [`HostError::Memfd`]; creating or continuing FILE
    /// ([`HostError::Create`], [`HostError::Write`]); for a rebuild,
    /// [`HostError::CreateBeside`], [`HostError::Rebuild`] (FILE unchanged;
    /// the next start removes the new file), [`HostError::KeepAside`],
    /// [`HostError::Rename`]. A failed first snapshot without a rebuild is
    /// logged, not returned: the periodic ones try again.
    pub fn start(self) -> Result<SnapshotHost, HostError> {
        let Prepared {
            path,
            config,
            memfd,
            loaded,
            first_full,
            ..
        } = self;
        let live = Host::open(memfd.as_fd()).map_err(|source| HostError::Memfd { source })?;
        let durable =
            Publisher::open(memfd.as_fd()).map_err(|source| HostError::Memfd { source })?;
        // Every commit wakes the host: continuously, or until the first
        // snapshot (so the program's first work is on disk at once).
        durable.set_wake_on_commit(true);
        // Before the first publish: whether a replicated wait can succeed
        // (and `replicated` back to 0, this host's store may be another).
        #[cfg(feature = "replica")]
        durable.set_replica(config.replica.is_some());
        #[cfg(not(feature = "replica"))]
        durable.set_replica(false);
        #[cfg(feature = "replica")]
        let replicated_words = durable.replicated_publisher();
        let rebuild = config.start_from.rebuilds();
        let persisted = loaded.as_ref().map_or(0, |l| l.generation);
        // The writer continues FILE from the scan just made, or creates FILE;
        // a rebuild starts a new file next to FILE, renamed over it once it
        // holds the state.
        let mut rebuilt = None;
        let writer = match loaded {
            Some(_) if rebuild => {
                let (w, tmp) = file::create_beside(&path, live.region_size())?;
                rebuilt = Some(tmp);
                w
            }
            Some(l) => file::continue_file(&path, l)?,
            None => file::create_file(&path, live.region_size())?,
        };
        let mut host = SnapshotHost {
            path,
            live,
            memfd,
            writer,
            // A rebuilt file holds nothing yet: its first snapshot writes all.
            persisted: if rebuilt.is_some() { 0 } else { persisted },
            limit: RateLimit::new(config.max_write_rate),
            lag: Lag::new(config.lag_warn),
            compact_at: config.compact_at,
            compact_min: config.compact_min,
            compaction: Backoff::new(),
            stats: HostStats::default(),
            refused: None,
            repeats: Repeats::default(),
            snapshot_owed: true,
            durable,
            continuous: config.continuous,
            retry_at: None,
            poll_until: None,
            batch: super::Batch::default(),
            #[cfg(feature = "replica")]
            replica: match config.replica.clone() {
                Some(c) => Some(super::replica::Replica::start(
                    c,
                    config.lag_warn,
                    replicated_words,
                )?),
                None => None,
            },
        };
        if first_full && let Err(e) = snapshot::snapshot(&mut host, Read::Full) {
            if rebuilt.is_some() {
                return Err(HostError::Rebuild {
                    path: host.path,
                    source: Box::new(e),
                });
            }
            tracing::error!("{e}");
        }
        if let Some(tmp) = rebuilt {
            let aside = file::replace_with(&host.path, &tmp)?;
            tracing::info!(
                "{} now starts from generation {}; the original is kept as {}",
                host.path.display(),
                host.persisted,
                aside.display()
            );
        }
        // FILE's generation is durable once FILE's data is (a host killed
        // between its write and its fdatasync left it in the page cache only).
        match std::fs::File::open(&host.path).and_then(|f| f.sync_data()) {
            Ok(()) => {
                host.durable.publish(host.persisted);
                // The epoch's first base: FILE as it is now.
                #[cfg(feature = "replica")]
                super::replica::notify(&mut host);
            }
            Err(e) => tracing::error!("fdatasync {}: {e}", host.path.display()),
        }
        Ok(host)
    }
}
