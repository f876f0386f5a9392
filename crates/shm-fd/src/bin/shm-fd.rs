//! `shm-fd [OPTIONS] [--] COMMAND [ARGS...]`: run COMMAND with memfd state
//! regions that outlive it, kept by systemd's fd store or by `--supervise`.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use shm_fd::child::exit_like;
use shm_fd::exec::{ExecError, exec_with_fds, trampoline_main};
use shm_fd::listen::{ListenFds, validate_fd_name};
use shm_fd::supervise::{self, Restart};
use shm_fd::{notify, state};

/// Exit status: an inherited fd or variable is wrong (LISTEN_*, not a memfd, too small).
const EXIT_BAD_INPUT: u8 = 65;
/// Exit status: the OS refused something (memfd creation, sockets).
const EXIT_OS: u8 = 71;
/// Exit status: COMMAND exists but cannot be executed.
const EXIT_CANNOT_EXEC: u8 = 126;
/// Exit status: COMMAND was not found.
const EXIT_NOT_FOUND: u8 = 127;

const AFTER_HELP: &str = "\
Each --name region is taken from LISTEN_FDS when a service manager handed it
back, else created (a sealed memfd of --size bytes) and, when $NOTIFY_SOCKET is
set, pushed into the fd store with FDSTORE=1. COMMAND then runs with the
regions (and any other inherited fds) at fd 3 onwards and LISTEN_FDS,
LISTEN_FDNAMES and LISTEN_PID set: by exec, keeping this pid (systemd's main
process), or, with --supervise, as a child of shm-fd, which then keeps the fds
itself and restarts COMMAND per --restart.

systemd drops FDSTORE=1 silently unless the unit sets FileDescriptorStoreMax=
above 0: if shm-fd says it created a new region on every start, add e.g.
FileDescriptorStoreMax=4 (and, on systemd 254+, FileDescriptorStorePreserve=yes
to keep the store across stop/start). See docs/systemd.md.

Exit status: COMMAND's own (exec), or its last (--supervise; death by a signal
is re-raised, so the caller sees the same signal); 2 usage error; 65 a wrong
inherited fd or LISTEN_* variable; 71 an OS error; 126 COMMAND not executable;
127 COMMAND not found.";

#[derive(Debug, Parser)]
#[command(name = "shm-fd", version, about = "Run a program with memfd state that outlives it", after_help = AFTER_HELP)]
#[command(trailing_var_arg = true)]
struct Args {
    /// Name of a memfd state region (repeat for several).
    #[arg(long = "name", value_name = "NAME", default_value = "state", value_parser = parse_name)]
    names: Vec<String>,
    /// Size of each region created: bytes, or K, M, G, KiB, MiB, GiB (powers of 1024).
    #[arg(long, value_name = "BYTES", default_value = "1M", value_parser = parse_size)]
    size: u64,
    /// Send READY=1 before running COMMAND (for Type=notify units).
    #[arg(long)]
    ready: bool,
    /// Stay as COMMAND's parent and keep its fds without systemd.
    #[arg(long)]
    supervise: bool,
    /// With --supervise: when to restart COMMAND.
    #[arg(long, value_enum, default_value = "no")]
    restart: Restart,
    /// With --supervise: pause before a restart (e.g. 100ms, 2s, or seconds: 0.1).
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = shm_fd::cli::parse_duration)]
    restart_delay: Duration,
    /// With --supervise: how long COMMAND may take to exit after a forwarded
    /// SIGTERM/SIGINT/SIGHUP/SIGQUIT before it is SIGKILLed (systemd's `TimeoutStopSec=`).
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = shm_fd::cli::parse_duration)]
    stop_timeout: Duration,
    /// With --supervise: most starts of COMMAND within --restart-interval; then
    /// give up (or back off, --restart-max-backoff). 0: no limit (systemd's `StartLimitBurst=`).
    #[arg(long, value_name = "N", default_value = "5")]
    restart_burst: u32,
    /// With --supervise: the window --restart-burst counts starts in (systemd's `StartLimitIntervalSec=`).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = shm_fd::cli::parse_duration)]
    restart_interval: Duration,
    /// With --supervise: past the limit, keep restarting with a delay that
    /// doubles each time, up to this, instead of giving up.
    #[arg(long, value_name = "DURATION", value_parser = shm_fd::cli::parse_duration)]
    restart_max_backoff: Option<Duration>,
    /// With --supervise: most fds the store holds; further FDSTORE=1 fds are
    /// refused (systemd's `FileDescriptorStoreMax=`).
    #[arg(long, value_name = "N", default_value_t = supervise::DEFAULT_FD_STORE_MAX)]
    fd_store_max: usize,
    #[command(flatten)]
    log: shm_fd::cli::Verbosity,
    /// The program to run, and its arguments (everything from COMMAND on is
    /// its own; an unknown option before it is a usage error).
    #[arg(required = true, num_args = 1.., value_name = "COMMAND")]
    command: Vec<OsString>,
}

