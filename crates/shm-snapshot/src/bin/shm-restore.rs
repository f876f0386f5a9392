//! `shm-restore [OPTIONS] FILE [--] COMMAND [ARGS...]`: keeps continuous,
//! durable snapshots of a program's memfd state in FILE and restores it on a
//! cold start; `shm-restore inspect [--json] FILE` prints what FILE holds.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use shm_snapshot::live::{self, Changed, Host, Initializer};
use shm_snapshot::{
    ErrorKind, FileStorage, OnDamage, RestoreOptions, Restored, SnapshotWriter, Storage,
    read_header, remove_stale_compaction, restore_with,
};

#[derive(Parser, Debug)]
#[command(
    name = "shm-restore",
    version,
    about = "Run COMMAND on a memfd state kept in durable snapshots in FILE",
    override_usage = "shm-restore [OPTIONS] FILE [--] COMMAND [ARGS]...\n       shm-restore inspect [--json] FILE",
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
        /// The snapshot file.
        file: PathBuf,
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
    /// as soon as the program has committed once.
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
        Some(Sub::Inspect { json, file }) => do_inspect(file, *json).map(|()| ExitCode::SUCCESS),
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

fn do_inspect(path: &Path, json: bool) -> Result<(), String> {
    let show = path.display();
    let st = FileStorage::open(path, false).map_err(|e| e.to_string())?;
    // The program's generation from the image's first bytes, as of the
    // newest generation that restores exactly (before any damage).
    let mut head = [0u8; 8];
    let i = shm_snapshot::inspect(&st).map_err(|e| format!("{show}: {e}"))?;
    let until = i.damage.as_ref().map(|d| d.last_before);
    let opts = RestoreOptions {
        until,
        ..RestoreOptions::default()
    };
    restore_with(
        &st,
        opts,
        |off, b| {
            if let Some(n) = usize::try_from(off).ok().filter(|&o| o < 8) {
                let k = b.len().min(8 - n);
                head[n..n + k].copy_from_slice(&b[..k]);
            }
        },
        |_, _| {},
    )
    .map_err(|e| format!("{show}: {e}"))?;
    let program_generation = u64::from_le_bytes(head);
    if json {
        println!("{}", inspect_json(path, &i, program_generation));
        return Ok(());
    }
    println!("file: {show}");
    if i.all_zero {
        println!("all zeros: a fresh state of {} bytes", i.region_size);
        return Ok(());
    }
    println!("page size: {}", i.page_size);
    match i.region_size.checked_sub(live::CONTROL_LEN) {
        Some(r) if r > 0 => println!("region size: {r}"),
        _ => println!(
            "region size: none (the image of {} bytes is too small for shm-restore's state)",
            i.region_size
        ),
    }
    println!("committed generation of the program: {program_generation}");
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
    } else if i.valid_end < i.file_len {
        if i.commits == 0 {
            println!("no complete commit: a start begins from an all-zero state");
        }
        println!(
            "ignored torn or corrupt tail: {} bytes (checksums fail)",
            i.file_len - i.valid_end
        );
    } else {
        println!("checksums: all records valid");
    }
    Ok(())
}

/// `inspect --json`: one object, documented in docs/protocol/shm-snapshot.md
/// ("shm-restore inspect --json"). Fields are only ever added; `schema` changes if one
/// changes meaning.
fn inspect_json(path: &Path, i: &shm_snapshot::FileInfo, program_generation: u64) -> String {
    let state_size = i
        .region_size
        .checked_sub(live::CONTROL_LEN)
        .filter(|&r| r > 0 && !i.all_zero);
    let ignored_tail = if i.damage.is_none() && !i.all_zero {
        i.file_len - i.valid_end
    } else {
        0
    };
    let damage = i.damage.as_ref().map(|d| {
        serde_json::json!({
            "ranges": d.ranges.iter().map(|r| serde_json::json!({"start": r.start, "end": r.end})).collect::<Vec<_>>(),
            "bytes": d.ranges.iter().map(|r| r.end - r.start).sum::<u64>(),
            "last_before": d.last_before,
            "newest_after": d.newest_after,
        })
    });
    serde_json::json!({
        "schema": 1,
        "file": path.to_string_lossy(),
        "all_zero": i.all_zero,
        "page_size": i.page_size,
        "image_size": i.region_size,
        "state_size": state_size,
        "file_generation": i.generation,
        "program_generation": if i.all_zero { 0 } else { program_generation },
        "commits": i.commits,
        "valid_bytes": i.valid_end,
        "file_len": i.file_len,
        "ignored_tail_bytes": ignored_tail,
        "damage": damage,
    })
    .to_string()
}

