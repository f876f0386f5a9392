//! Anonymous shared memory files (`memfd_create`): create, size, seal, validate.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::MemfdFlags;
use rustix::io::Errno;

/// File seals (`F_SEAL_*`), rustix's `SealFlags`.
pub use rustix::fs::SealFlags as Seals;

/// The seals that fix a region's size: no peer can shrink it (which would turn
/// our reads into SIGBUS) or grow it.
pub const FIXED_SIZE: Seals = Seals::SHRINK.union(Seals::GROW);

/// Why a memfd could not be created or sealed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemfdError {
    /// `memfd_create` failed (for example the name holds a NUL byte or is longer than 249 bytes).
    #[error("memfd_create({name:?}): {source}")]
    Create {
        /// The name asked for.
        name: String,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// `ftruncate` to the requested size failed.
    #[error("cannot size memfd (fd {fd}) to {size} bytes: ftruncate: {source}")]
    Resize {
        /// The descriptor.
        fd: i32,
        /// The size asked for.
        size: u64,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// Adding seals failed (for example `F_SEAL_SEAL` is already set).
    #[error("cannot add seals {seals:?} to memfd (fd {fd}): F_ADD_SEALS: {source}")]
    Seal {
        /// The descriptor.
        fd: i32,
        /// The seals asked for.
        seals: Seals,
        /// The OS error.
        #[source]
        source: Errno,
    },
}

/// Creates a close-on-exec, sealable memfd of `size` zero bytes, then adds `seals`.
///
/// # Examples
/// ```
/// use shm_segment::memfd;
/// use std::os::fd::AsFd;
///
/// let fd = memfd::create("state", 1 << 20, memfd::FIXED_SIZE)?;
/// let want = memfd::Requirements::min_size(1 << 20).with_seals(memfd::FIXED_SIZE);
/// let info = memfd::validate(fd.as_fd(), &want)?;
/// assert_eq!(info.size, 1 << 20);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # References
/// [memfd_create(2)](https://man7.org/linux/man-pages/man2/memfd_create.2.html)
#[doc(alias = "memfd_create")]
pub fn create(name: &str, size: u64, seals: Seals) -> Result<OwnedFd, MemfdError> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(|source| MemfdError::Create {
            name: name.to_owned(),
            source,
        })?;
    rustix::fs::ftruncate(&fd, size).map_err(|source| MemfdError::Resize {
        fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
        size,
        source,
    })?;
    add_seals(fd.as_fd(), seals)?;
    Ok(fd)
}

/// Adds `seals` to a memfd (seals can only ever be added).
#[doc(alias = "F_ADD_SEALS")]
pub fn add_seals(fd: BorrowedFd<'_>, seals: Seals) -> Result<(), MemfdError> {
    if seals.is_empty() {
        return Ok(());
    }
    rustix::fs::fcntl_add_seals(fd, seals).map_err(|source| MemfdError::Seal {
        fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
        seals,
        source,
    })
}

/// The seals currently set on `fd`.
#[doc(alias = "F_GET_SEALS")]
pub fn seals(fd: BorrowedFd<'_>) -> Result<Seals, Errno> {
    rustix::fs::fcntl_get_seals(fd)
}

/// What an inherited memfd must satisfy before we map it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requirements {
    /// Smallest acceptable size in bytes.
    pub min_size: u64,
    /// If set, the size must be exactly this.
    pub exact_size: Option<u64>,
    /// Seals that must already be present.
    pub seals: Seals,
}

impl Requirements {
    /// At least `min_size` bytes, any seals.
    pub fn min_size(min_size: u64) -> Requirements {
        Requirements {
            min_size,
            exact_size: None,
            seals: Seals::empty(),
        }
    }

    /// Exactly `size` bytes, any seals.
    pub fn exact_size(size: u64) -> Requirements {
        Requirements {
            min_size: size,
            exact_size: Some(size),
            seals: Seals::empty(),
        }
    }

    /// Also require `seals`.
    #[must_use]
    pub fn with_seals(mut self, seals: Seals) -> Requirements {
        self.seals = seals;
        self
    }
}

/// What [`validate`] found out about a memfd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemfdInfo {
    /// The name given at creation (without the `memfd:` prefix).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Seals present.
    pub seals: Seals,
}

