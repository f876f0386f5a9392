//! The commit protocol on a real memfd, and a full real filesystem.
#![allow(clippy::single_range_in_vec_init, clippy::cast_possible_truncation)]

mod common;

use std::fs::OpenOptions;
use std::os::fd::AsFd;

use shm_snapshot::live::{self, Changed, Client, Host};
use shm_snapshot::{FileStorage, SnapshotWriter, inspect};

/// Memfd offsets of the control block's state size and of `seq`: the
/// segment header page, then the payload (docs/protocol/shm-snapshot.md).
const STATE_SIZE_AT: u64 = 4096 + 32;
const SEQ_AT: u64 = 4096 + 128;

fn memfd(region: u64) -> std::os::fd::OwnedFd {
    common::live_memfd("live-test", region, 0)
}

#[test]
fn host_sees_only_committed_state_and_reopen_discards_uncommitted() {
    let region = 3 * 4096 + 8;
    let fd = memfd(region);
    let client = Client::open(fd.as_fd()).unwrap();
    let host = Host::open(fd.as_fd()).unwrap();
    let mut buf = vec![0u8; region as usize];
    assert_eq!(host.copy(&mut buf, 1), Some(0));
    client.work().write_bytes(100, b"first").unwrap();
    assert_eq!(client.commit(&[100..105]), 1);
    client.work().write_bytes(5000, b"uncommitted").unwrap();
    assert_eq!(host.copy(&mut buf, 1), Some(1));
    assert_eq!(&buf[100..105], b"first");
    assert!(
        buf[5000..5011].iter().all(|&b| b == 0),
        "uncommitted bytes reached the host"
    );
    drop(client);
    // A new client starts from the committed state.
    let client = Client::open(fd.as_fd()).unwrap();
    let mut w = [0u8; 11];
    client.work().read_bytes(5000, &mut w).unwrap();
    assert_eq!(w, [0u8; 11]);
    assert_eq!(client.generation(), 1);
}

/// Commit `g` of the concurrent test: writes `g` at 4 pages chosen by `g`
/// (several commits hit the same pages, so copies race with rewrites).
fn churn(g: u64) -> [(usize, u64); 4] {
    let h = g.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let page = |k: u32| usize::try_from((h >> (k * 8)) % 24).unwrap();
    [0, 1, 2, 3].map(|k| (page(k) * 4096 + 8 * usize::try_from(g % 512).unwrap(), g))
}

