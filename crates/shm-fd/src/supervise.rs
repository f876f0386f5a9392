//! `shm-fd --supervise`: a small service manager for one program.
//!
//! It keeps an fd store the way systemd does, without systemd: it provides
//! `$NOTIFY_SOCKET` (an abstract Unix datagram socket with `SO_PASSCRED`),
//! runs the program as a child with the stored fds at 3.. and a correct
//! `LISTEN_PID`, accepts `FDSTORE=1`/`FDNAME=` with fds and
//! `FDSTOREREMOVE=1` from the child only (the sender's `SCM_CREDENTIALS` pid
//! must be the child's; like `NotifyAccess=main`), and restarts the child per
//! the restart policy, handing the stored fds back. It forwards SIGTERM,
//! SIGINT, SIGHUP and SIGQUIT (which stop it: no restart after them),
//! SIGUSR1 and SIGUSR2 (see [`crate::child::Runner`]); the child dies with
//! it (parent-death signal); its own exit mirrors the child's last exit,
//! death by signal included.
//!
//! Like systemd (and s6), it bounds what a misbehaving child can do:
//! - a child that does not exit within [`Config::stop_timeout`] of a
//!   forwarded stop signal is SIGKILLed (`TimeoutStopSec=`, 90 s by default);
//! - a child that keeps dying is not restarted in a tight loop: more than
//!   [`RestartLimit::burst`] starts within [`RestartLimit::interval`] make the
//!   supervisor give up (`StartLimitBurst=`/`StartLimitIntervalSec=`, 5 in
//!   10 s by default), or, with [`RestartLimit::max_backoff`], wait twice as
//!   long before each further restart;
//! - the store holds at most [`Config::fd_store_max`] fds
//!   (`FileDescriptorStoreMax=`); further `FDSTORE=1` fds are refused;
//! - rejected notifications (another sender, a full store, a bad `FDNAME=`)
//!   are logged at most [`LOG_BURST`] times per [`LOG_WINDOW`] each, then
//!   counted.
//!
//! Everything is logged through `tracing` (the `shm-fd` binary prints it as
//! `shm-fd: message` lines on stderr).

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use shm_segment::fdpass::{MAX_FDS, recv_with_fds};

use crate::child::{Runner, Wake};

/// When to restart the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
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
    /// How long the program may take to exit after a forwarded stop signal
    /// before it is SIGKILLed (systemd's `TimeoutStopSec=`).
    pub stop_timeout: Duration,
    /// How often the program may be restarted.
    pub restart_limit: RestartLimit,
    /// Most fds the store holds (systemd's `FileDescriptorStoreMax=`):
    /// `FDSTORE=1` fds beyond it are refused (closed) and the refusal logged.
    pub fd_store_max: usize,
}

/// systemd's default `TimeoutStopSec=`.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(90);
/// The default [`Config::fd_store_max`]: far below the 4096 fds a program
/// accepts in `LISTEN_FDS` ([`crate::listen::MAX_LISTEN_FDS`]).
pub const DEFAULT_FD_STORE_MAX: usize = 256;
/// Rejected notifications of one kind logged per [`LOG_WINDOW`]; the rest are counted.
pub const LOG_BURST: u32 = 10;
/// See [`LOG_BURST`].
pub const LOG_WINDOW: Duration = Duration::from_secs(5);

/// A restart rate limit, like systemd's `StartLimitBurst=`/`StartLimitIntervalSec=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartLimit {
    /// Most starts within [`RestartLimit::interval`]; 0 means no limit.
    pub burst: u32,
    /// The window the starts are counted in.
    pub interval: Duration,
    /// `None`: give up when the limit is hit (the supervisor exits like the
    /// program's last exit). `Some(max)`: keep restarting, but wait twice as
    /// long as before (from `restart_delay`, at least 100 ms) for each start
    /// over the limit, at most `max`.
    pub max_backoff: Option<Duration>,
}

