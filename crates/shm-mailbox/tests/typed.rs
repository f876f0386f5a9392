//! Typed mailboxes: values of one plain-data type in and out, and a mailbox
//! bound to one type refusing every other.
#![cfg(not(shm_loom))]

use std::sync::Arc;
use std::time::Duration;

use shm_mailbox::{Config, LayoutError, Mailbox, MailboxError, TypedMailbox};
use shm_segment::plain_struct;
use shm_testkit::unique_name;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

struct Cleanup(String);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Mailbox::force_remove(&self.0);
    }
}

plain_struct! {
    #[derive(PartialEq)]
    struct Position {
        x: f64,
        y: f64,
        id: u32,
        flags: u32,
    }
}

plain_struct! {
    /// The same size as `Position`, another structure (field names).
    #[derive(PartialEq)]
    struct Velocity {
        dx: f64,
        dy: f64,
        id: u32,
        flags: u32,
    }
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
            found,
            found_size: 24,
            ..
        } => assert_eq!(
            (expected.as_str(), found.as_str()),
            ("Velocity", "Position")
        ),
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("holds `Position` (24 bytes")
            && text.contains("not `Velocity` (24 bytes")
            && text.contains("fields' names, order or types"),
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

/// One program's declaration of the wire type ...
mod here {
    shm_segment::plain_struct! {
        /// Sequence and time, nested in `Sample`.
        pub struct Stamp { pub seq: u64, pub micros: u64 }
    }
    shm_segment::plain_struct! {
        /// What is published.
        pub struct Sample { pub stamp: Stamp, pub temperature: i64, pub samples: [u32; 4] }
    }
}

/// ... another program's, under other names ...
mod there {
    shm_segment::plain_struct! {
        /// The same fields as `here::Stamp`.
        #[derive(PartialEq)]
        pub struct Time { pub seq: u64, pub micros: u64 }
    }
    shm_segment::plain_struct! {
        /// The same fields as `here::Sample`.
        #[derive(PartialEq)]
        pub struct Reading { pub stamp: Time, pub temperature: i64, pub samples: [u32; 4] }
    }
}

/// ... and declarations that differ from `here::Sample` in one way each.
mod differ {
    use super::here::Stamp;
    shm_segment::plain_struct! {
        /// `temperature` renamed.
        pub struct Renamed { pub stamp: Stamp, pub celsius: i64, pub samples: [u32; 4] }
    }
    shm_segment::plain_struct! {
        /// `temperature` and `stamp` swapped.
        pub struct Reordered { pub temperature: i64, pub stamp: Stamp, pub samples: [u32; 4] }
    }
    shm_segment::plain_struct! {
        /// `temperature` unsigned.
        pub struct Retyped { pub stamp: Stamp, pub temperature: u64, pub samples: [u32; 4] }
    }
    shm_segment::plain_struct! {
        /// The nested stamp's `seq` renamed.
        pub struct Stamp2 { pub sequence: u64, pub micros: u64 }
    }
    shm_segment::plain_struct! {
        /// Uses the changed stamp.
        pub struct Nested { pub stamp: Stamp2, pub temperature: i64, pub samples: [u32; 4] }
    }
    shm_segment::plain_struct! {
        /// The nested stamp's `seq` and `micros` swapped (same types, same size).
        pub struct Stamp3 { pub micros: u64, pub seq: u64 }
    }
    shm_segment::plain_struct! {
        /// Uses the reordered stamp.
        pub struct NestedReordered { pub stamp: Stamp3, pub temperature: i64, pub samples: [u32; 4] }
    }
    shm_segment::plain_struct! {
        /// The same fields, with a meaning of their own.
        #[plain(tag = "fahrenheit")]
        pub struct Tagged { pub stamp: Stamp, pub temperature: i64, pub samples: [u32; 4] }
    }
}

fn sample() -> here::Sample {
    here::Sample {
        stamp: here::Stamp {
            seq: 42,
            micros: 1_700_000,
        },
        temperature: -7,
        samples: [10, 20, 30, 40],
    }
}

