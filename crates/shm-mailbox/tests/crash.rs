//! A writer SIGKILLed in the middle of copying a message (after every chunk
//! of it, by the `mailbox.writer_mid_slot` crash point) leaves the previous
//! message complete and readable; a restarted writer recovers it and
//! publishes again. Needs `--features fault-injection`.
#![cfg(all(feature = "fault-injection", not(shm_loom)))]

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use shm_mailbox::protocol::COPY_CHUNK;
use shm_mailbox::{Config, Mailbox};
use shm_testkit::{Watchdog, role, role_command, spawn, unique_name};

/// Two whole chunks and a partial one: three crash-point hits per message.
const MESSAGE: usize = 2 * COPY_CHUNK + 64;
const HITS: u64 = MESSAGE.div_ceil(COPY_CHUNK) as u64;

const CONFIG: Config = Config {
    readers: 2,
    slot_bytes: MESSAGE,
};

/// A message whose words all equal `v`.
fn message(v: u64) -> [u8; MESSAGE] {
    let mut m = [0u8; MESSAGE];
    for c in m.chunks_exact_mut(8) {
        c.copy_from_slice(&v.to_le_bytes());
    }
    m
}

fn value_of(m: &[u8; MESSAGE]) -> u64 {
    let v = u64::from_le_bytes(m[..8].try_into().unwrap());
    assert!(
        m.chunks_exact(8)
            .all(|c| u64::from_le_bytes(c.try_into().unwrap()) == v),
        "torn message"
    );
    v
}

#[test]
fn writer_killed_mid_write_leaves_the_last_message() {
    if let Some(r) = role() {
        assert_eq!(r, "writer");
        let name = std::env::var("MAILBOX").unwrap();
        let mb = Mailbox::open_or_create(&name, CONFIG).unwrap();
        let mut w = mb.writer().unwrap();
        let mut buf = [0u8; MESSAGE];
        let last = w.last(&mut buf).unwrap().map_or(0, |_| value_of(&buf));
        // The crash point fires inside one of these publishes.
        w.publish(&message(last + 1)).unwrap();
        w.publish(&message(last + 2)).unwrap();
        return;
    }
    let _w = Watchdog::new(Duration::from_secs(120));
    let name = unique_name("mbox-crash");
    let mb = Mailbox::open_or_create(&name, CONFIG).unwrap();
    let mut reader = mb.reader(0).unwrap();
    let mut expected_floor = 0;
    // Each run publishes two messages: 2 * HITS crash-point hits. Hits
    // 1..=HITS kill it during the first, the others during the second.
    for hit in 1..=2 * HITS {
        let mut child = spawn(
            role_command("writer_killed_mid_write_leaves_the_last_message", "writer")
                .env("MAILBOX", &name)
                .env("SHM_CRASH_AT", format!("mailbox.writer_mid_slot@{hit}")),
        )
        .unwrap();
        let status = child.wait_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(
            status.and_then(|s| s.signal()),
            Some(9),
            "writer with crash at hit {hit} should have SIGKILLed itself: {status:?}"
        );
        let mut buf = [0u8; MESSAGE];
        let m = reader.read(&mut buf).unwrap();
        let v = m.map_or(0, |_| value_of(&buf));
        assert!(
            v >= expected_floor,
            "hit {hit}: went back to {v} from {expected_floor}"
        );
        assert_eq!(
            v,
            expected_floor + u64::from(hit > HITS),
            "hit {hit}: the last complete message"
        );
        expected_floor = v;
    }
    // A clean restart recovers the last value and publishes two more.
    let child = spawn(
        role_command("writer_killed_mid_write_leaves_the_last_message", "writer")
            .env("MAILBOX", &name),
    );
    let status = child
        .unwrap()
        .wait_timeout(Duration::from_secs(60))
        .unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let mut buf = [0u8; MESSAGE];
    reader.read(&mut buf).unwrap().unwrap();
    assert_eq!(value_of(&buf), expected_floor + 2);
    drop(reader);
    drop(mb);
    Mailbox::remove(&name).unwrap();
}
