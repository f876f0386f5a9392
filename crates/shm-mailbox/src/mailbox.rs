//! [`Mailbox`]: a named mailbox object, opened or created. Its role handles
//! are in `handles`, typed handles in `typed`, async waiting in `asyncio`.

use shm_segment::{AccessPolicy, Segment, SegmentError};
use shm_sync::atomic::Ordering;
use std::sync::atomic::AtomicBool; // atomics-ok: process-local bookkeeping

use crate::layout::{Config, LayoutError, NOTIFY_BYTE, Shape};
use crate::protocol::{Corrupt, Words};

#[cfg(feature = "tokio")]
mod asyncio;
mod handles;
mod typed;

#[cfg(feature = "tokio")]
pub use asyncio::ASYNC_WAIT_SLICE;
pub use handles::{OwnedReader, OwnedWriter, Reader, Writer};
pub use typed::{TypedMailbox, TypedReader, TypedWriter};

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
    /// Another live process, or another handle of the same [`Mailbox`],
    /// holds this role.
    #[error("{role} is already held by a live handle (in this or another process)")]
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
    /// Every reader index is held by a live handle: nothing left to claim.
    #[error("all {readers} reader indices of this mailbox are held by live handles")]
    NoFreeReader {
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
    /// A typed handle met a mailbox bound to another payload type: another
    /// structure (a field renamed, reordered or retyped, another tag), or
    /// another explicit tag.
    #[error(
        "mailbox holds `{found}` ({found_size} bytes, fingerprint {found_id:#018x}), \
         not `{expected}` ({expected_size} bytes, fingerprint {expected_id:#018x}): {hint}",
        hint = type_mismatch_hint(*.expected_size, *.found_size)
    )]
    TypeMismatch {
        /// The type asked for: the name of a [`Plain`](shm_segment::Plain)
        /// type, or the tag given to
        /// [`TypedMailbox::with_tag`](crate::TypedMailbox::with_tag).
        expected: String,
        /// Size of the type asked for.
        expected_size: usize,
        /// Fingerprint of the type asked for ([`shm_segment::Layout::id`]).
        expected_id: u64,
        /// The name (or tag) the mailbox was bound with, as recorded by the
        /// handle that bound it (possibly truncated to 40 bytes; empty if that
        /// handle has not recorded it yet).
        found: String,
        /// Size of the type the mailbox is bound to (0 if not recorded yet).
        found_size: usize,
        /// Fingerprint the mailbox is bound to.
        found_id: u64,
    },
    /// A typed reader found a message whose length is not its type's size
    /// (published through the untyped API).
    #[error("message of {len} bytes where the payload type has {expected}")]
    MessageSize {
        /// Length of the message found.
        len: usize,
        /// Size of the payload type.
        expected: usize,
    },
    /// A liveness lock call failed (reopening the segment through
    /// `/proc/self/fd`, or `fcntl`).
    #[error(
        "mailbox {name}: liveness lock (reopen through /proc/self/fd, fcntl F_OFD_SETLK): {source}"
    )]
    Lock {
        /// The mailbox's name.
        name: String,
        /// The OS error.
        #[source]
        source: rustix::io::Errno,
    },
    /// An asynchronous wait could not run (no tokio runtime, or the runtime
    /// is shutting down).
    #[error("waiting for a newer message was aborted: {reason}")]
    WaitAborted {
        /// What went wrong.
        reason: &'static str,
    },
}

/// What differs between two payload types, in words, for
/// [`MailboxError::TypeMismatch`].
fn type_mismatch_hint(expected_size: usize, found_size: usize) -> &'static str {
    if found_size == 0 {
        "the binding handle had not recorded its size yet"
    } else if expected_size != found_size {
        "the types differ in size"
    } else {
        "same size, but the fields' names, order or types (or the tags) differ"
    }
}

/// A latest-value mailbox in a named shared-memory object.
///
/// One [`Writer`] at a time publishes messages; up to `readers` [`Reader`]s,
/// each with its own index, read the newest one. Any process may be SIGKILLed
/// at any time: the object persists (until [`Mailbox::remove`]), a restarted
/// writer continues from the last complete message, and a restarted reader
/// releases what its previous incarnation held.
///
/// Handles come in two kinds: [`Writer`] and [`Reader`] borrow the
/// `Mailbox`; [`OwnedWriter`] and [`OwnedReader`] (from
/// [`Mailbox::owned_writer`], [`Mailbox::owned_reader`] and
/// [`Mailbox::claim_owned_reader`] on an `Arc<Mailbox>`) hold a clone of the
/// `Arc`, so they can move into spawned threads and tasks and sit in a struct
/// next to each other. A reader either names its index ([`Mailbox::reader`])
/// or claims any free one ([`Mailbox::claim_reader`]). For plain-data values
/// instead of bytes, see [`TypedMailbox`](crate::TypedMailbox).
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
    /// Reader indices held through this handle: claiming checks them before
    /// the liveness lock, and giving an index back clears its flag after the
    /// lock is released, which orders one handle's tenure before the next
    /// one's; reaping skips them.
    local_readers: Box<[AtomicBool]>,
    /// The writer role is held through this handle (taken before, and given
    /// back after, the writer's liveness lock, as for the readers).
    local_writer: AtomicBool,
}

impl Mailbox {
    /// Opens the mailbox `name`, creating it with `config` if it does not
    /// exist. An existing mailbox of another shape is refused. (For options,
    /// such as an access policy, see [`Mailbox::builder`].)
    pub fn open_or_create(name: &str, config: Config) -> Result<Mailbox, MailboxError> {
        Mailbox::open_or_create_in(name, config, &AccessPolicy::default())
    }

    /// [`Mailbox::open_or_create`] under an access `policy`.
    #[allow(
        clippy::missing_panics_doc,
        reason = "the expect states an invariant: the payload was sized for the config block"
    )]
    pub(crate) fn open_or_create_in(
        name: &str,
        config: Config,
        policy: &AccessPolicy,
    ) -> Result<Mailbox, MailboxError> {
        let shape = config.shape()?;
        // Open first without a size, so a mailbox of another shape is reported
        // as such rather than as too small.
        let existing = match Segment::builder(name).access(policy.clone()).open() {
            Ok(segment) => Some(segment),
            Err(SegmentError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let segment = match existing {
            Some(segment) => segment,
            None => Segment::builder(name)
                .access(policy.clone())
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
        Mailbox::open_in(name, &AccessPolicy::default())
    }

    /// [`Mailbox::open`] under an access `policy`.
    pub(crate) fn open_in(name: &str, policy: &AccessPolicy) -> Result<Mailbox, MailboxError> {
        Mailbox::from_segment(Segment::builder(name).access(policy.clone()).open()?)
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
            local_writer: AtomicBool::new(false),
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
