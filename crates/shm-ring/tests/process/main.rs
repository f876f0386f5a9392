//! Two real processes: a bulk transfer with checksums, a hostile peer, and
//! SIGKILL of either side mid-transfer followed by a reconnect.
//!
//! Each test re-runs this binary in a role (`shm_testkit::role`).
#![cfg(not(shm_loom))]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use shm_ring::{Connector, ElemLayout, Listener, RingError, RingFds, Role, layout};
use shm_segment::{Access, Mapping};
use shm_testkit::{Watchdog, role, role_command, spawn, unique_name};
use support::AlignedBuf;

#[path = "../../benches/support/mod.rs"]
mod support;

/// 1 GiB in release builds; 64 MiB in debug builds (unoptimised copies and checks).
const BULK_BYTES: u64 = if cfg!(debug_assertions) {
    64 << 20
} else {
    1 << 30
};
const CHUNK: usize = 64 << 10;
const WORD: u64 = 0x9e37_79b9_7f4a_7c15;

fn socket_path() -> PathBuf {
    std::env::temp_dir().join(format!("{}.sock", unique_name("ring")))
}

fn env_path() -> PathBuf {
    PathBuf::from(std::env::var("RING_SOCK").expect("RING_SOCK"))
}

/// Word `i` of the bulk stream.
fn word(i: u64) -> u64 {
    i.wrapping_mul(WORD) ^ (i >> 7)
}

fn fill(buf: &mut [u8], first_word: u64) {
    for (k, chunk) in buf.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&word(first_word + k as u64).to_le_bytes());
    }
}

#[test]
fn bulk_transfer_between_two_processes_is_checksummed() {
    if let Some(role) = role() {
        assert_eq!(role, "bulk-producer");
        let mut tx = Connector::new(env_path()).connect_producer::<u8>().unwrap();
        let mut buf = AlignedBuf::new(CHUNK);
        let mut crc = 0u32;
        let mut sent = 0u64;
        while sent < BULK_BYTES {
            fill(buf.as_mut_slice(), sent / 8);
            crc = crc32c::crc32c_append(crc, buf.as_slice());
            tx.write_all(buf.as_slice()).unwrap();
            sent += CHUNK as u64;
        }
        println!("crc {crc:08x}");
        return;
    }
    let _watchdog = Watchdog::new(Duration::from_secs(120));
    let path = socket_path();
    let listener = Listener::bind(&path).unwrap();
    let ring = RingFds::create("bulk", 1 << 20, ElemLayout::of::<u8>()).unwrap();
    let mut cmd = role_command(
        "bulk_transfer_between_two_processes_is_checksummed",
        "bulk-producer",
    );
    cmd.env("RING_SOCK", &path).stdout(Stdio::piped());
    let mut child = spawn(cmd).unwrap();
    let mut rx = listener.accept_consumer::<u8>(&ring).unwrap();
    let mut buf = AlignedBuf::new(CHUNK);
    let (mut got, mut crc, mut carry) = (0u64, 0u32, Vec::new());
    loop {
        let n = match rx.read(buf.as_mut_slice()) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => panic!("read: {e}"),
        };
        let bytes = &buf.as_slice()[..n];
        crc = crc32c::crc32c_append(crc, bytes);
        carry.extend_from_slice(bytes);
        let whole = carry.len() / 8 * 8;
        for (k, w) in carry[..whole].chunks_exact(8).enumerate() {
            let i = got / 8 + k as u64;
            assert_eq!(
                u64::from_le_bytes(w.try_into().unwrap()),
                word(i),
                "word {i}"
            );
        }
        got += whole as u64;
        carry.drain(..whole);
    }
    assert_eq!(got, BULK_BYTES);
    let mut out = String::new();
    child
        .inner_mut()
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = child.wait_status(Duration::from_secs(30));
    assert!(status.success());
    // The harness prints "test NAME ... " on the same line before our output.
    let theirs = out
        .split("crc ")
        .nth(1)
        .and_then(|r| r.get(..8))
        .unwrap_or_else(|| panic!("no crc in {out:?}"));
    assert_eq!(theirs, format!("{crc:08x}"));
}

