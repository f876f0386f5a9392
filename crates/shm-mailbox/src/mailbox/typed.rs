//! Typed mailboxes: plain-data values of one type instead of bytes.
//!
//! A mailbox is bound to a payload type by a tag in its config block (word 5,
//! see `docs/protocol/shm-mailbox.md`): `hash << 32 | size`, where `hash` is
//! the 32-bit FNV-1a hash of the tag string (by default the type's name, as
//! [`core::any::type_name`] spells it) and `size` is the type's size in bytes.
//! The first typed handle binds an untyped mailbox by a compare-and-swap from
//! 0, so of two processes binding different types at once exactly one wins;
//! every later typed handle checks the tag and refuses another type.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use shm_sync::atomic::Ordering;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{Mailbox, MailboxError, OwnedReader, OwnedWriter};
use crate::layout::{Config, LayoutError, W_TYPE};
use crate::protocol::Message;

/// A mailbox bound to the payload type `T`: a cheap, clonable handle
/// (an `Arc<Mailbox>` inside) whose writer publishes `&T` and whose readers
/// return `T` by value.
///
/// `T` is plain data (zerocopy's `FromBytes + IntoBytes + Immutable +
/// KnownLayout`): every bit pattern is a valid `T`, so a value torn or
/// corrupted by another process can be wrong but never unsound, and `bool`,
/// enums and references are excluded. Values are copied in and out word by
/// word, as bytes are.
///
/// The mailbox remembers the type it was bound to (its name and size; see
/// [`TypedMailbox::with_tag`] for types defined separately in each program),
/// and a typed handle for another type is refused with
/// [`MailboxError::TypeMismatch`].
///
/// # Examples
/// ```
/// use shm_mailbox::{MailboxError, TypedMailbox};
/// use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
///
/// #[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq)]
/// #[repr(C)]
/// struct Position { x: f64, y: f64 }
///
/// let name = format!("doc-typed-{}", std::process::id());
/// let board = TypedMailbox::<Position>::open_or_create(&name, 4)?;
/// let mut writer = board.writer()?;
/// let mut reader = board.claim_reader()?;
/// writer.publish(&Position { x: 1.0, y: 2.0 })?;
/// assert_eq!(reader.read()?, Some(Position { x: 1.0, y: 2.0 }));
///
/// // The board is bound to `Position`: another type is refused.
/// let err = TypedMailbox::<[u32; 4]>::open_or_create(&name, 4).unwrap_err();
/// assert!(matches!(err, MailboxError::TypeMismatch { .. }), "{err}");
/// # drop((writer, reader, board));
/// # shm_mailbox::Mailbox::remove(&name)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TypedMailbox<T> {
    mailbox: Arc<Mailbox>,
    /// A `fn() -> T`: the handle holds no `T` (values are made from bytes in
    /// the calling thread), so it is `Send` and `Sync` whatever `T` is.
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for TypedMailbox<T> {
    fn clone(&self) -> TypedMailbox<T> {
        TypedMailbox {
            mailbox: Arc::clone(&self.mailbox),
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for TypedMailbox<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedMailbox")
            .field("type", &core::any::type_name::<T>())
            .field("mailbox", &self.mailbox)
            .finish()
    }
}

impl<T: FromBytes + IntoBytes + Immutable + KnownLayout> TypedMailbox<T> {
    /// Opens the mailbox `name`, creating it for `readers` readers and values
    /// of `T` if it does not exist, and binds it to `T`.
    ///
    /// # Errors
    /// [`MailboxError::TypeMismatch`] if it is bound to another type;
    /// [`LayoutError::Mismatch`] if it has another reader count or slot size
    /// (an untyped mailbox created for other sizes); `LayoutError::InvalidConfig`
    /// for a zero-sized `T` or one above [`MAX_SLOT_BYTES`](crate::MAX_SLOT_BYTES).
    pub fn open_or_create(name: &str, readers: usize) -> Result<TypedMailbox<T>, MailboxError> {
        let config = Config {
            readers,
            slot_bytes: size_of::<T>(),
        };
        match Mailbox::open_or_create(name, config) {
            Ok(mailbox) => TypedMailbox::new(Arc::new(mailbox)),
            Err(e @ MailboxError::Layout(LayoutError::Mismatch { .. })) => {
                // Another shape: name the payload type if that is what differs.
                if let Ok(other) = Mailbox::open(name) {
                    check_tag(&other, &Tag::of::<T>(core::any::type_name::<T>()))?;
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Opens the existing mailbox `name`, of whatever reader count, and binds
    /// it to `T`.
    ///
    /// # Errors
    /// As [`TypedMailbox::new`].
    pub fn open(name: &str) -> Result<TypedMailbox<T>, MailboxError> {
        TypedMailbox::new(Arc::new(Mailbox::open(name)?))
    }

    /// Binds `mailbox` to `T`, tagged with the type's name.
    ///
    /// # Errors
    /// [`MailboxError::TypeMismatch`] if it is bound to another type;
    /// [`MailboxError::TooLarge`] if its slots are smaller than `T`.
    pub fn new(mailbox: Arc<Mailbox>) -> Result<TypedMailbox<T>, MailboxError> {
        TypedMailbox::with_tag(mailbox, core::any::type_name::<T>())
    }

    /// Binds `mailbox` to `T` under the tag `tag` instead of the type's
    /// name: for programs that each define the same `#[repr(C)]` type rather
    /// than share one crate, or that want to version the format by hand
    /// (`"position-v2"`). Only the tag's 32-bit hash and `T`'s size are
    /// stored and compared.
    ///
    /// # Errors
    /// As [`TypedMailbox::new`].
    ///
    /// # Examples
    /// ```
    /// use std::sync::Arc;
    /// use shm_mailbox::{Config, Mailbox, MailboxError, TypedMailbox};
    /// let name = format!("doc-typed-tag-{}", std::process::id());
    /// let config = Config { readers: 1, slot_bytes: 8 };
    /// let mailbox = Arc::new(Mailbox::open_or_create(&name, config)?);
    /// let counter = TypedMailbox::<u64>::with_tag(Arc::clone(&mailbox), "counter-v1")?;
    /// counter.writer()?.publish(&42)?;
    /// assert_eq!(counter.claim_reader()?.read()?, Some(42));
    /// let err = TypedMailbox::<i64>::with_tag(mailbox, "balance-v1").unwrap_err();
    /// assert!(matches!(err, MailboxError::TypeMismatch { .. }));
    /// # drop(counter);
    /// # Mailbox::remove(&name)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_tag(mailbox: Arc<Mailbox>, tag: &str) -> Result<TypedMailbox<T>, MailboxError> {
        bind(&mailbox, &Tag::of::<T>(tag))?;
        Ok(TypedMailbox {
            mailbox,
            _type: PhantomData,
        })
    }

    /// The untyped mailbox underneath.
    pub fn mailbox(&self) -> &Arc<Mailbox> {
        &self.mailbox
    }

    /// Claims the writer role, as [`Mailbox::writer`] does.
    pub fn writer(&self) -> Result<TypedWriter<T>, MailboxError> {
        Ok(TypedWriter {
            inner: self.mailbox.owned_writer()?,
            _type: PhantomData,
        })
    }

    /// Claims reader index `index`, as [`Mailbox::reader`] does.
    pub fn reader(&self, index: usize) -> Result<TypedReader<T>, MailboxError> {
        Ok(TypedReader {
            inner: self.mailbox.owned_reader(index)?,
            _type: PhantomData,
        })
    }

    /// Claims a free reader index, as [`Mailbox::claim_reader`] does.
    pub fn claim_reader(&self) -> Result<TypedReader<T>, MailboxError> {
        Ok(TypedReader {
            inner: self.mailbox.claim_owned_reader()?,
            _type: PhantomData,
        })
    }
}

/// The writer role of a [`TypedMailbox`]: publishes values of `T`. Owns its
/// mailbox (like [`OwnedWriter`]); released when dropped or when the process
/// dies.
pub struct TypedWriter<T> {
    inner: OwnedWriter,
    _type: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for TypedWriter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedWriter")
            .field("type", &core::any::type_name::<T>())
            .field("inner", &self.inner)
            .finish()
    }
}

impl<T: FromBytes + IntoBytes + Immutable + KnownLayout> TypedWriter<T> {
    /// Publishes `value` as the newest message; never waits for readers.
    /// Returns its sequence number.
    pub fn publish(&mut self, value: &T) -> Result<u64, MailboxError> {
        self.inner.publish(value.as_bytes())
    }

    /// The last complete value (for a restarted writer to continue from).
    pub fn last(&self) -> Result<Option<T>, MailboxError> {
        let mut value = T::new_zeroed();
        let last = self.inner.last(value.as_mut_bytes())?;
        Ok(checked(last, value)?.map(|(_, v)| v))
    }

    /// Clears the holds of dead readers, as [`Writer::reap_dead_readers`](crate::Writer::reap_dead_readers) does.
    pub fn reap_dead_readers(&self) -> usize {
        self.inner.reap_dead_readers()
    }

    /// The untyped handle underneath.
    pub fn as_untyped(&self) -> &OwnedWriter {
        &self.inner
    }
}

/// One reader index of a [`TypedMailbox`]: reads values of `T`. Owns its
/// mailbox (like [`OwnedReader`]); released when dropped or when the process
/// dies.
pub struct TypedReader<T> {
    inner: OwnedReader,
    _type: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for TypedReader<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedReader")
            .field("type", &core::any::type_name::<T>())
            .field("inner", &self.inner)
            .finish()
    }
}

impl<T: FromBytes + IntoBytes + Immutable + KnownLayout> TypedReader<T> {
    /// This reader's index.
    pub fn index(&self) -> usize {
        self.inner.index()
    }

    /// The newest value; `None` when nothing was published yet.
    ///
    /// # Errors
    /// [`MailboxError::MessageSize`] if the newest message is not one `T`
    /// (published through the untyped API), besides the errors of
    /// [`Reader::read`](crate::Reader::read).
    pub fn read(&mut self) -> Result<Option<T>, MailboxError> {
        Ok(self.read_with_seq()?.map(|(_, v)| v))
    }

    /// The newest value with its sequence number (for
    /// [`TypedReader::wait_newer`]); `None` when nothing was published yet.
    pub fn read_with_seq(&mut self) -> Result<Option<(u64, T)>, MailboxError> {
        let mut value = T::new_zeroed();
        let read = self.inner.read(value.as_mut_bytes())?;
        checked(read, value)
    }

    /// Waits for a value newer than `seq`, as [`Reader::wait_newer`](crate::Reader::wait_newer) does.
    pub fn wait_newer(&self, seq: u64, timeout: Duration) -> bool {
        self.inner.wait_newer(seq, timeout)
    }

    /// The untyped handle underneath.
    pub fn as_untyped(&self) -> &OwnedReader {
        &self.inner
    }
}

/// `value` if `read` found a message of exactly one `T`.
fn checked<T>(read: Option<Message>, value: T) -> Result<Option<(u64, T)>, MailboxError> {
    match read {
        None => Ok(None),
        Some(m) if m.len == size_of::<T>() => Ok(Some((m.seq, value))),
        Some(m) => Err(MailboxError::MessageSize {
            len: m.len,
            expected: size_of::<T>(),
        }),
    }
}

/// A payload type's tag: the string it was derived from, and its word.
struct Tag<'a> {
    name: &'a str,
    size: usize,
    word: u64,
}

impl Tag<'_> {
    fn of<T>(name: &str) -> Tag<'_> {
        let size = size_of::<T>();
        // A size above u32::MAX is refused by the slot-size check in `bind`
        // (16 MiB at most) before this word is used.
        let word = (u64::from(fnv1a32(name.as_bytes())) << 32) | (size as u64 & 0xffff_ffff);
        Tag { name, size, word }
    }

    fn mismatch(&self, found: u64) -> MailboxError {
        MailboxError::TypeMismatch {
            expected: self.name.to_owned(),
            expected_size: self.size,
            expected_tag: (self.word >> 32) as u32,
            found_size: (found & 0xffff_ffff) as usize,
            found_tag: (found >> 32) as u32,
        }
    }
}

