//! Named POSIX objects in `/dev/shm`: creating (nameless, then linked),
//! opening, reclaiming stale ones, removing, and unlinking only what is ours
//! (see the rules in the [module docs](super)).

use core::sync::atomic::Ordering; // atomics-ok: header words in shared memory
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use super::error::{fault_error, io_err};
use super::{Segment, SegmentBuilder, SegmentError};
use crate::header::{
    DATA_OFFSET, FLAG_LEAKED, FLAG_UNLINKED, HEADER_LEN, HeaderFault, MAGIC, RawHeader, STATE_EMPTY,
};
use crate::mapping::{Access, Mapping};
use crate::region::Region;

const SHM_DIR: &str = "/dev/shm";

pub(super) fn shm_path(name: &str) -> String {
    format!("{SHM_DIR}/{name}")
}

pub(super) fn check_name(name: &str) -> Result<(), SegmentError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > 250 {
        "longer than 250 bytes"
    } else if name.contains('/') {
        "contains '/'"
    } else if name.contains('\0') {
        "contains a NUL byte"
    } else if name == "." || name == ".." {
        "is a directory name"
    } else {
        return Ok(());
    };
    Err(SegmentError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

/// What the first bytes of a named object say, read with `pread` (no mapping,
/// so nothing can fault however small the file is).
struct Probe {
    /// File size.
    size: u64,
    /// Whether it starts with the outlive magic.
    magic: bool,
    /// The header's `data_len`, if the file holds it.
    data_len: Option<u64>,
}

impl Probe {
    fn read(fd: BorrowedFd<'_>, name: &str) -> Result<Probe, SegmentError> {
        let size = rustix::fs::fstat(fd)
            .map_err(io_err(name, format!("fstat {}", shm_path(name))))?
            .st_size;
        let size = u64::try_from(size).unwrap_or(0);
        let mut head = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < head.len() {
            match rustix::io::pread(fd, &mut head[got..], got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(Errno::INTR) => {}
                Err(source) => {
                    return Err(io_err(name, format!("pread {}", shm_path(name)))(source));
                }
            }
        }
        let word = |off: usize| {
            (got >= off + 8)
                .then(|| u64::from_ne_bytes(head[off..off + 8].try_into().unwrap_or([0; 8])))
        };
        Ok(Probe {
            size,
            magic: word(core::mem::offset_of!(RawHeader, magic)) == Some(MAGIC),
            data_len: word(core::mem::offset_of!(RawHeader, data_len)),
        })
    }

    /// An outlive object that no longer holds its header page and payload, or
    /// an empty file: someone shrank it, and its data is gone.
    fn shrunk(&self) -> bool {
        self.size == 0
            || (self.magic
                && (self.size <= DATA_OFFSET as u64
                    || self
                        .data_len
                        .is_some_and(|len| len > self.size - DATA_OFFSET as u64)))
    }

    /// Whether the file is recognisably an outlive segment (or empty).
    fn ours(&self) -> bool {
        self.size == 0 || self.magic
    }
}

/// [`Segment::remove`] and [`Segment::force_remove`].
pub(super) fn remove_named(name: &str, force: bool) -> Result<bool, SegmentError> {
    check_name(name)?;
    let path = shm_path(name);
    let open = |flags: OFlags| {
        rustix::fs::open(
            path.as_str(),
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    // Read-write to set the unlinked flag; read-only is enough to remove.
    let (fd, writable) = match open(OFlags::RDWR) {
        Ok(fd) => (fd, true),
        Err(Errno::ACCESS) => (
            open(OFlags::RDONLY).map_err(io_err(name, format!("open {path}")))?,
            false,
        ),
        Err(Errno::NOENT) => return Ok(false),
        Err(source) => return Err(io_err(name, format!("open {path}"))(source)),
    };
    let stat = rustix::fs::fstat(&fd).map_err(io_err(name, format!("fstat {path}")))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(SegmentError::Corrupt {
            name: name.to_owned(),
            what: "not a regular file: never removed",
        });
    }
    if stat.st_uid != rustix::process::geteuid().as_raw() {
        return Err(SegmentError::ForeignOwner {
            name: name.to_owned(),
            uid: stat.st_uid,
        });
    }
    let probe = Probe::read(fd.as_fd(), name)?;
    if !probe.ours() {
        return Err(SegmentError::Corrupt {
            name: name.to_owned(),
            what: "not an outlive segment: never removed",
        });
    }
    // Exclusive: no process is attached, and none can attach until the name
    // is gone (openers wait for a shared lock, then find the name unlinked).
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(Errno::WOULDBLOCK) if force => {}
        Err(Errno::WOULDBLOCK) => {
            return Err(SegmentError::InUse {
                name: name.to_owned(),
            });
        }
        Err(source) => return Err(io_err(name, format!("flock {path}"))(source)),
    }
    // Attached processes (force) learn that newcomers get another object.
    let header = (writable && probe.magic && probe.size >= DATA_OFFSET as u64)
        .then(|| Mapping::map_guarded(fd.as_fd(), 0, DATA_OFFSET, Access::ReadWrite).ok())
        .flatten();
    unlink_if_ours(name, fd.as_fd(), || {
        if let Some(h) = header
            .as_ref()
            .and_then(|m| m.region().get::<RawHeader>(0).ok())
        {
            // Relaxed: flags are advisory bits about the name (see `Segment::flags`).
            h.flags.fetch_or(FLAG_UNLINKED, Ordering::Relaxed);
        }
    })
    .map_err(io_err(name, format!("unlink {path}")))
}

fn same_inode(a: &rustix::fs::Stat, b: &rustix::fs::Stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

/// Whether `name` still refers to the object open as `fd`.
fn is_linked(name: &str, fd: BorrowedFd<'_>) -> bool {
    match (
        rustix::fs::stat(shm_path(name).as_str()),
        rustix::fs::fstat(fd),
    ) {
        (Ok(by_name), Ok(ours)) => same_inode(&by_name, &ours),
        _ => false,
    }
}

/// Unlinks `name` if it still refers to `fd`'s object, serialised against every
/// other unlinker by an exclusive `flock` on `/dev/shm` (released by the
/// kernel even if we are killed). `before` runs just before the unlink.
pub(super) fn unlink_if_ours(
    name: &str,
    fd: BorrowedFd<'_>,
    before: impl FnOnce(),
) -> Result<bool, Errno> {
    let dir = rustix::fs::open(
        SHM_DIR,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    rustix::fs::flock(&dir, FlockOperation::LockExclusive)?;
    if !is_linked(name, fd) {
        return Ok(false);
    }
    before();
    crate::crash_point!("segment.before_unlink");
    rustix::fs::unlinkat(rustix::fs::CWD, shm_path(name).as_str(), AtFlags::empty())?;
    Ok(true)
    // `dir` closes here, releasing the directory lock.
}

impl SegmentBuilder {
    pub(super) fn create_named(
        &self,
        name: &str,
        init: &mut dyn FnMut(Region<'_>),
    ) -> Result<Segment, SegmentError> {
        let io = |op: &'static str| io_err(name, op);
        let mode = Mode::from_raw_mode(self.mode);
        let fd = rustix::fs::open(
            SHM_DIR,
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            mode,
        )
        .map_err(io("open O_TMPFILE in /dev/shm"))?;
        // The umask may have cleared bits we were asked for.
        rustix::fs::fchmod(&fd, mode).map_err(io("fchmod"))?;
        rustix::fs::ftruncate(&fd, DATA_OFFSET as u64 + self.payload_len())
            .map_err(io("ftruncate"))?;
        let mut seg = self.init_in_place(fd, name, init, STATE_EMPTY)?;
        // Our liveness lock, taken before the name exists, so the object is
        // never visible without a live holder while we are alive.
        rustix::fs::flock(&seg.fd, FlockOperation::LockShared).map_err(io("flock"))?;
        crate::crash_point!("segment.before_link");
        let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&seg.fd));
        match rustix::fs::linkat(
            rustix::fs::CWD,
            proc_path.as_str(),
            rustix::fs::CWD,
            shm_path(name).as_str(),
            AtFlags::SYMLINK_FOLLOW,
        ) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                return Err(SegmentError::AlreadyExists {
                    name: name.to_owned(),
                });
            }
            Err(source) => {
                return Err(io_err(name, format!("linkat {}", shm_path(name)))(source));
            }
        }
        seg.name = Some(name.to_owned());
        seg.owner = !self.persistent;
        Ok(seg)
    }

    /// Opens a named object. `Ok(None)`: it does not exist, or it was stale
    /// and has been removed.
    pub(super) fn open_named(&self, name: &str) -> Result<Option<Segment>, SegmentError> {
        let io = |op: &'static str| io_err(name, format!("{op} {}", shm_path(name)));
        let deadline = Instant::now() + self.timeout;
        loop {
            let oflags = match self.access {
                Access::ReadOnly => OFlags::RDONLY,
                Access::ReadWrite => OFlags::RDWR,
            };
            let fd = match rustix::fs::open(
                shm_path(name).as_str(),
                oflags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => return Ok(None),
                Err(source) => return Err(io("open")(source)),
            };
            let stat = rustix::fs::fstat(&fd).map_err(io("fstat"))?;
            if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
                return Err(SegmentError::Corrupt {
                    name: name.to_owned(),
                    what: "not a regular file",
                });
            }
            if stat.st_uid != rustix::process::geteuid().as_raw() {
                return Err(SegmentError::ForeignOwner {
                    name: name.to_owned(),
                    uid: stat.st_uid,
                });
            }
            let mode = stat.st_mode & 0o777;
            if mode != self.mode {
                return Err(SegmentError::Permissions {
                    name: name.to_owned(),
                    mode,
                    expected: self.mode,
                });
            }
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {
                    // Nobody is attached. A leaked object is kept; anything else
                    // of ours is stale (its users were killed) and is reclaimed.
                    if Self::reclaim_if_stale(name, &fd)? {
                        return Ok(None);
                    }
                    rustix::fs::flock(&fd, FlockOperation::LockShared).map_err(io("flock"))?;
                }
                Err(Errno::WOULDBLOCK) => {
                    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockShared) {
                        Ok(()) => {}
                        Err(Errno::WOULDBLOCK) => {
                            // Someone holds it exclusively: a reclaimer or the last one out, briefly.
                            if Instant::now() >= deadline {
                                return Err(SegmentError::NotInitialized {
                                    name: name.to_owned(),
                                });
                            }
                            std::thread::sleep(Duration::from_micros(200));
                            continue;
                        }
                        Err(source) => return Err(io("flock")(source)),
                    }
                }
                Err(source) => return Err(io("flock")(source)),
            }
            // Locked; make sure the name still refers to this object (it may
            // have been unlinked between our open and our lock).
            if !is_linked(name, fd.as_fd()) {
                continue;
            }
            if Probe::read(fd.as_fd(), name)?.shrunk() {
                // Processes are attached (else it was reclaimed above): it is
                // reclaimed once they have all gone, which may be about to
                // happen (they fail on their next access), so wait a while.
                if Instant::now() >= deadline {
                    return Err(SegmentError::Truncated {
                        name: name.to_owned(),
                    });
                }
                drop(fd);
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let (map, file_len) = Self::map(fd.as_fd(), name, self.access)?;
            let info = self.validate(&map, file_len, name);
            // Shrunk between the probe and the header check: whatever the
            // check said, it read zeros.
            if map.is_truncated() {
                return Err(SegmentError::Truncated {
                    name: name.to_owned(),
                });
            }
            let info = info?;
            return Ok(Some(Segment {
                map,
                fd,
                info,
                name: Some(name.to_owned()),
                owner: false,
                created: false,
            }));
        }
    }

    /// With the exclusive lock held on `fd`: removes the object if it is one of
    /// ours and not leaked, or if it was shrunk (an outlive object cut below its
    /// header page or payload, or an empty file: its data is gone, leaked or
    /// not). Returns whether it was removed. A foreign or unreadable object is
    /// never removed: it gives an error instead.
    fn reclaim_if_stale(name: &str, fd: &OwnedFd) -> Result<bool, SegmentError> {
        if Probe::read(fd.as_fd(), name)?.shrunk() {
            let _ = unlink_if_ours(name, fd.as_fd(), || {});
            return Ok(true);
        }
        let (map, file_len) = Self::map(fd.as_fd(), name, Access::ReadOnly)?;
        match RawHeader::check(&map.region(), file_len) {
            Ok(info) if info.flags & FLAG_LEAKED != 0 => return Ok(false),
            Ok(_) | Err(HeaderFault::Initialising) => {}
            Err(fault) => return Err(fault_error(fault, name)),
        }
        drop(map);
        let _ = unlink_if_ours(name, fd.as_fd(), || {});
        Ok(true)
    }
}
