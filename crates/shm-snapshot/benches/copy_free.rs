//! Prototype of a copy-free commit, measured against the copy it would save.
//!
//! `cargo bench -p shm-snapshot --bench copy_free [-- --quick]`
//!
//! A tracked commit finds and write-protects the dirty pages (PAGEMAP_SCAN)
//! and copies them, so that the host snapshots a stable image while the
//! program goes on. A commit without the copy must instead learn of the
//! program's next write to each of those pages *before* it lands, to copy
//! the old contents then. `UFFD_FEATURE_WP_ASYNC` (what the scan uses)
//! resolves those faults in the kernel without telling anyone; a
//! synchronous userfaultfd handler wakes another thread on every fault. What
//! an unprivileged program can do alone is `mprotect`: protect each dirty
//! run at commit time, and on the first write, in a SIGSEGV handler, copy
//! the page aside and unprotect it. This bench measures both halves of that
//! design on the same scattered pages, each against a `memcpy` of those
//! pages (what the copy costs today), alternating repetition by repetition:
//!
//! - the pause: one `mprotect(PROT_READ)` per dirty run (each page is its
//!   own run here: 1 page in every 1/fraction);
//! - the program's slowdown after it: the first write to each protected page
//!   (fault, handler copying the page, `mprotect` back), which a copying
//!   commit does not pay at all (its pages were write-protected by the scan
//!   in both designs).
//!
//! Each protected run also splits the mapping's VMA in up to three; at
//! `vm.max_map_count` (65530 by default) `mprotect` fails with `ENOMEM`,
//! which the bench reports.
#![allow(
    unsafe_code,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering}; // atomics-ok: signal-handler state of this process
use std::time::Instant;

use shm_bench::{Better, Harness};

const PAGE: usize = 4096;

/// Where the SIGSEGV handler copies faulting pages, and how many it did.
static STAGING: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static COPIED: AtomicUsize = AtomicUsize::new(0);

/// Copies the faulting page to the next staging slot and unprotects it.
extern "C" fn on_fault(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let info = unsafe { &*info };
    // SAFETY: a SIGSEGV's siginfo carries `si_addr`, the faulting address
    // inside the protected mapping.
    let addr = unsafe { info.si_addr() } as usize;
    let page = (addr & !(PAGE - 1)) as *mut u8;
    // Relaxed: this thread's own fault; the main thread reads the count
    // after its writes returned (same thread).
    let slot = COPIED.fetch_add(1, Ordering::Relaxed);
    let staging = STAGING.load(Ordering::Relaxed);
    // SAFETY: the staging buffer has a slot for every protected page (the
    // bench protects at most as many pages as it has slots).
    let dst = unsafe { staging.add(slot * PAGE) };
    // SAFETY: the page is mapped and readable (PROT_READ), `dst` is a
    // staging slot; `memcpy` is async-signal-safe.
    unsafe { std::ptr::copy_nonoverlapping(page, dst, PAGE) };
    // SAFETY: the page lies in the bench's own mapping; `mprotect` is
    // async-signal-safe.
    unsafe { libc::mprotect(page.cast(), PAGE, libc::PROT_READ | libc::PROT_WRITE) };
}

/// An anonymous private mapping of `len` bytes, every page touched.
struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

impl Region {
    fn new(len: usize) -> Region {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap of {len} bytes");
        let ptr = NonNull::new(p.cast::<u8>()).unwrap();
        // SAFETY: the mapping is ours, `len` bytes, readable and writable.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 1, len) };
        Region { ptr, len }
    }

    fn page(&self, i: usize) -> *mut u8 {
        debug_assert!(i * PAGE < self.len);
        // SAFETY: in bounds (callers pass page indices of the mapping).
        unsafe { self.ptr.as_ptr().add(i * PAGE) }
    }

