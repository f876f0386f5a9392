//! One conformance suite for named POSIX shm segments and memfd segments.
//!
//! Helper processes are this test binary re-run in a role (`shm_testkit::role`).
//! Every test uses unique names and checks that it leaves nothing in /dev/shm.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering}; // atomics-ok: test-local views of shared words
use std::time::Duration;

use shm_segment::{Layout, Segment, SegmentError, ShmBox, memfd, shared_struct};
use shm_testkit::{Watchdog, role, role_command, shm_objects_with_prefix, spawn, unique_name};

shared_struct! {
    struct Counter { value: AtomicU64, pad: [AtomicU64; 7] }
}
shared_struct! {
    struct Other { value: AtomicU64 }
}

/// The two kinds of segment every applicable test runs against.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Named,
    Memfd,
}

/// A place a segment lives: a name, or a memfd the test holds (and hands to children).
struct Home {
    name: String,
    memfd: Option<OwnedFd>,
}

impl Home {
    fn new(kind: Kind, prefix: &str) -> Home {
        let name = unique_name(prefix);
        let memfd = match kind {
            Kind::Named => None,
            // A raw memfd, as a service manager would hand one back: zeroed, sized, sealed.
            Kind::Memfd => Some(memfd::create(&name, 1 << 16, memfd::FIXED_SIZE).unwrap()),
        };
        Home { name, memfd }
    }

    fn builder(&self) -> shm_segment::SegmentBuilder {
        match &self.memfd {
            None => Segment::builder(&self.name),
            Some(fd) => Segment::adopt(fd.try_clone().unwrap()),
        }
    }

    /// A command for a child role that can reach this segment.
    fn child(&self, test: &str, role_name: &str) -> Command {
        let mut cmd = role_command(test, role_name);
        cmd.env("SEG_NAME", &self.name);
        if let Some(fd) = &self.memfd {
            // Inherited by the child: clear close-on-exec on a duplicate that outlives the spawn.
            let dup = rustix::io::fcntl_dupfd_cloexec(fd, 100).unwrap();
            rustix::io::fcntl_setfd(&dup, rustix::io::FdFlags::empty()).unwrap();
            cmd.env("SEG_FD", dup.as_raw_fd().to_string());
            std::mem::forget(dup); // closed when this test process exits
        }
        cmd
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert!(
                shm_objects_with_prefix(&self.name).is_empty(),
                "{} left behind in /dev/shm",
                self.name
            );
        }
        let _ = Segment::remove(&self.name);
    }
}

/// In a child: the builder for the segment the parent described.
fn child_builder() -> shm_segment::SegmentBuilder {
    match std::env::var("SEG_FD") {
        Ok(fd) => {
            let raw: i32 = fd.parse().unwrap();
            // SAFETY: the parent passed this fd number for us to own; nothing else in this process uses it.
            #[allow(unsafe_code)]
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            Segment::adopt(fd)
        }
        Err(_) => Segment::builder(&std::env::var("SEG_NAME").unwrap()),
    }
}