/// Why an inherited fd was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ValidateError {
    /// The fd is not a memfd (it points at `target`).
    #[error("fd is not a memfd (it refers to {target:?})")]
    NotMemfd {
        /// What `/proc/self/fd/N` points at.
        target: String,
    },
    /// The memfd is smaller than required.
    #[error("memfd {name:?} holds {size} bytes, at least {min} are needed")]
    TooSmall {
        /// The memfd's name.
        name: String,
        /// Its size.
        size: u64,
        /// The minimum.
        min: u64,
    },
    /// The memfd's size differs from the exact size required.
    #[error("memfd {name:?} holds {size} bytes, exactly {expected} are needed")]
    WrongSize {
        /// The memfd's name.
        name: String,
        /// Its size.
        size: u64,
        /// The size required.
        expected: u64,
    },
    /// Required seals are missing.
    #[error("memfd {name:?} lacks seals {missing:?}")]
    MissingSeals {
        /// The memfd's name.
        name: String,
        /// The seals required but absent.
        missing: Seals,
    },
    /// A system call failed while inspecting the fd.
    #[error("cannot inspect fd {fd}: {op}: {source}")]
    Io {
        /// The descriptor.
        fd: i32,
        /// The call that failed.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The memfd name of `fd`, or `None` when it is not a memfd.
///
/// Linux offers no flag for "is a memfd"; the reliable test is the
/// `/proc/self/fd` link, which reads `/memfd:NAME (deleted)` for memfds.
pub fn memfd_name(fd: BorrowedFd<'_>) -> Result<Result<String, String>, std::io::Error> {
    use std::os::fd::AsRawFd;
    let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    let target = target.to_string_lossy().into_owned();
    Ok(match target.strip_prefix("/memfd:") {
        Some(rest) => Ok(rest.strip_suffix(" (deleted)").unwrap_or(rest).to_owned()),
        None => Err(target),
    })
}

/// Checks that `fd` is a memfd of an acceptable size with the required seals.
///
/// Call this before mapping any memfd received from another process or the
/// service manager.
pub fn validate(fd: BorrowedFd<'_>, req: &Requirements) -> Result<MemfdInfo, ValidateError> {
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let name = memfd_name(fd)
        .map_err(|source| ValidateError::Io {
            fd: raw,
            op: "readlink /proc/self/fd",
            source,
        })?
        .map_err(|target| ValidateError::NotMemfd { target })?;
    let stat = rustix::fs::fstat(fd).map_err(|e| ValidateError::Io {
        fd: raw,
        op: "fstat",
        source: e.into(),
    })?;
    let size = u64::try_from(stat.st_size).unwrap_or(0);
    if let Some(expected) = req.exact_size {
        if size != expected {
            return Err(ValidateError::WrongSize {
                name,
                size,
                expected,
            });
        }
    } else if size < req.min_size {
        return Err(ValidateError::TooSmall {
            name,
            size,
            min: req.min_size,
        });
    }
    let present = seals(fd).map_err(|e| ValidateError::Io {
        fd: raw,
        op: "F_GET_SEALS",
        source: e.into(),
    })?;
    let missing = req.seals.difference(present);
    if !missing.is_empty() {
        return Err(ValidateError::MissingSeals { name, missing });
    }
    Ok(MemfdInfo {
        name,
        size,
        seals: present,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_accepts_sealed_memfd_of_right_size() {
        let fd = create("t-ok", 8192, FIXED_SIZE).unwrap();
        let sut = validate(
            fd.as_fd(),
            &Requirements::exact_size(8192).with_seals(FIXED_SIZE),
        )
        .unwrap();
        assert_eq!(
            sut,
            MemfdInfo {
                name: "t-ok".into(),
                size: 8192,
                seals: FIXED_SIZE
            }
        );
    }

    #[test]
    fn validate_refuses_small_unsealed_and_foreign_fds() {
        let fd = create("t-small", 100, Seals::empty()).unwrap();
        assert!(matches!(
            validate(fd.as_fd(), &Requirements::min_size(4096)),
            Err(ValidateError::TooSmall { .. })
        ));
        assert!(matches!(
            validate(
                fd.as_fd(),
                &Requirements::min_size(1).with_seals(FIXED_SIZE)
            ),
            Err(ValidateError::MissingSeals { .. })
        ));
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert!(matches!(
            validate(file.as_fd(), &Requirements::min_size(0)),
            Err(ValidateError::NotMemfd { .. })
        ));
    }

    #[test]
    fn sealed_memfd_cannot_shrink() {
        let fd = create("t-seal", 4096, FIXED_SIZE).unwrap();
        assert!(rustix::fs::ftruncate(&fd, 0).is_err());
        assert!(create("bad\0name", 1, Seals::empty()).is_err());
    }
}
