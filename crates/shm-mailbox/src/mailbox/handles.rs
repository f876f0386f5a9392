//! The role handles: [`Writer`] and [`Reader`] borrow a [`Mailbox`];
//! [`OwnedWriter`] and [`OwnedReader`] hold an `Arc<Mailbox>`. Both kinds run
//! the same code (`WriterRole` and `ReaderRole`, generic over how the mailbox
//! is held).
//!
//! # Roles within one process
//!
//! Each role handle holds its liveness lock (an [`OfdLock`] on a private
//! description of the segment), so the locks tell any two holders apart. The
//! `local_writer` and `local_readers` flags come first all the same: a role
//! is taken by a compare-and-swap of its flag (Acquire), then by its liveness
//! lock; it is given back by dropping the lock, then storing `false`
//! (Release). That Release/Acquire pair orders one handle's whole tenure (its
//! last publish, its hazard clear) before the next handle's on the same
//! `Mailbox`, as the kernel's lock hand-over does between processes.
//!
//! # Threads
//!
//! Every handle is `Send` and `Sync` (asserted at the end of this file). The
//! compiler derives it: a `Mailbox` reaches shared memory only through
//! `&AtomicU64` / `&AtomicU32` (`Region` never hands out plain references),
//! keeps its process-local bookkeeping in atomics and its descriptor in an
//! `OwnedFd`, so it is `Send + Sync`, and a handle is a `&Mailbox` or an
//! `Arc<Mailbox>` plus integers. What the compiler cannot see, and what makes
//! it sound for the roles too: nothing a role holds is tied to a thread. The
//! liveness locks belong to the open file description (not to a thread, and
//! not to the process like POSIX record locks), hazard and futex words are
//! process-wide, and the hand-over between handles is ordered by the flags
//! above. So a handle may be used, and dropped, on any thread; `&mut self` on
//! `publish` and `read` keeps one handle's operations serial.

use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shm_segment::OfdLock;
use shm_sync::atomic::{Ordering, fence};

use super::{Mailbox, MailboxError};
use crate::layout::{R_PID, W_WAITERS};
use crate::liveness;
use crate::protocol::{self, Message, Words};