#[test]
fn separately_declared_identical_structs_share_a_mailbox_by_default() {
    let name = unique_name("mbox-typed-struct");
    let _c = Cleanup(name.clone());
    let writer_side = TypedMailbox::<here::Sample>::open_or_create(&name, 1).unwrap();
    let reader_side = TypedMailbox::<there::Reading>::open(&name).unwrap();
    writer_side.writer().unwrap().publish(&sample()).unwrap();
    let read = reader_side.claim_reader().unwrap().read().unwrap();
    assert_eq!(
        read,
        Some(there::Reading {
            stamp: there::Time {
                seq: 42,
                micros: 1_700_000
            },
            temperature: -7,
            samples: [10, 20, 30, 40],
        })
    );
}

fn refused<T: shm_segment::Plain>(name: &str, what: &str) {
    let Err(err) = TypedMailbox::<T>::open(name) else {
        panic!("{what}: opened a board bound to another structure")
    };
    let MailboxError::TypeMismatch {
        expected,
        found,
        expected_size,
        found_size,
        expected_id,
        found_id,
    } = &err
    else {
        panic!("{what}: {err:?}")
    };
    assert_eq!((found.as_str(), *found_size), ("Sample", 40), "{what}");
    assert_eq!(*expected_size, 40, "{what}");
    assert_ne!(expected_id, found_id, "{what}");
    let text = err.to_string();
    assert!(
        text.contains("holds `Sample` (40 bytes")
            && text.contains(&format!("not `{expected}` (40 bytes"))
            && text.contains("fields' names, order or types (or the tags) differ"),
        "{what}: {text}"
    );
}

#[test]
fn renamed_reordered_retyped_nested_or_tagged_fields_are_refused() {
    let name = unique_name("mbox-typed-differ");
    let _c = Cleanup(name.clone());
    let sut = TypedMailbox::<here::Sample>::open_or_create(&name, 1).unwrap();
    refused::<differ::Renamed>(&name, "renamed");
    refused::<differ::Reordered>(&name, "reordered");
    refused::<differ::Retyped>(&name, "retyped");
    refused::<differ::Nested>(&name, "nested");
    refused::<differ::NestedReordered>(&name, "nested reordered");
    refused::<differ::Tagged>(&name, "tagged");
    // Refusals never rebind: the original structure is still welcome.
    assert!(TypedMailbox::<there::Reading>::open(&name).is_ok());
    drop(sut);
}

/// A plain-data type of the caller's own (a zerocopy derive, not `Plain`).
mod own {
    use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};
    #[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, PartialEq)]
    #[repr(C)]
    pub(crate) struct Sample {
        pub(crate) t: u64,
    }
}

#[test]
fn other_plain_data_types_share_a_mailbox_by_tag() {
    let name = unique_name("mbox-typed-tag");
    let _c = Cleanup(name.clone());
    let config = Config {
        readers: 1,
        slot_bytes: 8,
    };
    let raw = Arc::new(Mailbox::open_or_create(&name, config).unwrap());
    let writer = TypedMailbox::<own::Sample>::with_tag(Arc::clone(&raw), "sample-v1").unwrap();
    let reader = TypedMailbox::<u64>::open_with_tag(&name, "sample-v1").unwrap();
    writer
        .writer()
        .unwrap()
        .publish(&own::Sample { t: 9 })
        .unwrap();
    assert_eq!(reader.claim_reader().unwrap().read().unwrap(), Some(9));
    let err = TypedMailbox::<own::Sample>::with_tag(Arc::clone(&raw), "sample-v2").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("mailbox holds `sample-v1` (8 bytes"),
        "{err}"
    );
    // A tag is not a structure: the structural binding of `u64` is another type.
    assert!(matches!(
        TypedMailbox::<u64>::new(raw),
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
        TypedMailbox::<Nothing>::open_or_create_with_tag(&name, 1, "nothing"),
        Err(MailboxError::Layout(LayoutError::InvalidConfig(_)))
    ));
}
