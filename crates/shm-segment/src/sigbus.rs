//! Surviving the truncation of a named segment: a `SIGBUS` handler for
//! registered mappings.
//!
//! A named object in `/dev/shm` cannot be sealed, so any process allowed to
//! open it can `ftruncate` it; every access of an attached process to a page
//! beyond the new end then raises `SIGBUS`, whose default action kills it.
//! Mappings of such files are registered here ([`Guard::register`]); the
//! handler, installed once on the first registration, turns a fault inside a
//! registered range into a recoverable event:
//!
//! 1. it looks the faulting address (`si_addr`) up in a fixed array of slots
//!    (no allocation, no lock: every field is an atomic, and a slot is read
//!    under a sequence counter so a slot being reused is never half-read);
//! 2. if a registered mapping holds the address, it sets that mapping's
//!    *truncated* flag, then maps private anonymous zero pages over the whole
//!    mapping (`mmap(MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS)`, with the
//!    mapping's own protection) and returns: the faulting access is retried
//!    and reads zeros (or writes to a private page nobody else sees);
//! 3. any other `SIGBUS` is chained to the disposition that was in place when
//!    the handler was installed (Rust's runtime installs one that reports
//!    stack overflows and otherwise restores the default), or, if that was
//!    the default, the default action is restored and the fault happens
//!    again: a genuine bug still kills the process with `SIGBUS`.
//!
//! The handler calls only `mmap`, `sigaction` and `raise` (plain system calls;
//! `sigaction` and `raise` are on the async-signal-safe list of
//! signal-safety(7), and `mmap` is a single system call that takes no
//! user-space lock) and touches only lock-free atomics, so it is
//! async-signal-safe. It saves and restores `errno`.
//!
//! Callers of the mapping check [`Guard::is_truncated`] *after* their
//! accesses: zeros read after the replacement are then never taken for data.
//!
//! # Orderings
//!
//! - Unregistering against a handler in flight is a store-load (Dekker)
//!   pattern: [`Guard`]'s drop empties the slot, then loads `IN_HANDLER`; the
//!   handler increments `IN_HANDLER`, then reads the slots. A SeqCst fence on
//!   each side, between the two steps, gives the total order that makes one
//!   of the two loads see the other side's store. These two fences are the
//!   module's only SeqCst.
//! - The *truncated* flag is ordered by the kernel: the handler stores it
//!   before its `mmap`, and a thread can only reach the zero pages through
//!   page-table entries created after that system call; an Acquire fence in
//!   [`Guard::is_truncated`] keeps the caller's earlier reads of the mapping
//!   before its load of the flag.
//!
//! # Safety
//!
//! `sigaction` is called through `libc` because rustix offers no stable
//! `sigaction` (only the `runtime` module, documented as unsafe for programs
//! that use std's runtime). The handler's `MAP_FIXED` replaces only a range
//! that is registered, and a range is unregistered *before* it is unmapped,
//! with [`Guard`]'s drop waiting until no handler that might have read the
//! slot is still running: the handler never maps over memory that has been
//! given to someone else.
#![allow(unsafe_code)]

use core::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering, fence}; // atomics-ok: process-local, read by a signal handler
use std::sync::Once;

use rustix::mm::{MapFlags, ProtFlags};

/// How many mappings can be registered at once.
pub(crate) const SLOTS: usize = 1024;

/// One registered mapping. Written only by the registering thread while
/// `seq` is odd; read by the handler, which retries nothing and ignores a
/// slot whose `seq` was odd or changed around its reads.
struct Slot {
    /// Claimed by a [`Guard`] (compare-exchange false → true).
    used: AtomicBool,
    /// Sequence counter: odd while `start`/`len`/`writable` change.
    seq: AtomicUsize,
    /// First byte of the mapping.
    start: AtomicUsize,
    /// Length in bytes; 0: no mapping.
    len: AtomicUsize,
    /// Whether the mapping is `PROT_WRITE`.
    writable: AtomicBool,
    /// Set by the handler when the mapping was replaced by zero pages.
    truncated: AtomicBool,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            used: AtomicBool::new(false),
            seq: AtomicUsize::new(0),
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            writable: AtomicBool::new(false),
            truncated: AtomicBool::new(false),
        }
    }

    /// Writes the range under the sequence counter (the owner only).
    fn set(&self, start: usize, len: usize, writable: bool) {
        // Relaxed: the counter orders the fields through the fences below.
        self.seq.fetch_add(1, Ordering::Relaxed);
        // SYNC: Release fence, pairs with the handler's Acquire fence in
        // `read`: a handler that saw any field written below also sees the
        // odd counter (seqlock writer side).
        fence(Ordering::Release);
        // Relaxed: published by the Release increment below.
        self.start.store(start, Ordering::Relaxed);
        self.len.store(len, Ordering::Relaxed);
        self.writable.store(writable, Ordering::Relaxed);
        // SYNC: Release, pairs with the handler's Acquire load of `seq`.
        self.seq.fetch_add(1, Ordering::Release);
    }

    /// A consistent `(start, len, writable)`, or `None` while it changes.
    fn read(&self) -> Option<(usize, usize, bool)> {
        // SYNC: Acquire, pairs with the Release increment ending `set`.
        let before = self.seq.load(Ordering::Acquire);
        if before % 2 == 1 {
            return None;
        }
        // Relaxed: validated by the counter re-check below.
        let start = self.start.load(Ordering::Relaxed);
        let len = self.len.load(Ordering::Relaxed);
        let writable = self.writable.load(Ordering::Relaxed);
        // SYNC: Acquire fence, pairs with the Release fence in `set`: if any
        // load above saw a newer field, the re-load below sees the newer counter.
        fence(Ordering::Acquire);
        (self.seq.load(Ordering::Relaxed) == before).then_some((start, len, writable))
    }
}

