//! The socket handshake of `conn.rs` on tokio: the same steps and messages
//! (`docs/protocol/shm-ring.md`, "Socket handshake"), awaiting the socket
//! instead of blocking on it.
//!
//! The welcome (32 bytes and the fds) is sent and received by the blocking
//! code's routines, on a duplicate of the non-blocking socket, once readiness
//! says the call will not block: the client waits until the whole welcome
//! is in the socket (`MSG_PEEK`) or the server hung up, so the receive never
//! stops half way.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream as StdStream;
use std::path::Path;

use rustix::net::RecvFlags;
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};
use zerocopy::IntoBytes;

use super::Timer;
use crate::conn::{
    AcceptError, Answer, ConnectError, Connector, HANDSHAKE_TIMEOUT, HELLO_LEN, Listener, Role,
    WELCOME_LEN, aerr, cerr, hello, receive_welcome, send_welcome, welcomed,
};
use crate::endpoint::{Consumer, Element, Producer};
use crate::fds::RingFds;
use crate::layout::ElemLayout;
use crate::peer::PeerLink;

/// A blocking-API twin of `stream` (same socket, non-blocking) for the
/// routines that take a std stream.
fn twin(stream: &UnixStream) -> std::io::Result<StdStream> {
    Ok(StdStream::from(stream.as_fd().try_clone_to_owned()?))
}

/// `stream` as the liveness link of an end.
fn link(stream: UnixStream, pid: u32, uid: u32) -> std::io::Result<PeerLink> {
    Ok(PeerLink {
        socket: stream.into_std()?.into(),
        pid,
        uid,
    })
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer within {HANDSHAKE_TIMEOUT:?}"),
    )
}

fn ring_io(e: crate::core::RingError) -> std::io::Error {
    crate::endpoint::into_io(e)
}