/// The file holds an **image**: a 4096-byte prefix whose first 8 bytes are
/// the program's commit generation, then the state region. Page `i + 1` of
/// the image is page `i` of the state.
fn prefix(generation: u64) -> Vec<u8> {
    let mut p = vec![0u8; live::CONTROL_LEN as usize];
    p[..8].copy_from_slice(&generation.to_le_bytes());
    p
}

/// Removes the temporary file of a compaction that a killed host left behind.
fn cleanup_temp(path: &Path) {
    match remove_stale_compaction(path) {
        Ok(removed) => {
            for p in removed {
                tracing::info!("removed stale {}", p.display());
            }
        }
        Err(e) => tracing::warn!("cannot remove stale compaction files: {e}"),
    }
}

/// FILE, opened and its header checked (not yet read).
struct Opened {
    file: File,
    /// The state region size the file holds.
    region: u64,
}

/// FILE as read by one pass of [`restore_with`].
struct Loaded {
    file: File,
    restored: Restored,
    /// The program's commit generation in the image.
    generation: u64,
}

/// Files at least this large get a progress bar while restoring (on a terminal).
const PROGRESS_MIN: u64 = 64 << 20;

/// Opens FILE and checks that its header describes a state shm-restore can
/// hold; `None` if it does not exist.
fn open_file(path: &Path) -> Result<Option<Opened>, String> {
    let show = path.display();
    if !path.exists() && path.symlink_metadata().is_err() {
        return Ok(None);
    }
    let file = FileStorage::open(path, true).map_err(|e| e.to_string())?.0;
    let header = read_header(&FileStorage(
        file.try_clone().map_err(|e| format!("{show}: {e}"))?,
    ))
    .map_err(|e| format!("{show}: {e}"))?;
    if header.region_size <= live::CONTROL_LEN {
        return Err(format!(
            "{show}: file of {} bytes is too small for a state",
            header.region_size
        ));
    }
    if u64::from(header.page_size) != live::PAGE {
        return Err(format!(
            "{show}: records of {} bytes, but shm-restore writes {}-byte pages",
            header.page_size,
            live::PAGE
        ));
    }
    Ok(Some(Opened {
        file,
        region: header.region_size - live::CONTROL_LEN,
    }))
}

/// Reads FILE once (header, then every valid record), handing the state's
/// bytes to `state(offset, bytes)` as they are verified.
fn load(
    path: &Path,
    opened: Opened,
    opts: RestoreOptions,
    mut state: impl FnMut(u64, &[u8]),
) -> Result<Loaded, String> {
    let show = path.display();
    let st = FileStorage(
        opened
            .file
            .try_clone()
            .map_err(|e| format!("{show}: {e}"))?,
    );
    let mut head = [0u8; 8];
    let file_len = st.len().unwrap_or(0);
    let mut bar = Progress::new(file_len);
    let restored = restore_with(
        &st,
        opts,
        |off, b| {
            // Split at the end of the prefix: bytes before it are the image's
            // generation field, the rest is state.
            let cut = usize::try_from(live::CONTROL_LEN.saturating_sub(off))
                .unwrap_or(usize::MAX)
                .min(b.len());
            let (pre, rest) = b.split_at(cut);
            if let Some(n) = usize::try_from(off).ok().filter(|&o| o < 8) {
                let k = pre.len().min(8 - n);
                head[n..n + k].copy_from_slice(&pre[..k]);
            }
            if !rest.is_empty() {
                state(off + cut as u64 - live::CONTROL_LEN, rest);
            }
        },
        |done, total| bar.set(done, total),
    )
    .map_err(|e| {
        if e.kind() == ErrorKind::Damaged {
            format!(
                "{show}: {e}; nothing was changed. `shm-restore inspect {show}` shows the damage; \
                 start with --accept-generation G (G at most the newest before the damage) or --salvage \
                 to continue from a new FILE (the original is kept aside)"
            )
        } else {
            format!("{show}: {e}")
        }
    })?;
    bar.finish();
    report_load(path, &restored);
    Ok(Loaded {
        file: opened.file,
        generation: if restored.info.all_zero {
            0
        } else {
            u64::from_le_bytes(head)
        },
        restored,
    })
}

