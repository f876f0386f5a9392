//! Handing fds to a program: at 3, 4, ... with `LISTEN_FDS`, `LISTEN_FDNAMES`
//! and `LISTEN_PID` set for it.
//!
//! - [`exec_with_fds`] replaces the current process (same pid, so it stays a
//!   service's main process and may keep talking to `$NOTIFY_SOCKET`).
//! - [`spawn_with_fds`] starts a child that gets a correct `LISTEN_PID` (its
//!   own pid) and dies with its parent: it runs this very binary as a
//!   trampoline (`shm-fd __child`), which sets the parent-death signal, moves
//!   the fds into place, sets `LISTEN_PID` to its own pid and `exec`s the
//!   command. No `pre_exec` code runs in a forked copy of a threaded process.
//!
//! # Safety
//!
//! The trampoline adopts the fd numbers its supervisor named in
//! [`CHILD_FDS_ENV`]: a freshly exec'd process that owns nothing else yet.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use rustix::io::Errno;

/// The environment variable through which a supervisor tells the trampoline
/// which inherited fd numbers to move to 3, 4, ...
pub const CHILD_FDS_ENV: &str = "SHM_FD_CHILD_FDS";
/// The environment variable holding the supervisor's pid, checked by the
/// trampoline after arming the parent-death signal.
pub const CHILD_PARENT_ENV: &str = "SHM_FD_PARENT_PID";

/// Why a program could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// Moving the fds into place failed.
    #[error("cannot place the {count} fd(s) at 3..: {errno}")]
    Place {
        /// How many fds were to be placed.
        count: usize,
        /// The OS error (part of the message, so not also a `source()`).
        errno: Errno,
    },
    /// The program could not be executed.
    #[error("cannot execute {}: {error}", program.to_string_lossy())]
    Exec {
        /// The program.
        program: OsString,
        /// The OS error (part of the message, so not also a `source()`).
        error: std::io::Error,
    },
    /// The trampoline's `LISTEN_FDNAMES` does not name its fds.
    #[error("the trampoline's fds: {0}")]
    Names(#[from] crate::listen::ListenError),
}

fn names_of(fds: &[(String, OwnedFd)]) -> String {
    fds.iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(":")
}

/// Replaces this process with `program args`, handing it `fds` at 3, 4, ...
/// with `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` (our pid: `exec` keeps it).
/// With no fds the three variables are removed. Returns only on failure.
///
/// # Safety
///
/// Before the `exec`, the fds are moved to 3, 4, ... with `dup2`, which
/// replaces whatever those numbers held: fds that other objects of this
/// process may own (a `File`, a socket, an `OwnedFd`). If the `exec` then
/// fails, this returns with those numbers pointing at the handed fds. The
/// caller must ensure that nothing in this process uses fds `3..3 +
/// fds.len()` after a failed return other than through the handed fds (in
/// practice: call it last, and only report and exit if it returns), and
/// that no other thread opens or closes fds meanwhile. Otherwise an owner's
/// fd number would silently name another file: the standard library's I/O
/// safety rules (`std::os::unix::io`) warn that raw fds "can dangle if they
/// outlive their resources or be forged if they're created from invalid
/// values".
pub unsafe fn exec_with_fds(
    program: &OsString,
    args: &[OsString],
    fds: Vec<(String, OwnedFd)>,
) -> ExecError {
    let mut cmd = Command::new(program);
    cmd.args(args);
    if fds.is_empty() {
        cmd.env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("LISTEN_PID");
    } else {
        cmd.env("LISTEN_FDS", fds.len().to_string())
            .env("LISTEN_FDNAMES", names_of(&fds))
            .env("LISTEN_PID", std::process::id().to_string());
    }
    cmd.env_remove(CHILD_FDS_ENV).env_remove(CHILD_PARENT_ENV);
    let count = fds.len();
    if let Err(errno) = crate::sys::place(fds.into_iter().map(|(_, fd)| fd).collect()) {
        return ExecError::Place { count, errno };
    }
    let error = cmd.exec();
    ExecError::Exec {
        program: program.clone(),
        error,
    }
}

