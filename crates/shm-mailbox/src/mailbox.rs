//! The public handles: [`Mailbox`], [`Writer`], [`Reader`].

use std::time::{Duration, Instant};

use shm_segment::{Segment, SegmentError};
use shm_sync::atomic::Ordering;
use std::sync::atomic::AtomicBool; // atomics-ok: process-local bookkeeping

use crate::layout::{Config, LayoutError, NOTIFY_BYTE, R_PID, Shape, W_WAITERS};
use crate::liveness;
use crate::protocol::{self, Corrupt, Message, Words};

/// Why a mailbox operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MailboxError {
    /// The shared-memory object could not be created or opened.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// The mailbox's shape is invalid or differs from the one asked for.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Shared state failed validation.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    /// Another live process holds this role.
    #[error("{role} is already held by another live process")]
    InUse {
        /// `writer` or `reader N`.
        role: String,
    },
    /// The reader index is not below the mailbox's reader count.
    #[error("reader index {index} is out of range: this mailbox has {readers} readers")]
    NoSuchReader {
        /// Index asked for.
        index: usize,
        /// Readers the mailbox has.
        readers: usize,
    },
    /// A message larger than the slot size.
    #[error("message of {len} bytes exceeds the slot size of {max}")]
    TooLarge {
        /// Message length.
        len: usize,
        /// Slot size.
        max: usize,
    },
    /// A liveness lock call failed.
    #[error("mailbox {name}: liveness lock (fcntl F_OFD_SETLK): {source}")]
    Lock {
        /// The mailbox's name.
        name: String,
        /// The OS error.
        #[source]
        source: rustix::io::Errno,
    },
}

/// A latest-value mailbox in a named shared-memory object.
///
/// One [`Writer`] at a time publishes messages; up to `readers` [`Reader`]s,
/// each with its own index, read the newest one. Any process may be SIGKILLed
/// at any time: the object persists (until [`Mailbox::remove`]), a restarted
/// writer continues from the last complete message, and a restarted reader
/// releases what its previous incarnation held.
///
/// # Examples
/// ```
/// use shm_mailbox::{Config, Mailbox};
/// let name = format!("doc-mailbox-{}", std::process::id());
/// let mb = Mailbox::open_or_create(&name, Config { readers: 2, slot_bytes: 64 })?;
/// let mut writer = mb.writer()?;
/// writer.publish(b"hello")?;
/// let mut reader = mb.reader(0)?;
/// let mut buf = [0u8; 64];
/// let msg = reader.read(&mut buf)?.expect("one message was published");
/// assert_eq!(&buf[..msg.len], b"hello");
/// drop(reader);
/// drop(writer);
/// drop(mb);
/// Mailbox::remove(&name)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Mailbox {
    segment: Segment,
    shape: Shape,
    /// Reader indices held through this handle. Liveness locks cannot tell
    /// them from free ones (they belong to our own open file description), so
    /// reaping must skip them.
    local_readers: Box<[AtomicBool]>,
}