/// FNV-1a, 32 bits: a stable hash (unlike `std`'s hashers) of the tag.
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Binds `mailbox` to `tag` if it is untyped; checks the tag otherwise.
fn bind(mailbox: &Mailbox, tag: &Tag<'_>) -> Result<(), MailboxError> {
    let max = mailbox.shape.slot_bytes();
    if tag.size > max {
        return Err(MailboxError::TooLarge { len: tag.size, max });
    }
    // Relaxed on success and failure: the tag is a value on its own that
    // publishes nothing else; the exchange's atomicity is what makes exactly
    // one of two racing binders win.
    let found = match mailbox.words().at(W_TYPE).compare_exchange(
        0,
        tag.word,
        Ordering::Relaxed,
        Ordering::Relaxed,
    ) {
        Ok(_) => tag.word,
        Err(found) => found,
    };
    // A truncated object reads as zeros: not a binding.
    mailbox.check_mapped()?;
    if found != tag.word {
        return Err(tag.mismatch(found));
    }
    Ok(())
}

/// `TypeMismatch` if `mailbox` is bound to a tag other than `tag`; never binds it.
fn check_tag(mailbox: &Mailbox, tag: &Tag<'_>) -> Result<(), MailboxError> {
    // Relaxed: as in `bind`.
    let found = mailbox.words().at(W_TYPE).load(Ordering::Relaxed);
    mailbox.check_mapped()?;
    if found != 0 && found != tag.word {
        return Err(tag.mismatch(found));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fnv1a32;

    #[test]
    fn fnv1a32_matches_the_reference_vectors() {
        // From the FNV reference test suite (draft-eastlake-fnv).
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }
}
