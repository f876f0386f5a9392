//! A crash-proof latest-value mailbox in shared memory.
//!
//! One writer publishes messages; up to `N` readers (chosen at creation) each
//! take the newest one. The writer never waits and can never run out of
//! slots; any process can be SIGKILLed and restarted at any time; readers can
//! tell new messages from old by their sequence numbers. The protocol
//! (hazard words over `N + 2` slots) is described in the [`protocol`] module
//! docs and in [`protocol::document`] (`docs/protocol/shm-mailbox.md`).
//!
//! # Example
//! ```
//! use shm_mailbox::{Config, Mailbox};
//!
//! // Create (or open) the named mailbox: 4 readers, messages up to 64 bytes.
//! let name = format!("doc-front-{}", std::process::id());
//! let mailbox = Mailbox::open_or_create(&name, Config { readers: 4, slot_bytes: 64 })?;
//!
//! // In the publishing process: one writer at a time.
//! let mut writer = mailbox.writer()?;
//! writer.publish(b"temperature=21.5")?;
//! writer.publish(b"temperature=21.7")?;
//!
//! // In a reading process: claim any free reader index, read the newest message.
//! let mut reader = mailbox.claim_reader()?;
//! let mut buf = [0u8; 64];
//! let msg = reader.read(&mut buf)?.expect("something was published");
//! assert_eq!((msg.seq, &buf[..msg.len]), (2, &b"temperature=21.7"[..]));
//!
//! // The object outlives every process until it is removed.
//! drop(reader);
//! drop(writer);
//! drop(mailbox);
//! Mailbox::remove(&name)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # When to use it, and when not
//!
//! Use it for *state*: the latest position, configuration, health or
//! counter that one process owns and others look at, where a reader that
//! falls behind should skip straight to the newest value, the writer must
//! never be slowed or blocked by readers, and any process may die at any
//! time. Do not use it when readers need *every* message (a stream or a
//! queue of commands: use `shm-ring`, which delivers each element once and
//! blocks a full producer), when there are several writers (give each its
//! own mailbox, as the `board` example does), or when both sides live in
//! one process and never restart (an `Arc<Mutex<T>>` or a `tokio::sync::watch`
//! channel is simpler).
//!
//! # The API
//!
//! - [`Mailbox`]: opens or creates the named object, and hands out roles.
//!   [`Writer`] and [`Reader`] borrow it; [`OwnedWriter`] and [`OwnedReader`]
//!   hold an `Arc<Mailbox>`, to move into threads and tasks. All are `Send`.
//! - Readers either name their index ([`Mailbox::reader`], as the `board`
//!   example does) or claim any free one ([`Mailbox::claim_reader`]); a dead
//!   process's index is free again, however it died.
//! - [`TypedMailbox`]: values of one plain-data type (zerocopy's `FromBytes +
//!   IntoBytes + Immutable + KnownLayout`) instead of bytes; the mailbox
//!   remembers its type and refuses another. Structs declared with
//!   `shm_segment::plain_struct!` are recognised by their structure, so
//!   separately built programs that declare the same struct share a board;
//!   other types by a tag of your choosing.
//! - Waiting: [`Reader::wait_newer`] sleeps on a futex until a newer message
//!   is published.
//!
//! # Features
//!
//! - `tokio`: `OwnedReader::wait_newer_async` and
//!   `TypedReader::wait_newer_async`, which wait on tokio's blocking pool (a
//!   futex cannot be watched by epoll; the method docs give the costs).
//! - `fault-injection`: named SIGKILL points for crash tests.
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(not(shm_loom))]
mod builder;
mod layout;
#[cfg(not(shm_loom))]
mod liveness;
#[cfg(not(shm_loom))]
mod mailbox;
pub mod protocol;
mod raw;

#[cfg(not(shm_loom))]
pub use builder::MailboxBuilder;
pub use layout::{Config, LayoutError, MAX_READERS, MAX_SLOT_BYTES};
#[cfg(all(feature = "tokio", not(shm_loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use mailbox::ASYNC_WAIT_SLICE;
#[cfg(not(shm_loom))]
pub use mailbox::{
    Mailbox, MailboxError, OwnedReader, OwnedWriter, Reader, TypedMailbox, TypedReader,
    TypedWriter, Writer,
};
pub use protocol::{Corrupt, Message};
/// Re-exported for [`MailboxBuilder::access`].
#[cfg(not(shm_loom))]
pub use shm_segment::AccessPolicy;

// The crash points of this crate: nothing at the call sites without its
// `fault-injection` feature (see `shm_sync::crash`).
pub(crate) use shm_sync::crash_point;

/// Loom-model entry points over heap-backed words (only with `--cfg shm_loom`).
#[cfg(shm_loom)]
pub mod model {
    pub use crate::layout::Config;
    use crate::layout::Shape;
    use crate::protocol::{self, Corrupt, Message, Words};
    use shm_sync::atomic::AtomicU64;

    /// A mailbox held in heap memory.
    #[derive(Debug)]
    pub struct HeapMailbox {
        words: Box<[AtomicU64]>,
        shape: Shape,
    }

    impl HeapMailbox {
        /// A new, empty mailbox.
        pub fn new(config: Config) -> HeapMailbox {
            let shape = config.shape().expect("valid config");
            let words: Box<[AtomicU64]> = (0..shape.total_words())
                .map(|_| AtomicU64::new(0))
                .collect();
            HeapMailbox { words, shape }
        }

        fn view(&self) -> Words<'_> {
            Words::new(&self.words, self.shape).expect("sized by shape")
        }

        /// Publishes, stopping after `stop_after` steps if given.
        pub fn publish(
            &self,
            data: &[u8],
            stop_after: Option<usize>,
        ) -> Result<Option<u64>, Corrupt> {
            protocol::publish(&self.view(), data, stop_after)
        }

        /// Attaches reader `r`, returning its epoch.
        pub fn attach(&self, r: usize) -> u64 {
            self.view().attach_reader(r)
        }

        /// Reads as reader `r`.
        pub fn read(
            &self,
            r: usize,
            epoch: u64,
            out: &mut [u8],
        ) -> Result<Option<Message>, Corrupt> {
            protocol::read(&self.view(), r, epoch, out)
        }

        /// Reads the last complete message as a (restarted) writer.
        pub fn last(&self, out: &mut [u8]) -> Result<Option<Message>, Corrupt> {
            protocol::last(&self.view(), out)
        }
    }
}
