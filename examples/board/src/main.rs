//! `board --index I --count N`: process I of N.
//!
//! Each process owns one mailbox (`PREFIX-I`) and publishes a counter on it at
//! random intervals; it reads every other process's mailbox and prints what it
//! sees:
//!
//! ```text
//! 0: write 5
//! 0: read info from 1: 4
//! 0: read info from 2: empty
//! ```
//!
//! Kill any process at any moment (SIGKILL included) and start it again: it
//! continues from its last published value, and its reader holds are
//! released. Payloads carry a checksum; a reader that ever saw a torn message
//! would print `I: CORRUPT from J` (it must never happen). A second process
//! started with the same index is refused (exit status 2).
//!
//! `board --count N --cleanup` removes the N mailboxes, but only those no
//! process has open: a mailbox of a running board is refused (exit status 1),
//! since unlinking it would split the boards between the old object and a
//! new one. `--cleanup --force` removes them anyway. Files under the prefix
//! that are not outlive mailboxes are never removed.
//!
//! If another process shrinks a board's `/dev/shm` object, the boards using
//! it stop with an error saying so (instead of dying of SIGBUS), and the
//! next start replaces the object.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use shm_mailbox::{Config, Mailbox, MailboxError, Reader, Writer};

/// Payload size: eight words derived from the value, the last a checksum.
const PAYLOAD: usize = 64;

#[derive(Debug, Parser)]
#[command(version, about = "Process I of an N-process latest-value board")]
struct Args {
    /// This process's index, 0..count.
    #[arg(long, required_unless_present = "cleanup")]
    index: Option<usize>,
    /// Number of processes.
    #[arg(long)]
    count: usize,
    /// Prefix of the shared-memory names (`PREFIX-0` .. `PREFIX-(N-1)`).
    #[arg(long, default_value = "outlive-board")]
    prefix: String,
    /// Longest pause between two writes (e.g. 1s, 20ms, 0.5; pauses are random below it).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = shm_fd::cli::parse_duration)]
    max_interval: Duration,
    /// The longest pause in milliseconds (the first spelling of --max-interval).
    #[arg(long, value_name = "MS", conflicts_with = "max_interval", hide = true)]
    max_interval_ms: Option<u64>,
    /// Stop after this many writes (default: run until killed).
    #[arg(long)]
    writes: Option<u64>,
    /// Remove the N mailboxes and exit. Mailboxes that a running board has
    /// open are refused (exit status 1) unless --force is given.
    #[arg(long)]
    cleanup: bool,
    /// With --cleanup: also remove mailboxes that running boards have open
    /// (they keep the old objects; boards started later get new ones).
    #[arg(long, requires = "cleanup")]
    force: bool,
    #[command(flatten)]
    log: shm_fd::cli::Verbosity,
}

