//! outlive next to its peers, measured in the same run as ratios.
//!
//! `cargo run --release --manifest-path crates/shm-bench-peers/Cargo.toml -- [--quick] [GROUP...]`
//! (groups: `stream`, `latency`, `board`; `ci/bench.sh` runs it with the other benches).
//!
//! - shm-ring next to iceoryx2 publish-subscribe, 8 B to 1 MiB messages:
//!   streaming (messages per second) and one-way busy-poll latency, each
//!   with copies (shm-ring `try_send_slice` / `try_recv_slice`; iceoryx2
//!   `write_from_slice` into a loaned sample) and written in place (shm-ring
//!   `send_trusted`; iceoryx2 `write_from_fn` into the loan). Both
//!   receivers copy each message out once.
//! - shm-mailbox next to iceoryx2's blackboard and cloudflare's mmap-sync:
//!   64 B, 4 KiB and 64 KiB values, 1, 2 and 4 readers reading nonstop while
//!   one writer publishes nonstop; reads per second per reader and the
//!   writer's publishes per second (mmap-sync's writer waits for readers of
//!   the copy it is about to overwrite).
//!
//! Producer and consumer threads are pinned to CPUs 0 and 1; the latest-value
//! groups are not pinned (up to five threads share the CPUs).

mod board;
mod mmapsync;
mod pubsub;
mod ring;

use shm_bench::Harness;

fn main() {
    // iceoryx2 logs warnings (stale nodes of crashed runs) on stderr; only errors matter here.
    iceoryx2::prelude::set_log_level(iceoryx2::prelude::LogLevel::Error);
    let mut h = Harness::new("peers");
    if h.group("stream") || h.group("latency") {
        pubsub::run(&mut h);
    }
    if h.group("board") {
        board::run(&mut h);
    }
    h.finish();
}
