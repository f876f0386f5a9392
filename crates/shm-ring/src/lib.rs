//! A lock-free single-producer single-consumer channel in a sealed memfd, with
//! eventfd wake-ups and a Unix-socket handshake that passes the fds.
//!
//! - [`Producer`] / [`Consumer`]: typed `send`/`recv` for any plain-data `T`
//!   (zerocopy `FromBytes + IntoBytes + Immutable`), batches by slice, zero-copy
//!   batches through closures ([`Producer::send_with`], and the unsafe
//!   [`Producer::send_trusted`] / [`Consumer::receive_trusted`] that hand out
//!   `&mut [T]` / `&[T]` for trusted peers), and a byte stream
//!   (`Producer<u8>: std::io::Write`, `Consumer<u8>: std::io::Read`). Every
//!   operation comes non-blocking (`try_*`: full and empty hand the value back),
//!   blocking with an optional timeout (spin briefly, then park on an eventfd,
//!   re-checking the ring every [`PARK_RECHECK`] in case a wake-up was lost),
//!   and async behind the `tokio` feature (module `asyncio`: batches,
//!   `Stream` / `Sink` of typed values, `AsyncRead` / `AsyncWrite` for bytes,
//!   and an async handshake). An external event loop (epoll, mio, glib) can
//!   multiplex many ends through their readiness fds (see "Event loops").
//! - Capacities are rounded up to a power of two ([`channel`]`::<T>(1000)`
//!   holds 1024); `capacity()` on either end tells the actual one.
//! - [`Listener`] / [`Connector`]: a server and a client over a Unix socket
//!   (blocking, or async with the `tokio` feature).
//!   The server creates (or adopts) the ring, checks the client's credentials
//!   (`SO_PEERCRED`, same uid by default), negotiates the protocol version and
//!   passes the sealed memfd and two eventfds by `SCM_RIGHTS`. The socket then
//!   stays open: a blocked side polls it together with its eventfd, so the
//!   peer's death ends the wait at once with [`RingError::Disconnected`].
//! - Positions live in shared memory: a side that restarts (and gets the same
//!   memfd back, from the server or from a file-descriptor store) resumes where
//!   its predecessor stopped. Delivery is exactly once while both sides live;
//!   across a consumer crash it is at least once (elements copied out but not
//!   yet released are delivered again); a producer crash loses only elements
//!   not yet committed, and [`Producer::position`] tells a restarted producer
//!   how many were.
//! - Untrusted peers: the memfd must be sealed against shrinking and growing,
//!   its size is checked with `fstat`, its `shm-segment` header and the
//!   ring's config block are copied out and validated, and every counter read
//!   from shared memory is checked against a private shadow ([`Corrupt`]).
//!   Payload is copied out before use, word-atomically, so a peer that writes
//!   slots during our copy (breaking the protocol) leaves an inconsistent
//!   element, not a data race. Plain `memcpy` copies are an opt-in for
//!   trusted peers: the `unsafe` [`Producer::trust_peer`] /
//!   [`Consumer::trust_peer`].
//!
//! - One producer and one consumer per ring, enforced: each end is claimed
//!   with a kernel-released lock on the memfd, so a second live producer or
//!   consumer (in this process or another) gets [`OpenError::InUse`], and a
//!   dead one's claim is taken over when its successor opens.
//!
//! When to use it, and when something else: use this crate when one process
//! streams items to another and every item must arrive, in order, with
//! backpressure when the consumer falls behind, and either side may be
//! killed and restarted. For more than one producer or consumer, use one
//! ring per pair; when only the newest value matters (a status, a setting),
//! use `shm-mailbox`; for state shared in place (counters, tables of
//! atomics), use `shm-segment`; between threads of one process, an ordinary
//! in-process channel is simpler.
//!
//! Features: `tokio` (the [`asyncio`] module and the async handshake on
//! [`Listener`] and [`Connector`]; the runtime needs its I/O driver only),
//! `fault-injection` (named crash points for this workspace's crash tests).
//!
//! Layout and protocol: [`protocol`] (`docs/protocol/shm-ring.md`) and
//! [`layout`]; the algorithm: [`raw`].
//!
//! # Example
//! ```
//! let (mut tx, mut rx) = shm_ring::channel::<u64>(1024)?;
//! std::thread::spawn(move || {
//!     for i in 0..10_000u64 {
//!         tx.send(i).unwrap();
//!     }
//! });
//! let mut sum = 0;
//! for _ in 0..10_000 {
//!     sum += rx.recv()?;
//! }
//! assert_eq!(sum, 10_000 * 9_999 / 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Event loops
//!
//! Each end has a readiness fd ([`Consumer::readiness_fd`], also its
//! `AsFd`): readable when the peer may have made progress (sent something,
//! made room) or has hung up. An event loop multiplexes many ends by
//! registering those fds, and parks an end with a two-step handshake that
//! never loses a wake-up:
//!
//! 1. do the work the ring allows (`try_recv` until `None`, `try_send`
//!    until full);
//! 2. call `prepare_park()`: `Ok(true)` means nothing can be done and it is
//!    safe to sleep on the readiness fd (the peer's next step will make it
//!    readable, even if that happens before the loop sleeps); `Ok(false)`
//!    means work appeared meanwhile: go back to 1 without sleeping;
//!    `Err(RingError::Disconnected)` means the peer hung up and nothing is
//!    left (a consumer's end of stream);
//! 3. sleep (`poll`, `epoll_wait`, ...) until the fd is readable, then call
//!    `finish_park()` and go back to 1.
//!
//! Underneath, `prepare_park` resets the eventfd, sets the end's `parked`
//! flag, issues a SeqCst fence and checks the peer's counter again; the peer
//! writes the eventfd when it sees the flag after its next publish or
//! release (`docs/protocol/shm-ring.md`, "Parking in an external event
//! loop"). As in the blocking calls, a peer that clears the flag in shared
//! memory can withhold wake-ups: a loop serving untrusted peers wakes at
//! least every [`PARK_RECHECK`].
//!
//! ```
//! use rustix::event::{poll, PollFd, PollFlags};
//!
//! let (mut tx, mut rx) = shm_ring::channel::<u32>(64)?;
//! let sender = std::thread::spawn(move || (0..1000).try_for_each(|i| tx.send(i)));
//! let mut next = 0;
//! loop {
//!     while let Some(v) = rx.try_recv()? {
//!         assert_eq!(v, next);
//!         next += 1;
//!     }
//!     match rx.prepare_park() {
//!         Ok(true) => {
//!             let mut fds = [PollFd::new(&rx, PollFlags::IN)]; // any number of ends
//!             poll(&mut fds, None)?;
//!             rx.finish_park();
//!         }
//!         Ok(false) => {}
//!         Err(shm_ring::RingError::Disconnected) => break, // the sender is done
//!         Err(e) => return Err(e.into()),
//!     }
//! }
//! assert_eq!(next, 1000);
//! sender.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The shared-memory protocol of this crate: the text of `docs/protocol/shm-ring.md` in the
/// source repository (the crate's `PROTOCOL.md` links to it, and the packaged
/// crate carries a copy), included here so it is readable with the API docs.
#[doc = ""]
// Rustdoc targets for the document's reference links: the first definition of
// a label wins, so these take the place of the repository-relative ones at
// its end.
#[doc = "[segment-header]: https://docs.rs/shm-segment/latest/shm_segment/protocol/index.html#segment-layout-crate-shm-segment"]
#[doc = ""]
// The text is Markdown written for a repository browser: `x[i]` there is not
// an intra-doc link, and identifiers are not always in backticks.
#[allow(rustdoc::broken_intra_doc_links, clippy::doc_markdown)]
#[doc = include_str!("../PROTOCOL.md")]
pub mod protocol {}