async fn read_exact(stream: &UnixStream, buf: &mut [u8]) -> std::io::Result<()> {
    let mut have = 0;
    while have < buf.len() {
        stream.readable().await?;
        match stream.try_read(&mut buf[have..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => have += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn write_all(stream: &UnixStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Waits until the whole welcome can be received in one go: all of its
/// bytes are queued, or the server hung up (the receive then ends early and
/// reports it, without blocking).
async fn welcome_queued(stream: &UnixStream) -> std::io::Result<()> {
    stream
        .async_io(Interest::READABLE, || {
            let mut peek = [0u8; WELCOME_LEN];
            let (queued, _) =
                rustix::net::recv(stream, &mut peek, RecvFlags::PEEK | RecvFlags::DONTWAIT)?;
            if queued == 0 || queued == WELCOME_LEN || crate::fds::peer_gone_rdhup(stream.as_fd()) {
                Ok(())
            } else {
                // Part of it: wait for the rest (or the hang-up).
                Err(std::io::ErrorKind::WouldBlock.into())
            }
        })
        .await
}

#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl Listener {
    /// Like [`Listener::accept`], without blocking the runtime: waits for
    /// one client, checks it and passes it `ring`'s fds.
    ///
    /// Several accepts may wait on one listener at once (each takes one
    /// connection), so a client that stalls in the handshake (which times out
    /// after 5 s) holds up no other. Must be called inside a tokio runtime;
    /// no time driver is needed.
    ///
    /// # Examples
    /// A server that sums what a client sends (the client, normally another
    /// process, is a thread with the blocking [`Connector`] here):
    /// ```
    /// use shm_ring::{Connector, ElemLayout, Listener, RingFds};
    ///
    /// let dir = std::env::temp_dir().join(format!("ring-doc-accept-async-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir)?;
    /// let path = dir.join("sum.sock");
    /// let listener = Listener::bind(&path)?;
    /// let client = std::thread::spawn({
    ///     let path = path.clone();
    ///     move || {
    ///         let mut tx = Connector::new(&path).connect_producer::<f64>()?;
    ///         tx.send_all(&[1.0, 2.0, 3.0], None)?;
    ///         Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    ///     }
    /// });
    ///
    /// let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    /// let sum = runtime.block_on(async {
    ///     let ring = RingFds::create("sum", 1 << 16, ElemLayout::of::<f64>())?;
    ///     let rx = listener.accept_consumer_async::<f64>(&ring).await?;
    ///     let mut rx = shm_ring::asyncio::AsyncConsumer::new(rx)?;
    ///     let mut sum = 0.0;
    ///     while let Ok(x) = rx.recv().await {
    ///         sum += x;
    ///     }
    ///     Ok::<f64, Box<dyn std::error::Error + Send + Sync>>(sum)
    /// })?;
    /// assert_eq!(sum, 6.0);
    /// client.join().unwrap()?;
    /// drop(listener);
    /// std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    /// ```
    pub async fn accept_async(
        &self,
        ring: &RingFds,
        give: Role,
        elem: ElemLayout,
    ) -> Result<PeerLink, AcceptError> {
        let stream = self.accept_stream_async().await?;
        let twin = twin(&stream).map_err(aerr("dup", &self.path))?;
        let (pid, uid) = self.admit(&twin)?;
        let answered = Timer::within(
            HANDSHAKE_TIMEOUT,
            self.answer(&stream, &twin, ring, give, elem),
        )
        .await
        .map_err(|e| aerr("timer for", &self.path)(ring_io(e)))?;
        answered.unwrap_or_else(|| Err(aerr("read hello on", &self.path)(timed_out())))?;
        link(stream, pid, uid).map_err(aerr("deregister", &self.path))
    }

    /// Accepts a client that will send `T`s, and opens the consumer end for us.
    pub async fn accept_consumer_async<T: Element>(
        &self,
        ring: &RingFds,
    ) -> Result<Consumer<T>, AcceptError> {
        let link = self
            .accept_async(ring, Role::Producer, ElemLayout::of::<T>())
            .await?;
        Ok(Consumer::open(ring, Some(link))?)
    }

    /// Accepts a client that will receive `T`s, and opens the producer end for us.
    pub async fn accept_producer_async<T: Element>(
        &self,
        ring: &RingFds,
    ) -> Result<Producer<T>, AcceptError> {
        let link = self
            .accept_async(ring, Role::Consumer, ElemLayout::of::<T>())
            .await?;
        Ok(Producer::open(ring, Some(link))?)
    }

    /// The next connection. The listening socket is registered with the
    /// reactor for this call only, as a duplicate: concurrent calls each
    /// have their own registration and take one connection each.
    async fn accept_stream_async(&self) -> Result<UnixStream, AcceptError> {
        let dup = self.socket.try_clone().map_err(aerr("dup", &self.path))?;
        let listener = UnixListener::from_std(dup).map_err(aerr("register", &self.path))?;
        let (stream, _) = listener
            .accept()
            .await
            .map_err(aerr("accept on", &self.path))?;
        Ok(stream)
    }

    /// Reads the hello and answers it (steps after the credentials check).
    async fn answer(
        &self,
        stream: &UnixStream,
        twin: &StdStream,
        ring: &RingFds,
        give: Role,
        elem: ElemLayout,
    ) -> Result<(), AcceptError> {
        let mut bytes = [0u8; HELLO_LEN];
        read_exact(stream, &mut bytes)
            .await
            .map_err(aerr("read hello on", &self.path))?;
        let answer = Answer::to(&bytes, ring, give, elem)?;
        stream
            .async_io(Interest::WRITABLE, || {
                send_welcome(twin, answer.status, answer.capacity, answer.fds(ring))
            })
            .await
            .map_err(aerr("send welcome on", &self.path))?;
        answer.outcome()
    }
}

#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
impl Connector {
    /// Like [`Connector::connect`], without blocking the runtime. The whole
    /// handshake times out after 5 s. Must be called inside a tokio runtime;
    /// no time driver is needed.
    pub async fn connect_async(
        &self,
        want: Role,
        elem: ElemLayout,
    ) -> Result<(RingFds, PeerLink), ConnectError> {
        let path = self.path();
        let done = Timer::within(HANDSHAKE_TIMEOUT, self.handshake(path, want, elem))
            .await
            .map_err(|e| cerr("timer for", path)(ring_io(e)))?;
        done.unwrap_or_else(|| Err(cerr("handshake with", path)(timed_out())))
    }

    /// Connects as the producer of `T`s.
    ///
    /// # Examples
    /// A client that sends numbers to a server that sums them (the server,
    /// normally another process, is a thread with the blocking [`Listener`]
    /// here):
    /// ```
    /// use shm_ring::{Connector, ElemLayout, Listener, RingFds};
    ///
    /// let dir = std::env::temp_dir().join(format!("ring-doc-connect-async-{}", std::process::id()));
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
    /// let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    /// runtime.block_on(async {
    ///     let tx = Connector::new(&path).connect_producer_async::<f64>().await?;
    ///     let mut tx = shm_ring::asyncio::AsyncProducer::new(tx)?;
    ///     tx.send_all(&[1.0, 2.0, 3.0]).await?;
    ///     Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    /// })?; // the producer is dropped: the server's loop ends after the last number
    /// assert_eq!(server.join().unwrap()?, 6.0);
    /// std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    /// ```
    pub async fn connect_producer_async<T: Element>(&self) -> Result<Producer<T>, ConnectError> {
        let (ring, link) = self
            .connect_async(Role::Producer, ElemLayout::of::<T>())
            .await?;
        Ok(Producer::open(&ring, Some(link))?)
    }

    /// Connects as the consumer of `T`s.
    pub async fn connect_consumer_async<T: Element>(&self) -> Result<Consumer<T>, ConnectError> {
        let (ring, link) = self
            .connect_async(Role::Consumer, ElemLayout::of::<T>())
            .await?;
        Ok(Consumer::open(&ring, Some(link))?)
    }

    async fn handshake(
        &self,
        path: &Path,
        want: Role,
        elem: ElemLayout,
    ) -> Result<(RingFds, PeerLink), ConnectError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(cerr("connect to", path))?;
        let (pid, uid) = self.check_server(&stream)?;
        write_all(&stream, hello(want, elem).as_bytes())
            .await
            .map_err(cerr("send hello to", path))?;
        welcome_queued(&stream)
            .await
            .map_err(cerr("receive welcome from", path))?;
        let twin = twin(&stream).map_err(cerr("dup", path))?;
        let (welcome, fds) = receive_welcome(&twin, path)?;
        let ring = welcomed(&welcome, fds)?;
        let link = link(stream, pid, uid).map_err(cerr("deregister", path))?;
        Ok((ring, link))
    }
}