/// A client commits every few microseconds while a host thread keeps taking the
/// pages changed since its last copy: every copy it accepts, laid over the
/// previous one, is exactly the model state of the generation it reports;
/// conflicts are allowed, a torn state is not.
#[test]
fn changed_pages_over_the_previous_copy_are_exactly_one_commit() {
    const REGION: u64 = 24 * 4096 - 100;
    // Debug builds copy about ten times slower: fewer, sparser commits.
    const COMMITS: u64 = if cfg!(debug_assertions) {
        5_000
    } else {
        20_000
    };
    const GAP_US: u64 = if cfg!(debug_assertions) { 200 } else { 20 };
    let fd = memfd(REGION);
    let client = Client::open(fd.as_fd()).unwrap();
    let host = Host::open(fd.as_fd()).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false); // atomics-ok: test stop flag
    std::thread::scope(|s| {
        s.spawn(|| {
            for g in 1..=COMMITS {
                let ranges: Vec<_> = churn(g)
                    .iter()
                    .filter(|(at, _)| *at + 8 <= REGION as usize)
                    .map(|&(at, v)| {
                        client.work().write(at, &v).unwrap();
                        at..at + 8
                    })
                    .collect();
                assert_eq!(client.commit(&ranges), g);
                // A pause between commits (a real program computes between
                // them): back-to-back rewrites of the same pages starve any
                // copier that does not stop the client, which is a documented
                // limit, not what this test is about.
                let t = std::time::Instant::now();
                while t.elapsed() < std::time::Duration::from_micros(GAP_US) {
                    std::hint::spin_loop();
                }
            }
            done.store(true, std::sync::atomic::Ordering::Release); // atomics-ok: test stop flag
        });
        let mut copy = vec![0u8; REGION as usize];
        let mut model = vec![0u8; REGION as usize];
        let (mut since, mut accepted, mut conflicts) = (0u64, 0u64, 0u64);
        loop {
            let finished = done.load(std::sync::atomic::Ordering::Acquire); // atomics-ok
            let mut next = copy.clone();
            let r: Result<Changed, std::convert::Infallible> = host.copy_changed(since, |p, b| {
                let o = usize::try_from(p).unwrap() * 4096;
                next[o..o + b.len()].copy_from_slice(b);
                Ok(())
            });
            match r.unwrap() {
                Changed::Complete(g) => {
                    assert!(g > since);
                    for k in since + 1..=g {
                        for (at, v) in churn(k) {
                            if at + 8 <= REGION as usize {
                                model[at..at + 8].copy_from_slice(&v.to_ne_bytes());
                            }
                        }
                    }
                    assert!(next == model, "copy of generation {g} over {since} is torn");
                    (copy, since) = (next, g);
                    accepted += 1;
                }
                Changed::Nothing => assert!(since == host.generation().unwrap() || !finished),
                Changed::Conflict => conflicts += 1,
                c @ (Changed::OutOfRange { .. } | Changed::Backwards { .. }) => {
                    panic!("a well-behaved client: {c:?}")
                }
            }
            if finished && since == COMMITS {
                break;
            }
        }
        // How many copies raced with commits depends on scheduling; the
        // last one (after the client stopped) is always accepted and checked.
        eprintln!("{accepted} copies accepted, {conflicts} conflicts");
    });
}

#[test]
fn foreign_memfd_is_refused() {
    let fd =
        shm_segment::memfd::create("foreign", 3 * 4096, shm_segment::memfd::FIXED_SIZE).unwrap();
    assert!(Host::open(fd.as_fd()).is_err());
    assert!(Client::open(fd.as_fd()).is_err());
}

/// The live memfd is an `shm-segment` segment: any segment opener accepts
/// it, and its payload is the control block of docs/protocol/shm-snapshot.md
/// (magic, version 5, the geometry, `seq`, and the reserved words zero; the
/// durable-commit and replication words stay zero while no host or waiter
/// touched them).
#[test]
fn live_memfd_is_a_segment_with_the_documented_control_block() {
    let region = 3 * 4096 + 8;
    let fd = memfd(region);
    let client = Client::open(fd.as_fd()).unwrap();
    client.work().write_bytes(0, b"x").unwrap();
    assert_eq!(client.commit(&[0..1]), 1);
    let sut = shm_segment::Segment::adopt(fd.try_clone().unwrap())
        .read_only()
        .open()
        .unwrap();
    assert_eq!(sut.len() as u64, live::memfd_size(region) - 4096);
    let mut words = [0u64; 512];
    for (i, w) in words.iter_mut().enumerate() {
        *w = sut.payload().read(8 * i).unwrap();
    }
    // magic, version, page size, pages, state size, stamps, work, committed
    let (t, a) = (4096, 4 * 4096);
    assert_eq!(
        words[..8],
        [
            live::LIVE_MAGIC,
            5,
            4096,
            4,
            region,
            4096,
            4096 + t,
            4096 + t + a
        ]
    );
    assert_eq!(words[16], 2, "seq at payload offset 128");
    let zero: Vec<usize> = (8..512).filter(|&i| i != 16).collect();
    assert!(
        zero.iter().all(|&i| words[i] == 0),
        "reserved words are zero"
    );
}

