//! The memfd that holds a program's state: created, sized and sealed here,
//! and validated when the store hands it back. Built on `shm_segment::memfd`.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use rustix::fs::FileType;
use rustix::io::Errno;
use shm_segment::memfd::{self, FIXED_SIZE, MemfdError, MemfdInfo, Requirements, ValidateError};

/// Creates a memfd of `size` zero bytes, sealed against shrinking and growing.
///
/// # Examples
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::os::fd::AsFd;
///
/// let fd = shm_fd::state::create("state", 64 << 10)?;
/// // Later, when the fd comes back from the store under the name "state":
/// let info = shm_fd::state::validate(fd.as_fd(), "state", 64 << 10)?;
/// assert_eq!(info.size, 64 << 10);
/// # Ok(())
/// # }
/// ```
pub fn create(name: &str, size: u64) -> Result<OwnedFd, MemfdError> {
    memfd::create(name, size, FIXED_SIZE)
}

/// What an fd that is not a memfd refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FdKind {
    /// A socket.
    Socket,
    /// An anonymous pipe or a named FIFO.
    Pipe,
    /// A regular file (on a file system, not a memfd).
    RegularFile,
    /// A directory.
    Directory,
    /// A character device, such as `/dev/null`.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// Anything else: an eventfd, epoll or other anonymous inode, ...
    Other,
}

impl FdKind {
    fn of(file_type: FileType) -> FdKind {
        match file_type {
            FileType::Socket => FdKind::Socket,
            FileType::Fifo => FdKind::Pipe,
            FileType::RegularFile => FdKind::RegularFile,
            FileType::Directory => FdKind::Directory,
            FileType::CharacterDevice => FdKind::CharDevice,
            FileType::BlockDevice => FdKind::BlockDevice,
            _ => FdKind::Other,
        }
    }
}

impl std::fmt::Display for FdKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FdKind::Socket => "a socket",
            FdKind::Pipe => "a pipe",
            FdKind::RegularFile => "a regular file",
            FdKind::Directory => "a directory",
            FdKind::CharDevice => "a character device",
            FdKind::BlockDevice => "a block device",
            FdKind::Other => "a special file",
        })
    }
}

/// `" (TARGET)"` where the `/proc/self/fd` link says more than the kind does
/// (a path, `anon_inode:[eventfd]`), nothing for sockets and anonymous pipes.
fn target_suffix(kind: FdKind, target: &str) -> String {
    let anonymous = target.starts_with("socket:[") || target.starts_with("pipe:[");
    if anonymous && matches!(kind, FdKind::Socket | FdKind::Pipe) {
        String::new()
    } else {
        format!(" ({target})")
    }
}

/// Why an fd cannot serve as a state region.
///
/// Every message starts with the fd number and the name it was handed over
/// under, e.g. `fd 3 ("state") is a socket, not a memfd`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The fd is not a memfd at all.
    #[error("fd {fd} ({name:?}) is {kind}{}, not a memfd", target_suffix(*kind, target))]
    NotMemfd {
        /// The descriptor.
        fd: RawFd,
        /// The name it was handed over under.
        name: String,
        /// What it is instead.
        kind: FdKind,
        /// Where its `/proc/self/fd` link points (`socket:[INODE]`, a path, ...).
        target: String,
    },
    /// A memfd, but unusable: too small, or lacking seals.
    #[error("fd {fd} ({name:?}): {problem}")]
    Invalid {
        /// The descriptor.
        fd: RawFd,
        /// The name it was handed over under.
        name: String,
        /// What is wrong with it.
        problem: ValidateError,
    },
    /// A memfd not sealed against resizing, which cannot be sealed now
    /// (its creator did not allow sealing, or sealed the seals).
    #[error(
        "fd {fd} ({name:?}): memfd {memfd:?} can still be resized and cannot be sealed: F_ADD_SEALS: {errno}"
    )]
    Unsealable {
        /// The descriptor.
        fd: RawFd,
        /// The name it was handed over under.
        name: String,
        /// The memfd's own name (given at creation).
        memfd: String,
        /// The OS error (part of the message, so not also a `source()`).
        errno: Errno,
    },
    /// A system call failed while inspecting the fd.
    #[error("fd {fd} ({name:?}): cannot inspect it: {op}: {error}")]
    Io {
        /// The descriptor.
        fd: RawFd,
        /// The name it was handed over under.
        name: String,
        /// The call that failed.
        op: &'static str,
        /// The OS error (part of the message, so not also a `source()`).
        error: std::io::Error,
    },
}