/// Says what a load found besides the generation it restored: a torn tail
/// it ignored, or what a salvage had to take from before the damage.
fn report_load(path: &Path, r: &Restored) {
    let show = path.display();
    let i = &r.info;
    if let Some(s) = &r.salvage {
        // Image page 0 is the prefix; image page `i + 1` is state page `i`.
        let state_pages: Vec<_> = s
            .pages_from_before
            .iter()
            .map(|p| p.start.saturating_sub(1)..p.end - 1)
            .filter(|p| !p.is_empty())
            .collect();
        let n: u64 = state_pages.iter().map(|p| p.end - p.start).sum();
        tracing::warn!(
            "{show}: salvaged file generation {} across the damage ({}); {n} state pages of 4096 bytes could only be taken from file generation {} or before (a damaged record may have held a newer version): {}",
            s.generation,
            s.damage,
            s.damage.last_before,
            show_ranges(&state_pages)
        );
    } else if i.damage.is_none() && i.valid_end < i.file_len && !i.all_zero && i.commits == 0 {
        tracing::warn!(
            "{show}: no complete commit found: the {} bytes after the header were ignored (a first snapshot a crash interrupted, or a cut file); starting from an all-zero state",
            i.file_len - i.valid_end
        );
    } else if i.damage.is_none() && i.valid_end < i.file_len && !i.all_zero {
        tracing::info!(
            "{show}: ignored a torn tail of {} bytes after file generation {} (a snapshot a crash interrupted)",
            i.file_len - i.valid_end,
            i.generation
        );
    }
}

/// Page ranges as `0-3, 7, 9-12`, at most 20 of them.
fn show_ranges(r: &[std::ops::Range<u64>]) -> String {
    let mut out: Vec<String> = r
        .iter()
        .take(20)
        .map(|p| {
            if p.end - p.start == 1 {
                p.start.to_string()
            } else {
                format!("{}-{}", p.start, p.end - 1)
            }
        })
        .collect();
    if r.len() > 20 {
        out.push(format!("and {} more ranges", r.len() - 20));
    }
    out.join(", ")
}

/// A progress bar on a terminal for large files; nothing otherwise.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(total: u64) -> Self {
        use std::io::IsTerminal;
        if total < PROGRESS_MIN {
            return Self(None);
        }
        if !std::io::stderr().is_terminal() {
            tracing::info!("reading {total} bytes of snapshot log");
            return Self(None);
        }
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "shm-restore: restoring {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        ) {
            bar.set_style(style);
        }
        Self(Some(bar))
    }
    fn set(&mut self, done: u64, _total: u64) {
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

/// `--max-write-rate`: after a snapshot that started at `t` and wrote `n`
/// bytes, the next periodic one waits until `t + n / rate`. The average write
/// rate therefore stays at or below `rate`; the snapshot at the program's
/// exit is never delayed.
#[derive(Debug)]
struct RateLimit {
    rate: Option<u64>,
    next: Option<Instant>,
}

impl RateLimit {
    fn ready(&self, now: Instant) -> bool {
        self.next.is_none_or(|t| now >= t)
    }
    fn wrote(&mut self, started: Instant, bytes: u64) {
        if let Some(rate) = self.rate {
            #[allow(clippy::cast_precision_loss)] // byte counts far below 2^52
            let wait = Duration::from_secs_f64(bytes as f64 / rate as f64);
            self.next = Some(started + wait);
        }
    }
}

/// How far the file is behind the live commit generation.
#[derive(Debug)]
struct Lag {
    warn_after: Duration,
    /// When the host first saw a commit that is not yet on disk.
    behind_since: Option<Instant>,
    last_warned: Option<Instant>,
    max_generations: u64,
    max_time: Duration,
}

impl Lag {
    /// Records an observation; returns a warning line when the lag has
    /// exceeded `warn_after` (at most once per `warn_after`).
    fn observe(&mut self, now: Instant, live: u64, durable: u64) -> Option<String> {
        if live <= durable {
            self.behind_since = None;
            return None;
        }
        let since = *self.behind_since.get_or_insert(now);
        let behind = now.saturating_duration_since(since);
        let gens = live - durable;
        self.max_generations = self.max_generations.max(gens);
        self.max_time = self.max_time.max(behind);
        let due = self
            .last_warned
            .is_none_or(|t| now.saturating_duration_since(t) >= self.warn_after);
        if behind >= self.warn_after && due {
            self.last_warned = Some(now);
            return Some(format!(
                "lag: the file is {gens} generations ({:.1}s) behind the live state (file at {durable}, live at {live})",
                behind.as_secs_f64()
            ));
        }
        None
    }
}

/// `--max-write-rate`: the one size parser of every binary, and more than 0.
fn parse_rate(s: &str) -> Result<u64, String> {
    match shm_fd::cli::parse_size(s)? {
        0 => Err("the rate must be more than 0 bytes per second".into()),
        r => Ok(r),
    }
}

/// How a snapshot reads the live state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Only the pages committed after the file's generation
    /// ([`Host::copy_changed`]), while the program may run.
    Changed,
    /// Every page, compared with the file's checksums: before the program
    /// starts on an inherited memfd (whose history the file may not share),
    /// and after it died inside a commit ([`Host::read_after_exit`]).
    Full,
}

