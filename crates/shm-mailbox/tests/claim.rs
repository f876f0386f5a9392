//! Readers that claim any free index instead of naming one: distinct indices,
//! a clear error when all are taken, explicit indices respected, and the
//! index of a SIGKILLed claimer free again.
#![cfg(not(shm_loom))]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use shm_mailbox::{Config, Mailbox, MailboxError};
use shm_testkit::{Watchdog, role, role_command, spawn, unique_name};

struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Mailbox::force_remove(&self.0);
    }
}

fn config(readers: usize) -> Config {
    Config {
        readers,
        slot_bytes: 8,
    }
}

#[test]
fn claims_beyond_the_reader_count_are_refused() {
    let name = unique_name("mbox-claim");
    let _c = Cleanup(name.clone());
    let sut = Arc::new(Mailbox::open_or_create(&name, config(3)).unwrap());
    // A second open is a second open file description, as another process has.
    let other = Mailbox::open(&name).unwrap();
    let a = sut.claim_reader().unwrap();
    let b = other.claim_reader().unwrap();
    let c = sut.claim_owned_reader().unwrap();
    let indices: BTreeSet<usize> = [a.index(), b.index(), c.index()].into();
    assert_eq!(indices, BTreeSet::from([0, 1, 2]), "three distinct indices");
    for err in [
        sut.claim_reader().map(drop).unwrap_err(),
        other.claim_reader().map(drop).unwrap_err(),
        sut.claim_owned_reader().map(drop).unwrap_err(),
    ] {
        assert!(
            matches!(err, MailboxError::NoFreeReader { readers: 3 }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "all 3 reader indices of this mailbox are held by live handles"
        );
    }
    let freed = b.index();
    drop(b);
    let again = sut.claim_reader().unwrap();
    assert_eq!(again.index(), freed, "the released index is claimed again");
    drop((a, c, again));
}

#[test]
fn claims_skip_explicitly_held_indices() {
    let name = unique_name("mbox-claim-mixed");
    let _c = Cleanup(name.clone());
    let sut = Mailbox::open_or_create(&name, config(3)).unwrap();
    let explicit = sut.reader(0).unwrap();
    let other = Mailbox::open(&name).unwrap();
    let explicit_elsewhere = other.reader(2).unwrap();
    let claimed = sut.claim_reader().unwrap();
    assert_eq!(claimed.index(), 1, "the only index nobody holds");
    assert!(matches!(sut.reader(1), Err(MailboxError::InUse { .. })));
    assert!(matches!(
        other.claim_reader(),
        Err(MailboxError::NoFreeReader { .. })
    ));
    // A claimed reader reads like any other.
    sut.writer().unwrap().publish(b"shared").unwrap();
    let mut claimed = claimed;
    let mut buf = [0u8; 8];
    assert_eq!(claimed.read(&mut buf).unwrap().unwrap().seq, 1);
    drop((explicit, explicit_elsewhere));
}

const KILLED: &str = "killed_claimers_index_is_claimed_again";

/// The child: claims an index, reports it, and waits to be killed.
fn claim_and_wait(name: &str) {
    let mb = Mailbox::open(name).unwrap();
    let reader = mb.claim_reader().unwrap();
    println!("RESULT claimed {}", reader.index());
    // Killed long before this ends (the parent's watchdog is shorter).
    reader.wait_newer(u64::MAX, Duration::from_secs(600));
    unreachable!("the parent SIGKILLs this process");
}

#[test]
fn killed_claimers_index_is_claimed_again() {
    if role().is_some() {
        return claim_and_wait(&std::env::var("MAILBOX").unwrap());
    }
    let _w = Watchdog::new(Duration::from_secs(120));
    let name = unique_name("mbox-claim-kill");
    let _c = Cleanup(name.clone());
    let sut = Mailbox::open_or_create(&name, config(2)).unwrap();
    sut.writer().unwrap().publish(b"before").unwrap();
    let mut child = role_command(KILLED, "claimer");
    child
        .env("MAILBOX", &name)
        .stdout(std::process::Stdio::piped());
    let mut child = spawn(child).unwrap();
    let mut lines = child.stdout_lines();
    let claimed = lines
        .wait_for("RESULT claimed ")
        .split_once("RESULT claimed ")
        .unwrap()
        .1
        .to_owned();
    assert_eq!(claimed, "0", "the lowest free index");
    let mine = sut.claim_reader().unwrap();
    assert_eq!(mine.index(), 1);
    assert!(
        matches!(
            sut.claim_reader(),
            Err(MailboxError::NoFreeReader { readers: 2 })
        ),
        "the live child holds index 0"
    );
    let status = child.sigkill_and_wait().unwrap();
    assert!(!status.success());
    // The kernel released the child's lock when it died.
    let mut reclaimed = sut.claim_reader().unwrap();
    assert_eq!(reclaimed.index(), 0, "the dead claimer's index");
    let mut buf = [0u8; 8];
    let m = reclaimed.read(&mut buf).unwrap().unwrap();
    assert_eq!(&buf[..m.len], b"before");
    drop((mine, reclaimed));
}
