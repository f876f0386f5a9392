//! Snapshot benchmark: figures next to baselines measured in the same run.
//!
//! `cargo bench -p shm-snapshot --features replica --bench snapshot [-- --quick] [GROUP...]`
//! (groups: `throughput`, `live`, `bytes`, `restore`, `pause`,
//! `pause-threads`, `durable`, `replication`; a word selects every group
//! whose name contains it, so `pause` runs both pause groups and `threads`
//! only the second; `replication` needs the feature `replica` and a `weed`
//! binary, see `support/replication.rs`).
//! The shm-bench harness runs each component and its baseline alternately,
//! repetition by repetition, and reports the median and range of the
//! per-repetition ratios; `--quick` shrinks the states and the runs.
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::many_single_char_names,
    clippy::too_many_lines,
    clippy::single_range_in_vec_init
)]

use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use shm_bench::{Better, Harness, percentile};

#[cfg(feature = "replica")]
#[path = "support/replication.rs"]
mod replication;
use shm_snapshot::live::{self, Changed, Client, Host};
use shm_snapshot::{FileStorage, SnapshotWriter, restore};

/// Process-local stop flag ordering.
const RELAXED: std::sync::atomic::Ordering = std::sync::atomic::Ordering::Relaxed; // atomics-ok

/// The median of `v` (NaN when empty).
fn median(mut v: Vec<f64>) -> f64 {
    percentile(&mut v, 0.5).unwrap_or(f64::NAN)
}

/// The `p` quantile of durations, in microseconds.
fn pct_us(v: &[Duration], p: f64) -> f64 {
    let mut us: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    percentile(&mut us, p).unwrap_or(f64::NAN)
}

/// A file opened for reading and writing, created or truncated.
fn fresh(path: &std::path::Path) -> std::fs::File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap()
}

/// Fills `v` with a pseudo-random pattern from `seed`.
fn fill(seed: &mut u64, v: &mut [u8]) {
    for c in v.chunks_mut(8) {
        *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        c.copy_from_slice(&seed.to_le_bytes()[..c.len()]);
    }
}

/// The benchmark's scratch directory, removed with everything in it when
/// dropped: on every return and on a panic (an `unwrap` failing mid-run).
struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    fn create() -> ScratchDir {
        ScratchDir::create_in(&std::env::temp_dir())
    }

    fn create_in(parent: &std::path::Path) -> ScratchDir {
        let path = parent.join(format!("shm-snapshot-bench-{}", std::process::id()));
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
    #[cfg(feature = "replica")]
    if args.get(1).is_some_and(|a| a == "--replica-child") {
        replication::child();
        return;
    }
    let mut h = Harness::new("shm-snapshot");
    let dir = ScratchDir::create();
    let size = h.pick(64usize << 20, 8 << 20);
    if h.group("throughput") {
        throughput(&mut h, &dir, size);
    }
    if h.group("live") {
        live_throughput(&mut h, &dir);
    }
    if h.group("bytes") {
        bytes_written(&mut h, &dir, size);
    }
    if h.group("restore") {
        cold_restore(&mut h, &dir, size);
    }
    if h.group("pause") {
        commit_pause(&mut h);
    }
    if h.group("pause-threads") {
        pause_threads(&mut h);
    }
    if h.group("durable") {
        durable_commits(&mut h, &dir);
    }
    if h.group("replication") {
        #[cfg(feature = "replica")]
        replication::run(&h, &dir);
        #[cfg(not(feature = "replica"))]
        {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true"),
                "CI=true: the replication rows need `--features replica`"
            );
            println!("replication: skipped (built without the feature `replica`)");
        }
    }
    h.finish();
}

/// A full-image snapshot (every page dirty) against write + fdatasync of the same bytes.
fn throughput(h: &mut Harness, dir: &std::path::Path, size: usize) {
    let mut seed = 1u64;
    let mut img = vec![0u8; size];
    fill(&mut seed, &mut img);
    let img = RefCell::new(img);
    let mut snap = || {
        let mut img = img.borrow_mut();
        fill(&mut seed, &mut img);
        let f = fresh(&dir.join("t.snap"));
        let mut w = SnapshotWriter::create(FileStorage(f), 4096, size as u64).unwrap();
        let t = Instant::now();
        w.snapshot(&img).unwrap();
        size as f64 / t.elapsed().as_secs_f64() / 1e6
    };
    let mut raw = || {
        let mut f = fresh(&dir.join("raw"));
        let t = Instant::now();
        f.write_all(&img.borrow()).unwrap();
        f.sync_data().unwrap();
        size as f64 / t.elapsed().as_secs_f64() / 1e6
    };
    let r = h.reps(
        "MB/s",
        Better::Higher,
        &mut [("shm-snapshot", &mut snap), ("write+fdatasync", &mut raw)],
    );
    let case = format!("snapshot throughput, {} MiB all dirty", size >> 20);
    h.row(&r, &case, "shm-snapshot", "write+fdatasync");
}

