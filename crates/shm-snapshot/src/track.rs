//! Automatic dirty tracking of the work area: userfaultfd write-protection in
//! asynchronous mode, collected and re-armed with the `PAGEMAP_SCAN` ioctl.
//!
//! The client's writable mapping of the work area is registered with a
//! userfaultfd (`UFFD_USER_MODE_ONLY`, which needs no privilege) in
//! write-protect mode with `UFFD_FEATURE_WP_ASYNC`: the first write to a
//! protected page takes a fault that the kernel resolves by itself (it lifts
//! the protection; no message, no handler thread). At each commit one
//! `PAGEMAP_SCAN` walk over `/proc/self/pagemap` returns the pages that are no
//! longer protected (`PAGE_IS_WRITTEN`: written since the last walk) and
//! protects them again in the same walk (`PM_SCAN_WP_MATCHING`);
//! `PM_SCAN_CHECK_WPASYNC` makes the walk fail rather than report nothing if
//! part of the range is not registered. The result is exact for writes made
//! through this mapping (see `docs/protocol/shm-snapshot.md`, "Dirty
//! tracking", for what is not seen).
//!
//! Kernel requirements: Linux 6.7 (`UFFD_FEATURE_WP_ASYNC`, `PAGEMAP_SCAN`);
//! everything is detected at run time and reported as
//! [`TrackErrorKind::Unsupported`], so callers can fall back to named ranges.
//!
//! The UAPI structs and constants come from `linux-raw-sys`; it lacks only the
//! `PAGEMAP_SCAN` request number, which is composed below with
//! `rustix::ioctl::opcode`.
//!
//! # Safety
//!
//! The `unsafe` here is three system calls. `userfaultfd` is unsafe in rustix
//! because a userfaultfd can make the process's own page faults wait for a
//! handler; this module only ever enables asynchronous write-protection, in
//! which the kernel resolves every fault itself, and refuses to register
//! anything if the kernel did not grant that mode. The ioctls get pointers to
//! live, correctly typed arguments for the duration of the call.
#![allow(unsafe_code)]

use core::ffi::c_void;
use std::ops::Range;
use std::os::fd::OwnedFd;

use linux_raw_sys::general::{
    PAGE_IS_WRITTEN, PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING, UFFD_API, UFFD_FEATURE_WP_ASYNC,
    UFFD_FEATURE_WP_HUGETLBFS_SHMEM, UFFD_FEATURE_WP_UNPOPULATED, UFFD_USER_MODE_ONLY,
    UFFDIO_REGISTER_MODE_WP, page_region, pm_scan_arg, uffdio_api, uffdio_range, uffdio_register,
};
use rustix::io::Errno;
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode};

/// `PAGEMAP_SCAN = _IOWR('f', 16, struct pm_scan_arg)` (`include/uapi/linux/fs.h`).
const PAGEMAP_SCAN: Opcode = rustix::ioctl::opcode::read_write::<pm_scan_arg>(b'f', 16);
/// `UFFDIO_API = _IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: Opcode = rustix::ioctl::opcode::read_write::<uffdio_api>(0xAA, 0x3F);
/// `UFFDIO_REGISTER = _IOWR(0xAA, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: Opcode = rustix::ioctl::opcode::read_write::<uffdio_register>(0xAA, 0x00);

// The kernel ABI sizes these request numbers encode.
const _: () = assert!(size_of::<pm_scan_arg>() == 96);
const _: () = assert!(size_of::<page_region>() == 24);
const _: () = assert!(size_of::<uffdio_api>() == 24);
const _: () = assert!(size_of::<uffdio_register>() == 32);

/// Regions returned per `PAGEMAP_SCAN` call (a run of adjacent written pages
/// is one region; more regions just take another call).
const SCAN_REGIONS: usize = 4096;

/// What kind of tracking failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrackErrorKind {
    /// The kernel, its configuration or a sandbox does not offer the
    /// mechanism (no userfaultfd, no asynchronous write-protection, no
    /// `PAGEMAP_SCAN`, no `/proc`, a page size that does not divide the
    /// layout). Fall back to naming the dirty ranges.
    Unsupported,
    /// A tracked commit was asked for but tracking was not started.
    NotTracking,
    /// Another thread is inside a tracked commit (commits must not overlap).
    Busy,
    /// The scan failed on an armed tracker. Nothing was committed; the next
    /// tracked commit that succeeds copies the whole work area.
    Failed,
}

