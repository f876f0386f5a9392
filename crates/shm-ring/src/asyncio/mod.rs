//! Async ends and an async handshake (feature `tokio`): the eventfds and the
//! peer socket become readiness sources of tokio's reactor through `AsyncFd`.
//!
//! - [`AsyncProducer`] / [`AsyncConsumer`]: `send` / `recv`, batches
//!   (`send_slice`, `send_all`, `recv_slice`), a [`Sink`](futures_sink::Sink)
//!   and a [`Stream`](futures_core::Stream) of typed values, and for byte
//!   rings `tokio::io::AsyncWrite` / `AsyncRead`.
//! - [`Listener::accept_async`](crate::Listener::accept_async) and
//!   [`Connector::connect_async`](crate::Connector::connect_async) (and their
//!   typed forms): the handshake of `docs/protocol/shm-ring.md` without
//!   blocking the runtime, so one current-thread runtime can serve several
//!   clients at once.
//!
//! End of stream: a consumer's `recv` gives [`RingError::Disconnected`], its
//! `Stream` ends and its `AsyncRead` reads 0 once the producer hung up (was
//! dropped, closed with [`AsyncProducer::hang_up`], `Sink::poll_close` or
//! `AsyncWrite::poll_shutdown`, or its process died) and every element it
//! sent has been received.
//!
//! The parking protocol is the blocking one ([`crate::raw`]): announce
//! `parked`, SeqCst fence, re-check, then await the eventfd instead of `poll`.
//! As there, a wait is bounded: next to the eventfd it awaits a one-shot
//! timerfd armed for [`crate::PARK_RECHECK`], after which it re-checks the
//! counters and parks again, so a `parked` flag cleared behind our back costs
//! a delay, not a hang. The timers (that one and the handshake's timeout)
//! are file descriptors on tokio's I/O driver, so the runtime needs no time
//! driver (`enable_io` is enough).
//!
//! # Safety
//!
//! The only unsafe call is `AsyncFd::register_with_interest`, whose contract
//! is that the fd stays open and the same for the `AsyncFd`'s life: it holds
//! an `OwnedFd` (a private duplicate or a timerfd of its own) that nothing
//! else can close or replace.
#![allow(unsafe_code)]

mod handshake;
mod io;

use std::future::poll_fn;
use std::os::fd::{AsFd, OwnedFd};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, timerfd_create, timerfd_settime,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::core::RingError;
use crate::endpoint::{Consumer, Element, Producer, SendError, TrySendError};
use crate::evloop::ParkSide;
use crate::fds::{self, PARK_RECHECK, Parker};

fn io_err(op: &'static str) -> impl FnOnce(std::io::Error) -> RingError {
    move |e| RingError::Io {
        op,
        source: rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
    }
}

fn register(fd: &OwnedFd) -> Result<AsyncFd<OwnedFd>, RingError> {
    register_owned(fd.try_clone().map_err(io_err("dup"))?)
}

