//! Async ends (feature `tokio`): the eventfds and the peer socket become
//! readiness sources of tokio's reactor through `AsyncFd`.
//!
//! The parking protocol is the blocking one ([`crate::raw`]): announce
//! `parked`, SeqCst fence, re-check, then await the eventfd instead of `poll`.
//! As there, a wait is bounded: next to the eventfd it awaits a one-shot
//! timerfd armed for [`crate::PARK_RECHECK`], after which it re-checks the
//! counters and parks again, so a `parked` flag cleared behind our back costs
//! a delay, not a hang. The timer is a file descriptor on tokio's I/O driver,
//! so the runtime needs no time driver.
//!
//! # Safety
//!
//! The only unsafe call is `AsyncFd::register_with_interest`, whose contract
//! is that the fd stays open and the same for the `AsyncFd`'s life: it holds
//! an `OwnedFd` (a private duplicate) that nothing else can close or replace.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, OwnedFd};

use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, timerfd_create, timerfd_settime,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::core::RingError;
use crate::endpoint::{Consumer, Element, Producer};
use crate::fds::{self, PARK_RECHECK};

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> RingError {
    move |e| RingError::Io {
        op,
        source: rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
    }
}

fn register(fd: &OwnedFd) -> Result<AsyncFd<OwnedFd>, RingError> {
    register_owned(fd.try_clone().map_err(io("dup"))?)
}

fn register_owned(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>, RingError> {
    // SAFETY: `fd` is an OwnedFd, open and owned by the AsyncFd until it is dropped.
    let registered = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
    registered.map_err(|e| io("AsyncFd")(e.into()))
}

struct Waits {
    eventfd: AsyncFd<OwnedFd>,
    peer: Option<AsyncFd<OwnedFd>>,
    /// A non-blocking timerfd, armed (one-shot) for [`PARK_RECHECK`] at each wait.
    recheck: AsyncFd<OwnedFd>,
}

impl std::fmt::Debug for Waits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waits").finish_non_exhaustive()
    }
}

impl Waits {
    fn new(parker: &fds::Parker) -> Result<Waits, RingError> {
        let eventfd = register(&parker.eventfd)?;
        let peer = match &parker.peer {
            Some(p) => Some(register(p)?),
            None => None,
        };
        let timer = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
        )
        .map_err(|source| RingError::Io {
            op: "timerfd_create",
            source,
        })?;
        let recheck = register_owned(timer)?;
        Ok(Waits {
            eventfd,
            peer,
            recheck,
        })
    }

    /// Waits for the eventfd (Ok), [`PARK_RECHECK`] to pass (Ok: the caller
    /// re-checks the counters) or the peer's hang-up (Disconnected).
    async fn wait(&self) -> Result<(), RingError> {
        // Arming also resets the timer's expiry count (timerfd_settime(2)),
        // so an expiry left over from an earlier wait does not end this one early.
        let once = Itimerspec {
            it_interval: fds::timespec(std::time::Duration::ZERO),
            it_value: fds::timespec(PARK_RECHECK),
        };
        timerfd_settime(self.recheck.get_ref(), TimerfdTimerFlags::empty(), &once).map_err(
            |source| RingError::Io {
                op: "timerfd_settime",
                source,
            },
        )?;
        let recheck = async {
            loop {
                let mut guard = self
                    .recheck
                    .readable()
                    .await
                    .map_err(io("timerfd readiness"))?;
                let mut buf = [0u8; 8];
                // A readiness left over from an earlier arming reads EAGAIN:
                // `try_io` clears it and we wait for this arming's expiry.
                match guard.try_io(|fd| {
                    rustix::io::read(fd.get_ref(), &mut buf).map_err(std::io::Error::from)
                }) {
                    Ok(read) => return read.map(drop).map_err(io("read timerfd")),
                    Err(_would_block) => {}
                }
            }
        };
        let hup = async {
            match &self.peer {
                Some(p) => {
                    let _ = p.readable().await;
                    RingError::Disconnected
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ready = self.eventfd.readable() => {
                let mut guard = ready.map_err(io("eventfd readiness"))?;
                fds::drain(self.eventfd.get_ref().as_fd())?;
                guard.clear_ready();
                Ok(())
            }
            e = hup => Err(e),
            rechecked = recheck => rechecked,
        }
    }
}

/// An async [`Consumer`].
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
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let (tx, rx) = shm_ring::channel::<u32>(8)?;
    /// let (mut tx, mut rx) = (shm_ring::asyncio::AsyncProducer::new(tx)?, shm_ring::asyncio::AsyncConsumer::new(rx)?);
    /// tx.send(5).await?;
    /// assert_eq!(rx.recv().await?, 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(mut inner: Consumer<T>) -> Result<AsyncConsumer<T>, RingError> {
        let waits = Waits::new(inner.parts().1)?;
        Ok(AsyncConsumer { inner, waits })
    }

    /// The blocking consumer inside (for its non-blocking calls).
    pub fn get_mut(&mut self) -> &mut Consumer<T> {
        &mut self.inner
    }

    /// The next element; [`RingError::Disconnected`] once the producer hung up and nothing is left.
    pub async fn recv(&mut self) -> Result<T, RingError> {
        loop {
            if let Some(v) = self.inner.try_recv()? {
                return Ok(v);
            }
            if self.inner.parts().0.park_begin()? > 0 {
                continue;
            }
            let woke = self.waits.wait().await;
            self.inner.parts().0.park_end();
            if let Err(e) = woke {
                return match self.inner.try_recv()? {
                    Some(v) => Ok(v),
                    None => Err(e),
                };
            }
        }
    }
}

/// An async [`Producer`].
#[derive(Debug)]
pub struct AsyncProducer<T> {
    inner: Producer<T>,
    waits: Waits,
}

impl<T: Element> AsyncProducer<T> {
    /// Wraps a producer; must be called inside a tokio runtime.
    pub fn new(mut inner: Producer<T>) -> Result<AsyncProducer<T>, RingError> {
        let waits = Waits::new(inner.parts().1)?;
        Ok(AsyncProducer { inner, waits })
    }

    /// The blocking producer inside (for its non-blocking calls).
    pub fn get_mut(&mut self) -> &mut Producer<T> {
        &mut self.inner
    }

    /// Sends `value`, waiting while the ring is full.
    pub async fn send(&mut self, mut value: T) -> Result<(), crate::SendError<T>> {
        loop {
            match self.inner.try_send(value) {
                Ok(()) => return Ok(()),
                Err(crate::TrySendError::Failed(value, error)) => {
                    return Err(crate::SendError { value, error });
                }
                Err(crate::TrySendError::Full(v)) => value = v,
            }
            match self.inner.parts().0.park_begin() {
                Ok(0) => {}
                Ok(_) => continue,
                Err(e) => {
                    return Err(crate::SendError {
                        value,
                        error: e.into(),
                    });
                }
            }
            let woke = self.waits.wait().await;
            self.inner.parts().0.park_end();
            if let Err(error) = woke {
                return Err(crate::SendError { value, error });
            }
        }
    }
}
