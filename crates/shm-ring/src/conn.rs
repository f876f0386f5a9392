//! Connecting two processes: a Unix-socket handshake that checks credentials,
//! negotiates the version and passes the ring's fds by `SCM_RIGHTS`.
//!
//! ```text
//! client                                    server
//!   connect ───────────────────────────────▶ accept, SO_PEERCRED (uid policy)
//!   Hello {magic, versions, role, layout} ─▶ check version, role, element layout
//!   ◀── Welcome {magic, version, status, capacity, pid} + SCM_RIGHTS [memfd, data_ready, space_ready]
//!   validate memfd (seals, fstat, header), attach; the socket stays open as the liveness link
//! ```

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use shm_segment::fdpass::{recv_with_fds, send_with_fds};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::endpoint::{Consumer, Element, Producer};
use crate::fds::{OpenError, RingFds};
use crate::layout::ElemLayout;
use crate::peer::PeerLink;

/// The handshake protocol version this build speaks. 2: the memfd it passes
/// is a ring of layout version 3 (an `shm-segment` segment with a config
/// block). Version 1 passed layout-2 memfds, which this build cannot open,
/// so it is not offered: a client of the other version is told "no common
/// protocol version" before any fd changes hands.
pub const PROTOCOL_VERSION: u32 = 2;
const MIN_VERSION: u32 = 2;
const HELLO_MAGIC: [u8; 8] = *b"RINGHELO";
const WELCOME_MAGIC: [u8; 8] = *b"RINGWLCM";
/// How long each side of the handshake waits for the other.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of a [`Hello`] on the wire.
pub(crate) const HELLO_LEN: usize = size_of::<Hello>();
/// Bytes of a [`Welcome`] on the wire.
#[cfg(feature = "tokio")]
pub(crate) const WELCOME_LEN: usize = size_of::<Welcome>();

/// Client → server, first bytes on the socket.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub(crate) struct Hello {
    magic: [u8; 8],
    min_version: u32,
    max_version: u32,
    /// The end the client wants: 1 producer, 2 consumer.
    role: u32,
    elem_size: u32,
    elem_align: u32,
    reserved: u32,
    tag: u64,
}

/// Server → client, with the fds attached when `status == 0`.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub(crate) struct Welcome {
    magic: [u8; 8],
    version: u32,
    status: u32,
    capacity: u64,
    server_pid: u32,
    reserved: u32,
}

const _: () = {
    assert!(size_of::<Hello>() == 40 && core::mem::offset_of!(Hello, tag) == 32);
    assert!(size_of::<Welcome>() == 32 && core::mem::offset_of!(Welcome, server_pid) == 24);
};

const STATUS_OK: u32 = 0;
const STATUS_VERSION: u32 = 1;
const STATUS_ROLE: u32 = 2;
const STATUS_ELEMENT: u32 = 3;
const STATUS_REFUSED: u32 = 4;

/// Which end of the ring the client takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The client sends.
    Producer,
    /// The client receives.
    Consumer,
}

impl Role {
    fn wire(self) -> u32 {
        match self {
            Role::Producer => 1,
            Role::Consumer => 2,
        }
    }
}

/// Whose connections a side accepts (checked with `SO_PEERCRED`).
///
/// # Examples
/// A server that accepts one uid (here our own), and a client that trusts
/// only servers of another uid, so refuses ours before sending anything:
/// ```
/// use std::os::unix::fs::MetadataExt;
/// use shm_ring::{ConnectError, Connector, ElemLayout, Listener, RingFds, UidPolicy};
///
/// assert_eq!(UidPolicy::default(), UidPolicy::SameUid);
/// let dir = std::env::temp_dir().join(format!("ring-doc-uid-policy-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("ring.sock");
/// let listener = Listener::bind(&path)?;
/// let me = std::fs::metadata(&path)?.uid(); // the socket file is owned by our effective uid
/// let listener = listener.with_policy(UidPolicy::Uid(me));
///
/// let client = Connector::new(&path).with_policy(UidPolicy::Uid(me));
/// let client = std::thread::spawn(move || {
///     client.connect_producer::<u64>()?.send(7)?;
///     Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
/// });
/// let ring = RingFds::create("doc", 64, ElemLayout::of::<u64>())?;
/// let mut rx = listener.accept_consumer::<u64>(&ring)?;
/// assert_eq!(rx.recv()?, 7);
/// client.join().unwrap()?;
///
/// let wary = Connector::new(&path).with_policy(UidPolicy::Uid(me.wrapping_add(1)));
/// let refused = wary.connect_producer::<u64>();
/// assert!(matches!(refused, Err(ConnectError::Refused { uid, .. }) if uid == me));
/// drop(listener);
/// std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UidPolicy {
    /// Only processes running as our effective uid (the default).
    #[default]
    SameUid,
    /// Only this uid.
    Uid(u32),
    /// Anyone who can open the socket (the ring still treats them as untrusted).
    Any,
}

