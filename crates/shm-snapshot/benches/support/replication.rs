//! Replication figures against a real S3-compatible store (`SeaweedFS`
//! through `shm_testkit::s3`), next to baselines measured in the same run:
//! bytes uploaded per byte dirtied, the steady-state replication lag at a
//! fixed dirty rate (against the durable lag of the same commits), and a
//! restore from the store against a plain parallel GET of the same objects.
//!
//! The store's client reads its settings from `AWS_*` variables, so the
//! figures are taken in a child process of the bench (`--replica-child`)
//! that gets them at spawn; it emits its rows through its own harness
//! (same `OUTLIVE_BENCH_JSON`) and counts the server's CPU time as its own.
//! Without `weed` the rows are skipped with a note, except under `CI=true`.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use shm_bench::{Better, Harness};
use shm_snapshot::host::{HostConfig, SnapshotHost};
use shm_snapshot::live::Client;
use shm_snapshot::replica::{self, ReplicaConfig, Target};

/// Environment variable naming the store's server process for the load gate.
const WEED_PID: &str = "OUTLIVE_BENCH_WEED_PID";
/// Environment variable carrying the replica URL to the child.
const URL: &str = "OUTLIVE_BENCH_REPLICA_URL";
/// State size of the replicated host.
const REGION: u64 = 256 << 10;

/// The parent's side: starts the store and runs the child, which emits the
/// rows.
pub(crate) fn run(h: &Harness, dir: &Path) {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let Some(s3) = shm_testkit::s3::S3Server::start("bench") else {
        assert!(!ci, "CI=true: the replication rows need the S3 test server");
        println!("replication: skipped (no S3 test server: install weed, see shm_testkit::s3)");
        return;
    };
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    s3.configure(&mut cmd);
    cmd.arg("--replica-child")
        .args(h.quick().then_some("--quick"))
        .env(URL, s3.url("bench"))
        .env("TMPDIR", dir)
        .env(WEED_PID, s3.pid().unwrap_or(0).to_string());
    let status = cmd.status().unwrap();
    assert!(status.success(), "the replication bench child failed");
}

