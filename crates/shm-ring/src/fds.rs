//! The three file descriptors that make a ring: the sealed memfd and two eventfds.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::io::Errno;
use shm_segment::memfd::{self, Requirements, Seals};
use shm_segment::{Segment, SegmentError};

use crate::core::{Park, RingError};
use crate::layout::{self, ElemLayout, LayoutError, RingConfig};
use crate::storage::MapStorage;

/// The seals a ring memfd must carry: fixed size, and no seal can be removed
/// or added (seals can never be removed anyway; `SEAL` freezes the set).
pub const RING_SEALS: Seals = memfd::FIXED_SIZE.union(Seals::SEAL);

/// A ring's file descriptors: what the server keeps, passes to clients, and
/// may park in a file-descriptor store to survive its own restart.
#[derive(Debug)]
pub struct RingFds {
    /// The sealed memfd: a segment header, then the config block, counters and slots.
    pub memfd: OwnedFd,
    /// Written by the producer to wake a parked consumer.
    pub data_ready: OwnedFd,
    /// Written by the consumer to wake a parked producer.
    pub space_ready: OwnedFd,
}

/// Why a ring could not be created or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The requested geometry or the config block found is not acceptable.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The memfd is not a valid `shm-segment` segment (its header is
    /// corrupt, of another format version, or was never published).
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// Creating the memfd failed.
    #[error(transparent)]
    Create(#[from] memfd::MemfdError),
    /// The fd is not a memfd, is too small, or lacks the seals.
    #[error(transparent)]
    Validate(#[from] memfd::ValidateError),
    /// An fd that should be an eventfd is something else.
    #[error("{which} is not an eventfd")]
    NotEventfd {
        /// Which of the two.
        which: &'static str,
    },
    /// The counters are inconsistent.
    #[error(transparent)]
    Corrupt(#[from] crate::core::Corrupt),
    /// The element type does not fit the slots (size or alignment).
    #[error("element type of size {size} align {align} does not match the ring")]
    ElementType {
        /// `size_of::<T>()`.
        size: usize,
        /// `align_of::<T>()`.
        align: usize,
    },
    /// A live process (this one included) already holds this end of the
    /// ring: one producer and one consumer per ring. The claim is released
    /// when that end is dropped or its process dies.
    #[error("the {end} end of this ring is held by a live process (one {end} per ring)")]
    InUse {
        /// `"producer"` or `"consumer"`.
        end: &'static str,
    },
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: Errno,
    },
}

fn io(op: &'static str) -> impl FnOnce(Errno) -> OpenError {
    move |source| OpenError::Io { op, source }
}

impl RingFds {
    /// Creates a ring of at least `capacity` slots for elements of layout
    /// `elem`: an `shm-segment` memfd segment sealed with [`RING_SEALS`],
    /// whose payload starts with the ring's config block (written before the
    /// segment header is published), counters at 0, and two non-blocking
    /// eventfds.
    ///
    /// The capacity is rounded up to a power of two
    /// ([`layout::round_capacity`]): ask for 1000, get 1024. The ends tell
    /// the actual one ([`Producer::capacity`](crate::Producer::capacity),
    /// [`Consumer::capacity`](crate::Consumer::capacity)).
    ///
    /// # Errors
    /// [`OpenError::Layout`] with [`LayoutError::ZeroCapacity`] for 0,
    /// [`LayoutError::CapacityOverflow`] past 2^63, [`LayoutError::TooLarge`]
    /// when the slots would exceed [`layout::MAX_DATA_BYTES`], and the
    /// errors of creating the memfd and the eventfds.
    ///
    /// # Examples
    /// ```
    /// let fds = shm_ring::RingFds::create("doc", 1024, shm_ring::ElemLayout::of::<u64>())?;
    /// let (mut tx, mut rx) = (shm_ring::Producer::<u64>::open(&fds, None)?, shm_ring::Consumer::<u64>::open(&fds, None)?);
    /// tx.try_send(7).map_err(|_| "full")?;
    /// assert_eq!(rx.try_recv()?, Some(7));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create(name: &str, capacity: u64, elem: ElemLayout) -> Result<RingFds, OpenError> {
        let capacity = layout::round_capacity(capacity)?;
        let config = layout::config_for(capacity, elem)?;
        let payload = usize::try_from(layout::payload_size(capacity, elem)?).map_err(|_| {
            LayoutError::TooLarge {
                capacity,
                elem_size: elem.size as u64,
            }
        })?;
        // The segment writes its header, runs the closure on the zeroed
        // payload, and only then publishes the header (state stored last,
        // with Release): an opener never sees a half-written config block.
        let mut wrote = Ok(());
        let segment = Segment::memfd(name)
            .size(payload)
            .create_with(|region| wrote = region.write(layout::CONFIG, &config))?;
        wrote.map_err(|_| OpenError::Io {
            op: "write the ring config block",
            source: Errno::FAULT,
        })?;
        // The segment sealed SHRINK | GROW; freeze the seal set too.
        memfd::add_seals(segment.fd(), Seals::SEAL)?;
        let memfd = segment
            .fd()
            .try_clone_to_owned()
            .map_err(|e| OpenError::Io {
                op: "dup",
                source: Errno::from_io_error(&e).unwrap_or(Errno::BADF),
            })?;
        let flags = EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK;
        Ok(RingFds {
            memfd,
            data_ready: rustix::event::eventfd(0, flags).map_err(io("eventfd"))?,
            space_ready: rustix::event::eventfd(0, flags).map_err(io("eventfd"))?,
        })
    }

    /// Duplicates the three fds (`F_DUPFD_CLOEXEC`).
    pub fn try_clone(&self) -> Result<RingFds, OpenError> {
        let dup = |fd: &OwnedFd| {
            fd.try_clone().map_err(|e| OpenError::Io {
                op: "dup",
                source: Errno::from_io_error(&e).unwrap_or(Errno::BADF),
            })
        };
        Ok(RingFds {
            memfd: dup(&self.memfd)?,
            data_ready: dup(&self.data_ready)?,
            space_ready: dup(&self.space_ready)?,
        })
    }

    /// Validates the memfd and maps it: seals, a ring of an older layout,
    /// the segment header (`shm-segment`), the config block, the file size,
    /// the eventfds.
    pub(crate) fn open_storage(&self, elem: ElemLayout) -> Result<MapStorage, OpenError> {
        let req = Requirements::min_size(0).with_seals(memfd::FIXED_SIZE);
        let info = memfd::validate(self.memfd.as_fd(), &req)?;
        if let Some(found) = read_legacy_version(self.memfd.as_fd()) {
            return Err(LayoutError::Legacy { found }.into());
        }
        let memfd = self.memfd.try_clone().map_err(|e| OpenError::Io {
            op: "dup",
            source: Errno::from_io_error(&e).unwrap_or(Errno::BADF),
        })?;
        // Published before the fd is shared: an initialising header is not
        // worth waiting for (it would be a peer's doing).
        let segment = Segment::adopt(memfd).open_timeout(Duration::ZERO).open()?;
        let payload = segment.payload();
        let config: RingConfig = payload
            .read(layout::CONFIG)
            .map_err(|_| LayoutError::NotARing)?;
        config.validate(payload.len() as u64, elem)?;
        let total = layout::PAYLOAD_OFFSET as u64 + payload.len() as u64;
        if info.size != total {
            return Err(LayoutError::Field {
                field: "file size",
                found: info.size,
                expected: total,
            }
            .into());
        }
        check_eventfd(self.data_ready.as_fd(), "data_ready")?;
        check_eventfd(self.space_ready.as_fd(), "space_ready")?;
        Ok(MapStorage::new(segment, config.capacity, elem.size))
    }
}