impl UidPolicy {
    fn allows(self, uid: u32) -> bool {
        match self {
            UidPolicy::SameUid => uid == rustix::process::geteuid().as_raw(),
            UidPolicy::Uid(want) => uid == want,
            UidPolicy::Any => true,
        }
    }
}

/// Why a connection could not be accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// The peer's uid is not allowed.
    #[error("peer pid {pid} runs as uid {uid}, which is not allowed")]
    Refused {
        /// Peer pid.
        pid: u32,
        /// Peer uid.
        uid: u32,
    },
    /// The peer sent something that is not a hello.
    #[error("peer sent a malformed hello")]
    Malformed,
    /// No common protocol version.
    #[error("peer speaks versions {min}..={max}, we speak {MIN_VERSION}..={PROTOCOL_VERSION}")]
    Version {
        /// Peer's lowest.
        min: u32,
        /// Peer's highest.
        max: u32,
    },
    /// The peer asked for the other end of the ring.
    #[error("peer asked for the wrong end of the ring")]
    Role,
    /// The peer expects another element layout.
    #[error("peer expects elements of size {size} align {align} tag {tag:#x}")]
    Element {
        /// Peer's size.
        size: u32,
        /// Peer's alignment.
        align: u32,
        /// Peer's tag.
        tag: u64,
    },
    /// Opening our end failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A socket operation failed.
    #[error("{op} {}: {source}", .path.display())]
    Io {
        /// What was being done ("accept on", "read hello on", ...).
        op: &'static str,
        /// The listening socket's path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The server runs as a uid we do not accept.
    #[error("server pid {pid} runs as uid {uid}, which is not allowed")]
    Refused {
        /// Server pid.
        pid: u32,
        /// Server uid.
        uid: u32,
    },
    /// The server turned us down (status code from the welcome).
    #[error("server refused the connection: {0}")]
    Rejected(&'static str),
    /// The server's answer is malformed or lacks the fds.
    #[error("server sent a malformed welcome")]
    Malformed,
    /// Validating or opening the ring failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A socket operation failed, e.g. "connect to /run/x.sock: No such file
    /// or directory (os error 2)".
    #[error("{op} {}: {source}", .path.display())]
    Io {
        /// What was being done ("connect to", "send hello to", ...).
        op: &'static str,
        /// The server's socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn aerr<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> AcceptError + 'a {
    move |source| AcceptError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}
pub(crate) fn cerr<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ConnectError + 'a {
    move |source| ConnectError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// An I/O error about a socket path, carried inside the `std::io::Error`
/// that [`Listener::bind`] returns: the path is in the message, the OS error
/// is its `source()`.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", .path.display())]
struct PathError {
    op: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Wraps an I/O error on `path`, keeping its kind.
fn path_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> std::io::Error + 'a {
    move |source| {
        std::io::Error::new(
            source.kind(),
            PathError {
                op,
                path: path.to_path_buf(),
                source,
            },
        )
    }
}

fn peer_cred(stream: impl AsFd) -> std::io::Result<(u32, u32)> {
    let cred = rustix::net::sockopt::socket_peercred(stream)?;
    Ok((cred.pid.as_raw_nonzero().get() as u32, cred.uid.as_raw()))
}

/// The server side: a listening Unix socket that hands out one end of a ring.
///
/// With the `tokio` feature, [`Listener::accept_async`] (and its typed
/// forms) accepts without blocking the runtime, and several accepts may run
/// at once, each handling one client.
#[derive(Debug)]
pub struct Listener {
    /// Non-blocking, so that the async accepts can share it; the blocking
    /// accept `poll`s it first.
    pub(crate) socket: UnixListener,
    pub(crate) path: PathBuf,
    inode: (u64, u64),
    policy: UidPolicy,
}

impl Listener {
    /// Listens on `path`. A stale socket file (nobody accepting) is replaced; a
    /// live one gives `AddrInUse`.
    ///
    /// # Errors
    /// The failing step's `std::io::Error`, of the OS error's kind, whose
    /// message names the step and the path (e.g. "bind /run/x.sock: Permission
    /// denied (os error 13)"); the OS error itself is the inner error's `source()`.
    ///
    /// # Examples
    /// A server that sums the numbers a client sends (the client is
    /// normally another process; a thread here):
    /// ```
    /// use shm_ring::{Connector, ElemLayout, Listener, RingFds};
    ///
    /// let dir = std::env::temp_dir().join(format!("ring-doc-listener-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let path = dir.join("sum.sock");
    /// let listener = Listener::bind(&path)?;
    ///
    /// let client = std::thread::spawn({
    ///     let path = path.clone();
    ///     move || {
    ///         let mut tx = Connector::new(&path).connect_producer::<f64>()?;
    ///         tx.send_all(&[1.0, 2.0, 3.0], None)?;
    ///         Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    ///     }
    /// });
    ///
    /// let ring = RingFds::create("sum", 1 << 16, ElemLayout::of::<f64>())?;
    /// let mut rx = listener.accept_consumer::<f64>(&ring)?;
    /// let mut sum = 0.0;
    /// // Ends with `RingError::Disconnected` once the client has hung up and
    /// // everything it sent is received.
    /// while let Ok(x) = rx.recv() {
    ///     sum += x;
    /// }
    /// assert_eq!(sum, 6.0);
    /// client.join().unwrap()?;
    /// drop(listener); // unlinks the socket file
    /// std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    /// ```
    pub fn bind(path: impl AsRef<Path>) -> std::io::Result<Listener> {
        let path = path.as_ref().to_path_buf();
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            use std::os::unix::fs::FileTypeExt;
            // Only a socket nobody listens on is ours to replace: never a
            // file, a directory or a symlink someone put at the path.
            if !meta.file_type().is_socket() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a socket: not replacing it",
                        path.display()
                    ),
                ));
            }
            if UnixStream::connect(&path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("a server already listens on {}", path.display()),
                ));
            }
            std::fs::remove_file(&path).map_err(path_err("remove stale socket", &path))?;
        }
        let listener = UnixListener::bind(&path).map_err(path_err("bind", &path))?;
        listener
            .set_nonblocking(true)
            .map_err(path_err("O_NONBLOCK on", &path))?;
        let meta = std::fs::symlink_metadata(&path).map_err(path_err("stat", &path))?;
        Ok(Listener {
            socket: listener,
            path,
            inode: (meta.dev(), meta.ino()),
            policy: UidPolicy::default(),
        })
    }

    /// Whose connections to accept (default: same uid).
    #[must_use]
    pub fn with_policy(mut self, policy: UidPolicy) -> Listener {
        self.policy = policy;
        self
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for one client asking for end `give` of a ring with element
    /// layout `elem`, checks it and passes it `ring`'s fds. Returns the link
    /// to that client. A client that fails the checks is told why (when it
    /// got that far) and the error returned; call again to wait for the next.
    pub fn accept(
        &self,
        ring: &RingFds,
        give: Role,
        elem: ElemLayout,
    ) -> Result<PeerLink, AcceptError> {
        let mut stream = self.accept_stream()?;
        let (pid, uid) = self.admit(&stream)?;
        stream
            .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .map_err(aerr("SO_RCVTIMEO on", &self.path))?;
        let mut bytes = [0u8; HELLO_LEN];
        stream
            .read_exact(&mut bytes)
            .map_err(aerr("read hello on", &self.path))?;
        let answer = Answer::to(&bytes, ring, give, elem)?;
        send_welcome(&stream, answer.status, answer.capacity, answer.fds(ring))
            .map_err(aerr("send welcome on", &self.path))?;
        answer.outcome()?;
        stream
            .set_read_timeout(None)
            .map_err(aerr("SO_RCVTIMEO on", &self.path))?;
        Ok(PeerLink {
            socket: stream.into(),
            pid,
            uid,
        })
    }

    /// The next connection, waiting for one (the socket is non-blocking).
    fn accept_stream(&self) -> Result<UnixStream, AcceptError> {
        loop {
            match self.socket.accept() {
                Ok((stream, _)) => return Ok(stream),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    use rustix::event::{PollFd, PollFlags};
                    let mut fds = [PollFd::new(&self.socket, PollFlags::IN)];
                    match rustix::event::poll(&mut fds, None) {
                        Ok(_) | Err(rustix::io::Errno::INTR) => {}
                        Err(e) => return Err(aerr("poll", &self.path)(e.into())),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(aerr("accept on", &self.path)(e)),
            }
        }
    }

    /// Checks a new client's credentials against the policy; a refused
    /// client is told so (best effort) before the error is returned.
    pub(crate) fn admit(&self, stream: &UnixStream) -> Result<(u32, u32), AcceptError> {
        let (pid, uid) = peer_cred(stream).map_err(aerr("SO_PEERCRED on", &self.path))?;
        if !self.policy.allows(uid) {
            let _ = send_welcome(stream, STATUS_REFUSED, 0, None);
            return Err(AcceptError::Refused { pid, uid });
        }
        Ok((pid, uid))
    }

    /// Accepts a client that will send `T`s, and opens the consumer end for us.
    pub fn accept_consumer<T: Element>(&self, ring: &RingFds) -> Result<Consumer<T>, AcceptError> {
        let link = self.accept(ring, Role::Producer, ElemLayout::of::<T>())?;
        Ok(Consumer::open(ring, Some(link))?)
    }

    /// Accepts a client that will receive `T`s, and opens the producer end for us.
    pub fn accept_producer<T: Element>(&self, ring: &RingFds) -> Result<Producer<T>, AcceptError> {
        let link = self.accept(ring, Role::Consumer, ElemLayout::of::<T>())?;
        Ok(Producer::open(ring, Some(link))?)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Unlink only our own socket file, not one a newer server bound since.
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.inode
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The server's answer to a hello: what the welcome says, and the error the
/// server reports once it is sent.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u32,
    pub(crate) capacity: u64,
    error: Option<AcceptError>,
}

impl Answer {
    /// Checks the hello `bytes`; a hello that is not one (wrong magic) gets no answer.
    pub(crate) fn to(
        bytes: &[u8; HELLO_LEN],
        ring: &RingFds,
        give: Role,
        elem: ElemLayout,
    ) -> Result<Answer, AcceptError> {
        let hello = Hello::read_from_bytes(bytes).map_err(|_| AcceptError::Malformed)?;
        if hello.magic != HELLO_MAGIC {
            return Err(AcceptError::Malformed);
        }
        let (status, error) = check_hello(&hello, give, elem);
        let capacity = if status == STATUS_OK {
            ring_capacity(ring, elem)?
        } else {
            0
        };
        Ok(Answer {
            status,
            capacity,
            error,
        })
    }

    /// The fds that go with the welcome: the ring's, only when it is accepted.
    pub(crate) fn fds<'r>(&self, ring: &'r RingFds) -> Option<&'r RingFds> {
        (self.status == STATUS_OK).then_some(ring)
    }

    /// `Ok` if the client was given the ring, else why not.
    pub(crate) fn outcome(self) -> Result<(), AcceptError> {
        self.error.map_or(Ok(()), Err)
    }
}