/// The child: every replication figure, as rows of its own harness.
pub(crate) fn child() {
    tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_writer(std::io::stderr)
        .init();
    let mut h = Harness::new("shm-snapshot");
    if let Some(pid) = std::env::var(WEED_PID).ok().and_then(|p| p.parse().ok()) {
        h.watch_child(pid);
    }
    let url = std::env::var(URL).unwrap();
    let dir = std::env::temp_dir().join(format!("replication-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    upload_ratio(&mut h, &dir, &format!("{url}/bytes"));
    let lag_url = format!("{url}/lag");
    lag(&mut h, &dir, &lag_url);
    restore_time(&mut h, &dir, &lag_url);
    let _ = std::fs::remove_dir_all(&dir);
    h.finish();
}

/// A host replicating to `url`, FILE compacted never (one base per epoch).
fn host(dir: &Path, name: &str, url: &str, continuous: bool) -> SnapshotHost {
    let file = dir.join(name);
    let _ = std::fs::remove_file(&file);
    let config = HostConfig {
        create: true,
        size: REGION,
        compact_at: 0.0,
        continuous,
        replica: Some(ReplicaConfig::new(url)),
        ..HostConfig::new(file)
    };
    SnapshotHost::open(config, None).unwrap()
}

/// Bytes uploaded (segments, not the base) per byte dirtied: commits of `k`
/// pages, each snapshotted and shipped alone.
fn upload_ratio(h: &mut Harness, dir: &Path, url: &str) {
    let commits = h.pick(50, 10);
    for k in [1usize, 16] {
        let mut host = host(dir, &format!("bytes{k}.snap"), &format!("{url}{k}"), false);
        let client = Client::open(host.memfd()).unwrap();
        let mut n = 0u64;
        let mut run = |_rep: usize| {
            let before = host.replicated().unwrap();
            for _ in 0..commits {
                n += 1;
                let at = usize::try_from(n).unwrap() * k * 4096 % (REGION as usize - k * 4096);
                let at = at / 4096 * 4096;
                client
                    .work()
                    .write_bytes(at, &vec![n as u8; k * 4096])
                    .unwrap();
                let g = client.commit(std::slice::from_ref(&(at..at + k * 4096)));
                host.snapshot_now().unwrap();
                let deadline = Instant::now() + Duration::from_secs(60);
                while host.replicated_generation() < g {
                    assert!(
                        Instant::now() < deadline,
                        "generation {g} not replicated in 60 s: {:?}",
                        host.replicated()
                    );
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            let after = host.replicated().unwrap();
            let segments = (after.bytes - before.bytes) as f64;
            // The first call (warm-up) also uploads the epoch's base.
            let base = if after.bases > before.bases {
                REGION as f64 + 4096.0
            } else {
                0.0
            };
            vec![(segments - base).max(0.0), (commits * k * 4096) as f64]
        };
        let reps = h.reps_joint(
            "bytes",
            Better::Lower,
            &["bytes uploaded (segments)", "bytes dirtied"],
            &mut run,
        );
        let case =
            format!("replication, bytes uploaded per byte dirtied, {k} dirty pages per commit");
        h.row(&reps, &case, "bytes uploaded (segments)", "bytes dirtied");
        drop(client);
        let _ = host.finish();
    }
}

/// Steady-state lag at a fixed dirty rate (one commit of 4 pages every
/// 5 ms, a continuous host): the median time from a commit until the
/// store has it, and the mean number of generations the store is behind,
/// against the same figures for FILE (durable).
fn lag(h: &mut Harness, dir: &Path, url: &str) {
    let span = h.pick(Duration::from_secs(3), Duration::from_millis(600));
    let mut host = host(dir, "lag.snap", url, true);
    let memfd = host.memfd().try_clone_to_owned().unwrap();
    let waker = host.waker();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)); // atomics-ok: process-local stop flag
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        use shm_snapshot::host::Work;
        while !s.load(super::RELAXED) {
            match host.wait_for_work(Instant::now() + Duration::from_millis(100)) {
                Work::Waiters | Work::Commits => host.serve_waiters(),
                Work::Interrupted => {}
                _ => host.tick(),
            }
        }
        let _ = host.finish();
    });
    let client = Client::open(memfd.as_fd()).unwrap();
    let mut run = |_rep: usize| measure_lag(&client, span)[..2].to_vec();
    let reps = h.reps_joint(
        "ms",
        Better::Lower,
        &["commit to replicated", "commit to durable"],
        &mut run,
    );
    let case = "replication lag at 200 commits/s of 4 pages, median time";
    h.row(&reps, case, "commit to replicated", "commit to durable");
    let mut run = |_rep: usize| measure_lag(&client, span)[2..].to_vec();
    let reps = h.reps_joint(
        "generations",
        Better::Lower,
        &["behind in the store", "behind in FILE"],
        &mut run,
    );
    let case = "replication lag at 200 commits/s of 4 pages, mean generations";
    h.row(&reps, case, "behind in the store", "behind in FILE");
    stop.store(true, super::RELAXED);
    waker.wake();
    thread.join().unwrap();
}

