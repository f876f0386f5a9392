//! loom models of the commit protocol of `shm_snapshot::live` (run with
//! `RUSTFLAGS="--cfg shm_loom"`). They run the crate's own code, generic
//! over where its words live, on loom atomics: `Client::commit`'s
//! (`RawClient::publish`), `Host::copy`'s and `Host::copy_changed`'s
//! (`RawHost`), through `live::model::HeapLive`, with one-word pages (8
//! bytes instead of 4096, so loom can explore every interleaving).
//!
//! Each model has two controls that skip one fence in that same code (a
//! `cfg(shm_loom)`-only knob, `Fence::Skipped`): the client's Release fence
//! between the stamps and the copy, or the host's Acquire fence before its
//! re-check. loom must then find a torn copy. The helper model splits the
//! copy with a copy helper thread (`live::copier`, its mutex, condition
//! variables and thread as loom's); its control skips the helper's fence.
#![cfg(shm_loom)]

use shm_snapshot::live::durable_model::{Bump, HeapDurable, Level};
use shm_snapshot::live::model::{Changed, Fence, HeapLive};
use shm_sync::sync::Arc;
use shm_sync::thread;

/// Bytes per page in the models: one word.
const PAGE: usize = 8;

/// The program's commit of generation `g` over pages `pages`: writes `g`
/// into each, then commits exactly those pages.
fn commit(live: &HeapLive, pages: &[usize], g: u64, fence: Fence) {
    for &p in pages {
        live.edit(p * PAGE, &g.to_le_bytes());
    }
    let dirty: Vec<_> = pages.iter().map(|&p| p * PAGE..(p + 1) * PAGE).collect();
    assert_eq!(live.commit(&dirty, fence), g);
}

/// The two words of a whole-state copy.
fn copy(live: &HeapLive, tries: usize, fence: Fence) -> Option<(u64, [u64; 2])> {
    let mut buf = [0u8; 2 * PAGE];
    let g = live.copy(&mut buf, tries, fence)?;
    let word = |p: usize| u64::from_le_bytes(buf[p * PAGE..(p + 1) * PAGE].try_into().unwrap());
    Some((g, [word(0), word(1)]))
}

/// One client committing generations 1 and 2 (each writes its generation
/// into both pages) while the host copies the whole state.
fn model(client_fence: Fence, host_fence: Fence) {
    loom::model(move || {
        let live = Arc::new(HeapLive::new(2, PAGE));
        let client = {
            let live = live.clone();
            thread::spawn(move || {
                commit(&live, &[0, 1], 1, client_fence);
                commit(&live, &[0, 1], 2, client_fence);
            })
        };
        let mut last = 0;
        for _ in 0..2 {
            if let Some((g, v)) = copy(&live, 2, host_fence) {
                assert_eq!(v, [g, g], "torn or mismatched copy at generation {g}");
                assert!(g >= last, "generation went back");
                last = g;
            }
        }
        client.join().unwrap();
        assert_eq!(copy(&live, 1, host_fence), Some((2, [2, 2])));
    });
}

#[test]
fn host_copy_is_exactly_one_committed_state() {
    model(Fence::Kept, Fence::Kept);
}

/// Control: without the client's Release fence after the odd store and the
/// stamps, the host can read new bytes and still see the old even `seq`.
#[test]
#[should_panic(expected = "torn or mismatched copy")]
fn without_the_client_fence_loom_finds_a_torn_copy() {
    model(Fence::Skipped, Fence::Kept);
}

/// Control: without the host's Acquire fence before the second load of `seq`.
#[test]
#[should_panic(expected = "torn or mismatched copy")]
fn without_the_host_fence_loom_finds_a_torn_copy() {
    model(Fence::Kept, Fence::Skipped);
}

