//! Kernel-released liveness locks: one byte-range OFD lock per role.
//!
//! # Safety
//!
//! `fcntl(F_OFD_SETLK / F_OFD_GETLK)` takes a pointer to a `struct flock` that
//! lives on our stack for the duration of the call. rustix offers only
//! whole-file OFD locks (`fcntl_lock`), and we need one lock per reader index
//! on the same file, so this module calls libc directly.
//!
//! Open-file-description locks belong to the open file description, not the
//! process: every process opens the mailbox by name and so has its own; the
//! kernel releases them when the description is closed, including when the
//! process is SIGKILLed. They are independent of the `flock` the segment holds.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::io::Errno;

/// Locks live far beyond the data, where no byte is ever read or written.
const LOCK_BASE: i64 = 1 << 40;
/// The writer's lock byte (reader `r` uses `LOCK_BASE + r`).
pub(crate) const WRITER_SLOT: usize = 1 << 20;

fn flock_at(index: usize, kind: i32) -> libc::flock {
    // SAFETY: `libc::flock` is a plain C struct for which all-zero bytes are valid.
    let mut fl: libc::flock = unsafe { core::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = LOCK_BASE + i64::try_from(index).unwrap_or(i64::MAX >> 1);
    fl.l_len = 1;
    fl
}

/// Takes the exclusive lock for `index` without waiting. `Ok(false)`: another
/// open file description (a live process) holds it.
pub(crate) fn try_lock(fd: BorrowedFd<'_>, index: usize) -> Result<bool, Errno> {
    let fl = flock_at(index, libc::F_WRLCK);
    // SAFETY: `fd` is an open descriptor; `fl` is a valid `struct flock` that
    // outlives the call; F_OFD_SETLK only reads it.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &raw const fl) };
    if rc == 0 {
        return Ok(true);
    }
    match Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) {
        Errno::AGAIN | Errno::ACCESS => Ok(false),
        e => Err(e),
    }
}

/// Releases our lock for `index`.
pub(crate) fn unlock(fd: BorrowedFd<'_>, index: usize) {
    let fl = flock_at(index, libc::F_UNLCK);
    // SAFETY: as in `try_lock`.
    let _ = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &raw const fl) };
}

/// Whether some other open file description holds the lock for `index`.
pub(crate) fn is_held(fd: BorrowedFd<'_>, index: usize) -> Result<bool, Errno> {
    let mut fl = flock_at(index, libc::F_WRLCK);
    // SAFETY: `fd` is open; `fl` is a valid, writable `struct flock` that
    // outlives the call; F_OFD_GETLK requires `l_pid` 0 (zeroed above).
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &raw mut fl) };
    if rc != 0 {
        return Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ));
    }
    Ok(i32::from(fl.l_type) != libc::F_UNLCK)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    #[test]
    fn locks_are_per_open_file_description() {
        let dir = std::env::temp_dir().join(format!("outlive-lock-{}", std::process::id()));
        std::fs::write(&dir, b"").unwrap();
        let a = std::fs::OpenOptions::new().write(true).open(&dir).unwrap();
        let b = std::fs::OpenOptions::new().write(true).open(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(super::is_held(a.as_fd(), 3), Ok(false));
        assert_eq!(super::try_lock(b.as_fd(), 3), Ok(true));
        assert_eq!(
            super::is_held(a.as_fd(), 3),
            Ok(true),
            "seen from another description"
        );
        assert_eq!(
            super::try_lock(a.as_fd(), 3),
            Ok(false),
            "refused to another description"
        );
        assert_eq!(
            super::is_held(a.as_fd(), 4),
            Ok(false),
            "other indices stay free"
        );
        super::unlock(b.as_fd(), 3);
        assert_eq!(super::try_lock(a.as_fd(), 3), Ok(true));
    }
}