fn run_child(role: &str) {
    let builder = child_builder().layout::<Counter>();
    match role {
        "create" => match builder.create() {
            Ok(seg) => {
                println!("RESULT created");
                seg.leak();
            }
            Err(SegmentError::AlreadyExists { .. }) => println!("RESULT exists"),
            Err(e) => println!("RESULT error {e}"),
        },
        "open_or_create" => {
            let seg = builder.open_or_create().unwrap();
            let b: ShmBox<Counter> = ShmBox::new(seg).unwrap();
            b.value.fetch_add(1, Ordering::SeqCst);
            println!(
                "RESULT {}",
                if b.segment().created() {
                    "created"
                } else {
                    "opened"
                }
            );
            b.leak();
        }
        "init_and_hold" => {
            // Crash points (SHM_CRASH_AT) may kill us before we get here.
            let seg = builder
                .open_or_create_with(|p| p.write(0, &7u64).unwrap())
                .unwrap();
            println!("RESULT ready");
            std::thread::sleep(Duration::from_secs(60));
            drop(seg);
        }
        "attach_detach" => {
            let seg = builder
                .last_out_unlinks(true)
                .open_timeout(Duration::from_secs(10))
                .open_or_create()
                .unwrap();
            let b: ShmBox<Counter> = ShmBox::new(seg).unwrap();
            b.value.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(u64::from(std::process::id() % 7)));
        }
        "read_until_truncated" => {
            let seg = builder.open().unwrap();
            println!("RESULT ready");
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let mut i = 0u64;
            // Keep reading and writing every page while another process shrinks the object.
            while !seg.is_truncated() && std::time::Instant::now() < deadline {
                for page in (0..seg.len()).step_by(4096) {
                    seg.payload().write(page, &i).unwrap();
                    let _ = seg.payload().read::<u64>(page).unwrap();
                }
                i += 1;
            }
            match seg.check_mapped() {
                Err(e @ SegmentError::Truncated { .. }) => println!("RESULT truncated: {e}"),
                other => println!("RESULT not truncated: {other:?}"),
            }
        }
        other => panic!("unknown role {other}"),
    }
}

macro_rules! both_kinds {
    ($name:ident, $body:ident) => {
        mod $name {
            #[test]
            fn named() {
                if let Some(r) = shm_testkit::role() {
                    return super::run_child(&r);
                }
                super::$body(super::Kind::Named, concat!(stringify!($name), "::named"));
            }
            #[test]
            fn memfd() {
                if let Some(r) = shm_testkit::role() {
                    return super::run_child(&r);
                }
                super::$body(super::Kind::Memfd, concat!(stringify!($name), "::memfd"));
            }
        }
    };
}

fn create_then_open_shares_bytes(kind: Kind, _test: &str) {
    let home = Home::new(kind, "seg-share");
    let a: ShmBox<Counter> =
        ShmBox::new(home.builder().layout::<Counter>().create().unwrap()).unwrap();
    a.value.store(41, Ordering::SeqCst);
    let b: ShmBox<Counter> =
        ShmBox::new(home.builder().layout::<Counter>().open().unwrap()).unwrap();
    b.value.fetch_add(1, Ordering::SeqCst);
    assert_eq!(a.value.load(Ordering::SeqCst), 42);
    assert!(a.segment().created() && !b.segment().created());
    // A named object is exactly as large as asked; an adopted memfd lends its whole size.
    assert!(b.segment().len() >= size_of::<Counter>());
    assert!(matches!(
        home.builder().layout::<Counter>().create(),
        Err(SegmentError::AlreadyExists { .. })
    ));
}
both_kinds!(create_then_open, create_then_open_shares_bytes);

fn layout_mismatch_is_refused(kind: Kind, _test: &str) {
    let home = Home::new(kind, "seg-layout");
    let _a = home.builder().layout::<Counter>().create().unwrap();
    let err = home.builder().layout::<Other>().open().unwrap_err();
    assert!(
        matches!(&err, SegmentError::LayoutMismatch { expected, found, .. } if **expected == Layout::of::<Other>() && **found == Layout::of::<Counter>()),
        "{err}"
    );
    let seg = home.builder().layout::<Counter>().open().unwrap();
    assert!(matches!(
        ShmBox::<Other>::new(seg),
        Err(SegmentError::LayoutMismatch { .. })
    ));
}
both_kinds!(layout_mismatch, layout_mismatch_is_refused);