mod core;
pub mod layout;
mod storage;

#[cfg(all(feature = "tokio", not(shm_loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod asyncio;
#[cfg(not(shm_loom))]
mod claim;
#[cfg(not(shm_loom))]
mod conn;
#[cfg(not(shm_loom))]
mod endpoint;
#[cfg(not(shm_loom))]
mod evloop;
#[cfg(not(shm_loom))]
mod fds;
#[cfg(not(shm_loom))]
mod peer;
#[cfg(not(shm_loom))]
mod trusted;

pub use crate::core::{Corrupt, RingError};
pub use crate::layout::{ElemLayout, LayoutError};

#[cfg(not(shm_loom))]
pub use crate::conn::{
    AcceptError, ConnectError, Connector, Listener, PROTOCOL_VERSION, Role, UidPolicy,
};
#[cfg(not(shm_loom))]
pub use crate::endpoint::{
    Consumer, DEFAULT_SPIN, Element, Producer, SendError, Slots, SlotsMut, TrySendError, channel,
};
#[cfg(not(shm_loom))]
pub use crate::fds::{OpenError, PARK_RECHECK, RING_SEALS, RingFds};
#[cfg(not(shm_loom))]
pub use crate::peer::PeerLink;

/// The algorithm without the OS: generic over storage and over how a side
/// blocks. Used by the loom models and the unit tests; most users want
/// [`Producer`] and [`Consumer`].
pub mod raw {
    pub use crate::core::{Park, RawConsumer, RawProducer};
    pub use crate::storage::{
        ConsumerLine, HeapStorage, INLINE_BYTES, INLINE_WORDS, ParkFlag, ProducerLine, Storage,
    };
}

// The crash points of this crate: nothing at the call sites without its
// `fault-injection` feature; with it, one load of a once-set flag per point
// unless the process was started with `SHM_CRASH_AT` (see `shm_sync::crash`),
// so the benchmark, built with the feature, measures no more than that.
pub(crate) use shm_sync::crash_point;