/// Starts `program args` as a child of this process with `fds` at 3, 4, ...,
/// `LISTEN_PID` set to the child's own pid, and SIGKILL as its parent-death
/// signal. `trampoline` is the path of a binary that runs
/// [`trampoline_main`] when its first argument is `__child` (the `shm-fd`
/// binary does). `env` is added to the child's environment.
///
/// # Examples
///
/// A program that is its own trampoline (as the `shm-fd` binary is) hands a
/// file to `sh`, which finds it at fd 3 under its name, with `LISTEN_PID`
/// its own pid:
/// ```standalone_crate
/// use std::ffi::OsString;
/// use std::os::fd::OwnedFd;
/// use shm_fd::exec::{spawn_with_fds, trampoline_main};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let argv: Vec<OsString> = std::env::args_os().collect();
/// if argv.get(1).is_some_and(|a| a == "__child") {
///     // SAFETY: this is the process spawn_with_fds started (only it passes
///     // `__child`), at the start of main, and it exits if the call returns.
///     let err = unsafe { trampoline_main(&argv[3..]) };
///     eprintln!("{err}");
///     std::process::exit(127);
/// }
///
/// let file: OwnedFd = std::fs::File::open("/dev/null")?.into();
/// let script = r#"[ "$LISTEN_FDS" = 1 ] && [ "$LISTEN_FDNAMES" = config ] &&
///                 [ "$LISTEN_PID" = $$ ] && [ -e /dev/fd/3 ] && [ "$GREETING" = hello ]"#;
/// let child = spawn_with_fds(
///     &std::env::current_exe()?,
///     &OsString::from("sh"),
///     &["-c".into(), script.into()],
///     &[("config".to_owned(), file)],
///     &[("GREETING", "hello".to_owned())],
/// )?;
/// let status = child.wait_with_output()?.status;
/// assert!(status.success(), "{status}");
/// # Ok(())
/// # }
/// ```
pub fn spawn_with_fds(
    trampoline: &std::path::Path,
    program: &OsString,
    args: &[OsString],
    fds: &[(String, OwnedFd)],
    env: &[(&str, String)],
) -> std::io::Result<Child> {
    // Duplicates without close-on-exec, inherited by this child only: the
    // supervisor is single-threaded, and they are closed right after spawning.
    let mut inherited = Vec::new();
    let mut numbers = Vec::new();
    for (_, fd) in fds {
        let dup = rustix::io::fcntl_dupfd_cloexec(fd, 3)?;
        let raw = crate::sys::inherit(dup)?;
        numbers.push(raw.to_string());
        inherited.push(raw);
    }
    let mut cmd = Command::new(trampoline);
    cmd.arg("__child").arg("--").arg(program).args(args);
    cmd.env(CHILD_FDS_ENV, numbers.join(","))
        .env(CHILD_PARENT_ENV, std::process::id().to_string())
        .env("LISTEN_FDNAMES", names_of(fds))
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn();
    for raw in inherited {
        crate::sys::close(raw);
    }
    child
}

/// The trampoline's side of [`spawn_with_fds`]: arm the parent-death signal,
/// move the fds to 3.., set `LISTEN_*` and exec. `argv` is everything after
/// `__child --`. Returns only on failure.
///
/// # Safety
///
/// It adopts (takes ownership of) the fd numbers named in
/// [`CHILD_FDS_ENV`], then calls [`exec_with_fds`]. The caller must be the
/// process [`spawn_with_fds`] started, at the start of `main`: nothing in it
/// owns those numbers (each fd is adopted once, as `OwnedFd::from_raw_fd`
/// requires: "the resource pointed to by `fd` must be open and suitable for
/// assuming ownership"), and it exits if this returns (the contract of
/// [`exec_with_fds`]).
pub unsafe fn trampoline_main(argv: &[OsString]) -> ExecError {
    let Some((program, args)) = argv.split_first() else {
        return ExecError::Exec {
            program: OsString::new(),
            error: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no program given after `__child --`",
            ),
        };
    };
    // Die with the supervisor: the signal survives exec. If the supervisor
    // died before we armed it, our parent is no longer it: give up.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let expected = std::env::var(CHILD_PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    let parent = rustix::process::getppid().map(rustix::process::Pid::as_raw_nonzero);
    if expected.is_some_and(|e| parent.map(i32::from) != Some(e)) {
        std::process::exit(1);
    }
    let numbers: Vec<RawFd> = std::env::var(CHILD_FDS_ENV)
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    let names = match crate::listen::parse_names(names.as_deref(), numbers.len()) {
        Ok(n) => n,
        Err(e) => return ExecError::Names(e),
    };
    let mut fds = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (raw, name) in numbers.into_iter().zip(names) {
        if !crate::sys::fd_is_open(raw) || !seen.insert(raw) {
            continue;
        }
        // SAFETY: `OwnedFd::from_raw_fd` needs an open fd that nothing else
        // owns. It is open (checked above); the supervisor made `raw`
        // inheritable for this process only and named it in CHILD_FDS_ENV;
        // by this function's contract nothing else in this process owns it;
        // and each number is adopted once (`seen`).
        let fd = unsafe { crate::sys::adopt(raw) };
        fds.push((name, fd));
    }
    // SAFETY: forwarded: this function's caller exits if it returns, and
    // this process is single-threaded at the start of the trampoline.
    unsafe { exec_with_fds(program, args, fds) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_errors_name_the_program_and_the_os_error() {
        let program = OsString::from("/nonexistent/shm-fd-test-program");
        // SAFETY: no fds are handed, so none is replaced.
        let err = unsafe { exec_with_fds(&program, &[], Vec::new()) };
        assert!(
            matches!(&err, ExecError::Exec { error, .. } if error.raw_os_error() == Some(libc::ENOENT)),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "cannot execute /nonexistent/shm-fd-test-program: {}",
                std::io::Error::from_raw_os_error(libc::ENOENT)
            )
        );
    }
}
