//! Running a program as a supervised child: the one runner of `shm-fd
//! --supervise` and `shm-restore`.
//!
//! A [`Runner`] starts one child at a time (with fds, through
//! [`crate::exec::spawn_with_fds`], or any [`Command`]) and, while it exists:
//!
//! - forwards [`FORWARDED_SIGNALS`] (SIGTERM, SIGINT, SIGHUP, SIGQUIT,
//!   SIGUSR1, SIGUSR2) that this process receives to the child, through a
//!   pidfd, so a recycled pid is never signalled;
//! - after a forwarded stop signal ([`STOP_SIGNALS`]), SIGKILLs a child that
//!   has not exited within the stop timeout (systemd's `TimeoutStopSec=`);
//! - waits for the child with [`Runner::wait_until`]: one `poll` on the
//!   child's pidfd and the signal self-pipe (and, with
//!   [`Runner::wait_or_readable`], one more fd), sleeping until something
//!   happens or the deadline passes, never polling on a timer.
//!
//! [`exit_like`] then ends a binary the way its child ended.
//!
//! Signal handlers are process-wide: while a `Runner` exists, the six
//! signals are forwarded instead of taking their default action, and have
//! at most one `Runner` at a time. After it is dropped they stay caught and
//! are ignored (`signal-hook` cannot restore the default action).
//!
//! Dropping a `Runner` leaves a child that still runs alone (one started
//! with [`Runner::spawn_with_fds`] dies with this process).
//!
//! Needs Linux 5.3 or later (`pidfd_open`).
//!
//! # Example: run a program, forwarding signals, until it exits
//! ```
//! use std::process::{Command, ExitCode};
//! use std::time::{Duration, Instant};
//!
//! fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
//!     let mut runner = shm_fd::child::Runner::new(Some(Duration::from_secs(90)))?;
//!     // The server; here a program that exits after a moment.
//!     runner.spawn(Command::new("sleep").arg("0.2"))?;
//!     let status = loop {
//!         if let Some(status) = runner.wait_until(Instant::now() + Duration::from_secs(1))? {
//!             break status;
//!         }
//!         // Once a second: periodic work.
//!     };
//!     Ok(shm_fd::child::exit_like(status))
//! }
//! ```

use std::ffi::OsString;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal};
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::SignalOnly;