fn ring_capacity(ring: &RingFds, elem: ElemLayout) -> Result<u64, AcceptError> {
    // Validates our own ring before handing it out (cheap: one mapping).
    let storage = ring.open_storage(elem)?;
    Ok(crate::storage::Storage::capacity(&storage))
}

fn check_hello(hello: &Hello, give: Role, elem: ElemLayout) -> (u32, Option<AcceptError>) {
    if hello.max_version < MIN_VERSION
        || hello.min_version > PROTOCOL_VERSION
        || hello.min_version > hello.max_version
    {
        return (
            STATUS_VERSION,
            Some(AcceptError::Version {
                min: hello.min_version,
                max: hello.max_version,
            }),
        );
    }
    if hello.role != give.wire() {
        return (STATUS_ROLE, Some(AcceptError::Role));
    }
    if hello.elem_size as usize != elem.size
        || hello.elem_align as usize != elem.align
        || hello.tag != elem.tag
    {
        let err = AcceptError::Element {
            size: hello.elem_size,
            align: hello.elem_align,
            tag: hello.tag,
        };
        return (STATUS_ELEMENT, Some(err));
    }
    (STATUS_OK, None)
}

pub(crate) fn send_welcome(
    stream: &UnixStream,
    status: u32,
    capacity: u64,
    ring: Option<&RingFds>,
) -> std::io::Result<()> {
    let welcome = Welcome {
        magic: WELCOME_MAGIC,
        version: PROTOCOL_VERSION,
        status,
        capacity,
        server_pid: std::process::id(),
        reserved: 0,
    };
    let fds = ring.map(|ring| {
        [
            ring.memfd.as_fd(),
            ring.data_ready.as_fd(),
            ring.space_ready.as_fd(),
        ]
    });
    let fds = fds.as_ref().map_or(&[][..], |fds| fds.as_slice());
    let sent = send_with_fds(stream, welcome.as_bytes(), fds, None)?;
    if sent != size_of::<Welcome>() {
        return Err(std::io::ErrorKind::WriteZero.into());
    }
    Ok(())
}