fn register_owned(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>, RingError> {
    // SAFETY: `fd` is an OwnedFd, open and owned by the AsyncFd until it is dropped.
    let registered = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
    registered.map_err(|e| io_err("AsyncFd")(e.into()))
}

/// A one-shot timerfd on tokio's I/O driver.
struct Timer {
    fd: AsyncFd<OwnedFd>,
}

impl Timer {
    fn new() -> Result<Timer, RingError> {
        let timer = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
        )
        .map_err(|source| RingError::Io {
            op: "timerfd_create",
            source,
        })?;
        Ok(Timer {
            fd: register_owned(timer)?,
        })
    }

    /// (Re)arms the timer to expire once, `after` from now. Arming also
    /// resets the expiry count (`timerfd_settime(2)`), so an expiry left over
    /// from an earlier arming does not end this one early.
    fn arm(&self, after: Duration) -> Result<(), RingError> {
        let once = Itimerspec {
            it_interval: fds::timespec(Duration::ZERO),
            it_value: fds::timespec(after),
        };
        timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &once)
            .map(drop)
            .map_err(|source| RingError::Io {
                op: "timerfd_settime",
                source,
            })
    }

    /// Ready once the timer armed last has expired.
    fn poll_expired(&self, cx: &mut Context<'_>) -> Poll<Result<(), RingError>> {
        loop {
            let mut guard =
                ready!(self.fd.poll_read_ready(cx)).map_err(io_err("timerfd readiness"))?;
            let mut buf = [0u8; 8];
            // A readiness left over from an earlier arming reads EAGAIN:
            // `try_io` clears it and we wait for this arming's expiry.
            if let Ok(read) = guard
                .try_io(|fd| rustix::io::read(fd.get_ref(), &mut buf).map_err(std::io::Error::from))
            {
                return Poll::Ready(read.map(drop).map_err(io_err("read timerfd")));
            }
        }
    }

    /// Runs `fut` for at most `limit` (armed now); `None` if the time ran out first.
    async fn within<F: Future>(limit: Duration, fut: F) -> Result<Option<F::Output>, RingError> {
        let timer = Timer::new()?;
        timer.arm(limit)?;
        let mut fut = std::pin::pin!(fut);
        poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(Some(out)));
            }
            timer.poll_expired(cx).map_ok(|()| None)
        })
        .await
    }
}

/// What an async end waits on, and whether it is parked.
struct Waits {
    eventfd: AsyncFd<OwnedFd>,
    peer: Option<AsyncFd<OwnedFd>>,
    /// Armed (one-shot) for [`PARK_RECHECK`] at each park.
    recheck: Timer,
    /// Our `parked` flag is 1: set by `park_begin`, cleared by `park_end`.
    parked: bool,
}

impl std::fmt::Debug for Waits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waits")
            .field("parked", &self.parked)
            .finish_non_exhaustive()
    }
}

impl Waits {
    fn new(parker: &Parker) -> Result<Waits, RingError> {
        Ok(Waits {
            eventfd: register(&parker.eventfd)?,
            peer: parker.peer.as_ref().map(register).transpose()?,
            recheck: Timer::new()?,
            parked: false,
        })
    }

    /// Ready with the work possible (free slots, ready elements, at least 1),
    /// parking as the protocol says while there is none. Gives
    /// [`RingError::Disconnected`] once the peer hung up and there is no work.
    /// Cancel-safe: a park left behind is resumed (or ended) by the next call.
    fn poll_work<S: ParkSide>(
        &mut self,
        side: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<Result<u64, RingError>> {
        loop {
            let work = side.work()?;
            if work > 0 {
                self.unpark(side);
                return Poll::Ready(Ok(work));
            }
            if !self.parked {
                if side.park_begin()? > 0 {
                    continue;
                }
                self.parked = true;
                self.recheck.arm(PARK_RECHECK)?;
            }
            let woke = ready!(self.poll_wake(cx));
            self.unpark(side);
            if let Err(e) = woke {
                // The peer may have published (or released) just before it hung up.
                let work = side.work()?;
                return Poll::Ready(if work > 0 { Ok(work) } else { Err(e) });
            }
        }
    }

    fn unpark<S: ParkSide>(&mut self, side: &S) {
        if self.parked {
            side.park_end();
            self.parked = false;
        }
    }

    /// Ready when the eventfd was written (Ok), [`PARK_RECHECK`] passed (Ok:
    /// the caller re-checks the counters) or the peer hung up (Disconnected).
    fn poll_wake(&self, cx: &mut Context<'_>) -> Poll<Result<(), RingError>> {
        if let Poll::Ready(ready) = self.eventfd.poll_read_ready(cx) {
            let mut guard = ready.map_err(io_err("eventfd readiness"))?;
            fds::drain(self.eventfd.get_ref().as_fd())?;
            guard.clear_ready();
            return Poll::Ready(Ok(()));
        }
        if let Some(peer) = &self.peer
            && let Poll::Ready(ready) = peer.poll_read_ready(cx)
        {
            // The peer never writes after the handshake: readable means EOF,
            // for good (the readiness is left set).
            let _keep = ready.map_err(io_err("socket readiness"))?;
            return Poll::Ready(Err(RingError::Disconnected));
        }
        self.recheck.poll_expired(cx)
    }
}

/// An async [`Consumer`].
///
/// Also a [`Stream`](futures_core::Stream) of `Result<T, RingError>` that
/// ends when the producer hung up and everything it sent was received, and
/// for `T = u8` a [`tokio::io::AsyncRead`].
#[derive(Debug)]
pub struct AsyncConsumer<T> {
    inner: Consumer<T>,
    waits: Waits,
}

impl<T: Element> AsyncConsumer<T> {
    /// Wraps a consumer; must be called inside a tokio runtime.
    ///
    /// # Examples
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_io().build()?.block_on(async {
    /// use shm_ring::asyncio::{AsyncConsumer, AsyncProducer};
    /// let (tx, rx) = shm_ring::channel::<u32>(8)?;
    /// let (mut tx, mut rx) = (AsyncProducer::new(tx)?, AsyncConsumer::new(rx)?);
    /// tx.send(5).await?;
    /// assert_eq!(rx.recv().await?, 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(inner: Consumer<T>) -> Result<AsyncConsumer<T>, RingError> {
        let waits = Waits::new(&inner.end.parker)?;
        Ok(AsyncConsumer { inner, waits })
    }

    /// The consumer inside.
    pub fn get_ref(&self) -> &Consumer<T> {
        &self.inner
    }

    /// The consumer inside (for its non-blocking calls).
    pub fn get_mut(&mut self) -> &mut Consumer<T> {
        &mut self.inner
    }

    /// The consumer inside, for blocking use again.
    pub fn into_inner(mut self) -> Consumer<T> {
        self.waits.unpark(&self.inner.raw);
        self.inner
    }

    /// Number of slots.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity()
    }

