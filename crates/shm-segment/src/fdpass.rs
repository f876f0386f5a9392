//! Passing fds over Unix sockets (`SCM_RIGHTS`), the one routine every
//! outlive crate uses: `shm-fd`'s `sd_notify` and supervisor, `shm-ring`'s
//! handshake.
//!
//! - [`send_with_fds`]: one `sendmsg` with the bytes and the fds (at most
//!   [`MAX_FDS`]), to a connected socket or to an address; never raises
//!   `SIGPIPE`.
//! - [`recv_with_fds`]: one `recvmsg` that takes at most `max_fds` fds, always
//!   close-on-exec (`MSG_CMSG_CLOEXEC`), and the sender's credentials when the
//!   kernel attaches them (`SO_PASSCRED`). Nothing is lost silently: bytes
//!   cut off a datagram set [`Received::truncated`]; fds the sender attached
//!   beyond `max_fds`, or that did not fit (`MSG_CTRUNC`), set
//!   [`Received::fds_truncated`], and every such fd is closed, never leaked.
//!
//! Both retry on `EINTR`, and otherwise return the OS error ([`Errno`],
//! which converts into `std::io::Error` with `?`).
//!
//! # Example
//! ```
//! use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
//! use shm_segment::fdpass::{recv_with_fds, send_with_fds};
//! use std::os::fd::AsFd;
//!
//! let (a, b) = socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
//! let memfd = shm_segment::memfd::create("doc-fdpass", 4096, shm_segment::memfd::FIXED_SIZE)?;
//! send_with_fds(&a, b"state", &[memfd.as_fd()], None)?;
//! let mut buf = [0u8; 16];
//! let got = recv_with_fds(&b, &mut buf, 1)?;
//! assert_eq!(&buf[..got.len], b"state");
//! assert_eq!(got.fds.len(), 1);
//! assert!(!got.truncated && !got.fds_truncated);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # References
//! - [unix(7)](https://man7.org/linux/man-pages/man7/unix.7.html): `SCM_RIGHTS`, `SCM_CREDENTIALS`, `SCM_MAX_FD`
//! - [recvmsg(2)](https://man7.org/linux/man-pages/man2/recvmsg.2.html): `MSG_TRUNC`, `MSG_CTRUNC`, `MSG_CMSG_CLOEXEC`

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, UCred,
};

/// The most fds one message can carry: Linux's `SCM_MAX_FD`.
pub const MAX_FDS: usize = 253;

/// What [`recv_with_fds`] received.
#[derive(Debug)]
#[non_exhaustive]
#[must_use = "check `truncated` and `fds_truncated`: they report what was lost"]
pub struct Received {
    /// Bytes written to the start of the buffer. 0 with no fds is the end of
    /// a stream (the peer closed it).
    pub len: usize,
    /// The fds, in the order sent, close-on-exec; at most `max_fds`.
    pub fds: Vec<OwnedFd>,
    /// The sender's pid, uid and gid, when the kernel attached them: the
    /// receiving socket has `SO_PASSCRED` set (or the sender attached its
    /// own, which the kernel checks).
    pub creds: Option<UCred>,
    /// The datagram was longer than the buffer: its remaining bytes are
    /// lost (`MSG_TRUNC`). Never set on a stream socket, where the rest
    /// stays queued for the next read.
    pub truncated: bool,
    /// The sender attached fds that are not in [`Received::fds`]: more than
    /// `max_fds`, or more than the control buffer held (`MSG_CTRUNC`). They
    /// have been closed.
    pub fds_truncated: bool,
}

