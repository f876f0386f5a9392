//! Kernel-released liveness locks: an exclusive open-file-description lock
//! (`fcntl(F_OFD_SETLK)`) on one byte of a file, held through a private
//! description of it.
//!
//! [`OfdLock::try_acquire`] reopens the file through `/proc/self/fd` (a new
//! open file description, close-on-exec) and locks one byte there, never on
//! the fd the caller passed: OFD locks never conflict within one
//! description, and the caller's fd may be a `dup` shared with the very
//! processes that test the lock. The kernel drops the lock when the
//! description is closed: when the [`OfdLock`] is dropped and when its
//! process dies, SIGKILL included. [`is_locked`] asks, from any other
//! description, whether somebody holds the byte. [`lock_shared`] takes a
//! shared lock on the caller's own description: readers that pin a file
//! against an owner who rewrites it only once it holds the byte exclusively. The locks are advisory:
//! they guard no bytes, and mappings ignore them.
//!
//! This is the one implementation of these locks in the workspace: the
//! ring's end claims (`shm-ring`), the mailbox's role locks (`shm-mailbox`)
//! and the snapshot host's liveness lock (`shm-snapshot`) all take theirs here.
//!
//! # Safety
//!
//! rustix offers only whole-file OFD locks (`fcntl_lock`, which moreover
//! takes process-associated `F_SETLK` locks), and a lock on one byte needs a
//! `struct flock`, so this module calls `fcntl` through libc with a `struct
//! flock` that lives on our stack for the duration of the call.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

/// A held lock on one byte; dropping it unlocks the byte and closes the
/// private description.
///
/// The explicit unlock matters: a process that forks while the lock is held
/// shares the description with its child until the child's `exec` closes it
/// (`CLOEXEC`), and an OFD lock lives as long as its description, so closing
/// our descriptor alone could leave the byte locked for that moment.
///
/// # Examples
/// A liveness claim on byte 0 of a file: held while the [`OfdLock`] lives
/// (or its process does), seen from every other description of the file:
/// ```
/// use std::os::fd::AsFd;
/// use shm_segment::{OfdLock, is_locked};
///
/// let path = std::env::temp_dir().join(format!("ofd-lock-doc-{}", std::process::id()));
/// let file = std::fs::File::create(&path)?;
/// let lock = OfdLock::try_acquire(file.as_fd(), 0)?.expect("nobody holds byte 0");
/// assert_eq!(lock.byte(), 0);
/// // Held on a private description, so seen through our own fd too; a
/// // second claim of the byte fails, other bytes are free.
/// assert!(is_locked(file.as_fd(), 0)?);
/// assert!(OfdLock::try_acquire(file.as_fd(), 0)?.is_none());
/// assert!(!is_locked(file.as_fd(), 1)?);
/// drop(lock); // the kernel also drops it when the process dies, SIGKILL included
/// assert!(!is_locked(file.as_fd(), 0)?);
/// std::fs::remove_file(&path)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct OfdLock {
    description: OwnedFd,
    byte: u64,
}

impl Drop for OfdLock {
    fn drop(&mut self) {
        let fl = flock_at(self.byte, libc::F_UNLCK);
        // SAFETY: `description` is an open descriptor we own until this drop
        // returns; `fl` is a valid, initialised `struct flock` (with `l_pid`
        // 0, as F_OFD_SETLK requires) that outlives the call; F_OFD_SETLK only
        // reads it. An error leaves the unlock to the close that follows.
        let _ = unsafe {
            libc::fcntl(
                self.description.as_raw_fd(),
                libc::F_OFD_SETLK,
                &raw const fl,
            )
        };
    }
}

/// A `struct flock` for one byte at `byte`.
fn flock_at(byte: u64, kind: i32) -> libc::flock {
    // SAFETY: `libc::flock` is a plain C struct for which all-zero bytes are
    // valid (and `l_pid` must be 0 for the OFD commands).
    let mut fl: libc::flock = unsafe { core::mem::zeroed() };
    // Both constants are small (0..=2).
    #[allow(clippy::cast_possible_truncation)]
    {
        fl.l_type = kind as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
    }
    fl.l_start = i64::try_from(byte).unwrap_or(i64::MAX - 1);
    fl.l_len = 1;
    fl
}

fn last_errno() -> Errno {
    Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::INVAL)
}