/// One repetition of [`lag`]: commits at the fixed rate for `span`,
/// sampling the published durable and replicated words every 200 us; the
/// median times from commit to replicated and to durable (ms), and the
/// mean generations the store and FILE are behind the program.
fn measure_lag(client: &Client, span: Duration) -> Vec<f64> {
    let start = Instant::now();
    let mut committed: BTreeMap<u64, Instant> = BTreeMap::new();
    let (mut to_durable, mut to_replicated) = (Vec::new(), Vec::new());
    let (mut behind_file, mut behind_store) = (Vec::new(), Vec::new());
    let (mut seen_d, mut seen_r) = (client.durable_generation(), client.replicated_generation());
    let mut next = start;
    let mut n = 0usize;
    while start.elapsed() < span {
        let now = Instant::now();
        if now >= next {
            n += 1;
            let at = n % (REGION as usize / (4 * 4096)) * 4 * 4096;
            client.work().write_bytes(at, &[n as u8; 4 * 4096]).unwrap();
            committed.insert(
                client.commit(std::slice::from_ref(&(at..at + 4 * 4096))),
                now,
            );
            next += Duration::from_millis(5);
        }
        let (d, r, g) = (
            client.durable_generation(),
            client.replicated_generation(),
            client.generation(),
        );
        let now = Instant::now();
        if d > seen_d {
            for (_, t) in committed.range(seen_d + 1..=d) {
                to_durable.push((now - *t).as_secs_f64() * 1e3);
            }
        }
        if r > seen_r {
            for (_, t) in committed.range(seen_r + 1..=r) {
                to_replicated.push((now - *t).as_secs_f64() * 1e3);
            }
        }
        (seen_d, seen_r) = (seen_d.max(d), seen_r.max(r));
        behind_file.push(g.saturating_sub(d) as f64);
        behind_store.push(g.saturating_sub(r) as f64);
        std::thread::sleep(Duration::from_micros(200));
    }
    vec![
        super::median(to_replicated),
        super::median(to_durable),
        mean(&behind_store),
        mean(&behind_file),
    ]
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// A restore of the lag run's epoch (a base and its segments) from the
/// store against a plain GET of the same objects, 8 at a time, into a file.
fn restore_time(h: &mut Harness, dir: &Path, url: &str) {
    let objects = plain_objects(url);
    let dest = dir.join("restored.snap");
    let plain = dir.join("plain.bin");
    let mut ours = || {
        let t = Instant::now();
        let got = replica::restore(url, &dest, Target::Newest).unwrap();
        assert!(got.skipped.is_empty(), "{:?}", got.skipped);
        t.elapsed().as_secs_f64() * 1e3
    };
    let mut base = || {
        let t = Instant::now();
        plain_get(&objects, &plain);
        t.elapsed().as_secs_f64() * 1e3
    };
    let reps = h.reps(
        "ms",
        Better::Lower,
        &mut [
            ("restore --from the store", &mut ours),
            ("parallel GET of its objects", &mut base),
        ],
    );
    let case = format!("restore from the store, {} objects", objects.1.len());
    h.row(
        &reps,
        &case,
        "restore --from the store",
        "parallel GET of its objects",
    );
}

/// The store and the keys of the newest epoch's objects (the ones a
/// restore of the newest state reads: a base and every segment).
type Objects = (
    std::sync::Arc<dyn object_store::ObjectStore>,
    Vec<(object_store::path::Path, u64)>,
);

fn plain_objects(url: &str) -> Objects {
    let rest = url.strip_prefix("s3://").unwrap();
    let (bucket, prefix) = rest.split_once('/').unwrap();
    let s3 = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .unwrap();
    let epochs = replica::list(url).unwrap();
    let e = epochs.last().unwrap();
    let base = e.bases.last().unwrap();
    let keys = std::iter::once(base)
        .chain(e.segments.iter().filter(|s| s.first > base.last))
        .map(|o| {
            (
                object_store::path::Path::from(format!("{prefix}/{}", o.key)),
                o.size,
            )
        })
        .collect();
    (std::sync::Arc::new(s3), keys)
}

/// GETs every object, 8 at a time, each written at its offset into `dest`.
fn plain_get(objects: &Objects, dest: &Path) {
    use futures::StreamExt;
    use object_store::ObjectStoreExt;
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::create(dest).unwrap();
    let mut at = 0;
    let jobs: Vec<_> = objects
        .1
        .iter()
        .map(|(k, size)| {
            let start = at;
            at += size;
            (k, start)
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = &objects.0;
    let file = &file;
    rt.block_on(
        futures::stream::iter(jobs)
            .map(|(k, start)| async move {
                let bytes = store.get(k).await.unwrap().bytes().await.unwrap();
                file.write_all_at(&bytes, start).unwrap();
            })
            .buffered(8)
            .collect::<Vec<()>>(),
    );
    file.sync_all().unwrap();
}
