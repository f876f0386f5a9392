//! Waiting for durable and replicated generations without committing: the
//! [`Waiter`], which a [`Client`](super::Client) also uses for its own waits.

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shm_segment::{Access, Region, Segment};

use super::client::RawClient;
use super::durable::{DURABLE, Level, REPLICATED, RawDurable, WaitError, WaitSpin};
use super::layout::{self, Geometry, HOST_LOCK_BYTE};
use crate::error::SnapshotError;

/// How often a wait re-checks the host's liveness lock.
const LIVENESS_CHECK: Duration = Duration::from_millis(50);

/// Waits for generations of a live memfd to become durable (or replicated),
/// in any process, while the program's one [`Client`](super::Client)
/// commits.
///
/// A waiter never writes the state: it takes no claim and runs no
/// recovery, so it can be opened at any time, any number of times, without
/// touching the client's uncommitted edits. (Opening a second `Client`
/// instead would be refused: see [`Client`](super::Client).) It writes only
/// the clients' request words of the control page (`wanted`, `requests`,
/// and `wanted_replicated` for a replicated wait), as every wait does. The client's own waits ([`Client::wait_durable`](super::Client::wait_durable)
/// and the others) run this code.
///
/// # Examples
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use shm_snapshot::host::{HostConfig, SnapshotHost};
/// use shm_snapshot::live::{Client, Waiter};
///
/// let dir = std::env::temp_dir().join(format!("waiter-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let config = HostConfig { create: true, size: 4096, ..HostConfig::new(dir.join("s.snap")) };
/// let mut host = SnapshotHost::open(config, None)?;
/// let client = Client::open(host.memfd())?;
/// client.work().write_bytes(0, b"edit")?; // not committed yet
/// // Normally another process, given the memfd: waiting does not disturb
/// // the client's edit.
/// let waiter = Waiter::open(host.memfd())?;
/// let g = client.commit(&[0..4]);
/// assert_eq!(waiter.generation(), g);
/// host.tick(); // the host writes and fdatasyncs FILE
/// assert_eq!(waiter.wait_durable(g, Duration::from_secs(10))?, g);
/// # drop((waiter, client, host));
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Waiter {
    segment: Arc<Segment>,
    geo: Geometry,
    /// How a durable wait polls before it parks.
    spin: WaitSpin,
}

impl Waiter {
    /// Maps an initialized memfd (read-write: a wait writes the request
    /// words) to wait on it.
    ///
    /// # Errors
    /// Not a snapshot memfd, or the wrong size.
    pub fn open(fd: BorrowedFd<'_>) -> Result<Self, SnapshotError> {
        let (segment, geo) = layout::open(fd, Access::ReadWrite)?;
        Ok(Self::new(Arc::new(segment), geo))
    }

    /// The waits over `segment` (checked against `geo` at open).
    pub(crate) fn new(segment: Arc<Segment>, geo: Geometry) -> Self {
        Self {
            segment,
            geo,
            spin: WaitSpin::new(),
        }
    }