/// The version of a ring of layout 1 or 2 (its own header at offset 0), if
/// `memfd` holds one. Read with `pread`: nothing is mapped, whatever the size.
fn read_legacy_version(memfd: BorrowedFd<'_>) -> Option<u32> {
    let mut first = [0u8; 16];
    let mut got = 0;
    while got < first.len() {
        match rustix::io::pread(memfd, &mut first[got..], got as u64) {
            Ok(0) => return None,
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(_) => return None,
        }
    }
    layout::legacy_version(&first)
}

/// Refuses anything but an eventfd (a pipe or a socket could block our reads
/// or be written by a third party), and makes sure reads never block.
fn check_eventfd(fd: BorrowedFd<'_>, which: &'static str) -> Result<(), OpenError> {
    let link = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ))
    .map_err(|_| OpenError::NotEventfd { which })?;
    if link.as_os_str() != "anon_inode:[eventfd]" {
        return Err(OpenError::NotEventfd { which });
    }
    rustix::io::ioctl_fionbio(fd, true).map_err(io("FIONBIO"))
}

/// Writes 1 to an eventfd. A saturated counter (`EAGAIN`) already wakes the reader.
pub(crate) fn notify(fd: BorrowedFd<'_>) -> Result<(), RingError> {
    match rustix::io::write(fd, &1u64.to_ne_bytes()) {
        Ok(_) | Err(Errno::AGAIN) => Ok(()),
        Err(source) => Err(RingError::Io {
            op: "write eventfd",
            source,
        }),
    }
}