impl Mailbox {
    /// Opens the mailbox `name`, creating it with `config` if it does not
    /// exist. An existing mailbox of another shape is refused.
    #[allow(
        clippy::missing_panics_doc,
        reason = "the expect states an invariant: the payload was sized for the config block"
    )]
    pub fn open_or_create(name: &str, config: Config) -> Result<Mailbox, MailboxError> {
        let shape = config.shape()?;
        // Open first without a size, so a mailbox of another shape is reported
        // as such rather than as too small.
        let existing = match Segment::builder(name).open() {
            Ok(segment) => Some(segment),
            Err(SegmentError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let segment = match existing {
            Some(segment) => segment,
            None => Segment::builder(name)
                .size(shape.total_words() * 8)
                .persistent(true)
                .open_or_create_with(|payload| {
                    for (i, w) in shape.config_words().iter().enumerate() {
                        payload
                            .write(i * 8, w)
                            .expect("INVARIANT: the payload holds the config block");
                    }
                })?,
        };
        let mailbox = Mailbox::from_segment(segment)?;
        if mailbox.shape != shape {
            return Err(LayoutError::Mismatch {
                readers: config.readers,
                slot_bytes: shape.slot_bytes(),
                found_readers: mailbox.shape.readers,
                found_slot_bytes: mailbox.shape.slot_bytes(),
            }
            .into());
        }
        Ok(mailbox)
    }

    /// Opens an existing mailbox of whatever shape it has.
    pub fn open(name: &str) -> Result<Mailbox, MailboxError> {
        Mailbox::from_segment(Segment::builder(name).open()?)
    }

    fn from_segment(segment: Segment) -> Result<Mailbox, MailboxError> {
        let payload = segment.payload();
        let mut config = [0u64; 5];
        for (i, w) in config.iter_mut().enumerate() {
            *w = payload.read(i * 8).map_err(|_| LayoutError::TooSmall {
                need: 40,
                have: payload.len(),
            })?;
        }
        // Zeros read from a truncated object are not a foreign config block.
        segment.check_mapped()?;
        let shape = Shape::from_words(config, payload.len() / 8)?;
        let local_readers = (0..shape.readers).map(|_| AtomicBool::new(false)).collect();
        Ok(Mailbox {
            segment,
            shape,
            local_readers,
        })
    }

    /// Removes the mailbox `name` if no process has it open. Refused with
    /// `SegmentError::InUse` while one does, and for anything that is not
    /// an outlive segment (see [`Segment::remove`]).
    pub fn remove(name: &str) -> Result<bool, MailboxError> {
        Ok(Segment::remove(name)?)
    }

    /// Removes the mailbox `name` even while processes have it open: they
    /// keep the old object, newcomers get a new one (a split between the
    /// two). For operators who know the attached processes are going away.
    pub fn force_remove(name: &str) -> Result<bool, MailboxError> {
        Ok(Segment::force_remove(name)?)
    }

    /// `SegmentError::Truncated` if another process shrank the object under
    /// us: checked after every access, so zeros read from it are never taken
    /// for messages.
    fn check_mapped(&self) -> Result<(), MailboxError> {
        Ok(self.segment.check_mapped()?)
    }

    fn lock_error(&self, source: rustix::io::Errno) -> MailboxError {
        MailboxError::Lock {
            name: self.segment.name().unwrap_or("memfd").to_owned(),
            source,
        }
    }

    /// The mailbox's shape.
    pub fn config(&self) -> Config {
        Config {
            readers: self.shape.readers,
            slot_bytes: self.shape.slot_bytes(),
        }
    }

    fn words(&self) -> Words<'_> {
        let words = self
            .segment
            .payload()
            .atomics_u64(0, self.shape.total_words())
            .expect("INVARIANT: the shape was validated against the payload length");
        Words::new(words, self.shape).expect("INVARIANT: as above")
    }

    fn notify(&self) -> &shm_sync::atomic::AtomicU32 {
        self.segment
            .payload()
            .atomic_u32(NOTIFY_BYTE)
            .expect("INVARIANT: inside the control line")
    }

    /// Claims the writer role. Refused while another live process holds it.
    pub fn writer(&self) -> Result<Writer<'_>, MailboxError> {
        if !liveness::try_lock(self.segment.fd(), liveness::WRITER_SLOT)
            .map_err(|e| self.lock_error(e))?
        {
            return Err(MailboxError::InUse {
                role: "writer".to_owned(),
            });
        }
        let writer = Writer {
            mailbox: self,
            publishes: 0,
        };
        writer.reap_dead_readers();
        self.check_mapped()?;
        Ok(writer)
    }

    /// Claims reader index `index`, releasing whatever a previous (killed)
    /// holder of the index left held. Refused while another live process holds it.
    pub fn reader(&self, index: usize) -> Result<Reader<'_>, MailboxError> {
        if index >= self.shape.readers {
            return Err(MailboxError::NoSuchReader {
                index,
                readers: self.shape.readers,
            });
        }
        if !liveness::try_lock(self.segment.fd(), index).map_err(|e| self.lock_error(e))? {
            return Err(MailboxError::InUse {
                role: format!("reader {index}"),
            });
        }
        // Relaxed: process-local flag, read only by this handle's writer for reaping.
        self.local_readers[index].store(true, Ordering::Relaxed);
        let words = self.words();
        let epoch = words.attach_reader(index);
        // Relaxed: diagnostics only.
        words
            .at(self.shape.reader(index, R_PID))
            .store(u64::from(std::process::id()), Ordering::Relaxed);
        let reader = Reader {
            mailbox: self,
            index,
            epoch,
        };
        self.check_mapped()?;
        Ok(reader)
    }

    /// Whether another process shrank the mailbox's object under us. Every
    /// fallible operation reports it as `SegmentError::Truncated`; the
    /// object is reclaimed by the next `open_or_create` once nobody has it open.
    pub fn is_truncated(&self) -> bool {
        self.segment.is_truncated()
    }

    /// How many reader indices currently hold a slot (diagnostics: after every
    /// reader has stopped and a writer has reaped, this is 0).
    pub fn held_slots(&self) -> usize {
        let words = self.words();
        // Relaxed: diagnostics only; nothing is read through the hazard.
        (0..self.shape.readers)
            .filter(|&r| words.hazard(r).load(Ordering::Relaxed) != 0)
            .count()
    }

    /// The sequence number of the newest message (0: none yet, or the
    /// object was truncated: see [`Mailbox::is_truncated`]).
    pub fn latest_seq(&self) -> u64 {
        // SYNC: Acquire, pairs with the writer's store of `published`.
        self.words().published().load(Ordering::Acquire) >> 16
    }
}

