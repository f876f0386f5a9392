//! Opens a segment holding this program's own `Message` (declared here, not
//! shared with the writer's source) and prints it; or, with `--remove`,
//! removes the segment. With `--board`, reads the newest value of a typed
//! board of this program's own plain `board::Message` instead.
//!
//! `reader NAME [--owner UID] [--group GID] [--uid UID]... [--remove | --board]`

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

/// The writer's plain message, declared again, for the typed board.
mod board {
    use shm_segment::plain_struct;

    plain_struct! {
        /// The writer's stamp, declared again.
        pub struct Stamp {
            /// Message number.
            pub seq: u64,
            /// When, in microseconds.
            pub micros: u64,
        }
    }

    plain_struct! {
        /// The writer's board message, declared again.
        pub struct Message {
            /// Sequence and time.
            pub stamp: Stamp,
            /// A signed reading.
            pub temperature: i64,
            /// Four samples.
            pub samples: [u32; 4],
        }
    }
}

/// `--board`: prints the newest `board::Message` on the board.
fn read_board(args: typed_share::Args) -> Result<(), Box<dyn std::error::Error>> {
    let board = typed_share::open_board::<board::Message>(&args.name, args.policy)?;
    let m = board
        .claim_reader()?
        .read()?
        .ok_or("nothing published on the board")?;
    println!(
        "seq={} micros={} temperature={} samples={:?}",
        m.stamp.seq, m.stamp.micros, m.temperature, m.samples
    );
    Ok(())
}

fn main() {
    typed_share::main_with(
        "reader NAME [--owner UID] [--group GID] [--uid UID]... [--remove | --board]",
        |args| {
            if args.has("--board") {
                return read_board(args);
            }
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
