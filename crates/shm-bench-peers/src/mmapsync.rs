//! cloudflare's mmap-sync as a latest-value store: one writer, readers that
//! copy the value out.
// `Synchronizer::read` is unsafe: the caller bounds how long it holds the value.
#![allow(unsafe_code)]

use std::time::Duration;

use bytecheck::CheckBytes;
use mmap_sync::locks::LockDisabled;
use mmap_sync::synchronizer::Synchronizer;
use rkyv::{Archive, Deserialize, Serialize};

/// The value: the bytes, serialised with rkyv as mmap-sync requires.
#[derive(Archive, Deserialize, Serialize, Debug)]
#[archive_attr(derive(CheckBytes))]
pub(crate) struct Value {
    /// The payload.
    pub(crate) bytes: Vec<u8>,
}

/// How long the writer lets a reader hold the copy it wants to overwrite
/// before it takes the reader for dead: far longer than any read here.
const GRACE: Duration = Duration::from_secs(1);

/// mmap-sync with its default hasher and no write lock; the writer sleeps
/// 10 us between checks for readers (the default, 1 s, suits configuration
/// files written rarely, not a nonstop writer).
type Sync = Synchronizer<wyhash::WyHash, LockDisabled, 1024, 10_000>;

/// Files under `/dev/shm` (tmpfs, like the other contenders' memory).
pub(crate) struct Store {
    prefix: String,
}

impl Store {
    /// A new store named after this process and `tag`; the writer writes first.
    pub(crate) fn new(tag: &str) -> Store {
        Store {
            prefix: format!(
                "/dev/shm/outlive-bench-mmap-sync-{}-{tag}",
                std::process::id()
            ),
        }
    }

    /// A writer.
    pub(crate) fn writer(&self) -> Writer {
        Writer(Sync::with_params(self.prefix.as_ref()))
    }

    /// A reader (call after the first write).
    pub(crate) fn reader(&self) -> Reader {
        Reader(Sync::with_params(self.prefix.as_ref()))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        for suffix in ["_state", "_data_0", "_data_1"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.prefix));
        }
    }
}

/// The single writer.
pub(crate) struct Writer(Sync);

impl Writer {
    /// Publishes `value` (serialises it, checksums it, copies it into the
    /// spare data file, waiting for its readers to leave, and switches).
    pub(crate) fn publish(&mut self, value: &Value) {
        self.0.write(value, GRACE).unwrap();
    }
}

/// One reader.
pub(crate) struct Reader(Sync);

impl Reader {
    /// Copies the current value into `out`.
    pub(crate) fn read(&mut self, out: &mut [u8]) {
        // SAFETY: `read` requires that the returned guard and references
        // derived from it are dropped before the writer's grace period:
        // - the guard lives only for the copy below (well under 1 s, GRACE);
        // - `check_bytes = false` trusts the bytes, which only our writer
        //   wrote with the same `Value` type.
        let value = unsafe { self.0.read::<Value>(false) }.unwrap();
        out.copy_from_slice(&value.bytes);
    }
}