/// Bytes written per snapshot against bytes dirtied (1, 16, 256 pages).
fn bytes_written(h: &mut Harness, dir: &std::path::Path, size: usize) {
    let mut seed = 1u64;
    let mut img = vec![0u8; size];
    fill(&mut seed, &mut img);
    let mut w =
        SnapshotWriter::create(FileStorage(fresh(&dir.join("b.snap"))), 4096, size as u64).unwrap();
    w.snapshot(&img).unwrap();
    for pages in [1usize, 16, 256] {
        let mut written = || {
            for k in 0..pages {
                img[k * 4096 * 7 % size] ^= 1;
            }
            w.snapshot(&img).unwrap();
            w.last_bytes_written as f64
        };
        let r = h.reps(
            "B",
            Better::Lower,
            &mut [
                ("bytes written", &mut written),
                ("bytes dirtied", &mut || (pages * 4096) as f64),
            ],
        );
        let case = format!("bytes written per snapshot, {pages} dirty pages");
        h.row(&r, &case, "bytes written", "bytes dirtied");
    }
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

/// Commits the whole state of `client` (new contents every time, each
/// waited for) until its host's FILE has been compacted twice: a host that
/// has run a while, whose log now appends into a file it recycled
/// (`SnapshotWriter::compact_file`), over blocks written before, as the
/// in-place baseline writes. A new FILE's first two logs grow at every
/// commit larger than a quarter of the reserve instead: the "file growing"
/// rows price that.
fn warm_up(client: &Client, file: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let inode = || std::fs::metadata(file).unwrap().ino();
    let (mut seen, mut compactions) = (inode(), 0);
    let mut pages = vec![0u8; client.work().len()];
    while compactions < 2 {
        let fill = pages[0].wrapping_add(1) | 1;
        pages.fill(fill);
        client.work().write_bytes(0, &pages).unwrap();
        let g = client.commit(&[0..pages.len()]);
        client.wait_durable(g, Duration::from_secs(30)).unwrap();
        if inode() != seen {
            seen = inode();
            compactions += 1;
        }
    }
}

/// A tmpfs directory for the durable rows' CPU-path row (`/dev/shm`), or
/// `None` with a note; under `CI=true` its absence fails the run.
fn tmpfs() -> Option<std::path::PathBuf> {
    let path = std::path::PathBuf::from("/dev/shm");
    let is_tmpfs = rustix::fs::statfs(&path).is_ok_and(|st| st.f_type == libc::TMPFS_MAGIC);
    if is_tmpfs {
        return Some(path);
    }
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true"),
        "/dev/shm is not a tmpfs: no CPU-path rows for the durable commits"
    );
    println!("note: /dev/shm is not a tmpfs: no CPU-path rows for the durable commits");
    None
}