static REGISTRY: [Slot; SLOTS] = [const { Slot::new() }; SLOTS];
/// Handlers currently between their registry lookup and their return.
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);
/// The disposition found when installing ours: `sa_sigaction` and `sa_flags`.
static PREV_ACTION: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
static PREV_FLAGS: AtomicI32 = AtomicI32::new(0);
static INSTALL: Once = Once::new();
/// Whether our handler is in place (false if `sigaction` failed).
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The registration of one mapping; unregisters on drop.
#[derive(Debug)]
pub(crate) struct Guard {
    slot: usize,
}

/// The registry is full or the handler could not be installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GuardError {
    /// Every slot is in use.
    Full,
    /// `sigaction` failed with this errno.
    Install(i32),
}

impl Guard {
    /// Registers `[start, start + len)`, mapped with write permission if
    /// `writable`, installing the handler first if needed.
    pub(crate) fn register(start: usize, len: usize, writable: bool) -> Result<Guard, GuardError> {
        install()?;
        for (i, slot) in REGISTRY.iter().enumerate() {
            // Acquire: pairs with the Release store of a previous owner's drop,
            // so its last writes to the slot happen before ours.
            if slot
                .used
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                // Relaxed: published with the range by the Release increment
                // ending `set` below, which pairs with the handler's Acquire
                // load of `seq`: a handler that finds our range stores `true`
                // after this `false`. A previous owner's handler stored its
                // `true` before its Release decrement of IN_HANDLER, which the
                // owner's drop waited for before releasing the slot (Release
                // store of `used`, our Acquire claim above): it cannot land
                // after this store.
                slot.truncated.store(false, Ordering::Relaxed);
                slot.set(start, len, writable);
                return Ok(Guard { slot: i });
            }
        }
        Err(GuardError::Full)
    }

    /// Whether the handler replaced this mapping with zero pages.
    pub(crate) fn is_truncated(&self) -> bool {
        // SYNC: Acquire fence: keeps the caller's earlier reads of the
        // mapping before the load of the flag below. A read that returned a
        // replacement zero page went through a page-table entry made by the
        // handler's `mmap` or after it, and the handler stored the flag before
        // that system call (see `on_sigbus`): the load, kept after the read,
        // sees `true`. (SeqCst would add nothing: a SeqCst load does not keep
        // earlier loads before it, and there is no store-load pattern here.
        // Writes that went to the zero pages need no check: they are lost as
        // they would be had the truncation come just after them.)
        fence(Ordering::Acquire);
        // Relaxed: ordered by the fence above.
        REGISTRY[self.slot].truncated.load(Ordering::Relaxed)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let slot = &REGISTRY[self.slot];
        slot.set(0, 0, false);
        // A handler that read the old range before `set` may still be about to
        // map over it: wait for every handler in flight before the caller
        // unmaps (handlers never block, so this ends).
        // SYNC: SeqCst fence, pairs with the handler's SeqCst fence between
        // its increment of IN_HANDLER and its lookup. A store-load (Dekker)
        // pattern (our `set`, then our load of IN_HANDLER; its increment,
        // then its loads of the slot), so it needs the fences' total order:
        // either the load below sees the handler counted, or its lookup sees
        // the slot emptied by `set`.
        fence(Ordering::SeqCst);
        // SYNC: Acquire, pairs with the handlers' Release decrement after
        // their `mmap`: a handler we waited for is done with the range.
        while IN_HANDLER.load(Ordering::Acquire) != 0 {
            std::thread::yield_now();
        }
        // SYNC: Release, pairs with the Acquire claim in `register`.
        slot.used.store(false, Ordering::Release);
    }
}

