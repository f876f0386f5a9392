//! Ends driven by an external event loop: the readiness fd and the
//! `prepare_park` / `finish_park` handshake, through the public API only.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, epoll};
use shm_ring::{Consumer, Producer, RingError, TrySendError, channel};

/// Whether `fd` is readable right now.
fn readable(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&zero)).unwrap() > 0
}

#[test]
fn prepare_park_arms_only_when_there_is_nothing_to_do() {
    let (mut tx, mut rx) = channel::<u32>(2).unwrap();
    assert_eq!(rx.as_fd().as_raw_fd(), rx.readiness_fd().as_raw_fd());
    assert!(rx.prepare_park().unwrap(), "empty: safe to sleep");
    assert!(!readable(rx.readiness_fd()));
    tx.try_send(1).unwrap();
    assert!(
        readable(rx.readiness_fd()),
        "the send woke the armed consumer"
    );
    rx.finish_park();
    assert!(
        !rx.prepare_park().unwrap(),
        "an element is ready: do not sleep"
    );
    assert_eq!(rx.try_recv().unwrap(), Some(1));
    assert!(rx.prepare_park().unwrap());
    assert!(!readable(rx.readiness_fd()), "the old wake-up was reset");
    rx.finish_park();
    tx.try_send(2).unwrap();
    assert!(
        !readable(rx.readiness_fd()),
        "after finish_park the producer no longer writes the eventfd"
    );

    // The producer side: full, then room made by the consumer.
    tx.try_send(3).unwrap();
    assert!(matches!(tx.try_send(4), Err(TrySendError::Full(4))));
    assert!(tx.prepare_park().unwrap(), "full: safe to sleep");
    assert!(!readable(tx.readiness_fd()));
    assert_eq!(rx.try_recv().unwrap(), Some(2));
    assert!(
        readable(tx.readiness_fd()),
        "the receive woke the armed producer"
    );
    tx.finish_park();
    assert!(!tx.prepare_park().unwrap(), "a slot is free");

    // A hang-up makes the fd readable; what was sent is still received first.
    assert!(rx.prepare_park().is_ok_and(|sleep| !sleep));
    drop(tx);
    assert!(readable(rx.readiness_fd()));
    assert_eq!(rx.try_recv().unwrap(), Some(3));
    assert!(matches!(rx.prepare_park(), Err(RingError::Disconnected)));
}

/// One side of a ring the loop drives, and how far it got.
enum End {
    Rx(Consumer<u64>, u64),
    Tx(Producer<u64>, u64),
}

impl End {
    /// Moves as much as the ring allows; true once this end has finished.
    fn work(&mut self, total: u64) -> bool {
        match self {
            End::Rx(rx, next) => {
                while let Some(v) = rx.try_recv().unwrap() {
                    assert_eq!(v, *next, "out of order");
                    *next += 1;
                }
                false
            }
            End::Tx(tx, next) => {
                while *next < total {
                    match tx.try_send(*next) {
                        Ok(()) => *next += 1,
                        Err(TrySendError::Full(_)) => return false,
                        Err(e) => panic!("{e}"),
                    }
                }
                true
            }
        }
    }

    /// `prepare_park`, with the consumer's end of stream as `Err(Disconnected)`.
    fn prepare_park(&mut self) -> Result<bool, RingError> {
        match self {
            End::Rx(rx, _) => rx.prepare_park(),
            End::Tx(tx, _) => tx.prepare_park(),
        }
    }

    fn finish_park(&mut self) {
        match self {
            End::Rx(rx, _) => rx.finish_park(),
            End::Tx(tx, _) => tx.finish_park(),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            End::Rx(rx, _) => rx.as_fd(),
            End::Tx(tx, _) => tx.readiness_fd(),
        }
    }
}

/// Three rings into this thread and three out of it, each with a blocking
/// peer thread that parks at once (no spinning), multiplexed by one epoll
/// loop that sleeps only after `prepare_park` said it may. A lost wake-up
/// leaves the loop asleep with work pending: every wait has a watchdog
/// deadline, far longer than any legitimate wake-up takes, and missing it
/// fails the test.
#[test]
fn an_epoll_loop_multiplexes_rings_without_losing_a_wakeup() {
    const RINGS: usize = 3;
    const WATCHDOG: Duration = Duration::from_secs(20);
    let total: u64 = if cfg!(debug_assertions) {
        20_000
    } else {
        200_000
    };
    let mut ends = Vec::new();
    let mut peers = Vec::new();
    for _ in 0..RINGS {
        let (mut tx, rx) = channel::<u64>(4).unwrap();
        tx.set_spin(Duration::ZERO);
        peers.push(std::thread::spawn(move || {
            for i in 0..total {
                tx.send(i).unwrap();
            }
        }));
        ends.push(Some(End::Rx(rx, 0)));
        let (tx, mut rx) = channel::<u64>(4).unwrap();
        rx.set_spin(Duration::ZERO);
        peers.push(std::thread::spawn(move || {
            for i in 0..total {
                assert_eq!(rx.recv().unwrap(), i);
            }
            // The loop hangs up once it has sent everything.
            assert!(matches!(rx.recv(), Err(RingError::Disconnected)));
        }));
        ends.push(Some(End::Tx(tx, 0)));
    }
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
    for (i, end) in ends.iter().enumerate() {
        let end = end.as_ref().unwrap();
        let data = epoll::EventData::new_u64(i as u64);
        epoll::add(&epoll, end.fd(), data, epoll::EventFlags::IN).unwrap();
    }
    let (mut sleeps, mut wakeups) = (0u64, 0u64);
    let mut events = Vec::with_capacity(ends.len());
    while ends.iter().any(Option::is_some) {
        let mut busy = false;
        let mut armed = Vec::new();
        for (i, slot) in ends.iter_mut().enumerate() {
            let Some(end) = slot else { continue };
            if end.work(total) {
                // The producer's work is done: hang up (dropping also
                // removes its readiness fd from the epoll set).
                *slot = None;
                continue;
            }
            match end.prepare_park() {
                Ok(true) => armed.push(i),
                Ok(false) => busy = true,
                Err(RingError::Disconnected) => {
                    let End::Rx(_, next) = end else {
                        panic!("the consumer hung up")
                    };
                    assert_eq!(*next, total, "end of stream before everything arrived");
                    *slot = None;
                }
                Err(e) => panic!("{e}"),
            }
        }
        if !busy && !armed.is_empty() {
            sleeps += 1;
            let timeout = rustix::time::Timespec {
                tv_sec: WATCHDOG.as_secs() as i64,
                tv_nsec: 0,
            };
            events.clear();
            let start = Instant::now();
            let n = epoll::wait(
                &epoll,
                rustix::buffer::spare_capacity(&mut events),
                Some(&timeout),
            )
            .unwrap();
            assert!(
                n > 0,
                "lost wake-up: rings {armed:?} armed, nothing woke the loop in {:?}",
                start.elapsed()
            );
            wakeups += n as u64;
        }
        for i in armed {
            if let Some(end) = &mut ends[i] {
                end.finish_park();
            }
        }
    }
    for peer in peers {
        peer.join().unwrap();
    }
    eprintln!("{sleeps} sleeps, {wakeups} readiness events");
    assert!(
        sleeps > 0,
        "the loop never slept: the test did not test parking"
    );
}
