//! `shm-restore [OPTIONS] FILE [--] COMMAND [ARGS...]`: keeps continuous,
//! durable snapshots of a program's memfd state in FILE and restores it on a
//! cold start; `shm-restore inspect [--json] FILE` prints what FILE holds.
//!
//! The host itself is the library's [`shm_snapshot::host`]: this binary
//! parses the arguments, hands the memfd to the fd store, runs COMMAND and
//! forwards signals to it, and prints.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use shm_snapshot::host::{
    HostConfig, HostError, Inspection, LoadProgress, SnapshotHost, StartFrom, Work,
};
use shm_snapshot::replica::{self, ReplicaConfig, Target};

#[derive(Parser, Debug)]
#[command(
    name = "shm-restore",
    version,
    about = "Run COMMAND on a memfd state kept in durable snapshots in FILE",
    override_usage = "shm-restore [OPTIONS] FILE [--] COMMAND [ARGS]...\n       shm-restore inspect [--json] [--replica URL] FILE\n       shm-restore restore --from URL FILE [--generation G | --time T]\n       shm-restore replicas [--json] URL",
    after_help = "Sizes take bytes or K, M, G, KiB, MiB, GiB (powers of 1024); durations take seconds (0.5) or units (100ms, 2s, 1min).\n\nExit status: COMMAND's own (death by a signal is re-raised); 1 an error before COMMAND ran; 2 a usage error.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    sub: Option<Sub>,
    #[command(flatten)]
    run: Args,
    #[command(flatten)]
    log: shm_fd::cli::Verbosity,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Print what FILE holds: generations, valid bytes, an ignored tail, damage.
    Inspect {
        /// Print one JSON object (its fields: docs/protocol/shm-snapshot.md, "shm-restore inspect --json").
        #[arg(long)]
        json: bool,
        /// Also report how far the replica at URL is behind FILE (in file
        /// generations, and in seconds of FILE's history it lacks).
        #[arg(long, value_name = "URL")]
        replica: Option<String>,
        /// The snapshot file.
        file: PathBuf,
    },
    /// Restore FILE from a replica (written by `--replica`): the newest
    /// consistent state of the newest epoch, or the one asked for.
    Restore {
        /// The replica: `s3://BUCKET/PREFIX` (`AWS_*` environment) or `file:///DIR`.
        #[arg(long, value_name = "URL")]
        from: String,
        /// Exactly this file generation: FILE's own numbering of its
        /// snapshots, as `inspect` and `replicas` show it (not the program's
        /// commit generation).
        #[arg(long, value_name = "G", conflicts_with = "time")]
        generation: Option<u64>,
        /// The newest state durable at or before this time: RFC 3339
        /// (2026-12-03T06:00:00Z) or unix seconds.
        #[arg(long, value_name = "T", value_parser = parse_time)]
        time: Option<std::time::SystemTime>,
        /// The snapshot file to write (replaced atomically).
        file: PathBuf,
    },
    /// List a replica's epochs, bases and segments.
    Replicas {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// The replica: `s3://BUCKET/PREFIX` or `file:///DIR`.
        url: String,
    },
}

