//! The opaque error type of snapshot files.

use std::fmt;

/// What went wrong with a snapshot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An I/O error from the storage (including a full disk).
    Io,
    /// The file is empty.
    Empty,
    /// The file does not start with the snapshot magic.
    Foreign,
    /// The file has a version this library does not read.
    Version,
    /// The header checksum does not match.
    CorruptHeader,
    /// The header is shorter than required.
    Truncated,
    /// The header names a page size or region size that is unusable.
    BadGeometry,
    /// The file's region size differs from the one requested.
    SizeMismatch,
    /// Records in the middle of the log are damaged, and intact snapshots
    /// that were durable follow them (not what a crash leaves).
    Damaged,
    /// The requested generation is not restorable from the file.
    NoSuchGeneration,
    /// A live memfd's commit sequence is out of range or went backwards
    /// (written by something other than the protocol).
    BadSequence,
    /// The path is not a regular file (a FIFO, a device, a directory).
    NotRegular,
    /// Another live holder has the role asked for: a second
    /// [`Client`](crate::live::Client) on a memfd one already commits to.
    Busy,
}

/// An error reading or writing a snapshot file.
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct SnapshotError {
    kind: ErrorKind,
    msg: String,
    #[source]
    source: Option<std::io::Error>,
}

impl SnapshotError {
    pub(crate) fn new(kind: ErrorKind, msg: impl fmt::Display) -> Self {
        Self {
            kind,
            msg: msg.to_string(),
            source: None,
        }
    }

    pub(crate) fn io(what: &str, e: std::io::Error) -> Self {
        Self {
            kind: ErrorKind::Io,
            msg: format!("{what}: {e}"),
            source: Some(e),
        }
    }

    /// The kind of error.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether the error is a full disk (`ENOSPC`).
    #[must_use]
    pub fn is_disk_full(&self) -> bool {
        self.source.as_ref().and_then(std::io::Error::raw_os_error) == Some(28)
            || self.source.as_ref().map(std::io::Error::kind)
                == Some(std::io::ErrorKind::StorageFull)
    }

    /// Whether a read found the end of the storage before the bytes it wanted.
    pub(crate) fn is_short_read(&self) -> bool {
        self.source.as_ref().map(std::io::Error::kind) == Some(std::io::ErrorKind::UnexpectedEof)
    }
}