fn install() -> Result<(), GuardError> {
    INSTALL.call_once(|| {
        // SAFETY: `sigaction` with a null new action only reads the current
        // disposition into `prev`, a valid, writable, zeroed `struct sigaction`
        // ("If act is NULL ... the current action is returned in oldact",
        // sigaction(2)); all-zero bytes are a valid `struct sigaction`.
        let mut prev: libc::sigaction = unsafe { core::mem::zeroed() };
        // SAFETY: see above.
        if unsafe { libc::sigaction(libc::SIGBUS, core::ptr::null(), &raw mut prev) } != 0 {
            return;
        }
        // Relaxed: published by the Release store of INSTALLED and, for the
        // handler, by `sigaction` itself (a system call made after these stores).
        PREV_ACTION.store(prev.sa_sigaction, Ordering::Relaxed);
        PREV_FLAGS.store(prev.sa_flags, Ordering::Relaxed);
        // SAFETY: all-zero bytes are a valid `struct sigaction`.
        let mut action: libc::sigaction = unsafe { core::mem::zeroed() };
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            on_sigbus;
        action.sa_sigaction = handler as libc::sighandler_t;
        // SA_SIGINFO: we need `si_addr`. SA_ONSTACK: run on the alternate
        // stack where the thread has one (std sets one up for its threads).
        // No SA_NODEFER: a second SIGBUS inside the handler is a bug and is fatal.
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: `action.sa_mask` is a valid sigset to initialise
        // ("sigemptyset() initializes the signal set given by set to empty",
        // sigsetops(3)).
        unsafe { libc::sigemptyset(&raw mut action.sa_mask) };
        // SAFETY: `action` is a fully initialised `struct sigaction` whose
        // handler is an `extern "C" fn(c_int, *mut siginfo_t, *mut c_void)`,
        // the signature SA_SIGINFO requires (sigaction(2)); the old action is
        // not asked for (null).
        if unsafe { libc::sigaction(libc::SIGBUS, &raw const action, core::ptr::null_mut()) } == 0 {
            // SYNC: Release, pairs with the Acquire load below.
            INSTALLED.store(true, Ordering::Release);
        }
    });
    // SYNC: Acquire, pairs with the Release store in the closure above
    // (`call_once` also orders it for callers that did not run it).
    if INSTALLED.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(GuardError::Install(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ))
    }
}

/// The registered mapping holding `addr`: `(slot, start, len, writable)`.
fn lookup(addr: usize) -> Option<(usize, usize, usize, bool)> {
    REGISTRY.iter().enumerate().find_map(|(i, slot)| {
        let (start, len, writable) = slot.read()?;
        (len != 0 && addr >= start && addr - start < len).then_some((i, start, len, writable))
    })
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let errno_at = errno_location();
    // SAFETY: `errno_at` is this thread's errno, valid for the thread's life;
    // reading it now and writing it back on exit keeps errno unchanged for the
    // interrupted code (signal-safety(7): "save errno on entry ... and
    // restore it on exit").
    let errno = unsafe { *errno_at };
    // Relaxed: ordered before the lookup by the fence below; the
    // read-modify-write alone keeps concurrent handlers' counts.
    IN_HANDLER.fetch_add(1, Ordering::Relaxed);
    // SYNC: SeqCst fence, pairs with the SeqCst fence in `Guard::drop`
    // (a store-load pattern, see there): either `Guard::drop` sees our
    // increment and waits for us, or our lookup sees its emptied slot.
    fence(Ordering::SeqCst);
    // SAFETY: with SA_SIGINFO the kernel passes a valid `siginfo_t` that
    // lives until the handler returns ("siginfo_t ... pointed to by the
    // second argument", sigaction(2)).
    let siginfo = unsafe { &*info };
    // SAFETY: for SIGBUS the kernel fills in `si_addr` (sigaction(2):
    // "SIGILL, SIGFPE, SIGSEGV, SIGBUS, and SIGTRAP fill in si_addr"), so the
    // union field read is initialised; the address is only compared.
    let addr = unsafe { siginfo.si_addr() } as usize;
    let code = siginfo.si_code;
    // si_code > 0: raised by the kernel for a fault, not sent by a process.
    let hit = if code > 0 { lookup(addr) } else { None };
    if let Some((slot, start, len, writable)) = hit {
        // Relaxed: ordered by the `mmap` below, not by this access. The
        // store precedes the system call, and no thread can read a zero page
        // before the call has replaced the range (the kernel's address-space
        // lock and TLB invalidation come first); pairs with the Acquire
        // fence in `Guard::is_truncated`, which keeps a caller's read of a
        // zero page before its load of this flag.
        REGISTRY[slot].truncated.store(true, Ordering::Relaxed);
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: `[start, start + len)` is a live mapping registered by a
        // `Guard` (read consistently under its sequence counter), and it stays
        // mapped until we return: `Guard::drop` unregisters it and then waits
        // for IN_HANDLER to drop to zero before the mapping is unmapped.
        // MAP_FIXED replaces exactly that range ("If the memory region
        // specified by addr and length overlaps pages of any existing
        // mapping(s), then the overlapped part of the existing mapping(s)
        // will be discarded", mmap(2)); nothing else is touched.
        let replaced = unsafe {
            rustix::mm::mmap_anonymous(
                start as *mut libc::c_void,
                len,
                prot,
                MapFlags::PRIVATE | MapFlags::FIXED,
            )
        };
        // SYNC: Release, pairs with the Acquire load in `Guard::drop`: our
        // `mmap` over the range comes before the owner may unmap it.
        IN_HANDLER.fetch_sub(1, Ordering::Release);
        if replaced.is_ok() {
            // SAFETY: as on entry.
            unsafe { *errno_at = errno };
            return;
        }
        // The zero pages could not be mapped: fall through to the previous
        // disposition, as for a fault we do not own.
    } else {
        // SYNC: Release, pairs with the Acquire load in `Guard::drop`: our
        // lookup's reads of the slot come before its reuse.
        IN_HANDLER.fetch_sub(1, Ordering::Release);
    }
    chain(sig, siginfo.si_code, info, ctx);
    // SAFETY: as on entry.
    unsafe { *errno_at = errno };
}

