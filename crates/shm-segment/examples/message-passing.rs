//! Two processes pass messages through a named shared-memory segment.
//!
//! `cargo run --example message-passing` starts the writer, which creates the
//! segment (and owns it: it is unlinked when the writer exits), spawns a copy
//! of itself as the reader, and publishes ten messages. The reader prints every
//! message, in order, acknowledging each; both exit cleanly and nothing is left
//! in /dev/shm, even if either is killed (a stale object is reclaimed on the
//! next start).
//!
//! The channel is a single slot guarded by two counters: the writer fills the
//! text, then publishes `seq` with Release; the reader copies the text after an
//! Acquire load of `seq`, then acknowledges with Release. Every byte shared is
//! an atomic, so neither side ever holds a plain reference to memory the other
//! writes.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering}; // atomics-ok: fields of a Shared struct
use std::time::{Duration, Instant};

use shm_segment::{Segment, ShmBox, shared_struct};

const TEXT_WORDS: usize = 16;
const MESSAGES: u64 = 10;

shared_struct! {
    /// The shared channel.
    struct Channel {
        /// Sequence number of the message in `text` (0: none yet). Written by the writer.
        seq: AtomicU64,
        /// Last sequence number the reader consumed. Written by the reader.
        ack: AtomicU64,
        /// Length of the message in bytes.
        len: AtomicU64,
        /// Message bytes, eight per word.
        text: [AtomicU64; TEXT_WORDS],
    }
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok(())
}

fn send(ch: &Channel, seq: u64, msg: &str) -> Result<(), String> {
    // SYNC: Acquire, pairs with the reader's Release store of `ack`: the reader
    // has finished copying the previous text before we overwrite it.
    wait_until("the reader", || ch.ack.load(Ordering::Acquire) == seq - 1)?;
    let bytes = msg.as_bytes();
    let len = bytes.len().min(TEXT_WORDS * 8);
    for (i, word) in ch.text.iter().enumerate() {
        let mut w = [0u8; 8];
        for (j, b) in w.iter_mut().enumerate() {
            *b = bytes
                .get(i * 8 + j)
                .copied()
                .filter(|_| i * 8 + j < len)
                .unwrap_or(0);
        }
        // Relaxed: published by the Release store of `seq` below.
        word.store(u64::from_le_bytes(w), Ordering::Relaxed);
    }
    ch.len.store(len as u64, Ordering::Relaxed);
    // SYNC: Release, pairs with the reader's Acquire load of `seq`; publishes `len` and `text`.
    ch.seq.store(seq, Ordering::Release);
    Ok(())
}

fn receive(ch: &Channel, seq: u64) -> Result<String, String> {
    // SYNC: Acquire, pairs with the writer's Release store of `seq`.
    wait_until("the writer", || ch.seq.load(Ordering::Acquire) >= seq)?;
    let len = (ch.len.load(Ordering::Relaxed) as usize).min(TEXT_WORDS * 8);
    let mut bytes: Vec<u8> = ch
        .text
        .iter()
        .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
        .collect();
    bytes.truncate(len);
    // SYNC: Release, pairs with the writer's Acquire load of `ack`: our copy is done.
    ch.ack.store(seq, Ordering::Release);
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn writer(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let channel: ShmBox<Channel> = ShmBox::new(
        Segment::builder(name)
            .layout::<Channel>()
            .open_or_create()?,
    )?;
    println!("writer: created segment /dev/shm/{name}");
    let mut reader = Command::new(std::env::current_exe()?)
        .arg("reader")
        .arg(name)
        .spawn()?;
    for seq in 1..=MESSAGES {
        let msg = format!(
            "message {seq} of {MESSAGES} from pid {}",
            std::process::id()
        );
        send(&channel, seq, &msg)?;
        println!("writer: sent    {msg:?}");
    }
    wait_until("the last acknowledgement", || {
        channel.ack.load(Ordering::Acquire) == MESSAGES
    })?;
    let status = reader.wait()?;
    if !status.success() {
        return Err(format!("reader failed: {status}").into());
    }
    println!("writer: reader saw all {MESSAGES} messages in order; unlinking the segment");
    Ok(())
}

fn reader(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let channel: ShmBox<Channel> = ShmBox::new(Segment::builder(name).layout::<Channel>().open()?)?;
    for seq in 1..=MESSAGES {
        let msg = receive(&channel, seq)?;
        let expected = format!("message {seq} of {MESSAGES}");
        if !msg.starts_with(&expected) {
            return Err(format!("out of order: expected {expected:?}, got {msg:?}").into());
        }
        println!("reader: received {msg:?}");
    }
    Ok(())
}

/// Two processes pass messages through a typed shared segment: this one
/// writes, a reader process it starts reads them in order.
#[derive(clap::Parser, Debug)]
#[command(name = "message-passing", version)]
struct Args {
    /// The segment name (default: a unique one). `reader NAME` is how the
    /// writer starts its reader process.
    #[arg(num_args = 0..=2, value_name = "NAME")]
    words: Vec<String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = <Args as clap::Parser>::parse();
    match args.words.as_slice() {
        [role, name] if role == "reader" => reader(name),
        [name] => writer(name),
        [] => writer(&format!("outlive-message-passing-{}", std::process::id())),
        _ => Err("usage: message-passing [NAME]".into()),
    }
}
