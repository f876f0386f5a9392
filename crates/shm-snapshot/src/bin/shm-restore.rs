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
use shm_snapshot::live::{self, Changed, Host, Initializer};
use shm_snapshot::{
    FileStorage, Restored, SnapshotError, SnapshotWriter, Storage, compact_temp_path, read_header,
    remove_stale_compaction, restore, restore_with_progress,
};

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
    /// Average limit on snapshot writes, in bytes per second (suffixes K, M,
    /// G: powers of 1024). Periodic snapshots wait until the bytes already
    /// written fit the rate; the snapshot at exit is never delayed.
    #[arg(long, value_name = "BYTES_PER_SEC", value_parser = parse_rate)]
    max_write_rate: Option<u64>,
    /// Log a warning when the file has been behind the live commit
    /// generation for this many seconds (repeated at most that often).
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    lag_warn: f64,
    /// Compact FILE when its log grows past this many times the image size
    /// (state plus 4096 bytes): at least 1.5, or 0 to never compact.
    #[arg(long, value_name = "FACTOR", default_value_t = 2.0)]
    compact_at: f64,
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
    let show = path.display();
    let st = FileStorage(File::open(path).map_err(|e| format!("{show}: {e}"))?);
    // One pass: the scan, and the program's generation from the image's first bytes.
    let mut head = [0u8; 8];
    let i = restore(&st, |off, b| {
        if let Some(n) = usize::try_from(off).ok().filter(|&o| o < 8) {
            let k = b.len().min(8 - n);
            head[n..n + k].copy_from_slice(&b[..k]);
        }
    })
    .map_err(|e| format!("{show}: {e}"))?
    .info;
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
    println!(
        "committed generation of the program: {}",
        u64::from_le_bytes(head)
    );
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
        Ok(true) => eprintln!(
            "shm-restore: removed stale {}",
            compact_temp_path(path).display()
        ),
        Ok(false) => {}
        Err(e) => eprintln!(
            "shm-restore: cannot remove stale {}: {e}",
            compact_temp_path(path).display()
        ),
    }
}

/// FILE, opened and its header checked (not yet read).
struct Opened {
    file: File,
    /// The state region size the file holds.
    region: u64,
}