/// Checks that `fd` is a memfd of at least `min_size` bytes and makes sure it
/// is sealed against shrinking and growing (adding the seals if an older
/// creator did not), so no process can turn reads of it into SIGBUS.
///
/// `name` is the name the fd was handed over under (`LISTEN_FDNAMES`); it
/// only appears in the error. An fd that is no memfd at all (a socket, a
/// pipe, a file, `/dev/null`) is reported as what it is
/// ([`StateError::NotMemfd`]).
///
/// # Examples
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use shm_fd::state::{FdKind, StateError, validate};
/// use std::os::fd::AsFd;
///
/// let fd = shm_fd::state::create("state", 4096)?;
/// assert!(validate(fd.as_fd(), "state", 4096).is_ok());
/// // Too small for what the program needs:
/// assert!(validate(fd.as_fd(), "state", 8192).is_err());
///
/// // Not a memfd at all: reported as what it is.
/// let (a, _b) = std::os::unix::net::UnixStream::pair()?;
/// match validate(a.as_fd(), "state", 4096) {
///     Err(StateError::NotMemfd { kind, .. }) => assert_eq!(kind, FdKind::Socket),
///     other => panic!("unexpected: {other:?}"),
/// }
/// # Ok(())
/// # }
/// ```
pub fn validate(fd: BorrowedFd<'_>, name: &str, min_size: u64) -> Result<MemfdInfo, StateError> {
    let raw = fd.as_raw_fd();
    let io = |op, error| StateError::Io {
        fd: raw,
        name: name.to_owned(),
        op,
        error,
    };
    let invalid = |problem| match problem {
        ValidateError::Io { op, source, .. } => io(op, source),
        problem => StateError::Invalid {
            fd: raw,
            name: name.to_owned(),
            problem,
        },
    };
    let memfd_name = match memfd::memfd_name(fd) {
        Ok(Ok(memfd_name)) => memfd_name,
        Ok(Err(target)) => {
            let stat = rustix::fs::fstat(fd).map_err(|e| io("fstat", e.into()))?;
            return Err(StateError::NotMemfd {
                fd: raw,
                name: name.to_owned(),
                kind: FdKind::of(FileType::from_raw_mode(stat.st_mode)),
                target,
            });
        }
        Err(e) => return Err(io("readlink /proc/self/fd", e)),
    };
    let info = memfd::validate(fd, &Requirements::min_size(min_size)).map_err(invalid)?;
    if info.seals.contains(FIXED_SIZE) {
        return Ok(info);
    }
    // A memfd created without MFD_ALLOW_SEALING carries F_SEAL_SEAL and cannot
    // be sealed: refuse it, its size could change under us.
    rustix::fs::fcntl_add_seals(fd, FIXED_SIZE).map_err(|errno| StateError::Unsealable {
        fd: raw,
        name: name.to_owned(),
        memfd: memfd_name,
        errno,
    })?;
    memfd::validate(fd, &Requirements::min_size(min_size).with_seals(FIXED_SIZE)).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    fn refused(fd: BorrowedFd<'_>) -> String {
        validate(fd, "state", 4096).unwrap_err().to_string()
    }

    #[test]
    fn a_socket_is_named_a_socket() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = validate(a.as_fd(), "state", 4096).unwrap_err();
        assert!(
            matches!(
                err,
                StateError::NotMemfd {
                    kind: FdKind::Socket,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("fd {} (\"state\") is a socket, not a memfd", a.as_raw_fd())
        );
    }

    #[test]
    fn pipes_files_and_devices_are_named_too() {
        let (r, _w) = rustix::pipe::pipe().unwrap();
        assert_eq!(
            refused(r.as_fd()),
            format!("fd {} (\"state\") is a pipe, not a memfd", r.as_raw_fd())
        );
        let null = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(
            refused(null.as_fd()),
            format!(
                "fd {} (\"state\") is a character device (/dev/null), not a memfd",
                null.as_raw_fd()
            )
        );
        let exe = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        let shown = refused(exe.as_fd());
        assert!(shown.contains(") is a regular file (/"), "{shown}");
        assert!(!shown.contains("bytes"), "{shown}");
        let dir = std::fs::File::open("/").unwrap();
        assert!(
            refused(dir.as_fd()).contains(") is a directory (/), not a memfd"),
            "{}",
            refused(dir.as_fd())
        );
    }

    #[test]
    fn a_small_memfd_is_refused_with_its_sizes() {
        let fd = create("small", 4096).unwrap();
        let err = validate(fd.as_fd(), "state", 8192).unwrap_err();
        assert!(matches!(err, StateError::Invalid { .. }), "{err:?}");
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("fd {} (\"state\"): ", fd.as_raw_fd())),
            "{shown}"
        );
        assert!(shown.contains("4096") && shown.contains("8192"), "{shown}");
    }

    #[test]
    fn an_unsealed_memfd_is_sealed_and_accepted() {
        let fd = rustix::fs::memfd_create(
            "unsealed",
            rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        rustix::fs::ftruncate(&fd, 8192).unwrap();
        let info = validate(fd.as_fd(), "state", 8192).unwrap();
        assert!(info.seals.contains(FIXED_SIZE));
    }

    #[test]
    fn an_unsealable_memfd_is_refused_with_the_os_error() {
        // Without MFD_ALLOW_SEALING the kernel sets F_SEAL_SEAL: EPERM.
        let fd = rustix::fs::memfd_create("sealed-shut", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 8192).unwrap();
        let err = validate(fd.as_fd(), "state", 8192).unwrap_err();
        assert!(
            matches!(
                err,
                StateError::Unsealable {
                    errno: Errno::PERM,
                    ..
                }
            ),
            "{err:?}"
        );
        let shown = err.to_string();
        assert!(shown.contains("\"sealed-shut\""), "{shown}");
        assert!(
            shown.ends_with(&format!("(os error {})", libc::EPERM)),
            "{shown}"
        );
    }
}