    /// Ready with the number of elements ready (at least 1), or
    /// [`RingError::Disconnected`] once the producer hung up and none is left.
    pub fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, RingError>> {
        self.waits
            .poll_work(&mut self.inner.raw, cx)
            .map_ok(|n| n as usize)
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, RingError>> {
        loop {
            if let Some(v) = self.inner.try_recv()? {
                return Poll::Ready(Ok(v));
            }
            ready!(self.poll_readable(cx))?;
        }
    }

    fn poll_recv_slice(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut [T],
    ) -> Poll<Result<usize, RingError>> {
        loop {
            let n = self.inner.try_recv_slice(out)?;
            if n > 0 || out.is_empty() {
                return Poll::Ready(Ok(n));
            }
            ready!(self.poll_readable(cx))?;
        }
    }

    /// The next element; [`RingError::Disconnected`] once the producer hung
    /// up and nothing is left. Cancel-safe: nothing is taken from the ring
    /// unless it is returned.
    pub async fn recv(&mut self) -> Result<T, RingError> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Receives at least one element into `out` (unless it is empty) and
    /// returns how many; [`RingError::Disconnected`] as for
    /// [`recv`](Self::recv). Cancel-safe.
    ///
    /// # Examples
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_io().build()?.block_on(async {
    /// use shm_ring::asyncio::{AsyncConsumer, AsyncProducer};
    /// let (tx, rx) = shm_ring::channel::<u16>(4)?;
    /// let (mut tx, mut rx) = (AsyncProducer::new(tx)?, AsyncConsumer::new(rx)?);
    /// let sender = tokio::spawn(async move { tx.send_all(&[1, 2, 3, 4, 5, 6]).await });
    /// let mut got = Vec::new();
    /// let mut buf = [0u16; 4];
    /// while got.len() < 6 {
    ///     let n = rx.recv_slice(&mut buf).await?;
    ///     got.extend_from_slice(&buf[..n]);
    /// }
    /// sender.await??;
    /// assert_eq!(got, [1, 2, 3, 4, 5, 6]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn recv_slice(&mut self, out: &mut [T]) -> Result<usize, RingError> {
        poll_fn(|cx| self.poll_recv_slice(cx, out)).await
    }
}

/// An async [`Producer`].
///
/// Also a [`Sink`](futures_sink::Sink) of `T` whose `poll_close` hangs up
/// (the consumer's stream ends after the last element), and for `T = u8` a
/// [`tokio::io::AsyncWrite`].
#[derive(Debug)]
pub struct AsyncProducer<T> {
    inner: Producer<T>,
    waits: Waits,
    /// An element the `Sink` accepted while the ring was full.
    pending: Option<T>,
}

impl<T: Element> AsyncProducer<T> {
    /// Wraps a producer; must be called inside a tokio runtime.
    pub fn new(inner: Producer<T>) -> Result<AsyncProducer<T>, RingError> {
        let waits = Waits::new(&inner.end.parker)?;
        Ok(AsyncProducer {
            inner,
            waits,
            pending: None,
        })
    }

    /// The producer inside.
    pub fn get_ref(&self) -> &Producer<T> {
        &self.inner
    }

    /// The producer inside (for its non-blocking calls).
    pub fn get_mut(&mut self) -> &mut Producer<T> {
        &mut self.inner
    }

    /// Number of slots.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity()
    }

    /// Ready with the number of free slots (at least 1), or
    /// [`RingError::Disconnected`] once the consumer hung up and the ring is full.
    pub fn poll_writable(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, RingError>> {
        self.waits
            .poll_work(&mut self.inner.raw, cx)
            .map_ok(|n| n as usize)
    }

    fn poll_send_slice(
        &mut self,
        cx: &mut Context<'_>,
        items: &[T],
    ) -> Poll<Result<usize, RingError>> {
        loop {
            let n = self.inner.try_send_slice(items)?;
            if n > 0 || items.is_empty() {
                return Poll::Ready(Ok(n));
            }
            ready!(self.poll_writable(cx))?;
        }
    }

    /// Sends `value`, waiting while the ring is full. If it is cancelled
    /// while waiting, the value was not sent.
    pub async fn send(&mut self, mut value: T) -> Result<(), SendError<T>> {
        loop {
            match self.inner.try_send(value) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Failed(value, error)) => return Err(SendError { value, error }),
                Err(TrySendError::Full(v)) => value = v,
            }
            if let Err(error) = poll_fn(|cx| self.poll_writable(cx)).await {
                return Err(SendError { value, error });
            }
        }
    }

