//! Snapshot benchmark: figures next to baselines measured in the same run.
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::many_single_char_names,
    clippy::too_many_lines,
    clippy::single_range_in_vec_init
)]

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use shm_snapshot::live::{self, Changed, Client, Host};
use shm_snapshot::{FileStorage, SnapshotWriter, restore};

/// Process-local stop flag ordering.
const RELAXED: std::sync::atomic::Ordering = std::sync::atomic::Ordering::Relaxed; // atomics-ok

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

/// The benchmark's scratch directory, removed with everything in it when
/// dropped: on every return and on a panic (an `unwrap` failing mid-run).
struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    fn create() -> ScratchDir {
        let path = std::env::temp_dir().join(format!("shm-snapshot-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        ScratchDir(path)
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("cannot remove {}: {e}", self.0.display());
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The host-copy child of the commit-pause group needs no directory.
    if let [_, flag, path, region, ..] = &args[..]
        && flag == "--host-copy"
    {
        host_copy_child(path, region.parse().unwrap());
        return;
    }
    let dir = ScratchDir::create();
    let size = 64usize << 20;
    // `cargo bench -p shm-snapshot --bench snapshot -- restore`: only the cold restore group.
    if args.iter().skip(1).any(|a| a == "restore") {
        cold_restore(&dir, size);
        return;
    }
    // `... -- durable [--quick]`: only the durable-commit group.
    if args.iter().skip(1).any(|a| a == "durable") {
        durable_commits(&dir, args.iter().any(|a| a == "--quick"));
        return;
    }
    // `... -- pause`: only the commit-pause group.
    if args.iter().skip(1).any(|a| a == "pause") {
        commit_pause();
        return;
    }
    let mut seedv = 1u64;
    let mut fill = |v: &mut [u8]| {
        for c in v.chunks_mut(8) {
            seedv = seedv
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            c.copy_from_slice(&seedv.to_le_bytes()[..c.len()]);
        }
    };
    // 1. Throughput: a full-image snapshot (every page dirty) vs raw write + fdatasync.
    let (mut snap, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let mut img = vec![0u8; size];
        fill(&mut img);
        let p = dir.join("t.snap");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        let mut w = SnapshotWriter::create(FileStorage(f), 4096, size as u64).unwrap();
        let t = Instant::now();
        w.snapshot(&img).unwrap();
        snap.push(size as f64 / t.elapsed().as_secs_f64() / 1e6);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("raw"))
            .unwrap();
        let t = Instant::now();
        f.write_all(&img).unwrap();
        f.sync_data().unwrap();
        raw.push(size as f64 / t.elapsed().as_secs_f64() / 1e6);
    }
    let (s, r) = (median(snap), median(raw));
    println!(
        "snapshot throughput (64 MiB, all dirty): {s:.0} MB/s   raw write+fdatasync: {r:.0} MB/s   ratio {:.2}",
        s / r
    );

    // 1b. The same through the live memfd, as `shm-restore` runs it.
    live_throughput(&dir);

    // 2. Bytes written per snapshot vs bytes dirtied.
    let mut img = vec![0u8; size];
    fill(&mut img);
    let p = dir.join("b.snap");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    let mut w = SnapshotWriter::create(FileStorage(f), 4096, size as u64).unwrap();
    w.snapshot(&img).unwrap();
    for pages in [1usize, 16, 256] {
        for k in 0..pages {
            img[k * 4096 * 7 % size] ^= 1;
        }
        w.snapshot(&img).unwrap();
        println!(
            "dirtied {pages} pages ({} B): written {} B, ratio {:.3}",
            pages * 4096,
            w.last_bytes_written,
            w.last_bytes_written as f64 / (pages * 4096) as f64
        );
    }

    // `... -- throughput`: groups 1 and 2 only.
    if args.iter().skip(1).any(|a| a == "throughput") {
        return;
    }

    // 3. Cold restore vs raw read + touch.
    cold_restore(&dir, size);

    // 4. Client pause per commit while the host copies continuously.
    commit_pause();

    // 5. Durable commits: latency, throughput, recovery point.
    durable_commits(&dir, false);
}

/// A snapshot host on its own thread, served as `shm-restore` serves it
/// (`wait_for_work` until the next tick); stopped through its waker.
struct HostThread {
    waker: shm_snapshot::host::Waker,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>, // atomics-ok: process-local stop flag
    thread: std::thread::JoinHandle<()>,
    memfd: std::os::fd::OwnedFd,
}

impl HostThread {
    fn start(file: &std::path::Path, region: u64, interval: Duration, continuous: bool) -> Self {
        use shm_snapshot::host::{HostConfig, SnapshotHost, Work};
        let _ = std::fs::remove_file(file);
        let config = HostConfig {
            create: true,
            size: region,
            continuous,
            ..HostConfig::new(file)
        };
        let mut host = SnapshotHost::open(config, None).unwrap();
        let memfd = host.memfd().try_clone_to_owned().unwrap();
        let waker = host.waker();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)); // atomics-ok
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut next = Instant::now() + interval;
            while !s.load(RELAXED) {
                match host.wait_for_work(next) {
                    Work::Waiters | Work::Commits => host.serve_waiters(),
                    Work::Interrupted => {}
                    _ => {
                        host.tick();
                        next = Instant::now() + interval;
                    }
                }
            }
        });
        Self {
            waker,
            stop,
            thread,
            memfd,
        }
    }

    fn stop(self) {
        self.stop.store(true, RELAXED);
        self.waker.wake();
        self.thread.join().unwrap();
    }
}