/// Why dirty tracking is unavailable or failed.
#[derive(Debug, thiserror::Error)]
#[error("dirty tracking: {what}{}", errno.map(|e| format!(": {e}")).unwrap_or_default())]
pub struct TrackError {
    kind: TrackErrorKind,
    what: &'static str,
    errno: Option<Errno>,
}

impl TrackError {
    pub(crate) fn new(kind: TrackErrorKind, what: &'static str, errno: Option<Errno>) -> Self {
        Self { kind, what, errno }
    }

    fn unsupported(what: &'static str, errno: Errno) -> Self {
        Self::new(TrackErrorKind::Unsupported, what, Some(errno))
    }

    /// The kind of failure.
    #[must_use]
    pub fn kind(&self) -> TrackErrorKind {
        self.kind
    }

    /// The system error behind it, if any.
    #[must_use]
    pub fn errno(&self) -> Option<Errno> {
        self.errno
    }
}

/// One ioctl with an argument of type `T` that the kernel reads and may write.
struct Call<'a, T> {
    opcode: Opcode,
    arg: &'a mut T,
}

// SAFETY: `as_ptr` points at an exclusively borrowed, live `T` for the whole
// call; every use below pairs `opcode` with the argument type the kernel
// expects for it (checked by the size asserts above); the output is the plain
// return value.
unsafe impl<T> Ioctl for Call<'_, T> {
    type Output = IoctlOutput;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        std::ptr::from_mut(self.arg).cast()
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<IoctlOutput> {
        Ok(out)
    }
}

fn open_uffd() -> Result<OwnedFd, TrackError> {
    let flags = rustix::mm::UserfaultfdFlags::CLOEXEC
        | rustix::mm::UserfaultfdFlags::NONBLOCK
        | rustix::mm::UserfaultfdFlags::from_bits_retain(UFFD_USER_MODE_ONLY);
    // SAFETY: creating the fd has no effect on memory by itself; it is only
    // registered below after the kernel granted asynchronous write-protection,
    // in which no fault ever waits for a handler (see the module's Safety).
    unsafe { rustix::mm::userfaultfd(flags) }
        .map_err(|e| TrackError::unsupported("userfaultfd(UFFD_USER_MODE_ONLY) refused", e))
}

/// Asks the kernel for the userfaultfd API with `features`; returns the
/// features the kernel reports (all it offers when `features` is 0).
fn api(uffd: &OwnedFd, features: u64) -> Result<u64, TrackError> {
    let mut api = uffdio_api {
        api: UFFD_API.into(),
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API takes a `struct uffdio_api`, live and exclusive here.
    unsafe {
        rustix::ioctl::ioctl(
            uffd,
            Call {
                opcode: UFFDIO_API,
                arg: &mut api,
            },
        )
    }
    .map_err(|e| TrackError::unsupported("UFFDIO_API refused", e))?;
    Ok(api.features)
}

/// Write-protect tracking of one page-aligned range of this process's memory.
pub(crate) struct Tracker {
    /// Kept open: closing it unregisters the range.
    _uffd: OwnedFd,
    pagemap: OwnedFd,
    start: u64,
    end: u64,
    regions: Vec<page_region>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("start", &format_args!("{:#x}", self.start))
            .field("end", &format_args!("{:#x}", self.end))
            .finish_non_exhaustive()
    }
}

