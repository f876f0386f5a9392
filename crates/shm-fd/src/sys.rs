//! The few operations on raw fd numbers that Rust's I/O-safety types cannot express.
//!
//! # Safety
//!
//! - [`adopt`] turns an inherited fd number into an `OwnedFd`; its caller
//!   guarantees the number is open and adopted only once.
//! - [`place`] moves fds to exact numbers (3, 4, ...) right before `exec`,
//!   which has to work on numbers, not handles: the fds it installs are
//!   deliberately leaked into the new program image.
//! - [`VsockAddr`] implements rustix's `SocketAddrArg` for `AF_VSOCK`, which
//!   rustix does not provide, by handing the kernel a `sockaddr_vm`.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use rustix::io::Errno;

/// Whether `fd` is an open descriptor of this process.
pub(crate) fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only inspects the descriptor table; an invalid number
    // gives EBADF, it never touches memory or the fd.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Takes ownership of the inherited descriptor `fd`.
///
/// # Safety
/// `fd` must be open and must not be owned by anything else in the process
/// (it is adopted once, and nothing else closes it).
pub(crate) unsafe fn adopt(fd: RawFd) -> OwnedFd {
    // SAFETY: preconditions forwarded to the caller.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Installs `fds` as descriptors 3, 4, ... (without close-on-exec), for the
/// program about to be executed. Every other descriptor keeps its flags.
pub(crate) fn place(fds: Vec<OwnedFd>) -> Result<(), Errno> {
    // First move every fd above the target range, so no dup2 below overwrites
    // a source that has not been moved yet.
    let floor = 3 + fds.len() as RawFd;
    let mut high = Vec::with_capacity(fds.len());
    for fd in fds {
        high.push(rustix::io::fcntl_dupfd_cloexec(&fd, floor.max(64))?);
        drop(fd);
    }
    for (i, fd) in high.into_iter().enumerate() {
        let target = 3 + i as RawFd;
        // SAFETY: `fd` is an open descriptor we own; `target` is a descriptor
        // number that this function is entitled to replace: the caller hands us
        // the fds that must occupy 3.. in the exec'd program, and anything that
        // was at `target` has been moved above `floor` or is not one of ours.
        // dup2 clears close-on-exec on `target`.
        if unsafe { libc::dup2(fd.as_raw_fd(), target) } == -1 {
            return Err(Errno::from_raw_os_error(
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            ));
        }
        drop(fd);
        // `target` now belongs to the next program image: leave it open.
    }
    Ok(())
}

/// Leaks `fd` into the next program image (clears close-on-exec) and returns its number.
pub(crate) fn inherit(fd: OwnedFd) -> Result<RawFd, Errno> {
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::empty())?;
    Ok(fd.into_raw_fd())
}

/// An `AF_VSOCK` address (`vsock:CID:PORT` in `$NOTIFY_SOCKET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VsockAddr {
    pub(crate) cid: u32,
    pub(crate) port: u32,
}

// SAFETY: `with_sockaddr` passes a pointer to a fully initialised
// `sockaddr_vm` and its exact size, valid for the duration of the callback.
unsafe impl rustix::net::addr::SocketAddrArg for VsockAddr {
    unsafe fn with_sockaddr<R>(
        &self,
        f: impl FnOnce(
            *const rustix::net::addr::SocketAddrOpaque,
            rustix::net::addr::SocketAddrLen,
        ) -> R,
    ) -> R {
        // SAFETY: all-zero is a valid sockaddr_vm (reserved fields must be zero).
        let mut addr: libc::sockaddr_vm = unsafe { core::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_cid = self.cid;
        addr.svm_port = self.port;
        f(
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_vm>() as rustix::net::addr::SocketAddrLen,
        )
    }
}

/// Closes a descriptor number we leaked with [`inherit`].
pub(crate) fn close(fd: RawFd) {
    // SAFETY: `fd` came from `inherit`, which gave up ownership of it; after
    // this call nothing uses the number.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
}
