//! `shm-restore [OPTIONS] FILE [--] COMMAND [ARGS...]`: keeps continuous,
//! durable snapshots of a program's memfd state in FILE and restores it on a
//! cold start; `shm-restore inspect FILE` prints what FILE holds.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use shm_snapshot::live::{self, Host};
use shm_snapshot::{FileStorage, SnapshotWriter, inspect, restore};

#[derive(Parser, Debug)]
#[command(
    name = "shm-restore",
    about = "Run COMMAND on a memfd state kept in durable snapshots in FILE"
)]
struct Args {
    /// Start fresh if FILE is missing (it is created).
    #[arg(long)]
    create: bool,
    /// State size for `--create` (bytes).
    #[arg(long, default_value_t = 1 << 20)]
    size: u64,
    /// Seconds between snapshots.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// The fd name in LISTEN_FDNAMES and the fd store.
    #[arg(long, default_value = "state")]
    name: String,
    /// The snapshot file, or `inspect`.
    file: PathBuf,
    /// The program and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<OsString>,
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "__child") {
        let rest = argv.get(3..).unwrap_or(&[]);
        let e = shm_fd::exec::trampoline_main(rest);
        eprintln!("shm-restore: {e}");
        return ExitCode::from(127);
    }
    if argv.get(1).is_some_and(|a| a == "inspect") {
        let Some(f) = argv.get(2) else {
            eprintln!("usage: shm-restore inspect FILE");
            return ExitCode::from(2);
        };
        return match do_inspect(Path::new(f)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shm-restore: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shm-restore: {e}");
            ExitCode::FAILURE
        }
    }
}

fn do_inspect(path: &Path) -> Result<(), String> {
    let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let i = inspect(&FileStorage(f)).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("file: {}", path.display());
    if i.all_zero {
        println!("all zeros: a fresh state of {} bytes", i.region_size);
        return Ok(());
    }
    println!("page size: {}", i.page_size);
    println!("region size: {}", i.region_size - live::CONTROL_LEN);
    let mut g = 0;
    let st = FileStorage(File::open(path).map_err(|e| format!("{}: {e}", path.display()))?);
    restore(&st, |off, b| {
        if off == 0 {
            g = image_gen(b);
        }
    })
    .map_err(|e| format!("{}: {e}", path.display()))?;
    println!("committed generation of the program: {g}");
    println!(
        "file generation: {} ({} valid commits in the file)",
        i.generation, i.commits
    );
    println!("valid bytes: {} of {}", i.valid_end, i.file_len);
    if i.valid_end < i.file_len {
        println!(
            "ignored torn or corrupt tail: {} bytes (checksums fail)",
            i.file_len - i.valid_end
        );
    } else {
        println!("checksums: all records valid");
    }
    Ok(())
}

/// The snapshotted image: an 8-byte client commit generation in a 4096-byte
/// prefix, then the committed state.
fn image_gen(image: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&image[..8]);
    u64::from_le_bytes(a)
}

fn cleanup_temp(path: &Path) {
    let tmp = temp_path(path);
    if tmp.exists() {
        let _ = std::fs::remove_file(&tmp);
        eprintln!("shm-restore: removed stale {}", tmp.display());
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".compact.tmp");
    PathBuf::from(s)
}