fn encode(value: u64, writer: usize) -> [u8; PAYLOAD] {
    let mut words = [0u64; 8];
    words[0] = value;
    words[1] = writer as u64;
    for (k, word) in words.iter_mut().enumerate().take(7).skip(2) {
        *word = value
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(k as u32 * 7)
            ^ writer as u64;
    }
    words[7] = checksum(&words[..7]);
    let mut out = [0u8; PAYLOAD];
    for (chunk, w) in out.chunks_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// The value in a payload, if it is exactly what `writer` would have written.
fn decode(bytes: &[u8], writer: usize) -> Option<u64> {
    if bytes.len() != PAYLOAD {
        return None;
    }
    let value = u64::from_le_bytes(bytes[..8].try_into().ok()?);
    (encode(value, writer) == *bytes).then_some(value)
}

fn checksum(words: &[u64]) -> u64 {
    words.iter().fold(0xcbf2_9ce4_8422_2325, |h, w| {
        (h ^ w).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A small xorshift generator: the pauses need no cryptographic quality.
struct Pauses(u64);

impl Pauses {
    fn next(&mut self, max_ms: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(if max_ms == 0 { 0 } else { self.0 % max_ms })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init("board");
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::InUse(msg)) => {
            eprintln!("{msg}");
            ExitCode::from(2)
        }
        Err(Failure::Other(msg)) => {
            eprintln!("board: {msg}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    InUse(String),
    Other(String),
}

impl From<MailboxError> for Failure {
    fn from(e: MailboxError) -> Failure {
        match e {
            MailboxError::InUse { .. } => {
                Failure::InUse(format!("board: {e}: is this index already running?"))
            }
            e => Failure::Other(e.to_string()),
        }
    }
}

fn run(args: &Args) -> Result<(), Failure> {
    let config = Config {
        readers: args.count,
        slot_bytes: PAYLOAD,
    };
    let name = |j: usize| format!("{}-{j}", args.prefix);
    if args.cleanup {
        let remove = if args.force {
            Mailbox::force_remove
        } else {
            Mailbox::remove
        };
        let mut refused = Vec::new();
        for j in 0..args.count {
            if let Err(e) = remove(&name(j)) {
                eprintln!("board: {e}");
                refused.push(name(j));
            }
        }
        if !refused.is_empty() {
            return Err(Failure::Other(format!(
                "not removed: {} (stop the boards using them first, or pass --force)",
                refused.join(", ")
            )));
        }
        return Ok(());
    }
    let me = args
        .index
        .ok_or_else(|| Failure::Other("--index is required".into()))?;
    if me >= args.count {
        return Err(Failure::Other(format!(
            "--index {me} must be below --count {}",
            args.count
        )));
    }
    let boards: Vec<Mailbox> = (0..args.count)
        .map(|j| Mailbox::open_or_create(&name(j), config))
        .collect::<Result<_, _>>()?;
    let mut writer = boards[me].writer()?;
    let mut readers: Vec<(usize, Reader<'_>)> = Vec::new();
    for (j, board) in boards.iter().enumerate().filter(|(j, _)| *j != me) {
        readers.push((j, board.reader(me)?));
    }
    let mut value = recover(&writer, me);
    println!("{me}: ready (continuing from {value})");
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut pauses = Pauses(seed ^ u64::from(std::process::id()));
    let mut buf = [0u8; PAYLOAD];
    let mut written = 0;
    let max_ms = max_pause_ms(args);
    loop {
        for (j, reader) in &mut readers {
            match reader.read(&mut buf)? {
                None => println!("{me}: read info from {j}: empty"),
                Some(m) => match decode(&buf[..m.len.min(PAYLOAD)], *j) {
                    Some(v) => println!("{me}: read info from {j}: {v}"),
                    None => println!("{me}: CORRUPT from {j}"),
                },
            }
        }
        if args.writes.is_some_and(|w| written >= w) {
            return Ok(());
        }
        std::thread::sleep(pauses.next(max_ms));
        value += 1;
        writer.publish(&encode(value, me))?;
        written += 1;
        println!("{me}: write {value}");
    }
}

/// The value this board last published (0 if none).
fn recover(writer: &Writer<'_>, me: usize) -> u64 {
    let mut buf = [0u8; PAYLOAD];
    match writer.last(&mut buf) {
        Ok(Some(m)) => decode(&buf[..m.len.min(PAYLOAD)], me).unwrap_or_else(|| {
            println!("{me}: CORRUPT from {me} (own last value); starting from 0");
            0
        }),
        _ => 0,
    }
}

/// The longest pause between two writes, in milliseconds, from either spelling.
fn max_pause_ms(args: &Args) -> u64 {
    args.max_interval_ms
        .unwrap_or(u64::try_from(args.max_interval.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn pauses_take_a_duration_or_the_old_milliseconds() {
        use clap::Parser;
        let ms = |extra: &[&str]| {
            let args = super::Args::try_parse_from(
                [&["board", "--count", "2", "--index", "0"][..], extra].concat(),
            )
            .map_err(|e| e.to_string())?;
            Ok::<_, String>(super::max_pause_ms(&args))
        };
        assert_eq!(ms(&[]), Ok(1000));
        assert_eq!(ms(&["--max-interval", "20ms"]), Ok(20));
        assert_eq!(ms(&["--max-interval", "0.5"]), Ok(500));
        assert_eq!(ms(&["--max-interval-ms", "20"]), Ok(20));
        assert!(ms(&["--max-interval", "soon"]).is_err());
        assert!(ms(&["--max-interval", "1s", "--max-interval-ms", "5"]).is_err());
    }

    #[test]
    fn encode_decode_round_trip_and_detect_tearing() {
        let sut = super::encode(42, 3);
        assert_eq!(super::decode(&sut, 3), Some(42));
        assert_eq!(super::decode(&sut, 2), None, "another writer's index");
        let mut torn = sut;
        torn[40..48].copy_from_slice(&super::encode(43, 3)[40..48]);
        assert_eq!(super::decode(&torn, 3), None, "half of another value");
    }
}