/// Durable-commit latency for k dirty pages against pwrite of the same
/// bytes + fdatasync in the same directory; throughput with 1, 2, 4, 8
/// threads each committing and waiting (against one thread); and the
/// recovery point (what a host crash loses) at the default interval, at
/// interval 0, and with waits.
fn durable_commits(h: &mut Harness, dir: &std::path::Path) {
    let region = 256 * 4096u64;
    // Each repetition's figure is the median of this many commits (fsync times are noisy).
    let runs = h.pick(5, 1);
    let host = HostThread::start(&dir.join("d.snap"), region, Duration::from_secs(1), false);
    let client = std::sync::Arc::new(Client::open(host.memfd.as_fd()).unwrap());
    let default_spin = client.wait_spin();
    let raw = fresh(&dir.join("d.raw"));
    let append_file = fresh(&dir.join("d.append"));
    raw.set_len(region).unwrap();
    // The floor of the design: a thread woken as the host is, writing the
    // bytes the log appends for one commit (page records for the k pages, a
    // commit record with its tag) into a pre-zeroed file as the
    // writer's reserve does, `fdatasync`ing, and waking the committer back.
    // The most one commit here appends: 256 page records and a commit record.
    let largest =
        256 * (shm_snapshot::RECORD_LEN as usize + 4096) + shm_snapshot::COMMIT_LEN as usize;
    let floor_file = fresh(&dir.join("d.floor"));
    let floor_len = 8u64 << 20;
    floor_file.set_len(floor_len).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&floor_file, &vec![0u8; floor_len as usize], 0)
        .unwrap();
    floor_file.sync_all().unwrap();
    let (to_floor, floor_rx) = std::sync::mpsc::channel::<usize>();
    let (floor_tx, from_floor) = std::sync::mpsc::channel::<()>();
    let floor = std::thread::spawn(move || {
        let mut off = 0u64;
        // Allocated once, as the writer keeps its buffer between snapshots:
        // a fresh buffer per write would add its page faults to the floor.
        let bytes = vec![0xa5u8; largest];
        while let Ok(n) = floor_rx.recv() {
            if off + n as u64 > floor_len {
                off = 0;
            }
            std::os::unix::fs::FileExt::write_all_at(&floor_file, &bytes[..n], off).unwrap();
            floor_file.sync_data().unwrap();
            off += n as u64;
            floor_tx.send(()).unwrap();
        }
    });
    // The disk's floor for any log: the bytes one commit appends (rounded
    // up to whole 4096-byte blocks), written with `O_DIRECT` from an
    // aligned buffer into blocks allocated and written before, rotating
    // through 16 MiB as the log moves through its file, then `fdatasync`:
    // no copy into page cache, no checksum, no wake-up. Next to the
    // in-place `pwrite`, it shows what appending costs this disk by itself.
    let direct_len = 16usize << 20;
    let direct_file = fresh(&dir.join("d.direct"));
    std::os::unix::fs::FileExt::write_all_at(&direct_file, &vec![0u8; direct_len], 0).unwrap();
    direct_file.sync_all().unwrap();
    drop(direct_file);
    let direct_file = {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join("d.direct"))
    };
    if let Err(e) = &direct_file {
        println!("note: no O_DIRECT on the benchmark's file system ({e}): no log-floor rows");
    }
    // Room for the largest write in whole blocks, after up to a block of skew.
    let direct_buf = vec![0xa5u8; largest.next_multiple_of(4096) + 4096];
    let direct_skew = direct_buf.as_ptr().align_offset(4096);
    let mut direct_at = 0usize;
    let file_end = || {
        shm_snapshot::inspect(&FileStorage::open(&dir.join("d.snap"), false).unwrap())
            .unwrap()
            .valid_end
    };
    warm_up(&client, &dir.join("d.snap"));
    // The commit's CPU path alone: the same host and client with FILE on
    // tmpfs, where `fdatasync` has nothing to write. Next to the in-place
    // write on disk, it shows how much of the disk's time the commit's own
    // copies, checksums, system calls and wake-ups take.
    let cpu = tmpfs().map(|parent| {
        let dir = ScratchDir::create_in(&parent);
        let host = HostThread::start(&dir.join("d.snap"), region, Duration::from_secs(1), false);
        let client = Client::open(host.memfd.as_fd()).unwrap();
        warm_up(&client, &dir.join("d.snap"));
        (host, client, dir)
    });
    for k in [1usize, 16, 256] {
        let bytes = std::cell::RefCell::new(vec![0x5au8; k * 4096]);
        let r = std::cell::Cell::new(0usize);
        // `spin`: how long the waiter may poll before it parks (zero, the
        // default: the parked path, a cross-core wake-up of the waiter).
        let commit_wait = |client: &Client, spin: Duration| {
            client.set_wait_spin(spin);
            let mut bytes = bytes.borrow_mut();
            let v = (0..runs)
                .map(|_| {
                    r.set(r.get() + 1);
                    // New contents for every page: the writer skips pages
                    // whose checksum equals their durable version's.
                    bytes.fill((r.get() % 251) as u8 + 1);
                    // The pages are dirty when the commit starts, as the
                    // baseline's buffer is filled before its `pwrite`: the
                    // program's own writes are its work, not the commit's.
                    client.work().write_bytes(0, &bytes).unwrap();
                    let t = Instant::now();
                    let g = client.commit(&[0..k * 4096]);
                    client.wait_durable(g, Duration::from_secs(30)).unwrap();
                    t.elapsed().as_secs_f64() * 1e6
                })
                .collect();
            client.set_wait_spin(default_spin);
            median(v)
        };
        let mut ours = || commit_wait(&client, default_spin);
        let mut polled = || commit_wait(&client, Duration::from_millis(1));
        // What one commit of k changed pages appends to the log: a record
        // header and the page for each of them, and a commit record carrying
        // the program's generation as its tag (docs/protocol/shm-snapshot.md),
        // checked against the file once.
        let appended =
            k * (shm_snapshot::RECORD_LEN as usize + 4096) + shm_snapshot::COMMIT_LEN as usize;
        let before = file_end();
        ours();
        let measured = file_end().saturating_sub(before) / runs as u64;
        if measured != appended as u64 {
            println!("note: {k} pages appended {measured} B per commit, not {appended} B");
        }
        let same = vec![0xa5u8; k * 4096];
        let mut base = || {
            let v = (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    std::os::unix::fs::FileExt::write_all_at(&raw, &same, 0).unwrap();
                    raw.sync_data().unwrap();
                    t.elapsed().as_secs_f64() * 1e6
                })
                .collect();
            median(v)
        };
        // An append that grows the file, as the log does once a snapshot
        // outgrows the writer's reserved zeros (more than a quarter of its
        // 1 MiB): `fdatasync` then also commits the new size to the file
        // system's journal. Restarted from an empty file every 64 MiB.
        let grown = vec![0xa5u8; appended];
        let mut append_at = 0u64;
        let mut grow = || {
            let v = (0..runs)
                .map(|_| {
                    if append_at + appended as u64 > 64 << 20 {
                        append_file.set_len(0).unwrap();
                        append_file.sync_all().unwrap();
                        append_at = 0;
                    }
                    let t = Instant::now();
                    std::os::unix::fs::FileExt::write_all_at(&append_file, &grown, append_at)
                        .unwrap();
                    append_file.sync_data().unwrap();
                    append_at += appended as u64;
                    t.elapsed().as_secs_f64() * 1e6
                })
                .collect();
            median(v)
        };
        let mut woken = || {
            let v = (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    to_floor.send(appended).unwrap();
                    from_floor.recv().unwrap();
                    t.elapsed().as_secs_f64() * 1e6
                })
                .collect();
            median(v)
        };
        let direct_n = appended.next_multiple_of(4096);
        let mut direct = |file: &std::fs::File| {
            let bytes = &direct_buf[direct_skew..direct_skew + direct_n];
            let v = (0..runs)
                .map(|_| {
                    if direct_at + direct_n > direct_len {
                        direct_at = 0;
                    }
                    let t = Instant::now();
                    std::os::unix::fs::FileExt::write_all_at(file, bytes, direct_at as u64)
                        .unwrap();
                    file.sync_data().unwrap();
                    direct_at += direct_n;
                    t.elapsed().as_secs_f64() * 1e6
                })
                .collect();
            median(v)
        };
        let mut cases: Vec<(&str, &mut dyn FnMut() -> f64)> = vec![
            ("commit + wait_durable", &mut ours),
            ("commit + wait_durable, polling", &mut polled),
            ("pwrite + fdatasync", &mut base),
            ("woken thread: log bytes + fdatasync", &mut woken),
            ("pwrite appending + fdatasync", &mut grow),
        ];
        let mut cpu_measure;
        if let Some((_, client, _)) = &cpu {
            cpu_measure = || commit_wait(client, default_spin);
            cases.push(("commit + wait_durable, FILE on tmpfs", &mut cpu_measure));
        }
        let mut direct_measure;
        if let Ok(file) = &direct_file {
            direct_measure = || direct(file);
            cases.push((
                "O_DIRECT log bytes, rotating + fdatasync",
                &mut direct_measure,
            ));
        }
        let reps = h.reps("us", Better::Lower, &mut cases);
        let case = format!("durable commit latency, {k} dirty pages");
        h.row(&reps, &case, "commit + wait_durable", "pwrite + fdatasync");
        let case =
            format!("durable commit latency, {k} dirty pages, the waiter polling up to 1 ms");
        h.row(
            &reps,
            &case,
            "commit + wait_durable, polling",
            "pwrite + fdatasync",
        );
        let case = format!("durable commit latency, {k} dirty pages ({appended} B appended)");
        h.row(
            &reps,
            &case,
            "commit + wait_durable",
            "woken thread: log bytes + fdatasync",
        );
        let case = format!("durable commit latency, {k} dirty pages, the file growing");
        h.row(
            &reps,
            &case,
            "commit + wait_durable",
            "pwrite appending + fdatasync",
        );
        if cpu.is_some() {
            let case = format!(
                "durable commit latency, {k} dirty pages, its CPU path alone (FILE on tmpfs)"
            );
            h.row(
                &reps,
                &case,
                "commit + wait_durable, FILE on tmpfs",
                "pwrite + fdatasync",
            );
        }
        if direct_file.is_ok() {
            let case = format!(
                "log floor, {k} pages: the log bytes with O_DIRECT into a rotating 16 MiB file"
            );
            h.row(
                &reps,
                &case,
                "O_DIRECT log bytes, rotating + fdatasync",
                "pwrite + fdatasync",
            );
            let case = format!("durable commit latency, {k} dirty pages, against the log floor");
            h.row(
                &reps,
                &case,
                "commit + wait_durable",
                "O_DIRECT log bytes, rotating + fdatasync",
            );
        }
    }
    drop(to_floor);
    floor.join().unwrap();
    if let Some((host, client, dir)) = cpu {
        drop(client);
        host.stop();
        drop(dir);
    }
    let span = h.pick(Duration::from_secs(2), Duration::from_millis(300));
    let rate = |threads: usize| {
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
        done.load(RELAXED) as f64 / span.as_secs_f64()
    };
    let r = h.reps(
        "commits/s",
        Better::Higher,
        &mut [
            ("1 thread", &mut || rate(1)),
            ("2 threads", &mut || rate(2)),
            ("4 threads", &mut || rate(4)),
            ("8 threads", &mut || rate(8)),
        ],
    );
    let case = "durable commits/s, each thread committing one page and waiting";
    for threads in ["2 threads", "4 threads", "8 threads"] {
        h.row(&r, case, threads, "1 thread");
    }
    drop(client);
    host.stop();
    recovery_point(dir, region, span);
}