/// Durable-commit latency for k dirty pages against pwrite of the same
/// bytes + fdatasync in the same directory (medians over alternating runs,
/// as ratios); throughput with 1, 2, 4, 8 threads each committing and
/// waiting; and the recovery point (what a host crash loses) at the default
/// interval, at interval 0, and with waits.
fn durable_commits(dir: &std::path::Path, quick: bool) {
    let region = 256 * 4096u64;
    let runs = if quick { 5 } else { 31 };
    let host = HostThread::start(&dir.join("d.snap"), region, Duration::from_secs(1), false);
    let client = std::sync::Arc::new(Client::open(host.memfd.as_fd()).unwrap());
    let raw = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("d.raw"))
        .unwrap();
    raw.set_len(region).unwrap();
    println!("durable commit latency (median of {runs} alternating runs):");
    for k in [1usize, 16, 256] {
        let bytes = vec![0x5au8; k * 4096];
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for r in 0..runs {
            let t = Instant::now();
            client
                .work()
                .write_bytes(0, &bytes[..k * 4096 - r % 2])
                .unwrap();
            let g = client.commit(&[0..k * 4096]);
            client.wait_durable(g, Duration::from_secs(30)).unwrap();
            ours.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            std::os::unix::fs::FileExt::write_all_at(&raw, &bytes, 0).unwrap();
            raw.sync_data().unwrap();
            base.push(t.elapsed().as_secs_f64());
        }
        let (o, b) = (median(ours), median(base));
        println!(
            "  k = {k:>3} pages: commit + wait_durable {:>8.1} us, pwrite + fdatasync {:>8.1} us, ratio {:.2}",
            o * 1e6,
            b * 1e6,
            o / b
        );
    }
    println!("durable commit throughput (each thread commits one page and waits):");
    let span = if quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(2)
    };
    for threads in [1usize, 2, 4, 8] {
        let commits = std::sync::Mutex::new(());
        let done = std::sync::atomic::AtomicU64::new(0); // atomics-ok: a count
        let end = Instant::now() + span;
        std::thread::scope(|s| {
            for t in 0..threads {
                let (client, commits, done) = (&client, &commits, &done);
                s.spawn(move || {
                    while Instant::now() < end {
                        // Commits must not overlap; waits do.
                        let g = {
                            let _one = commits.lock().unwrap();
                            let at = t * 4096;
                            client.work().write_bytes(at, &[1]).unwrap();
                            client.commit(&[at..at + 1])
                        };
                        client.wait_durable(g, Duration::from_secs(30)).unwrap();
                        done.fetch_add(1, RELAXED);
                    }
                });
            }
        });
        let n = done.load(RELAXED);
        println!(
            "  {threads} thread(s): {:>8.0} durable commits/s",
            n as f64 / span.as_secs_f64()
        );
    }
    drop(client);
    host.stop();
    println!("recovery point (committing one page every 100 us; lag sampled every 5 ms):");
    for (name, interval, continuous, wait) in [
        ("default interval 1 s", Duration::from_secs(1), false, false),
        ("interval 0", Duration::from_secs(1), true, false),
        ("with waits", Duration::from_secs(1), false, true),
    ] {
        let host = HostThread::start(&dir.join("r.snap"), region, interval, continuous);
        let client = Client::open(host.memfd.as_fd()).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false); // atomics-ok: stop flag
        let (mut lags, start) = (Vec::new(), Instant::now());
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(RELAXED) {
                    client.work().write_bytes(0, &[2]).unwrap();
                    let g = client.commit(&[0..1]);
                    if wait {
                        client.wait_durable(g, Duration::from_secs(30)).unwrap();
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            });
            while start.elapsed() < span.max(Duration::from_millis(1500)) {
                std::thread::sleep(Duration::from_millis(5));
                // With waits, the commit being waited for is not acknowledged yet: not lost.
                let acked = if wait {
                    client.generation().saturating_sub(1)
                } else {
                    client.generation()
                };
                lags.push(acked.saturating_sub(client.durable_generation()) as f64);
            }
            stop.store(true, RELAXED);
        });
        let gens = start.elapsed().as_secs_f64() * 1e3 / client.generation().max(1) as f64;
        let lag = median(lags);
        println!(
            "  {name:<22}: median {lag:>6.0} acknowledged generations lost (~{:.1} ms of commits)",
            lag * gens
        );
        drop(client);
        host.stop();
    }
}

