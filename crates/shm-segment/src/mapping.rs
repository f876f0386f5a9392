//! The workspace's only `mmap`: a RAII shared mapping of a file descriptor.
//!
//! # Safety
//!
//! [`Mapping`] owns the address range `[ptr, ptr + len)` returned by `mmap`
//! from creation until `Drop` unmaps it. It never creates references to the
//! mapped bytes itself; all access goes through [`Region`], whose contract is
//! in `region.rs`. The file is checked with `fstat` before mapping so the whole
//! range is backed when we map it. Keeping it backed afterwards is the job of
//! seals (memfd); a file that cannot be sealed (a named segment) is mapped
//! with [`Mapping::map_guarded`], whose range is registered with the `SIGBUS`
//! handler of `sigbus.rs`: if another process shrinks the file, the handler
//! replaces the mapping with zero pages of the same length and protection, so
//! `ptr..ptr+len` stays mapped (invariant 1 holds) and accesses return.
#![allow(unsafe_code)]

use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};

use crate::region::Region;
use crate::sigbus::{self, Guard, GuardError};

/// Whether a mapping may be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `PROT_READ` only: a host that must never modify the region maps it so.
    ReadOnly,
    /// `PROT_READ | PROT_WRITE`.
    ReadWrite,
}

/// Why a file descriptor could not be mapped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// A zero-length mapping was requested.
    #[error("cannot map zero bytes")]
    ZeroLength,
    /// The offset is not a multiple of the page size.
    #[error("mapping offset {offset} is not page-aligned")]
    Unaligned {
        /// The offset that was asked for.
        offset: u64,
    },
    /// The file is smaller than `offset + len`: mapping it would SIGBUS on access.
    #[error("file holds {have} bytes but the mapping needs {need}")]
    TooSmall {
        /// Bytes the mapping needs (`offset + len`).
        need: u64,
        /// Bytes the file holds.
        have: u64,
    },
    /// `fstat` failed.
    #[error("fstat: {0}")]
    Stat(#[source] Errno),
    /// `mmap` failed.
    #[error("mmap: {0}")]
    Mmap(#[source] Errno),
    /// Every slot of the registry of guarded mappings is in use.
    #[error("cannot guard the mapping against truncation: all {0} slots are in use")]
    GuardsFull(usize),
    /// The `SIGBUS` handler could not be installed.
    #[error("cannot guard the mapping against truncation: sigaction(SIGBUS): {0}")]
    GuardInstall(#[source] Errno),
}

/// A shared memory mapping (`MAP_SHARED`) of a file descriptor, unmapped on drop.
///
/// # Invariants
/// 1. `ptr` is the start of a live `MAP_SHARED` mapping of `len > 0` bytes,
///    page-aligned, that this value alone will unmap.
/// 2. When `access` is [`Access::ReadOnly`] the pages are mapped `PROT_READ`.
///
/// # Examples
/// ```
/// use shm_segment::{Access, Mapping, memfd};
/// use std::os::fd::AsFd;
///
/// let fd = memfd::create("doc", 4096, memfd::Seals::empty())?;
/// let map = Mapping::map(fd.as_fd(), 0, 4096, Access::ReadWrite)?;
/// map.region().write_bytes(0, b"hello")?;
/// let mut buf = [0u8; 5];
/// map.region().read_bytes(0, &mut buf)?;
/// assert_eq!(&buf, b"hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    access: Access,
    /// The registration with the SIGBUS handler, for guarded mappings.
    guard: Option<Guard>,
}

// SAFETY: a Mapping is an address range, not data with thread affinity; every
// access to the bytes goes through `Region`, which only uses atomic operations
// and copies, so sharing or sending it between threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: as for Send.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` starting at `offset` (page-aligned), shared.
    ///
    /// The file's size is checked with `fstat` first, so a file smaller than
    /// `offset + len` gives [`MapError::TooSmall`] instead of a later SIGBUS.
    ///
    /// # References
    /// [mmap(2)](https://man7.org/linux/man-pages/man2/mmap.2.html)
    #[doc(alias = "mmap")]
    pub fn map(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        access: Access,
    ) -> Result<Mapping, MapError> {
        Mapping::map_inner(fd, offset, len, access, false)
    }

    /// Like [`Mapping::map`], for a file that another process may shrink
    /// (anything that cannot be sealed, such as a `/dev/shm` object).
    ///
    /// The mapping is registered with a process-wide `SIGBUS` handler
    /// (installed on first use; faults outside registered mappings go to the
    /// disposition it replaced). If the file is truncated under the mapping,
    /// the faulting access does not kill the process: the whole mapping is
    /// replaced by private zero pages, the access is retried, and
    /// [`Mapping::is_truncated`] turns true. Check it after reading: bytes read
    /// from a truncated mapping are zeros, not data.
    pub fn map_guarded(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        access: Access,
    ) -> Result<Mapping, MapError> {
        Mapping::map_inner(fd, offset, len, access, true)
    }

    fn map_inner(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        access: Access,
        guarded: bool,
    ) -> Result<Mapping, MapError> {
        if len == 0 {
            return Err(MapError::ZeroLength);
        }
        if !offset.is_multiple_of(rustix::param::page_size() as u64) {
            return Err(MapError::Unaligned { offset });
        }
        let have =
            u64::try_from(rustix::fs::fstat(fd).map_err(MapError::Stat)?.st_size).unwrap_or(0);
        let need = offset.saturating_add(len as u64);
        if have < need {
            return Err(MapError::TooSmall { need, have });
        }
        let prot = match access {
            Access::ReadOnly => ProtFlags::READ,
            Access::ReadWrite => ProtFlags::READ | ProtFlags::WRITE,
        };
        // SAFETY:
        // - a null hint lets the kernel choose a fresh range, so no existing
        //   Rust object is overlapped or replaced;
        // - `len > 0` and `offset` is page-aligned (checked above);
        // - the file is at least `offset + len` bytes long (checked above).
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                MapFlags::SHARED,
                fd,
                offset,
            )
        }
        .map_err(MapError::Mmap)?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(MapError::Mmap(Errno::FAULT))?;
        // INVARIANTS: (1) fresh mapping of `len` bytes owned by us; (2) prot matches `access`.
        let mut map = Mapping {
            ptr,
            len,
            access,
            guard: None,
        };
        if guarded {
            // Registered before anyone can access it; on failure `map` drops
            // and unmaps.
            let guard = Guard::register(ptr.as_ptr() as usize, len, access == Access::ReadWrite)
                .map_err(|e| match e {
                    GuardError::Full => MapError::GuardsFull(sigbus::SLOTS),
                    GuardError::Install(errno) => {
                        MapError::GuardInstall(Errno::from_raw_os_error(errno))
                    }
                })?;
            map.guard = Some(guard);
        }
        Ok(map)
    }

    /// Whether the file was truncated under this mapping (guarded mappings
    /// only; always false for others). Once true, the mapping holds private
    /// zero pages: what was read from it since the truncation is not data.
    pub fn is_truncated(&self) -> bool {
        self.guard.as_ref().is_some_and(Guard::is_truncated)
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: mappings are never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the mapping is writable.
    pub fn access(&self) -> Access {
        self.access
    }

    /// The start address. Dereferencing it is up to the caller; prefer [`Mapping::region`].
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// A bounds-checked view of the mapped bytes.
    pub fn region(&self) -> Region<'_> {
        // SAFETY:
        // - `ptr..ptr+len` is mapped for as long as `self` lives (invariant 1),
        //   and the returned region borrows `self`;
        // - writability matches the protection (invariant 2).
        unsafe {
            Region::from_raw_parts(
                self.ptr.as_ptr(),
                self.len,
                self.access == Access::ReadWrite,
            )
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Unregister first (this waits out any SIGBUS handler that may still
        // map over the range), so the handler never touches the range once it
        // is unmapped and possibly reused.
        drop(self.guard.take());
        // SAFETY: we own the mapping (invariant 1) and every Region borrowing it
        // has ended, since they borrow `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
