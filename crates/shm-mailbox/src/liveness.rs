//! Kernel-released liveness locks: one exclusive OFD lock per role, on one
//! byte of the segment, taken through [`shm_segment::OfdLock`].
//!
//! Each lock is held on a private open file description of the segment (the
//! segment fd reopened through `/proc/self/fd`), never on the `Mailbox`'s own
//! description: OFD locks never conflict within one description, and that
//! description may be shared (a `dup`, an fd passed to another process). The
//! kernel releases a lock when its description is closed: when the role
//! handle drops it, and when the process dies, SIGKILL included. The locks
//! are independent of the `flock` the segment holds, and guard no bytes.

use std::os::fd::BorrowedFd;

use rustix::io::Errno;
use shm_segment::OfdLock;

/// Locks live far beyond the data, where no byte is ever read or written.
const LOCK_BASE: u64 = 1 << 40;
/// The writer's lock byte (reader `r` uses `LOCK_BASE + r`).
pub(crate) const WRITER_SLOT: usize = 1 << 20;

fn byte(index: usize) -> u64 {
    LOCK_BASE + index as u64
}

/// Takes the exclusive lock for `index` without waiting. `Ok(None)`: another
/// holder (a live handle, here or in another process) has it.
pub(crate) fn try_lock(fd: BorrowedFd<'_>, index: usize) -> Result<Option<OfdLock>, Errno> {
    OfdLock::try_acquire(fd, byte(index))
}

/// Whether some handle holds the lock for `index` (every lock is held on a
/// private description, so `fd`'s own description holds none).
pub(crate) fn is_held(fd: BorrowedFd<'_>, index: usize) -> Result<bool, Errno> {
    shm_segment::is_locked(fd, byte(index))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    #[test]
    fn locks_are_seen_from_any_description_and_released_on_drop() {
        let path = std::env::temp_dir().join(format!("outlive-lock-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        let a = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(super::is_held(a.as_fd(), 3), Ok(false));
        let held = super::try_lock(a.as_fd(), 3).unwrap().expect("free");
        assert_eq!(
            super::is_held(a.as_fd(), 3),
            Ok(true),
            "seen through the description it was taken from"
        );
        assert!(
            super::try_lock(a.as_fd(), 3).unwrap().is_none(),
            "refused to a second taker"
        );
        assert_eq!(
            super::is_held(a.as_fd(), 4),
            Ok(false),
            "other indices stay free"
        );
        drop(held);
        assert!(super::try_lock(a.as_fd(), 3).unwrap().is_some());
    }
}