/// Sends `bytes` with `fds` attached (`SCM_RIGHTS`) in one `sendmsg`, to
/// `addr` or, with `None`, to the socket's peer. Returns the number of bytes
/// sent, which on a stream socket may be fewer than `bytes.len()` (the fds
/// go with the first byte).
///
/// Always `MSG_NOSIGNAL`: a closed peer is `EPIPE`, not `SIGPIPE`. The fds
/// stay open here; the receiver gets new descriptors for the same open
/// files. On a stream socket, send at least one byte with the fds.
///
/// # Errors
/// `EINVAL` for more than [`MAX_FDS`] fds (what the kernel answers too,
/// checked here first); otherwise the error of `sendmsg`, retried on
/// `EINTR`.
///
/// # Examples
/// ```
/// use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
/// use shm_segment::fdpass::send_with_fds;
/// use std::os::fd::AsFd;
///
/// // A datagram to a socket bound to an abstract name, as sd_notify sends.
/// let name = format!("shm-segment-doc/{}", std::process::id());
/// let addr = SocketAddrUnix::new_abstract_name(name.as_bytes())?;
/// let rx = rustix::net::socket_with(AddressFamily::UNIX, SocketType::DGRAM, SocketFlags::CLOEXEC, None)?;
/// rustix::net::bind(&rx, &addr)?;
/// let tx = rustix::net::socket_with(AddressFamily::UNIX, SocketType::DGRAM, SocketFlags::CLOEXEC, None)?;
/// let memfd = shm_segment::memfd::create("doc-send", 4096, shm_segment::memfd::FIXED_SIZE)?;
/// assert_eq!(send_with_fds(&tx, b"FDSTORE=1\n", &[memfd.as_fd()], Some(&addr))?, 10);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # References
/// - [sendmsg(2)](https://man7.org/linux/man-pages/man2/sendmsg.2.html)
#[doc(alias = "SCM_RIGHTS")]
#[doc(alias = "sendmsg")]
pub fn send_with_fds(
    sock: impl AsFd,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
    addr: Option<&SocketAddrUnix>,
) -> rustix::io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(Errno::INVAL);
    }
    let rights = SendAncillaryMessage::ScmRights(fds);
    let mut space = vec![MaybeUninit::uninit(); if fds.is_empty() { 0 } else { rights.size() }];
    let mut control = SendAncillaryBuffer::new(&mut space);
    // An empty SCM_RIGHTS message would be sent as a header without fds: skip it.
    if !fds.is_empty() && !control.push(rights) {
        // The buffer is sized for exactly this message.
        return Err(Errno::NOBUFS);
    }
    let iov = [IoSlice::new(bytes)];
    loop {
        let sent = match addr {
            Some(addr) => {
                rustix::net::sendmsg_addr(&sock, addr, &iov, &mut control, SendFlags::NOSIGNAL)
            }
            None => rustix::net::sendmsg(&sock, &iov, &mut control, SendFlags::NOSIGNAL),
        };
        match sent {
            Err(Errno::INTR) => {}
            other => return other,
        }
    }
}

