//! The tour's parts. Each runs real programs, checks what they did, and
//! returns one summary line (or `None` when it does not apply here).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rustix::process::Signal;

use crate::Outcome;
use crate::proc::{Bins, Watched, children_of, signal_pid};
use crate::ui::Ui;

/// What every part gets: where the programs are, how to talk, how big to go.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub(crate) ui: Ui,
    pub(crate) bins: &'a Bins,
    /// Smaller transfers and shorter runs (for the test suite, in debug builds).
    pub(crate) quick: bool,
}

type Part = fn(Ctx<'_>) -> Result<Option<Outcome>>;

/// Every part, in tour order.
pub(crate) const ALL: &[(&str, Part)] = &[
    ("supervise", supervise),
    ("snapshot", snapshot),
    ("ring", ring),
    ("board", board),
    ("systemd", systemd),
];

/// How long any one expected line may take before the part fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// A private scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("outlive-tour-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The first number after `key` in `line`.
pub(crate) fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = line.split_once(key)?.1;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The `total T` of a `primes` output line.
pub(crate) fn total_of(line: &str) -> Option<u64> {
    number_after(line, "total ")
}

// ---------------------------------------------------------------------------
// 1. shm-fd --supervise

/// `primes` under `shm-fd --supervise --restart=always`: each run adds 1000
/// primes to the table in its memfd. One run is SIGKILLed as it starts; the
/// next run carries on from the table the supervisor kept.
fn supervise(cx: Ctx<'_>) -> Result<Option<Outcome>> {
    let ui = cx.ui;
    ui.title("1. state in a memfd outlives SIGKILL (shm-fd --supervise, no systemd)");
    ui.say("shm-fd creates a memfd named \"state\", keeps it, and runs `primes` on it again and again;");
    ui.say("each run adds 1000 primes to the table it finds there.");
    let mut cmd = cx.bins.command("shm-fd");
    cmd.args([
        "--supervise",
        "--restart=always",
        "--restart-delay=150ms",
        "--",
    ])
    .arg(cx.bins.path("primes"));
    let mut sup = Watched::spawn("shm-fd", cmd)?;
    let show = |l: &str| {
        if l.contains("total") || l.contains("killed") || l.contains("exited") {
            ui.program("shm-fd+primes", l);
        }
    };
    let mut before = Vec::new();
    while before.len() < 2 {
        let l = sup.wait_for(PATIENCE, show, |l| total_of(l).is_some())?;
        before.extend(total_of(&l));
    }
    // Kill the next run as soon as the supervisor names its pid. A run can
    // finish before the signal lands (then it exits 0, or is a zombie that
    // the signal no longer reaches): try again on the next run.
    let mut killed = None;
    for _ in 0..20 {
        let l = sup.wait_for(PATIENCE, show, |l| l.contains(" as pid "))?;
        let pid = number_after(&l, " as pid ").context("no pid in the supervisor's line")?;
        let sent = signal_pid(u32::try_from(pid)?, Signal::KILL).is_ok();
        let exit = sup.wait_for(PATIENCE, show, |l| l.contains(" exited: "))?;
        if sent && exit.contains("killed by signal 9") {
            ui.say(&format!(
                "-> the tour SIGKILLed that run of primes (pid {pid}) as it started"
            ));
            killed = Some(pid);
            break;
        }
    }
    let Some(pid) = killed else {
        bail!("no run of primes lived long enough to be killed")
    };
    let mut after = Vec::new();
    while after.len() < 2 {
        let l = sup.wait_for(PATIENCE, show, |l| total_of(l).is_some())?;
        after.extend(total_of(&l));
    }
    sup.signal(Signal::TERM)?;
    sup.wait(PATIENCE)?;
    let last_before = before.last().copied().unwrap_or(0);
    let first_after = after.first().copied().unwrap_or(0);
    let all: Vec<u64> = before.iter().chain(&after).copied().collect();
    let ok = all.windows(2).all(|w| w[1] > w[0]) && first_after > last_before;
    Ok(Some(Outcome {
        part: "supervise",
        shown: format!("primes SIGKILLed (pid {pid}); next run resumed from the memfd"),
        figure: format!("totals {before:?} -> {after:?}"),
        ok,
    }))
}

// ---------------------------------------------------------------------------
// 2. shm-restore + primes-snapshot

/// `primes-snapshot` under `shm-restore`; both SIGKILLed; then a cold start
/// from the file, whose recovered table the program verifies prime by prime.
fn snapshot(cx: Ctx<'_>) -> Result<Option<Outcome>> {
    const CHUNK: u64 = 1000;
    let ui = cx.ui;
    ui.title("2. durable snapshots: kill the program and its host, restore cold from disk");
    let dir = Scratch::new("snapshot")?;
    let file = dir.join("primes.snap");
    ui.say(&format!(
        "shm-restore --create {} -- primes-snapshot: commits every 1000 primes, snapshots every 0.1 s",
        file.display()
    ));
    let host_cmd = |create: bool| {
        let mut cmd = cx.bins.command("shm-restore");
        if create {
            cmd.arg("--create");
        }
        cmd.args(["--interval", "0.1"])
            .arg(&file)
            .arg("--")
            .arg(cx.bins.path("primes-snapshot"))
            .arg("20000");
        cmd
    };
    let show = |l: &str| {
        if l.contains("durable") || l.contains("Recovering") || l.contains("start") {
            ui.program("shm-restore", l);
        }
    };
    let mut host = Watched::spawn("shm-restore", host_cmd(true))?;
    let mut durable = 0;
    for _ in 0..3 {
        let l = host.wait_for(PATIENCE, show, |l| l.contains("durable generation "))?;
        durable = durable.max(number_after(&l, "durable generation ").unwrap_or(0));
    }
    let host_pid = host.pid();
    let kids = children_of(host_pid);
    host.signal(Signal::KILL)?;
    for kid in &kids {
        let _ = signal_pid(*kid, Signal::KILL);
    }
    host.wait(PATIENCE)?;
    ui.say(&format!(
        "-> SIGKILL to shm-restore (pid {host_pid}) and primes-snapshot (pid {kids:?}); last durable generation {durable}"
    ));
    let out = cx
        .bins
        .command("shm-restore")
        .arg("inspect")
        .arg(&file)
        .output()
        .context("shm-restore inspect")?;
    ensure!(
        out.status.success(),
        "shm-restore inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        ui.program("shm-restore inspect", l);
    }
    ui.say("-> a cold start (no memfd survives): shm-restore rebuilds the state from the file");
    let mut host = Watched::spawn("shm-restore", host_cmd(false))?;
    let cold = host.wait_for(PATIENCE, show, |l| l.contains("cold start"))?;
    let restored = number_after(&cold, "restored generation ")
        .context("no generation in the cold-start line")?;
    let rec = host.wait_for(PATIENCE, show, |l| {
        l.contains("Recovering") || l.contains("corrupt")
    })?;
    let recovered = number_after(&rec, "Recovering ").context(rec.clone())?;
    host.wait_for(PATIENCE, show, |l| l.contains("committed generation"))?;
    host.signal(Signal::TERM)?;
    host.wait(PATIENCE)?;
    let ok = restored >= durable && recovered == restored * CHUNK;
    Ok(Some(Outcome {
        part: "snapshot",
        shown: format!("both SIGKILLed; cold restore: {recovered} primes, all verified"),
        figure: format!("durable gen {durable} -> restored gen {restored}"),
        ok,
    }))
}

// ---------------------------------------------------------------------------
// 3. shm-ring next to a pipe

/// A fixed, non-trivial block of bytes that the senders repeat.
fn pattern(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15_u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// The order-independent checksum the receiver keeps: the sum of all bytes.
fn byte_sum(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

/// Runs a helper role of the tour itself (`tour --role NAME ARGS...`).
pub(crate) fn run_role(role: &str, args: &[String]) -> Result<()> {
    let num = |i: usize| -> Result<u64> {
        args.get(i)
            .with_context(|| format!("role {role}: argument {i} missing"))?
            .parse()
            .with_context(|| format!("role {role}: argument {i}"))
    };
    match role {
        // ring-send SOCKET TOTAL CHUNK: serve one consumer, send TOTAL bytes.
        "ring-send" => {
            let socket = args.first().context("ring-send: SOCKET missing")?;
            let (total, chunk) = (num(1)?, usize::try_from(num(2)?)?);
            let listener = shm_ring::Listener::bind(socket)?;
            let ring = shm_ring::RingFds::create(
                "tour-ring",
                RING_BYTES,
                shm_ring::ElemLayout::of::<u8>(),
            )?;
            let mut tx = listener.accept_producer::<u8>(&ring)?;
            send_all(&mut tx, total, chunk)
        }
        // pipe-send TOTAL CHUNK: send TOTAL bytes to stdout.
        "pipe-send" => {
            let (total, chunk) = (num(0)?, usize::try_from(num(1)?)?);
            send_all(&mut std::io::stdout().lock(), total, chunk)
        }
        _ => bail!("unknown role {role}"),
    }
}

/// Ring size of the tour's byte stream.
const RING_BYTES: u64 = 1 << 20;

fn send_all(out: &mut impl Write, total: u64, chunk: usize) -> Result<()> {
    let block = pattern(chunk);
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk as u64) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}

/// Reads `total` bytes, returning the time from the first byte and the checksum.
fn receive_all(input: &mut impl Read, total: u64, chunk: usize) -> Result<(Duration, u64)> {
    let mut buf = vec![0u8; chunk];
    let mut got = 0u64;
    let mut sum = 0u64;
    let mut start = None;
    while got < total {
        let n = input.read(&mut buf)?;
        ensure!(n > 0, "the sender stopped after {got} of {total} bytes");
        start.get_or_insert_with(Instant::now);
        sum += byte_sum(&buf[..n]);
        got += n as u64;
    }
    Ok((start.map_or(Duration::ZERO, |s| s.elapsed()), sum))
}

/// One transfer through shm-ring between this process and a child.
fn ring_once(me: &Path, dir: &Scratch, total: u64, chunk: usize) -> Result<(Duration, u64)> {
    let socket = dir.join("ring.sock");
    let _ = std::fs::remove_file(&socket);
    let mut child = Watched::spawn(
        "tour ring-send",
        role_command(
            me,
            "ring-send",
            &[
                &socket.display().to_string(),
                &total.to_string(),
                &chunk.to_string(),
            ],
        ),
    )?;
    let deadline = Instant::now() + PATIENCE;
    let mut rx = loop {
        match shm_ring::Connector::new(&socket).connect_consumer::<u8>() {
            Ok(rx) => break rx,
            Err(e) if Instant::now() < deadline => {
                if child
                    .wait_for(Duration::from_millis(5), |_| {}, |_| true)
                    .is_ok()
                {
                    bail!("the ring sender said: {:?}", child.seen);
                }
                let _ = e;
            }
            Err(e) => return Err(e).context("connecting to the ring sender"),
        }
    };
    let out = receive_all(&mut rx, total, chunk)?;
    child.wait(PATIENCE)?;
    Ok(out)
}

/// The same transfer through a pipe (the child's stdout).
fn pipe_once(me: &Path, total: u64, chunk: usize) -> Result<(Duration, u64)> {
    let mut cmd = role_command(me, "pipe-send", &[&total.to_string(), &chunk.to_string()]);
    cmd.stdout(Stdio::piped()).stdin(Stdio::null());
    let mut child = cmd.spawn().context("starting the pipe sender")?;
    let mut out = child.stdout.take().context("stdout pipe")?;
    let got = receive_all(&mut out, total, chunk);
    let status = child.wait()?;
    ensure!(status.success(), "the pipe sender failed: {status}");
    got
}

fn role_command(me: &Path, role: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(me);
    cmd.arg("--role").arg(role).args(args);
    cmd
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Bytes through shm-ring and through a pipe, between two processes, measured
/// alternately in this run; the receiver checks every byte's sum.
fn ring(cx: Ctx<'_>) -> Result<Option<Outcome>> {
    let ui = cx.ui;
    ui.title("3. shm-ring: a lock-free channel in a sealed memfd, next to a pipe");
    let me = std::env::current_exe()?;
    let dir = Scratch::new("ring")?;
    let chunk = 64 << 10;
    let total: u64 = if cx.quick { 16 << 20 } else { 512 << 20 };
    let rounds = 3;
    ui.say(&format!(
        "one process sends {} MiB in {} KiB writes to another, {rounds} times each way, alternating",
        total >> 20,
        chunk >> 10
    ));
    let expect = byte_sum(&pattern(chunk)) * (total / chunk as u64);
    let mut ring_rates = Vec::new();
    let mut pipe_rates = Vec::new();
    let mut bad = Vec::new();
    #[allow(clippy::cast_precision_loss, reason = "a rate")]
    let rate = |d: Duration| total as f64 / d.as_secs_f64().max(1e-9) / 1e9;
    ui.progress("measuring", || -> Result<()> {
        for _ in 0..rounds {
            let (d, sum) = ring_once(&me, &dir, total, chunk)?;
            if sum != expect {
                bad.push("ring");
            }
            ring_rates.push(rate(d));
            let (d, sum) = pipe_once(&me, total, chunk)?;
            if sum != expect {
                bad.push("pipe");
            }
            pipe_rates.push(rate(d));
        }
        Ok(())
    })?;
    let (r, p) = (median(ring_rates), median(pipe_rates));
    ui.say(&format!(
        "shm-ring: {r:.2} GB/s   pipe: {p:.2} GB/s   (medians of {rounds})"
    ));
    Ok(Some(Outcome {
        part: "ring",
        shown: format!(
            "{} MiB x {rounds} each through shm-ring and a pipe, checksums {}",
            total >> 20,
            if bad.is_empty() { "right" } else { "WRONG" }
        ),
        figure: format!("ring {r:.2} GB/s = {:.1}x pipe", r / p.max(1e-9)),
        ok: bad.is_empty(),
    }))
}

// ---------------------------------------------------------------------------
// 4. the board

/// Four board processes publish and read each other's mailboxes; two are
/// SIGKILLed and restarted; a duplicate index is refused; nobody may ever
/// print CORRUPT.
fn board(cx: Ctx<'_>) -> Result<Option<Outcome>> {
    const N: usize = 4;
    let ui = cx.ui;
    ui.title("4. the board: N processes, latest value each, any of them SIGKILLed at any time");
    let prefix = format!("outlive-tour-board-{}", std::process::id());
    let run = Duration::from_millis(if cx.quick { 500 } else { 1500 });
    let start = |i: usize| -> Result<Watched> {
        let mut cmd = cx.bins.command("board");
        cmd.args([
            "--index",
            &i.to_string(),
            "--count",
            &N.to_string(),
            "--prefix",
            &prefix,
        ])
        .args(["--max-interval-ms", "20"]);
        Watched::spawn(&format!("board {i}"), cmd)
    };
    let cleanup = || {
        let _ = cx
            .bins
            .command("board")
            .args(["--count", &N.to_string(), "--prefix", &prefix, "--cleanup"])
            .status();
    };
    ui.say(&format!("{N} processes, each publishing a checksummed 64-byte value every 0-20 ms and reading the others"));
    let result = (|| -> Result<Outcome> {
        let mut procs: Vec<Watched> = (0..N).map(start).collect::<Result<_>>()?;
        let mut lines = Vec::new();
        let settle = |procs: &mut [Watched], lines: &mut Vec<String>| {
            for p in procs.iter_mut() {
                p.drain(run / N as u32, |_| {});
                lines.append(&mut p.seen);
            }
        };
        settle(&mut procs, &mut lines);
        let mut checks = Vec::new();
        for victim in [1, 2] {
            let last = lines
                .iter()
                .filter_map(|l| number_after(l, &format!("{victim}: write ")))
                .max()
                .unwrap_or(0);
            procs[victim].signal(Signal::KILL)?;
            procs[victim].wait(PATIENCE)?;
            lines.append(&mut procs[victim].seen);
            let last = lines
                .iter()
                .filter_map(|l| number_after(l, &format!("{victim}: write ")))
                .max()
                .unwrap_or(last);
            ui.say(&format!(
                "-> SIGKILL to board {victim} (its last write: {last}); restarting it"
            ));
            procs[victim] = start(victim)?;
            let ready = procs[victim].wait_for(PATIENCE, |_| {}, |l| l.contains("ready"))?;
            ui.program(&format!("board {victim}"), &ready);
            let from = number_after(&ready, "continuing from ").unwrap_or(0);
            checks.push(from >= last);
        }
        let mut dup = start(0)?;
        let status = dup.wait(PATIENCE)?;
        let refused = status.code() == Some(2);
        if let Some(msg) = dup.seen.last() {
            ui.program("board 0 (a second one)", msg);
        }
        settle(&mut procs, &mut lines);
        for p in &mut procs {
            p.signal(Signal::KILL)?;
            p.wait(PATIENCE)?;
            lines.append(&mut p.seen);
        }
        let sample: Vec<&String> = lines.iter().filter(|l| l.contains("read info")).collect();
        for l in &sample[sample.len().saturating_sub(3)..] {
            ui.program("board", l);
        }
        let reads = lines.iter().filter(|l| l.contains("read info")).count();
        let writes = lines.iter().filter(|l| l.contains(": write ")).count();
        let corrupt = lines.iter().filter(|l| l.contains("CORRUPT")).count();
        ui.say(&format!(
            "{writes} writes, {reads} reads, {corrupt} torn or corrupt"
        ));
        Ok(Outcome {
            part: "board",
            shown: format!(
                "2 of {N} boards SIGKILLed and restarted; duplicate {}",
                if refused { "refused" } else { "NOT refused" }
            ),
            figure: format!("{reads} reads, {corrupt} torn"),
            ok: corrupt == 0 && reads > 0 && refused && checks.iter().all(|c| *c),
        })
    })();
    cleanup();
    result.map(Some)
}

// ---------------------------------------------------------------------------
// 5. systemd

/// Whether a systemd user manager answers `systemctl --user`.
fn user_manager_answers() -> bool {
    Command::new("systemctl")
        .args(["--user", "is-system-running"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| {
            let state = String::from_utf8_lossy(&o.stdout);
            ["running", "degraded", "starting"]
                .iter()
                .any(|s| state.trim() == *s)
        })
}

fn systemctl(args: &[&str]) -> Result<()> {
    let status = Command::new("systemctl")
        .arg("--user")
        .args(args)
        .status()?;
    ensure!(
        status.success(),
        "systemctl --user {} failed ({status})",
        args.join(" ")
    );
    Ok(())
}

/// The fd-store part again, under a real systemd user manager, if one answers.
fn systemd(cx: Ctx<'_>) -> Result<Option<Outcome>> {
    let ui = cx.ui;
    if !user_manager_answers() {
        ui.title("5. systemd's fd store");
        ui.say("no systemd user manager answers `systemctl --user` here: part skipped");
        ui.say("(the test suite runs these scenarios under a real `systemd --user` of its own)");
        return Ok(None);
    }
    ui.title("5. systemd's fd store (a real user manager answers here)");
    let unit = format!("outlive-tour-{}", std::process::id());
    let log = std::env::temp_dir().join(format!("{unit}.log"));
    let status = Command::new("systemd-run")
        .args([
            "--user",
            "--quiet",
            "--remain-after-exit",
            &format!("--unit={unit}"),
            "-p",
            "Type=oneshot",
            "-p",
            "FileDescriptorStoreMax=4",
        ])
        .arg("-p")
        .arg(format!("StandardOutput=append:{}", log.display()))
        .arg(cx.bins.path("shm-fd"))
        .arg(cx.bins.path("primes"))
        .status()
        .context("systemd-run")?;
    ensure!(status.success(), "systemd-run failed ({status})");
    for _ in 0..2 {
        systemctl(&["restart", &format!("{unit}.service")])?;
    }
    let _ = systemctl(&["stop", &format!("{unit}.service")]);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let totals: Vec<u64> = text.lines().filter_map(total_of).collect();
    for line in text.lines() {
        ui.program("primes", line);
    }
    let ok = totals.len() == 3 && totals.windows(2).all(|w| w[1] > w[0]);
    Ok(Some(Outcome {
        part: "systemd",
        shown: "systemd's fd store kept the memfd across 2 restarts".to_owned(),
        figure: format!("totals {totals:?}"),
        ok,
    }))
}