#[derive(clap::Args, Debug)]
struct Args {
    /// Start fresh if FILE is missing (it is created).
    #[arg(long)]
    create: bool,
    /// State size for `--create` (e.g. 1048576, 1M, 64MiB).
    #[arg(long, value_name = "BYTES", default_value = "1MiB", value_parser = shm_fd::cli::parse_size)]
    size: u64,
    /// Time between snapshots (e.g. 1, 0.1, 100ms). The first one is taken
    /// as soon as the program has committed once, and a program waiting for
    /// a durable generation gets a snapshot at once. 0: snapshot
    /// continuously (every commit wakes the host; it sleeps when idle).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = shm_fd::cli::parse_duration)]
    interval: Duration,
    /// Average limit on snapshot writes, in bytes per second (e.g. 1048576,
    /// 512K, 10M; powers of 1024). Periodic snapshots wait until the bytes
    /// already written fit the rate; the snapshot at exit is never delayed.
    #[arg(long, value_name = "BYTES_PER_SEC", value_parser = parse_rate)]
    max_write_rate: Option<u64>,
    /// Log a warning when the file has been behind the live commit
    /// generation for this long (repeated at most that often).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = shm_fd::cli::parse_duration)]
    lag_warn: Duration,
    /// Compact FILE when its log grows past this many times the image size
    /// (state plus 4096 bytes): at least 1.5, or 0 to never compact.
    #[arg(long, value_name = "FACTOR", default_value_t = 2.0)]
    compact_at: f64,
    /// Never compact a log smaller than this (a small state rewritten at
    /// every commit would otherwise be compacted at nearly every snapshot).
    #[arg(long, value_name = "BYTES", default_value = "16MiB", value_parser = shm_fd::cli::parse_size)]
    compact_min: u64,
    /// The fd name in LISTEN_FDNAMES and the fd store.
    #[arg(long, default_value = "state")]
    name: String,
    /// FILE is damaged (intact snapshots follow invalid records): restore
    /// exactly generation G (at most the newest before the damage) into a
    /// new FILE, keeping the original aside as FILE.damaged.TIME.
    #[arg(long, value_name = "G", conflicts_with = "salvage")]
    accept_generation: Option<u64>,
    /// FILE is damaged: rebuild the newest state in which every page has an
    /// intact version (from the inherited memfd on a warm start) into a new
    /// FILE, keeping the original aside as FILE.damaged.TIME; pages that
    /// could only be taken from before the damage are listed.
    #[arg(long)]
    salvage: bool,
    /// Replicate FILE to object storage while running: `s3://BUCKET/PREFIX`
    /// (endpoint, region, credentials from the `AWS_*` environment;
    /// `AWS_ALLOW_HTTP=true` for http) or `file:///DIR`. Restore with
    /// `shm-restore restore --from URL FILE`.
    #[arg(long, value_name = "URL")]
    replica: Option<String>,
    /// With --replica: keep this many bases (and the segments after them);
    /// older objects are deleted once a newer base is completely uploaded.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    replica_keep: u64,
    /// With --replica: also keep every base younger than this (e.g. 7days,
    /// 12h), and the segments after it.
    #[arg(long, value_name = "DURATION", value_parser = shm_fd::cli::parse_duration)]
    replica_keep_for: Option<Duration>,
    /// The snapshot file.
    #[arg(required = true)]
    file: Option<PathBuf>,
    /// The program and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<OsString>,
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "__child") {
        let rest = argv.get(3..).unwrap_or(&[]);
        #[allow(unsafe_code)]
        // SAFETY: `trampoline_main` needs to be the process `spawn_with_fds`
        // started, at the start of `main`, exiting if it returns: `__child` is
        // only passed by `spawn_with_fds`, nothing has run yet, and we exit.
        let e = unsafe { shm_fd::exec::trampoline_main(rest) };
        eprintln!("shm-restore: {e}");
        return ExitCode::from(127);
    }
    let cli = Cli::parse();
    cli.log.init("shm-restore");
    let result = match &cli.sub {
        Some(Sub::Inspect {
            json,
            replica,
            file,
        }) => do_inspect(file, *json, replica.as_deref()).map(|()| ExitCode::SUCCESS),
        Some(Sub::Restore {
            from,
            generation,
            time,
            file,
        }) => do_restore(from, file, *generation, *time).map(|()| ExitCode::SUCCESS),
        Some(Sub::Replicas { json, url }) => do_replicas(url, *json).map(|()| ExitCode::SUCCESS),
        None => run(&cli.run),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shm-restore: {e}");
            ExitCode::FAILURE
        }
    }
}