/// A memfd of the previous layout (a bare control page starting with
/// `OUTLLIV2`) is refused as another version, by name; one whose
/// initialization never finished (no magic yet) is refused too.
#[test]
fn an_old_layout_or_unfinished_memfd_is_refused() {
    use std::os::unix::fs::FileExt;
    let fd = shm_segment::memfd::create("v2", 5 * 4096, shm_segment::memfd::FIXED_SIZE).unwrap();
    let f = std::fs::File::from(fd.try_clone().unwrap());
    f.write_all_at(b"OUTLLIV2", 0).unwrap();
    f.write_all_at(&4096u64.to_le_bytes(), 8).unwrap();
    for e in [
        Host::open(fd.as_fd()).unwrap_err(),
        Client::open(fd.as_fd()).unwrap_err(),
    ] {
        assert_eq!(e.kind(), shm_snapshot::ErrorKind::Version, "{e}");
        assert!(e.to_string().contains("OUTLLIV2"), "{e}");
    }
    let fd = shm_segment::memfd::create(
        "unfinished",
        live::memfd_size(4096),
        shm_segment::memfd::FIXED_SIZE,
    )
    .unwrap();
    let init = live::Initializer::new(fd.as_fd(), 4096).unwrap();
    init.write(0, &[1; 4096]);
    for e in [
        Host::open(fd.as_fd()).unwrap_err(),
        Client::open(fd.as_fd()).unwrap_err(),
    ] {
        assert_eq!(e.kind(), shm_snapshot::ErrorKind::Foreign, "{e}");
        assert!(e.to_string().contains("never finished"), "{e}");
    }
    // A memfd that is already a segment is not initialized again.
    assert!(live::Initializer::new(fd.as_fd(), 4096).is_err());
    init.finish(7).unwrap();
    assert_eq!(Host::open(fd.as_fd()).unwrap().generation().unwrap(), 7);
}

/// A socket or a pipe handed over as the state: named for what it is, not
/// "a memfd of 0 bytes".
#[test]
fn a_socket_or_pipe_is_named_not_sized() {
    let (a, _b) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let e = Host::open(a.as_fd()).unwrap_err();
    assert!(e.to_string().contains("is a socket, not a memfd"), "{e}");
    let (r, _w) = rustix::pipe::pipe().unwrap();
    let e = Client::open(r.as_fd()).unwrap_err();
    assert!(e.to_string().contains("is a pipe, not a memfd"), "{e}");
}

/// Found by the `hostile_memfd` fuzz target: a region size near `u64::MAX`
/// written into the control page overflowed the page rounding. Every absurd
/// size is now refused as a bad geometry, and so is an absurd commit sequence.
#[test]
fn absurd_region_sizes_in_the_control_page_are_refused() {
    use std::os::unix::fs::FileExt;
    for region in [u64::MAX, u64::MAX - 4095, 1 << 62, 0, 5] {
        let fd = memfd(3 * 4096);
        let f = std::fs::File::from(fd.try_clone().unwrap());
        f.write_all_at(&region.to_le_bytes(), STATE_SIZE_AT)
            .unwrap();
        let e = Host::open(fd.as_fd()).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{region}: {e}");
        assert!(Client::open(fd.as_fd()).is_err(), "{region}");
    }
    // Also found by it: a commit sequence near u64::MAX overflowed the
    // client's recovery; such a memfd is refused, the host only reads it.
    for seq in [u64::MAX, u64::MAX - 1, (1 << 62) + 1] {
        let fd = memfd(3 * 4096);
        let f = std::fs::File::from(fd.try_clone().unwrap());
        f.write_all_at(&seq.to_le_bytes(), SEQ_AT).unwrap();
        let e = Client::open(fd.as_fd()).unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{seq}: {e}");
        // A host refuses it too: it would reach FILE as a generation no
        // cold start can restore.
        let e = Host::open(fd.as_fd()).unwrap_err();
        assert_eq!(e.kind(), shm_snapshot::ErrorKind::BadSequence, "{seq}: {e}");
    }
    // And a generation no memfd can hold is refused at initialization.
    let fd = shm_segment::memfd::create(
        "live-test",
        live::memfd_size(4096),
        shm_segment::memfd::FIXED_SIZE,
    )
    .unwrap();
    assert!(live::initialize(fd.as_fd(), 4096, u64::MAX / 2 + 1, |_| {}).is_err());
}