    /// `mprotect`s page `i`; false on failure (ENOMEM: too many VMAs).
    fn protect(&self, i: usize, prot: libc::c_int) -> bool {
        // SAFETY: page `i` lies inside our own mapping; no reference to
        // its bytes is held while its protection changes.
        unsafe { libc::mprotect(self.page(i).cast(), PAGE, prot) == 0 }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn main() {
    let mut h = Harness::new("shm-snapshot copy-free");
    // SAFETY: all-zero bytes are a valid `sigaction` (plain C struct).
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_fault as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `sa_mask` is a valid sigset_t to initialize.
    unsafe { libc::sigemptyset(&raw mut sa.sa_mask) };
    // SAFETY: installs a SIGSEGV handler for this bench process only, which
    // handles faults on pages the bench protected itself (nothing else in
    // the process faults: it would be a bug either way).
    let installed = unsafe { libc::sigaction(libc::SIGSEGV, &raw const sa, std::ptr::null_mut()) };
    assert_eq!(installed, 0, "sigaction");
    let sizes = h.pick(vec![64usize << 20, 256 << 20, 1 << 30], vec![64 << 20]);
    for &size in &sizes {
        let region = Region::new(size);
        for (frac, label) in [(1000, "0.1 %"), (100, "1 %"), (10, "10 %")] {
            let pages: Vec<usize> = (0..size / PAGE).step_by(frac).collect();
            let mut staging = vec![0u8; pages.len() * PAGE];
            STAGING.store(staging.as_mut_ptr(), Ordering::Relaxed);
            let failed = std::cell::Cell::new(false);
            let mut copy = || {
                let t = Instant::now();
                for (k, &p) in pages.iter().enumerate() {
                    let dst = staging[k * PAGE..].as_mut_ptr();
                    // SAFETY: page `p` is readable, `dst` has a page's room.
                    unsafe { std::ptr::copy_nonoverlapping(region.page(p), dst, PAGE) };
                }
                std::hint::black_box(&staging);
                t.elapsed().as_secs_f64() * 1e6
            };
            let mut protect = || {
                let t = Instant::now();
                let ok = pages.iter().all(|&p| region.protect(p, libc::PROT_READ));
                let el = t.elapsed().as_secs_f64() * 1e6;
                failed.set(failed.get() || !ok);
                for &p in &pages {
                    region.protect(p, libc::PROT_READ | libc::PROT_WRITE);
                }
                el
            };
            let mut fault = || {
                let ok = pages.iter().all(|&p| region.protect(p, libc::PROT_READ));
                failed.set(failed.get() || !ok);
                COPIED.store(0, Ordering::Relaxed);
                let t = Instant::now();
                for &p in &pages {
                    // SAFETY: page `p` is ours; the write faults, the
                    // handler copies and unprotects it, the write lands.
                    unsafe { std::ptr::write_volatile(region.page(p), 2) };
                }
                let el = t.elapsed().as_secs_f64() * 1e6;
                // Pages left protected after a failed protect are restored.
                for &p in &pages {
                    region.protect(p, libc::PROT_READ | libc::PROT_WRITE);
                }
                el
            };
            let reps = h.reps(
                "us",
                Better::Lower,
                &mut [
                    ("memcpy of the dirty pages", &mut copy),
                    ("mprotect each dirty page", &mut protect),
                    ("first writes: fault, copy, unprotect", &mut fault),
                ],
            );
            if failed.get() {
                println!(
                    "copy-free pause, {} MiB, {label} dirty: mprotect failed (ENOMEM: \
                     vm.max_map_count reached by {} separate runs)",
                    size >> 20,
                    pages.len()
                );
                continue;
            }
            let case = format!("copy-free pause, {} MiB, {label} dirty", size >> 20);
            h.row(
                &reps,
                &case,
                "mprotect each dirty page",
                "memcpy of the dirty pages",
            );
            let case = format!("copy-free slowdown, {} MiB, {label} dirty", size >> 20);
            h.row(
                &reps,
                &case,
                "first writes: fault, copy, unprotect",
                "memcpy of the dirty pages",
            );
        }
    }
    h.finish();
}