fn parse_name(s: &str) -> Result<String, String> {
    validate_fd_name(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

/// `--size`: the one size parser of every binary, and the smallest region.
fn parse_size(s: &str) -> Result<u64, String> {
    let bytes = shm_fd::cli::parse_size(s)?;
    if bytes < 4096 * 2 {
        return Err(format!("{s:?} is too small: a region needs at least 8K"));
    }
    Ok(bytes)
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "__child") {
        let rest = argv.get(3..).unwrap_or_default();
        #[allow(unsafe_code)]
        // SAFETY: `trampoline_main` needs to be the process `spawn_with_fds`
        // started, at the start of `main`, exiting if it returns: `__child` is
        // only passed by `spawn_with_fds`, nothing has run yet, and we exit.
        let e = unsafe { trampoline_main(rest) };
        return exec_failed(&e);
    }
    let args = Args::parse();
    args.log.init("shm-fd");
    match run(&args) {
        Ok(code) => code,
        Err((code, msg)) => {
            eprintln!("shm-fd: {msg}");
            ExitCode::from(code)
        }
    }
}

fn exec_failed(err: &ExecError) -> ExitCode {
    eprintln!("shm-fd: {err}");
    match err {
        ExecError::Exec { error, .. } if error.kind() == std::io::ErrorKind::NotFound => {
            ExitCode::from(EXIT_NOT_FOUND)
        }
        ExecError::Exec { .. } => ExitCode::from(EXIT_CANNOT_EXEC),
        _ => ExitCode::from(EXIT_OS),
    }
}

type Failure = (u8, String);

fn run(args: &Args) -> Result<ExitCode, Failure> {
    let mut inherited = ListenFds::from_env().map_err(|e| (EXIT_BAD_INPUT, e.to_string()))?;
    let under_manager = notify::NotifyAddr::from_env()
        .map_err(|e| (EXIT_BAD_INPUT, e.to_string()))?
        .is_some();
    let mut fds: Vec<(String, OwnedFd)> = Vec::new();
    for name in &args.names {
        let fd = match inherited.take(name) {
            Some(fd) => {
                let info = state::validate(fd.as_fd(), name, args.size).map_err(|e| {
                    (
                        EXIT_BAD_INPUT,
                        format!("the region handed back in LISTEN_FDS is unusable: {e}"),
                    )
                })?;
                tracing::info!(
                    "reusing region {name:?} ({} bytes) handed back by the service manager",
                    info.size
                );
                fd
            }
            None => create(name, args, under_manager)?,
        };
        fds.push((name.clone(), fd));
    }
    // Other inherited fds (sockets, other stores) pass through unchanged.
    fds.extend(inherited.take_all());
    if args.ready {
        notify::ready().map_err(|e| (EXIT_OS, e.to_string()))?;
    }
    let (program, rest) = args.command.split_first().expect("clap requires COMMAND");
    if !args.supervise {
        #[allow(unsafe_code)]
        // SAFETY: `exec_with_fds` replaces fds 3.. and may return: nothing in
        // this process owns fds other than `fds` now (the inherited ones were
        // all moved into `fds`; no thread was started), and on return we only
        // report and exit.
        let e = unsafe { exec_with_fds(program, rest, fds) };
        return Ok(exec_failed(&e));
    }
    let trampoline = std::env::current_exe()
        .map_err(|e| (EXIT_OS, format!("cannot find our own executable: {e}")))?;
    let status = supervise::run(supervise::Config {
        trampoline,
        program: program.clone(),
        args: rest.to_vec(),
        store: fds,
        restart: args.restart,
        restart_delay: args.restart_delay,
        stop_timeout: args.stop_timeout,
        restart_limit: supervise::RestartLimit {
            burst: args.restart_burst,
            interval: args.restart_interval,
            max_backoff: args.restart_max_backoff,
        },
        fd_store_max: args.fd_store_max,
    })
    .map_err(|e| (EXIT_OS, e.to_string()))?;
    Ok(exit_like(status))
}

fn create(name: &str, args: &Args, under_manager: bool) -> Result<OwnedFd, Failure> {
    let fd = state::create(name, args.size)
        .map_err(|e| (EXIT_OS, format!("cannot create region {name:?}: {e}")))?;
    if args.supervise {
        tracing::info!(
            "created region {name:?} ({} bytes); this supervisor keeps it across restarts",
            args.size
        );
    } else if under_manager {
        notify::store_fd(name, fd.as_fd())
            .map_err(|e| (EXIT_OS, format!("cannot store region {name:?}: {e}")))?;
        let hint = match std::env::var("FDSTORE").ok().as_deref() {
            // systemd 254+ sets $FDSTORE to FileDescriptorStoreMax= when it is above 0.
            Some("0") | None if std::env::var_os("FDSTORE").is_some() => {
                " but this unit has no fd store (FileDescriptorStoreMax=0): it will start fresh every time"
            }
            Some(_) => "",
            None => {
                "; if this appears on every start, the unit lacks FileDescriptorStoreMax= (systemd drops FDSTORE=1 silently without it)"
            }
        };
        tracing::info!(
            "created region {name:?} ({} bytes) and pushed it to the fd store{hint}",
            args.size
        );
    } else if std::env::var_os("INVOCATION_ID").is_some() {
        // systemd sets INVOCATION_ID for every service, but NOTIFY_SOCKET only
        // when the unit may notify: FileDescriptorStoreMax= > 0 implies that.
        tracing::warn!(
            "created region {name:?} ({} bytes), but this systemd unit gives no $NOTIFY_SOCKET: it lacks FileDescriptorStoreMax= (e.g. FileDescriptorStoreMax=4), so the region is lost at every restart",
            args.size
        );
    } else {
        tracing::info!(
            "created region {name:?} ({} bytes); no $NOTIFY_SOCKET, so it lives only as long as this process (use --supervise or systemd to keep it)",
            args.size
        );
    }
    Ok(fd)
}
