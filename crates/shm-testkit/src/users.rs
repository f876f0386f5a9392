//! Running programs as other users (`setpriv`), for tests of access policies.
//!
//! The tests run as root in CI. A program run as another uid must be able to
//! reach its executable: the copies made here live in a fresh `0755`
//! directory under the system temp dir (the target directory may sit in a
//! `0700` one), and are removed when the [`SharedExe`] drops.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether this test can run programs as other users: it runs as root and
/// `setpriv` is installed. Under `CI=true` a missing piece fails the test
/// (panics); elsewhere it prints why `test` is skipped and returns false.
pub fn can_switch_users(test: &str) -> bool {
    let reason = if !rustix::process::geteuid().is_root() {
        "it needs root to switch users"
    } else if Command::new("setpriv").arg("--version").output().is_err() {
        "setpriv (util-linux) is not installed"
    } else {
        return true;
    };
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "{test}: {reason}; CI must run it"
    );
    eprintln!("skipping {test}: {reason}");
    false
}

/// A copy of an executable that every user can run; removed on drop.
#[derive(Debug)]
pub struct SharedExe {
    dir: PathBuf,
    path: PathBuf,
}

impl SharedExe {
    /// Copies `program` into a fresh `0755` directory.
    pub fn copy(program: &Path) -> SharedExe {
        let dir = std::env::temp_dir().join(crate::unique_name("exe"));
        std::fs::create_dir(&dir).expect("creating the directory for a shared executable");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod 0755");
        let path = dir.join(program.file_name().expect("a program has a file name"));
        // Copied by a `cp` process, not by this one: a file open for writing
        // cannot be executed (ETXTBSY), and a child that another test thread
        // forks while this process held the copy open would inherit that fd
        // until its own exec, making a concurrent run of the copy fail.
        let status = std::process::Command::new("cp")
            .arg("--")
            .arg(program)
            .arg(&path)
            .status()
            .expect("running cp");
        assert!(status.success(), "copying the executable: cp {status}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod 0755");
        SharedExe { dir, path }
    }

    /// A copy of the running test binary (for [`User::role_command`]).
    pub fn current() -> SharedExe {
        SharedExe::copy(&std::env::current_exe().expect("current_exe"))
    }

    /// The copy's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SharedExe {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A user to run a program as: a uid, a primary gid and supplementary groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Real and effective uid.
    pub uid: u32,
    /// Real and effective gid.
    pub gid: u32,
    /// Supplementary groups (none: cleared).
    pub groups: Vec<u32>,
}

impl User {
    /// `uid` with primary group `gid` and no supplementary groups.
    pub fn new(uid: u32, gid: u32) -> User {
        User {
            uid,
            gid,
            groups: Vec::new(),
        }
    }

    /// The same user, also in supplementary group `gid`.
    #[must_use]
    pub fn in_group(mut self, gid: u32) -> User {
        self.groups.push(gid);
        self
    }

    /// `setpriv --reuid --regid --groups|--clear-groups -- program`.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid));
        if self.groups.is_empty() {
            cmd.arg("--clear-groups");
        } else {
            let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
            cmd.arg(format!("--groups={}", groups.join(",")));
        }
        cmd.arg("--").arg(program);
        cmd
    }

    /// Like [`role_command`](crate::role_command), run as this user from
    /// `exe`, a [`SharedExe::current`] copy of the test binary.
    pub fn role_command(&self, exe: &SharedExe, test_name: &str, role: &str) -> Command {
        let mut cmd = self.command(exe.path());
        cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"])
            .env(crate::ROLE_ENV, role);
        cmd
    }
}