    /// Sends a prefix of `items` (at least one element, unless it is empty),
    /// waiting while the ring is full; returns its length. Cancel-safe.
    pub async fn send_slice(&mut self, items: &[T]) -> Result<usize, RingError> {
        poll_fn(|cx| self.poll_send_slice(cx, items)).await
    }

    /// Sends all of `items`, waiting as needed. If it fails or is cancelled,
    /// [`Producer::position`] (through [`get_ref`](Self::get_ref)) tells how
    /// far it got.
    pub async fn send_all(&mut self, mut items: &[T]) -> Result<(), RingError> {
        while !items.is_empty() {
            let n = self.send_slice(items).await?;
            items = &items[n..];
        }
        Ok(())
    }

    /// Hangs up: the consumer gets what was sent, then
    /// [`RingError::Disconnected`] (its stream ends), as if this end had been
    /// dropped. Shuts down the sending side of the peer socket; an end
    /// without one (opened with no [`PeerLink`](crate::PeerLink)) cannot
    /// signal it. Sending after closing still works, but nothing tells the
    /// consumer to wait for more.
    pub fn hang_up(&mut self) -> Result<(), RingError> {
        self.inner.hang_up()
    }

    /// Sends the element the `Sink` holds back, if any.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RingError>> {
        while let Some(value) = self.pending.take() {
            match self.inner.try_send(value) {
                Ok(()) => {}
                Err(TrySendError::Full(value)) => {
                    self.pending = Some(value);
                    ready!(self.poll_writable(cx))?;
                }
                Err(TrySendError::Failed(_, e)) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

// The ends never pin their fields (the `Sink` moves its held-back element
// in and out by value), so pinning an end pins nothing inside it.
impl<T> Unpin for AsyncProducer<T> {}
