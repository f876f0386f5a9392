//! Parking in an external event loop (epoll, mio, glib, tokio's `AsyncFd`,
//! ...): an end's readiness fd and the two halves of the park handshake,
//! [`Consumer::prepare_park`] / [`Consumer::finish_park`] (and the same on
//! [`Producer`]).
//!
//! # Protocol
//!
//! The handshake is the one the blocking calls use (`docs/protocol/shm-ring.md`,
//! "Parking and wake-ups"), with the loop doing the sleeping:
//!
//! 1. `prepare_park` resets the end's eventfd (so a wake-up from an earlier
//!    round does not make the loop spin), stores `parked = 1`, issues a
//!    SeqCst fence and reloads the peer's counter. If there is work (a ready
//!    element, a free slot) it clears the flag and returns `Ok(false)`: do
//!    the work instead of sleeping. Otherwise the flag stays 1 and it
//!    returns `Ok(true)`: sleeping on the readiness fd is now safe, because
//!    the peer, after its next publish or release, reads the flag (after its
//!    own SeqCst fence) and writes the eventfd, which makes the readiness fd
//!    readable even if that happens before the loop blocks.
//! 2. The loop waits for the readiness fd (with other sources).
//! 3. When it wakes (or decides not to sleep after all), `finish_park`
//!    clears the flag, so the peer stops writing the eventfd after every
//!    operation. Forgetting it costs spurious wake-ups, never a lost one.
//!
//! The resetting read comes before the flag is set: a reset after it could
//! swallow a wake-up meant for this round.
//!
//! The readiness fd is an epoll instance (level-triggered) holding the end's
//! eventfd and, when connected, the peer socket (`EPOLLIN | EPOLLRDHUP`): it
//! is readable when the peer may have made progress or has hung up, so one
//! registration per end covers both. An epoll fd can itself be polled,
//! registered in another epoll (level- or edge-triggered: the peer's write
//! after step 1 is a new event), in mio (`SourceFd`) or in glib.
//!
//! As for the blocking calls, a wake-up depends on a flag in shared memory
//! that a buggy or hostile peer can clear; a loop serving untrusted peers
//! wakes at least every [`PARK_RECHECK`](crate::PARK_RECHECK) and retries.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::event::epoll;
use rustix::io::Errno;

use crate::core::{Corrupt, RawConsumer, RawProducer, RingError};
use crate::endpoint::{Consumer, Element, Producer};
use crate::fds::{self, OpenError, Parker};
use crate::storage::MapStorage;

/// A ring side as the park handshake sees it (shared with the async ends).
pub(crate) trait ParkSide {
    /// Work possible now (free slots, ready elements), reloading the peer's
    /// counter when the cache shows none.
    fn work(&mut self) -> Result<u64, Corrupt>;
    /// `parked = 1`, SeqCst fence, re-check; the flag stays 1 only when the result is 0.
    fn park_begin(&mut self) -> Result<u64, Corrupt>;
    /// `parked = 0`.
    fn park_end(&self);
}

impl ParkSide for RawProducer<MapStorage> {
    fn work(&mut self) -> Result<u64, Corrupt> {
        self.free(1)
    }
    fn park_begin(&mut self) -> Result<u64, Corrupt> {
        RawProducer::park_begin(self)
    }
    fn park_end(&self) {
        RawProducer::park_end(self);
    }
}

impl ParkSide for RawConsumer<MapStorage> {
    fn work(&mut self) -> Result<u64, Corrupt> {
        self.available()
    }
    fn park_begin(&mut self) -> Result<u64, Corrupt> {
        RawConsumer::park_begin(self)
    }
    fn park_end(&self) {
        RawConsumer::park_end(self);
    }
}

/// An end's readiness fd: an epoll instance holding its eventfd and its peer socket.
#[derive(Debug)]
pub(crate) struct Readiness {
    epoll: OwnedFd,
    /// Why the last change of peer could not be registered (reported by `prepare_park`).
    broken: Option<Errno>,
}

const EVENTFD: u64 = 0;
const PEER: u64 = 1;

impl Readiness {
    /// An epoll instance watching `parker`'s eventfd and peer socket.
    pub(crate) fn new(parker: &Parker) -> Result<Readiness, OpenError> {
        let io = |op| move |source| OpenError::Io { op, source };
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(io("epoll_create1"))?;
        epoll::add(
            &epoll,
            &parker.eventfd,
            epoll::EventData::new_u64(EVENTFD),
            epoll::EventFlags::IN,
        )
        .map_err(io("epoll_ctl"))?;
        if let Some(peer) = &parker.peer {
            watch(&epoll, peer.as_fd()).map_err(io("epoll_ctl"))?;
        }
        Ok(Readiness {
            epoll,
            broken: None,
        })
    }