/// A stray write to the commit sequence of a memfd the host already has
/// open: out of range, or moving backwards. The host visits nothing and says
/// which (it never hands such a generation to FILE).
#[test]
fn a_scribbled_sequence_is_refused_by_a_running_host() {
    use std::os::unix::fs::FileExt;
    let fd = memfd(3 * 4096);
    let client = Client::open(fd.as_fd()).unwrap();
    let host = Host::open(fd.as_fd()).unwrap();
    for _ in 0..4 {
        client.work().write_bytes(0, &[7u8; 8]).unwrap();
        client.commit(&[0..8]);
    }
    let f = std::fs::File::from(fd.try_clone().unwrap());
    let never = |_: u64, _: &[u8]| -> Result<(), shm_snapshot::SnapshotError> {
        panic!("nothing may be visited")
    };
    for bad in [1u64 << 63, u64::MAX, (1 << 62) + 2] {
        f.write_all_at(&bad.to_le_bytes(), SEQ_AT).unwrap();
        assert_eq!(
            host.copy_changed(2, never).unwrap(),
            Changed::OutOfRange { seq: bad }
        );
        let e = host.read_after_exit(never).unwrap_err();
        assert_eq!(e.kind(), shm_snapshot::ErrorKind::BadSequence);
        assert!(host.generation().is_err() && host.generation_after_exit().is_err());
        let mut buf = vec![0u8; 4096];
        assert_eq!(host.copy(&mut buf, 3), None);
    }
    f.write_all_at(&0u64.to_le_bytes(), SEQ_AT).unwrap();
    assert_eq!(
        host.copy_changed(4, never).unwrap(),
        Changed::Backwards { generation: 0 }
    );
    assert_eq!(host.copy_changed(0, never).unwrap(), Changed::Nothing);
}