#[allow(clippy::too_many_lines, clippy::single_match_else)]
fn run(args: &Args) -> Result<ExitCode, String> {
    let path = &args.file;
    let show = path.display();
    if args.command.is_empty() {
        return Err("no COMMAND given".into());
    }
    cleanup_temp(path);
    // Warm start: a memfd from LISTEN_FDS (systemd's fd store or `shm-fd --supervise`).
    let mut fds = shm_fd::listen::ListenFds::from_env().map_err(|e| e.to_string())?;
    let warm = fds.take(&args.name);
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !args.create && warm.is_none() {
                return Err(format!(
                    "{show}: no such file (use --create to start a fresh state)"
                ));
            }
            None
        }
        Err(e) => return Err(format!("{show}: {e}")),
    };
    // The file's image: region size and generation.
    let (file_region, file_gen) = match &file {
        Some(f) => {
            let st = FileStorage(f.try_clone().map_err(|e| format!("{show}: {e}"))?);
            let i = inspect(&st).map_err(|e| format!("{show}: {e}"))?;
            if i.region_size <= live::CONTROL_LEN {
                return Err(format!(
                    "{show}: file of {} bytes is too small for a state",
                    i.region_size
                ));
            }
            if i.all_zero {
                (i.region_size - live::CONTROL_LEN, 0)
            } else {
                let mut g = 0;
                restore(&st, |off, b| {
                    if off == 0 {
                        g = image_gen(b);
                    }
                })
                .map_err(|e| format!("{show}: {e}"))?;
                (i.region_size - live::CONTROL_LEN, g)
            }
        }
        None => (args.size, 0),
    };
    let file_region = match (&file, &warm) {
        (None, Some(fd)) => Host::open(fd.as_fd())
            .map_err(|e| format!("inherited memfd: {e}"))?
            .region_size(),
        _ => file_region,
    };
    let fd: OwnedFd = match warm {
        Some(fd) => {
            let host = Host::open(fd.as_fd()).map_err(|e| format!("inherited memfd: {e}"))?;
            if host.region_size() != file_region {
                return Err(format!(
                    "inherited memfd holds {} bytes of state but {show} holds {file_region}",
                    host.region_size()
                ));
            }
            if host.generation() < file_gen {
                return Err(format!(
                    "inherited memfd is at generation {} but {show} is newer ({file_gen}); refusing to guess",
                    host.generation()
                ));
            }
            eprintln!(
                "shm-restore: warm start from the inherited memfd at generation {}",
                host.generation()
            );
            fd
        }
        None => {
            let size = live::memfd_size(file_region);
            let fd = shm_fd::state::create(&args.name, size).map_err(|e| format!("memfd: {e}"))?;
            let started = Instant::now();
            if let Some(f) = &file {
                let st = FileStorage(f.try_clone().map_err(|e| format!("{show}: {e}"))?);
                live::initialize(fd.as_fd(), file_region, file_gen, |apply| {
                    let _ = restore(&st, |off, b| {
                        if off == 0 {
                            if b.len() > live::CONTROL_LEN as usize {
                                apply(0, &b[live::CONTROL_LEN as usize..]);
                            }
                        } else {
                            apply(off - live::CONTROL_LEN, b);
                        }
                    });
                })
                .map_err(|e| format!("memfd: {e}"))?;
                eprintln!(
                    "shm-restore: cold start: restored generation {file_gen} ({file_region} bytes) from {show} in {:.3}s",
                    started.elapsed().as_secs_f64()
                );
            } else {
                live::initialize(fd.as_fd(), file_region, 0, |_| {})
                    .map_err(|e| format!("memfd: {e}"))?;
                eprintln!(
                    "shm-restore: {show} missing: starting a fresh state of {file_region} bytes (--create)"
                );
            }
            let _ = shm_fd::notify::store_fd(&args.name, fd.as_fd());
            fd
        }
    };
    let host = Host::open(fd.as_fd()).map_err(|e| format!("memfd: {e}"))?;
    // The writer: continue the file, or create it.
    let image_len =
        usize::try_from(live::CONTROL_LEN + file_region).map_err(|_| "state too large")?;
    let mut image = vec![0u8; image_len];
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| format!("{show}: {e}"))?;
    let fresh = f.metadata().map_or(true, |m| m.len() == 0);
    let mut writer = if fresh {
        let w = SnapshotWriter::create(FileStorage(f), 4096, image_len as u64)
            .map_err(|e| format!("{show}: {e}"))?;
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        w
    } else {
        // Reopen at the file's own newest state, then snapshot the live one.
        let st = FileStorage(f);
        let mut old = vec![0u8; image_len];
        let info = restore(&st, |off, b| {
            let o = usize::try_from(off).unwrap_or(usize::MAX);
            if let Some(d) = old.get_mut(o..o + b.len()) {
                d.copy_from_slice(b);
            }
        })
        .map_err(|e| format!("{show}: {e}"))?
        .info;
        if info.region_size != image_len as u64 {
            return Err(format!(
                "{show}: region size {} differs from the state's {image_len}",
                info.region_size
            ));
        }
        SnapshotWriter::open(st, &old).map_err(|e| format!("{show}: {e}"))?
    };
    let mut persisted = file_gen;
    let snapshot = |writer: &mut SnapshotWriter<FileStorage>,
                    image: &mut Vec<u8>,
                    persisted: &mut u64|
     -> Result<(), String> {
        let Some(g) = host.copy(&mut image[live::CONTROL_LEN as usize..], 1000) else {
            return Err("commits overlap every copy; snapshot skipped".into());
        };
        if g <= *persisted && writer.generation() > 0 {
            return Ok(());
        }
        image[..8].copy_from_slice(&g.to_le_bytes());
        writer.snapshot(image).map_err(|e| format!("{show}: {e}"))?;
        *persisted = g;
        eprintln!(
            "shm-restore: durable generation {g} ({} bytes written)",
            writer.last_bytes_written
        );
        Ok(())
    };
    if let Err(e) = snapshot(&mut writer, &mut image, &mut persisted) {
        eprintln!("shm-restore: {e}");
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let (program, rest) = args.command.split_first().ok_or("no COMMAND")?;
    let dup = fd.try_clone().map_err(|e| e.to_string())?;
    let mut child =
        shm_fd::exec::spawn_with_fds(&exe, program, rest, &[(args.name.clone(), dup)], &[])
            .map_err(|e| format!("{}: {e}", program.to_string_lossy()))?;
    // Forward termination and user signals to the child; we exit when it does.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGQUIT,
        signal_hook::consts::SIGUSR1,
        signal_hook::consts::SIGUSR2,
    ])
    .map_err(|e| format!("signal handlers: {e}"))?;
    let child_pid = rustix::process::Pid::from_child(&child);
    let interval = Duration::from_secs_f64(args.interval.max(0.001));
    let status = loop {
        let deadline = Instant::now() + interval;
        let mut done = None;
        while Instant::now() < deadline {
            if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
                done = Some(s);
                break;
            }
            for sig in signals.pending() {
                if let Some(sig) = rustix::process::Signal::from_named_raw(sig) {
                    let _ = rustix::process::kill_process(child_pid, sig);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Err(e) = snapshot(&mut writer, &mut image, &mut persisted) {
            eprintln!("shm-restore: {e}");
        }
        if let Some(s) = done {
            break s;
        }
    };
    eprintln!("shm-restore: {}", shm_fd::supervise::describe(status));
    Ok(exit_like(status))
}

fn exit_like(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        // Die by the same signal (default action, despite our forwarding
        // handlers) so the death is visible to our parent (`Restart=on-abnormal`).
        let _ = signal_hook::low_level::emulate_default_handler(sig);
        return ExitCode::from(128 + u8::try_from(sig).unwrap_or(0));
    }
    ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1))
}
