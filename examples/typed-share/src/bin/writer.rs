//! Creates a segment holding this program's own `Message`, writes one, says
//! `ready`, and keeps the segment until its standard input closes. With
//! `--board`, creates a typed board (a mailbox) of this program's own plain
//! `board::Message` instead, publishes one, and removes the board at the end.
//!
//! `writer NAME [--owner UID] [--group GID] [--uid UID]... [--board]`

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering}; // atomics-ok: fields of a type shared across processes

use clap::Parser;
use shm_segment::{Layout, Plain, Segment, ShmBox, shared_struct};
use typed_share::Common;

#[derive(Debug, Parser)]
#[command(
    name = "writer",
    version,
    about = "Create a segment (or, with --board, a typed board) holding this program's own Message, \
             write one, say `ready`, and hold it until standard input closes"
)]
struct Args {
    #[command(flatten)]
    common: Common,
}

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
fn publish_on_board(common: &Common) -> Result<(), Box<dyn std::error::Error>> {
    let board = typed_share::create_board::<board::Message>(&common.name, common.policy())?;
    tracing::debug!(name = %common.name, layout = %board::Message::PLAIN_LAYOUT, "board created");
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
    shm_mailbox::Mailbox::remove(&common.name)?;
    tracing::debug!(name = %common.name, "board removed");
    Ok(())
}

/// Creates the segment, writes one `Message`, and holds the segment (and
/// owns it) until told to go.
fn write_segment(common: &Common) -> Result<(), Box<dyn std::error::Error>> {
    let message: ShmBox<Message> = ShmBox::new(
        Segment::builder(&common.name)
            .layout::<Message>()
            .access(common.policy())
            .create()?,
    )?;
    tracing::debug!(name = %common.name, layout = %Layout::of::<Message>(), "segment created");
    message.stamp.seq.store(42, Ordering::Relaxed);
    message.stamp.micros.store(1_700_000, Ordering::Relaxed);
    message.temperature.store(-7, Ordering::Relaxed);
    for (i, s) in message.samples.iter().enumerate() {
        s.store(10 * (i as u32 + 1), Ordering::Relaxed);
    }
    ready_then_wait()?;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.common.log.init("writer");
    let result = if args.common.board {
        publish_on_board(&args.common)
    } else {
        write_segment(&args.common)
    };
    typed_share::exit_status("writer", result)
}