/// A real full filesystem: a 1 MiB tmpfs (needs root; skipped with a message
/// otherwise, and failed under `CI`).
#[test]
fn full_tmpfs_keeps_previous_snapshot() {
    let dir = std::env::temp_dir().join(format!("shm-snapshot-full-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m"])
        .arg("tmpfs")
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        std::fs::remove_dir(&dir).unwrap();
        assert!(
            std::env::var_os("CI").is_none(),
            "full_tmpfs_keeps_previous_snapshot: cannot mount a tmpfs under CI"
        );
        eprintln!(
            "full_tmpfs_keeps_previous_snapshot: cannot mount tmpfs here (not root?); only the injected ENOSPC test ran"
        );
        return;
    }
    let path = dir.join("s.snap");
    let region = 768 * 1024usize;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let mut w = SnapshotWriter::create(FileStorage(f), 4096, region as u64).unwrap();
    let mut state = vec![0u8; region];
    state[..100].fill(7);
    w.snapshot(&state).unwrap();
    let mut durable = (1u64, state.clone());
    let mut err = None;
    for v in 9u8..14 {
        state.fill(v);
        match w.snapshot(&state) {
            Ok(g) => durable = (g, state.clone()),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let e = err.expect("a 1 MiB filesystem never filled up");
    let full = e.is_disk_full();
    // The write that failed partway left no bytes after the last commit.
    let file_len = std::fs::metadata(&path).unwrap().len();
    let writer_len = w.len();
    let f = std::fs::File::open(&path).unwrap();
    let info = inspect(&FileStorage(f.try_clone().unwrap())).unwrap();
    let (restored, _) = common::restore_vec(&FileStorage(f)).unwrap();
    drop(w);
    let _ = std::process::Command::new("umount").arg(&dir).status();
    let _ = std::fs::remove_dir(&dir);
    assert!(full, "{e}");
    assert_eq!(
        file_len, writer_len,
        "a failed write's bytes were left in FILE"
    );
    assert_eq!(info.generation, durable.0);
    assert!(
        restored == durable.1,
        "restored state is not the last durable one"
    );
}

/// Generation `g` of the exit test: `g` written into 3 pages chosen by `g`
/// (so each commit names three ranges and the crash point falls between them).
#[cfg(feature = "fault-injection")]
fn exit_generation(c: &Client, g: u64) -> Vec<std::ops::Range<usize>> {
    let pages = [
        g as usize % 8,
        (g as usize * 3 + 1) % 8,
        (g as usize * 5 + 2) % 8,
    ];
    pages
        .iter()
        .map(|p| {
            let at = p * 4096 + 16 * g as usize;
            c.work().write(at, &g).unwrap();
            at..at + 8
        })
        .collect()
}

#[cfg(feature = "fault-injection")]
fn exit_model(g: u64) -> Vec<u8> {
    let mut v = vec![0u8; 8 * 4096];
    for k in 1..=g {
        for p in [
            k as usize % 8,
            (k as usize * 3 + 1) % 8,
            (k as usize * 5 + 2) % 8,
        ] {
            let at = p * 4096 + 16 * k as usize;
            v[at..at + 8].copy_from_slice(&k.to_ne_bytes());
        }
    }
    v
}

/// A client SIGKILLed inside its n-th commit (crash point `client.mid_commit`,
/// the committed copy half written; or, copying on three threads, its own
/// part written and the helpers' in any state): `Host::copy` refuses the torn copy, but
/// once the program is gone `Host::copy_after_exit` takes exactly the state
/// of that commit from the work area, under the generation the next client
/// then gives it; so `shm-restore`'s exit snapshot loses nothing.
#[cfg(feature = "fault-injection")]
#[test]
fn host_after_exit_takes_the_commit_a_killed_client_was_inside() {
    const REGION: u64 = 8 * 4096;
    if let Some(role) = shm_testkit::role() {
        assert_eq!(role, "client");
        let mut c = common::role_client();
        // With helpers, each commit's three 8-byte ranges are one part each.
        c.set_copy_part_min(8);
        for g in 1..=4 {
            let ranges = exit_generation(&c, g);
            assert_eq!(c.commit(&ranges), g);
        }
        return;
    }
    let _w = shm_testkit::Watchdog::new(std::time::Duration::from_secs(60));
    for (threads, nth) in [(1, 1u64), (1, 2), (1, 4), (3, 1), (3, 2), (3, 4)] {
        let fd = memfd(REGION);
        common::kill_client_mid_commit(
            "host_after_exit_takes_the_commit_a_killed_client_was_inside",
            &fd,
            threads,
            nth,
        );
        let host = Host::open(fd.as_fd()).unwrap();
        let mut buf = vec![0u8; REGION as usize];
        assert_eq!(host.copy(&mut buf, 3), None, "half-written commit copied");
        assert_eq!(host.generation().unwrap(), nth - 1);
        assert_eq!(host.generation_after_exit().unwrap(), nth);
        assert_eq!(host.copy_after_exit(&mut buf).unwrap(), nth);
        assert!(buf == exit_model(nth), "exit copy is not generation {nth}");
        // The next client finishes that commit: the same generation, the same bytes.
        let client = Client::open(fd.as_fd()).unwrap();
        assert_eq!(client.generation(), nth);
        let mut again = vec![0u8; REGION as usize];
        assert_eq!(host.copy(&mut again, 1), Some(nth));
        assert!(again == buf);
        // The finished commit stamped exactly the pages it changed: those
        // laid over generation nth - 1 give generation nth.
        let mut stitched = exit_model(nth - 1);
        let mut pages = Vec::new();
        let r: Result<Changed, std::convert::Infallible> = host.copy_changed(nth - 1, |p, b| {
            let o = usize::try_from(p).unwrap() * 4096;
            stitched[o..o + b.len()].copy_from_slice(b);
            pages.push(p);
            Ok(())
        });
        assert_eq!(r, Ok(Changed::Complete(nth)));
        assert!(
            stitched == buf,
            "changed pages over {} are not {nth}",
            nth - 1
        );
        assert!(!pages.is_empty() && pages.len() < 8, "{pages:?}");
        // With no commit in flight, the exit copy is the committed copy.
        drop(client);
        assert_eq!(host.copy_after_exit(&mut again).unwrap(), nth);
        assert!(again == buf);
    }
}

/// A range of a few bytes inside one 8-byte word is copied (it has no
/// aligned middle; its word view used to be refused with a panic).
#[test]
fn a_range_inside_one_word_is_committed() {
    let fd = memfd(4096);
    let sut = Client::open(fd.as_fd()).unwrap();
    sut.work().write_bytes(3, b"ab").unwrap();
    assert_eq!(sut.commit(&[3..5]), 1);
    let host = Host::open(fd.as_fd()).unwrap();
    let mut buf = vec![0u8; 4096];
    assert_eq!(host.copy(&mut buf, 1), Some(1));
    assert_eq!(&buf[3..5], b"ab");
}

/// The committed copy and the pages stamped with generation `g`, as a host
/// sees them after commit `g`.
fn committed_and_changed(host: &Host, g: u64) -> (Vec<u8>, Vec<(u64, Vec<u8>)>) {
    let mut buf = vec![0u8; usize::try_from(host.region_size()).unwrap()];
    assert_eq!(
        host.copy(&mut buf, 1),
        Some(g),
        "no commit runs concurrently"
    );
    let mut pages = Vec::new();
    let r: Result<Changed, std::convert::Infallible> = host.copy_changed(g - 1, |p, b| {
        pages.push((p, b.to_vec()));
        Ok(())
    });
    assert_eq!(r, Ok(Changed::Complete(g)));
    (buf, pages)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

    /// Random edits and dirty ranges (unaligned, overlapping, past the end)
    /// committed by a client copying on one thread and by one copying on
    /// several: after each commit both publish the same bytes and stamp the
    /// same pages, and the committed copy is the work area.
    #[test]
    fn a_copy_on_several_threads_commits_the_same_bytes_as_on_one(
        pages in 1usize..40,
        tail in 0usize..4096,
        threads in 2usize..5,
        part_min in proptest::sample::select(vec![1usize, 4096, 3 * 4096]),
        commits in proptest::collection::vec(
            proptest::collection::vec(
                (proptest::arbitrary::any::<proptest::sample::Index>(), 0usize..3 * 4096 + 9, 1u8..=255),
                0..12,
            ),
            1..5,
        ),
    ) {
        let region = pages * 4096 + tail;
        let (one_fd, many_fd) = (memfd(region as u64), memfd(region as u64));
        let mut one = Client::open(one_fd.as_fd()).unwrap();
        let mut sut = Client::open(many_fd.as_fd()).unwrap();
        one.set_copy_threads(1);
        sut.set_copy_threads(threads);
        sut.set_copy_part_min(part_min);
        proptest::prop_assert_eq!(sut.copy_threads(), threads);
        let (one_host, sut_host) = (Host::open(one_fd.as_fd()).unwrap(), Host::open(many_fd.as_fd()).unwrap());
        let mut model = vec![0u8; region];
        for (k, edits) in commits.iter().enumerate() {
            let mut dirty = Vec::new();
            for &(at, len, xor) in edits {
                let start = at.index(region);
                let end = (start + len).min(region);
                for b in &mut model[start..end] {
                    *b ^= xor;
                }
                one.work().write_bytes(start, &model[start..end]).unwrap();
                sut.work().write_bytes(start, &model[start..end]).unwrap();
                // Some ranges run past the state, as a caller may name them.
                dirty.push(start..if xor % 4 == 0 { start + len } else { end });
            }
            let g = k as u64 + 1;
            proptest::prop_assert_eq!(one.commit(&dirty), g);
            proptest::prop_assert_eq!(sut.commit(&dirty), g);
            let (one_copy, one_pages) = committed_and_changed(&one_host, g);
            let (sut_copy, sut_pages) = committed_and_changed(&sut_host, g);
            proptest::prop_assert!(sut_copy == model, "commit {} lost bytes", g);
            proptest::prop_assert!(one_copy == model);
            proptest::prop_assert_eq!(sut_pages, one_pages);
        }
    }
}

/// Threads sharing one client commit at once, with no lock of their own,
/// while a host in the same process copies: the client serializes the
/// commits, so each gets its own generation (no two interleave their `seq`
/// stores), and the last copy holds every thread's last value.
#[test]
fn commits_from_several_threads_each_get_their_own_generation() {
    const THREADS: usize = 4;
    const COMMITS: u64 = 2000;
    let region = (THREADS * 4096) as u64;
    let fd = memfd(region);
    let client = Client::open(fd.as_fd()).unwrap();
    let host = Host::open(fd.as_fd()).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false); // atomics-ok: test stop flag
    let mut generations: Vec<u64> = std::thread::scope(|s| {
        let copier = s.spawn(|| {
            let mut buf = vec![0u8; region as usize];
            let running = || !done.load(std::sync::atomic::Ordering::Relaxed); // atomics-ok: test stop flag
            while running() {
                host.copy(&mut buf, 1);
            }
        });
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let client = &client;
                s.spawn(move || {
                    let at = t * 4096;
                    (1..=COMMITS)
                        .map(|i| {
                            // Each thread writes and commits only its own page.
                            client.work().write_bytes(at, &i.to_le_bytes()).unwrap();
                            client.commit(&[at..at + 8])
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let all = threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        done.store(true, std::sync::atomic::Ordering::Relaxed); // atomics-ok: test stop flag
        copier.join().unwrap();
        all
    });
    generations.sort_unstable();
    let total = THREADS as u64 * COMMITS;
    assert!(
        generations.iter().copied().eq(1..=total),
        "generations returned are not 1..={total} once each"
    );
    let mut buf = vec![0u8; region as usize];
    assert_eq!(host.copy(&mut buf, 1), Some(total));
    for t in 0..THREADS {
        assert_eq!(
            buf[t * 4096..t * 4096 + 8],
            COMMITS.to_le_bytes(),
            "thread {t}"
        );
    }
}

/// One client at a time: a second `Client::open` on the memfd is refused
/// (it would reset the first one's uncommitted edits) while a `Waiter`
/// opens and leaves them alone, and the memfd opens again once the first
/// client is dropped, with its committed state.
#[test]
fn a_second_client_on_the_memfd_is_refused_until_the_first_is_dropped() {
    let fd = memfd(4096);
    let first = Client::open(fd.as_fd()).unwrap();
    first.work().write_bytes(0, b"committed").unwrap();
    first.commit(&[0..9]);
    first.work().write_bytes(100, b"pending").unwrap();
    let e = Client::open(fd.as_fd()).expect_err("a second client opened");
    assert_eq!(e.kind(), shm_snapshot::ErrorKind::Busy, "{e}");
    assert!(e.to_string().contains("another Client"), "{e}");
    // A waiter opens at any time; neither it nor the refused open changed
    // anything: the first client's uncommitted edit is intact.
    let waiter = shm_snapshot::live::Waiter::open(fd.as_fd()).unwrap();
    assert_eq!(waiter.generation(), 1);
    let mut pending = [0u8; 7];
    first.work().read_bytes(100, &mut pending).unwrap();
    assert_eq!(&pending, b"pending");
    assert_eq!(first.commit(&[100..107]), 2);
    assert_eq!(waiter.generation(), 2);
    drop(first);
    let second = Client::open(fd.as_fd()).unwrap();
    let mut state = [0u8; 107];
    second.work().read_bytes(0, &mut state).unwrap();
    assert_eq!(
        (&state[..9], &state[100..]),
        (&b"committed"[..], &b"pending"[..])
    );
    assert_eq!(second.generation(), 2);
}