fn too_small_is_refused(kind: Kind, _test: &str) {
    let home = Home::new(kind, "seg-small");
    let _a = home.builder().size(100).create().unwrap();
    match kind {
        Kind::Named => {
            let err = home.builder().size(1 << 20).open().unwrap_err();
            assert!(
                matches!(err, SegmentError::TooSmall { need, .. } if need == 1 << 20),
                "{err}"
            );
        }
        Kind::Memfd => {
            // The memfd itself is too small for the asked payload: refused before mapping.
            let err = home.builder().size(1 << 20).open().unwrap_err();
            assert!(
                matches!(
                    err,
                    SegmentError::Validate(memfd::ValidateError::TooSmall { .. })
                ),
                "{err}"
            );
        }
    }
}
both_kinds!(too_small, too_small_is_refused);

fn concurrent_creators_one_wins(kind: Kind, test: &str) {
    let _w = Watchdog::new(Duration::from_secs(60));
    let home = Home::new(kind, "seg-race");
    let mut children: Vec<_> = (0..6)
        .map(|_| home.child(test, "create").output_later())
        .collect();
    let results: Vec<String> = children.iter_mut().map(Pending::finish).collect();
    let created = results.iter().filter(|r| *r == "created").count();
    let exists = results.iter().filter(|r| *r == "exists").count();
    assert_eq!((created, exists), (1, 5), "{results:?}");
    // The winner leaked it so we can check it is valid, then we own and remove it.
    let mut seg = home.builder().layout::<Counter>().open().unwrap();
    seg.own();
}
both_kinds!(concurrent_creators, concurrent_creators_one_wins);

fn concurrent_open_or_create_share_one_object(kind: Kind, test: &str) {
    let _w = Watchdog::new(Duration::from_secs(60));
    let home = Home::new(kind, "seg-ooc");
    let mut children: Vec<_> = (0..6)
        .map(|_| home.child(test, "open_or_create").output_later())
        .collect();
    let results: Vec<String> = children.iter_mut().map(Pending::finish).collect();
    assert_eq!(
        results.iter().filter(|r| *r == "created").count(),
        1,
        "{results:?}"
    );
    let mut b: ShmBox<Counter> =
        ShmBox::new(home.builder().layout::<Counter>().open().unwrap()).unwrap();
    assert_eq!(
        b.value.load(Ordering::SeqCst),
        6,
        "every process saw the same object"
    );
    b.own();
}
both_kinds!(
    concurrent_open_or_create,
    concurrent_open_or_create_share_one_object
);

fn creator_killed_then_next_open_recovers(kind: Kind, test: &str, point: &str) {
    let _w = Watchdog::new(Duration::from_secs(60));
    let home = Home::new(kind, "seg-kill");
    let mut child = home.child(test, "init_and_hold");
    child
        .env(shm_sync::crash::CRASH_ENV, point)
        .stdout(std::process::Stdio::piped());
    let mut child = spawn(child).unwrap();
    if point.is_empty() {
        // No crash point: wait until the child is ready, then SIGKILL it.
        child.stdout_lines().wait_for("RESULT ready");
        child.sigkill_and_wait().unwrap();
    } else {
        let status = child.wait_status(Duration::from_secs(30));
        assert_eq!(
            status.signal(),
            Some(9),
            "crash point {point} must SIGKILL the creator"
        );
    }
    let seg = home
        .builder()
        .layout::<Counter>()
        .open_timeout(Duration::from_millis(200))
        .open_or_create()
        .unwrap();
    match (kind, point) {
        // A named object is linked only after init, and one whose users all died is reclaimed.
        (Kind::Named, _) => assert!(
            seg.created(),
            "a stale or half-made object must be replaced"
        ),
        // A memfd stays with its holder: after a complete init it is reused, otherwise re-initialised.
        (Kind::Memfd, "") => {
            assert!(!seg.created());
            assert_eq!(seg.payload().read::<u64>(0).unwrap(), 7);
        }
        (Kind::Memfd, _) => assert!(seg.created(), "an interrupted init is taken over"),
    }
}