/// The writer role of a [`Mailbox`]; released when dropped or when the process dies.
#[derive(Debug)]
pub struct Writer<'a> {
    mailbox: &'a Mailbox,
    publishes: u64,
}

impl Writer<'_> {
    /// Publishes `data` as the newest message; never waits for readers.
    /// Returns its sequence number.
    #[allow(
        clippy::missing_panics_doc,
        reason = "the expect states an invariant of `protocol::publish` without a stop"
    )]
    pub fn publish(&mut self, data: &[u8]) -> Result<u64, MailboxError> {
        let max = self.mailbox.shape.slot_bytes();
        if data.len() > max {
            return Err(MailboxError::TooLarge {
                len: data.len(),
                max,
            });
        }
        let words = self.mailbox.words();
        let published = protocol::publish(&words, data, None);
        // Truncated: the words were zeros and the message went nowhere.
        self.mailbox.check_mapped()?;
        let seq = published?.expect("INVARIANT: runs to completion without stop_after");
        self.wake_readers(&words);
        self.publishes += 1;
        if self.publishes.is_multiple_of(4096) {
            self.reap_dead_readers();
        }
        Ok(seq)
    }

    fn wake_readers(&self, words: &Words<'_>) {
        let notify = self.mailbox.notify();
        // SYNC: SeqCst: the store half of a store-load (Dekker) pattern with
        // `Reader::wait_newer`. We bump `notify`, then load `waiters`; a
        // reader increments `waiters` (SeqCst), then FUTEX_WAIT compares
        // `notify` with the value it saw (after a full barrier in the
        // kernel). The total order means one of the two loads sees the other
        // side's store: we see the reader counted and wake it, or its wait
        // sees the new `notify` and returns at once. Also Release, pairs
        // with the reader's Acquire load of `notify`: a reader that sees the
        // bump sees the message, published before it.
        notify.fetch_add(1, Ordering::SeqCst);
        // SYNC: SeqCst: the load half of the pattern above, pairs with the
        // readers' SeqCst increment of `waiters` in `Reader::wait_newer`.
        if words.at(W_WAITERS).load(Ordering::SeqCst) > 0 {
            let _ = rustix::thread::futex::wake(
                notify,
                rustix::thread::futex::Flags::empty(),
                i32::MAX as u32,
            );
        }
    }

    /// The last complete message (for a restarted writer to continue from).
    pub fn last(&self, out: &mut [u8]) -> Result<Option<Message>, MailboxError> {
        let last = protocol::last(&self.mailbox.words(), out);
        self.mailbox.check_mapped()?;
        Ok(last?)
    }

    /// Clears the holds of readers whose process is gone (their liveness lock
    /// is free). Done on claiming the writer role and every 4096 publishes;
    /// never needed for progress (a free slot always exists), only to keep
    /// slots from staying pinned. Returns how many holds were cleared.
    pub fn reap_dead_readers(&self) -> usize {
        let words = self.mailbox.words();
        let mut cleared = 0;
        for r in 0..self.mailbox.shape.readers {
            // Relaxed: only a candidate; the compare-and-swap in `reap`
            // re-checks the exact word atomically before clearing it.
            let seen = words.hazard(r).load(Ordering::Relaxed);
            // Relaxed: see `reader`.
            if seen != 0
                && !self.mailbox.local_readers[r].load(Ordering::Relaxed)
                && liveness::is_held(self.mailbox.segment.fd(), r) == Ok(false)
                && words.reap(r, seen)
            {
                cleared += 1;
            }
        }
        cleared
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        liveness::unlock(self.mailbox.segment.fd(), liveness::WRITER_SLOT);
    }
}