impl Tracker {
    /// Registers `start..start + len` (which must be a page-aligned part of a
    /// live shared mapping that outlives the tracker) and write-protects every
    /// page of it: afterwards [`Tracker::collect`] reports exactly the pages
    /// written since the previous call (or since this one).
    pub(crate) fn new(start: *mut u8, len: usize) -> Result<Self, TrackError> {
        let page = rustix::param::page_size();
        let addr = start as usize;
        if len == 0 || !addr.is_multiple_of(page) || !len.is_multiple_of(page) {
            return Err(TrackError::unsupported(
                "the work area is not page-aligned for this page size",
                Errno::INVAL,
            ));
        }
        // Probe what the kernel offers (UFFDIO_API can be called once per fd).
        let offered = api(&open_uffd()?, 0)?;
        if offered & u64::from(UFFD_FEATURE_WP_ASYNC) == 0 {
            return Err(TrackError::unsupported(
                "the kernel lacks UFFD_FEATURE_WP_ASYNC (needs Linux 6.7)",
                Errno::NOTSUP,
            ));
        }
        let uffd = open_uffd()?;
        let optional =
            u64::from(UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM) & offered;
        let granted = api(&uffd, u64::from(UFFD_FEATURE_WP_ASYNC) | optional)?;
        if granted & u64::from(UFFD_FEATURE_WP_ASYNC) == 0 {
            return Err(TrackError::unsupported(
                "UFFD_FEATURE_WP_ASYNC not granted",
                Errno::NOTSUP,
            ));
        }
        let pagemap = rustix::fs::open(
            "/proc/self/pagemap",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| TrackError::unsupported("open /proc/self/pagemap", e))?;
        let mut reg = uffdio_register {
            range: uffdio_range {
                start: addr as u64,
                len: len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_WP.into(),
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER takes a `struct uffdio_register`, live and
        // exclusive here. The fd was granted WP_ASYNC (checked above), so a
        // write to a protected page never waits for a handler.
        unsafe {
            rustix::ioctl::ioctl(
                &uffd,
                Call {
                    opcode: UFFDIO_REGISTER,
                    arg: &mut reg,
                },
            )
        }
        .map_err(|e| TrackError::unsupported("UFFDIO_REGISTER (write-protect) refused", e))?;
        let mut t = Self {
            _uffd: uffd,
            pagemap,
            start: addr as u64,
            end: (addr + len) as u64,
            regions: vec![
                page_region {
                    start: 0,
                    end: 0,
                    categories: 0,
                };
                SCAN_REGIONS
            ],
        };
        // Arm: one walk protects every page; what it reports predates tracking.
        t.collect(|_| {})
            .map_err(|e| TrackError::unsupported("PAGEMAP_SCAN refused", e))?;
        Ok(t)
    }

    /// Calls `f` with each run of pages written since the last call, as byte
    /// offsets from the start of the range, and write-protects them again in
    /// the same walk. On an error some pages may have been re-protected
    /// without being reported: the caller must then treat every page as dirty.
    pub(crate) fn collect(&mut self, mut f: impl FnMut(Range<usize>)) -> Result<(), Errno> {
        let mut cursor = self.start;
        let mut stalls = 0u32;
        while cursor < self.end {
            let mut arg = pm_scan_arg {
                size: size_of::<pm_scan_arg>() as u64,
                flags: u64::from(PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC),
                start: cursor,
                end: self.end,
                walk_end: 0,
                vec: self.regions.as_mut_ptr() as usize as u64,
                vec_len: self.regions.len() as u64,
                max_pages: 0,
                category_inverted: 0,
                category_mask: PAGE_IS_WRITTEN.into(),
                category_anyof_mask: 0,
                return_mask: PAGE_IS_WRITTEN.into(),
            };
            // SAFETY: PAGEMAP_SCAN takes a `struct pm_scan_arg`, live and
            // exclusive here; `vec` points at `vec_len` writable `page_region`s
            // owned by `self.regions`, which is not touched during the call.
            // The walk only reads page tables and write-protects pages of the
            // registered range (asynchronous mode: later writes never block).
            let n = unsafe {
                rustix::ioctl::ioctl(
                    &self.pagemap,
                    Call {
                        opcode: PAGEMAP_SCAN,
                        arg: &mut arg,
                    },
                )
            }?;
            let n = usize::try_from(n).unwrap_or(0).min(self.regions.len());
            for r in &self.regions[..n] {
                let (s, e) = (r.start.max(self.start), r.end.min(self.end));
                if s < e {
                    f((s - self.start) as usize..(e - self.start) as usize);
                }
            }
            // The walk can stop short of `end` even with room left in `vec`:
            // continue from `walk_end` until the whole range is covered.
            if arg.walk_end > self.end || arg.walk_end < cursor {
                return Err(Errno::IO);
            }
            if arg.walk_end == cursor {
                stalls += 1;
                if stalls > 64 {
                    return Err(Errno::IO);
                }
            } else {
                stalls = 0;
            }
            cursor = arg.walk_end;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn request_numbers_match_the_kernel_headers() {
        // Values from linux/userfaultfd.h and linux/fs.h (generic ioctl encoding).
        assert_eq!(u64::from(super::UFFDIO_API), 0xc018_aa3f);
        assert_eq!(u64::from(super::UFFDIO_REGISTER), 0xc020_aa00);
        assert_eq!(u64::from(super::PAGEMAP_SCAN), 0xc060_6610);
    }
}