/// Overwrites the segment header, the ring's config block, counters and
/// parked flags with random words, forever, and checks that the memfd cannot
/// be shrunk.
fn scribble(ring: &RingFds) -> ! {
    assert!(
        rustix::fs::ftruncate(&ring.memfd, 0).is_err(),
        "sealed memfd shrank"
    );
    let map = map_header(ring);
    let region = map.region();
    let mut x = 0x2545_f491_4f6c_dd1du64 ^ u64::from(std::process::id());
    let lines = layout::PAYLOAD_OFFSET..layout::PAYLOAD_OFFSET + layout::CONSUMER_PARKED + 128;
    loop {
        for off in (0..128).chain(lines.clone()).step_by(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Sometimes plausible values, mostly garbage.
            let v = if x.is_multiple_of(4) { x % 64 } else { x };
            region.write(off, &v).unwrap();
        }
        let _ = shm_ring::RingFds::try_clone(ring);
        std::thread::yield_now();
    }
}

#[test]
fn hostile_peer_scribbling_the_header_gets_corrupt_errors_not_a_crash() {
    if let Some(role) = role() {
        let elem = ElemLayout::of::<u64>();
        let want = if role == "hostile-producer" {
            Role::Producer
        } else {
            Role::Consumer
        };
        let (ring, _link) = Connector::new(env_path()).connect(want, elem).unwrap();
        scribble(&ring);
    }
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    // Our side as consumer, then as producer.
    for (role, we_consume) in [("hostile-producer", true), ("hostile-consumer", false)] {
        let path = socket_path();
        let listener = Listener::bind(&path).unwrap();
        let ring = RingFds::create("hostile", 64, ElemLayout::of::<u64>()).unwrap();
        let mut cmd = role_command(
            "hostile_peer_scribbling_the_header_gets_corrupt_errors_not_a_crash",
            role,
        );
        cmd.env("RING_SOCK", &path);
        let mut child = spawn(cmd).unwrap();
        let (mut corrupt, mut ok, mut other) = (0u32, 0u32, 0u32);
        let end = Instant::now() + Duration::from_millis(700);
        // Our end is opened (and the header validated) before the peer gets
        // the memfd: the peer starts scribbling the moment it connects.
        let elem = ElemLayout::of::<u64>();
        if we_consume {
            let mut rx = shm_ring::Consumer::<u64>::open(&ring, None).unwrap();
            rx.set_peer(Some(listener.accept(&ring, Role::Producer, elem).unwrap()));
            rx.set_spin(Duration::ZERO);
            while Instant::now() < end {
                let mut out = [0u64; 16];
                match rx.recv_slice(&mut out, Some(Duration::from_millis(1))) {
                    Ok(_) => ok += 1,
                    Err(RingError::Corrupt(_)) => corrupt += 1,
                    Err(_) => other += 1,
                }
                let _ = rx.try_recv();
            }
        } else {
            let mut tx = shm_ring::Producer::<u64>::open(&ring, None).unwrap();
            tx.set_peer(Some(listener.accept(&ring, Role::Consumer, elem).unwrap()));
            tx.set_spin(Duration::ZERO);
            let mut i = 0;
            while Instant::now() < end {
                match tx.send_slice(&[i; 16], Some(Duration::from_millis(1))) {
                    Ok(_) => ok += 1,
                    Err(RingError::Corrupt(_)) => corrupt += 1,
                    Err(_) => other += 1,
                }
                // One element at a time also goes through the producer's line.
                if let Err(shm_ring::TrySendError::Failed(_, RingError::Corrupt(_))) =
                    tx.try_send(i)
                {
                    corrupt += 1;
                }
                i += 1;
            }
        }
        eprintln!("{role}: {ok} ok, {corrupt} corrupt, {other} other");
        assert!(
            corrupt > 0,
            "scribbling never detected ({ok} ok, {other} other)"
        );
        child.sigkill_and_wait().unwrap();
    }
}

/// Producer role: sends `position, position + 1, ...` in batches until `RING_TOTAL`.
fn sequence_producer() {
    let total: u64 = std::env::var("RING_TOTAL").unwrap().parse().unwrap();
    let mut tx = Connector::new(env_path())
        .connect_producer::<u64>()
        .unwrap();
    println!("\nresumed at {}", tx.position());
    std::io::stdout().flush().unwrap();
    while tx.position() < total {
        let start = tx.position();
        let batch: Vec<u64> = (start..total.min(start + 37)).collect();
        tx.send_all(&batch, None).unwrap();
    }
}