mod creator_killed {
    use super::Kind;
    macro_rules! at {
        ($fn:ident, $kind:expr, $point:literal) => {
            #[test]
            fn $fn() {
                if let Some(r) = shm_testkit::role() {
                    return super::run_child(&r);
                }
                super::creator_killed_then_next_open_recovers(
                    $kind,
                    concat!("creator_killed::", stringify!($fn)),
                    $point,
                );
            }
        };
    }
    at!(named_before_init, Kind::Named, "segment.before_init");
    at!(named_before_link, Kind::Named, "segment.before_link");
    at!(named_after_init, Kind::Named, "");
    at!(memfd_before_publish, Kind::Memfd, "segment.before_publish");
    at!(memfd_after_init, Kind::Memfd, "");
}

/// Collects a child's RESULT line later, so several children run at once.
struct Pending(Option<std::process::Child>);
trait OutputLater {
    fn output_later(&mut self) -> Pending;
}
impl OutputLater for Command {
    fn output_later(&mut self) -> Pending {
        Pending(Some(
            self.stdout(std::process::Stdio::piped()).spawn().unwrap(),
        ))
    }
}
impl Pending {
    fn finish(&mut self) -> String {
        let out = self.0.take().unwrap().wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r.to_owned()))
            .unwrap_or_default()
    }
}

#[test]
fn hundred_processes_last_one_out_unlinks() {
    if let Some(r) = role() {
        return run_child(&r);
    }
    let _w = Watchdog::new(Duration::from_secs(120));
    let home = Home::new(Kind::Named, "seg-100");
    let mut running: Vec<Pending> = Vec::new();
    for _ in 0..100 {
        running.push(
            home.child("hundred_processes_last_one_out_unlinks", "attach_detach")
                .output_later(),
        );
        if running.len() >= 16 {
            running.remove(0).finish();
        }
    }
    for mut p in running {
        p.finish();
    }
    // Everyone detached: the last one out unlinked the name (checked again by Home's drop).
    assert!(shm_objects_with_prefix(&home.name).is_empty());
    assert!(matches!(
        Segment::builder(&home.name).layout::<Counter>().open(),
        Err(SegmentError::NotFound { .. })
    ));
}

#[test]
fn leak_keeps_and_own_removes() {
    let home = Home::new(Kind::Named, "seg-leak");
    let seg = Segment::builder(&home.name).size(8).create().unwrap();
    seg.payload().write(0, &5u64).unwrap();
    seg.leak();
    assert_eq!(
        shm_objects_with_prefix(&home.name).len(),
        1,
        "leaked object stays"
    );
    // Nobody is attached, but a leaked object is not stale: it opens with its data.
    let mut a = Segment::builder(&home.name).size(8).open().unwrap();
    assert_eq!(a.payload().read::<u64>(0).unwrap(), 5);
    let mut b = Segment::builder(&home.name).size(8).open().unwrap();
    a.own();
    b.own(); // two owners: the second drop finds the name gone and does nothing
    drop(a);
    assert!(b.is_unlinked());
    drop(b);
    assert!(shm_objects_with_prefix(&home.name).is_empty());
}

#[test]
fn owner_drop_marks_attached_handles_unlinked() {
    let home = Home::new(Kind::Named, "seg-owner");
    let owner = Segment::builder(&home.name).size(8).create().unwrap();
    let user = Segment::builder(&home.name).size(8).open().unwrap();
    assert!(owner.is_owner() && !user.is_owner());
    drop(owner);
    assert!(user.is_unlinked(), "attached users learn the name is gone");
    // A newcomer gets a fresh object, not silently the same name for different memory.
    let fresh = Segment::builder(&home.name)
        .size(8)
        .open_or_create()
        .unwrap();
    assert!(fresh.created() && !fresh.is_unlinked());
}

