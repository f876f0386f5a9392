//! The async ends as [`Stream`] / [`Sink`] of typed values and as
//! `AsyncRead` / `AsyncWrite` byte streams.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{AsyncConsumer, AsyncProducer};
use crate::core::RingError;
use crate::endpoint::{Element, TrySendError, into_io};

/// The elements as they arrive; ends (`None`) once the producer hung up and
/// everything it sent was received. Other failures come as `Some(Err(..))`.
///
/// # Examples
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_io().build()?.block_on(async {
/// use futures_util::{SinkExt, StreamExt};
/// use shm_ring::asyncio::{AsyncConsumer, AsyncProducer};
/// let (tx, rx) = shm_ring::channel::<u64>(16)?;
/// let (mut tx, rx) = (AsyncProducer::new(tx)?, AsyncConsumer::new(rx)?);
/// let sender = tokio::spawn(async move {
///     for i in 0..100 {
///         SinkExt::send(&mut tx, i).await?;
///     }
///     SinkExt::close(&mut tx).await // the stream ends after the last element
/// });
/// let got: Vec<u64> = rx.map(Result::unwrap).collect().await;
/// sender.await??;
/// assert_eq!(got, (0..100).collect::<Vec<_>>());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl<T: Element> Stream for AsyncConsumer<T> {
    type Item = Result<T, RingError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match ready!(self.get_mut().poll_recv(cx)) {
            Ok(v) => Poll::Ready(Some(Ok(v))),
            Err(RingError::Disconnected) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }
}

/// Sends each element into the ring: `poll_ready` waits for a free slot,
/// `poll_flush` has nothing to do (a sent element is visible at once) but
/// for an element accepted without `poll_ready` while the ring was full,
/// and `poll_close` hangs up ([`AsyncProducer::hang_up`]) after that.
///
/// # Panics
/// `start_send` without a successful `poll_ready` before it (a breach of the
/// `Sink` contract) holds one element back if the ring is full; a second one
/// then panics.
impl<T: Element> Sink<T> for AsyncProducer<T> {
    type Error = RingError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), RingError>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        this.poll_writable(cx).map_ok(drop)
    }

    fn start_send(self: Pin<&mut Self>, item: T) -> Result<(), RingError> {
        let this = self.get_mut();
        match this.inner.try_send(item) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(item)) => {
                assert!(
                    this.pending.is_none(),
                    "Sink::start_send called twice on a full ring without poll_ready"
                );
                this.pending = Some(item);
                Ok(())
            }
            Err(TrySendError::Failed(_, e)) => Err(e),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), RingError>> {
        self.get_mut().poll_pending(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), RingError>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Poll::Ready(this.hang_up())
    }
}

/// Reads what is ready (waiting for at least one byte); 0 bytes (end of
/// file) once the producer hung up and everything it wrote was read.
impl AsyncRead for AsyncConsumer<u8> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match ready!(this.poll_recv_slice(cx, buf.initialize_unfilled())) {
            Ok(n) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Err(RingError::Disconnected) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(into_io(e))),
        }
    }
}

/// Writes what fits (waiting for at least one free byte); `BrokenPipe` once
/// the consumer hung up and the ring is full. `poll_shutdown` hangs up
/// ([`AsyncProducer::hang_up`]): the reader gets end of file after the data.
impl AsyncWrite for AsyncProducer<u8> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().poll_send_slice(cx, buf).map_err(into_io)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.get_mut().hang_up().map_err(into_io))
    }
}