#[test]
fn sigkill_producer_mid_transfer_then_reconnect_resumes_exactly_once() {
    if role().is_some() {
        return sequence_producer();
    }
    let _watchdog = Watchdog::new(Duration::from_secs(120));
    let total = 400_000u64;
    let path = socket_path();
    let listener = Listener::bind(&path).unwrap();
    let ring = RingFds::create("kill-producer", 256, ElemLayout::of::<u64>()).unwrap();
    let mut rx: Option<shm_ring::Consumer<u64>> = None;
    let mut expect = 0u64;
    // Rounds: SIGKILL at a chosen count, a crash point between slot write and
    // commit, another SIGKILL, then a producer that finishes.
    let rounds: [(Option<u64>, Option<&str>); 4] = [
        (Some(50_000), None),
        (None, Some("ring.before_commit@300")),
        (Some(200_000), None),
        (None, None),
    ];
    for (kill_at, crash) in rounds {
        let mut cmd = role_command(
            "sigkill_producer_mid_transfer_then_reconnect_resumes_exactly_once",
            "producer",
        );
        cmd.env("RING_SOCK", &path)
            .env("RING_TOTAL", total.to_string())
            .stdout(Stdio::piped());
        if let Some(point) = crash {
            cmd.env("SHM_CRASH_AT", point);
        }
        let mut child = spawn(cmd).unwrap();
        let link = listener
            .accept(&ring, Role::Producer, ElemLayout::of::<u64>())
            .unwrap();
        assert_eq!(link.pid(), child.pid());
        match &mut rx {
            None => rx = Some(shm_ring::Consumer::open(&ring, Some(link)).unwrap()),
            Some(rx) => rx.set_peer(Some(link)),
        }
        let rx = rx.as_mut().unwrap();
        let line = resumed_line(&mut child);
        assert_eq!(
            line.trim(),
            format!("resumed at {expect}"),
            "a restarted producer resumes at the shared tail"
        );
        let mut killed_at = None;
        loop {
            if kill_at.is_some_and(|k| expect >= k) && killed_at.is_none() {
                child.kill(rustix::process::Signal::KILL).unwrap();
                killed_at = Some(Instant::now());
            }
            match rx.recv_timeout(Some(Duration::from_secs(20))) {
                Ok(v) => {
                    assert_eq!(v, expect, "exactly once, in order");
                    expect += 1;
                }
                Err(RingError::Disconnected) => break,
                Err(e) => panic!("recv: {e}"),
            }
        }
        let status = child.wait_status(Duration::from_secs(10));
        if kill_at.is_some() || crash.is_some() {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(9), "producer died by SIGKILL");
            assert!(expect < total);
        } else {
            assert!(status.success());
        }
        if let Some(t) = killed_at {
            eprintln!("hang-up seen {:?} after SIGKILL", t.elapsed());
        }
    }
    assert_eq!(expect, total);
}