/// Cold restore of a snapshot file (one full generation, then incremental
/// ones) into fresh memory, against reading the same file into fresh memory
/// and touching every page, in the same run (warm page cache for both).
fn cold_restore(dir: &std::path::Path, size: usize) {
    let p = dir.join("r.snap");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    let mut w = SnapshotWriter::create(FileStorage(f), 4096, size as u64).unwrap();
    let mut img: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8 + 1).collect();
    w.snapshot(&img).unwrap();
    for g in 0..8usize {
        for k in 0..64 {
            img[(g * 977 + k * 4099) * 4096 % size] ^= 1;
        }
        w.snapshot(&img).unwrap();
    }
    let file_mib = w.len() as f64 / f64::from(1u32 << 20);
    let (mut rest, mut rawr) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let t = Instant::now();
        let mut out = vec![0u8; size];
        let f = std::fs::File::open(&p).unwrap();
        restore(&FileStorage(f), |off, b| {
            out[off as usize..off as usize + b.len()].copy_from_slice(b);
        })
        .unwrap();
        rest.push(t.elapsed().as_secs_f64());
        assert!(out == img, "restore is wrong");
        let t = Instant::now();
        let v = std::fs::read(&p).unwrap();
        let mut sum = 0u8;
        for c in v.chunks(4096) {
            sum ^= c[0];
        }
        std::hint::black_box(sum);
        rawr.push(t.elapsed().as_secs_f64());
    }
    let (a, b) = (median(rest), median(rawr));
    println!(
        "cold restore {} MiB state, {file_mib:.1} MiB file (warm page cache): {:.1} ms   raw read+touch of the file: {:.1} ms   ratio {:.2}",
        size >> 20,
        a * 1e3,
        b * 1e3,
        a / b
    );
}

/// The host side of the commit-pause group, in its own process as
/// `shm-restore` is: copies the committed state nonstop until stdin closes,
/// then prints how many consistent copies it made.
fn host_copy_child(path: &str, region: usize) {
    let f = std::fs::File::open(path).unwrap();
    let host = Host::open(f.as_fd()).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)); // atomics-ok: process-local stop flag
    let st = stop.clone();
    std::thread::spawn(move || {
        let _ = std::io::Read::read(&mut std::io::stdin(), &mut [0u8; 1]);
        st.store(true, RELAXED); // atomics-ok
    });
    // As `shm-restore` does: the pages changed since the last copy, laid
    // over a copy of the state.
    let mut buf = vec![0u8; region];
    let (mut n, mut since) = (0u64, 0u64);
    while !stop.load(RELAXED) {
        let r: Result<Changed, std::convert::Infallible> = host.copy_changed(since, |p, b| {
            let o = p as usize * 4096;
            buf[o..o + b.len()].copy_from_slice(b);
            Ok(())
        });
        if let Ok(Changed::Complete(g)) = r {
            since = g;
            n += 1;
        }
    }
    println!("{n}");
}