impl OfdLock {
    /// Takes the exclusive lock on `byte` of the file `fd` refers to, through
    /// a new description of it, without waiting. `Ok(None)`: another
    /// description (a live holder) has it.
    ///
    /// # Errors
    /// Reopening through `/proc/self/fd` failed (no `/proc`), or `fcntl`
    /// failed otherwise.
    pub fn try_acquire(fd: BorrowedFd<'_>, byte: u64) -> Result<Option<OfdLock>, Errno> {
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        // RDWR: F_WRLCK needs a writable description.
        let description = rustix::fs::open(
            path.as_str(),
            OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )?;
        let fl = flock_at(byte, libc::F_WRLCK);
        // SAFETY: `description` is an open descriptor we own for the whole
        // call; `fl` is a valid, initialised `struct flock` (with `l_pid` 0,
        // as F_OFD_SETLK requires) that outlives the call; F_OFD_SETLK only reads it.
        let rc = unsafe { libc::fcntl(description.as_raw_fd(), libc::F_OFD_SETLK, &raw const fl) };
        if rc == 0 {
            return Ok(Some(OfdLock { description, byte }));
        }
        match last_errno() {
            Errno::AGAIN | Errno::ACCESS => Ok(None),
            e => Err(e),
        }
    }

    /// The locked byte.
    #[must_use]
    pub fn byte(&self) -> u64 {
        self.byte
    }

    /// The private description the lock is held on.
    #[must_use]
    pub fn description(&self) -> BorrowedFd<'_> {
        self.description.as_fd()
    }
}

/// Takes a shared lock on `byte` on `fd`'s own description, without
/// waiting: `Ok(false)` if another description holds the byte exclusively.
///
/// The lock is held until every descriptor of that description is closed
/// (a `dup` shares it), or until the process dies: a reader pins what it
/// reads against an owner that takes the byte exclusively
/// ([`OfdLock::try_acquire`]) before rewriting the file. `fd` must be open
/// for reading.
///
/// # Errors
/// `fcntl` failed otherwise (a file system without OFD locks).
///
/// # Examples
/// ```
/// use std::os::fd::AsFd;
/// use shm_segment::{OfdLock, lock_shared};
///
/// let path = std::env::temp_dir().join(format!("ofd-shared-doc-{}", std::process::id()));
/// std::fs::write(&path, b"x")?;
/// let reader = std::fs::File::open(&path)?;
/// assert!(lock_shared(reader.as_fd(), 0)?);
/// // While the reader's description is open, nobody takes the byte exclusively.
/// let owner = std::fs::OpenOptions::new().read(true).write(true).open(&path)?;
/// assert!(OfdLock::try_acquire(owner.as_fd(), 0)?.is_none());
/// drop(reader);
/// assert!(OfdLock::try_acquire(owner.as_fd(), 0)?.is_some());
/// std::fs::remove_file(&path)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn lock_shared(fd: BorrowedFd<'_>, byte: u64) -> Result<bool, Errno> {
    let fl = flock_at(byte, libc::F_RDLCK);
    // SAFETY: `fd` is open for the call (borrowed); `fl` is a valid,
    // initialised `struct flock` (with `l_pid` 0, as F_OFD_SETLK requires)
    // that outlives the call; F_OFD_SETLK only reads it.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &raw const fl) };
    if rc == 0 {
        return Ok(true);
    }
    match last_errno() {
        Errno::AGAIN | Errno::ACCESS => Ok(false),
        e => Err(e),
    }
}

/// Whether a description other than `fd`'s holds a lock on `byte`.
///
/// # Errors
/// `fcntl` failed.
pub fn is_locked(fd: BorrowedFd<'_>, byte: u64) -> Result<bool, Errno> {
    let mut fl = flock_at(byte, libc::F_WRLCK);
    // SAFETY: `fd` is open for the call (borrowed); `fl` is a valid, writable
    // `struct flock` that outlives the call, with `l_pid` 0 as F_OFD_GETLK requires.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &raw mut fl) };
    if rc != 0 {
        return Err(last_errno());
    }
    Ok(i32::from(fl.l_type) != libc::F_UNLCK)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::{OfdLock, is_locked};

    #[test]
    fn a_lock_is_seen_from_other_descriptions_and_released_on_drop() {
        let fd = rustix::fs::memfd_create("ofd-lock", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        assert_eq!(is_locked(fd.as_fd(), 7), Ok(false));
        let lock = OfdLock::try_acquire(fd.as_fd(), 7).unwrap().expect("free");
        assert_eq!(lock.byte(), 7);
        // Seen through the caller's fd, although it is the same memfd.
        assert_eq!(is_locked(fd.as_fd(), 7), Ok(true));
        assert_eq!(is_locked(fd.as_fd(), 8), Ok(false), "other bytes stay free");
        assert!(OfdLock::try_acquire(fd.as_fd(), 7).unwrap().is_none());
        drop(lock);
        assert_eq!(is_locked(fd.as_fd(), 7), Ok(false));
    }
}
