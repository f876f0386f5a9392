//! Typed mailboxes: values of one plain-data type in and out, and a mailbox
//! bound to one type refusing every other.
#![cfg(not(shm_loom))]

use std::sync::Arc;
use std::time::Duration;

use shm_mailbox::{Config, LayoutError, Mailbox, MailboxError, TypedMailbox};
use shm_testkit::unique_name;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Mailbox::force_remove(&self.0);
    }
}

#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Position {
    x: f64,
    y: f64,
    id: u32,
    flags: u32,
}

/// The same size as `Position`, another type.
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Velocity {
    dx: f64,
    dy: f64,
    id: u32,
    flags: u32,
}

fn position(i: u32) -> Position {
    Position {
        x: f64::from(i) * 0.5,
        y: -f64::from(i),
        id: i,
        flags: !i,
    }
}

#[test]
fn typed_values_round_trip() {
    let name = unique_name("mbox-typed");
    let _c = Cleanup(name.clone());
    let sut = TypedMailbox::<Position>::open_or_create(&name, 2).unwrap();
    let mut writer = sut.writer().unwrap();
    let mut reader = sut.claim_reader().unwrap();
    assert_eq!(reader.read().unwrap(), None, "nothing published yet");
    assert_eq!(writer.last().unwrap(), None);
    assert_eq!(writer.publish(&position(1)).unwrap(), 1);
    assert_eq!(writer.publish(&position(2)).unwrap(), 2);
    assert_eq!(reader.read().unwrap(), Some(position(2)));
    assert_eq!(reader.read_with_seq().unwrap(), Some((2, position(2))));
    assert_eq!(writer.last().unwrap(), Some(position(2)));
    assert!(reader.wait_newer(1, Duration::ZERO));
    // Another process opening it typed, by name, of whatever reader count.
    let other = TypedMailbox::<Position>::open(&name).unwrap();
    assert_eq!(other.mailbox().config().readers, 2);
    assert_eq!(other.reader(1).unwrap().read().unwrap(), Some(position(2)));
    // The typed handles are owned: they move into threads.
    let seq = std::thread::spawn(move || writer.publish(&position(3)).unwrap())
        .join()
        .unwrap();
    assert_eq!(seq, 3);
    let follower = std::thread::spawn(move || reader.read().unwrap());
    assert_eq!(follower.join().unwrap(), Some(position(3)));
}

#[test]
fn a_mailbox_of_one_type_refuses_another() {
    let name = unique_name("mbox-typed-other");
    let _c = Cleanup(name.clone());
    let sut = TypedMailbox::<Position>::open_or_create(&name, 2).unwrap();
    let err = TypedMailbox::<Velocity>::open_or_create(&name, 2).unwrap_err();
    match &err {
        MailboxError::TypeMismatch {
            expected,
            expected_size: 24,
            found_size: 24,
            ..
        } => assert!(expected.ends_with("Velocity"), "{expected}"),
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("another payload type") && text.contains("Velocity"),
        "{text}"
    );
    assert!(matches!(
        TypedMailbox::<Velocity>::open(&name),
        Err(MailboxError::TypeMismatch { .. })
    ));
    // Another size: still reported as another type, not as another shape.
    let err = TypedMailbox::<u64>::open_or_create(&name, 2).unwrap_err();
    assert!(
        matches!(
            err,
            MailboxError::TypeMismatch {
                expected_size: 8,
                found_size: 24,
                ..
            }
        ),
        "{err:?}"
    );
    // Same type, another reader count: a shape mismatch.
    assert!(matches!(
        TypedMailbox::<Position>::open_or_create(&name, 3),
        Err(MailboxError::Layout(LayoutError::Mismatch { .. }))
    ));
    // The same type is welcome, and binding never changed what was bound.
    assert!(TypedMailbox::<Position>::open(&name).is_ok());
    drop(sut);
}