fn do_inspect(path: &Path, json: bool, replica: Option<&str>) -> Result<(), String> {
    let r = Inspection::of(path).map_err(|e| e.to_string())?;
    let lag = replica
        .map(|url| ReplicaLag::of(url, path, r.info.generation))
        .transpose()?;
    if json {
        println!("{}", inspect_json(path, &r, lag.as_ref()));
        return Ok(());
    }
    let i = &r.info;
    println!("file: {}", path.display());
    if i.all_zero {
        println!("all zeros: a fresh state of {} bytes", i.region_size);
        return Ok(());
    }
    println!("format version: {}", i.version);
    println!("page size: {}", i.page_size);
    match r.state_size() {
        Some(r) => println!("region size: {r}"),
        None => println!(
            "region size: none (the image of {} bytes is too small for shm-restore's state)",
            i.region_size
        ),
    }
    println!(
        "committed generation of the program: {}",
        r.program_generation
    );
    println!(
        "file generation: {} ({} valid commits in the file)",
        i.generation, i.commits
    );
    println!("valid bytes: {} of {}", i.valid_end, i.file_len);
    if let Some(d) = &i.damage {
        println!("DAMAGED: {d}");
        for r in &d.ranges {
            println!(
                "  damaged bytes {}..{} ({} bytes)",
                r.start,
                r.end,
                r.end - r.start
            );
        }
        println!(
            "  a start refuses FILE; --accept-generation {} restores that generation exactly, --salvage rebuilds generation {} (original kept aside either way)",
            d.last_before, d.newest_after
        );
    } else if r.ignored_tail() > 0 {
        if i.commits == 0 {
            println!("no complete commit: a start begins from an all-zero state");
        }
        println!(
            "ignored torn or corrupt tail: {} bytes (checksums fail)",
            r.ignored_tail()
        );
    } else {
        println!("checksums: all records valid");
    }
    if r.reserved() > 0 {
        println!(
            "reserved: {} bytes after the last commit (zeros, or a reused older log: space for the next snapshots)",
            r.reserved()
        );
    }
    if let Some(lag) = &lag {
        lag.print();
    }
    Ok(())
}

/// `inspect --replica URL`: where the replica's newest restorable state
/// stands against FILE.
struct ReplicaLag {
    url: String,
    /// The newest epoch with a base, and the newest file generation a
    /// restore of it reaches (by the object names), with the time that
    /// generation was durable in FILE.
    newest: Option<(String, u64, std::time::SystemTime)>,
    /// FILE's file generation, and when FILE was last written.
    file_generation: u64,
    written: Option<std::time::SystemTime>,
}

impl ReplicaLag {
    fn of(url: &str, path: &Path, file_generation: u64) -> Result<Self, String> {
        let epochs = replica::list(url).map_err(|e| format!("--replica {url}: {e}"))?;
        let newest = epochs.iter().rev().find_map(|e| {
            let o = e.newest.as_ref()?;
            Some((e.id.clone(), o.last, o.time))
        });
        Ok(Self {
            url: url.to_owned(),
            newest,
            file_generation,
            written: std::fs::metadata(path).and_then(|m| m.modified()).ok(),
        })
    }

    /// File generations FILE holds that the replica lacks.
    fn behind(&self) -> Option<u64> {
        let (_, g, _) = self.newest.as_ref()?;
        Some(self.file_generation.saturating_sub(*g))
    }

    /// The span of FILE's history the replica lacks: from the time its
    /// newest generation was durable to FILE's last write (0 when caught up).
    fn behind_secs(&self) -> Option<f64> {
        let (_, _, t) = self.newest.as_ref()?;
        if self.behind()? == 0 {
            return Some(0.0);
        }
        Some(
            self.written?
                .duration_since(*t)
                .map_or(0.0, |d| d.as_secs_f64()),
        )
    }

    fn print(&self) {
        let Some((epoch, g, t)) = &self.newest else {
            println!("replica {}: no base (nothing to restore yet)", self.url);
            return;
        };
        println!(
            "replica {}: epoch {epoch}, file generation {g} (durable in FILE at {})",
            self.url,
            humantime::format_rfc3339_millis(*t)
        );
        match (self.behind(), self.behind_secs()) {
            (Some(0), _) if *g > self.file_generation => println!(
                "replica lag: none; the replica is {} file generations ahead of FILE (another history, or FILE is older)",
                g - self.file_generation
            ),
            (Some(0), _) => println!("replica lag: none (it holds FILE's file generation)"),
            (Some(n), Some(s)) => {
                println!("replica lag: {n} file generations, {s:.3} s of FILE's history behind");
            }
            _ => {}
        }
    }