/// One reader index of a [`Mailbox`]; released when dropped or when the process dies.
#[derive(Debug)]
pub struct Reader<'a> {
    mailbox: &'a Mailbox,
    index: usize,
    epoch: u64,
}

impl Reader<'_> {
    /// This reader's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Copies the newest message into `out` (truncated to `out.len()`; the
    /// returned length is the full one). `None` when nothing was published yet.
    pub fn read(&mut self, out: &mut [u8]) -> Result<Option<Message>, MailboxError> {
        let read = protocol::read(&self.mailbox.words(), self.index, self.epoch, out);
        // Checked after the copy: a message read from a truncated object is zeros.
        self.mailbox.check_mapped()?;
        Ok(read?)
    }

    /// Waits until a message newer than `seq` exists, for at most `timeout`.
    /// Returns whether one does; also returns true at once when the object
    /// was truncated, so that the next [`Reader::read`] reports it.
    pub fn wait_newer(&self, seq: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let words = self.mailbox.words();
        let notify = self.mailbox.notify();
        loop {
            if self.mailbox.is_truncated() {
                return true;
            }
            // SYNC: Acquire, pairs with the Release half of the writer's
            // SeqCst bump in `Writer::wake_readers`, made after publishing:
            // read before `published` below, so a bump we have seen comes with
            // its message, and one we have not makes the futex wait return.
            let seen = notify.load(Ordering::Acquire);
            if self.mailbox.latest_seq() > seq {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            // SYNC: SeqCst: the store half of our side of the store-load
            // (Dekker) pattern of `Writer::wake_readers`, pairs with the
            // writer's SeqCst bump of `notify` and SeqCst load of `waiters`;
            // the load half is FUTEX_WAIT's compare of `notify` below.
            words.at(W_WAITERS).fetch_add(1, Ordering::SeqCst);
            // Relaxed: only saves a futex call when the message came in
            // meanwhile. A newer value sends us round the loop, where
            // `latest_seq` reads it again with Acquire; a stale one is caught
            // by the futex's compare of `notify` (the pattern above).
            if words.published().load(Ordering::Relaxed) >> 16 <= seq {
                let ts = rustix::time::Timespec {
                    tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
                    tv_nsec: left.subsec_nanos().into(),
                };
                let _ = rustix::thread::futex::wait(
                    notify,
                    rustix::thread::futex::Flags::empty(),
                    seen,
                    Some(&ts),
                );
            }
            // Relaxed: a count; the read-modify-write never loses another
            // reader's increment, and a writer that still sees ours only
            // makes a needless wake call.
            words.at(W_WAITERS).fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        // SYNC: Release, pairs with the Acquire loads of the writer's hazard
        // scan (`protocol::free_slot`): whatever this handle copied is
        // complete before a writer sees the slot free.
        self.mailbox
            .words()
            .hazard(self.index)
            .store(0, Ordering::Release);
        liveness::unlock(self.mailbox.segment.fd(), self.index);
        // Relaxed: see `Mailbox::reader`.
        self.mailbox.local_readers[self.index].store(false, Ordering::Relaxed);
    }
}