/// Snapshot throughput of the live path as `shm-restore` runs it: a client
/// commits 10 % of a 256 MiB state (random pages), then the host streams the
/// changed pages from the memfd into the file (`Host::copy_changed` into a
/// `SnapshotWriter` snapshot, then `fdatasync`), against appending the same
/// number of bytes to a file with one write and `fdatasync`, alternating.
fn live_throughput(dir: &std::path::Path) {
    const PAGE: usize = 4096;
    let region = 256usize << 20;
    let pages = region / PAGE;
    let fd = shm_segment::memfd::create(
        "bench",
        live::memfd_size(region as u64),
        shm_segment::memfd::FIXED_SIZE,
    )
    .unwrap();
    live::initialize(fd.as_fd(), region as u64, 0, |_| {}).unwrap();
    let client = Client::open(fd.as_fd()).unwrap();
    let host = Host::open(fd.as_fd()).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("live.snap"))
        .unwrap();
    let mut w = SnapshotWriter::create(FileStorage(f), 4096, region as u64).unwrap();
    let mut raw = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("live.raw"))
        .unwrap();
    let k = pages / 10;
    let payload = vec![7u8; k * PAGE];
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let (mut snap, mut rawv, mut since) = (Vec::new(), Vec::new(), 0u64);
    for round in 0..15u64 {
        let work = client.work();
        let mut ranges = Vec::with_capacity(k);
        for _ in 0..k {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let p = (rng as usize) % pages;
            for word in 0..PAGE / 8 {
                work.write(p * PAGE + word * 8, &(rng ^ round ^ word as u64))
                    .unwrap();
            }
            ranges.push(p * PAGE..p * PAGE + PAGE);
        }
        client.commit(&ranges);
        // Alternate which goes first: the disk's write-back state after one
        // fdatasync otherwise favours the other.
        // The same write calls as the writer makes: 1 MiB each.
        let mut timed_raw = |bytes: usize| {
            let t = Instant::now();
            for c in payload[..bytes.min(payload.len())].chunks(1 << 20) {
                raw.write_all(c).unwrap();
            }
            raw.sync_data().unwrap();
            t.elapsed().as_secs_f64()
        };
        let expect = k * (PAGE + 32);
        let rel_first = (round % 2 == 1).then(|| timed_raw(expect));
        let t = Instant::now();
        let mut tx = w.begin();
        let r = host.copy_changed(since, |p, b| tx.page(p, b).map(drop));
        let Ok(Changed::Complete(g)) = r else {
            panic!("no concurrent commit, yet {r:?}")
        };
        tx.commit().unwrap();
        let el = t.elapsed().as_secs_f64();
        since = g;
        let bytes = w.last_bytes_written as f64;
        let rel = rel_first.unwrap_or_else(|| timed_raw(expect));
        if round > 0 {
            snap.push(bytes / el / 1e6);
            rawv.push(expect as f64 / rel / 1e6);
        }
    }
    let (s, r) = (median(snap), median(rawv));
    println!(
        "live snapshot throughput (256 MiB state, 10 % dirty, host streams changed pages): {s:.0} MB/s   raw append+fdatasync of the same bytes: {r:.0} MB/s   ratio {:.2}",
        s / r
    );
}