    fn json(&self) -> serde_json::Value {
        let secs = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        };
        serde_json::json!({
            "url": self.url,
            "epoch": self.newest.as_ref().map(|n| &n.0),
            "file_generation": self.newest.as_ref().map(|n| n.1),
            "time": self.newest.as_ref().map(|n| secs(n.2)),
            "behind_generations": self.behind(),
            "behind_seconds": self.behind_secs(),
        })
    }
}

/// `restore --from URL FILE`: assembles FILE from the replica.
fn do_restore(
    url: &str,
    file: &Path,
    generation: Option<u64>,
    time: Option<std::time::SystemTime>,
) -> Result<(), String> {
    let target = match (generation, time) {
        (Some(g), _) => Target::Generation(g),
        (None, Some(t)) => Target::Time(t),
        (None, None) => Target::Newest,
    };
    let r = replica::restore(url, file, target).map_err(|e| e.to_string())?;
    println!(
        "restored {}: file generation {} (program generation {}) from epoch {}, base {} and {} objects, {} bytes",
        file.display(),
        r.file_generation,
        r.generation,
        r.epoch,
        r.base,
        r.objects,
        r.bytes
    );
    for s in &r.skipped {
        println!("skipped {}: {}", s.key, s.reason);
    }
    Ok(())
}

/// `replicas URL`: the epochs and their objects.
fn do_replicas(url: &str, json: bool) -> Result<(), String> {
    let epochs = replica::list(url).map_err(|e| e.to_string())?;
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    if json {
        let obj = |o: &replica::ObjectInfo| {
            serde_json::json!({
                "key": o.key, "first": o.first, "last": o.last,
                "time": secs(o.time), "size": o.size,
            })
        };
        let out: Vec<_> = epochs
            .iter()
            .map(|e| {
                serde_json::json!({
                    "epoch": e.id,
                    "start": secs(e.start),
                    "bases": e.bases.iter().map(obj).collect::<Vec<_>>(),
                    "segments": e.segments.iter().map(obj).collect::<Vec<_>>(),
                    "newest": e.newest.as_ref().map(obj),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "schema": 1, "url": url, "epochs": out })
        );
        return Ok(());
    }
    for e in &epochs {
        println!(
            "epoch {} (started {})",
            e.id,
            humantime::format_rfc3339_millis(e.start)
        );
        if let Some(n) = &e.newest {
            println!(
                "  a restore reaches file generation {} (durable at {})",
                n.last,
                humantime::format_rfc3339_millis(n.time)
            );
        }
        for b in &e.bases {
            println!(
                "  base generation {} ({} bytes, {})",
                b.last,
                b.size,
                humantime::format_rfc3339_millis(b.time)
            );
        }
        for s in &e.segments {
            println!(
                "  segment generations {}..={} ({} bytes, {})",
                s.first,
                s.last,
                s.size,
                humantime::format_rfc3339_millis(s.time)
            );
        }
    }
    Ok(())
}

/// `--time`: RFC 3339 or unix seconds.
fn parse_time(s: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if !(0.0..1e12).contains(&secs) {
            return Err(format!("{s}: not a time"));
        }
        return Ok(std::time::UNIX_EPOCH + Duration::from_secs_f64(secs));
    }
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s}: {e} (expected RFC 3339 or unix seconds)"))
}

/// `inspect --json`: one object, documented in docs/protocol/shm-snapshot.md
/// ("shm-restore inspect --json"). Fields are only ever added; `schema` changes if one
/// changes meaning.
fn inspect_json(path: &Path, r: &Inspection, lag: Option<&ReplicaLag>) -> String {
    let i = &r.info;
    let damage = i.damage.as_ref().map(|d| {
        serde_json::json!({
            "ranges": d.ranges.iter().map(|r| serde_json::json!({"start": r.start, "end": r.end})).collect::<Vec<_>>(),
            "bytes": r.damaged_bytes(),
            "last_before": d.last_before,
            "newest_after": d.newest_after,
        })
    });
    serde_json::json!({
        "schema": 1,
        "file": path.to_string_lossy(),
        "all_zero": i.all_zero,
        "format_version": i.version,
        "page_size": i.page_size,
        "image_size": i.region_size,
        "state_size": r.state_size(),
        "file_generation": i.generation,
        "program_generation": r.program_generation,
        "commits": i.commits,
        "valid_bytes": i.valid_end,
        "file_len": i.file_len,
        "ignored_tail_bytes": r.ignored_tail(),
        "reserved_bytes": r.reserved(),
        "damage": damage,
        "replica": lag.map(ReplicaLag::json),
    })
    .to_string()
}