/// One client committing generations 1 and 2 (each writes its generation
/// into both pages) with its copy split: page 0 on the client's thread, page
/// 1 on its copy helper thread, while the host copies the whole state.
fn helper_model(helper_fence: Fence) {
    loom::model(move || {
        let live = Arc::new(HeapLive::with_helper(2, PAGE, helper_fence));
        let client = {
            let live = live.clone();
            thread::spawn(move || {
                commit(&live, &[0, 1], 1, Fence::Kept);
                commit(&live, &[0, 1], 2, Fence::Kept);
            })
        };
        if let Some((g, v)) = copy(&live, 1, Fence::Kept) {
            assert_eq!(v, [g, g], "torn or mismatched copy at generation {g}");
        }
        client.join().unwrap();
        // The commit returned only after the helper's part was copied.
        assert_eq!(copy(&live, 1, Fence::Kept), Some((2, [2, 2])));
    });
}

#[test]
fn host_copy_of_a_commit_split_over_a_helper_is_one_committed_state() {
    helper_model(Fence::Kept);
}

/// Control: without the helper's own Release fence before its part, the
/// client's fence does not order the helper's stores after the stamps and
/// the odd `seq`: the host can read the helper's bytes under the old `seq`.
#[test]
#[should_panic(expected = "torn or mismatched copy")]
fn without_the_helper_fence_loom_finds_a_torn_copy() {
    helper_model(Fence::Skipped);
}

/// The pages of commits 1 and 2.
const CHANGES: [&[usize]; 2] = [&[0, 1], &[1]];

/// State after `g` commits: page `p` holds the last generation that wrote it.
fn model_state(g: u64) -> [u64; 2] {
    let mut v = [0, 0];
    for (k, pages) in CHANGES[..usize::try_from(g).unwrap()].iter().enumerate() {
        for &p in *pages {
            v[p] = k as u64 + 1;
        }
    }
    v
}

/// `Host::copy_changed(since)`, keeping the last visit of each page.
fn copy_changed(live: &HeapLive, since: u64, fence: Fence) -> (Changed, [Option<u64>; 2]) {
    let mut got = [None, None];
    let changed = live
        .copy_changed(
            since,
            |p, bytes| {
                got[usize::try_from(p).unwrap()] =
                    Some(u64::from_le_bytes(bytes.try_into().unwrap()));
                Ok::<(), ()>(())
            },
            fence,
        )
        .unwrap();
    (changed, got)
}

/// One client committing generations 1 and 2 while the host takes the pages
/// changed since generation 0 (all zero) twice; laid over generation 0, an
/// accepted copy must be exactly the state of the generation it reports.
fn changed_model(client_fence: Fence, host_fence: Fence) {
    loom::model(move || {
        let live = Arc::new(HeapLive::new(2, PAGE));
        let client = {
            let live = live.clone();
            thread::spawn(move || {
                for (k, pages) in CHANGES.iter().enumerate() {
                    commit(&live, pages, k as u64 + 1, client_fence);
                }
            })
        };
        for _ in 0..2 {
            // The host's ticks are apart in time: a scheduling point.
            thread::yield_now();
            if let (Changed::Complete(g), got) = copy_changed(&live, 0, host_fence) {
                let stitched = [got[0].unwrap_or(0), got[1].unwrap_or(0)];
                assert_eq!(stitched, model_state(g), "torn copy of generation {g}");
            }
        }
        client.join().unwrap();
        assert_eq!(
            copy_changed(&live, 0, host_fence),
            (Changed::Complete(2), [Some(1), Some(2)])
        );
        assert_eq!(copy_changed(&live, 2, host_fence).0, Changed::Nothing);
    });
}

#[test]
fn changed_pages_are_exactly_one_committed_state() {
    changed_model(Fence::Kept, Fence::Kept);
}

/// Control: without the client's Release fence between stamps and copy, the
/// host can copy a new value and still re-read the old stamp.
#[test]
#[should_panic(expected = "torn copy")]
fn changed_without_the_client_fence_loom_finds_a_torn_copy() {
    changed_model(Fence::Skipped, Fence::Kept);
}

/// Control: without the host's Acquire fence before the stamp re-check.
#[test]
#[should_panic(expected = "torn copy")]
fn changed_without_the_host_fence_loom_finds_a_torn_copy() {
    changed_model(Fence::Kept, Fence::Skipped);
}