#[test]
fn sigkill_consumer_mid_transfer_then_reconnect_resumes_at_head() {
    if let Some(role) = role() {
        assert_eq!(role, "consumer");
        let total: u64 = std::env::var("RING_TOTAL").unwrap().parse().unwrap();
        let mut rx = Connector::new(env_path())
            .connect_consumer::<u64>()
            .unwrap();
        println!("\nresumed at {}", rx.position());
        std::io::stdout().flush().unwrap();
        let mut out = [0u64; 64];
        while rx.position() < total {
            let before = rx.position();
            let n = rx.recv_slice(&mut out, None).unwrap();
            for (k, v) in out[..n].iter().enumerate() {
                assert_eq!(*v, before + k as u64, "consumer sees element i in slot i");
            }
        }
        return;
    }
    let _watchdog = Watchdog::new(Duration::from_secs(120));
    let total = 300_000u64;
    let path = socket_path();
    let listener = Listener::bind(&path).unwrap();
    let ring = RingFds::create("kill-consumer", 128, ElemLayout::of::<u64>()).unwrap();
    let mut tx: Option<shm_ring::Producer<u64>> = None;
    for kill_at in [Some(60_000u64), Some(150_000), None] {
        let mut cmd = role_command(
            "sigkill_consumer_mid_transfer_then_reconnect_resumes_at_head",
            "consumer",
        );
        cmd.env("RING_SOCK", &path)
            .env("RING_TOTAL", total.to_string())
            .stdout(Stdio::piped());
        let mut child = spawn(cmd).unwrap();
        let link = listener
            .accept(&ring, Role::Consumer, ElemLayout::of::<u64>())
            .unwrap();
        match &mut tx {
            None => tx = Some(shm_ring::Producer::open(&ring, Some(link)).unwrap()),
            Some(tx) => tx.set_peer(Some(link)),
        }
        let tx = tx.as_mut().unwrap();
        let line = resumed_line(&mut child);
        let resumed: u64 = line
            .trim()
            .strip_prefix("resumed at ")
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            resumed <= tx.position() && tx.position() - resumed <= 128,
            "resumes at the shared head"
        );
        let mut next = tx.position();
        let mut disconnected = false;
        while next < total {
            if kill_at.is_some_and(|k| next >= k) && !disconnected {
                child.kill(rustix::process::Signal::KILL).unwrap();
                disconnected = true;
            }
            match tx.send_timeout(next, Some(Duration::from_secs(20))) {
                Ok(()) => next += 1,
                Err(e) if matches!(e.error, RingError::Disconnected) => break,
                Err(e) => panic!("send: {e}"),
            }
        }
        let status = child.wait_status(Duration::from_secs(20));
        if kill_at.is_some() {
            assert!(!status.success());
            assert!(next < total, "the producer noticed the hang-up");
        } else {
            assert!(status.success(), "last consumer read everything");
        }
    }
}

/// The child's "resumed at N" line (the test harness prints its own lines first).
fn resumed_line(child: &mut shm_testkit::Child) -> String {
    let mut out = BufReader::new(child.inner_mut().stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        if let Some(at) = line.find("resumed at ") {
            let found = line[at..].trim().to_owned();
            // Keep draining, so the child's later output does not hit a closed pipe.
            std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
            return found;
        }
        line.clear();
    }
    panic!("child exited before saying where it resumed");
}

#[test]
fn handshake_refuses_wrong_role_and_layout() {
    let path = socket_path();
    let listener = Listener::bind(&path).unwrap();
    assert!(
        Listener::bind(&path).is_err(),
        "a live socket is not replaced"
    );
    let ring = RingFds::create("hs", 8, ElemLayout::of::<u64>()).unwrap();
    let p2 = path.clone();
    let client = std::thread::spawn(move || {
        let c = Connector::new(&p2);
        let wrong_type = c.connect_producer::<u32>().map(|_| ());
        let wrong_role = c.connect_consumer::<u64>().map(|_| ());
        let ok = c.connect_producer::<u64>().map(|_| ());
        (wrong_type.is_err(), wrong_role.is_err(), ok.is_ok())
    });
    // The probe connection of the second `bind`, the wrong type, the wrong role.
    for _ in 0..3 {
        assert!(
            listener
                .accept(&ring, Role::Producer, ElemLayout::of::<u64>())
                .is_err()
        );
    }
    listener
        .accept(&ring, Role::Producer, ElemLayout::of::<u64>())
        .unwrap();
    assert_eq!(client.join().unwrap(), (true, true, true));
    drop(listener);
    assert!(!path.exists(), "the listener removes its socket file");
}