impl Mailbox {
    /// Claims the writer role. Refused while another live process, or
    /// another handle of this `Mailbox`, holds it.
    ///
    /// # Examples
    /// ```
    /// use shm_mailbox::{Config, Mailbox, MailboxError};
    /// let name = format!("doc-writer-{}", std::process::id());
    /// let mb = Mailbox::open_or_create(&name, Config { readers: 1, slot_bytes: 8 })?;
    /// let writer = mb.writer()?;
    /// assert!(matches!(mb.writer(), Err(MailboxError::InUse { .. })), "one writer at a time");
    /// drop(writer);
    /// assert!(mb.writer().is_ok(), "released on drop");
    /// # drop(mb);
    /// # Mailbox::remove(&name)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn writer(&self) -> Result<Writer<'_>, MailboxError> {
        WriterRole::claim(self).map(Writer)
    }

    /// Claims the writer role for a handle that owns a clone of the `Arc`
    /// (see [`OwnedWriter`]). Refused as [`Mailbox::writer`] is.
    pub fn owned_writer(self: &Arc<Self>) -> Result<OwnedWriter, MailboxError> {
        WriterRole::claim(Arc::clone(self)).map(OwnedWriter)
    }

    /// Claims reader index `index`, releasing whatever a previous (killed)
    /// holder of the index left held. Refused while another live process, or
    /// another handle of this `Mailbox`, holds it.
    ///
    /// # Examples
    /// ```
    /// use shm_mailbox::{Config, Mailbox, MailboxError};
    /// let name = format!("doc-reader-{}", std::process::id());
    /// let mb = Mailbox::open_or_create(&name, Config { readers: 2, slot_bytes: 8 })?;
    /// let reader = mb.reader(1)?;
    /// assert_eq!(reader.index(), 1);
    /// assert!(matches!(mb.reader(1), Err(MailboxError::InUse { .. })));
    /// assert!(matches!(mb.reader(2), Err(MailboxError::NoSuchReader { .. })));
    /// # drop(reader);
    /// # drop(mb);
    /// # Mailbox::remove(&name)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reader(&self, index: usize) -> Result<Reader<'_>, MailboxError> {
        ReaderRole::claim(self, index).map(Reader)
    }

    /// Claims reader index `index` for a handle that owns a clone of the
    /// `Arc` (see [`OwnedReader`]). Refused as [`Mailbox::reader`] is.
    pub fn owned_reader(self: &Arc<Self>, index: usize) -> Result<OwnedReader, MailboxError> {
        ReaderRole::claim(Arc::clone(self), index).map(OwnedReader)
    }

    /// Claims the lowest reader index that no live handle holds, in this or
    /// any other process, so that programs need no index bookkeeping.
    ///
    /// Indices are taken with the same kernel-released liveness locks as
    /// [`Mailbox::reader`]: the index of a process that died, however it
    /// died, is free again, and claiming mixes freely with explicit indices.
    /// Costs one `fcntl` per index tried.
    ///
    /// # Errors
    /// [`MailboxError::NoFreeReader`] when every index is held.
    ///
    /// # Examples
    /// ```
    /// use shm_mailbox::{Config, Mailbox, MailboxError};
    /// let name = format!("doc-claim-{}", std::process::id());
    /// let mb = Mailbox::open_or_create(&name, Config { readers: 2, slot_bytes: 8 })?;
    /// let first = mb.claim_reader()?;
    /// let second = mb.claim_reader()?;
    /// assert_ne!(first.index(), second.index());
    /// assert!(matches!(mb.claim_reader(), Err(MailboxError::NoFreeReader { readers: 2 })));
    /// drop(first);
    /// assert!(mb.claim_reader().is_ok(), "a released index is claimed again");
    /// # drop(second);
    /// # drop(mb);
    /// # Mailbox::remove(&name)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "attach_reader")]
    pub fn claim_reader(&self) -> Result<Reader<'_>, MailboxError> {
        ReaderRole::claim_free(self).map(Reader)
    }

    /// Claims a free reader index, as [`Mailbox::claim_reader`] does, for a
    /// handle that owns a clone of the `Arc` (see [`OwnedReader`]).
    pub fn claim_owned_reader(self: &Arc<Self>) -> Result<OwnedReader, MailboxError> {
        ReaderRole::claim_free(Arc::clone(self)).map(OwnedReader)
    }

    /// Takes the writer role for a new handle of this `Mailbox`, returning
    /// its liveness lock.
    fn take_writer(&self) -> Result<OfdLock, MailboxError> {
        let in_use = || MailboxError::InUse {
            role: "writer".to_owned(),
        };
        // SYNC: Acquire on success, pairs with the Release store in
        // `give_back_writer` by this `Mailbox`'s previous writer handle: its
        // last publish happens before our first. Relaxed on failure: nothing
        // is taken, so nothing is ordered.
        if self
            .local_writer
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(in_use());
        }
        match liveness::try_lock(self.segment.fd(), liveness::WRITER_SLOT) {
            Ok(Some(lock)) => Ok(lock),
            Ok(None) => {
                self.give_back_writer();
                Err(in_use())
            }
            Err(e) => {
                self.give_back_writer();
                Err(self.lock_error(e))
            }
        }
    }

    fn give_back_writer(&self) {
        // SYNC: Release, pairs with the Acquire compare-and-swap in `take_writer`.
        self.local_writer.store(false, Ordering::Release);
    }

    /// Takes reader index `index` for a new handle of this `Mailbox`,
    /// returning its liveness lock; `Ok(None)` if another handle of it or
    /// another live process holds it.
    fn take_reader(&self, index: usize) -> Result<Option<OfdLock>, MailboxError> {
        // SYNC: Acquire on success, pairs with the Release store in
        // `give_back_reader` by the index's previous handle of this `Mailbox`:
        // its hazard clear happens before our attach. Relaxed on failure:
        // nothing is taken.
        if self.local_readers[index]
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Ok(None);
        }
        match liveness::try_lock(self.segment.fd(), index) {
            Ok(Some(lock)) => Ok(Some(lock)),
            Ok(None) => {
                self.give_back_reader(index);
                Ok(None)
            }
            Err(e) => {
                self.give_back_reader(index);
                Err(self.lock_error(e))
            }
        }
    }

    fn give_back_reader(&self, index: usize) {
        // SYNC: Release, pairs with the Acquire compare-and-swap in
        // `take_reader`; also keeps the release sequence of an earlier
        // tenure's store unbroken after a failed take.
        self.local_readers[index].store(false, Ordering::Release);
    }

    /// Waits until a message newer than `seq` exists, for at most `timeout`.
    /// True if one does, or at once if the object was truncated.
    pub(crate) fn wait_newer_for(&self, seq: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let words = self.words();
        let notify = self.notify();
        loop {
            if self.is_truncated() {
                return true;
            }
            // SYNC: Acquire, pairs with the Release half of the writer's
            // SeqCst bump in `WriterRole::wake_readers`, made after publishing:
            // read before `published` below, so a bump we have seen comes with
            // its message, and one we have not makes the futex wait return.
            let seen = notify.load(Ordering::Acquire);
            if self.latest_seq() > seq {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            // SYNC: SeqCst: the store half of our side of the store-load
            // (Dekker) pattern of `WriterRole::wake_readers`, pairs with the
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

/// The writer role over a mailbox held as `M` (`&Mailbox` or `Arc<Mailbox>`).
#[derive(Debug)]
struct WriterRole<M: Deref<Target = Mailbox>> {
    mailbox: M,
    /// The liveness lock; `None` only while dropping (released before the
    /// local flag is given back).
    lock: Option<OfdLock>,
    publishes: u64,
}

impl<M: Deref<Target = Mailbox>> WriterRole<M> {
    fn claim(mailbox: M) -> Result<WriterRole<M>, MailboxError> {
        let lock = mailbox.take_writer()?;
        // From here on, dropping `writer` gives the role back.
        let writer = WriterRole {
            mailbox,
            lock: Some(lock),
            publishes: 0,
        };
        writer.reap_dead_readers();
        writer.mailbox.check_mapped()?;
        Ok(writer)
    }

    fn publish(&mut self, data: &[u8]) -> Result<u64, MailboxError> {
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
        // INVARIANT: `protocol::publish` without `stop_after` runs to completion.
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
        // `Mailbox::wait_newer_for`. We bump `notify`, then load `waiters`; a
        // reader increments `waiters` (SeqCst), then FUTEX_WAIT compares
        // `notify` with the value it saw (after a full barrier in the
        // kernel). The total order means one of the two loads sees the other
        // side's store: we see the reader counted and wake it, or its wait
        // sees the new `notify` and returns at once. Also Release, pairs
        // with the reader's Acquire load of `notify`: a reader that sees the
        // bump sees the message, published before it.
        notify.fetch_add(1, Ordering::SeqCst);
        // SYNC: SeqCst: the load half of the pattern above, pairs with the
        // readers' SeqCst increment of `waiters` in `Mailbox::wait_newer_for`.
        if words.at(W_WAITERS).load(Ordering::SeqCst) > 0 {
            let _ = rustix::thread::futex::wake(
                notify,
                rustix::thread::futex::Flags::empty(),
                i32::MAX as u32,
            );
        }
    }

    fn last(&self, out: &mut [u8]) -> Result<Option<Message>, MailboxError> {
        let last = protocol::last(&self.mailbox.words(), out);
        self.mailbox.check_mapped()?;
        Ok(last?)
    }

    fn reap_dead_readers(&self) -> usize {
        let words = self.mailbox.words();
        let mut cleared = 0;
        for r in 0..self.mailbox.shape.readers {
            // Relaxed: only a candidate; the compare-and-swap in `reap`
            // re-checks the exact word atomically before clearing it.
            let seen = words.hazard(r).load(Ordering::Relaxed);
            if seen == 0 {
                continue;
            }
            // SYNC: Acquire fence, pairs with the Release fence in
            // `ReaderRole::attach`, which comes before every hazard store of
            // a reader of this `Mailbox`: if `seen` was stored by one, its
            // flag (set before that fence) is seen below, and it is skipped.
            fence(Ordering::Acquire);
            // Relaxed: ordered by the fence above; a stale `true` (of a
            // tenure that just ended) only skips a reap.
            if !self.mailbox.local_readers[r].load(Ordering::Relaxed)
                && liveness::is_held(self.mailbox.segment.fd(), r) == Ok(false)
                && words.reap(r, seen)
            {
                cleared += 1;
            }
        }
        cleared
    }
}

impl<M: Deref<Target = Mailbox>> Drop for WriterRole<M> {
    fn drop(&mut self) {
        // Closes the lock's description: the kernel releases the lock.
        drop(self.lock.take());
        self.mailbox.give_back_writer();
    }
}

/// One reader index over a mailbox held as `M` (`&Mailbox` or `Arc<Mailbox>`).
#[derive(Debug)]
struct ReaderRole<M: Deref<Target = Mailbox>> {
    mailbox: M,
    index: usize,
    /// The liveness lock; `None` only while dropping (released before the
    /// local flag is given back).
    lock: Option<OfdLock>,
    epoch: u64,
}

impl<M: Deref<Target = Mailbox>> ReaderRole<M> {
    fn claim(mailbox: M, index: usize) -> Result<ReaderRole<M>, MailboxError> {
        let readers = mailbox.shape.readers;
        if index >= readers {
            return Err(MailboxError::NoSuchReader { index, readers });
        }
        let Some(lock) = mailbox.take_reader(index)? else {
            return Err(MailboxError::InUse {
                role: format!("reader {index}"),
            });
        };
        ReaderRole::attach(mailbox, index, lock)
    }

    fn claim_free(mailbox: M) -> Result<ReaderRole<M>, MailboxError> {
        let readers = mailbox.shape.readers;
        for index in 0..readers {
            if let Some(lock) = mailbox.take_reader(index)? {
                return ReaderRole::attach(mailbox, index, lock);
            }
        }
        Err(MailboxError::NoFreeReader { readers })
    }

    /// Starts the tenure of index `index`, already taken by `take_reader`.
    fn attach(mailbox: M, index: usize, lock: OfdLock) -> Result<ReaderRole<M>, MailboxError> {
        // SYNC: Release fence, pairs with the Acquire fence in
        // `WriterRole::reap_dead_readers`: our writer (in this process) that
        // sees any of our hazard stores, all after this fence, also sees our
        // flag, set by `take_reader` before it. (It also sees our liveness
        // lock, held from before this fence until after our last hazard
        // clear; the flag keeps the reap's skip independent of the kernel.)
        fence(Ordering::Release);
        let words = mailbox.words();
        let epoch = words.attach_reader(index);
        // Relaxed: diagnostics only.
        words
            .at(mailbox.shape.reader(index, R_PID))
            .store(u64::from(std::process::id()), Ordering::Relaxed);
        // From here on, dropping `reader` gives the index back.
        let reader = ReaderRole {
            mailbox,
            index,
            lock: Some(lock),
            epoch,
        };
        reader.mailbox.check_mapped()?;
        Ok(reader)
    }

    fn read(&mut self, out: &mut [u8]) -> Result<Option<Message>, MailboxError> {
        let read = protocol::read(&self.mailbox.words(), self.index, self.epoch, out);
        // Checked after the copy: a message read from a truncated object is zeros.
        self.mailbox.check_mapped()?;
        Ok(read?)
    }
}

impl<M: Deref<Target = Mailbox>> Drop for ReaderRole<M> {
    fn drop(&mut self) {
        // SYNC: Release, pairs with the Acquire loads of the writer's hazard
        // scan (`protocol::free_slot`): whatever this handle copied is
        // complete before a writer sees the slot free.
        self.mailbox
            .words()
            .hazard(self.index)
            .store(0, Ordering::Release);
        // Closes the lock's description: the kernel releases the lock.
        drop(self.lock.take());
        self.mailbox.give_back_reader(self.index);
    }
}

/// The writer role of a [`Mailbox`], borrowing it; released when dropped or
/// when the process dies. For a handle that owns its mailbox, see
/// [`OwnedWriter`].
///
/// # Examples
/// ```
/// use shm_mailbox::{Config, Mailbox};
/// let name = format!("doc-writer-type-{}", std::process::id());
/// let mb = Mailbox::open_or_create(&name, Config { readers: 1, slot_bytes: 16 })?;
/// let mut writer = mb.writer()?;
/// assert_eq!(writer.publish(b"first")?, 1);
/// assert_eq!(writer.publish(b"second")?, 2);
/// // A restarted writer continues from the last complete message.
/// let mut buf = [0u8; 16];
/// let last = writer.last(&mut buf)?.expect("published");
/// assert_eq!((last.seq, &buf[..last.len]), (2, &b"second"[..]));
/// # drop(writer);
/// # drop(mb);
/// # Mailbox::remove(&name)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Writer<'a>(WriterRole<&'a Mailbox>);

impl Writer<'_> {
    /// Publishes `data` as the newest message; never waits for readers.
    /// Returns its sequence number.
    pub fn publish(&mut self, data: &[u8]) -> Result<u64, MailboxError> {
        self.0.publish(data)
    }

    /// The last complete message (for a restarted writer to continue from).
    pub fn last(&self, out: &mut [u8]) -> Result<Option<Message>, MailboxError> {
        self.0.last(out)
    }

    /// Clears the holds of readers whose process is gone (their liveness lock
    /// is free). Done on claiming the writer role and every 4096 publishes;
    /// never needed for progress (a free slot always exists), only to keep
    /// slots from staying pinned. Returns how many holds were cleared.
    pub fn reap_dead_readers(&self) -> usize {
        self.0.reap_dead_readers()
    }
}

/// The writer role of a [`Mailbox`] held through an `Arc`: a [`Writer`] that
/// can move into a spawned thread or task, or sit in a struct next to the
/// mailbox's readers. Released when dropped or when the process dies.
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use shm_mailbox::{Config, Mailbox};
/// let name = format!("doc-owned-writer-{}", std::process::id());
/// let mb = Arc::new(Mailbox::open_or_create(&name, Config { readers: 1, slot_bytes: 8 })?);
/// let mut writer = mb.owned_writer()?;
/// std::thread::spawn(move || writer.publish(&7u64.to_le_bytes())).join().unwrap()?;
/// assert_eq!(mb.latest_seq(), 1);
/// # drop(mb);
/// # shm_mailbox::Mailbox::remove(&name)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct OwnedWriter(WriterRole<Arc<Mailbox>>);

impl OwnedWriter {
    /// The mailbox this handle writes to.
    pub fn mailbox(&self) -> &Arc<Mailbox> {
        &self.0.mailbox
    }

    /// Publishes `data`, as [`Writer::publish`] does.
    pub fn publish(&mut self, data: &[u8]) -> Result<u64, MailboxError> {
        self.0.publish(data)
    }

    /// The last complete message, as [`Writer::last`] gives it.
    pub fn last(&self, out: &mut [u8]) -> Result<Option<Message>, MailboxError> {
        self.0.last(out)
    }

    /// Clears the holds of dead readers, as [`Writer::reap_dead_readers`] does.
    pub fn reap_dead_readers(&self) -> usize {
        self.0.reap_dead_readers()
    }
}

/// One reader index of a [`Mailbox`], borrowing it; released when dropped or
/// when the process dies. For a handle that owns its mailbox, see
/// [`OwnedReader`].
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use shm_mailbox::{Config, Mailbox};
/// let name = format!("doc-reader-type-{}", std::process::id());
/// let mb = Mailbox::open_or_create(&name, Config { readers: 1, slot_bytes: 16 })?;
/// let mut reader = mb.claim_reader()?;
/// let mut buf = [0u8; 16];
/// assert!(reader.read(&mut buf)?.is_none(), "nothing published yet");
/// assert!(!reader.wait_newer(0, Duration::from_millis(1)), "times out");
/// mb.writer()?.publish(b"news")?;
/// assert!(reader.wait_newer(0, Duration::from_secs(1)));
/// let msg = reader.read(&mut buf)?.expect("published");
/// assert_eq!((msg.seq, &buf[..msg.len]), (1, &b"news"[..]));
/// # drop(reader);
/// # drop(mb);
/// # Mailbox::remove(&name)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Reader<'a>(ReaderRole<&'a Mailbox>);

impl Reader<'_> {
    /// This reader's index.
    pub fn index(&self) -> usize {
        self.0.index
    }

    /// Copies the newest message into `out` (truncated to `out.len()`; the
    /// returned length is the full one). `None` when nothing was published yet.
    pub fn read(&mut self, out: &mut [u8]) -> Result<Option<Message>, MailboxError> {
        self.0.read(out)
    }

    /// Waits until a message newer than `seq` exists, for at most `timeout`.
    /// Returns whether one does; also returns true at once when the object
    /// was truncated, so that the next [`Reader::read`] reports it.
    pub fn wait_newer(&self, seq: u64, timeout: Duration) -> bool {
        self.0.mailbox.wait_newer_for(seq, timeout)
    }
}

/// One reader index of a [`Mailbox`] held through an `Arc`: a [`Reader`] that
/// can move into a spawned thread or task, or sit in a struct next to the
/// mailbox's writer. Released when dropped or when the process dies. With
/// the `tokio` feature it can also wait asynchronously
/// (`OwnedReader::wait_newer_async`).
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use shm_mailbox::{Config, Mailbox};
/// let name = format!("doc-owned-reader-{}", std::process::id());
/// let mb = Arc::new(Mailbox::open_or_create(&name, Config { readers: 1, slot_bytes: 8 })?);
/// let mut reader = mb.claim_owned_reader()?;
/// let follower = std::thread::spawn(move || {
///     let mut buf = [0u8; 8];
///     while reader.wait_newer(0, Duration::from_secs(10)) {
///         if let Some(msg) = reader.read(&mut buf)? {
///             return Ok(msg.seq);
///         }
///     }
///     Ok::<_, shm_mailbox::MailboxError>(0)
/// });
/// mb.writer()?.publish(b"hi")?;
/// assert_eq!(follower.join().unwrap()?, 1);
/// # drop(mb);
/// # Mailbox::remove(&name)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct OwnedReader(ReaderRole<Arc<Mailbox>>);

impl OwnedReader {
    /// The mailbox this handle reads from.
    pub fn mailbox(&self) -> &Arc<Mailbox> {
        &self.0.mailbox
    }

    /// This reader's index.
    pub fn index(&self) -> usize {
        self.0.index
    }

    /// Copies the newest message into `out`, as [`Reader::read`] does.
    pub fn read(&mut self, out: &mut [u8]) -> Result<Option<Message>, MailboxError> {
        self.0.read(out)
    }

    /// Waits for a message newer than `seq`, as [`Reader::wait_newer`] does.
    pub fn wait_newer(&self, seq: u64, timeout: Duration) -> bool {
        self.0.mailbox.wait_newer_for(seq, timeout)
    }
}

// The argument is in the module docs ("Threads").
const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Mailbox>();
    send_and_sync::<Writer<'_>>();
    send_and_sync::<Reader<'_>>();
    send_and_sync::<OwnedWriter>();
    send_and_sync::<OwnedReader>();
};