    /// The segment's payload.
    #[inline]
    fn payload(&self) -> Region<'_> {
        self.segment.payload()
    }

    /// The durable-commit words.
    #[inline]
    fn durable_raw(&self) -> RawDurable<Region<'_>> {
        RawDurable::new(self.payload())
    }

    /// The program's committed generation (its number of commits).
    #[must_use]
    pub fn generation(&self) -> u64 {
        // INVARIANT: the geometry was checked against the payload at open;
        // only `seq` is read.
        RawClient::new(self.payload(), self.geo).generation()
    }

    /// As [`Client::durable_generation`](super::Client::durable_generation).
    #[must_use]
    pub fn durable_generation(&self) -> u64 {
        self.durable_raw().durable()
    }

    /// As [`Client::replicated_generation`](super::Client::replicated_generation).
    #[must_use]
    pub fn replicated_generation(&self) -> u64 {
        self.durable_raw().published(REPLICATED)
    }

    /// Whether a snapshot host holds the memfd's liveness lock.
    fn host_alive(&self) -> Result<bool, WaitError> {
        shm_segment::is_locked(self.segment.fd(), HOST_LOCK_BYTE).map_err(WaitError::Lock)
    }

    /// As [`Client::set_wait_spin`](super::Client::set_wait_spin).
    pub fn set_wait_spin(&self, cap: Duration) {
        self.spin.set_cap(cap);
    }

    /// The cap set by [`Waiter::set_wait_spin`].
    #[must_use]
    pub fn wait_spin(&self) -> Duration {
        self.spin.cap()
    }

    /// As [`Client::wait_durable`](super::Client::wait_durable).
    ///
    /// # Errors
    /// As [`Client::wait_durable`](super::Client::wait_durable).
    pub fn wait_durable(&self, generation: u64, timeout: Duration) -> Result<u64, WaitError> {
        self.wait_durable_level(generation, Level::Durable, timeout)
    }

    /// As [`Client::wait_replicated`](super::Client::wait_replicated).
    ///
    /// # Errors
    /// As [`Client::wait_replicated`](super::Client::wait_replicated).
    pub fn wait_replicated(&self, generation: u64, timeout: Duration) -> Result<u64, WaitError> {
        self.wait_durable_level(generation, Level::Replicated, timeout)
    }

    /// Waits until generation `generation` (committed already) reaches
    /// `level`: [`Waiter::wait_durable`] for [`Level::Durable`],
    /// [`Waiter::wait_replicated`] for [`Level::Replicated`]; both run this
    /// one routine on their published word.
    ///
    /// # Errors
    /// As those two.
    pub fn wait_durable_level(
        &self,
        generation: u64,
        level: Level,
        timeout: Duration,
    ) -> Result<u64, WaitError> {
        let committed = self.generation();
        if generation > committed {
            return Err(WaitError::Future {
                requested: generation,
                committed,
            });
        }
        let raw = self.durable_raw();
        let word = level.word();
        // A value beyond the committed generation is a stray write (and a
        // replicated one is never beyond the durable one).
        let believed = |d: u64| {
            let limit = match level {
                Level::Durable => self.generation(),
                Level::Replicated => raw.published(DURABLE).min(self.generation()),
            };
            (d >= generation && d <= limit).then_some(d)
        };
        if let Some(d) = believed(raw.published(word)) {
            return Ok(d);
        }
        if !self.host_alive()? {
            return Err(WaitError::NoHost);
        }
        if level == Level::Replicated && !raw.replica_on() {
            return Err(WaitError::NoReplica);
        }
        let timed_out = || WaitError::Timeout {
            requested: generation,
            level,
            reached: raw.published(word),
        };
        if timeout.is_zero() {
            return Err(timed_out());
        }
        let _waiting = self.spin.enter();
        raw.request(generation, level);
        let start = Instant::now();
        // Durable waits poll first (see `set_wait_spin`); a replicated one
        // lasts an upload, far beyond any poll worth its core.
        if level == Level::Durable
            && let Some(d) = self.spin.poll(&raw, word, generation).and_then(believed)
        {
            self.spin.learn(start.elapsed());
            return Ok(d);
        }
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            if let Some(d) = raw
                .wait_step(word, generation, Some(left.min(LIVENESS_CHECK)))
                .and_then(believed)
            {
                if level == Level::Durable {
                    self.spin.learn(start.elapsed());
                }
                return Ok(d);
            }
            if !self.host_alive()? {
                // It may have published just before it exited.
                return believed(raw.published(word)).ok_or(WaitError::HostGone);
            }
            if start.elapsed() >= timeout {
                return Err(timed_out());
            }
        }
    }
}

#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl Waiter {
    /// [`Waiter::wait_durable`] on tokio's blocking pool, as
    /// [`Client::wait_durable_async`](super::Client::wait_durable_async).
    ///
    /// # Errors
    /// As [`Waiter::wait_durable`]; [`WaitError::Runtime`] if the blocking
    /// task did not finish.
    pub async fn wait_durable_async(
        self: Arc<Self>,
        generation: u64,
        timeout: Duration,
    ) -> Result<u64, WaitError> {
        blocking(move || self.wait_durable(generation, timeout)).await
    }

    /// [`Waiter::wait_replicated`] on tokio's blocking pool, as
    /// [`Waiter::wait_durable_async`].
    ///
    /// # Errors
    /// As [`Waiter::wait_replicated`]; [`WaitError::Runtime`] if the
    /// blocking task did not finish.
    pub async fn wait_replicated_async(
        self: Arc<Self>,
        generation: u64,
        timeout: Duration,
    ) -> Result<u64, WaitError> {
        blocking(move || self.wait_replicated(generation, timeout)).await
    }
}

/// Runs a blocking wait on tokio's blocking pool.
#[cfg(feature = "tokio")]
pub(crate) async fn blocking(
    wait: impl FnOnce() -> Result<u64, WaitError> + Send + 'static,
) -> Result<u64, WaitError> {
    tokio::task::spawn_blocking(wait)
        .await
        .unwrap_or_else(|e| Err(WaitError::Runtime(e.to_string())))
}
