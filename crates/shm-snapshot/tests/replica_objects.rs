//! Hostile replica contents (the cases of the `replica_objects` fuzz
//! target, from random bytes and from fixed inputs): listing works, and a
//! restore fails with a typed error or rebuilds exactly the state of the
//! file generation it reports.
#![cfg(feature = "replica")]

#[path = "common/replica_case.rs"]
mod replica_case;

use proptest::prelude::*;
use shm_snapshot::replica::{Kind, ObjectName, Target};

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(shm_testkit::unique_name("replica-objects"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An intact base and the segments after it restore every generation; a
/// damaged segment ends the restore at the generation before it.
#[test]
fn intact_objects_restore_each_generation_and_damage_stops_before_it() {
    let dir = temp_dir();
    let store = dir.join("store");
    let (log, ends) = replica_case::log(5);
    let name = |kind| ObjectName { kind, time_ms: 7 }.name();
    replica_case::put(&store, &name(Kind::Base { generation: 2 }), &log[..ends[2]]);
    replica_case::put(
        &store,
        &name(Kind::Segment { first: 3, last: 3 }),
        &log[ends[2]..ends[3]],
    );
    // A byte of generation 4's first page record.
    let mut damaged = log[ends[3]..ends[5]].to_vec();
    damaged[100] ^= 0x40;
    replica_case::put(&store, &name(Kind::Segment { first: 4, last: 5 }), &damaged);
    let dest = dir.join("restored.snap");
    assert_eq!(
        replica_case::check_restore(&store, &dest, Target::Newest),
        Some(3)
    );
    for g in 2..=3 {
        assert_eq!(
            replica_case::check_restore(&store, &dest, Target::Generation(g)),
            Some(g)
        );
    }
    assert_eq!(
        replica_case::check_restore(&store, &dest, Target::Generation(5)),
        None
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Inputs the fuzz target found or that exercise its corners.
#[test]
fn fixed_hostile_inputs() {
    for data in [
        &[][..],
        &[4, 5, 0, 0, 0, 1, 2, 3, 3, 4, 4, 5, 5, 5, 5, 9, 0, 0, 1],
        &[0, 0, 1, 255, 255, 0],
        &[4, 2, 8, 0, 0, 9, 255, 0, 1, 0, 0, 0, 1, 0, 0, 0],
        // A segment named for generations its bytes do not reach: a restore
        // of such a generation reported an older one as done.
        &[
            9, 141, 2, 0, 0, 12, 0, 0, 0, 0, 0, 103, 216, 0, 123, 0, 0, 0,
        ],
    ] {
        let dir = temp_dir();
        replica_case::run(&dir, data);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn random_objects_never_restore_a_mix(data in proptest::collection::vec(any::<u8>(), 0..64)) {
        let dir = temp_dir();
        replica_case::run(&dir, &data);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