/// Resets an eventfd's counter (it is non-blocking: `EAGAIN` means already 0).
pub(crate) fn drain(fd: BorrowedFd<'_>) -> Result<(), RingError> {
    let mut buf = [0u8; 8];
    match rustix::io::read(fd, &mut buf) {
        Ok(_) | Err(Errno::AGAIN) => Ok(()),
        Err(source) => Err(RingError::Io {
            op: "read eventfd",
            source,
        }),
    }
}

/// The longest a parked side sleeps before it re-checks the peer's counter
/// on its own, woken or not.
///
/// A waker writes our eventfd only when it reads our `parked` flag as 1, and
/// that flag lives in shared memory, where a buggy or hostile process (or
/// stray writes) can clear it. Without a bound, one lost flag leaves a side
/// asleep forever on a ring that has work; with it, a lost flag costs at most
/// this much delay. 50 ms keeps that delay short for a human watching while
/// an idle parked side wakes only 20 times a second (each time a `poll`, a
/// re-check of one counter, and the side's spin). A legitimate wake-up does
/// not wait for it: the eventfd ends the `poll` at once, as before.
pub const PARK_RECHECK: Duration = Duration::from_millis(50);

/// `t` as a `Timespec` (seconds saturate at `i64::MAX`).
pub(crate) fn timespec(t: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(t.subsec_nanos()),
    }
}

/// Blocks on our eventfd and, if connected, the peer's socket.
#[derive(Debug)]
pub(crate) struct Parker {
    pub(crate) eventfd: OwnedFd,
    pub(crate) peer: Option<OwnedFd>,
}

impl Park for Parker {
    /// Returns `Ok` after at most [`PARK_RECHECK`] even when nobody wrote the
    /// eventfd (a spurious wake-up for the caller, which re-checks the counters).
    fn park(&mut self, deadline: Option<Instant>) -> Result<(), RingError> {
        let recheck = Instant::now().checked_add(PARK_RECHECK);
        loop {
            // Sleep until the re-check or the caller's deadline, whichever comes first.
            let (until, is_deadline) = match (deadline, recheck) {
                (Some(d), Some(r)) if d > r => (Some(r), false),
                (Some(d), _) => (Some(d), true),
                (None, r) => (r, false),
            };
            let ts = until.map(|u| timespec(u.saturating_duration_since(Instant::now())));
            let mut fds = [
                PollFd::new(&self.eventfd, PollFlags::IN),
                PollFd::new(&self.eventfd, PollFlags::IN),
            ];
            let count = if let Some(peer) = &self.peer {
                fds[1] = PollFd::new(peer, PollFlags::IN | PollFlags::RDHUP);
                2
            } else {
                1
            };
            match rustix::event::poll(&mut fds[..count], ts.as_ref()) {
                Ok(0) if is_deadline => return Err(RingError::Timeout),
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(source) => return Err(RingError::Io { op: "poll", source }),
            }
            if count == 2 && !fds[1].revents().is_empty() {
                // The peer never writes after the handshake: readable means EOF or a protocol breach.
                return Err(RingError::Disconnected);
            }
            if !fds[0].revents().is_empty() {
                return drain(self.eventfd.as_fd());
            }
        }
    }
}

/// Whether the peer's socket shows a hang-up (non-blocking check).
pub(crate) fn peer_gone(peer: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&peer, PollFlags::IN | PollFlags::RDHUP)];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
}

/// Whether the peer shut down its sending side or closed the socket
/// (`POLLRDHUP`), whether or not unread data is queued (non-blocking check).
#[cfg(feature = "tokio")]
pub(crate) fn peer_gone_rdhup(peer: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&peer, PollFlags::RDHUP)];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
}
