//! One producer and one consumer per ring, enforced with kernel-released locks.
//!
//! Each end is claimed with an exclusive open-file-description lock
//! (`fcntl(F_OFD_SETLK)`, taken by [`shm_segment::OfdLock`]) on one byte of
//! the ring memfd: [`PRODUCER_BYTE`] (file offset 4224, the first byte of the
//! producer's line) for the producer, [`CONSUMER_BYTE`] (4352, the first byte
//! of the consumer's line) for the consumer. Both offsets are recorded in the
//! ring's config block, and an opener refuses a ring whose block names other
//! bytes, so every end of one ring locks the same bytes. (Layout 2 locked
//! bytes 0 and 1, where the segment header now starts; the header and the
//! lines are unaffected either way, see below.) The lock is taken on a fresh
//! open file description (the memfd reopened through `/proc/self/fd`), never
//! on the fd the caller passed: OFD locks never conflict within one
//! description, and the caller's fd may be a `dup` of the one the other end,
//! a second opener in this process or a file-descriptor store holds. A second
//! live holder of an end is refused ([`OpenError::InUse`]); the kernel drops
//! the lock when the claim's description is closed, which happens when the
//! [`Producer`](crate::Producer) / [`Consumer`](crate::Consumer) is dropped
//! and when its process dies, SIGKILL included, so a restarted side takes its
//! end over at once. The locks are advisory: they guard no bytes, and the
//! mapping ignores them.

use std::os::fd::BorrowedFd;

use shm_segment::OfdLock;

use crate::fds::OpenError;
use crate::layout;

/// The byte of the memfd whose lock is the producer's claim (the first byte
/// of the producer's line; recorded in the config block, which opening checks).
pub(crate) const PRODUCER_BYTE: u64 = layout::PRODUCER_CLAIM;
/// The byte of the memfd whose lock is the consumer's claim (the first byte
/// of the consumer's line).
pub(crate) const CONSUMER_BYTE: u64 = layout::CONSUMER_CLAIM;

/// Which end of the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Producer,
    Consumer,
}

impl End {
    fn byte(self) -> u64 {
        match self {
            End::Producer => PRODUCER_BYTE,
            End::Consumer => CONSUMER_BYTE,
        }
    }

    fn name(self) -> &'static str {
        match self {
            End::Producer => "producer",
            End::Consumer => "consumer",
        }
    }
}

/// A held claim on one end; dropping it closes the lock's private
/// description, which releases the lock.
#[derive(Debug)]
pub(crate) struct Claim {
    _lock: OfdLock,
}

/// Claims `end` of the ring whose (validated) memfd is `memfd`.
pub(crate) fn claim(memfd: BorrowedFd<'_>, end: End) -> Result<Claim, OpenError> {
    match OfdLock::try_acquire(memfd, end.byte()) {
        Ok(Some(lock)) => Ok(Claim { _lock: lock }),
        Ok(None) => Err(OpenError::InUse { end: end.name() }),
        Err(source) => Err(OpenError::Io {
            op: "lock a ring end (reopen the memfd through /proc/self/fd, fcntl F_OFD_SETLK)",
            source,
        }),
    }
}