#[test]
fn other_mode_or_user_is_refused() {
    let home = Home::new(Kind::Named, "seg-mode");
    let seg = Segment::builder(&home.name)
        .size(8)
        .mode(0o644)
        .create()
        .unwrap();
    let err = Segment::builder(&home.name).size(8).open().unwrap_err();
    assert!(
        matches!(
            err,
            SegmentError::Permissions {
                mode: 0o644,
                expected: 0o600,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        Segment::builder(&home.name)
            .size(8)
            .mode(0o644)
            .open()
            .is_ok()
    );
    if rustix::process::geteuid().is_root() {
        let path = format!("/dev/shm/{}", home.name);
        rustix::fs::chown(
            path.as_str(),
            Some(rustix::process::Uid::from_raw(65534)),
            None,
        )
        .unwrap();
        let err = Segment::builder(&home.name)
            .size(8)
            .mode(0o644)
            .open()
            .unwrap_err();
        assert!(
            matches!(err, SegmentError::ForeignOwner { uid: 65534, .. }),
            "{err}"
        );
        // Only an object's owner unlinks it: even the creating handle leaves
        // another user's object alone, and so does `remove`.
        drop(seg);
        assert!(
            std::fs::metadata(&path).is_ok(),
            "another user's object is kept"
        );
        let err = Segment::remove(&home.name).unwrap_err();
        assert!(
            matches!(err, SegmentError::ForeignOwner { uid: 65534, .. }),
            "{err}"
        );
        rustix::fs::chown(path.as_str(), Some(rustix::process::geteuid()), None).unwrap();
        assert!(remove_detached(&home.name).unwrap());
    } else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI runs as root so the foreign-owner check runs"
        );
        drop(seg);
    }
}

