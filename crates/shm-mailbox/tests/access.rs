//! A board shared by services under different users, through an access
//! policy: the test (root) owns it, a process of another uid in the policy's
//! group reads and writes it, one outside the group is refused. Helpers are
//! this test binary re-run as those users (`setpriv`).
#![cfg(not(shm_loom))]

use std::time::Duration;

use shm_mailbox::{AccessPolicy, Config, Mailbox, MailboxError};
use shm_segment::SegmentError;
use shm_testkit::users::{SharedExe, User, can_switch_users};
use shm_testkit::{Watchdog, role, spawn, unique_name};

const GROUP: u32 = 4242;
const NOBODY: u32 = 65534;
const TEST: &str = "a_board_is_shared_with_its_group_only";

fn policy() -> AccessPolicy {
    // The owner is root: the test process creates the board.
    AccessPolicy::owner(0).group(GROUP)
}

fn board_name() -> String {
    std::env::var("BOARD_NAME").expect("BOARD_NAME")
}

/// As a member: read the owner's message, answer with one, fail to remove.
fn member() {
    let board = Mailbox::builder(&board_name())
        .access(policy())
        .open()
        .expect("a group member opens the board");
    let mut buf = [0u8; 32];
    let msg = board.reader(0).unwrap().read(&mut buf).unwrap().unwrap();
    assert_eq!(&buf[..msg.len], b"from the owner");
    board.writer().unwrap().publish(b"from a member").unwrap();
    let err = Mailbox::remove(&board_name()).unwrap_err();
    assert!(
        matches!(
            err,
            MailboxError::Segment(SegmentError::ForeignOwner { uid: 0, .. })
        ),
        "a member never removes the board: {err}"
    );
}

/// As an outsider: refused, with the policy in the message.
fn outsider() {
    let err = Mailbox::builder(&board_name())
        .access(policy())
        .open()
        .unwrap_err();
    let MailboxError::Segment(SegmentError::AccessDenied { object, .. }) = &err else {
        panic!("the outsider is refused by the policy, not otherwise: {err}");
    };
    assert_eq!((object.uid, object.gid, object.mode), (0, GROUP, 0o660));
    assert!(
        err.to_string().contains("owner uid 0 + group gid 4242"),
        "{err}"
    );
    assert!(Mailbox::remove(&board_name()).is_err());
}

#[test]
fn a_board_is_shared_with_its_group_only() {
    match role().as_deref() {
        Some("member") => return member(),
        Some("outsider") => return outsider(),
        _ => {}
    }
    if !can_switch_users(TEST) {
        return;
    }
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let name = unique_name("mbox-access");
    let board = Mailbox::builder(&name)
        .access(policy())
        .open_or_create(Config {
            readers: 2,
            slot_bytes: 32,
        })
        .unwrap();
    board.writer().unwrap().publish(b"from the owner").unwrap();
    let exe = SharedExe::current();
    let run = |user: User, role: &str| {
        let mut cmd = user.role_command(&exe, TEST, role);
        cmd.env("BOARD_NAME", &name);
        spawn(cmd).unwrap().wait_success(Duration::from_secs(30));
    };
    run(User::new(NOBODY, NOBODY).in_group(GROUP), "member");
    run(User::new(NOBODY, NOBODY), "outsider");
    let mut buf = [0u8; 32];
    let msg = board.reader(1).unwrap().read(&mut buf).unwrap().unwrap();
    assert_eq!(&buf[..msg.len], b"from a member");
    drop(board);
    assert!(Mailbox::remove(&name).unwrap(), "its owner removes it");
}
