//! Separately built programs sharing a `shared_struct!` type, as their users
//! run them: the `writer`, `reader` and `mismatched` binaries of this package,
//! each declaring its own `Message`; the same with `--board`, a typed mailbox
//! of a `plain_struct!` each declares; and, as root, the same programs run as
//! other users under access policies (`setpriv`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use shm_segment::{AccessPolicy, Segment, SegmentError};
use shm_testkit::users::{SharedExe, User, can_switch_users};
use shm_testkit::{Child, Watchdog, shm_objects_with_prefix, spawn, unique_name};

const WRITER: &str = env!("CARGO_BIN_EXE_writer");
const READER: &str = env!("CARGO_BIN_EXE_reader");
const MISMATCHED: &str = env!("CARGO_BIN_EXE_mismatched");

/// The group of the tests' services, the writer's uid, and an unrelated uid
/// (nobody) that the tests put inside or outside the policy.
const GROUP: u32 = 4242;
const WRITER_UID: u32 = 4243;
const NOBODY: u32 = 65534;

/// A running writer: it created the segment and holds it until dropped.
struct Writer {
    child: Child,
}

impl Writer {
    /// Starts `cmd` (the writer, maybe under setpriv) and waits for `ready`.
    fn start(mut cmd: Command) -> Writer {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = spawn(cmd).expect("starting the writer");
        let stdout = child.inner_mut().stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading the writer's output");
        assert_eq!(line.trim(), "ready", "the writer did not get ready");
        Writer { child }
    }

    /// Closes its input: it drops its (owning) handle and exits 0.
    fn finish(mut self) {
        drop(self.child.inner_mut().stdin.take());
        self.child.wait_success(Duration::from_secs(10));
    }
}

