//! Opens a segment holding this program's own `Message` (declared here, not
//! shared with the writer's source) and prints it; or, with `--remove`,
//! removes the segment.
//!
//! `reader NAME [--owner UID] [--group GID] [--uid UID]... [--remove]`

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering}; // atomics-ok: fields of a type shared across processes

use shm_segment::{Segment, ShmBox, shared_struct};

shared_struct! {
    /// The writer's stamp, declared again.
    pub struct Stamp {
        /// Message number.
        pub seq: AtomicU64,
        /// When, in microseconds.
        pub micros: AtomicU64,
    }
}

shared_struct! {
    /// The writer's message, declared again.
    pub struct Message {
        /// Sequence and time.
        pub stamp: Stamp,
        /// A signed reading.
        pub temperature: AtomicI64,
        /// Four samples.
        pub samples: [AtomicU32; 4],
    }
}

fn main() {
    typed_share::main_with(
        "reader NAME [--owner UID] [--group GID] [--uid UID]... [--remove]",
        |args| {
            if args.has("--remove") {
                let removed = Segment::remove(&args.name)?;
                println!("removed={removed}");
                return Ok(());
            }
            let message: ShmBox<Message> = ShmBox::new(
                Segment::builder(&args.name)
                    .layout::<Message>()
                    .access(args.policy)
                    .open()?,
            )?;
            let samples: Vec<u32> = message
                .samples
                .iter()
                .map(|s| s.load(Ordering::Relaxed))
                .collect();
            println!(
                "seq={} micros={} temperature={} samples={samples:?}",
                message.stamp.seq.load(Ordering::Relaxed),
                message.stamp.micros.load(Ordering::Relaxed),
                message.temperature.load(Ordering::Relaxed),
            );
            Ok(())
        },
    );
}
