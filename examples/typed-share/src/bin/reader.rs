//! Opens a segment holding this program's own `Message` (declared here, not
//! shared with the writer's source) and prints it; or, with `--remove`,
//! removes the segment. With `--board`, reads the newest value of a typed
//! board of this program's own plain `board::Message` instead.
//!
//! `reader NAME [--owner UID] [--group GID] [--uid UID]... [--remove | --board]`

use std::process::ExitCode;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering}; // atomics-ok: fields of a type shared across processes

use clap::Parser;
use shm_segment::{Segment, ShmBox, shared_struct};
use typed_share::Common;

#[derive(Debug, Parser)]
#[command(
    name = "reader",
    version,
    about = "Print the Message in a writer's segment (or, with --board, on its typed board), \
             declared again here; or remove the object"
)]
struct Args {
    #[command(flatten)]
    common: Common,
    /// Remove the object instead (a segment or a board: only its owner can).
    #[arg(long, conflicts_with = "board")]
    remove: bool,
}

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
fn read_board(common: &Common) -> Result<(), Box<dyn std::error::Error>> {
    let board = typed_share::open_board::<board::Message>(&common.name, common.policy())?;
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

/// Prints the `Message` in the segment.
fn read_segment(common: &Common) -> Result<(), Box<dyn std::error::Error>> {
    let message: ShmBox<Message> = ShmBox::new(
        Segment::builder(&common.name)
            .layout::<Message>()
            .access(common.policy())
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
}

/// `--remove`: removes the object (a board is a segment too).
fn remove(common: &Common) -> Result<(), Box<dyn std::error::Error>> {
    let removed = Segment::remove(&common.name)?;
    println!("removed={removed}");
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.common.log.init("reader");
    let result = if args.remove {
        remove(&args.common)
    } else if args.common.board {
        read_board(&args.common)
    } else {
        read_segment(&args.common)
    };
    typed_share::exit_status("reader", result)
}
