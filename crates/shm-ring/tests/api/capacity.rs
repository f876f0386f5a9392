//! Capacities that are not powers of two round up; 0 and impossible ones
//! are refused with an error that says why.

use shm_ring::{
    Consumer, ElemLayout, LayoutError, OpenError, Producer, RingFds, TrySendError, channel,
};

#[test]
fn channel_capacities_round_up_to_a_power_of_two() {
    for (asked, actual) in [(1, 1), (3, 4), (1000, 1024), (1024, 1024), (1025, 2048)] {
        let (mut tx, mut rx) = channel::<u64>(asked).unwrap();
        assert_eq!((tx.capacity(), rx.capacity()), (actual, actual), "{asked}");
        // Exactly `actual` slots: that many fit, one more does not.
        for i in 0..actual {
            tx.try_send(i).unwrap();
        }
        assert!(matches!(tx.try_send(actual), Err(TrySendError::Full(_))));
        for i in 0..actual {
            assert_eq!(rx.try_recv().unwrap(), Some(i));
        }
    }
}

#[test]
fn ring_fds_round_up_too_and_both_ends_agree() {
    let fds = RingFds::create("round", 1000, ElemLayout::of::<[u8; 3]>()).unwrap();
    let tx = Producer::<[u8; 3]>::open(&fds, None).unwrap();
    let rx = Consumer::<[u8; 3]>::open(&fds, None).unwrap();
    assert_eq!((tx.capacity(), rx.capacity()), (1024, 1024));
}

#[test]
fn zero_and_overflowing_capacities_are_refused_clearly() {
    let sut = channel::<u64>(0).unwrap_err();
    assert!(
        matches!(sut, OpenError::Layout(LayoutError::ZeroCapacity)),
        "{sut:?}"
    );
    assert_eq!(
        sut.to_string(),
        "capacity 0: a ring needs at least one slot"
    );

    for asked in [u64::MAX, (1 << 63) + 1] {
        let sut = channel::<u8>(asked).unwrap_err();
        assert!(
            matches!(sut, OpenError::Layout(LayoutError::CapacityOverflow { requested }) if requested == asked),
            "{sut:?}"
        );
        assert!(sut.to_string().contains(&asked.to_string()), "{sut}");
    }
    // Rounds up to a power of two whose slots exceed the 1 TiB limit.
    let sut = channel::<u8>((1 << 40) + 1).unwrap_err();
    assert!(
        matches!(
            sut,
            OpenError::Layout(LayoutError::TooLarge {
                capacity,
                elem_size: 1
            }) if capacity == 1 << 41
        ),
        "{sut:?}"
    );
    assert!(sut.to_string().contains("too large"), "{sut}");
}