/// FILE as read by one pass of [`restore_with_progress`].
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
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{show}: {e}")),
    };
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
fn load(path: &Path, opened: Opened, mut state: impl FnMut(u64, &[u8])) -> Result<Loaded, String> {
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
    let restored = restore_with_progress(
        &st,
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
    .map_err(|e| format!("{show}: {e}"))?;
    bar.finish();
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

/// A progress bar on a terminal for large files; nothing otherwise.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(total: u64) -> Self {
        use std::io::IsTerminal;
        if total < PROGRESS_MIN {
            return Self(None);
        }
        if !std::io::stderr().is_terminal() {
            eprintln!("shm-restore: reading {total} bytes of snapshot log");
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

/// Parses a byte rate: an integer with an optional K, M or G suffix (powers of 1024).
fn parse_rate(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.trim().char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a byte rate (e.g. 1048576, 512K, 10M)"))?;
    match n.checked_mul(mult) {
        Some(0) => Err("the rate must be more than 0 bytes per second".into()),
        Some(r) => Ok(r),
        None => Err(format!("{s:?} is too large")),
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
}

impl Snapshotter<'_> {
    /// Takes a snapshot unless the live state is already on disk; compacts
    /// the log afterwards when it has outgrown `compact_at` times the image.
    fn snapshot(&mut self, read: Read) -> Result<(), String> {
        let show = self.path.display();
        let started = Instant::now();
        let mut tries = 0;
        let g = loop {
            let mut tx = self.writer.begin();
            let mut visit = |p: u64, b: &[u8]| tx.page(p + 1, b).map(drop);
            let g = match read {
                Read::Full => self.host.read_after_exit(&mut visit),
                Read::Changed => match self.host.copy_changed(self.persisted, &mut visit) {
                    Ok(Changed::Complete(g)) => Ok(g),
                    Ok(Changed::Nothing) => return Ok(()),
                    Ok(Changed::Conflict) => {
                        drop(tx);
                        self.conflicts += 1;
                        tries += 1;
                        if tries == CONFLICT_TRIES {
                            return Err(format!(
                                "commits rewrote pages being copied {CONFLICT_TRIES} times in a row; snapshot skipped"
                            ));
                        }
                        continue;
                    }
                    Err(e) => Err(e),
                },
            }
            .map_err(|e: SnapshotError| format!("{show}: {e}"))?;
            if g <= self.persisted && tx.pages_written() == 0 {
                return Ok(());
            }
            tx.page(0, &prefix(g))
                .and_then(|_| tx.commit())
                .map_err(|e| format!("{show}: {e}"))?;
            break g;
        };
        self.persisted = g;
        self.snapshots += 1;
        self.bytes += self.writer.last_bytes_written;
        self.limit.wrote(started, self.writer.last_bytes_written);
        eprintln!(
            "shm-restore: durable generation {g} ({} bytes written)",
            self.writer.last_bytes_written
        );
        #[allow(clippy::cast_precision_loss)] // sizes far below 2^52
        let grown = self.writer.len() as f64 > self.compact_at * self.writer.region_size() as f64;
        if self.compact_at > 0.0 && grown {
            let before = self.writer.len();
            self.writer
                .compact_file(self.path)
                .map_err(|e| format!("{show}: compaction: {e}"))?;
            self.compactions += 1;
            eprintln!(
                "shm-restore: compacted {show}: {before} -> {} bytes",
                self.writer.len()
            );
        }
        Ok(())
    }

    /// A periodic tick: snapshot if the rate limit allows, then check the lag.
    fn tick(&mut self) {
        if self.limit.ready(Instant::now())
            && let Err(e) = self.snapshot(Read::Changed)
        {
            eprintln!("shm-restore: {e}");
        }
        if let Some(w) = self
            .lag
            .observe(Instant::now(), self.host.generation(), self.persisted)
        {
            eprintln!("shm-restore: {w}");
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
            eprintln!("shm-restore: {e}");
        }
        let live = self.host.generation_after_exit();
        if let Some(kb) = private_memory_kb() {
            eprintln!(
                "shm-restore: host private memory at exit: {kb} kB (state: {} kB in the memfd)",
                self.host.region_size() / 1024
            );
        }
        eprintln!(
            "shm-restore: at exit: file at generation {}, live at {live} ({} behind); {} snapshots, {} bytes written, {} compactions, {} copy conflicts; largest lag {} generations, {:.1}s",
            self.persisted,
            live.saturating_sub(self.persisted),
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

#[allow(clippy::too_many_lines, clippy::single_match_else)]
fn run(args: &Args) -> Result<ExitCode, String> {
    let path = &args.file;
    let show = path.display();
    if args.command.is_empty() {
        return Err("no COMMAND given".into());
    }
    if !(args.interval.is_finite() && args.interval > 0.0) {
        return Err(format!(
            "--interval {}: must be a positive number of seconds",
            args.interval
        ));
    }
    if !(args.compact_at.is_finite() && (args.compact_at == 0.0 || args.compact_at >= 1.5)) {
        return Err(format!(
            "--compact-at {}: must be 0 (never) or at least 1.5",
            args.compact_at
        ));
    }
    if !(args.lag_warn.is_finite() && args.lag_warn >= 0.0) {
        return Err(format!(
            "--lag-warn {}: must be a number of seconds",
            args.lag_warn
        ));
    }
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
        eprintln!(
            "shm-restore: the inherited memfd {:?} is all zeros (a fresh region, not yet a snapshot memfd): replacing it",
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
    // FILE is read once: on a cold start straight into the new memfd.
    let (fd, loaded, first): (OwnedFd, Option<Loaded>, Option<Read>) = match warm {
        Some(fd) => {
            let host = Host::open(fd.as_fd()).map_err(|e| format!("inherited memfd: {e}"))?;
            let loaded = match opened {
                Some(o) => {
                    if host.region_size() != o.region {
                        return Err(format!(
                            "inherited memfd holds {} bytes of state but {show} holds {}",
                            host.region_size(),
                            o.region
                        ));
                    }
                    Some(load(path, o, |_, _| {})?)
                }
                None => None,
            };
            let file_gen = loaded.as_ref().map_or(0, |l| l.generation);
            // No program runs yet: a commit the last one died inside counts.
            let live_gen = host.generation_after_exit();
            if live_gen < file_gen {
                return Err(format!(
                    "inherited memfd is at generation {live_gen} but {show} is newer ({file_gen}); refusing to guess"
                ));
            }
            eprintln!("shm-restore: warm start from the inherited memfd at generation {live_gen}");
            (fd, loaded, Some(Read::Full))
        }
        None => {
            let region = opened.as_ref().map_or(args.size, |o| o.region);
            let fd = shm_fd::state::create(&args.name, live::memfd_size(region))
                .map_err(|e| format!("memfd: {e}"))?;
            let init = Initializer::new(fd.as_fd(), region).map_err(|e| format!("memfd: {e}"))?;
            let loaded = match opened {
                Some(o) => Some(load(path, o, |off, b| init.write(off, b))?),
                None => None,
            };
            let generation = loaded.as_ref().map_or(0, |l| l.generation);
            init.finish(generation).map_err(|e| format!("memfd: {e}"))?;
            if loaded.is_some() {
                eprintln!(
                    "shm-restore: cold start: restored generation {generation} ({region} bytes) from {show} in {:.3}s",
                    started.elapsed().as_secs_f64()
                );
            } else {
                eprintln!(
                    "shm-restore: {show} missing: starting a fresh state of {region} bytes (--create)"
                );
            }
            if replace {
                let _ = shm_fd::notify::remove_fd(&args.name);
            }
            let _ = shm_fd::notify::store_fd(&args.name, fd.as_fd());
            (fd, loaded, None)
        }
    };
    let host = Host::open(fd.as_fd()).map_err(|e| format!("memfd: {e}"))?;
    let persisted = loaded.as_ref().map_or(0, |l| l.generation);
    // The writer continues FILE from the scan just made, or creates FILE.
    let writer = match loaded {
        Some(l) => SnapshotWriter::open_restored(FileStorage(l.file), l.restored)
            .map_err(|e| format!("{show}: {e}"))?,
        None => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
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
        persisted,
        limit: RateLimit {
            rate: args.max_write_rate,
            next: None,
        },
        lag: Lag {
            warn_after: Duration::from_secs_f64(args.lag_warn),
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
    };
    // The program has not started. An inherited memfd is compared with FILE
    // page by page (a commit its predecessor died inside is taken from the
    // work area, as its next start will); a cold start's memfd is FILE.
    if let Some(read) = first
        && let Err(e) = snap.snapshot(read)
    {
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
        if let Some(s) = done {
            snap.finish();
            break s;
        }
        snap.tick();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_suffixes_and_refuse_nonsense() {
        assert_eq!(parse_rate("1048576"), Ok(1 << 20));
        assert_eq!(parse_rate("512K"), Ok(512 << 10));
        assert_eq!(parse_rate("10M"), Ok(10 << 20));
        assert_eq!(parse_rate("2g"), Ok(2 << 30));
        for bad in [
            "0",
            "",
            "fast",
            "-5",
            "1.5M",
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
