//! `shm-fd --supervise`: a small service manager for one program.
//!
//! It keeps an fd store the way systemd does, without systemd: it provides
//! `$NOTIFY_SOCKET` (an abstract Unix datagram socket with `SO_PASSCRED`),
//! runs the program as a child with the stored fds at 3.. and a correct
//! `LISTEN_PID`, accepts `FDSTORE=1`/`FDNAME=` with fds and
//! `FDSTOREREMOVE=1` from the child only (the sender's `SCM_CREDENTIALS` pid
//! must be the child's; like `NotifyAccess=main`), and restarts the child per
//! the restart policy, handing the stored fds back. It forwards SIGTERM,
//! SIGINT and SIGHUP; the child dies with it (parent-death signal); its own
//! exit mirrors the child's last exit, death by signal included.

use std::ffi::OsString;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering}; // atomics-ok: process-local signal flag
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SocketAddrUnix,
    SocketFlags, SocketType,
};

/// When to restart the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Restart {
    /// Never: exit when the program exits.
    No,
    /// When it exits with a non-zero status or is killed by a signal.
    OnFailure,
    /// Whenever it exits, until the supervisor is told to stop.
    Always,
}

/// What to run and how.
#[derive(Debug)]
pub struct Config {
    /// This binary (the trampoline for [`crate::exec::spawn_with_fds`]).
    pub trampoline: std::path::PathBuf,
    /// The program.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// The initial store: fds handed to the program at its first start.
    pub store: Vec<(String, OwnedFd)>,
    /// Restart policy.
    pub restart: Restart,
    /// Pause before a restart.
    pub restart_delay: Duration,
}

/// Why supervision failed (the program's own failures are exit statuses, not errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SuperviseError {
    /// The notify socket could not be set up.
    #[error("cannot set up the notify socket {addr}: {op}: {errno}")]
    Socket {
        /// Its address, as given to the program in `$NOTIFY_SOCKET`.
        addr: String,
        /// The call that failed.
        op: &'static str,
        /// The OS error (part of the message, so not also a `source()`).
        errno: Errno,
    },
    /// Signal handling could not be set up.
    #[error("cannot set up signal handling: {error}")]
    Signals {
        /// The OS error (part of the message, so not also a `source()`).
        error: std::io::Error,
    },
    /// The program could not be started.
    #[error(
        "cannot start {} through {}: {error}",
        program.to_string_lossy(),
        trampoline.display()
    )]
    Spawn {
        /// The program.
        program: OsString,
        /// The binary run first to set up its fds ([`Config::trampoline`]).
        trampoline: std::path::PathBuf,
        /// The OS error (part of the message, so not also a `source()`).
        error: std::io::Error,
    },
}

fn log(msg: &str) {
    eprintln!("shm-fd: {msg}");
}

/// Supervises the program until it should no longer be restarted; returns its last exit status.
pub fn run(mut config: Config) -> Result<ExitStatus, SuperviseError> {
    let name = format!("shm-fd/{}/{:x}", std::process::id(), rand_tag());
    let notify_env = format!("@{name}");
    let socket_err = |op| {
        let addr = notify_env.clone();
        move |errno| SuperviseError::Socket { addr, op, errno }
    };
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(socket_err("socket"))?;
    rustix::net::sockopt::set_socket_passcred(&sock, true)
        .map_err(socket_err("setsockopt SO_PASSCRED"))?;
    let addr = SocketAddrUnix::new_abstract_name(name.as_bytes()).map_err(socket_err("bind"))?;
    rustix::net::bind(&sock, &addr).map_err(socket_err("bind"))?;

    // Signals: each wakes the poll below through a self-pipe; stop signals
    // also record their number, to be forwarded to the child.
    let signals_err = |error| SuperviseError::Signals { error };
    let (sig_read, sig_write) = std::os::unix::net::UnixStream::pair().map_err(signals_err)?;
    sig_read.set_nonblocking(true).map_err(signals_err)?;
    let stop = Arc::new(AtomicUsize::new(0));
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        signal_hook::flag::register_usize(sig, stop.clone(), sig as usize).map_err(signals_err)?;
    }
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD] {
        signal_hook::low_level::pipe::register(sig, sig_write.try_clone().map_err(signals_err)?)
            .map_err(signals_err)?;
    }
    let signals = Signals {
        pipe: sig_read,
        stop,
    };

    let mut stopping = false;
    loop {
        let mut child = crate::exec::spawn_with_fds(
            &config.trampoline,
            &config.program,
            &config.args,
            &config.store,
            &[("NOTIFY_SOCKET", notify_env.clone())],
        )
        .map_err(|error| SuperviseError::Spawn {
            program: config.program.clone(),
            trampoline: config.trampoline.clone(),
            error,
        })?;
        log(&format!(
            "started {:?} as pid {} with {} stored fd(s)",
            config.program,
            child.id(),
            config.store.len()
        ));
        let status = watch(
            &mut child,
            &sock,
            &signals,
            &mut config.store,
            &mut stopping,
        );
        let restart = !stopping
            && match config.restart {
                Restart::No => false,
                Restart::OnFailure => !status.success(),
                Restart::Always => true,
            };
        log(&format!(
            "{:?} exited: {}{}",
            config.program,
            describe(status),
            if restart { "; restarting" } else { "" }
        ));
        if !restart {
            return Ok(status);
        }
        // Sleep, but stay responsive to a stop request.
        let deadline = std::time::Instant::now() + config.restart_delay;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            let mut fds = [PollFd::new(&signals.pipe, PollFlags::IN)];
            let timeout = rustix::time::Timespec::try_from(left).unwrap_or_default();
            let _ = rustix::event::poll(&mut fds, Some(&timeout));
            signals.drain();
            if signals.take_stop().is_some() {
                log("stop requested while waiting to restart");
                return Ok(status);
            }
        }
    }
}