/// Files at least this large get a progress bar while restoring (on a terminal).
const PROGRESS_MIN: u64 = 64 << 20;

/// A progress bar on a terminal for large files; nothing otherwise.
#[derive(Default)]
struct Progress(Option<indicatif::ProgressBar>);

impl LoadProgress for Progress {
    fn start(&mut self, total: u64) {
        use std::io::IsTerminal;
        if total < PROGRESS_MIN {
            return;
        }
        if !std::io::stderr().is_terminal() {
            tracing::info!("reading {total} bytes of snapshot log");
            return;
        }
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "shm-restore: restoring {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        ) {
            bar.set_style(style);
        }
        self.0 = Some(bar);
    }
    fn update(&mut self, done: u64, _total: u64) {
        if let Some(b) = &self.0 {
            b.set_position(done);
        }
    }
    fn finish(&mut self) {
        if let Some(b) = self.0.take() {
            b.finish_and_clear();
        }
    }
}

/// `--max-write-rate`: the one size parser of every binary, and more than 0.
fn parse_rate(s: &str) -> Result<u64, String> {
    match shm_fd::cli::parse_size(s)? {
        0 => Err("the rate must be more than 0 bytes per second".into()),
        r => Ok(r),
    }
}

/// The host's configuration from the command line.
fn config(args: &Args, file: &Path) -> HostConfig {
    HostConfig {
        create: args.create,
        size: args.size,
        max_write_rate: args.max_write_rate,
        lag_warn: args.lag_warn,
        compact_at: args.compact_at,
        compact_min: args.compact_min,
        name: args.name.clone(),
        start_from: match (args.accept_generation, args.salvage) {
            (Some(g), _) => StartFrom::Generation(g),
            (None, true) => StartFrom::Salvage,
            (None, false) => StartFrom::Newest,
        },
        continuous: args.interval.is_zero(),
        replica: args.replica.as_ref().map(|url| ReplicaConfig {
            keep_bases: usize::try_from(args.replica_keep).unwrap_or(usize::MAX),
            keep_for: args.replica_keep_for,
            ..ReplicaConfig::new(url)
        }),
        ..HostConfig::new(file)
    }
}

/// A host error, with the options that deal with it where there are some.
fn explain(e: &HostError) -> String {
    match e {
        HostError::CompactAt { factor } => {
            format!("--compact-at {factor}: must be 0 (never) or at least 1.5")
        }
        HostError::NotFound { .. } => format!("{e} (use --create to start a fresh state)"),
        HostError::Damaged { path, .. } => format!(
            "{e}. `shm-restore inspect {}` shows the damage; \
             start with --accept-generation G (G at most the newest before the damage) or --salvage \
             to continue from a new FILE (the original is kept aside)",
            path.display()
        ),
        HostError::NothingToRebuild { path } => format!(
            "{}: no such file to restore with --accept-generation or --salvage",
            path.display()
        ),
        HostError::GenerationWithInherited { .. } => "--accept-generation restores FILE into a fresh memfd, but a memfd was inherited (its state is newer): remove it from the fd store first, or use --salvage to rebuild FILE from it".into(),
        _ => e.to_string(),
    }
}

fn run(args: &Args) -> Result<ExitCode, String> {
    let file = args.file.as_deref().ok_or("no FILE given")?;
    shm_fd::listen::validate_fd_name(&args.name).map_err(|e| format!("--name: {e}"))?;
    let config = config(args, file);
    config.validate().map_err(|e| explain(&e))?;
    // Warm start: a memfd from LISTEN_FDS (systemd's fd store or `shm-fd --supervise`).
    let mut fds = shm_fd::listen::ListenFds::from_env().map_err(|e| e.to_string())?;
    let warm = fds.take(&args.name);
    let prepared =
        SnapshotHost::prepare(config, warm, &mut Progress::default()).map_err(|e| explain(&e))?;
    // A new memfd goes to the fd store (replacing an all-zero one the
    // supervisor created) before FILE is written.
    if prepared.created_memfd() {
        if prepared.replaced_inherited() {
            let _ = shm_fd::notify::remove_fd(&args.name);
        }
        let _ = shm_fd::notify::store_fd(&args.name, prepared.memfd());
    }
    let host = prepared.start().map_err(|e| explain(&e))?;
    run_child(args, host)
}