/// The signals a [`Runner`] forwards to its child.
pub const FORWARDED_SIGNALS: [i32; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// The forwarded signals that ask the child to stop: they start the stop
/// timeout and are remembered in [`Runner::stop_requested`].
pub const STOP_SIGNALS: [i32; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

/// What ended a [`Runner::wait_or_readable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wake {
    /// The child exited (it has been reaped; the runner has no child now).
    Exited(ExitStatus),
    /// The extra fd is readable (or has hung up).
    Readable,
    /// The deadline passed, or, with no child running, a stop signal has
    /// arrived ([`Runner::stop_requested`]).
    Timeout,
}

/// Runs one child at a time, forwarding signals to it. See the [module
/// docs](self).
#[derive(Debug)]
pub struct Runner {
    signals: SignalDelivery<UnixStream, SignalOnly>,
    stop_timeout: Option<Duration>,
    child: Option<Running>,
    stop: Option<Signal>,
}

/// The running child.
#[derive(Debug)]
struct Running {
    child: Child,
    /// Signals go through it, and it becomes readable when the child exits.
    pidfd: OwnedFd,
    /// When to SIGKILL the child: set by the first stop signal it was sent.
    kill_at: Option<Instant>,
}

impl Runner {
    /// Installs the handlers of [`FORWARDED_SIGNALS`] (see the module docs
    /// for what that means for this process). `stop_timeout`: how long a
    /// child may take to exit after a forwarded stop signal before it is
    /// SIGKILLed; `None` never kills it.
    pub fn new(stop_timeout: Option<Duration>) -> io::Result<Runner> {
        let (read, write) = UnixStream::pair()?;
        let signals = SignalDelivery::with_pipe(read, write, SignalOnly, FORWARDED_SIGNALS)?;
        Ok(Runner {
            signals,
            stop_timeout,
            child: None,
            stop: None,
        })
    }

    /// Starts `cmd` as the child. Returns its pid.
    ///
    /// # Errors
    /// `ResourceBusy` while a child is still running; the error of spawning,
    /// or of `pidfd_open` (then the child is killed and reaped).
    pub fn spawn(&mut self, cmd: &mut Command) -> io::Result<u32> {
        self.check_idle()?;
        let child = cmd.spawn()?;
        self.adopt(child)
    }

    /// Starts `program args` as the child with `fds` at 3, 4, ..., its own
    /// `LISTEN_PID` and death with this process, through `trampoline`: see
    /// [`crate::exec::spawn_with_fds`]. Returns its pid.
    ///
    /// # Errors
    /// As [`Runner::spawn`].
    pub fn spawn_with_fds(
        &mut self,
        trampoline: &std::path::Path,
        program: &OsString,
        args: &[OsString],
        fds: &[(String, OwnedFd)],
        env: &[(&str, String)],
    ) -> io::Result<u32> {
        self.check_idle()?;
        let child = crate::exec::spawn_with_fds(trampoline, program, args, fds, env)?;
        self.adopt(child)
    }

    fn check_idle(&self) -> io::Result<()> {
        match &self.child {
            None => Ok(()),
            Some(r) => Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!("pid {} is still running", r.child.id()),
            )),
        }
    }

    fn adopt(&mut self, mut child: Child) -> io::Result<u32> {
        let pid = child.id();
        // The child is not reaped before `try_wait` reports it: its pid
        // cannot be recycled before this.
        let pidfd = Pid::from_raw(pid.cast_signed())
            .ok_or(Errno::SRCH)
            .and_then(|p| rustix::process::pidfd_open(p, PidfdFlags::empty()));
        match pidfd {
            Ok(pidfd) => {
                self.child = Some(Running {
                    child,
                    pidfd,
                    kill_at: None,
                });
                Ok(pid)
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e.into())
            }
        }
    }

    /// The running child's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|r| r.child.id())
    }

    /// The first stop signal this process received while the runner
    /// existed, if any. It stays set.
    pub fn stop_requested(&self) -> Option<Signal> {
        self.stop
    }

    /// Sends `sig` to the running child (not a stop request: no timeout).
    ///
    /// # Errors
    /// `ESRCH` when no child is running or it has exited; the error of
    /// `pidfd_send_signal`.
    pub fn signal(&self, sig: Signal) -> io::Result<()> {
        let r = self.child.as_ref().ok_or(Errno::SRCH)?;
        Ok(rustix::process::pidfd_send_signal(&r.pidfd, sig)?)
    }

    /// Waits until the child exits (`Some`, reaped) or `deadline` passes
    /// (`None`), forwarding signals and applying the stop timeout meanwhile.
    /// A deadline in the past checks without blocking. With no child
    /// running, returns `None` at the deadline or once a stop signal has
    /// arrived.
    ///
    /// It sleeps in `poll` until the child exits, a signal arrives or a
    /// deadline (this one or the stop timeout's) passes: a caller with
    /// periodic work passes its next due time.
    ///
    /// # Errors
    /// The error of `poll` (other than `EINTR`) or of `waitpid`.
    pub fn wait_until(&mut self, deadline: Instant) -> io::Result<Option<ExitStatus>> {
        match self.wait_for(None, Some(deadline))? {
            Wake::Exited(status) => Ok(Some(status)),
            Wake::Readable | Wake::Timeout => Ok(None),
        }
    }

    /// Waits until the child exits, forwarding signals and applying the
    /// stop timeout meanwhile.
    ///
    /// # Errors
    /// `InvalidInput` when no child is running; as [`Runner::wait_until`].
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if self.child.is_none() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "no child is running",
                ));
            }
            if let Wake::Exited(status) = self.wait_for(None, None)? {
                return Ok(status);
            }
        }
    }

    /// As [`Runner::wait_until`] (no deadline with `None`), and also
    /// returns [`Wake::Readable`] when `fd` is readable: for a caller that
    /// serves a socket while its child runs.
    ///
    /// # Errors
    /// As [`Runner::wait_until`].
    pub fn wait_or_readable(
        &mut self,
        fd: BorrowedFd<'_>,
        deadline: Option<Instant>,
    ) -> io::Result<Wake> {
        self.wait_for(Some(fd), deadline)
    }

    fn wait_for(
        &mut self,
        extra: Option<BorrowedFd<'_>>,
        deadline: Option<Instant>,
    ) -> io::Result<Wake> {
        loop {
            self.forward_signals();
            if let Some(status) = self.reap()? {
                return Ok(Wake::Exited(status));
            }
            self.kill_if_overdue();
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) || (self.child.is_none() && self.stop.is_some()) {
                return Ok(Wake::Timeout);
            }
            let kill_at = self.child.as_ref().and_then(|r| r.kill_at);
            let wake_at = [deadline, kill_at].into_iter().flatten().min();
            if self.poll(extra, wake_at.map(|t| t.saturating_duration_since(now)))? {
                // Signals and the child's exit come first: the loop's start.
                self.forward_signals();
                if let Some(status) = self.reap()? {
                    return Ok(Wake::Exited(status));
                }
                return Ok(Wake::Readable);
            }
        }
    }

    /// One `poll` on the self-pipe, the pidfd and `extra`; whether `extra` is ready.
    fn poll(&self, extra: Option<BorrowedFd<'_>>, timeout: Option<Duration>) -> io::Result<bool> {
        let mut fds = vec![PollFd::new(self.signals.get_read(), PollFlags::IN)];
        if let Some(r) = &self.child {
            fds.push(PollFd::new(&r.pidfd, PollFlags::IN));
        }
        if let Some(fd) = extra {
            fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
        }
        // A timeout too large for a timespec is no timeout.
        let timeout = timeout.and_then(|t| rustix::time::Timespec::try_from(t).ok());
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(extra.is_some() && fds.last().is_some_and(|fd| !fd.revents().is_empty()))
    }

    /// Forwards the signals received since the last call to the child.
    fn forward_signals(&mut self) {
        let received: Vec<i32> = self.signals.pending().collect();
        for raw in received {
            let Some(sig) = Signal::from_named_raw(raw) else {
                continue;
            };
            let stop = STOP_SIGNALS.contains(&raw);
            if stop {
                self.stop.get_or_insert(sig);
            }
            let Some(r) = &mut self.child else {
                tracing::info!("signal {raw} received while no program runs");
                continue;
            };
            let pid = r.child.id();
            if stop {
                tracing::info!("forwarding signal {raw} to pid {pid}");
            } else {
                tracing::debug!("forwarding signal {raw} to pid {pid}");
            }
            match rustix::process::pidfd_send_signal(&r.pidfd, sig) {
                // It has exited: the next reap reports it.
                Ok(()) | Err(Errno::SRCH) => {}
                Err(e) => tracing::warn!("cannot forward signal {raw} to pid {pid}: {e}"),
            }
            if stop && let Some(timeout) = self.stop_timeout {
                r.kill_at.get_or_insert(Instant::now() + timeout);
            }
        }
    }

    /// SIGKILLs a child that outlived the stop timeout.
    fn kill_if_overdue(&mut self) {
        let Some(r) = &mut self.child else { return };
        if r.kill_at.is_none_or(|t| Instant::now() < t) {
            return;
        }
        tracing::warn!(
            "pid {} did not exit within {:?} of the stop signal: sending SIGKILL",
            r.child.id(),
            self.stop_timeout.unwrap_or_default()
        );
        let _ = rustix::process::pidfd_send_signal(&r.pidfd, Signal::KILL);
        r.kill_at = None;
    }

    /// The child's exit status, once it has exited (reaping it).
    fn reap(&mut self) -> io::Result<Option<ExitStatus>> {
        let Some(r) = &mut self.child else {
            return Ok(None);
        };
        let status = r.child.try_wait()?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }
}

/// For a binary's `main`: ends the process the way its child ended. An
/// exit code is returned for `main` to return; death by a signal is
/// re-raised with the signal's default action, so the parent (a shell,
/// systemd's `Restart=on-abnormal`) sees the same death. `128 + N` is
/// returned only if the signal's default action does not end the process.
///
/// # Examples
/// ```
/// use std::process::{Command, ExitCode};
/// fn main() -> ExitCode {
///     match Command::new("true").status() {
///         Ok(status) => shm_fd::child::exit_like(status),
///         Err(_) => ExitCode::FAILURE,
///     }
/// }
/// ```
pub fn exit_like(status: ExitStatus) -> ExitCode {
    if let Some(sig) = status.signal() {
        // Default action despite the forwarding handlers.
        let _ = signal_hook::low_level::emulate_default_handler(sig);
        return ExitCode::from(128 + u8::try_from(sig).unwrap_or(0));
    }
    ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1))
}