/// Attempts of one periodic snapshot before it is reported as skipped.
const CONFLICT_TRIES: u32 = 50;

/// The snapshot loop's state: the writer and the figures reported at exit.
/// It holds no copy of the state: each snapshot streams the changed pages
/// from the memfd into the file.
struct Snapshotter<'a> {
    path: &'a Path,
    host: Host,
    writer: SnapshotWriter<FileStorage>,
    /// The program's newest commit generation that is durable in FILE.
    persisted: u64,
    limit: RateLimit,
    lag: Lag,
    compact_at: f64,
    snapshots: u64,
    bytes: u64,
    compactions: u64,
    /// Attempts abandoned because a commit rewrote a page being copied.
    conflicts: u64,
    /// Set once the live commit sequence was seen out of range or moving
    /// backwards: the memfd was written by something other than the
    /// protocol, and no more snapshots are taken from it (FILE keeps its
    /// last good generation).
    refused: Option<String>,
    /// Compaction waits until then after it failed on a full disk.
    compact_after: Option<Instant>,
    /// The wait after the next failed compaction (doubling, at most 5 min).
    compact_backoff: Duration,
    /// The last error reported, and when: the same error is repeated at most
    /// every 10 s.
    last_error: Option<(String, Instant)>,
}

impl Snapshotter<'_> {
    /// Takes a snapshot unless the live state is already on disk; compacts
    /// the log afterwards when it has outgrown `compact_at` times the image.
    fn snapshot(&mut self, read: Read) -> Result<(), String> {
        /// Why a snapshot attempt ended without a new generation.
        enum Stop {
            Nothing,
            Failed(String),
            Refuse(String),
        }
        let path: &Path = self.path;
        let show = path.display();
        if let Some(why) = &self.refused {
            return Err(format!(
                "{why}; no snapshot taken, {show} stays at generation {}",
                self.persisted
            ));
        }
        let started = Instant::now();
        let mut tries = 0;
        let persisted = self.persisted;
        let outcome = loop {
            let mut tx = self.writer.begin();
            let mut visit = |p: u64, b: &[u8]| tx.page(p + 1, b).map(drop);
            let got = match read {
                Read::Full => self.host.read_after_exit(&mut visit),
                Read::Changed => match self.host.copy_changed(persisted, &mut visit) {
                    Ok(Changed::Complete(g)) => Ok(g),
                    Ok(Changed::Nothing) => break Err(Stop::Nothing),
                    Ok(Changed::Conflict) => {
                        drop(tx);
                        self.conflicts += 1;
                        tries += 1;
                        if tries == CONFLICT_TRIES {
                            break Err(Stop::Failed(format!(
                                "commits rewrote pages being copied {CONFLICT_TRIES} times in a row; snapshot skipped"
                            )));
                        }
                        continue;
                    }
                    Ok(Changed::OutOfRange { seq }) => {
                        break Err(Stop::Refuse(format!(
                            "the live commit sequence is {seq}, out of range: a stray write to the memfd"
                        )));
                    }
                    Ok(Changed::Backwards { generation }) => {
                        break Err(Stop::Refuse(format!(
                            "the live commit generation went backwards, from {persisted} to {generation}: a stray write to the memfd"
                        )));
                    }
                    Err(e) => Err(e),
                },
            };
            let g = match got {
                Ok(g) => g,
                Err(e) if e.kind() == ErrorKind::BadSequence => {
                    break Err(Stop::Refuse(e.to_string()));
                }
                Err(e) => break Err(Stop::Failed(format!("{show}: {e}"))),
            };
            if g < persisted {
                break Err(Stop::Refuse(format!(
                    "the live commit generation went backwards, from {persisted} to {g}: a stray write to the memfd"
                )));
            }
            if g == persisted && tx.pages_written() == 0 {
                break Err(Stop::Nothing);
            }
            if let Err(e) = tx.page(0, &prefix(g)).and_then(|_| tx.commit()) {
                break Err(Stop::Failed(format!("{show}: {e}")));
            }
            break Ok(g);
        };
        let g = match outcome {
            Ok(g) => g,
            Err(Stop::Nothing) => return Ok(()),
            Err(Stop::Failed(e)) => return Err(e),
            Err(Stop::Refuse(why)) => return Err(self.refuse(why)),
        };
        self.persisted = g;
        self.snapshots += 1;
        self.bytes += self.writer.last_bytes_written;
        self.limit.wrote(started, self.writer.last_bytes_written);
        tracing::info!(
            "durable generation {g} ({} bytes written)",
            self.writer.last_bytes_written
        );
        self.maybe_compact()
    }

    /// Compacts the log when it has outgrown `compact_at` times the image,
    /// unless a full disk made the last attempt fail recently.
    fn maybe_compact(&mut self) -> Result<(), String> {
        let show = self.path.display();
        #[allow(clippy::cast_precision_loss)] // sizes far below 2^52
        let grown = self.writer.len() as f64 > self.compact_at * self.writer.region_size() as f64;
        let due = self.compact_after.is_none_or(|t| Instant::now() >= t);
        if self.compact_at > 0.0 && grown && due {
            let before = self.writer.len();
            if let Err(e) = self.writer.compact_file(self.path) {
                if e.is_disk_full() {
                    // Retrying after every snapshot would rewrite the whole
                    // image into a full disk again and again: back off.
                    self.compact_after = Some(Instant::now() + self.compact_backoff);
                    let wait = self.compact_backoff;
                    self.compact_backoff = (self.compact_backoff * 2).min(Duration::from_secs(300));
                    return Err(format!(
                        "{show}: compaction: {e}; next attempt in {:.0}s at the earliest",
                        wait.as_secs_f64()
                    ));
                }
                return Err(format!("{show}: compaction: {e}"));
            }
            self.compact_after = None;
            self.compact_backoff = Duration::from_secs(1);
            self.compactions += 1;
            tracing::info!("compacted {show}: {before} -> {} bytes", self.writer.len());
        }
        Ok(())
    }

    /// Stops taking snapshots from this memfd for good; returns the message.
    fn refuse(&mut self, why: String) -> String {
        let msg = format!(
            "{why}; no snapshot taken, {} stays at generation {}",
            self.path.display(),
            self.persisted
        );
        self.refused = Some(why);
        msg
    }

    /// Reports an error, repeating the same one at most every 10 s.
    fn report(&mut self, e: String) {
        let now = Instant::now();
        if let Some((last, at)) = &self.last_error
            && *last == e
            && now.saturating_duration_since(*at) < Duration::from_secs(10)
        {
            return;
        }
        tracing::error!("{e}");
        self.last_error = Some((e, now));
    }

    /// A periodic tick: snapshot if the rate limit allows, then check the lag.
    fn tick(&mut self) {
        if self.limit.ready(Instant::now())
            && let Err(e) = self.snapshot(Read::Changed)
        {
            self.report(e);
        }
        if let Ok(live) = self.host.generation()
            && let Some(w) = self.lag.observe(Instant::now(), live, self.persisted)
        {
            tracing::warn!("{w}");
        }
    }

    /// The last snapshot at the program's exit (never rate-limited), and the summary.
    fn finish(&mut self) {
        // No client runs: a commit the program died inside is taken whole
        // from its work area, as the next `Client::open` will finish it.
        let read = if self.host.died_in_commit() {
            Read::Full
        } else {
            Read::Changed
        };
        if let Err(e) = self.snapshot(read) {
            tracing::error!("{e}");
        }
        let live = match self.host.generation_after_exit() {
            Ok(g) => g.to_string(),
            Err(e) => format!("unknown ({e})"),
        };
        let behind = match self.host.generation_after_exit() {
            Ok(g) if g >= self.persisted => format!("{} behind", g - self.persisted),
            Ok(_) => "went backwards: not persisted".into(),
            Err(_) => "not persisted".into(),
        };
        if let Some(kb) = private_memory_kb() {
            tracing::info!(
                "host private memory at exit: {kb} kB (state: {} kB in the memfd)",
                self.host.region_size() / 1024
            );
        }
        tracing::info!(
            "at exit: file at generation {}, live at {live} ({behind}); {} snapshots, {} bytes written, {} compactions, {} copy conflicts; largest lag {} generations, {:.1}s",
            self.persisted,
            self.snapshots,
            self.bytes,
            self.compactions,
            self.conflicts,
            self.lag.max_generations,
            self.lag.max_time.as_secs_f64()
        );
    }
}