/// Receives one message into `buf` with at most `max_fds` fds (capped at
/// [`MAX_FDS`]) and the sender's credentials, if the kernel attaches them.
///
/// The fds are close-on-exec (`MSG_CMSG_CLOEXEC`): none leaks into a program
/// this process starts. Fds beyond `max_fds` are closed and reported in
/// [`Received::fds_truncated`], as are fds the kernel could not deliver
/// (`MSG_CTRUNC`, e.g. when the socket also has `SO_PASSSEC`). A datagram
/// longer than `buf` sets [`Received::truncated`]. Blocks unless the socket
/// is non-blocking (then `EAGAIN` when nothing is queued).
///
/// # Errors
/// The error of `recvmsg`, retried on `EINTR`.
///
/// # Examples
/// ```
/// use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
/// use shm_segment::fdpass::{recv_with_fds, send_with_fds};
/// use std::os::fd::AsFd;
///
/// let (a, b) = socketpair(AddressFamily::UNIX, SocketType::DGRAM, SocketFlags::CLOEXEC, None)?;
/// rustix::net::sockopt::set_socket_passcred(&b, true)?;
/// send_with_fds(&a, b"hello", &[a.as_fd(), a.as_fd()], None)?;
/// let mut buf = [0u8; 4];
/// let got = recv_with_fds(&b, &mut buf, 1)?;
/// assert_eq!((got.len, got.fds.len()), (4, 1));
/// assert!(got.truncated && got.fds_truncated); // "o" and one fd were lost
/// assert_eq!(got.creds.map(|c| c.pid), Some(rustix::process::getpid()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # References
/// - [recvmsg(2)](https://man7.org/linux/man-pages/man2/recvmsg.2.html)
#[doc(alias = "SCM_RIGHTS")]
#[doc(alias = "SCM_CREDENTIALS")]
#[doc(alias = "recvmsg")]
pub fn recv_with_fds(
    sock: impl AsFd,
    buf: &mut [u8],
    max_fds: usize,
) -> rustix::io::Result<Received> {
    let max_fds = max_fds.min(MAX_FDS);
    // Room for the credentials always: on a socket with SO_PASSCRED they
    // come first, and without room for them the fds would not fit.
    let mut space =
        vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(max_fds), ScmCredentials(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        let mut iov = [IoSliceMut::new(buf)];
        match rustix::net::recvmsg(&sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Err(Errno::INTR) => {}
            other => break other?,
        }
    };
    let mut got = Received {
        len: msg.bytes,
        fds: Vec::new(),
        creds: None,
        truncated: msg.flags.contains(ReturnFlags::TRUNC),
        fds_truncated: msg.flags.contains(ReturnFlags::CTRUNC),
    };
    for message in control.drain() {
        match message {
            RecvAncillaryMessage::ScmRights(fds) => {
                for fd in fds {
                    if got.fds.len() < max_fds {
                        got.fds.push(fd);
                    } else {
                        // The control buffer is rounded up, so it can hold
                        // a few more than asked for: those are closed here.
                        got.fds_truncated = true;
                    }
                }
            }
            RecvAncillaryMessage::ScmCredentials(creds) => got.creds = Some(creds),
            _ => {}
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::event::{PollFd, PollFlags};
    use rustix::fd::AsRawFd;
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};

    fn pair(kind: SocketType) -> (OwnedFd, OwnedFd) {
        socketpair(AddressFamily::UNIX, kind, SocketFlags::CLOEXEC, None).unwrap()
    }

    fn memfd(name: &str) -> OwnedFd {
        crate::memfd::create(name, 4096, crate::memfd::FIXED_SIZE).unwrap()
    }

    fn same_file(a: impl AsFd, b: impl AsFd) -> bool {
        let (a, b) = (rustix::fs::fstat(a).unwrap(), rustix::fs::fstat(b).unwrap());
        (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    }

    fn is_cloexec(fd: impl AsFd) -> bool {
        rustix::io::fcntl_getfd(fd)
            .unwrap()
            .contains(rustix::io::FdFlags::CLOEXEC)
    }

    /// Whether every write end of the pipe `read` reads from has been closed:
    /// waits (up to 10 s) for end of file.
    fn writers_all_closed(read: &OwnedFd) -> bool {
        let mut fds = [PollFd::new(read, PollFlags::IN)];
        let timeout = rustix::time::Timespec {
            tv_sec: 10,
            tv_nsec: 0,
        };
        rustix::event::poll(&mut fds, Some(&timeout)).unwrap() == 1
            && rustix::io::read(read, &mut [0u8; 1]).unwrap() == 0
    }

    #[test]
    fn no_fds_sends_just_the_bytes() {
        for kind in [SocketType::STREAM, SocketType::SEQPACKET, SocketType::DGRAM] {
            let (a, b) = pair(kind);
            let sut = send_with_fds(&a, b"hello", &[], None).unwrap();
            assert_eq!(sut, 5);
            let mut buf = [0u8; 16];
            let got = recv_with_fds(&b, &mut buf, 4).unwrap();
            assert_eq!(&buf[..got.len], b"hello");
            assert!(got.fds.is_empty() && got.creds.is_none());
            assert!(!got.truncated && !got.fds_truncated);
        }
    }

    #[test]
    fn one_fd_arrives_as_the_same_file_and_close_on_exec() {
        for kind in [SocketType::STREAM, SocketType::SEQPACKET, SocketType::DGRAM] {
            let (a, b) = pair(kind);
            let memfd = memfd("fdpass-one");
            assert_eq!(send_with_fds(&a, b"x", &[memfd.as_fd()], None), Ok(1));
            let mut buf = [0u8; 1];
            let got = recv_with_fds(&b, &mut buf, 1).unwrap();
            assert_eq!(got.len, 1);
            assert_eq!(got.fds.len(), 1);
            assert!(!got.fds_truncated);
            assert!(same_file(&got.fds[0], &memfd));
            assert_ne!(got.fds[0].as_raw_fd(), memfd.as_raw_fd());
            assert!(is_cloexec(&got.fds[0]));
        }
    }

    #[test]
    fn the_kernel_maximum_of_253_fds_arrives_in_order() {
        let (a, b) = pair(SocketType::SEQPACKET);
        let files: Vec<OwnedFd> = (0..3).map(|_| memfd("fdpass-many")).collect();
        let fds: Vec<BorrowedFd<'_>> = (0..MAX_FDS).map(|i| files[i % 3].as_fd()).collect();
        assert_eq!(send_with_fds(&a, b"many", &fds, None), Ok(4));
        let mut buf = [0u8; 4];
        let got = recv_with_fds(&b, &mut buf, MAX_FDS).unwrap();
        assert_eq!(got.fds.len(), MAX_FDS);
        assert!(!got.fds_truncated && !got.truncated);
        for (i, fd) in got.fds.iter().enumerate() {
            assert!(same_file(fd, &files[i % 3]), "fd {i}");
        }
    }

    #[test]
    fn more_than_253_fds_are_refused_and_nothing_is_sent() {
        let (a, b) = pair(SocketType::SEQPACKET);
        let fds = vec![a.as_fd(); MAX_FDS + 1];
        assert_eq!(send_with_fds(&a, b"x", &fds, None), Err(Errno::INVAL));
        rustix::io::ioctl_fionbio(&b, true).unwrap();
        let err = recv_with_fds(&b, &mut [0u8; 1], MAX_FDS).unwrap_err();
        assert_eq!(err, Errno::AGAIN);
    }

    #[test]
    fn fds_beyond_max_are_reported_and_closed() {
        // Every fd sent is the write end of one pipe: once ours and all
        // received ones are closed, its read end sees end of file. A fd
        // leaked by the receiver would keep it open.
        for (sent, max) in [(5, 2), (10, 1), (3, 0), (MAX_FDS, 7)] {
            let (a, b) = pair(SocketType::SEQPACKET);
            let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
            let fds = vec![write.as_fd(); sent];
            send_with_fds(&a, b"x", &fds, None).unwrap();
            drop(write);
            let mut buf = [0u8; 1];
            let got = recv_with_fds(&b, &mut buf, max).unwrap();
            assert_eq!(got.len, 1);
            assert_eq!(got.fds.len(), max, "sent {sent}, max {max}");
            assert!(got.fds_truncated, "sent {sent}, max {max}");
            drop(got);
            assert!(writers_all_closed(&read), "sent {sent}, max {max}");
        }
    }

    #[test]
    fn credentials_name_the_sender_with_so_passcred() {
        let (a, b) = pair(SocketType::DGRAM);
        rustix::net::sockopt::set_socket_passcred(&b, true).unwrap();
        let memfd = memfd("fdpass-creds");
        send_with_fds(&a, b"READY=1", &[memfd.as_fd()], None).unwrap();
        let mut buf = [0u8; 64];
        let got = recv_with_fds(&b, &mut buf, 1).unwrap();
        let creds = got.creds.expect("credentials with SO_PASSCRED");
        assert_eq!(creds.pid, rustix::process::getpid());
        assert_eq!(creds.uid, rustix::process::geteuid());
        assert_eq!(creds.gid, rustix::process::getegid());
        // The credentials do not crowd out the fds.
        assert_eq!(got.fds.len(), 1);
        assert!(!got.fds_truncated);

        // Without SO_PASSCRED, none.
        let (a, b) = pair(SocketType::DGRAM);
        send_with_fds(&a, b"READY=1", &[], None).unwrap();
        assert!(recv_with_fds(&b, &mut buf, 1).unwrap().creds.is_none());
    }

    #[test]
    fn a_datagram_longer_than_the_buffer_is_reported_truncated() {
        for kind in [SocketType::SEQPACKET, SocketType::DGRAM] {
            let (a, b) = pair(kind);
            send_with_fds(&a, &[7u8; 100], &[a.as_fd()], None).unwrap();
            let mut buf = [0u8; 10];
            let got = recv_with_fds(&b, &mut buf, 1).unwrap();
            assert_eq!((got.len, got.fds.len()), (10, 1));
            assert!(got.truncated && !got.fds_truncated);
        }
        // A stream keeps the rest for the next read.
        let (a, b) = pair(SocketType::STREAM);
        send_with_fds(&a, &[7u8; 100], &[a.as_fd()], None).unwrap();
        let mut buf = [0u8; 10];
        let got = recv_with_fds(&b, &mut buf, 1).unwrap();
        assert_eq!((got.len, got.fds.len()), (10, 1));
        assert!(!got.truncated);
        let mut rest = [0u8; 100];
        assert_eq!(recv_with_fds(&b, &mut rest, 1).unwrap().len, 90);
    }

    #[test]
    fn datagrams_go_to_the_address_given() {
        let name = format!("shm-segment-fdpass-test/{}", std::process::id());
        let addr = SocketAddrUnix::new_abstract_name(name.as_bytes()).unwrap();
        let socket = || {
            rustix::net::socket_with(
                AddressFamily::UNIX,
                SocketType::DGRAM,
                SocketFlags::CLOEXEC,
                None,
            )
            .unwrap()
        };
        let rx = socket();
        rustix::net::bind(&rx, &addr).unwrap();
        let memfd = memfd("fdpass-addr");
        assert_eq!(
            send_with_fds(socket(), b"FDSTORE=1\n", &[memfd.as_fd()], Some(&addr)),
            Ok(10)
        );
        let mut buf = [0u8; 64];
        let got = recv_with_fds(&rx, &mut buf, 4).unwrap();
        assert_eq!(&buf[..got.len], b"FDSTORE=1\n");
        assert!(same_file(&got.fds[0], &memfd));
        // An unconnected socket without an address has nowhere to send.
        assert!(send_with_fds(socket(), b"x", &[], None).is_err());
    }

    #[test]
    fn a_closed_peer_is_epipe_or_end_of_stream() {
        let (a, b) = pair(SocketType::STREAM);
        drop(b);
        assert_eq!(
            send_with_fds(&a, b"x", &[a.as_fd()], None),
            Err(Errno::PIPE)
        );
        let (a, b) = pair(SocketType::STREAM);
        drop(a);
        let got = recv_with_fds(&b, &mut [0u8; 4], 1).unwrap();
        assert_eq!((got.len, got.fds.len()), (0, 0));
    }
}
