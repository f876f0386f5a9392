//! Creates a segment holding this program's own `Message`, writes one, says
//! `ready`, and keeps the segment until its standard input closes.
//!
//! `writer NAME [--owner UID] [--group GID] [--uid UID]...`

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering}; // atomics-ok: fields of a type shared across processes

use shm_segment::{Segment, ShmBox, shared_struct};

shared_struct! {
    /// Sequence and time of a message: a nested shared struct.
    pub struct Stamp {
        /// Message number.
        pub seq: AtomicU64,
        /// When, in microseconds.
        pub micros: AtomicU64,
    }
}

shared_struct! {
    /// What the writer publishes.
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
        "writer NAME [--owner UID] [--group GID] [--uid UID]...",
        |args| {
            let message: ShmBox<Message> = ShmBox::new(
                Segment::builder(&args.name)
                    .layout::<Message>()
                    .access(args.policy)
                    .create()?,
            )?;
            message.stamp.seq.store(42, Ordering::Relaxed);
            message.stamp.micros.store(1_700_000, Ordering::Relaxed);
            message.temperature.store(-7, Ordering::Relaxed);
            for (i, s) in message.samples.iter().enumerate() {
                s.store(10 * (i as u32 + 1), Ordering::Relaxed);
            }
            println!("ready");
            std::io::stdout().flush()?;
            // Hold the segment (and own it) until told to go.
            for line in std::io::stdin().lock().lines() {
                line?;
            }
            Ok(())
        },
    );
}
