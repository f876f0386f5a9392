//! One producer and one consumer per ring, enforced with kernel-released locks.
//!
//! Each end is claimed with an exclusive open-file-description lock
//! (`fcntl(F_OFD_SETLK)`) on one byte of the ring memfd: [`PRODUCER_BYTE`]
//! (file offset 4224, the first byte of the producer's line) for the
//! producer, [`CONSUMER_BYTE`] (4352, the first byte of the consumer's line)
//! for the consumer. Both offsets are recorded in the ring's config block,
//! and an opener refuses a ring whose block names other bytes, so every end
//! of one ring locks the same bytes. (Layout 2 locked bytes 0 and 1, where
//! the segment header now starts; the header and the lines are unaffected
//! either way, see below.) The lock is taken on a
//! fresh open file description (the memfd reopened through `/proc/self/fd`),
//! never on the fd the caller passed: OFD locks never conflict within one
//! description, and the caller's fd may be a `dup` of the one the other end,
//! a second opener in this process or a file-descriptor store holds. A second
//! live holder of an end is refused ([`OpenError::InUse`]); the kernel drops
//! the lock when the claim's description is closed, which happens when the
//! [`Producer`](crate::Producer) / [`Consumer`](crate::Consumer) is dropped
//! and when its process dies, SIGKILL included, so a restarted side takes its
//! end over at once. The locks are advisory: they guard no bytes, and the
//! mapping ignores them.
//!
//! # Safety
//!
//! rustix offers only whole-file OFD locks (`fcntl_lock`, which moreover takes
//! process-associated `F_SETLK` locks), and we need one lock per end on the
//! same file, so this module calls `fcntl` through libc with a `struct flock`
//! that lives on our stack for the duration of the call.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::fds::OpenError;
use crate::layout;

/// The byte of the memfd whose lock is the producer's claim (the first byte
/// of the producer's line; recorded in the config block, which opening checks).
pub(crate) const PRODUCER_BYTE: i64 = layout::PRODUCER_CLAIM as i64;
/// The byte of the memfd whose lock is the consumer's claim (the first byte
/// of the consumer's line).
pub(crate) const CONSUMER_BYTE: i64 = layout::CONSUMER_CLAIM as i64;

/// Which end of the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Producer,
    Consumer,
}

impl End {
    fn byte(self) -> i64 {
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

/// A held claim on one end; dropping it closes the description, which releases the lock.
#[derive(Debug)]
pub(crate) struct Claim {
    _description: OwnedFd,
}

/// Claims `end` of the ring whose (validated) memfd is `memfd`.
pub(crate) fn claim(memfd: BorrowedFd<'_>, end: End) -> Result<Claim, OpenError> {
    let path = format!("/proc/self/fd/{}", memfd.as_raw_fd());
    // A new open file description of the same memfd (RDWR: F_WRLCK needs a writable one).
    let description = rustix::fs::open(
        path.as_str(),
        OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|source| OpenError::Io {
        op: "reopen the ring memfd through /proc/self/fd",
        source,
    })?;
    // SAFETY: `libc::flock` is a plain C struct for which all-zero bytes are valid.
    let mut fl: libc::flock = unsafe { core::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = end.byte();
    fl.l_len = 1;
    // SAFETY: `description` is an open descriptor we own for the whole call;
    // `fl` is a valid, initialised `struct flock` (with `l_pid` 0, as
    // F_OFD_SETLK requires) that outlives the call; F_OFD_SETLK only reads it.
    let rc = unsafe { libc::fcntl(description.as_raw_fd(), libc::F_OFD_SETLK, &raw const fl) };
    if rc == 0 {
        return Ok(Claim {
            _description: description,
        });
    }
    match Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::INVAL) {
        Errno::AGAIN | Errno::ACCESS => Err(OpenError::InUse { end: end.name() }),
        source => Err(OpenError::Io {
            op: "fcntl F_OFD_SETLK on the ring memfd",
            source,
        }),
    }
}