fn rand_tag() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()))
}

/// A human description of an exit status.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// The self-pipe that signals wake us through, and the last stop signal seen.
struct Signals {
    pipe: std::os::unix::net::UnixStream,
    stop: Arc<AtomicUsize>,
}

impl Signals {
    fn drain(&self) {
        let mut buf = [0u8; 64];
        while matches!(rustix::io::read(&self.pipe, &mut buf), Ok(n) if n > 0) {}
    }

    /// The stop signal received since the last call, if any.
    fn take_stop(&self) -> Option<i32> {
        // SeqCst: the handler's store and this swap are the only accesses; no
        // other memory is published through the flag.
        match self.stop.swap(0, Ordering::SeqCst) {
            0 => None,
            sig => i32::try_from(sig).ok(),
        }
    }
}

/// Runs until the child exits, serving its notifications and our signals.
fn watch(
    child: &mut Child,
    sock: &OwnedFd,
    signals: &Signals,
    store: &mut Vec<(String, OwnedFd)>,
    stopping: &mut bool,
) -> ExitStatus {
    let pid = child.id();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            receive_all(sock, pid, store);
            return status;
        }
        let mut fds = [
            PollFd::new(sock, PollFlags::IN),
            PollFd::new(&signals.pipe, PollFlags::IN),
        ];
        let timeout = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
        };
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => log(&format!("poll failed: {e}")),
        }
        receive_all(sock, pid, store);
        signals.drain();
        if let Some(sig) = signals.take_stop() {
            *stopping = true;
            log(&format!("forwarding signal {sig} to pid {pid}"));
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid.cast_signed()).expect("child pid is positive"),
                rustix::process::Signal::from_named_raw(sig)
                    .unwrap_or(rustix::process::Signal::TERM),
            );
        }
    }
}

/// Reads every pending notification; applies those sent by `pid`.
fn receive_all(sock: &OwnedFd, pid: u32, store: &mut Vec<(String, OwnedFd)>) {
    loop {
        let mut buf = [0u8; 4096];
        let mut space =
            [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(32), ScmCredentials(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match rustix::net::recvmsg(
            sock,
            &mut iov,
            &mut control,
            RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(Errno::AGAIN | Errno::INTR) => return,
            Err(e) => {
                log(&format!("notify socket: {e}"));
                return;
            }
        };
        let mut sender = None;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for m in control.drain() {
            match m {
                RecvAncillaryMessage::ScmRights(received) => fds.extend(received),
                RecvAncillaryMessage::ScmCredentials(cred) => {
                    sender = Some(cred.pid.as_raw_nonzero().get());
                }
                _ => {}
            }
        }
        let text = String::from_utf8_lossy(&buf[..msg.bytes]).into_owned();
        if sender != Some(pid.cast_signed()) {
            log(&format!(
                "ignoring a notification from pid {sender:?}: only the program (pid {pid}) may notify"
            ));
            continue; // the fds drop here
        }
        apply(&text, fds, store);
    }
}

/// Applies one notification message to the store.
pub fn apply(text: &str, fds: Vec<OwnedFd>, store: &mut Vec<(String, OwnedFd)>) {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(str::to_owned))
    };
    let name = field("FDNAME=").unwrap_or_else(|| "stored".to_owned());
    if let Err(e) = crate::listen::validate_fd_name(&name) {
        log(&format!("ignoring a notification with FDNAME=: {e}"));
        return;
    }
    if field("FDSTOREREMOVE=").as_deref() == Some("1") {
        let before = store.len();
        store.retain(|(n, _)| *n != name);
        log(&format!(
            "removed {} stored fd(s) named {name:?}",
            before - store.len()
        ));
    }
    if field("FDSTORE=").as_deref() == Some("1") {
        for fd in fds {
            // Like systemd: the same open file stored twice is kept once.
            let dup = store.iter().any(|(_, s)| same_file(s, &fd));
            if !dup {
                store.push((name.clone(), fd));
            }
        }
        log(&format!(
            "stored fd(s) as {name:?}; the store holds {}",
            store.len()
        ));
    }
    if field("READY=").as_deref() == Some("1") {
        log("the program reported READY=1");
    }
    if let Some(status) = field("STATUS=") {
        log(&format!("status: {status}"));
    }
}

fn same_file(a: &OwnedFd, b: &OwnedFd) -> bool {
    match (rustix::fs::fstat(a.as_fd()), rustix::fs::fstat(b.as_fd())) {
        (Ok(x), Ok(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_object_and_the_os_error() {
        let enoent = || std::io::Error::from_raw_os_error(libc::ENOENT);
        let err = SuperviseError::Spawn {
            program: "my-server".into(),
            trampoline: "/gone/shm-fd".into(),
            error: enoent(),
        };
        assert_eq!(
            err.to_string(),
            format!("cannot start my-server through /gone/shm-fd: {}", enoent())
        );
        let err = SuperviseError::Socket {
            addr: "@shm-fd/1/2".into(),
            op: "bind",
            errno: Errno::ADDRINUSE,
        };
        let shown = err.to_string();
        assert!(shown.contains("@shm-fd/1/2: bind: "), "{shown}");
        assert!(
            shown.ends_with(&format!("(os error {})", libc::EADDRINUSE)),
            "{shown}"
        );
        assert!(std::error::Error::source(&err).is_none());
    }
}
