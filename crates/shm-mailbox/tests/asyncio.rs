//! `wait_newer_async` on tokio's current-thread and multi-thread runtimes: it
//! follows a writer in another thread, waits while nothing is new, and a
//! dropped wait gives its blocking-pool thread back within a bound.
#![cfg(all(feature = "tokio", not(shm_loom)))]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use shm_mailbox::{ASYNC_WAIT_SLICE, Config, Mailbox, MailboxError, OwnedReader, TypedMailbox};
use shm_testkit::{Watchdog, unique_name};
use tokio::runtime::{Builder, Runtime};
use tokio::time::timeout;

struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Mailbox::force_remove(&self.0);
    }
}

fn fresh() -> (Arc<Mailbox>, Cleanup) {
    let name = unique_name("mbox-async");
    let config = Config {
        readers: 2,
        slot_bytes: 8,
    };
    (
        Arc::new(Mailbox::open_or_create(&name, config).unwrap()),
        Cleanup(name),
    )
}

/// Both runtime flavours, each with a single blocking-pool thread (so that a
/// thread kept by a dropped wait shows as other blocking work not running).
fn runtimes() -> [(&'static str, Runtime); 2] {
    let current = Builder::new_current_thread()
        .enable_time()
        .max_blocking_threads(1)
        .build()
        .unwrap();
    let multi = Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .max_blocking_threads(1)
        .build()
        .unwrap();
    [("current-thread", current), ("multi-thread", multi)]
}

/// Follows the mailbox until it reads `last`; returns how many reads it took.
async fn follow(mut reader: OwnedReader, last: u64) -> Result<u64, MailboxError> {
    let (mut seq, mut value, mut reads) = (0, 0, 0);
    let mut buf = [0u8; 8];
    while value < last {
        reader.wait_newer_async(seq).await?;
        let m = reader
            .read(&mut buf)?
            .expect("woken for a published message");
        assert!(
            m.seq > seq,
            "woken without a newer message: {} after {seq}",
            m.seq
        );
        let v = u64::from_le_bytes(buf);
        assert!(v > value, "value went back from {value} to {v}");
        (seq, value, reads) = (m.seq, v, reads + 1);
    }
    Ok(reads)
}

#[test]
fn wait_newer_async_follows_a_writer_on_both_runtimes() {
    const LAST: u64 = 2_000;
    let _w = Watchdog::new(Duration::from_secs(120));
    for (flavour, runtime) in runtimes() {
        let (mailbox, _c) = fresh();
        let reader = mailbox.claim_owned_reader().unwrap();
        let mut writer = mailbox.owned_writer().unwrap();
        runtime.block_on(async {
            let r = mailbox.claim_owned_reader().unwrap();
            assert!(
                timeout(Duration::from_millis(50), r.wait_newer_async(0))
                    .await
                    .is_err(),
                "{flavour}: returned with nothing published"
            );
        });
        // A spawned task (`Send + 'static`) follows a writer in another thread.
        let task = runtime.spawn(follow(reader, LAST));
        let publisher = std::thread::spawn(move || {
            for v in 1..=LAST {
                writer.publish(&v.to_le_bytes()).unwrap();
                // Let the follower catch up now and then, so that it also
                // sleeps in the futex and is woken by a publish.
                if v % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        let reads = runtime
            .block_on(async { timeout(Duration::from_secs(60), task).await })
            .unwrap_or_else(|_| panic!("{flavour}: the follower never read the last value"))
            .unwrap()
            .unwrap();
        publisher.join().unwrap();
        assert!((1..=LAST).contains(&reads), "{flavour}: {reads} reads");
    }
}

#[test]
fn dropped_wait_gives_its_thread_back_within_a_bound() {
    let _w = Watchdog::new(Duration::from_secs(120));
    for (flavour, runtime) in runtimes() {
        let (mailbox, _c) = fresh();
        let reader = mailbox.claim_owned_reader().unwrap();
        let mut writer = mailbox.owned_writer().unwrap();
        let freed_after = runtime.block_on(async {
            // Dropped by the timeout while its thread sleeps in the futex.
            let waited = timeout(Duration::from_millis(20), reader.wait_newer_async(0)).await;
            assert!(waited.is_err(), "{flavour}: nothing was published");
            // The pool has one thread: this runs only once the dropped wait's
            // thread has noticed and returned.
            let start = Instant::now();
            let freed = timeout(
                ASYNC_WAIT_SLICE * 50,
                tokio::task::spawn_blocking(move || start.elapsed()),
            )
            .await;
            freed.ok().map(|joined| joined.unwrap())
        });
        if freed_after.is_none() {
            // Unstick the thread first, so that dropping the runtime (which
            // waits for its blocking threads) cannot hang the failing test.
            writer.publish(b"unstick").unwrap();
        }
        let freed_after =
            freed_after.unwrap_or_else(|| panic!("{flavour}: the dropped wait kept its thread"));
        // The bound is ASYNC_WAIT_SLICE; loaded machines may add to it.
        assert!(
            freed_after < ASYNC_WAIT_SLICE * 50,
            "{flavour}: {freed_after:?}"
        );
        // Shutting down waits for blocking threads: none is left stuck.
        let start = Instant::now();
        runtime.shutdown_timeout(Duration::from_secs(30));
        assert!(start.elapsed() < Duration::from_secs(30), "{flavour}");
    }
}

#[test]
fn typed_readers_wait_asynchronously_too() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let name = unique_name("mbox-async-typed");
    let _c = Cleanup(name.clone());
    let sut = TypedMailbox::<u64>::open_or_create(&name, 1).unwrap();
    let mut reader = sut.claim_reader().unwrap();
    let mut writer = sut.writer().unwrap();
    let runtime = Builder::new_current_thread().enable_time().build().unwrap();
    let value = runtime.block_on(async move {
        let publisher = std::thread::spawn(move || writer.publish(&41).unwrap());
        timeout(Duration::from_secs(30), reader.wait_newer_async(0))
            .await
            .expect("woken by the publish")
            .unwrap();
        publisher.join().unwrap();
        reader.read().unwrap()
    });
    assert_eq!(value, Some(41));
}

#[test]
fn waiting_outside_a_runtime_is_an_error() {
    let (mailbox, _c) = fresh();
    let reader = mailbox.claim_owned_reader().unwrap();
    let mut sut = pin!(reader.wait_newer_async(0));
    let polled = sut.as_mut().poll(&mut Context::from_waker(Waker::noop()));
    assert!(
        matches!(
            polled,
            Poll::Ready(Err(MailboxError::WaitAborted {
                reason: "not inside a tokio runtime"
            }))
        ),
        "{polled:?}"
    );
}
