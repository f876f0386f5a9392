//! SIGKILL soak: N board processes, random kills and restarts of any of them,
//! checksummed payloads. Checks: no torn read, values from each writer never
//! go backwards (as seen by any reader, across restarts of either side), every
//! restarted writer continues from its last value and publishes again, no slot
//! stays held once everyone is gone, a duplicate index is refused, and nothing
//! is left in /dev/shm.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shm_mailbox::{Config, Mailbox};
use shm_testkit::{Child, Watchdog, shm_objects_with_prefix, spawn, unique_name};

const N: usize = 4;

/// One process incarnation's output lines, tagged with (index, incarnation).
type Line = (usize, usize, String);

fn start(prefix: &str, index: usize, incarnation: usize, tx: &mpsc::Sender<Line>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_board"));
    cmd.args([
        "--index",
        &index.to_string(),
        "--count",
        &N.to_string(),
        "--prefix",
        prefix,
        "--max-interval-ms",
        "3",
    ])
    .stdout(Stdio::piped());
    let mut child = spawn(cmd).unwrap();
    let out = child.inner_mut().stdout.take().unwrap();
    let tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send((index, incarnation, line));
        }
    });
    child
}

/// A tiny deterministic generator for kill choices (reproducible from the seed printed).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn random_sigkills_never_tear_or_go_backwards() {
    let secs = if cfg!(debug_assertions) { 20 } else { 25 };
    let _w = Watchdog::new(Duration::from_secs(secs + 60));
    let prefix = unique_name("board");
    let seed = (u64::from(std::process::id()) * 2_654_435_761) | 1;
    println!("soak seed {seed}, {secs}s");
    let mut rng = Rng(seed);
    let (tx, rx) = mpsc::channel::<Line>();
    let mut incarnation = [0usize; N];
    let mut procs: Vec<Option<Child>> = (0..N).map(|i| Some(start(&prefix, i, 0, &tx))).collect();
    let mut kills = 0;
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20 + rng.below(150)));
        let i = rng.below(N as u64) as usize;
        if let Some(mut child) = procs[i].take() {
            child.sigkill_and_wait().unwrap();
            kills += 1;
        } else {
            incarnation[i] += 1;
            procs[i] = Some(start(&prefix, i, incarnation[i], &tx));
        }
    }
    // Every process that is down now (killed at a random point) restarts and
    // must publish again; the 20 s limit only guards against a hang.
    // At least one restart is always checked: kill one more at a random point.
    let victim = rng.below(N as u64) as usize;
    if let Some(mut child) = procs[victim].take() {
        child.sigkill_and_wait().unwrap();
        kills += 1;
    }
    let mut restarted = Vec::new();
    for (i, p) in procs.iter_mut().enumerate() {
        if p.is_none() {
            incarnation[i] += 1;
            *p = Some(start(&prefix, i, incarnation[i], &tx));
            restarted.push(i);
        }
    }
    let mut lines: Vec<Line> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !restarted.is_empty() {
        assert!(
            Instant::now() < deadline,
            "restarted writers {restarted:?} did not publish again"
        );
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
            let (w, inc, l) = &line;
            if *inc == incarnation[*w] && l.contains(": write ") {
                restarted.retain(|i| i != w);
            }
            lines.push(line);
        }
    }
    // Duplicate index: with process 0 running, a second process 0 is refused.
    let dup = Command::new(env!("CARGO_BIN_EXE_board"))
        .args([
            "--index",
            "0",
            "--count",
            &N.to_string(),
            "--prefix",
            &prefix,
        ])
        .output()
        .unwrap();
    assert_eq!(
        dup.status.code(),
        Some(2),
        "a second process 0 must be refused: {dup:?}"
    );
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("already"),
        "{dup:?}"
    );
    for p in procs.iter_mut().filter_map(Option::take) {
        drop(p); // SIGKILL and reap
    }
    drop(tx);
    lines.extend(rx.iter());
    check(&lines, kills);

    // Nobody is left: a writer reaps the dead readers' holds; no slot stays held.
    for j in 0..N {
        let mb = Mailbox::open_or_create(
            &format!("{prefix}-{j}"),
            Config {
                readers: N,
                slot_bytes: 64,
            },
        )
        .unwrap();
        let w = mb.writer().unwrap();
        w.reap_dead_readers();
        assert_eq!(mb.held_slots(), 0, "board {j} has a stuck slot");
    }
    let status = Command::new(env!("CARGO_BIN_EXE_board"))
        .args(["--count", &N.to_string(), "--prefix", &prefix, "--cleanup"])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        shm_objects_with_prefix(&prefix).is_empty(),
        "boards left in /dev/shm"
    );
}

fn check(lines: &[Line], kills: usize) {
    let mut writes: HashMap<(usize, usize), Vec<u64>> = HashMap::new();
    let mut reads: HashMap<(usize, usize), Vec<(usize, u64)>> = HashMap::new();
    let mut total_reads = 0;
    for (i, inc, line) in lines {
        let body = line.split_once(": ").map_or("", |(_, b)| b);
        assert!(!line.contains("CORRUPT"), "torn message: {line}");
        if let Some(v) = body.strip_prefix("write ") {
            writes
                .entry((*i, *inc))
                .or_default()
                .push(v.parse().unwrap());
        } else if let Some(rest) = body.strip_prefix("read info from ") {
            let (j, v) = rest.split_once(": ").unwrap();
            if v != "empty" {
                reads
                    .entry((*i, j.parse().unwrap()))
                    .or_default()
                    .push((*inc, v.parse().unwrap()));
                total_reads += 1;
            }
        }
    }
    // Each writer: consecutive within an incarnation; a restart continues above
    // the last value it printed (it may have published one more before dying).
    for i in 0..N {
        let mut last_printed = 0;
        let last_inc = writes
            .keys()
            .filter(|(w, _)| *w == i)
            .map(|(_, inc)| *inc)
            .max();
        assert!(last_inc.is_some(), "writer {i} never wrote");
        for inc in 0..=last_inc.unwrap_or(0) {
            // An incarnation killed before its first write has no lines.
            let Some(ws) = writes.get(&(i, inc)) else {
                continue;
            };
            assert!(
                ws.windows(2).all(|w| w[1] == w[0] + 1),
                "writer {i} incarnation {inc} skipped: {ws:?}"
            );
            let first = ws[0];
            assert!(
                first == last_printed + 1 || first == last_printed + 2,
                "writer {i} incarnation {inc} restarted at {first} after {last_printed}"
            );
            last_printed = *ws.last().unwrap();
        }
    }
    // Each (reader, writer) pair: what the reader saw never goes backwards,
    // across restarts of either.
    for ((i, j), seen) in &mut reads {
        // Lines of a killed incarnation may still be in flight when the next
        // one starts: order by incarnation (stable, so each keeps its order).
        seen.sort_by_key(|(inc, _)| *inc);
        for w in seen.windows(2) {
            assert!(
                w[1].1 >= w[0].1,
                "reader {i} saw writer {j} go back from {} to {}",
                w[0].1,
                w[1].1
            );
        }
    }
    assert!(kills >= 10, "the soak killed only {kills} processes");
    assert!(
        total_reads > 100,
        "too few reads to mean anything: {total_reads}"
    );
    println!(
        "soak: {kills} kills, {} lines, {total_reads} reads checked",
        lines.len()
    );
}
