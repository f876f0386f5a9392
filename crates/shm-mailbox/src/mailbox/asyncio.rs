//! Asynchronous waiting for a newer message, on tokio (feature `tokio`).
//!
//! The method docs of `OwnedReader::wait_newer_async` say how it works and
//! what it costs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering}; // atomics-ok: process-local stop flag
use std::time::Duration;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{Mailbox, MailboxError, OwnedReader, TypedReader};

/// How often a blocking-pool thread behind `wait_newer_async` looks up from
/// its futex wait to see whether its future was dropped: the longest a
/// dropped wait keeps its thread.
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub const ASYNC_WAIT_SLICE: Duration = Duration::from_millis(100);

#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl OwnedReader {
    /// Waits, asynchronously, until a message newer than `seq` exists.
    ///
    /// Needs a tokio runtime (current-thread or multi-thread). Cancel it by
    /// dropping the future, for example with `tokio::time::timeout`.
    ///
    /// # How, and what it costs
    ///
    /// A reader blocks on a futex in the mailbox's shared memory, and a futex has
    /// no file descriptor that epoll could watch (`FUTEX_FD` was removed from
    /// Linux in 2.6.26). So an async wait is a blocking wait moved off the async
    /// threads: `wait_newer_async` first checks the published sequence (a
    /// message that is already there costs no thread), then runs the ordinary
    /// futex wait on tokio's blocking pool (`spawn_blocking`) and awaits it.
    ///
    /// - **Latency**: the writer's `FUTEX_WAKE` wakes the pool thread at once,
    ///   which completes the task's future: microseconds, as for
    ///   [`Reader::wait_newer`](crate::Reader::wait_newer), plus one task wake-up.
    ///   There is no polling of the mailbox.
    /// - **Threads**: each pending wait holds one thread of the blocking pool
    ///   (tokio's default cap is 512, set by `max_blocking_threads`). Waits past
    ///   the cap queue behind the others, so give the pool at least one thread
    ///   per concurrent waiter (plus what the program's other blocking work needs).
    /// - **Cancellation**: dropping the future (a `select!`, a timeout) sets a
    ///   flag that the pool thread checks each time its futex wait times out,
    ///   every [`ASYNC_WAIT_SLICE`]. So a dropped wait keeps its thread for at
    ///   most that long (and a runtime shutdown waits at most that long for it),
    ///   and an idle waiter makes one futex call per slice (10 a second).
    ///   Waking it sooner would need a `FUTEX_WAKE` on the shared word, which
    ///   wakes every waiter of every process on the mailbox.
    ///
    /// # Errors
    /// `SegmentError::Truncated` if the object was truncated;
    /// [`MailboxError::WaitAborted`] outside a tokio runtime, or when the
    /// runtime is shutting down.
    ///
    /// # Examples
    /// ```
    /// use std::sync::Arc;
    /// use shm_mailbox::{Config, Mailbox};
    /// let name = format!("doc-async-{}", std::process::id());
    /// let mb = Arc::new(Mailbox::open_or_create(&name, Config { readers: 1, slot_bytes: 8 })?);
    /// let mut reader = mb.claim_owned_reader()?;
    /// let mut writer = mb.owned_writer()?;
    /// let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    /// let seq = runtime.block_on(async move {
    ///     let publisher = std::thread::spawn(move || writer.publish(b"tick"));
    ///     reader.wait_newer_async(0).await?;
    ///     publisher.join().unwrap()?;
    ///     let mut buf = [0u8; 8];
    ///     Ok::<_, shm_mailbox::MailboxError>(reader.read(&mut buf)?.map(|m| m.seq))
    /// })?;
    /// assert_eq!(seq, Some(1));
    /// # drop(mb);
    /// # Mailbox::remove(&name)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn wait_newer_async(&self, seq: u64) -> Result<(), MailboxError> {
        wait_newer_async(self.mailbox(), seq).await
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl<T: FromBytes + IntoBytes + Immutable + KnownLayout> TypedReader<T> {
    /// Waits, asynchronously, until a value newer than `seq` exists, as
    /// [`OwnedReader::wait_newer_async`] does.
    pub async fn wait_newer_async(&self, seq: u64) -> Result<(), MailboxError> {
        self.as_untyped().wait_newer_async(seq).await
    }
}

/// Sets its flag when dropped: the future was completed or dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        // Relaxed: a stop request that publishes nothing else; the pool
        // thread only has to see it eventually (at its next slice).
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn wait_newer_async(mailbox: &Arc<Mailbox>, seq: u64) -> Result<(), MailboxError> {
    if mailbox.latest_seq() <= seq && !mailbox.is_truncated() {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| MailboxError::WaitAborted {
                reason: "not inside a tokio runtime",
            })?;
        let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
        let stopped = Arc::clone(&stop.0);
        let waiter = Arc::clone(mailbox);
        let task = runtime.spawn_blocking(move || {
            // Relaxed: see `StopOnDrop`.
            while !stopped.load(Ordering::Relaxed) {
                if waiter.wait_newer_for(seq, ASYNC_WAIT_SLICE) {
                    return;
                }
            }
        });
        // Dropping this future here drops `stop`, which ends the task.
        let joined = task.await;
        drop(stop);
        joined.map_err(|_| MailboxError::WaitAborted {
            reason: "the tokio runtime is shutting down",
        })?;
    }
    mailbox.check_mapped()
}