/// Client pause per commit at 1 MiB, 100 MiB and 1 GiB of state while a host
/// process copies the committed state nonstop: the tracked commit (scan +
/// copy), the named-range commit (copy) and a plain memcpy of the same dirty
/// pages between two pre-faulted buffers, all in the same run. Also the
/// program-side cost of tracking: the first write to a page in an epoch
/// (a write-protect fault) against a second write to it.
fn commit_pause() {
    const PAGE: usize = 4096;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    for mib in [1u64, 100, 1024] {
        let region = mib << 20;
        let pages = region as usize / PAGE;
        let fd = shm_segment::memfd::create(
            "bench",
            live::memfd_size(region),
            shm_segment::memfd::FIXED_SIZE,
        )
        .unwrap();
        live::initialize(fd.as_fd(), region, 0, |_| {}).unwrap();
        let mut client = Client::open(fd.as_fd()).unwrap();
        // A populated state: every page written and committed once.
        let work = client.work();
        for p in 0..pages {
            work.write(p * PAGE, &(p as u64 + 1)).unwrap();
        }
        client.commit(&[0..region as usize]);
        let t = Instant::now();
        if let Err(e) = client.track() {
            println!("commit pause, {mib} MiB: tracking unavailable ({e}); skipped");
            continue;
        }
        let arm = t.elapsed();
        let mut host = std::process::Command::new(std::env::current_exe().unwrap())
            .arg("--host-copy")
            .arg(format!(
                "/proc/{}/fd/{}",
                std::process::id(),
                std::os::fd::AsRawFd::as_raw_fd(&fd)
            ))
            .arg(region.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let work = client.work();
        // Pre-faulted, reused buffers for the memcpy baseline.
        let src = vec![1u8; region as usize];
        let mut dst = vec![2u8; region as usize];
        let mut order: Vec<usize> = (0..pages).collect();
        println!(
            "commit pause, {mib} MiB state (host copying nonstop; track() took {:.1} ms):",
            us(arm) / 1e3
        );
        for (label, k) in [
            ("0 pages", 0usize),
            ("1 page", 1),
            ("0.1 %", (pages / 1000).max(1)),
            ("1 %", (pages / 100).max(1)),
            ("100 %", pages),
        ] {
            let (mut tracked, mut named, mut copy) = (Vec::new(), Vec::new(), Vec::new());
            let (mut first, mut second) = (Duration::ZERO, Duration::ZERO);
            let mut ranges = Vec::with_capacity(k);
            let rounds = if k == pages {
                8
            } else if k >= pages / 100 {
                200
            } else {
                1000u64
            };
            for i in 0..rounds {
                // k distinct random pages (partial Fisher-Yates).
                for j in 0..k {
                    let r = j + (next() as usize) % (pages - j);
                    order.swap(j, r);
                }
                let dirty = &order[..k];
                let t = Instant::now();
                for &p in dirty {
                    work.write(p * PAGE + 8, &i).unwrap();
                }
                first += t.elapsed();
                let t = Instant::now();
                for &p in dirty {
                    work.write(p * PAGE + 24, &i).unwrap();
                }
                second += t.elapsed();
                let t = Instant::now();
                let c = client.commit_tracked().unwrap();
                tracked.push(t.elapsed());
                assert_eq!(c.bytes, (k * PAGE) as u64, "tracked commit missed pages");
                for &p in dirty {
                    work.write(p * PAGE + 16, &i).unwrap();
                }
                ranges.clear();
                ranges.extend(dirty.iter().map(|&p| p * PAGE..p * PAGE + PAGE));
                let t = Instant::now();
                client.commit(&ranges);
                named.push(t.elapsed());
                // Untimed: re-arm the pages the named commit left pending.
                client.commit_tracked().unwrap();
                let t = Instant::now();
                for &p in dirty {
                    dst[p * PAGE..p * PAGE + PAGE].copy_from_slice(&src[p * PAGE..p * PAGE + PAGE]);
                }
                copy.push(t.elapsed());
                std::hint::black_box(&mut dst);
            }
            let t50d = pct(&mut tracked, 0.5);
            // Control: a busy loop as long as the median tracked commit, timed
            // the same way, shows the scheduling tail of this machine.
            let mut spins: Vec<Duration> = (0..rounds)
                .map(|_| {
                    let t = Instant::now();
                    while t.elapsed() < t50d {
                        std::hint::spin_loop();
                    }
                    t.elapsed()
                })
                .collect();
            let (t50, t99) = (us(t50d), us(pct(&mut tracked, 0.99)));
            let (n50, n99) = (us(pct(&mut named, 0.5)), us(pct(&mut named, 0.99)));
            let (m50, m99) = (us(pct(&mut copy, 0.5)), us(pct(&mut copy, 0.99)));
            println!(
                "  {label:>7} dirty ({k} pages, {rounds} commits): tracked p50 {t50:.1} us p99 {t99:.1} us | named ranges p50 {n50:.1} us p99 {n99:.1} us | memcpy p50 {m50:.1} us p99 {m99:.1} us | tracked/named p50 {:.2}x p99 {:.2}x | busy loop of the tracked median: p99 {:.1} us",
                t50 / n50,
                t99 / n99,
                us(pct(&mut spins, 0.99))
            );
            if k > 0 {
                let n = (k as u64 * rounds) as f64;
                println!(
                    "          program side: first write to a page per epoch {:.2} us, second write {:.2} us",
                    us(first) / n,
                    us(second) / n
                );
            }
        }
        drop(host.stdin.take());
        let out = host.wait_with_output().unwrap();
        println!(
            "  (the host process completed {} consistent copies meanwhile)",
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
}