/// Runs COMMAND with the memfd: a thread waits for it (forwarding signals
/// through the shared runner) and wakes the host when it exits; this thread
/// sleeps in [`SnapshotHost::wait_for_work`] until the next `--interval`
/// tick, a client waiting for a durable generation (served at once), a
/// commit (with `--interval 0`), or the child's exit. Then the exit
/// snapshot; the child's status is ours.
fn run_child(args: &Args, mut host: SnapshotHost) -> Result<ExitCode, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let (program, rest) = args.command.split_first().ok_or("no COMMAND")?;
    let dup = host
        .memfd()
        .try_clone_to_owned()
        .map_err(|e| e.to_string())?;
    let mut runner =
        shm_fd::child::Runner::new(None).map_err(|e| format!("signal handlers: {e}"))?;
    runner
        .spawn_with_fds(&exe, program, rest, &[(args.name.clone(), dup)], &[])
        .map_err(|e| format!("{}: {e}", program.to_string_lossy()))?;
    let waker = host.waker();
    let (exited, status) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let status = loop {
            match runner.wait_until(Instant::now() + Duration::from_secs(3600)) {
                Ok(Some(s)) => break Ok(s),
                Ok(None) => {}
                Err(e) => break Err(e.to_string()),
            }
        };
        // Sent before the wake: the woken loop finds it.
        let _ = exited.send(status);
        waker.wake();
    });
    // `--interval 0` snapshots on every commit; the tick then only checks the lag.
    let interval = if args.interval.is_zero() {
        Duration::from_secs(1)
    } else {
        args.interval
    };
    let mut next_tick = Instant::now() + interval;
    let status = loop {
        match host.wait_for_work(next_tick) {
            Work::Interrupted => {
                if let Ok(s) = status.try_recv() {
                    break s;
                }
            }
            Work::Waiters | Work::Commits => host.serve_waiters(),
            _ => {
                host.tick();
                next_tick = Instant::now() + interval;
            }
        }
    };
    host.finish();
    let status = status?;
    tracing::info!("{}", shm_fd::supervise::describe(status));
    Ok(shm_fd::child::exit_like(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_retention_options_reach_the_config() {
        let cli = Cli::try_parse_from([
            "shm-restore",
            "--replica",
            "file:///tmp/r",
            "--replica-keep",
            "3",
            "--replica-keep-for",
            "7days",
            "state.snap",
            "--",
            "true",
        ])
        .unwrap();
        let c = config(&cli.run, Path::new("state.snap"));
        let r = c.replica.unwrap();
        assert_eq!(r.keep_bases, 3);
        assert_eq!(r.keep_for, Some(Duration::from_secs(7 * 86400)));
        for bad in ["soon", "-1"] {
            let e = Cli::try_parse_from([
                "shm-restore",
                "--replica-keep-for",
                bad,
                "state.snap",
                "true",
            ])
            .unwrap_err();
            assert_eq!(e.exit_code(), 2, "{e}");
        }
    }

    #[test]
    fn rates_parse_with_suffixes_and_refuse_nonsense() {
        assert_eq!(parse_rate("1048576"), Ok(1 << 20));
        assert_eq!(parse_rate("512K"), Ok(512 << 10));
        assert_eq!(parse_rate("10M"), Ok(10 << 20));
        assert_eq!(parse_rate("10MiB"), Ok(10 << 20));
        assert_eq!(parse_rate("2g"), Ok(2 << 30));
        assert!(parse_time("1764745200").is_ok());
        assert!(parse_time("2026-12-03T06:00:00Z").is_ok());
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("-1").is_err());
        for bad in [
            "0",
            "",
            "fast",
            "-5",
            "99999999999999999999",
            "17179869184G",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
    }
}
