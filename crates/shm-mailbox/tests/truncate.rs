//! Another process shrinks a mailbox's /dev/shm object under a live writer
//! and reader: they get an error instead of dying of SIGBUS, and once they
//! are gone the next `open_or_create` replaces the object.
#![cfg(not(shm_loom))]

use std::time::{Duration, Instant};

use shm_mailbox::{Config, Mailbox, MailboxError};
use shm_segment::SegmentError;
use shm_testkit::{Watchdog, role, role_command, shm_objects_with_prefix, spawn, unique_name};

const CONFIG: Config = Config {
    readers: 2,
    slot_bytes: 64,
};
const TEST: &str = "truncated_mailbox_gives_errors_then_is_reclaimed";

/// Publishes and reads until an operation fails; prints the error.
fn publish_and_read_until_error(name: &str) {
    let mb = Mailbox::open_or_create(name, CONFIG).unwrap();
    let mut w = mb.writer().unwrap();
    let mut r = mb.reader(0).unwrap();
    let mut buf = [0u8; 64];
    println!("RESULT ready");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0u64;
    let err = loop {
        assert!(
            Instant::now() < deadline,
            "the truncation was never reported"
        );
        i += 1;
        if let Err(e) = w.publish(&i.to_le_bytes()) {
            break e;
        }
        match r.read(&mut buf) {
            Err(e) => break e,
            Ok(m) => assert!(m.is_some_and(|m| m.seq > 0), "a published message"),
        }
    };
    println!("RESULT error: {err}");
    assert!(
        matches!(err, MailboxError::Segment(SegmentError::Truncated { .. })),
        "{err:?}"
    );
    assert!(mb.is_truncated());
}

#[test]
fn truncated_mailbox_gives_errors_then_is_reclaimed() {
    if role().is_some() {
        return publish_and_read_until_error(&std::env::var("MAILBOX").unwrap());
    }
    let _w = Watchdog::new(Duration::from_secs(60));
    let name = unique_name("mbox-trunc");
    let mut child = role_command(TEST, "writer");
    child
        .env("MAILBOX", &name)
        .stdout(std::process::Stdio::piped());
    let mut child = spawn(child).unwrap();
    let mut lines = child.stdout_lines();
    lines.wait_for("RESULT ready");
    // `truncate -s 0 /dev/shm/NAME`
    std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/{name}"))
        .unwrap()
        .set_len(0)
        .unwrap();
    let status = child.wait_status(Duration::from_secs(30));
    let rest: Vec<String> = lines.collect();
    assert!(
        status.success(),
        "the writer must survive: {status:?} {rest:?}"
    );
    assert!(
        rest.iter()
            .any(|l| l.contains("RESULT error: segment ") && l.contains("truncated")),
        "{rest:?}"
    );
    // Nobody has it open any more: a restart gets a fresh mailbox.
    let mb = Mailbox::open_or_create(&name, CONFIG).unwrap();
    assert_eq!(mb.latest_seq(), 0, "a fresh object");
    let mut w = mb.writer().unwrap();
    assert_eq!(w.publish(b"again").unwrap(), 1);
    drop(w);
    drop(mb);
    assert!(Mailbox::remove(&name).unwrap());
    assert!(shm_objects_with_prefix(&name).is_empty());
}