/// This thread's `errno`.
fn errno_location() -> *mut libc::c_int {
    // SAFETY: `__errno_location` has no preconditions; it returns the address
    // of the calling thread's errno (an async-signal-safe read of a
    // thread-local address).
    unsafe { libc::__errno_location() }
}

/// Hands a SIGBUS we do not own to the disposition we replaced.
#[allow(
    clippy::disallowed_methods,
    reason = "a handler address (usize) to a fn pointer has no checked conversion"
)]
fn chain(sig: libc::c_int, code: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // Relaxed: written before our handler was installed (see `install`).
    let prev = PREV_ACTION.load(Ordering::Relaxed);
    let flags = PREV_FLAGS.load(Ordering::Relaxed);
    if prev == libc::SIG_DFL || prev == libc::SIG_IGN {
        // Restore the default action. A fault re-executes the faulting
        // instruction on return and dies of SIGBUS; a SIGBUS sent by a
        // process is raised again and delivered once we return (the signal
        // is blocked while its handler runs). Ignoring a synchronous SIGBUS is
        // not possible either way: the kernel forces the default action.
        // SAFETY: all-zero bytes are a valid `struct sigaction`; SIG_DFL with
        // an empty mask and no flags is a valid disposition; `sigaction` and
        // `raise` are async-signal-safe (signal-safety(7) lists both).
        let mut dfl: libc::sigaction = unsafe { core::mem::zeroed() };
        dfl.sa_sigaction = libc::SIG_DFL;
        // SAFETY: see above.
        unsafe { libc::sigaction(libc::SIGBUS, &raw const dfl, core::ptr::null_mut()) };
        if code <= 0 {
            // SAFETY: see above.
            unsafe { libc::raise(libc::SIGBUS) };
        }
    } else if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: `prev` was installed with SA_SIGINFO, so it is an
        // `extern "C" fn(c_int, *mut siginfo_t, *mut c_void)` (sigaction(2));
        // we pass it the kernel's own arguments, as the kernel would.
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { core::mem::transmute(prev) };
        handler(sig, info, ctx);
    } else {
        // SAFETY: without SA_SIGINFO the handler is an `extern "C" fn(c_int)`
        // (sigaction(2): "sa_handler specifies the action ... a pointer to a
        // signal handling function. This function receives the signal number
        // as its only argument").
        let handler: extern "C" fn(libc::c_int) = unsafe { core::mem::transmute(prev) };
        handler(sig);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn slots_are_claimed_released_and_reused() {
        let a = super::Guard::register(0x1000, 0x2000, true).unwrap();
        let b = super::Guard::register(0x8000, 0x1000, false).unwrap();
        assert_ne!(a.slot, b.slot);
        assert_eq!(super::lookup(0x2fff).map(|h| h.0), Some(a.slot));
        assert_eq!(super::lookup(0x3000), None, "one past the end");
        assert_eq!(super::lookup(0x8000).map(|h| h.3), Some(false));
        let freed = a.slot;
        drop(a);
        assert_eq!(super::lookup(0x1000), None, "unregistered");
        let c = super::Guard::register(0x1000, 0x1000, true).unwrap();
        assert_eq!(c.slot, freed, "a freed slot is reused");
        assert!(!c.is_truncated());
    }
}