impl Default for RestartLimit {
    /// systemd's defaults: 5 starts within 10 s, then give up.
    fn default() -> Self {
        RestartLimit {
            burst: 5,
            interval: Duration::from_secs(10),
            max_backoff: None,
        }
    }
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
    /// Waiting for the program failed.
    #[error("cannot wait for pid {pid}: {error}")]
    Wait {
        /// The program's pid.
        pid: u32,
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
    tracing::info!("{msg}");
}

fn warn(msg: &str) {
    tracing::warn!("{msg}");
}

/// Logging of one kind of rejected notification: [`LOG_BURST`] messages per
/// [`LOG_WINDOW`], then a count of those not shown.
#[derive(Debug)]
struct LogLimit {
    what: &'static str,
    start: Option<Instant>,
    shown: u32,
    suppressed: u64,
}

impl LogLimit {
    const fn new(what: &'static str) -> Self {
        LogLimit {
            what,
            start: None,
            shown: 0,
            suppressed: 0,
        }
    }

    /// Whether to log one more message now.
    fn allow(&mut self) -> bool {
        self.tick();
        if self.start.is_none() {
            self.start = Some(Instant::now());
        }
        if self.shown < LOG_BURST {
            self.shown += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// When the current window ends, if one is open.
    fn window_end(&self) -> Option<Instant> {
        self.start.map(|s| s + LOG_WINDOW)
    }

    /// Ends the window when it has passed, reporting what it suppressed.
    fn tick(&mut self) {
        if self.start.is_some_and(|s| s.elapsed() >= LOG_WINDOW) {
            self.flush();
        }
    }

    /// Reports what was suppressed and starts a new window.
    fn flush(&mut self) {
        if self.suppressed > 0 {
            warn(&format!(
                "{} more {} not logged (at most {LOG_BURST} per {}s)",
                self.suppressed,
                self.what,
                LOG_WINDOW.as_secs()
            ));
        }
        *self = LogLimit::new(self.what);
    }
}

/// The rate-limited logs of rejected notifications.
#[derive(Debug)]
struct Limits {
    foreign: LogLimit,
    full: LogLimit,
    bad_name: LogLimit,
    truncated: LogLimit,
}

impl Limits {
    const fn new() -> Self {
        Limits {
            foreign: LogLimit::new("notifications from other processes"),
            full: LogLimit::new("refusals of fds for a full store"),
            bad_name: LogLimit::new("notifications with a bad FDNAME="),
            truncated: LogLimit::new("truncated notifications"),
        }
    }

    /// When the next window ends: [`Limits::tick`] is due then.
    fn next_tick(&self) -> Option<Instant> {
        [&self.foreign, &self.full, &self.bad_name, &self.truncated]
            .into_iter()
            .filter_map(LogLimit::window_end)
            .min()
    }

    fn tick(&mut self) {
        self.foreign.tick();
        self.full.tick();
        self.bad_name.tick();
        self.truncated.tick();
    }

    fn flush(&mut self) {
        self.foreign.flush();
        self.full.flush();
        self.bad_name.flush();
        self.truncated.flush();
    }
}

/// Supervises the program until it should no longer be restarted; returns its last exit status.
///
/// # Examples
///
/// A program that is its own trampoline (as the `shm-fd` binary is)
/// supervises `sh`, which fails on its first run and succeeds on the
/// second: restarted on failure, it gets the stored memfd and
/// `$NOTIFY_SOCKET` each time.
/// ```standalone_crate
/// use std::ffi::OsString;
/// use std::time::Duration;
/// use shm_fd::exec::trampoline_main;
/// use shm_fd::supervise::{self, Config, Restart, RestartLimit};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let argv: Vec<OsString> = std::env::args_os().collect();
/// if argv.get(1).is_some_and(|a| a == "__child") {
///     // SAFETY: this is the process the supervisor started (only it passes
///     // `__child`), at the start of main, and it exits if the call returns.
///     let err = unsafe { trampoline_main(&argv[3..]) };
///     eprintln!("{err}");
///     std::process::exit(127);
/// }
///
/// let marker = std::env::temp_dir().join(format!("supervise-doc-{}", std::process::id()));
/// let script = r#"[ "$LISTEN_FDNAMES" = state ] && [ -n "$NOTIFY_SOCKET" ] || exit 2
///                 [ -e "$0" ] && exit 0; touch "$0"; exit 1"#;
/// let status = supervise::run(Config {
///     trampoline: std::env::current_exe()?,
///     program: "sh".into(),
///     args: vec!["-c".into(), script.into(), marker.clone().into()],
///     store: vec![("state".to_owned(), shm_fd::state::create("state", 4096)?)],
///     restart: Restart::OnFailure,
///     restart_delay: Duration::ZERO,
///     stop_timeout: supervise::DEFAULT_STOP_TIMEOUT,
///     restart_limit: RestartLimit::default(),
///     fd_store_max: supervise::DEFAULT_FD_STORE_MAX,
/// })?;
/// assert!(status.success(), "{status}");
/// std::fs::remove_file(&marker)?; // the first run left it: there were two
/// # Ok(())
/// # }
/// ```
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

    // Signals are forwarded to the program while it runs; a stop signal
    // ends supervision.
    let mut runner = Runner::new(Some(config.stop_timeout))
        .map_err(|error| SuperviseError::Signals { error })?;
    let mut limits = Limits::new();
    let mut starts: std::collections::VecDeque<Instant> = std::collections::VecDeque::new();
    let mut over_limit: u32 = 0;
    warn_if_full(&config);
    loop {
        starts.push_back(Instant::now());
        let pid = runner
            .spawn_with_fds(
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
            "started {:?} as pid {pid} with {} stored fd(s)",
            config.program,
            config.store.len()
        ));
        let status = watch(&mut runner, pid, &sock, &mut config, &mut limits)
            .map_err(|error| SuperviseError::Wait { pid, error })?;
        let restart = runner.stop_requested().is_none()
            && match config.restart {
                Restart::No => false,
                Restart::OnFailure => !status.success(),
                Restart::Always => true,
            };
        if !restart {
            limits.flush();
            log(&format!(
                "{:?} exited: {}",
                config.program,
                describe(status)
            ));
            return Ok(status);
        }
        let Some(delay) = restart_delay(&config, &mut starts, &mut over_limit, status) else {
            limits.flush();
            return Ok(status);
        };
        // Sleep, but stay responsive to a stop request: with no program
        // running, the wait ends early on one.
        runner
            .wait_until(Instant::now() + delay)
            .map_err(|error| SuperviseError::Wait { pid, error })?;
        if runner.stop_requested().is_some() {
            limits.flush();
            log("stop requested while waiting to restart");
            return Ok(status);
        }
    }
}

fn warn_if_full(config: &Config) {
    if config.store.len() > config.fd_store_max {
        warn(&format!(
            "the initial store holds {} fds, more than --fd-store-max {}: the program may push none",
            config.store.len(),
            config.fd_store_max
        ));
    }
}

/// The pause before the next start, or `None` when the restart limit says to give up.
fn restart_delay(
    config: &Config,
    starts: &mut std::collections::VecDeque<Instant>,
    over_limit: &mut u32,
    status: ExitStatus,
) -> Option<Duration> {
    // The rate limit: starts within the interval, this one included. A
    // back-off ends only when a run lasts the whole interval.
    let limit = config.restart_limit;
    if starts.back().is_some_and(|t| t.elapsed() >= limit.interval) {
        *over_limit = 0;
    }
    while starts.front().is_some_and(|t| t.elapsed() > limit.interval) {
        starts.pop_front();
    }
    let mut delay = config.restart_delay;
    let hit = limit.burst > 0 && starts.len() >= limit.burst as usize;
    if hit || *over_limit > 0 {
        let why = if hit {
            format!(
                "it was started {} times within {:?} (--restart-burst {} --restart-interval {:?})",
                starts.len(),
                limit.interval,
                limit.burst,
                limit.interval
            )
        } else {
            format!(
                "its last run lasted less than --restart-interval {:?}",
                limit.interval
            )
        };
        let Some(max) = limit.max_backoff else {
            warn(&format!(
                "{:?} exited: {}; not restarting it: {why}",
                config.program,
                describe(status)
            ));
            return None;
        };
        *over_limit = over_limit.saturating_add(1);
        let base = config.restart_delay.max(Duration::from_millis(100));
        delay = base
            .checked_mul(1u32 << (*over_limit).min(31))
            .unwrap_or(max)
            .min(max);
        warn(&format!(
            "{:?} exited: {}; restarting in {delay:?}, backing off: {why}",
            config.program,
            describe(status)
        ));
    } else {
        log(&format!(
            "{:?} exited: {}; restarting",
            config.program,
            describe(status)
        ));
    }
    Some(delay)
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

/// Runs until the program exits, serving its notifications (the runner
/// forwards signals and applies the stop timeout meanwhile).
fn watch(
    runner: &mut Runner,
    pid: u32,
    sock: &OwnedFd,
    config: &mut Config,
    limits: &mut Limits,
) -> std::io::Result<ExitStatus> {
    loop {
        // Wakes for a notification, the program's exit, a signal, or the
        // end of a log window (to report what it suppressed).
        let wake = runner.wait_or_readable(sock.as_fd(), limits.next_tick())?;
        receive_all(sock, pid, config, limits);
        if let Wake::Exited(status) = wake {
            return Ok(status);
        }
        limits.tick();
    }
}

/// Reads every pending notification; applies those sent by `pid`.
fn receive_all(sock: &OwnedFd, pid: u32, config: &mut Config, limits: &mut Limits) {
    loop {
        // systemd's limit on a notification (NOTIFY_BUFFER_MAX): one more
        // byte would not fit.
        let mut buf = [0u8; 4096];
        // The socket is non-blocking: EAGAIN when all are read.
        let msg = match recv_with_fds(sock, &mut buf, MAX_FDS) {
            Ok(msg) => msg,
            Err(Errno::AGAIN) => return,
            Err(e) => {
                warn(&format!("notify socket: {e}"));
                return;
            }
        };
        let sender = msg
            .creds
            .map(|c| (c.pid.as_raw_nonzero().get(), c.uid.as_raw()));
        if sender.map(|(p, _)| p) != Some(pid.cast_signed()) {
            if limits.foreign.allow() {
                let (spid, uid) = sender.unzip();
                warn(&format!(
                    "ignoring a notification from pid {spid:?} (uid {uid:?}): only the program (pid {pid}) may notify"
                ));
            }
            continue; // the fds drop here
        }
        if msg.truncated || msg.fds_truncated {
            // Like systemd: a message cut short is not applied in part.
            if limits.truncated.allow() {
                warn(&format!(
                    "ignoring a truncated notification from pid {pid} (more than {} bytes or {MAX_FDS} fds)",
                    buf.len()
                ));
            }
            continue;
        }
        let text = String::from_utf8_lossy(&buf[..msg.len]);
        apply_limited(
            &text,
            msg.fds,
            &mut config.store,
            config.fd_store_max,
            limits,
        );
    }
}

/// Applies one notification message to the store (without a limit on its size).
pub fn apply(text: &str, fds: Vec<OwnedFd>, store: &mut Vec<(String, OwnedFd)>) {
    apply_limited(text, fds, store, usize::MAX, &mut Limits::new());
}

/// Applies one notification message to a store of at most `max` fds.
fn apply_limited(
    text: &str,
    fds: Vec<OwnedFd>,
    store: &mut Vec<(String, OwnedFd)>,
    max: usize,
    limits: &mut Limits,
) {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(str::to_owned))
    };
    let name = field("FDNAME=").unwrap_or_else(|| "stored".to_owned());
    if let Err(e) = crate::listen::validate_fd_name(&name) {
        if limits.bad_name.allow() {
            warn(&format!("ignoring a notification with FDNAME=: {e}"));
        }
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
        let (mut added, mut refused) = (0usize, 0usize);
        for fd in fds {
            // Like systemd: the same open file stored twice is kept once.
            if store.iter().any(|(_, s)| same_file(s, &fd)) {
                continue;
            }
            if store.len() >= max {
                refused += 1; // the fd drops (closes) here
                continue;
            }
            store.push((name.clone(), fd));
            added += 1;
        }
        if refused > 0 && limits.full.allow() {
            warn(&format!(
                "refused {refused} fd(s) named {name:?}: the store is full ({max} fds, --fd-store-max)"
            ));
        }
        if added > 0 || refused == 0 {
            log(&format!(
                "stored fd(s) as {name:?}; the store holds {}",
                store.len()
            ));
        }
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
