//! Owned handles (`Arc<Mailbox>`): readers and writers that move into spawned
//! threads and sit in structs, and roles that stay exclusive between the
//! handles of one `Mailbox`.
#![cfg(not(shm_loom))]

use std::sync::Arc;
use std::time::Duration;

use shm_mailbox::{Config, Mailbox, MailboxError, OwnedReader, OwnedWriter};
use shm_testkit::{Watchdog, unique_name};

/// Force-removes the mailbox when the test ends, however it ends.
struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Mailbox::force_remove(&self.0);
    }
}

fn fresh(readers: usize, slot_bytes: usize) -> (Arc<Mailbox>, Cleanup) {
    let name = unique_name("mbox-owned");
    let config = Config {
        readers,
        slot_bytes,
    };
    (
        Arc::new(Mailbox::open_or_create(&name, config).unwrap()),
        Cleanup(name),
    )
}

/// A 32-byte message of four words `v, 2v, 3v, 4v`: a torn copy mixes values.
fn message(v: u64) -> [u8; 32] {
    let mut m = [0u8; 32];
    for (k, c) in m.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&v.wrapping_mul(k as u64 + 1).to_le_bytes());
    }
    m
}

fn value_of(m: &[u8]) -> u64 {
    let v = u64::from_le_bytes(m[..8].try_into().unwrap());
    assert_eq!(m, message(v), "torn message");
    v
}

#[test]
fn owned_reader_in_a_spawned_thread_follows_the_writer() {
    const LAST: u64 = 20_000;
    let _w = Watchdog::new(Duration::from_secs(120));
    let (mailbox, _c) = fresh(2, 32);
    let mut sut = mailbox.claim_owned_reader().unwrap();
    // Moved into a 'static thread: no scope, no borrow of `mailbox`.
    let follower = std::thread::spawn(move || {
        let mut buf = [0u8; 32];
        let (mut seq, mut value, mut reads) = (0, 0, 0u64);
        while value < LAST {
            assert!(
                sut.wait_newer(seq, Duration::from_secs(30)),
                "no newer message within 30 s after seq {seq}"
            );
            let m = sut.read(&mut buf).unwrap().expect("published");
            assert!(m.seq > seq, "sequence went from {seq} to {}", m.seq);
            let v = value_of(&buf[..m.len]);
            assert!(v >= value, "value went back from {value} to {v}");
            (seq, value, reads) = (m.seq, v, reads + 1);
        }
        (seq, reads)
    });
    let mut writer = mailbox.owned_writer().unwrap();
    for v in 1..=LAST {
        writer.publish(&message(v)).unwrap();
    }
    let (seq, reads) = follower.join().unwrap();
    assert_eq!(seq, LAST, "the last message has the last sequence number");
    assert!(reads >= 1);
    drop(writer);
    assert_eq!(mailbox.held_slots(), 0, "the dropped reader holds nothing");
}

/// Both roles in one struct, next to each other: only owned handles allow it.
struct Node {
    writer: OwnedWriter,
    reader: OwnedReader,
}

#[test]
fn a_struct_holds_a_writer_and_a_reader_of_its_own_mailbox() {
    let (mailbox, _c) = fresh(1, 8);
    let mut sut = Node {
        writer: mailbox.owned_writer().unwrap(),
        reader: mailbox.owned_reader(0).unwrap(),
    };
    drop(mailbox);
    // The handles keep the mailbox alive on their own.
    assert_eq!(sut.writer.publish(b"node").unwrap(), 1);
    let mut buf = [0u8; 8];
    let m = sut.reader.read(&mut buf).unwrap().unwrap();
    assert_eq!(&buf[..m.len], b"node");
    assert!(Arc::ptr_eq(sut.writer.mailbox(), sut.reader.mailbox()));
    // ... and move to another thread together.
    let seq = std::thread::spawn(move || sut.writer.publish(b"moved").unwrap())
        .join()
        .unwrap();
    assert_eq!(seq, 2);
}

#[test]
fn handles_of_one_mailbox_never_share_a_role() {
    let (sut, _c) = fresh(2, 8);
    // Liveness locks cannot tell handles of one open file description apart:
    // these must be refused by the mailbox itself, from any thread.
    let writer = sut.owned_writer().unwrap();
    let other = Arc::clone(&sut);
    let second = std::thread::spawn(move || other.owned_writer().map(drop))
        .join()
        .unwrap();
    assert!(
        matches!(second, Err(MailboxError::InUse { ref role }) if role == "writer"),
        "{second:?}"
    );
    assert!(matches!(sut.writer(), Err(MailboxError::InUse { .. })));
    let reader = sut.reader(1).unwrap();
    assert!(matches!(
        sut.owned_reader(1),
        Err(MailboxError::InUse { .. })
    ));
    assert!(matches!(sut.reader(1), Err(MailboxError::InUse { .. })));
    drop((writer, reader));
    assert!(sut.writer().is_ok(), "released on drop");
    assert_eq!(sut.owned_reader(1).unwrap().index(), 1);
}

#[test]
fn every_handle_is_send_and_sync() {
    fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Mailbox>();
    send_and_sync::<OwnedWriter>();
    send_and_sync::<OwnedReader>();
    send_and_sync::<shm_mailbox::Writer<'static>>();
    send_and_sync::<shm_mailbox::Reader<'static>>();
    send_and_sync::<shm_mailbox::TypedWriter<u64>>();
    send_and_sync::<shm_mailbox::TypedReader<u64>>();
}
