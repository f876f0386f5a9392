//! [`SegmentError`]: why a segment could not be created or opened.

use rustix::io::Errno;

use crate::header::{HeaderFault, Layout};
use crate::mapping::MapError;
use crate::memfd::{MemfdError, ValidateError};

/// Why a segment could not be created or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    /// The name is empty, too long, or holds `/` or NUL.
    #[error("invalid segment name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `create` found an object of that name.
    #[error("segment {name:?} already exists")]
    AlreadyExists {
        /// The name.
        name: String,
    },
    /// `open` found no object of that name (or only a stale one, which it removed).
    #[error("segment {name:?} does not exist")]
    NotFound {
        /// The name.
        name: String,
    },
    /// The object's header was not initialised within the open timeout.
    #[error("segment {name} is not initialised")]
    NotInitialized {
        /// The name (or `memfd:NAME`).
        name: String,
    },
    /// The header was written by another format version.
    #[error("segment {name} has format version {found}, this library reads {expected}")]
    VersionMismatch {
        /// The name.
        name: String,
        /// Version found.
        found: u32,
        /// Version supported.
        expected: u32,
    },
    /// The payload holds another type than the one asked for.
    #[error("segment {name} holds {found}, expected {expected}")]
    LayoutMismatch {
        /// The name.
        name: String,
        /// Layout asked for.
        expected: Layout,
        /// Layout found.
        found: Layout,
    },
    /// The object is smaller than needed.
    #[error("segment {name} holds {have} payload bytes, {need} are needed")]
    TooSmall {
        /// The name.
        name: String,
        /// Bytes needed.
        need: u64,
        /// Bytes present.
        have: u64,
    },
    /// The header is not a valid outlive header.
    #[error("segment {name} is corrupt: {what}")]
    Corrupt {
        /// The name.
        name: String,
        /// What check failed.
        what: &'static str,
    },
    /// The object's permission bits differ from the requested mode.
    #[error("segment {name:?} has mode {mode:#o}, expected {expected:#o}")]
    Permissions {
        /// The name.
        name: String,
        /// Mode found.
        mode: u32,
        /// Mode requested.
        expected: u32,
    },
    /// The object belongs to another user.
    #[error("segment {name:?} belongs to uid {uid}, not to us")]
    ForeignOwner {
        /// The name.
        name: String,
        /// Its owner.
        uid: u32,
    },
    /// Mapping failed.
    #[error("segment {name}: cannot map: {source}")]
    Map {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: MapError,
    },
    /// The object was shrunk under its mapping by another process (named
    /// segments cannot be sealed): what this process read from it since is
    /// zeros, not data, and what it wrote is lost. The object is reclaimed by
    /// the next `open_or_create` once no process is attached.
    #[error(
        "segment {name} was truncated by another process (its /dev/shm object shrank): its data is lost"
    )]
    Truncated {
        /// The name.
        name: String,
    },
    /// [`Segment::remove`](super::Segment::remove) found live processes attached to the object.
    #[error(
        "segment {name} is in use by a live process: not removed (force removal unlinks it anyway)"
    )]
    InUse {
        /// The name.
        name: String,
    },
    /// Creating or sealing a memfd failed.
    #[error(transparent)]
    Memfd(#[from] MemfdError),
    /// An inherited fd is not an acceptable memfd.
    #[error(transparent)]
    Validate(#[from] ValidateError),
    /// A system call failed.
    #[error("segment {name}: {op}: {source}")]
    Io {
        /// The name.
        name: String,
        /// The call, with the path it was made on where there is one.
        op: String,
        /// The OS error.
        #[source]
        source: Errno,
    },
}

/// `SegmentError::Io` for `op` on `name`.
pub(super) fn io_err(name: &str, op: impl Into<String>) -> impl FnOnce(Errno) -> SegmentError {
    let (name, op) = (name.to_owned(), op.into());
    move |source| SegmentError::Io { name, op, source }
}

/// The error for a header that failed [`RawHeader::check`](crate::header::RawHeader::check).
pub(super) fn fault_error(fault: HeaderFault, name: &str) -> SegmentError {
    let name = name.to_owned();
    match fault {
        HeaderFault::Empty | HeaderFault::Initialising => SegmentError::NotInitialized { name },
        HeaderFault::Corrupt(what) => SegmentError::Corrupt { name, what },
        HeaderFault::Version(found) => SegmentError::VersionMismatch {
            name,
            found,
            expected: crate::header::FORMAT_VERSION,
        },
    }
}