/// Runs `cmd` to completion: (exit code, stdout, stderr).
fn run(mut cmd: Command) -> (Option<i32>, String, String) {
    let out = cmd.output().expect("running a typed-share program");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cmd(program: &Path, name: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg(name).args(args);
    cmd
}

const MESSAGE: &str = "seq=42 micros=1700000 temperature=-7 samples=[10, 20, 30, 40]";

#[test]
fn separately_built_programs_share_their_own_declarations() {
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let name = unique_name("ts-share");
    let writer = Writer::start(cmd(Path::new(WRITER), &name, &[]));
    let (code, out, err) = run(cmd(Path::new(READER), &name, &[]));
    assert_eq!(code, Some(0), "the reader was refused: {err}");
    assert_eq!(out.trim(), MESSAGE);
    writer.finish();
    assert!(
        shm_objects_with_prefix(&name).is_empty(),
        "the writer unlinks on exit"
    );
}

/// The `mismatched` program's `--variant`s: each declares `Message` with one
/// difference, which the segment and the board must both refuse.
const VARIANTS: [&str; 6] = [
    "renamed",
    "reordered",
    "swapped",
    "retyped",
    "nested",
    "tagged",
];

#[test]
fn renamed_reordered_swapped_retyped_or_tagged_fields_are_refused() {
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let name = unique_name("ts-mismatch");
    let writer = Writer::start(cmd(Path::new(WRITER), &name, &[]));
    for variant in VARIANTS {
        let (code, _, err) = run(cmd(Path::new(MISMATCHED), &name, &["--variant", variant]));
        assert_eq!(code, Some(1), "{variant}: not refused: {err}");
        // Both sides, by name, size and alignment, and what differs.
        let found = err.find("holds Message (size 40, align 8, fingerprint 0x");
        let expected = err.find("but Message (size 40, align 8, fingerprint 0x");
        assert!(
            found.is_some() && expected.is_some(),
            "{variant}: the error shows both layouts: {err}"
        );
        assert!(
            err.contains("fields' names, order or types"),
            "{variant}: {err}"
        );
    }
    writer.finish();
}

#[test]
fn separately_built_programs_share_a_typed_board_of_their_own_declarations() {
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let name = unique_name("ts-board");
    let writer = Writer::start(cmd(Path::new(WRITER), &name, &["--board"]));
    let (code, out, err) = run(cmd(Path::new(READER), &name, &["--board"]));
    assert_eq!(code, Some(0), "the reader was refused: {err}");
    assert_eq!(out.trim(), MESSAGE);
    writer.finish();
    assert!(
        shm_objects_with_prefix(&name).is_empty(),
        "the writer removes its board on exit"
    );
}

#[test]
fn a_typed_board_refuses_renamed_reordered_swapped_retyped_or_tagged_fields() {
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let name = unique_name("ts-board-mismatch");
    let writer = Writer::start(cmd(Path::new(WRITER), &name, &["--board"]));
    for variant in VARIANTS {
        let (code, _, err) = run(cmd(
            Path::new(MISMATCHED),
            &name,
            &["--board", "--variant", variant],
        ));
        assert_eq!(code, Some(1), "{variant}: not refused: {err}");
        // Both sides, by name, size and fingerprint, and what differs.
        let found = err.find("mailbox holds `Message` (40 bytes, fingerprint 0x");
        let expected = err.find("not `Message` (40 bytes, fingerprint 0x");
        assert!(
            found.is_some() && expected.is_some(),
            "{variant}: the error shows both types: {err}"
        );
        assert!(
            err.contains("fields' names, order or types"),
            "{variant}: {err}"
        );
    }
    // The refusals left the board as it was.
    let (code, out, err) = run(cmd(Path::new(READER), &name, &["--board"]));
    assert_eq!((code, out.trim()), (Some(0), MESSAGE), "{err}");
    writer.finish();
}

#[test]
fn the_binaries_follow_the_command_line_conventions() {
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    for (program, name) in [
        (WRITER, "writer"),
        (READER, "reader"),
        (MISMATCHED, "mismatched"),
    ] {
        let (code, out, _) = run(cmd_args(program, &["--version"]));
        assert_eq!(code, Some(0), "{name} --version");
        assert_eq!(out.trim(), format!("{name} {}", env!("CARGO_PKG_VERSION")));
        let (code, out, _) = run(cmd_args(program, &["--help"]));
        assert_eq!(code, Some(0), "{name} --help");
        for option in [
            "--quiet",
            "--verbose",
            "--board",
            "--owner",
            "--group",
            "--uid",
        ] {
            assert!(out.contains(option), "{name} --help lacks {option}: {out}");
        }
        for usage in [&["--no-such-option"][..], &[][..], &["a", "b"][..]] {
            let (code, _, err) = run(cmd_args(program, usage));
            assert_eq!(code, Some(2), "{name} {usage:?} is a usage error: {err}");
            assert!(err.contains("Usage:"), "{name} {usage:?}: {err}");
        }
    }
    let (code, _, err) = run(cmd_args(MISMATCHED, &["x", "--variant", "sideways"]));
    assert_eq!(code, Some(2), "an unknown variant is a usage error: {err}");
    let (code, _, err) = run(cmd_args(READER, &["x", "--board", "--remove"]));
    assert_eq!(code, Some(2), "--board and --remove conflict: {err}");

    // -v shows the debug events, -q hides them (the writer exits at once:
    // its standard input is empty).
    let name = unique_name("ts-cli");
    for (flag, shown) in [("-v", true), ("-q", false)] {
        let mut writer = cmd(Path::new(WRITER), &name, &[flag]);
        writer.stdin(Stdio::null());
        let (code, out, err) = run(writer);
        assert_eq!((code, out.trim()), (Some(0), "ready"), "{flag}: {err}");
        assert_eq!(
            err.contains("writer: DEBUG writer: segment created"),
            shown,
            "{flag}: {err}"
        );
    }
    assert!(shm_objects_with_prefix(&name).is_empty());
}

fn cmd_args(program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

/// The writer as `WRITER_UID`, primary group its own (so the object's group
/// comes from the policy, not by chance), also in `GROUP`, with `policy_args`.
fn start_writer_as_service(exe: &SharedExe, name: &str, policy_args: &[&str]) -> Writer {
    let mut cmd = User::new(WRITER_UID, WRITER_UID)
        .in_group(GROUP)
        .command(exe.path());
    cmd.arg(name).args(policy_args);
    Writer::start(cmd)
}

/// The reader as `user` with `args`.
fn read_as(
    exe: &SharedExe,
    user: &User,
    name: &str,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let mut cmd = user.command(exe.path());
    cmd.arg(name).args(args);
    run(cmd)
}

#[test]
fn services_under_different_users_share_through_a_group() {
    if !can_switch_users("services_under_different_users_share_through_a_group") {
        return;
    }
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let (writer_exe, reader_exe) = (
        SharedExe::copy(Path::new(WRITER)),
        SharedExe::copy(Path::new(READER)),
    );
    let name = unique_name("ts-group");
    let owner = WRITER_UID.to_string();
    let group = GROUP.to_string();
    let policy = ["--owner", owner.as_str(), "--group", group.as_str()];
    let writer = start_writer_as_service(&writer_exe, &name, &["--group", &group]);
    let stat = rustix::fs::stat(format!("/dev/shm/{name}").as_str()).unwrap();
    assert_eq!(
        (stat.st_uid, stat.st_gid, stat.st_mode & 0o777),
        (WRITER_UID, GROUP, 0o660)
    );

    // A member of the group, under another uid, reads the writer's message.
    let member = User::new(NOBODY, NOBODY).in_group(GROUP);
    let (code, out, err) = read_as(&reader_exe, &member, &name, &policy);
    assert_eq!(code, Some(0), "the group member was refused: {err}");
    assert_eq!(out.trim(), MESSAGE);

    // Outside the group: refused, with the object, its owner and mode, and the policy.
    let outsider = User::new(NOBODY, NOBODY);
    let (code, _, err) = read_as(&reader_exe, &outsider, &name, &policy);
    assert_eq!(code, Some(1), "the outsider was let in: {err}");
    for part in [
        name.as_str(),
        "owner uid 4243, group gid 4242, mode 0o660",
        "refused under access policy owner uid 4243 + group gid 4242",
        "uid 65534",
    ] {
        assert!(err.contains(part), "the refusal names {part:?}: {err}");
    }

    // Root is no member either: the library refuses it though the kernel would not.
    let err = Segment::builder(&name)
        .access(AccessPolicy::owner(WRITER_UID).group(GROUP))
        .open()
        .unwrap_err();
    assert!(matches!(err, SegmentError::AccessDenied { .. }), "{err}");

    // Neither the outsider, nor a member, nor root removes another user's object.
    for user in [&outsider, &member] {
        let (code, _, err) = read_as(&reader_exe, user, &name, &["--remove"]);
        assert_eq!(code, Some(1), "{user:?} removed it");
        assert!(err.contains("belongs to uid 4243"), "{err}");
    }
    assert!(matches!(
        Segment::remove(&name),
        Err(SegmentError::ForeignOwner {
            uid: WRITER_UID,
            ..
        })
    ));
    assert!(!shm_objects_with_prefix(&name).is_empty());

    writer.finish();
    assert!(
        shm_objects_with_prefix(&name).is_empty(),
        "the owner unlinks on exit"
    );
}

#[test]
fn a_uid_list_lets_in_exactly_those_users() {
    if !can_switch_users("a_uid_list_lets_in_exactly_those_users") {
        return;
    }
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let (writer_exe, reader_exe) = (
        SharedExe::copy(Path::new(WRITER)),
        SharedExe::copy(Path::new(READER)),
    );
    let name = unique_name("ts-uids");
    let owner = WRITER_UID.to_string();
    let nobody = NOBODY.to_string();
    let policy = ["--owner", owner.as_str(), "--uid", nobody.as_str()];
    let writer = start_writer_as_service(&writer_exe, &name, &["--uid", &nobody]);

    let listed = User::new(NOBODY, NOBODY);
    let (code, out, err) = read_as(&reader_exe, &listed, &name, &policy);
    assert_eq!(code, Some(0), "the listed uid was refused: {err}");
    assert_eq!(out.trim(), MESSAGE);

    // Another uid, even in the object's group: that group has no access.
    let unlisted = User::new(NOBODY - 1, WRITER_UID);
    let (code, _, err) = read_as(&reader_exe, &unlisted, &name, &policy);
    assert_eq!(code, Some(1), "an unlisted uid was let in");
    assert!(
        err.contains("refused under access policy owner uid 4243 + uids [65534]"),
        "{err}"
    );

    // A reader whose policy lets in the object's group (the writer's own,
    // so owner, group and mode 0660 all match) but no uid refuses the object:
    // its ACL lets in a user that policy does not.
    let (code, _, err) = read_as(
        &reader_exe,
        &User::new(WRITER_UID, WRITER_UID),
        &name,
        &["--group", &owner],
    );
    assert_eq!(
        code,
        Some(1),
        "an object granting more than the policy was accepted"
    );
    assert!(
        err.contains("carries an ACL that lets in users the policy does not"),
        "{err}"
    );
    writer.finish();
}

#[test]
fn a_member_opens_a_stale_object_but_only_its_owner_reclaims_it() {
    if !can_switch_users("a_member_opens_a_stale_object_but_only_its_owner_reclaims_it") {
        return;
    }
    let _watchdog = Watchdog::new(Duration::from_secs(60));
    let (writer_exe, reader_exe) = (
        SharedExe::copy(Path::new(WRITER)),
        SharedExe::copy(Path::new(READER)),
    );
    let name = unique_name("ts-stale");
    let group = GROUP.to_string();
    let owner = WRITER_UID.to_string();
    let policy = ["--owner", owner.as_str(), "--group", group.as_str()];
    let mut writer = start_writer_as_service(&writer_exe, &name, &["--group", &group]);
    writer.child.sigkill_and_wait().unwrap();

    // Nobody is attached: stale. A member opens it as it is and leaves it.
    let member = User::new(NOBODY, NOBODY).in_group(GROUP);
    for _ in 0..2 {
        let (code, out, err) = read_as(&reader_exe, &member, &name, &policy);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(out.trim(), MESSAGE);
        assert!(
            !shm_objects_with_prefix(&name).is_empty(),
            "a member never reclaims"
        );
    }
    // Its owner reclaims it (here by removing it).
    let (code, out, err) = read_as(
        &reader_exe,
        &User::new(WRITER_UID, GROUP),
        &name,
        &["--remove"],
    );
    assert_eq!((code, out.trim()), (Some(0), "removed=true"), "{err}");
    assert!(shm_objects_with_prefix(&name).is_empty());
}