/// The wait handshake (`live::durable`) at `level`. Durable: a client
/// requests generation 1 and waits on `durable_seq`, the host sleeps on
/// `requests` until it sees the request, then publishes. Replicated
/// (`Client::wait_replicated`, the same routine on the other published
/// word): the client asks for generation 1 replicated and waits on
/// `replicated_seq`; the host serves the request (a durable snapshot), then
/// its uploader publishes the generation replicated. `bump` applies to the
/// publish of `level`. Every interleaving must end with the client woken,
/// holding the published generation (a lost wake-up on either futex is a
/// deadlock loom reports).
fn wait_model(level: Level, bump: Bump) {
    loom::model(move || {
        let d = Arc::new(HeapDurable::default());
        let host = {
            let d = d.clone();
            thread::spawn(move || {
                if level == Level::Durable {
                    d.serve(1, bump);
                } else {
                    d.serve(1, Bump::Kept);
                    d.publish_level(1, level, bump);
                }
            })
        };
        // The client waits on the main thread (so that a lost wake-up leaves
        // exactly it blocked, which loom reports as a deadlock).
        assert_eq!(d.request_and_wait_level(1, level), 1);
        host.join().unwrap();
        assert_eq!(d.published(level), 1);
        if level == Level::Replicated {
            assert_eq!(d.wanted_replicated(), 1);
        }
    });
}

/// Runs the `#[ignore]`d test `body` (a negative control of
/// [`wait_model`]) in a child process of this test binary, which must die
/// reporting a deadlock. loom reports the deadlock by panicking, then aborts
/// while unwinding the blocked thread, which `should_panic` cannot catch.
fn assert_control_deadlocks(body: &str) {
    let (status, text) = shm_testkit::output_text(
        std::process::Command::new(std::env::current_exe().unwrap()).args([
            "--exact",
            body,
            "--ignored",
            "--nocapture",
        ]),
    );
    assert!(!status.success(), "the control passed:\n{text}");
    assert!(text.contains("deadlock"), "{text}");
}

#[test]
fn a_durable_waiter_is_always_woken() {
    wait_model(Level::Durable, Bump::Kept);
}

/// The control: a host that stores `durable` and wakes, but does not bump
/// `durable_seq`, loses the wake-up of a waiter that loaded the old
/// `durable` before the store and sleeps after the wake.
#[test]
fn without_the_durable_seq_bump_loom_finds_a_lost_wakeup() {
    assert_control_deadlocks("durable_control_body");
}

/// The body of the control above (run only by it).
#[test]
#[ignore = "run by without_the_durable_seq_bump_loom_finds_a_lost_wakeup in a child process"]
fn durable_control_body() {
    wait_model(Level::Durable, Bump::Skipped);
}

#[test]
fn a_replicated_waiter_is_always_woken() {
    wait_model(Level::Replicated, Bump::Kept);
}

/// The control: without the bump of `replicated_seq`, loom finds the lost
/// wake-up.
#[test]
fn without_the_replicated_seq_bump_loom_finds_a_lost_wakeup() {
    assert_control_deadlocks("replicated_control_body");
}

/// The body of the control above (run only by it).
#[test]
#[ignore = "run by without_the_replicated_seq_bump_loom_finds_a_lost_wakeup in a child process"]
fn replicated_control_body() {
    wait_model(Level::Replicated, Bump::Skipped);
}

/// Two waiters on generations 1 and 2 while the host publishes 1 then 2:
/// each returns a durable generation at least its own.
#[test]
fn two_waiters_on_different_generations() {
    loom::model(|| {
        let d = Arc::new(HeapDurable::default());
        let waiter = |g: u64| {
            let d = d.clone();
            thread::spawn(move || d.request_and_wait(g))
        };
        let (w1, w2) = (waiter(1), waiter(2));
        d.publish(1, Bump::Kept);
        d.serve(2, Bump::Kept);
        assert!(w1.join().unwrap() >= 1);
        assert_eq!(w2.join().unwrap(), 2);
    });
}