/// Whether an inherited fd is not a snapshot memfd and reads as all zeros
/// (holes are skipped without reading them).
fn is_fresh(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    if Host::open(fd).is_ok() {
        return false;
    }
    let Ok(dup) = fd.try_clone_to_owned() else {
        return false;
    };
    shm_snapshot::inspect(&FileStorage(File::from(dup))).is_ok_and(|i| i.all_zero)
}

/// `RssAnon` of this process (kB): its private memory, without the mapped memfd.
fn private_memory_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// FILE as given, or the file a symlink at FILE points to: resolved once,
/// so that compaction and rebuilds replace the real file in its own
/// directory (renaming over the link would leave the target stale).
fn resolve(path: &Path) -> Result<PathBuf, String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            let real = std::fs::canonicalize(path)
                .map_err(|e| format!("{}: resolving the symlink: {e}", path.display()))?;
            tracing::info!(
                "{} is a symlink: working on {}",
                path.display(),
                real.display()
            );
            Ok(real)
        }
        _ => Ok(path.to_path_buf()),
    }
}

/// Keeps the original FILE as `FILE.damaged.SECONDS[.N]` (a hard link: FILE
/// itself is replaced only once its successor is complete). Returns the name.
fn keep_aside(path: &Path) -> Result<PathBuf, String> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for n in 0..100 {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".damaged.{secs}"));
        if n > 0 {
            name.push(format!(".{n}"));
        }
        let aside = PathBuf::from(name);
        match std::fs::hard_link(path, &aside) {
            Ok(()) => return Ok(aside),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(format!(
                    "{}: keeping the original as {}: {e}",
                    path.display(),
                    aside.display()
                ));
            }
        }
    }
    Err(format!(
        "{}: no free name to keep the original aside",
        path.display()
    ))
}

