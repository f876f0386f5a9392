//! The async API (feature `tokio`) as a user sees it: the async handshake,
//! batches, `Stream` / `Sink` of typed values and `AsyncRead` /
//! `AsyncWrite` byte streams, with normal (not killed) hang-ups.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use shm_ring::asyncio::{AsyncConsumer, AsyncProducer};
use shm_ring::{AcceptError, Connector, ElemLayout, Listener, RingError, RingFds, channel};
use shm_testkit::{Watchdog, unique_name};
use tokio::io::AsyncWriteExt;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A runtime with one thread and no time driver (the async API needs none).
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap()
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .build()
        .unwrap()
}

/// A typed element with a payload that depends on its number.
#[derive(Debug, Clone, Copy, PartialEq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct Sample {
    seq: u64,
    value: f64,
    tag: [u8; 8],
}

impl Sample {
    fn new(seq: u64) -> Sample {
        Sample {
            seq,
            value: f64::from(seq as u32) * 0.5,
            tag: (seq.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes(),
        }
    }
}

/// Accepts one producer on `ring` and collects what it sends until it hangs up.
async fn serve(listener: &Listener, ring: &RingFds) -> Result<Vec<u64>, AcceptError> {
    let rx = listener.accept_consumer_async::<u64>(ring).await?;
    let rx = AsyncConsumer::new(rx).unwrap();
    Ok(rx.map(Result::unwrap).collect().await)
}

/// Connects as a producer and sends `id << 32 | i` for `i` in `0..n`, in
/// batches; dropping the end at the return hangs up.
async fn client(path: &std::path::Path, id: u64, n: u64) {
    let tx = Connector::new(path)
        .connect_producer_async::<u64>()
        .await
        .unwrap();
    let mut tx = AsyncProducer::new(tx).unwrap();
    assert_eq!(tx.capacity(), 16);
    let values: Vec<u64> = (0..n).map(|i| id << 32 | i).collect();
    for chunk in values.chunks(7) {
        tx.send_all(chunk).await.unwrap();
    }
}

/// Two clients and a client that connects and never says hello, all served
/// by one listener on a current-thread runtime: the server's accepts wait
/// at once, the stalled handshake holds up neither good client, and each
/// good client's values arrive in order, ending when it drops its end.
/// Blocking anywhere in the handshake would hang the only thread (the
/// watchdog then fails the test).
#[test]
fn an_async_server_accepts_two_clients_at_once_on_a_current_thread_runtime() {
    const N: u64 = 5_000;
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let dir = std::env::temp_dir().join(unique_name("ring-async"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("server.sock");
    current_thread().block_on(async {
        let listener = Listener::bind(&path).unwrap();
        let rings: Vec<RingFds> = (0..3)
            .map(|_| RingFds::create("async-server", 16, ElemLayout::of::<u64>()).unwrap())
            .collect();
        // First in the backlog: the first accept to finish takes it.
        let staller = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let clients = async {
            tokio::join!(client(&path, 1, N), client(&path, 2, N));
            done_tx.send(()).unwrap();
        };
        let stall = async move {
            done_rx.await.unwrap();
            drop(staller);
        };
        let (a, b, c, (), ()) = tokio::join!(
            serve(&listener, &rings[0]),
            serve(&listener, &rings[1]),
            serve(&listener, &rings[2]),
            clients,
            stall
        );
        let mut served: Vec<Vec<u64>> = Vec::new();
        let mut refused = 0;
        for result in [a, b, c] {
            match result {
                Ok(got) => served.push(got),
                Err(AcceptError::Io { op, .. }) => {
                    assert_eq!(op, "read hello on");
                    refused += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(refused, 1, "the client that never said hello");
        served.sort_by_key(|got| got.first().copied());
        for (id, got) in (1u64..).zip(&served) {
            assert_eq!(*got, (0..N).map(|i| id << 32 | i).collect::<Vec<_>>());
        }
        assert_eq!(served.len(), 2);
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The async handshake reports refusals like the blocking one, and a
/// blocking client can talk to an async server (the same wire protocol).
#[test]
fn async_handshake_refusals_and_a_blocking_peer() {
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let dir = std::env::temp_dir().join(unique_name("ring-async-refuse"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("server.sock");
    multi_thread().block_on(async {
        let listener = Listener::bind(&path).unwrap();
        let ring = RingFds::create("async-refuse", 8, ElemLayout::of::<u32>()).unwrap();
        // A client asking for the wrong element type is turned away, and told why.
        let connector = Connector::new(&path);
        let (server, client) = tokio::join!(
            listener.accept_consumer_async::<u32>(&ring),
            connector.connect_producer_async::<u64>()
        );
        assert!(matches!(server, Err(AcceptError::Element { size: 8, .. })));
        let e = client.unwrap_err();
        assert_eq!(
            e.to_string(),
            "server refused the connection: different element layout"
        );
        // Nobody listening: the error names the path.
        let nowhere = dir.join("nobody.sock");
        let e = Connector::new(&nowhere)
            .connect_consumer_async::<u32>()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("nobody.sock"), "{e}");
        // A blocking client thread against the async server.
        let client_path = path.clone();
        let client = std::thread::spawn(move || {
            let mut tx = Connector::new(&client_path)
                .connect_producer::<u32>()
                .unwrap();
            tx.send_all(&(0..1000).collect::<Vec<u32>>(), None).unwrap();
        });
        let rx = listener.accept_consumer_async::<u32>(&ring).await.unwrap();
        let got: Vec<u32> = AsyncConsumer::new(rx)
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(got, (0..1000).collect::<Vec<u32>>());
        client.join().unwrap();
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// 10,000 typed values through `Sink` and `Stream`: in order, and the stream
/// ends (rather than waiting forever) once the producer is dropped, or once
/// it is closed while still alive.
#[test]
fn stream_and_sink_round_trip_and_end_when_the_producer_hangs_up() {
    const N: u64 = 10_000;
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    for close_explicitly in [false, true] {
        multi_thread().block_on(async {
            let (tx, rx) = channel::<Sample>(100).unwrap();
            assert_eq!((tx.capacity(), rx.capacity()), (128, 128));
            let mut tx = AsyncProducer::new(tx).unwrap();
            let rx = AsyncConsumer::new(rx).unwrap();
            let (keep_tx, keep_rx) = tokio::sync::oneshot::channel();
            let sender = tokio::spawn(async move {
                let mut items = futures_util::stream::iter((0..N).map(Sample::new).map(Ok));
                // `SinkExt::send_all`: the inherent `send_all` takes a slice.
                SinkExt::send_all(&mut tx, &mut items).await.unwrap();
                if close_explicitly {
                    tx.close().await.unwrap();
                    // Still alive: the end of stream comes from the close alone.
                    keep_tx.send(tx).unwrap_or_else(|_| panic!("receiver gone"));
                }
            });
            let got: Vec<Sample> = rx.map(Result::unwrap).collect().await;
            sender.await.unwrap();
            assert_eq!(got.len() as u64, N, "close {close_explicitly}");
            for (i, sample) in (0..).zip(&got) {
                assert_eq!(*sample, Sample::new(i));
            }
            if close_explicitly {
                drop(keep_rx.await.unwrap());
            }
        });
    }
}

/// Async batches: `send_slice` / `send_all` and `recv_slice` move a sequence
/// in order through a small ring, and `recv_slice` ends with `Disconnected`.
#[test]
fn async_batches_round_trip_in_order() {
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let n: u32 = if cfg!(debug_assertions) {
        100_000
    } else {
        1_000_000
    };
    current_thread().block_on(async {
        let (tx, rx) = channel::<u32>(60).unwrap();
        let mut tx = AsyncProducer::new(tx).unwrap();
        let mut rx = AsyncConsumer::new(rx).unwrap();
        let sender = tokio::spawn(async move {
            let items: Vec<u32> = (0..n).collect();
            let mut rest = &items[..];
            let first = tx.send_slice(&rest[..100]).await.unwrap();
            assert!((1..=64).contains(&first), "{first}");
            rest = &rest[first..];
            tx.send_all(rest).await.unwrap();
        });
        let mut buf = vec![0u32; 50];
        let mut next = 0u32;
        loop {
            match rx.recv_slice(&mut buf).await {
                Ok(got) => {
                    assert!(got > 0);
                    for v in &buf[..got] {
                        assert_eq!(*v, next);
                        next += 1;
                    }
                }
                Err(RingError::Disconnected) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(next, n);
        sender.await.unwrap();
    });
}

/// A few MiB through a byte ring with `tokio::io::copy` on both sides,
/// checked byte for byte; the reader's copy ends at the writer's shutdown
/// (the writer's end is still alive then).
#[test]
fn async_read_and_write_carry_a_byte_stream_through_tokio_io_copy() {
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let len = (4 << 20) + 3;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    multi_thread().block_on(async {
        let (tx, rx) = channel::<u8>(1000).unwrap();
        let mut tx = AsyncProducer::new(tx).unwrap();
        let mut rx = AsyncConsumer::new(rx).unwrap();
        let source = data.clone();
        let writer = tokio::spawn(async move {
            let copied = tokio::io::copy(&mut &source[..], &mut tx).await.unwrap();
            tx.shutdown().await.unwrap();
            // Kept alive until the reader is done: its end of file comes
            // from the shutdown, not from dropping the end.
            (copied, tx)
        });
        let mut out = Vec::with_capacity(len);
        let read = tokio::io::copy(&mut rx, &mut out).await.unwrap();
        let (copied, tx) = writer.await.unwrap();
        drop(tx);
        assert_eq!(copied, len as u64);
        assert_eq!(read, len as u64);
        if let Some(at) = out.iter().zip(&data).position(|(a, b)| a != b) {
            panic!("first difference at byte {at}");
        }
        assert_eq!(out.len(), data.len());
    });
}
