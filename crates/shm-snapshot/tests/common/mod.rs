//! Helpers shared by the shm-snapshot tests.
// Each test binary uses a part of these.
#![allow(dead_code)]

#[cfg(feature = "shm-restore")]
pub(crate) mod cli;
#[cfg(feature = "shm-restore")]
pub(crate) mod replica;

use std::os::fd::{AsFd, OwnedFd};

use shm_snapshot::live;
use shm_snapshot::{RestoreOptions, Restored, SnapshotError, Storage, restore_with};

/// Restores `s` with `opts` into a vector of the region's size.
///
/// # Errors
/// As [`restore_with`].
pub(crate) fn restore_opts<S: Storage>(
    s: &S,
    opts: RestoreOptions,
) -> Result<(Vec<u8>, Restored), SnapshotError> {
    let mut v = Vec::new();
    let r = restore_with(
        s,
        opts,
        |o, b| {
            let o = usize::try_from(o).unwrap();
            if v.len() < o + b.len() {
                v.resize(o + b.len(), 0);
            }
            v[o..o + b.len()].copy_from_slice(b);
        },
        |_, _| {},
    )?;
    v.resize(usize::try_from(r.info.region_size).unwrap(), 0);
    Ok((v, r))
}

/// The newest committed state of `s` and its generation.
///
/// # Errors
/// As [`shm_snapshot::restore`].
pub(crate) fn restore_vec<S: Storage>(s: &S) -> Result<(Vec<u8>, u64), SnapshotError> {
    restore_opts(s, RestoreOptions::default()).map(|(v, r)| (v, r.info.generation))
}

/// A memfd named `name` holding a fresh live region of `region` bytes at
/// program generation `generation`.
pub(crate) fn live_memfd(name: &str, region: u64, generation: u64) -> OwnedFd {
    let fd = shm_segment::memfd::create(
        name,
        live::memfd_size(region),
        shm_segment::memfd::FIXED_SIZE,
    )
    .unwrap();
    live::initialize(fd.as_fd(), region, generation, |_| {}).unwrap();
    fd
}

/// The program side of [`kill_client_mid_commit`]: a client of the memfd
/// at `STATE_PATH`, copying its commits on `COPY_THREADS` threads.
#[cfg(feature = "fault-injection")]
pub(crate) fn role_client() -> live::Client {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(std::env::var("STATE_PATH").unwrap())
        .unwrap();
    let mut c = live::Client::open(f.as_fd()).unwrap();
    c.set_copy_threads(std::env::var("COPY_THREADS").unwrap().parse().unwrap());
    c
}

/// Runs this test binary as the role `client` of the test fn `test` on
/// `memfd` (see [`role_client`]) with `threads` copy threads, and the crash
/// point `client.mid_commit` armed for its `nth` commit; asserts that the
/// client SIGKILLed itself there.
#[cfg(feature = "fault-injection")]
pub(crate) fn kill_client_mid_commit(test: &str, memfd: &OwnedFd, threads: usize, nth: u64) {
    let path = format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        std::os::fd::AsRawFd::as_raw_fd(memfd)
    );
    let out = shm_testkit::role_command(test, "client")
        .env("STATE_PATH", &path)
        .env("COPY_THREADS", threads.to_string())
        .env("SHM_CRASH_AT", format!("client.mid_commit@{nth}"))
        .output()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(9),
        "crash point {nth} did not SIGKILL the client ({threads} threads)"
    );
}