/// A client of handshake version 1 (whose builds passed and expected
/// layout-2 memfds) is told "no common version" and gets no fds.
#[test]
fn handshake_refuses_a_version_1_client() {
    let path = socket_path();
    let listener = Listener::bind(&path).unwrap();
    let ring = RingFds::create("hs-v1", 8, ElemLayout::of::<u64>()).unwrap();
    let p2 = path.clone();
    let client = std::thread::spawn(move || {
        let mut stream = std::os::unix::net::UnixStream::connect(&p2).unwrap();
        let mut hello = Vec::new();
        hello.extend_from_slice(b"RINGHELO");
        for word in [1u32, 1, 1, 8, 8, 0] {
            hello.extend_from_slice(&word.to_ne_bytes()); // versions 1..=1, producer, u64
        }
        hello.extend_from_slice(&0u64.to_ne_bytes());
        stream.write_all(&hello).unwrap();
        let mut welcome = [0u8; 32];
        stream.read_exact(&mut welcome).unwrap();
        let word = |at: usize| u32::from_ne_bytes(welcome[at..at + 4].try_into().unwrap());
        (welcome[..8].to_vec(), word(8), word(12))
    });
    let err = listener
        .accept(&ring, Role::Producer, ElemLayout::of::<u64>())
        .unwrap_err();
    assert!(
        matches!(err, shm_ring::AcceptError::Version { min: 1, max: 1 }),
        "{err:?}"
    );
    let (magic, version, status) = client.join().unwrap();
    assert_eq!(magic, b"RINGWLCM");
    assert_eq!((version, status), (shm_ring::PROTOCOL_VERSION, 1));
    assert_eq!(shm_ring::PROTOCOL_VERSION, 2);
}

/// The `parked` flag at payload offset `offset` ([`layout::PRODUCER_PARKED`]
/// or [`layout::CONSUMER_PARKED`]) in a mapping from [`map_header`].
fn park_flag(map: &Mapping, offset: usize) -> &shm_sync::atomic::AtomicU32 {
    map.region()
        .atomic_u32(layout::PAYLOAD_OFFSET + offset)
        .unwrap()
}

/// Maps the ring's control pages: the segment header page and the payload's
/// first page (config block, counter lines, parked flags).
fn map_header(ring: &RingFds) -> Mapping {
    Mapping::map(
        rustix::fd::AsFd::as_fd(&ring.memfd),
        0,
        layout::PAYLOAD_OFFSET + layout::SLOTS,
        Access::ReadWrite,
    )
    .unwrap()
}

/// Waits (bounded) until `flag` reads 1: the side that owns it has announced
/// that it is about to sleep.
fn await_parked(flag: &shm_sync::atomic::AtomicU32, who: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    // Relaxed: we only want to see the flag; the ring's own ordering is not ours to test here.
    while flag.load(shm_sync::atomic::Ordering::Relaxed) == 0 {
        assert!(Instant::now() < end, "the {who} never parked");
        std::thread::yield_now();
    }
}

/// How long a side may stay asleep after the event it waits for: far above
/// `PARK_RECHECK`, far below a hang.
const LOST_WAKEUP_BOUND: Duration = Duration::from_secs(10);

/// How many wake-ups each side of the deterministic tests loses.
const LOST_WAKEUPS: u64 = 10;

#[test]
fn cleared_park_flags_cost_a_delay_not_a_hang() {
    use shm_sync::atomic::Ordering;
    use std::sync::mpsc;
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let ring = RingFds::create("lost-wakeup", 4, ElemLayout::of::<u64>()).unwrap();
    let map = map_header(&ring);
    let mut tx = shm_ring::Producer::<u64>::open(&ring, None).unwrap();
    let mut rx = shm_ring::Consumer::<u64>::open(&ring, None).unwrap();
    tx.set_spin(Duration::ZERO);
    rx.set_spin(Duration::ZERO);

    // A consumer asleep on the empty ring: each time, its flag is cleared
    // behind its back before the producer publishes, so the producer skips
    // the wake-up.
    let (got_tx, got) = mpsc::channel();
    let consumer = std::thread::spawn(move || {
        for _ in 0..LOST_WAKEUPS {
            got_tx.send(rx.recv().unwrap()).unwrap();
        }
        rx
    });
    let flag = park_flag(&map, layout::CONSUMER_PARKED);
    let mut slowest = Duration::ZERO;
    for i in 0..LOST_WAKEUPS {
        await_parked(flag, "consumer");
        // Relaxed: a hostile store; nothing is published with it.
        flag.store(0, Ordering::Relaxed);
        tx.send(i).unwrap();
        let sent = Instant::now();
        let v = got
            .recv_timeout(LOST_WAKEUP_BOUND)
            .expect("the consumer sleeps on although an element is ready");
        assert_eq!(v, i);
        slowest = slowest.max(sent.elapsed());
    }
    let mut rx = consumer.join().unwrap();
    eprintln!("consumer: slowest delivery after a lost wake-up {slowest:?}");

    // A producer asleep on the full ring: its flag is cleared before the
    // consumer frees a slot, so the consumer skips the wake-up.
    tx.send_all(&[0; 4], None).unwrap();
    let (sent_tx, sent) = mpsc::channel();
    let producer = std::thread::spawn(move || {
        for i in 0..LOST_WAKEUPS {
            tx.send(100 + i).unwrap();
            sent_tx.send(i).unwrap();
        }
    });
    let flag = park_flag(&map, layout::PRODUCER_PARKED);
    let mut slowest = Duration::ZERO;
    for i in 0..LOST_WAKEUPS {
        await_parked(flag, "producer");
        // Relaxed: as above.
        flag.store(0, Ordering::Relaxed);
        assert!(rx.try_recv().unwrap().is_some());
        let freed = Instant::now();
        let n = sent
            .recv_timeout(LOST_WAKEUP_BOUND)
            .expect("the producer sleeps on although a slot is free");
        assert_eq!(n, i);
        slowest = slowest.max(freed.elapsed());
    }
    producer.join().unwrap();
    eprintln!("producer: slowest send after a lost wake-up {slowest:?}");
}