/// What a host crash loses: committing one page every 100 us, the lag of
/// durable generations behind acknowledged ones, sampled every 5 ms.
fn recovery_point(dir: &std::path::Path, region: u64, span: Duration) {
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
/// and touching every page (warm page cache for both).
fn cold_restore(h: &mut Harness, dir: &std::path::Path, size: usize) {
    let p = dir.join("r.snap");
    let mut w = SnapshotWriter::create(FileStorage(fresh(&p)), 4096, size as u64).unwrap();
    let mut img: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8 + 1).collect();
    w.snapshot(&img).unwrap();
    for g in 0..8usize {
        for k in 0..64 {
            img[(g * 977 + k * 4099) * 4096 % size] ^= 1;
        }
        w.snapshot(&img).unwrap();
    }
    let mut ours = || {
        let t = Instant::now();
        let mut out = vec![0u8; size];
        let f = std::fs::File::open(&p).unwrap();
        restore(&FileStorage(f), |off, b| {
            out[off as usize..off as usize + b.len()].copy_from_slice(b);
        })
        .unwrap();
        let el = t.elapsed().as_secs_f64() * 1e3;
        assert!(out == img, "restore is wrong");
        el
    };
    let mut base = || {
        let t = Instant::now();
        let v = std::fs::read(&p).unwrap();
        let mut sum = 0u8;
        for c in v.chunks(4096) {
            sum ^= c[0];
        }
        std::hint::black_box(sum);
        t.elapsed().as_secs_f64() * 1e3
    };
    let r = h.reps(
        "ms",
        Better::Lower,
        &mut [("restore", &mut ours), ("read + touch", &mut base)],
    );
    let case = format!(
        "cold restore, {} MiB state, {:.1} MiB file, warm page cache",
        size >> 20,
        w.len() as f64 / f64::from(1u32 << 20)
    );
    h.row(&r, &case, "restore", "read + touch");
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
/// number of bytes to a file in the same 1 MiB writes and `fdatasync`.
fn live_throughput(h: &mut Harness, dir: &std::path::Path) {
    const PAGE: usize = 4096;
    let region = h.pick(256usize << 20, 32 << 20);
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
    let mut w = SnapshotWriter::create(
        FileStorage(fresh(&dir.join("live.snap"))),
        4096,
        region as u64,
    )
    .unwrap();
    let mut raw = fresh(&dir.join("live.raw"));
    let k = pages / 10;
    let payload = vec![7u8; k * PAGE];
    let expect = k * (PAGE + 32);
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    let (mut since, mut round) = (0u64, 0u64);
    let mut ours = || {
        round += 1;
        let work = client.work();
        let mut ranges = Vec::with_capacity(k);
        for _ in 0..k {
            let rng = next();
            let p = (rng as usize) % pages;
            for word in 0..PAGE / 8 {
                work.write(p * PAGE + word * 8, &(rng ^ round ^ word as u64))
                    .unwrap();
            }
            ranges.push(p * PAGE..p * PAGE + PAGE);
        }
        client.commit(&ranges);
        let t = Instant::now();
        let mut tx = w.begin();
        let r = host.copy_changed(since, |p, b| tx.page(p, b).map(drop));
        let Ok(Changed::Complete(g)) = r else {
            panic!("no concurrent commit, yet {r:?}")
        };
        tx.commit().unwrap();
        let el = t.elapsed().as_secs_f64();
        since = g;
        w.last_bytes_written as f64 / el / 1e6
    };
    // The same write calls as the writer makes: 1 MiB each.
    let mut base = || {
        let t = Instant::now();
        for c in payload[..expect.min(payload.len())].chunks(1 << 20) {
            raw.write_all(c).unwrap();
        }
        raw.sync_data().unwrap();
        expect as f64 / t.elapsed().as_secs_f64() / 1e6
    };
    let r = h.reps(
        "MB/s",
        Better::Higher,
        &mut [
            ("host streaming changed pages", &mut ours),
            ("append + fdatasync", &mut base),
        ],
    );
    let case = format!(
        "live snapshot throughput, {} MiB state, 10 % dirty",
        region >> 20
    );
    h.row(
        &r,
        &case,
        "host streaming changed pages",
        "append + fdatasync",
    );
}

/// The figures of one commit-pause repetition, in this order.
const PAUSE: [&str; 9] = [
    "tracked commit p50",
    "tracked commit p99",
    "named-range commit p50",
    "named-range commit p99",
    "memcpy of the pages p50",
    "memcpy of the pages p99",
    "busy loop of the tracked median p99",
    "first write to a page per epoch",
    "second write to a page",
];

/// Client pause per commit at 1 MiB, 100 MiB and 1 GiB of state while a host
/// process copies the committed state nonstop: the tracked commit (scan +
/// copy), the named-range commit (copy) and a plain memcpy of the same dirty
/// pages between two pre-faulted buffers, interleaved round by round. A busy
/// loop as long as the median tracked commit, timed the same way, shows the
/// machine's scheduling tail. Also the program-side cost of tracking: the
/// first write to a page in an epoch (a write-protect fault) against a second
/// write to it.
/// A xorshift64 generator from `seed` (non-zero): page picks, not security.
fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// A snapshot memfd of `region` bytes and its client, every page of the
/// state written and committed once (so that none is a fresh zero page).
fn populated(region: u64) -> (std::os::fd::OwnedFd, Client) {
    let fd = shm_segment::memfd::create(
        "bench",
        live::memfd_size(region),
        shm_segment::memfd::FIXED_SIZE,
    )
    .unwrap();
    live::initialize(fd.as_fd(), region, 0, |_| {}).unwrap();
    let client = Client::open(fd.as_fd()).unwrap();
    let work = client.work();
    for p in 0..region as usize / 4096 {
        work.write(p * 4096, &(p as u64 + 1)).unwrap();
    }
    client.commit(&[0..region as usize]);
    (fd, client)
}

fn commit_pause(h: &mut Harness) {
    const PAGE: usize = 4096;
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    let regions: &[u64] = h.pick(&[1, 100, 1024], &[1, 16]);
    for &mib in regions {
        let region = mib << 20;
        let pages = region as usize / PAGE;
        let (fd, mut client) = populated(region);
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
        // The host's copying is part of the measure, not foreign load.
        h.watch_child(host.id());
        let work = client.work();
        // Pre-faulted, reused buffers for the memcpy baseline.
        let src = vec![1u8; region as usize];
        let mut dst = vec![2u8; region as usize];
        let mut order: Vec<usize> = (0..pages).collect();
        println!(
            "commit pause, {mib} MiB state (host copying nonstop; track() took {:.1} ms):",
            arm.as_secs_f64() * 1e3
        );
        for (label, k) in [
            ("0 pages", 0usize),
            ("1 page", 1),
            ("0.1 %", (pages / 1000).max(1)),
            ("1 %", (pages / 100).max(1)),
            ("100 %", pages),
        ] {
            let rounds = if k == pages {
                h.pick(8, 2)
            } else if k >= pages / 100 {
                h.pick(200, 20)
            } else {
                h.pick(1000u64, 100)
            };
            let mut run = |_rep: usize| {
                let (mut tracked, mut named, mut copy) = (Vec::new(), Vec::new(), Vec::new());
                let (mut first, mut second) = (Duration::ZERO, Duration::ZERO);
                let mut ranges = Vec::with_capacity(k);
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
                        dst[p * PAGE..p * PAGE + PAGE]
                            .copy_from_slice(&src[p * PAGE..p * PAGE + PAGE]);
                    }
                    copy.push(t.elapsed());
                    std::hint::black_box(&mut dst);
                }
                let t50 = Duration::from_secs_f64(pct_us(&tracked, 0.5) / 1e6);
                let spins: Vec<Duration> = (0..rounds)
                    .map(|_| {
                        let t = Instant::now();
                        while t.elapsed() < t50 {
                            std::hint::spin_loop();
                        }
                        t.elapsed()
                    })
                    .collect();
                let n = (k.max(1) as u64 * rounds) as f64;
                vec![
                    pct_us(&tracked, 0.5),
                    pct_us(&tracked, 0.99),
                    pct_us(&named, 0.5),
                    pct_us(&named, 0.99),
                    pct_us(&copy, 0.5),
                    pct_us(&copy, 0.99),
                    pct_us(&spins, 0.99),
                    first.as_secs_f64() * 1e6 / n,
                    second.as_secs_f64() * 1e6 / n,
                ]
            };
            let r = h.reps_joint("us", Better::Lower, &PAUSE, &mut run);
            let case = format!(
                "commit pause, {mib} MiB state, {label} dirty ({k} pages, {rounds} commits/rep)"
            );
            h.row(&r, &case, PAUSE[0], PAUSE[2]);
            h.row(&r, &case, PAUSE[1], PAUSE[3]);
            h.row(&r, &case, PAUSE[1], PAUSE[6]);
            if k > 0 {
                h.row(&r, &case, PAUSE[0], PAUSE[4]);
                h.row(&r, &case, PAUSE[1], PAUSE[5]);
                h.row(&r, &case, PAUSE[7], PAUSE[8]);
            }
        }
        h.forget_child(host.id());
        drop(host.stdin.take());
        let out = host.wait_with_output().unwrap();
        println!(
            "  (the host process completed {} consistent copies meanwhile)",
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
}

/// The figures of one copy-threads repetition, in this order.
const THREADS: [&str; 9] = [
    "tracked commit, copy on every core p50",
    "tracked commit, copy on every core p99",
    "tracked commit, copy on one thread p50",
    "tracked commit, copy on one thread p99",
    "scan + memcpy / cores p50",
    "scan + memcpy / cores p99",
    "scan alone p50",
    "scan + memcpy on every core p50",
    "scan + memcpy on every core p99",
];

/// A `memcpy` of scattered pages split over the cores: the caller and
/// helper threads started once, each owning the destination of a contiguous
/// part of the region (so the copy is safe code): what copying on every core
/// can reach on this machine (memory bandwidth shared by the cores, and one
/// wake-up per helper per copy), without any of the commit's protocol.
struct CopyPool {
    src: std::sync::Arc<Vec<u8>>,
    /// The caller's part of the destination (part 0).
    mine: Vec<u8>,
    /// Pages per part.
    per: usize,
    jobs: Vec<std::sync::mpsc::Sender<Vec<usize>>>,
    done: std::sync::mpsc::Receiver<()>,
}

impl CopyPool {
    const PAGE: usize = 4096;

    fn new(src: std::sync::Arc<Vec<u8>>, parts: usize) -> Self {
        let pages = src.len() / Self::PAGE;
        let per = pages.div_ceil(parts);
        let (done_tx, done) = std::sync::mpsc::channel();
        let jobs = (1..parts)
            .map(|part| {
                let (tx, rx) = std::sync::mpsc::channel::<Vec<usize>>();
                let (done_tx, src) = (done_tx.clone(), src.clone());
                std::thread::spawn(move || {
                    let base = part * per;
                    let mut dst = vec![2u8; per * Self::PAGE];
                    while let Ok(pages) = rx.recv() {
                        Self::copy_part(&src, &mut dst, base, &pages);
                        done_tx.send(()).unwrap();
                    }
                });
                tx
            })
            .collect();
        Self {
            mine: vec![2u8; per * Self::PAGE],
            src,
            per,
            jobs,
            done,
        }
    }

    fn copy_part(src: &[u8], dst: &mut [u8], base: usize, pages: &[usize]) {
        const PAGE: usize = CopyPool::PAGE;
        for &p in pages {
            let o = (p - base) * PAGE;
            dst[o..o + PAGE].copy_from_slice(&src[p * PAGE..p * PAGE + PAGE]);
        }
        std::hint::black_box(dst);
    }

    /// Copies `pages`, each by the thread owning its part.
    fn copy(&mut self, pages: &[usize]) {
        let mut parts = vec![Vec::new(); self.jobs.len() + 1];
        for &p in pages {
            parts[p / self.per].push(p);
        }
        let mut parts = parts.into_iter();
        let mine = parts.next().unwrap_or_default();
        let mut sent = 0;
        for (tx, part) in self.jobs.iter().zip(parts) {
            if !part.is_empty() {
                tx.send(part).unwrap();
                sent += 1;
            }
        }
        Self::copy_part(&self.src, &mut self.mine, 0, &mine);
        for _ in 0..sent {
            self.done.recv().unwrap();
        }
    }
}

/// The tracked commit's pause with its copy spread over every core
/// (`Client::set_copy_threads`, default) against the same commit copied on
/// one thread, and against the ideal of the same round: the scan (a tracked
/// commit of nothing, timed right after) plus a `memcpy` of the same pages
/// between pre-faulted buffers divided by the number of cores; and against
/// the scan plus that copy really spread over the cores ([`CopyPool`]),
/// which shows what the machine allows. No host runs meanwhile (it would
/// take a core); random dirty pages of a populated state.
fn pause_threads(h: &mut Harness) {
    const PAGE: usize = 4096;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    let regions: &[u64] = h.pick(&[64, 256, 1024], &[64]);
    for &mib in regions {
        let region = mib << 20;
        let pages = region as usize / PAGE;
        let (_fd, mut client) = populated(region);
        if let Err(e) = client.track() {
            println!(
                "commit pause on {cores} cores, {mib} MiB: tracking unavailable ({e}); skipped"
            );
            continue;
        }
        let src = std::sync::Arc::new(vec![1u8; region as usize]);
        let mut dst = vec![2u8; region as usize];
        let mut order: Vec<usize> = (0..pages).collect();
        let mut pool = CopyPool::new(src.clone(), cores);
        println!(
            "commit pause on {cores} cores ({} copy threads), {mib} MiB state, no host:",
            client.copy_threads()
        );
        for (label, k) in [
            ("0.1 %", (pages / 1000).max(1)),
            ("1 %", (pages / 100).max(1)),
            ("10 %", (pages / 10).max(1)),
        ] {
            let rounds = match k * 1000 / pages {
                0..=1 => h.pick(200u64, 50),
                2..=10 => h.pick(100, 20),
                _ => h.pick(20, 8),
            };
            let mut pick = |order: &mut Vec<usize>| {
                for j in 0..k {
                    let r = j + (next() as usize) % (pages - j);
                    order.swap(j, r);
                }
            };
            let mut run = |_rep: usize| {
                let (mut many, mut one, mut ideal, mut scans, mut parallel) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for i in 0..rounds {
                    for (threads, out) in [(cores, &mut many), (1, &mut one)] {
                        pick(&mut order);
                        for &p in &order[..k] {
                            client.work().write(p * PAGE + 8, &i).unwrap();
                        }
                        // One thread: no part is ever worth a helper.
                        client.set_copy_part_min(if threads == 1 { usize::MAX } else { 256 << 10 });
                        let t = Instant::now();
                        let c = client.commit_tracked().unwrap();
                        out.push(t.elapsed());
                        assert_eq!(c.bytes, (k * PAGE) as u64, "tracked commit missed pages");
                    }
                    let t = Instant::now();
                    client.commit_tracked().unwrap();
                    let scan = t.elapsed();
                    let t = Instant::now();
                    for &p in &order[..k] {
                        dst[p * PAGE..p * PAGE + PAGE]
                            .copy_from_slice(&src[p * PAGE..p * PAGE + PAGE]);
                    }
                    let copy = t.elapsed();
                    std::hint::black_box(&mut dst);
                    scans.push(scan);
                    ideal.push(scan + copy / cores as u32);
                }
                // The copy spread over the cores, after the commits: waking
                // the pool's threads right before a commit would slow that
                // commit (the scheduler moves threads about), so each of
                // these copies takes a fresh pick of as many pages, added to
                // the scan of a round above.
                for &scan in &scans {
                    pick(&mut order);
                    let t = Instant::now();
                    pool.copy(&order[..k]);
                    parallel.push(scan + t.elapsed());
                }
                // One untimed commit: the next repetition starts as a round does.
                client.commit_tracked().unwrap();
                vec![
                    pct_us(&many, 0.5),
                    pct_us(&many, 0.99),
                    pct_us(&one, 0.5),
                    pct_us(&one, 0.99),
                    pct_us(&ideal, 0.5),
                    pct_us(&ideal, 0.99),
                    pct_us(&scans, 0.5),
                    pct_us(&parallel, 0.5),
                    pct_us(&parallel, 0.99),
                ]
            };
            let r = h.reps_joint("us", Better::Lower, &THREADS, &mut run);
            let case = format!(
                "commit pause on {cores} cores, {mib} MiB state, {label} dirty ({k} pages, {rounds} commits/rep)"
            );
            h.row(&r, &case, THREADS[0], THREADS[4]);
            h.row(&r, &case, THREADS[1], THREADS[5]);
            h.row(&r, &case, THREADS[0], THREADS[2]);
            h.row(&r, &case, THREADS[1], THREADS[3]);
            h.row(&r, &case, THREADS[6], THREADS[4]);
            // What bounds the first two rows: the same copy really spread
            // over the cores, against the ideal of a perfect split.
            h.row(&r, &case, THREADS[0], THREADS[7]);
            h.row(&r, &case, THREADS[1], THREADS[8]);
            h.row(&r, &case, THREADS[7], THREADS[4]);
        }
    }
}
