//! Creates a segment holding this program's own `Message`, writes one, says
//! `ready`, and keeps the segment until its standard input closes. With
//! `--board`, creates a typed board (a mailbox) of this program's own plain
//! `board::Message` instead, publishes one, and removes the board at the end.
//!
//! `writer NAME [--owner UID] [--group GID] [--uid UID]... [--board]`

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

/// The same message as plain data, for the typed board: copied in and out,
/// never viewed in place, so its fields are plain integers.
mod board {
    use shm_segment::plain_struct;

    plain_struct! {
        /// Sequence and time of a message.
        pub struct Stamp {
            /// Message number.
            pub seq: u64,
            /// When, in microseconds.
            pub micros: u64,
        }
    }

    plain_struct! {
        /// What the writer publishes on the board.
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

/// Says `ready` and waits until standard input closes.
fn ready_then_wait() -> std::io::Result<()> {
    println!("ready");
    std::io::stdout().flush()?;
    for line in std::io::stdin().lock().lines() {
        line?;
    }
    Ok(())
}

/// `--board`: publishes one `board::Message`, holds the board until told to
/// go, then removes it.
fn publish_on_board(args: typed_share::Args) -> Result<(), Box<dyn std::error::Error>> {
    let board = typed_share::create_board::<board::Message>(&args.name, args.policy)?;
    let mut writer = board.writer()?;
    writer.publish(&board::Message {
        stamp: board::Stamp {
            seq: 42,
            micros: 1_700_000,
        },
        temperature: -7,
        samples: [10, 20, 30, 40],
    })?;
    ready_then_wait()?;
    drop((writer, board));
    shm_mailbox::Mailbox::remove(&args.name)?;
    Ok(())
}

fn main() {
    typed_share::main_with(
        "writer NAME [--owner UID] [--group GID] [--uid UID]... [--board]",
        |args| {
            if args.has("--board") {
                return publish_on_board(args);
            }
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
            // Hold the segment (and own it) until told to go.
            ready_then_wait()?;
            Ok(())
        },
    );
}