/// The client side: connects to a [`Listener`]'s socket.
#[derive(Debug, Clone)]
pub struct Connector {
    path: PathBuf,
    policy: UidPolicy,
}

impl Connector {
    /// A connector for the socket at `path` (servers of our own uid only, by default).
    pub fn new(path: impl AsRef<Path>) -> Connector {
        Connector {
            path: path.as_ref().to_path_buf(),
            policy: UidPolicy::default(),
        }
    }

    /// Which server uids to trust (the ring is validated either way).
    #[must_use]
    pub fn with_policy(mut self, policy: UidPolicy) -> Connector {
        self.policy = policy;
        self
    }

    /// Connects asking for end `want` of a ring of `elem`; returns the ring's fds and the link.
    pub fn connect(
        &self,
        want: Role,
        elem: ElemLayout,
    ) -> Result<(RingFds, PeerLink), ConnectError> {
        let mut stream = UnixStream::connect(&self.path).map_err(cerr("connect to", &self.path))?;
        let (pid, uid) = self.check_server(&stream)?;
        stream
            .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .map_err(cerr("SO_RCVTIMEO on", &self.path))?;
        stream
            .write_all(hello(want, elem).as_bytes())
            .map_err(cerr("send hello to", &self.path))?;
        let (welcome, fds) = recv_welcome(&stream, &self.path)?;
        let ring = welcomed(&welcome, fds)?;
        stream
            .set_read_timeout(None)
            .map_err(cerr("SO_RCVTIMEO on", &self.path))?;
        Ok((
            ring,
            PeerLink {
                socket: stream.into(),
                pid,
                uid,
            },
        ))
    }