#[test]
fn a_peer_clearing_park_flags_never_hangs_the_transfer() {
    const SCRIBBLE: Duration = Duration::from_millis(1500);
    if let Some(role) = role() {
        assert_eq!(role, "flag-scribbler");
        // A client that takes the ring's fds and then, for a while, clears
        // both `parked` flags as fast as it can.
        let (ring, _link) = Connector::new(env_path())
            .connect(Role::Producer, ElemLayout::of::<u64>())
            .unwrap();
        let map = map_header(&ring);
        let flags = [
            park_flag(&map, layout::PRODUCER_PARKED),
            park_flag(&map, layout::CONSUMER_PARKED),
        ];
        let end = Instant::now() + SCRIBBLE;
        while Instant::now() < end {
            for flag in flags {
                // Relaxed: a hostile store; nothing is published with it.
                flag.store(0, shm_sync::atomic::Ordering::Relaxed);
            }
            std::hint::spin_loop();
        }
        return;
    }
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let path = socket_path();
    let listener = Listener::bind(&path).unwrap();
    let ring = RingFds::create("scribbled-flags", 4, ElemLayout::of::<u64>()).unwrap();
    let mut cmd = role_command(
        "a_peer_clearing_park_flags_never_hangs_the_transfer",
        "flag-scribbler",
    );
    cmd.env("RING_SOCK", &path);
    let mut child = spawn(cmd).unwrap();
    let _link = listener
        .accept(&ring, Role::Producer, ElemLayout::of::<u64>())
        .unwrap();
    // Both ends are ours (no peer socket: the scribbler's exit is not a hang-up).
    let mut tx = shm_ring::Producer::<u64>::open(&ring, None).unwrap();
    let mut rx = shm_ring::Consumer::<u64>::open(&ring, None).unwrap();
    tx.set_spin(Duration::ZERO);
    rx.set_spin(Duration::ZERO);
    let (done_tx, done) = std::sync::mpsc::channel();
    let consumer = std::thread::spawn(move || {
        let mut expect = 0u64;
        loop {
            let v = rx.recv().unwrap();
            if v == u64::MAX {
                break;
            }
            assert_eq!(v, expect, "in order, exactly once");
            expect += 1;
            // Now and then the consumer is slow, so the producer parks on a full ring.
            if expect.is_multiple_of(64) {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        done_tx.send(expect).unwrap();
    });
    // Send while the scribbler runs, then some more after it stopped; pause
    // now and then, so the consumer parks on an empty ring.
    let (mut next, mut after) = (0u64, None);
    while after.is_none_or(|n| next < n + 500) {
        tx.send_timeout(next, Some(LOST_WAKEUP_BOUND))
            .expect("the producer sleeps on although slots are free");
        next += 1;
        if next.is_multiple_of(50) {
            std::thread::sleep(Duration::from_millis(2));
        }
        if after.is_none() && child.wait_timeout(Duration::ZERO).unwrap().is_some() {
            after = Some(next);
        }
    }
    tx.send(u64::MAX).unwrap();
    let got = done
        .recv_timeout(LOST_WAKEUP_BOUND)
        .expect("the consumer sleeps on although elements are ready");
    assert_eq!(got, next);
    consumer.join().unwrap();
    child.wait_success(Duration::from_secs(10));
    eprintln!("{next} elements through a ring whose park flags were being cleared");
}

#[test]
fn cleared_park_flags_cost_async_waiters_a_delay_not_a_hang() {
    use shm_ring::asyncio::{AsyncConsumer, AsyncProducer};
    use shm_sync::atomic::Ordering;
    use std::sync::mpsc;
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    // No time driver: the re-check must not depend on tokio's timers.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_io()
        .build()
        .unwrap();
    let ring = RingFds::create("lost-wakeup-async", 4, ElemLayout::of::<u64>()).unwrap();
    let map = map_header(&ring);
    let mut tx = shm_ring::Producer::<u64>::open(&ring, None).unwrap();
    let rx = shm_ring::Consumer::<u64>::open(&ring, None).unwrap();

    // An async consumer asleep on the empty ring, its flag cleared before each send.
    let (got_tx, got) = mpsc::channel();
    let consumer = rt.spawn(async move {
        let mut rx = AsyncConsumer::new(rx).unwrap();
        for _ in 0..LOST_WAKEUPS {
            got_tx.send(rx.recv().await.unwrap()).unwrap();
        }
        rx
    });
    let flag = park_flag(&map, layout::CONSUMER_PARKED);
    for i in 0..LOST_WAKEUPS {
        await_parked(flag, "async consumer");
        // Relaxed: a hostile store; nothing is published with it.
        flag.store(0, Ordering::Relaxed);
        tx.try_send(i).unwrap();
        let v = got
            .recv_timeout(LOST_WAKEUP_BOUND)
            .expect("the async consumer sleeps on although an element is ready");
        assert_eq!(v, i);
    }
    let mut rx = rt.block_on(consumer).unwrap();

    // An async producer asleep on the full ring, its flag cleared before each release.
    tx.send_all(&[0; 4], None).unwrap();
    let (sent_tx, sent) = mpsc::channel();
    let producer = rt.spawn(async move {
        let mut tx = AsyncProducer::new(tx).unwrap();
        for i in 0..LOST_WAKEUPS {
            tx.send(100 + i).await.unwrap();
            sent_tx.send(i).unwrap();
        }
    });
    let flag = park_flag(&map, layout::PRODUCER_PARKED);
    for i in 0..LOST_WAKEUPS {
        await_parked(flag, "async producer");
        // Relaxed: as above.
        flag.store(0, Ordering::Relaxed);
        assert!(rx.get_mut().try_recv().unwrap().is_some());
        let n = sent
            .recv_timeout(LOST_WAKEUP_BOUND)
            .expect("the async producer sleeps on although a slot is free");
        assert_eq!(n, i);
    }
    rt.block_on(producer).unwrap();
}

#[test]
fn socket_and_system_call_errors_name_the_object_and_the_os_error() {
    use std::error::Error as _;
    let dir = std::env::temp_dir().join(unique_name("no-such-dir"));
    let path = dir.join("ring.sock");

    let err = Connector::new(&path).connect_consumer::<u64>().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "connect to {}: No such file or directory (os error 2)",
            path.display()
        )
    );
    let source = err.source().expect("the OS error is the source");
    let source = source.downcast_ref::<std::io::Error>().unwrap();
    assert_eq!(source.raw_os_error(), Some(2));

    let err = Listener::bind(&path).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(
        err.to_string(),
        format!(
            "bind {}: No such file or directory (os error 2)",
            path.display()
        )
    );
    let inner = err.get_ref().expect("a wrapped error");
    let os = inner.source().expect("the OS error is the source");
    assert_eq!(
        os.downcast_ref::<std::io::Error>().unwrap().raw_os_error(),
        Some(2)
    );

    let err = RingError::Io {
        op: "poll",
        source: rustix::io::Errno::BADF,
    };
    assert_eq!(
        err.to_string(),
        "poll failed: Bad file descriptor (os error 9)"
    );
    assert!(err.source().is_some());
    let err = shm_ring::OpenError::Io {
        op: "dup",
        source: rustix::io::Errno::MFILE,
    };
    assert_eq!(
        err.to_string(),
        "dup failed: Too many open files (os error 24)"
    );
}