/// A new, empty snapshot file for the image of a `region`-byte state, at a
/// temporary name next to `path` (renamed over it once it holds the state).
fn create_beside(
    path: &Path,
    region: u64,
) -> Result<(SnapshotWriter<FileStorage>, PathBuf), String> {
    let (f, tmp) = shm_snapshot::create_temp_beside(path)
        .map_err(|e| format!("{}: creating a new file next to it: {e}", path.display()))?;
    let w = SnapshotWriter::create(
        FileStorage(f),
        u32::try_from(live::PAGE).unwrap_or(4096),
        live::CONTROL_LEN + region,
    )
    .map_err(|e| format!("{}: {e}", tmp.display()))?;
    Ok((w, tmp))
}

#[allow(clippy::too_many_lines, clippy::single_match_else)]
fn run(args: &Args) -> Result<ExitCode, String> {
    let file = args.file.as_deref().ok_or("no FILE given")?;
    shm_fd::listen::validate_fd_name(&args.name).map_err(|e| format!("--name: {e}"))?;
    if args.interval.is_zero() {
        return Err("--interval 0: must be more than 0".into());
    }
    if !(args.compact_at.is_finite() && (args.compact_at == 0.0 || args.compact_at >= 1.5)) {
        return Err(format!(
            "--compact-at {}: must be 0 (never) or at least 1.5",
            args.compact_at
        ));
    }
    let resolved = resolve(file)?;
    let path = resolved.as_path();
    let show = path.display();
    cleanup_temp(path);
    // Warm start: a memfd from LISTEN_FDS (systemd's fd store or `shm-fd --supervise`).
    let mut fds = shm_fd::listen::ListenFds::from_env().map_err(|e| e.to_string())?;
    let mut warm = fds.take(&args.name);
    // A supervisor that creates regions itself (`shm-fd --supervise`) hands
    // over an all-zero memfd the first time: not a snapshot memfd yet, and
    // nobody's data. It is replaced by ours (and in the store too). A memfd
    // with other contents is never ignored: `Host::open` refuses it below.
    let replace = warm.as_ref().is_some_and(|fd| is_fresh(fd.as_fd()));
    if replace {
        tracing::info!(
            "the inherited memfd {:?} is all zeros (a fresh region, not yet a snapshot memfd): replacing it",
            args.name
        );
        warm = None;
    }
    let started = Instant::now();
    let opened = open_file(path)?;
    if opened.is_none() && !args.create && warm.is_none() {
        return Err(format!(
            "{show}: no such file (use --create to start a fresh state)"
        ));
    }
    // How FILE is read: to its newest generation (refusing damage), to a
    // chosen one, or salvaging. The last two continue in a new FILE.
    let rebuild = args.salvage || args.accept_generation.is_some();
    let opts = RestoreOptions {
        until: args.accept_generation,
        on_damage: if args.salvage {
            OnDamage::Salvage
        } else {
            OnDamage::Refuse
        },
    };
    if rebuild && opened.is_none() {
        return Err(format!(
            "{show}: no such file to restore with --accept-generation or --salvage"
        ));
    }
    // FILE is read once: on a cold start straight into the new memfd.
    let (fd, loaded, first): (OwnedFd, Option<Loaded>, Option<Read>) = match warm {
        Some(fd) => {
            let host = Host::open(fd.as_fd()).map_err(|e| format!("inherited memfd: {e}"))?;
            if args.accept_generation.is_some() {
                return Err(
                    "--accept-generation restores FILE into a fresh memfd, but a memfd was inherited (its state is newer): remove it from the fd store first, or use --salvage to rebuild FILE from it".into(),
                );
            }
            let loaded = match opened {
                Some(o) => {
                    if host.region_size() != o.region {
                        return Err(format!(
                            "inherited memfd holds {} bytes of state but {show} holds {}",
                            host.region_size(),
                            o.region
                        ));
                    }
                    Some(load(path, o, opts, |_, _| {})?)
                }
                None => None,
            };
            let file_gen = loaded.as_ref().map_or(0, |l| l.generation);
            // No program runs yet: a commit the last one died inside counts.
            let live_gen = host
                .generation_after_exit()
                .map_err(|e| format!("inherited memfd: {e}"))?;
            if live_gen < file_gen {
                return Err(format!(
                    "inherited memfd is at generation {live_gen} but {show} is newer ({file_gen}); refusing to guess"
                ));
            }
            tracing::info!("warm start from the inherited memfd at generation {live_gen}");
            (fd, loaded, Some(Read::Full))
        }
        None => {
            let region = opened.as_ref().map_or(args.size, |o| o.region);
            let fd = shm_fd::state::create(&args.name, live::memfd_size(region))
                .map_err(|e| format!("memfd: {e}"))?;
            let init = Initializer::new(fd.as_fd(), region).map_err(|e| format!("memfd: {e}"))?;
            let loaded = match opened {
                Some(o) => Some(load(path, o, opts, |off, b| init.write(off, b))?),
                None => None,
            };
            let generation = loaded.as_ref().map_or(0, |l| l.generation);
            init.finish(generation).map_err(|e| format!("memfd: {e}"))?;
            if loaded.is_some() {
                tracing::info!(
                    "cold start: restored generation {generation} ({region} bytes) from {show} in {:.3}s",
                    started.elapsed().as_secs_f64()
                );
            } else {
                tracing::info!(
                    "{show} missing: starting a fresh state of {region} bytes (--create)"
                );
            }
            if replace {
                let _ = shm_fd::notify::remove_fd(&args.name);
            }
            let _ = shm_fd::notify::store_fd(&args.name, fd.as_fd());
            (fd, loaded, rebuild.then_some(Read::Full))
        }
    };
    let host = Host::open(fd.as_fd()).map_err(|e| format!("memfd: {e}"))?;
    let persisted = loaded.as_ref().map_or(0, |l| l.generation);
    // The writer continues FILE from the scan just made, or creates FILE;
    // after --accept-generation or --salvage it starts a new file next to
    // FILE, renamed over it once it holds the state.
    let mut rebuilt = None;
    let writer = match loaded {
        Some(l) if rebuild => {
            let (w, tmp) = create_beside(path, host.region_size())?;
            rebuilt = Some(tmp);
            drop(l);
            w
        }
        Some(l) => SnapshotWriter::open_restored(FileStorage(l.file), l.restored)
            .map_err(|e| format!("{show}: {e}"))?,
        None => {
            // Mode 0600: the file holds the program's whole state.
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("{show}: {e}"))?;
            let w = SnapshotWriter::create(
                FileStorage(f),
                u32::try_from(live::PAGE).unwrap_or(4096),
                live::CONTROL_LEN + host.region_size(),
            )
            .map_err(|e| format!("{show}: {e}"))?;
            sync_dir(path);
            w
        }
    };
    let mut snap = Snapshotter {
        path,
        host,
        writer,
        // A rebuilt file holds nothing yet: its first snapshot writes all.
        persisted: if rebuilt.is_some() { 0 } else { persisted },
        limit: RateLimit {
            rate: args.max_write_rate,
            next: None,
        },
        lag: Lag {
            warn_after: args.lag_warn,
            behind_since: None,
            last_warned: None,
            max_generations: 0,
            max_time: Duration::ZERO,
        },
        compact_at: args.compact_at,
        snapshots: 0,
        bytes: 0,
        compactions: 0,
        conflicts: 0,
        refused: None,
        compact_after: None,
        compact_backoff: Duration::from_secs(1),
        last_error: None,
    };
    // The program has not started. An inherited memfd is compared with FILE
    // page by page (a commit its predecessor died inside is taken from the
    // work area, as its next start will); a cold start's memfd is FILE.
    if let Some(read) = first
        && let Err(e) = snap.snapshot(read)
    {
        if rebuilt.is_some() {
            return Err(format!("writing the new {show}: {e}"));
        }
        tracing::error!("{e}");
    }
    if let Some(tmp) = rebuilt {
        let aside = keep_aside(path)?;
        std::fs::rename(&tmp, path)
            .map_err(|e| format!("{}: renaming to {show}: {e}", tmp.display()))?;
        sync_dir(path);
        tracing::info!(
            "{show} now starts from generation {}; the original is kept as {}",
            snap.persisted,
            aside.display()
        );
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
    let interval = args.interval.max(Duration::from_millis(1));
    // The first periodic snapshot is taken as soon as the program has
    // committed once, not a whole interval after it started: a program
    // killed early in its first interval still leaves its work on disk.
    let mut first_tick = true;
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
            if first_tick && snap.host.generation().is_ok_and(|g| g > snap.persisted) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(s) = done {
            snap.finish();
            break s;
        }
        first_tick = false;
        snap.tick();
    };
    tracing::info!("{}", shm_fd::supervise::describe(status));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_suffixes_and_refuse_nonsense() {
        assert_eq!(parse_rate("1048576"), Ok(1 << 20));
        assert_eq!(parse_rate("512K"), Ok(512 << 10));
        assert_eq!(parse_rate("10M"), Ok(10 << 20));
        assert_eq!(parse_rate("10MiB"), Ok(10 << 20));
        assert_eq!(parse_rate("2g"), Ok(2 << 30));
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

    #[test]
    fn rate_limit_spaces_snapshots_by_bytes_over_rate() {
        let t0 = Instant::now();
        let mut none = RateLimit {
            rate: None,
            next: None,
        };
        none.wrote(t0, 1 << 30);
        assert!(none.ready(t0));
        let mut l = RateLimit {
            rate: Some(1000),
            next: None,
        };
        assert!(l.ready(t0));
        l.wrote(t0, 5000);
        assert!(!l.ready(t0 + Duration::from_millis(4999)));
        assert!(l.ready(t0 + Duration::from_secs(5)));
        // The wait counts from the snapshot's start, not from its end.
        l.wrote(t0 + Duration::from_secs(5), 500);
        assert!(l.ready(t0 + Duration::from_millis(5500)));
    }

    #[test]
    fn lag_is_tracked_and_warned_once_per_threshold() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut lag = Lag {
            warn_after: s(10),
            behind_since: None,
            last_warned: None,
            max_generations: 0,
            max_time: Duration::ZERO,
        };
        assert_eq!(lag.observe(t0, 5, 5), None);
        assert_eq!(lag.observe(t0 + s(1), 7, 5), None);
        assert_eq!(lag.observe(t0 + s(10), 9, 5), None);
        let w = lag
            .observe(t0 + s(11), 12, 5)
            .expect("a warning after 10 s");
        assert!(w.contains("7 generations (10.0s) behind"), "{w}");
        assert_eq!(lag.observe(t0 + s(12), 13, 5), None, "warned 1 s ago");
        assert!(lag.observe(t0 + s(21), 14, 5).is_some());
        // Caught up: the clock restarts.
        assert_eq!(lag.observe(t0 + s(22), 14, 14), None);
        assert_eq!(lag.observe(t0 + s(23), 15, 14), None);
        assert_eq!((lag.max_generations, lag.max_time), (9, s(20)));
    }
}
