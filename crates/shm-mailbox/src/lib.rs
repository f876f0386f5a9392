//! A crash-proof latest-value mailbox in shared memory.
//!
//! One writer publishes messages; up to `N` readers (chosen at creation) each
//! take the newest one. The writer never waits and can never run out of
//! slots; any process can be SIGKILLed and restarted at any time; readers can
//! tell new messages from old by their sequence numbers. The protocol
//! (hazard words over `N + 2` slots) is described in the [`protocol`] module
//! docs and in `docs/protocol/shm-mailbox.md`.
//!
//! When not to use it: when readers need *every* message (use `shm-ring`), or
//! when there are several writers (give each its own mailbox, as the `board`
//! example does).
#![doc(test(attr(deny(warnings))))]

mod layout;
#[cfg(not(shm_loom))]
mod liveness;
#[cfg(not(shm_loom))]
mod mailbox;
pub mod protocol;

pub use layout::{Config, LayoutError, MAX_READERS, MAX_SLOT_BYTES};
#[cfg(not(shm_loom))]
pub use mailbox::{Mailbox, MailboxError, Reader, Writer};
pub use protocol::{Corrupt, Message};

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