#[test]
fn the_first_typed_handle_binds_an_untyped_mailbox() {
    let name = unique_name("mbox-typed-bind");
    let _c = Cleanup(name.clone());
    let config = Config {
        readers: 1,
        slot_bytes: 24,
    };
    let raw = Arc::new(Mailbox::open_or_create(&name, config).unwrap());
    let sut = TypedMailbox::<Velocity>::new(Arc::clone(&raw)).unwrap();
    assert!(matches!(
        TypedMailbox::<Position>::new(Arc::clone(&raw)),
        Err(MailboxError::TypeMismatch { .. })
    ));
    // A type larger than the slots cannot bind at all.
    assert!(matches!(
        TypedMailbox::<[u64; 4]>::new(Arc::clone(&raw)),
        Err(MailboxError::TooLarge { len: 32, max: 24 })
    ));
    drop(sut);
}

mod here {
    use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
    /// One program's definition of the wire type.
    #[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq)]
    #[repr(C)]
    pub(crate) struct Sample {
        pub(crate) t: u64,
    }
}

mod there {
    use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
    /// Another program's definition of the same wire type.
    #[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq)]
    #[repr(C)]
    pub(crate) struct Sample {
        pub(crate) t: u64,
    }
}

#[test]
fn separately_defined_types_share_a_mailbox_by_tag() {
    let name = unique_name("mbox-typed-tag");
    let _c = Cleanup(name.clone());
    let config = Config {
        readers: 1,
        slot_bytes: 8,
    };
    let raw = Arc::new(Mailbox::open_or_create(&name, config).unwrap());
    // By type name they differ ...
    let _bound = TypedMailbox::<here::Sample>::new(Arc::clone(&raw)).unwrap();
    assert!(matches!(
        TypedMailbox::<there::Sample>::new(Arc::clone(&raw)),
        Err(MailboxError::TypeMismatch { .. })
    ));
    // ... by an explicit tag they agree.
    let name2 = unique_name("mbox-typed-tag2");
    let _c2 = Cleanup(name2.clone());
    let raw = Arc::new(Mailbox::open_or_create(&name2, config).unwrap());
    let writer = TypedMailbox::<here::Sample>::with_tag(Arc::clone(&raw), "sample-v1").unwrap();
    let reader = TypedMailbox::<there::Sample>::with_tag(Arc::clone(&raw), "sample-v1").unwrap();
    writer
        .writer()
        .unwrap()
        .publish(&here::Sample { t: 9 })
        .unwrap();
    assert_eq!(
        reader.claim_reader().unwrap().read().unwrap(),
        Some(there::Sample { t: 9 })
    );
    assert!(matches!(
        TypedMailbox::<there::Sample>::with_tag(raw, "sample-v2"),
        Err(MailboxError::TypeMismatch { .. })
    ));
}

#[test]
fn untyped_messages_of_another_size_are_reported() {
    let name = unique_name("mbox-typed-raw");
    let _c = Cleanup(name.clone());
    let sut = TypedMailbox::<u64>::open_or_create(&name, 1).unwrap();
    let mut reader = sut.claim_reader().unwrap();
    sut.mailbox().writer().unwrap().publish(b"abc").unwrap();
    assert!(matches!(
        reader.read(),
        Err(MailboxError::MessageSize {
            len: 3,
            expected: 8
        })
    ));
    sut.writer().unwrap().publish(&7).unwrap();
    assert_eq!(
        reader.read().unwrap(),
        Some(7),
        "recovers with the next value"
    );
}

#[test]
fn zero_sized_types_are_refused() {
    #[derive(FromBytes, IntoBytes, Immutable, KnownLayout)]
    #[repr(C)]
    struct Nothing;
    let name = unique_name("mbox-typed-zst");
    let _c = Cleanup(name.clone());
    assert!(matches!(
        TypedMailbox::<Nothing>::open_or_create(&name, 1),
        Err(MailboxError::Layout(LayoutError::InvalidConfig(_)))
    ));
}