#[test]
fn foreign_or_corrupt_objects_are_refused_not_reclaimed() {
    let home = Home::new(Kind::Named, "seg-junk");
    let path = format!("/dev/shm/{}", home.name);
    std::fs::write(&path, vec![0xAB; 8192]).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let err = Segment::builder(&home.name)
        .size(8)
        .open_or_create()
        .unwrap_err();
    assert!(matches!(err, SegmentError::Corrupt { .. }), "{err}");
    assert!(
        std::fs::metadata(&path).is_ok(),
        "someone else's file is never unlinked"
    );
    std::fs::write(&path, b"short").unwrap();
    let err = Segment::builder(&home.name).size(8).open().unwrap_err();
    assert!(matches!(err, SegmentError::Corrupt { .. }), "{err}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn invalid_names_are_refused() {
    for name in ["", "a/b", "a\0b", ".", ".."] {
        let err = Segment::builder(name).size(8).create().unwrap_err();
        assert!(
            matches!(err, SegmentError::InvalidName { .. }),
            "{name:?}: {err}"
        );
    }
    assert!(Segment::builder(&"x".repeat(300)).size(8).open().is_err());
}

#[test]
fn adopting_a_non_memfd_or_unsealable_fd_is_refused() {
    let file = std::fs::File::open("/proc/self/status").unwrap();
    let err = Segment::adopt(OwnedFd::from(file))
        .size(8)
        .open()
        .unwrap_err();
    assert!(
        matches!(
            err,
            SegmentError::Validate(memfd::ValidateError::NotMemfd { .. })
        ),
        "{err}"
    );
    // An unsealed memfd gets sealed on adoption, so nobody can shrink it under us.
    let fd = memfd::create("unsealed", 1 << 16, memfd::Seals::empty()).unwrap();
    let seg = Segment::adopt(fd.try_clone().unwrap())
        .size(8)
        .open_or_create()
        .unwrap();
    assert!(
        memfd::seals(fd.as_fd())
            .unwrap()
            .contains(memfd::FIXED_SIZE)
    );
    assert!(rustix::fs::ftruncate(&fd, 10).is_err());
    drop(seg);
}

#[test]
fn read_only_open_cannot_write() {
    let home = Home::new(Kind::Named, "seg-ro");
    let seg = Segment::builder(&home.name).size(64).create().unwrap();
    seg.payload().write(0, &9u64).unwrap();
    let ro = Segment::builder(&home.name)
        .size(64)
        .read_only()
        .open()
        .unwrap();
    assert_eq!(ro.payload().read::<u64>(0).unwrap(), 9);
    assert!(ro.payload().write(0, &1u64).is_err());
    assert!(ro.payload().atomic_u64(0).is_err());
}

#[test]
fn memfd_segment_is_sealed_and_self_contained() {
    let seg = Segment::memfd("conf").layout::<Counter>().create().unwrap();
    let seals = memfd::seals(seg.fd()).unwrap();
    assert!(seals.contains(memfd::FIXED_SIZE));
    assert!(seg.name().is_none());
    // Another handle to the same memfd sees the same value.
    let b: ShmBox<Counter> = ShmBox::new(seg).unwrap();
    b.value.store(3, Ordering::SeqCst);
    let dup = b.segment().fd().try_clone_to_owned().unwrap();
    let c: ShmBox<Counter> =
        ShmBox::new(Segment::adopt(dup).layout::<Counter>().open().unwrap()).unwrap();
    assert_eq!(c.value.load(Ordering::SeqCst), 3);
}

#[test]
fn hostile_header_bytes_give_errors_not_panics() {
    use proptest::prelude::*;
    let fd = memfd::create("hostile", 2 * 4096, memfd::Seals::empty()).unwrap();
    let seg = Segment::adopt(fd.try_clone().unwrap())
        .size(8)
        .create()
        .unwrap();
    let header = seg.mapping().region();
    proptest!(ProptestConfig::with_cases(512), |(offset in 0usize..128, bytes in proptest::collection::vec(any::<u8>(), 1..16))| {
        let offset = offset.min(128 - bytes.len());
        let mut saved = [0u8; 128];
        header.read_bytes(0, &mut saved).unwrap();
        header.write_bytes(offset, &bytes).unwrap();
        // Whatever the bytes, opening gives a segment or a typed error.
        let _ = Segment::adopt(fd.try_clone().unwrap()).size(8).open_timeout(Duration::ZERO).open();
        header.write_bytes(0, &saved).unwrap();
    });
}

#[test]
fn persistent_object_outlives_its_creator_until_removed() {
    let home = Home::new(Kind::Named, "seg-persist");
    let seg = Segment::builder(&home.name)
        .size(8)
        .persistent(true)
        .create()
        .unwrap();
    seg.payload().write(0, &11u64).unwrap();
    assert!(!seg.is_owner());
    drop(seg);
    let again = Segment::builder(&home.name).size(8).open().unwrap();
    assert_eq!(
        again.payload().read::<u64>(0).unwrap(),
        11,
        "kept with nobody attached"
    );
    drop(again);
    assert!(remove_detached(&home.name).unwrap());
}

/// `Segment::remove(name)` once no process holds the object. A sibling
/// test that spawns a child at the moment this test still has the object
/// open shares the open file (and its `flock`) with that child until the
/// child's `exec` closes it: `remove` then rightly reports `InUse` for that
/// instant, so it is asked again for a while.
fn remove_detached(name: &str) -> Result<bool, SegmentError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Segment::remove(name) {
            Err(SegmentError::InUse { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Shrinks `/dev/shm/NAME` to `len` bytes, as `truncate -s LEN` would.
fn shrink(name: &str, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/{name}"))
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[test]
fn truncation_under_attached_processes_is_an_error_not_a_sigbus() {
    const TEST: &str = "truncation_under_attached_processes_is_an_error_not_a_sigbus";
    if let Some(r) = role() {
        return run_child(&r);
    }
    let _w = Watchdog::new(Duration::from_secs(60));
    let home = Home::new(Kind::Named, "seg-trunc");
    let builder = || {
        Segment::builder(&home.name)
            .layout::<Counter>()
            .size(16 * 4096)
    };
    drop(builder().persistent(true).create().unwrap());
    let mut child = home.child(TEST, "read_until_truncated");
    child.stdout(std::process::Stdio::piped());
    let mut child = spawn(child).unwrap();
    let mut lines = child.stdout_lines();
    lines.wait_for("RESULT ready");
    // This process attaches too, then the object is cut to nothing under both.
    let mine = builder().open().unwrap();
    shrink(&home.name, 0);
    let status = child.wait_status(Duration::from_secs(30));
    let rest: Vec<String> = lines.collect();
    assert!(
        status.success(),
        "the attached process must survive the truncation: {status:?} {rest:?}"
    );
    assert!(
        rest.iter().any(|l| l.contains("RESULT truncated: segment ")
            && l.contains("truncated by another process")),
        "{rest:?}"
    );
    // In this process too: the access returns (zeros) and the handle reports it.
    assert_eq!(mine.payload().read::<u64>(4096).unwrap(), 0);
    assert!(mine.is_truncated());
    // Still attached here: an opener is told why it cannot have the object.
    let err = builder()
        .open_timeout(Duration::from_millis(50))
        .open()
        .unwrap_err();
    assert!(matches!(err, SegmentError::Truncated { .. }), "{err}");
    drop(mine);
    // Nobody is attached any more: the shrunken (even persistent) object is reclaimed.
    let fresh = builder().open_or_create().unwrap();
    assert!(fresh.created(), "the shrunken object is replaced");
    assert!(!fresh.is_truncated());
}

#[test]
fn shrunken_object_is_reclaimed_but_a_short_foreign_file_is_not() {
    let home = Home::new(Kind::Named, "seg-shrunk");
    let path = format!("/dev/shm/{}", home.name);
    // Cut inside the payload: the header still says it is ours.
    drop(
        Segment::builder(&home.name)
            .size(8192)
            .persistent(true)
            .create()
            .unwrap(),
    );
    shrink(&home.name, 4096 + 100);
    let seg = Segment::builder(&home.name)
        .size(8192)
        .open_or_create()
        .unwrap();
    assert!(seg.created());
    drop(seg);
    // Cut inside the header page.
    drop(
        Segment::builder(&home.name)
            .size(8)
            .persistent(true)
            .create()
            .unwrap(),
    );
    shrink(&home.name, 100);
    assert!(matches!(
        Segment::builder(&home.name).size(8).open(),
        Err(SegmentError::NotFound { .. })
    ));
    assert!(std::fs::metadata(&path).is_err(), "reclaimed by open");
    // A few bytes without our magic: never ours to unlink.
    std::fs::write(&path, b"abcdefghij").unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let err = Segment::builder(&home.name)
        .size(8)
        .open_or_create()
        .unwrap_err();
    assert!(matches!(err, SegmentError::Corrupt { .. }), "{err}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn sigbus_outside_guarded_mappings_still_kills() {
    const TEST: &str = "sigbus_outside_guarded_mappings_still_kills";
    if role().is_some() {
        use shm_segment::{Access, Mapping};
        // A guarded mapping (installs the handler) survives its file shrinking ...
        let fd = memfd::create("guarded", 8192, memfd::Seals::empty()).unwrap();
        let guarded = Mapping::map_guarded(fd.as_fd(), 0, 8192, Access::ReadWrite).unwrap();
        rustix::fs::ftruncate(&fd, 0).unwrap();
        assert_eq!(guarded.region().read::<u64>(4096).unwrap(), 0);
        assert!(guarded.is_truncated());
        println!("RESULT guarded survived");
        // ... but a plain mapping's SIGBUS still goes to the default action.
        let fd = memfd::create("plain", 8192, memfd::Seals::empty()).unwrap();
        let plain = Mapping::map(fd.as_fd(), 0, 8192, Access::ReadWrite).unwrap();
        rustix::fs::ftruncate(&fd, 0).unwrap();
        let v = plain.region().read::<u64>(4096);
        println!("RESULT plain survived {v:?}");
        return;
    }
    let _w = Watchdog::new(Duration::from_secs(60));
    let mut cmd = role_command(TEST, "fault");
    cmd.stdout(std::process::Stdio::piped());
    // A handler that swallowed the fault would spin on it: bounded, and the
    // child is SIGKILLed when the handle drops.
    let mut child = spawn(cmd).unwrap();
    let out = child.inner_mut().stdout.take().unwrap();
    let status = child.wait_status(Duration::from_secs(20));
    let stdout = std::io::read_to_string(out).unwrap();
    assert!(stdout.contains("RESULT guarded survived"), "{stdout}");
    assert!(!stdout.contains("RESULT plain survived"), "{stdout}");
    assert_eq!(status.signal(), Some(7), "killed by SIGBUS: {status:?}");
}

#[test]
fn remove_refuses_live_and_foreign_objects() {
    const TEST: &str = "remove_refuses_live_and_foreign_objects";
    if let Some(r) = role() {
        return run_child(&r);
    }
    let _w = Watchdog::new(Duration::from_secs(60));
    let home = Home::new(Kind::Named, "seg-remove");
    let path = format!("/dev/shm/{}", home.name);
    // Held by another live process: refused, and the object stays.
    let mut child = home.child(TEST, "init_and_hold");
    child.stdout(std::process::Stdio::piped());
    let mut child = spawn(child).unwrap();
    child.stdout_lines().wait_for("RESULT ready");
    let err = Segment::remove(&home.name).unwrap_err();
    assert!(matches!(err, SegmentError::InUse { .. }), "{err}");
    assert!(std::fs::metadata(&path).is_ok(), "a live object is kept");
    // Its holder killed: stale, removed.
    child.sigkill_and_wait().unwrap();
    assert!(remove_detached(&home.name).unwrap());
    assert!(std::fs::metadata(&path).is_err());
    assert!(
        !Segment::remove(&home.name).unwrap(),
        "nothing left to remove"
    );
    // Force unlinks a live object and tells its users.
    let live = Segment::builder(&home.name)
        .size(8)
        .persistent(true)
        .create()
        .unwrap();
    assert!(matches!(
        Segment::remove(&home.name),
        Err(SegmentError::InUse { .. })
    ));
    assert!(Segment::force_remove(&home.name).unwrap());
    assert!(live.is_unlinked());
    assert!(std::fs::metadata(&path).is_err());
    drop(live);
    // Not an outlive segment: never removed, by force or not.
    std::fs::write(&path, b"someone else's data").unwrap();
    for remove in [Segment::remove, Segment::force_remove] {
        let err = remove(&home.name).unwrap_err();
        assert!(matches!(err, SegmentError::Corrupt { .. }), "{err}");
        assert!(std::fs::metadata(&path).is_ok(), "a foreign file is kept");
    }
    std::fs::remove_file(&path).unwrap();
    // An object shrunk to nothing holds nothing to lose: removed.
    drop(
        Segment::builder(&home.name)
            .size(8)
            .persistent(true)
            .create()
            .unwrap(),
    );
    shrink(&home.name, 0);
    assert!(remove_detached(&home.name).unwrap());
}

#[test]
fn open_errors_name_the_os_error_and_the_path() {
    let home = Home::new(Kind::Named, "seg-eloop");
    let path = format!("/dev/shm/{}", home.name);
    std::os::unix::fs::symlink("/dev/null", &path).unwrap();
    let err = Segment::builder(&home.name).size(8).open().unwrap_err();
    let _ = std::fs::remove_file(&path);
    let shown = err.to_string();
    assert!(matches!(err, SegmentError::Io { .. }), "{shown}");
    assert!(
        shown.contains(&format!("open {path}")) && shown.contains("(os error 40)"),
        "the message names the call, the path and the OS error: {shown}"
    );
}