    /// Swaps the watched peer socket (`old` is still open).
    pub(crate) fn set_peer(&mut self, old: Option<BorrowedFd<'_>>, new: Option<BorrowedFd<'_>>) {
        let removed = old.map_or(Ok(()), |old| epoll::delete(&self.epoll, old));
        let added = removed.and_then(|()| new.map_or(Ok(()), |new| watch(&self.epoll, new)));
        // Reported by the next `prepare_park`: only event-loop users need the fd.
        self.broken = added.err();
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }

    /// Step 1 of the module's protocol.
    fn prepare<S: ParkSide>(&self, side: &mut S, parker: &Parker) -> Result<bool, RingError> {
        if let Some(source) = self.broken {
            return Err(RingError::Io {
                op: "epoll_ctl (readiness fd)",
                source,
            });
        }
        // Before `parked = 1`: a wake-up written after it must stay readable.
        fds::drain(parker.eventfd.as_fd())?;
        if side.park_begin()? > 0 {
            return Ok(false);
        }
        if parker
            .peer
            .as_ref()
            .is_some_and(|p| fds::peer_gone(p.as_fd()))
        {
            side.park_end();
            // The peer may have published (or released) just before it hung up.
            return match side.work()? {
                0 => Err(RingError::Disconnected),
                _ => Ok(false),
            };
        }
        Ok(true)
    }
}

fn watch(epoll: &OwnedFd, peer: BorrowedFd<'_>) -> rustix::io::Result<()> {
    epoll::add(
        epoll,
        peer,
        epoll::EventData::new_u64(PEER),
        epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
    )
}

macro_rules! event_loop_api {
    ($end:ident, $work:literal, $ready:literal) => {
        impl<T: Element> $end<T> {
            #[doc = concat!("The fd an external event loop waits on: readable when ", $ready, ", or when the peer has hung up.")]
            ///
            /// An epoll instance (level-triggered) holding this end's eventfd
            /// and the peer socket; it stays the same fd for the end's life
            /// ([`set_peer`](Self::set_peer) changes what it watches). Wait on
            /// it only after [`prepare_park`](Self::prepare_park) returned
            /// `Ok(true)`; see the crate docs, "Event loops", for the protocol.
            #[doc(alias = "as_fd")]
            pub fn readiness_fd(&self) -> BorrowedFd<'_> {
                self.end.readiness.fd()
            }

            #[doc = concat!("Prepares to sleep on [`readiness_fd`](Self::readiness_fd) in an external event loop, when ", $work, ".")]
            ///
            /// Resets the eventfd, announces the park (`parked = 1`, SeqCst
            /// fence) and checks the ring once more. `Ok(true)`: nothing to do,
            /// sleeping on the readiness fd is safe (the peer's next step
            /// wakes it); call [`finish_park`](Self::finish_park) after the
            /// wake-up. `Ok(false)`: there is work, do it instead (nothing to
            /// finish).
            ///
            /// # Errors
            /// [`RingError::Disconnected`] when nothing is possible and the
            /// peer hung up; [`RingError::Corrupt`] for an impossible peer
            /// counter; [`RingError::Io`] if the eventfd could not be read or
            /// the peer of [`set_peer`](Self::set_peer) could not be watched.
            pub fn prepare_park(&mut self) -> Result<bool, RingError> {
                self.end.readiness.prepare(&mut self.raw, &self.end.parker)
            }

            /// Ends a park begun by [`prepare_park`](Self::prepare_park)
            /// (clears `parked`, so the peer stops writing the eventfd).
            /// Harmless when not parked.
            pub fn finish_park(&mut self) {
                ParkSide::park_end(&self.raw);
            }
        }

        /// The [`readiness_fd`](Self::readiness_fd), for event loops that take `AsFd`.
        impl<T> AsFd for $end<T> {
            fn as_fd(&self) -> BorrowedFd<'_> {
                self.end.readiness.fd()
            }
        }
    };
}

event_loop_api!(
    Producer,
    "the ring is full",
    "the consumer may have made room"
);
event_loop_api!(
    Consumer,
    "the ring is empty",
    "the producer may have sent something"
);