    /// The server's credentials, if the policy accepts them.
    pub(crate) fn check_server(&self, stream: impl AsFd) -> Result<(u32, u32), ConnectError> {
        let (pid, uid) = peer_cred(stream).map_err(cerr("SO_PEERCRED on", &self.path))?;
        if !self.policy.allows(uid) {
            return Err(ConnectError::Refused { pid, uid });
        }
        Ok((pid, uid))
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Connects as the producer of `T`s.
    ///
    /// # Examples
    /// A client that sends numbers to a server that sums them (the server
    /// is normally another process; a thread here):
    /// ```
    /// use shm_ring::{Connector, ElemLayout, Listener, RingFds};
    ///
    /// let dir = std::env::temp_dir().join(format!("ring-doc-connector-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let path = dir.join("sum.sock");
    /// let listener = Listener::bind(&path)?;
    /// let server = std::thread::spawn(move || {
    ///     let ring = RingFds::create("sum", 1 << 16, ElemLayout::of::<f64>())?;
    ///     let mut rx = listener.accept_consumer::<f64>(&ring)?;
    ///     let mut sum = 0.0;
    ///     while let Ok(x) = rx.recv() {
    ///         sum += x;
    ///     }
    ///     Ok::<f64, Box<dyn std::error::Error + Send + Sync>>(sum)
    /// });
    ///
    /// let mut tx = Connector::new(&path).connect_producer::<f64>()?;
    /// tx.send_all(&[1.0, 2.0, 3.0], None)?;
    /// drop(tx); // hangs up: the server's loop ends after the last number
    /// assert_eq!(server.join().unwrap()?, 6.0);
    /// std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    /// ```
    pub fn connect_producer<T: Element>(&self) -> Result<Producer<T>, ConnectError> {
        let (ring, link) = self.connect(Role::Producer, ElemLayout::of::<T>())?;
        Ok(Producer::open(&ring, Some(link))?)
    }

    /// Connects as the consumer of `T`s.
    pub fn connect_consumer<T: Element>(&self) -> Result<Consumer<T>, ConnectError> {
        let (ring, link) = self.connect(Role::Consumer, ElemLayout::of::<T>())?;
        Ok(Consumer::open(&ring, Some(link))?)
    }
}

/// Receives the welcome and its fds (for the async handshake).
#[cfg(feature = "tokio")]
pub(crate) fn receive_welcome(
    stream: &UnixStream,
    path: &Path,
) -> Result<(Welcome, Vec<OwnedFd>), ConnectError> {
    recv_welcome(stream, path)
}

/// The client's hello asking for end `want` of a ring of `elem`.
pub(crate) fn hello(want: Role, elem: ElemLayout) -> Hello {
    Hello {
        magic: HELLO_MAGIC,
        min_version: MIN_VERSION,
        max_version: PROTOCOL_VERSION,
        role: want.wire(),
        elem_size: elem.size as u32,
        elem_align: elem.align as u32,
        reserved: 0,
        tag: elem.tag,
    }
}

/// The ring's fds, if the server's welcome accepted us and carried exactly three.
pub(crate) fn welcomed(welcome: &Welcome, fds: Vec<OwnedFd>) -> Result<RingFds, ConnectError> {
    if welcome.magic != WELCOME_MAGIC {
        return Err(ConnectError::Malformed);
    }
    match welcome.status {
        STATUS_OK => {}
        STATUS_VERSION => return Err(ConnectError::Rejected("no common protocol version")),
        STATUS_ROLE => {
            return Err(ConnectError::Rejected(
                "that end of the ring is not offered",
            ));
        }
        STATUS_ELEMENT => return Err(ConnectError::Rejected("different element layout")),
        STATUS_REFUSED => return Err(ConnectError::Rejected("credentials not allowed")),
        _ => return Err(ConnectError::Malformed),
    }
    let mut fds = fds.into_iter();
    let (Some(memfd), Some(data_ready), Some(space_ready), None) =
        (fds.next(), fds.next(), fds.next(), fds.next())
    else {
        return Err(ConnectError::Malformed);
    };
    Ok(RingFds {
        memfd,
        data_ready,
        space_ready,
    })
}

fn recv_welcome(stream: &UnixStream, path: &Path) -> Result<(Welcome, Vec<OwnedFd>), ConnectError> {
    let mut bytes = [0u8; size_of::<Welcome>()];
    // The server sends 3 fds with an OK welcome and none otherwise: more is malformed.
    let got = recv_with_fds(stream, &mut bytes, 3)
        .map_err(|e| cerr("receive welcome from", path)(e.into()))?;
    if got.fds_truncated {
        return Err(ConnectError::Malformed);
    }
    let fds = got.fds;
    let mut have = got.len;
    let mut reader = stream;
    while have < bytes.len() {
        match reader.read(&mut bytes[have..]) {
            Ok(0) => return Err(ConnectError::Malformed),
            Ok(n) => have += n,
            Err(e) => return Err(cerr("receive welcome from", path)(e)),
        }
    }
    let welcome = Welcome::read_from_bytes(&bytes).map_err(|_| ConnectError::Malformed)?;
    Ok((welcome, fds))
}
