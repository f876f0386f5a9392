//! Typed mailboxes: plain-data values of one type instead of bytes.
//!
//! A mailbox is bound to a payload type by the type's
//! [`Layout`](shm_segment::Layout) fingerprint in its config block (word 5,
//! see `docs/protocol/shm-mailbox.md`): the structural fingerprint of a
//! [`Plain`] type (so separately declared identical structs agree), or the
//! fingerprint of an explicit tag ([`TypedMailbox::with_tag`]). Both hash the
//! type's size and alignment. The first typed handle binds an untyped mailbox
//! by a compare-and-swap from 0, so of two processes binding different types
//! at once exactly one wins, and then records the type's size and name (words
//! 6..12) for the messages of handles it refuses.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use shm_segment::layout::TYPE_NAME_LEN;
use shm_segment::{Layout, Plain};
use shm_sync::atomic::Ordering;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{Mailbox, MailboxError, OwnedReader, OwnedWriter};
use crate::layout::{Config, LayoutError, W_TYPE, W_TYPE_NAME, W_TYPE_SIZE};
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
/// # Which type a mailbox holds
///
/// The mailbox remembers the type it was bound to, and a typed handle for
/// another type is refused with [`MailboxError::TypeMismatch`], which names
/// both sides. How a type is recognised depends on the constructor:
///
/// - [`open_or_create`](TypedMailbox::open_or_create),
///   [`open`](TypedMailbox::open) and [`new`](TypedMailbox::new) take a
///   [`Plain`] type (the integers, floats, arrays of them, and structs
///   declared with [`shm_segment::plain_struct!`]) and bind its *structural*
///   fingerprint: two programs that each declare the same struct, under any
///   name, share the mailbox; a field renamed, reordered or retyped (also in
///   a nested struct) is refused.
/// - [`open_or_create_with_tag`](TypedMailbox::open_or_create_with_tag),
///   [`open_with_tag`](TypedMailbox::open_with_tag) and
///   [`with_tag`](TypedMailbox::with_tag) take any plain-data type and a tag
///   string that every program must pass alike (`"position-v2"`): only the
///   tag, the size and the alignment are compared, so keeping the fields in
///   step is up to you.
///
/// [`Shared`](shm_segment::Shared) types (structs of atomics, viewed in place
/// in a segment) are not payloads: a mailbox copies values, and the plain
/// struct with the same fields plays that part.
///
/// # Examples
/// ```
/// use shm_mailbox::{MailboxError, TypedMailbox};
/// use shm_segment::plain_struct;
///
/// plain_struct! {
///     /// A position, as this program declares it.
///     #[derive(PartialEq)]
///     struct Position { x: f64, y: f64 }
/// }
/// mod elsewhere {
///     shm_segment::plain_struct! {
///         /// The same struct, declared again (as another program would).
///         pub struct Point { pub x: f64, pub y: f64 }
///     }
/// }
///
/// let name = format!("doc-typed-{}", std::process::id());
/// let board = TypedMailbox::<Position>::open_or_create(&name, 4)?;
/// let mut writer = board.writer()?;
/// writer.publish(&Position { x: 1.0, y: 2.0 })?;
///
/// // The same structure declared elsewhere reads it.
/// let other = TypedMailbox::<elsewhere::Point>::open(&name)?;
/// let point = other.claim_reader()?.read()?.expect("published");
/// assert_eq!((point.x, point.y), (1.0, 2.0));
///
/// // Another structure is refused, with both sides named.
/// let err = TypedMailbox::<[f64; 2]>::open_or_create(&name, 4).unwrap_err();
/// assert!(matches!(err, MailboxError::TypeMismatch { .. }), "{err}");
/// assert!(err.to_string().contains("`Position`"), "{err}");
/// # drop((writer, board, other));
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
    /// of `T` if it does not exist, and binds it to `T`'s structural
    /// fingerprint.
    ///
    /// # Errors
    /// [`MailboxError::TypeMismatch`] if it is bound to another type;
    /// [`LayoutError::Mismatch`] if it has another reader count or slot size
    /// (an untyped mailbox created for other sizes); `LayoutError::InvalidConfig`
    /// for a zero-sized `T` or one above [`MAX_SLOT_BYTES`](crate::MAX_SLOT_BYTES).
    pub fn open_or_create(name: &str, readers: usize) -> Result<TypedMailbox<T>, MailboxError>
    where
        T: Plain,
    {
        TypedMailbox::open_or_create_as(name, readers, T::PLAIN_LAYOUT)
    }

    /// Opens the existing mailbox `name`, of whatever reader count, and binds
    /// it to `T`'s structural fingerprint.
    ///
    /// # Errors
    /// As [`TypedMailbox::new`].
    pub fn open(name: &str) -> Result<TypedMailbox<T>, MailboxError>
    where
        T: Plain,
    {
        TypedMailbox::bound(Arc::new(Mailbox::open(name)?), T::PLAIN_LAYOUT)
    }

    /// Binds `mailbox` to `T`'s structural fingerprint (for a mailbox opened
    /// through [`Mailbox::builder`], with an access policy).
    ///
    /// # Errors
    /// [`MailboxError::TypeMismatch`] if it is bound to another type;
    /// [`MailboxError::TooLarge`] if its slots are smaller than `T`.
    pub fn new(mailbox: Arc<Mailbox>) -> Result<TypedMailbox<T>, MailboxError>
    where
        T: Plain,
    {
        TypedMailbox::bound(mailbox, T::PLAIN_LAYOUT)
    }

    /// As [`TypedMailbox::open_or_create`], for any plain-data `T`,
    /// recognised by `tag` (and its size and alignment) rather than by its
    /// structure.
    ///
    /// # Errors
    /// As [`TypedMailbox::open_or_create`].
    pub fn open_or_create_with_tag(
        name: &str,
        readers: usize,
        tag: &str,
    ) -> Result<TypedMailbox<T>, MailboxError> {
        TypedMailbox::open_or_create_as(name, readers, Layout::tagged::<T>(tag))
    }

    /// As [`TypedMailbox::open`], for any plain-data `T`, recognised by `tag`.
    ///
    /// # Errors
    /// As [`TypedMailbox::new`].
    pub fn open_with_tag(name: &str, tag: &str) -> Result<TypedMailbox<T>, MailboxError> {
        TypedMailbox::with_tag(Arc::new(Mailbox::open(name)?), tag)
    }

    /// Binds `mailbox` to `T` under the tag `tag` rather than `T`'s
    /// structure: for plain-data types that are not [`Plain`] (a zerocopy
    /// derive of your own), or to version a format by hand
    /// (`"position-v2"`). Every program must pass the same tag; only the tag,
    /// `T`'s size and its alignment are stored and compared.
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
        TypedMailbox::bound(mailbox, Layout::tagged::<T>(tag))
    }

    fn open_or_create_as(
        name: &str,
        readers: usize,
        layout: Layout,
    ) -> Result<TypedMailbox<T>, MailboxError> {
        let config = Config {
            readers,
            slot_bytes: size_of::<T>(),
        };
        match Mailbox::open_or_create(name, config) {
            Ok(mailbox) => TypedMailbox::bound(Arc::new(mailbox), layout),
            Err(e @ MailboxError::Layout(LayoutError::Mismatch { .. })) => {
                // Another shape: name the payload type if that is what differs.
                if let Ok(other) = Mailbox::open(name) {
                    check_type(&other, &layout)?;
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    fn bound(mailbox: Arc<Mailbox>, layout: Layout) -> Result<TypedMailbox<T>, MailboxError> {
        bind(&mailbox, &layout)?;
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

/// `TypeMismatch` between the type asked for (`expected`) and the one the
/// mailbox is bound to (`found_id`, with the size and name recorded by the
/// handle that bound it).
fn mismatch(mailbox: &Mailbox, expected: &Layout, found_id: u64) -> MailboxError {
    let words = mailbox.words();
    // Relaxed: the size and name are for this message only; a binder that
    // has not stored them yet leaves zeros, reported as not recorded.
    let found_size = words.at(W_TYPE_SIZE).load(Ordering::Relaxed);
    let mut name = [0u8; TYPE_NAME_LEN];
    for (i, chunk) in name.chunks_exact_mut(8).enumerate() {
        let word = words.at(W_TYPE_NAME + i).load(Ordering::Relaxed);
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    MailboxError::TypeMismatch {
        expected: expected.name().to_owned(),
        expected_size: expected.size as usize,
        expected_id: expected.id,
        found: name_from_bytes(&name),
        found_size: usize::try_from(found_size).unwrap_or(usize::MAX),
        found_id,
    }
}

/// The longest valid UTF-8 prefix of a zero-padded name.
fn name_from_bytes(bytes: &[u8]) -> String {
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let bytes = &bytes[..len];
    match core::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(e) => String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned(),
    }
}

/// Records the bound type's size and name, for other handles' messages.
fn record(mailbox: &Mailbox, layout: &Layout) {
    let words = mailbox.words();
    let mut name = [0u8; TYPE_NAME_LEN];
    let len = layout.name().len().min(TYPE_NAME_LEN);
    name[..len].copy_from_slice(&layout.name().as_bytes()[..len]);
    // Relaxed: only messages read these words (see `mismatch`).
    words.at(W_TYPE_SIZE).store(layout.size, Ordering::Relaxed);
    for (i, chunk) in name.chunks_exact(8).enumerate() {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        words.at(W_TYPE_NAME + i).store(word, Ordering::Relaxed);
    }
}

/// Binds `mailbox` to `layout` if it is untyped; checks the binding otherwise.
fn bind(mailbox: &Mailbox, layout: &Layout) -> Result<(), MailboxError> {
    let max = mailbox.shape.slot_bytes();
    let size = layout.size as usize;
    if size > max {
        return Err(MailboxError::TooLarge { len: size, max });
    }
    // Relaxed on success and failure: the fingerprint is a value on its own
    // that publishes nothing else; the exchange's atomicity is what makes
    // exactly one of two racing binders win.
    let found = match mailbox.words().at(W_TYPE).compare_exchange(
        0,
        layout.id,
        Ordering::Relaxed,
        Ordering::Relaxed,
    ) {
        Ok(_) => {
            record(mailbox, layout);
            layout.id
        }
        Err(found) => found,
    };
    // A truncated object reads as zeros: not a binding.
    mailbox.check_mapped()?;
    if found != layout.id {
        return Err(mismatch(mailbox, layout, found));
    }
    Ok(())
}

/// `TypeMismatch` if `mailbox` is bound to a type other than `layout`; never
/// binds it.
fn check_type(mailbox: &Mailbox, layout: &Layout) -> Result<(), MailboxError> {
    // Relaxed: as in `bind`.
    let found = mailbox.words().at(W_TYPE).load(Ordering::Relaxed);
    mailbox.check_mapped()?;
    if found != 0 && found != layout.id {
        return Err(mismatch(mailbox, layout, found));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::name_from_bytes;

    #[test]
    fn recorded_names_stop_at_padding_and_broken_characters() {
        assert_eq!(name_from_bytes(b"Position\0\0\0"), "Position");
        assert_eq!(name_from_bytes(b"ab\xc3"), "ab");
        assert_eq!(name_from_bytes(b""), "");
    }
}
