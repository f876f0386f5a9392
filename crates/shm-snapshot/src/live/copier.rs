//! The commit's copy on several threads: the dirty ranges are split into
//! chunks of about equal bytes, which the committing thread and helper
//! threads owned by the [`Client`](super::Client) claim one at a time.
//!
//! # Protocol
//!
//! A [`Copier`] owns `n` helper threads, started once and parked on a
//! condition variable (a futex) between commits: an idle helper never runs.
//! The shared `State` (under one mutex) holds the plan of the current copy
//! (its chunks), `next` (the first chunk nobody has claimed), `active`
//! (chunks helpers claimed and have not finished), `epoch` (bumped once per
//! copy) and `lost` (a helper died).
//!
//! 1. The committing thread has stored the odd `seq` and the stamps and run
//!    its Release fence ([`RawClient::publish_on`](super::client::RawClient)).
//! 2. Under the mutex it writes the plan, claims chunk 0 for itself and
//!    bumps `epoch`, then wakes as many helpers as the copy is worth. The
//!    unlock is a Release that each helper's lock (Acquire) pairs with:
//!    `seq`, the stamps and the plan happen before everything a helper does.
//! 3. Every thread then loops: under the mutex, claim chunk `next` (a
//!    helper also counts it in `active`), and copy it unlocked with the
//!    storage's Relaxed stores. A helper runs its own Release fence before
//!    each chunk: a host that reads a byte a helper copied and then runs its
//!    Acquire fence synchronises with that fence, and so sees the odd `seq`
//!    and the stamps (the committing thread's fence orders only its own
//!    later stores). A helper decrements `active` under the mutex after the
//!    chunk's last store.
//! 4. When no chunk is left, the committing thread waits until `active` is
//!    0. Its lock of the mutex pairs with each helper's unlock after a
//!    chunk, so every helper's copy happens before the Release store of the
//!    even `seq` that publishes the commit. A helper claims nothing once
//!    every chunk is claimed, so none touches the mapping after the commit
//!    returns.
//!
//! The committing thread never waits for a helper to start: a helper the
//! scheduler has not run yet claims nothing, and the committing thread copies
//! every chunk itself; it waits only for chunks a helper is copying.
//!
//! A crash (SIGKILL) anywhere in between kills the helpers with the process
//! and leaves `seq` odd with some chunks copied: the next client finishes the
//! commit from the work area, exactly as after a single-threaded copy cut
//! short. A helper that panics (a bug) sets `lost` on its way out; the
//! committing thread then copies every range itself (copying a range twice
//! writes the same bytes) and later commits copy on one thread.

use std::ops::Range;
use std::sync::PoisonError;

use shm_sync::atomic::{Ordering, fence};
use shm_sync::sync::{Arc, Condvar, Mutex};
use shm_sync::thread::JoinHandle;

use super::layout::Geometry;
use super::words::WordsMut;

/// The fewest bytes worth a part of their own, by default: below about
/// this, waking a parked helper (tens of microseconds on a busy machine)
/// costs as much as the copy it would take over.
pub(crate) const DEFAULT_PART_MIN: usize = 256 << 10;

/// The most threads one copy uses.
pub(crate) const MAX_THREADS: usize = 64;

/// The cores this process may run on: `available_parallelism`, which on
/// Linux is the size of the `sched_getaffinity` mask, lowered by a cgroup
/// CPU quota; 1 when it cannot be found. At most [`MAX_THREADS`].
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(MAX_THREADS)
}

/// Bytes of `dirty` clipped to the first `region` bytes (overlaps count twice).
pub(crate) fn clipped_bytes(dirty: &[Range<usize>], region: usize) -> usize {
    dirty
        .iter()
        .map(|r| r.end.min(region) - r.start.min(r.end.min(region)))
        .sum()
}

/// The dirty ranges split into parts: part `k` is
/// `ranges[bounds[k]..bounds[k + 1]]`.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    ranges: Vec<Range<usize>>,
    bounds: Vec<usize>,
}

impl Plan {
    /// Splits `dirty`, clipped to `region` bytes (empty ranges dropped), into
    /// at most `parts` parts of about equal bytes, in order. A range is cut
    /// only at a multiple of `grain` (a power of two) from the state's start,
    /// so a part may run up to `grain` bytes over its share.
    pub(crate) fn split(
        &mut self,
        dirty: &[Range<usize>],
        region: usize,
        parts: usize,
        grain: usize,
    ) {
        self.ranges.clear();
        self.bounds.clear();
        self.bounds.push(0);
        let share = clipped_bytes(dirty, region).div_ceil(parts.max(1)).max(1);
        // Bytes placed so far; part `k` ends where `done` reaches `(k + 1) * share`.
        let mut done = 0;
        for r in dirty {
            let end = r.end.min(region);
            let mut start = r.start.min(end);
            while start < end {
                let last = self.bounds.len() >= parts;
                let goal = self.bounds.len() * share;
                if !last && done >= goal && self.ranges.len() > self.bounds[self.bounds.len() - 1] {
                    self.bounds.push(self.ranges.len());
                    continue;
                }
                let cut = if last {
                    end
                } else {
                    let left = goal.saturating_sub(done).max(1);
                    (start + left).next_multiple_of(grain).clamp(start + 1, end)
                };
                self.ranges.push(start..cut);
                done += cut - start;
                start = cut;
            }
        }
        if self.ranges.len() > *self.bounds.last().unwrap_or(&0) {
            self.bounds.push(self.ranges.len());
        }
    }

    /// The number of parts (0 when nothing is to be copied).
    pub(crate) fn parts(&self) -> usize {
        self.bounds.len() - 1
    }

    /// Part `k`.
    pub(crate) fn part(&self, k: usize) -> &[Range<usize>] {
        &self.ranges[self.bounds[k]..self.bounds[k + 1]]
    }
}

/// Copies `ranges` (already clipped) of the work area into the committed
/// copy. Relaxed stores: published as the module's protocol says.
pub(crate) fn copy_ranges<W: WordsMut>(words: &W, geo: Geometry, ranges: &[Range<usize>]) {
    for r in ranges {
        let end = r.end.min(geo.region);
        let start = r.start.min(end);
        words.copy(geo.work + start, geo.committed + start, end - start);
    }
}

/// What the helpers and the committing thread share, under `Shared::state`.
#[derive(Debug, Default)]
struct State {
    /// Bumped once per copy handed out.
    epoch: u64,
    plan: Plan,
    /// The first chunk of `plan` nobody has claimed.
    next: usize,
    /// Chunks helpers have claimed and not finished copying.
    active: usize,
    /// A helper died: copy on one thread from now on.
    lost: bool,
    /// The copier is being dropped: helpers return.
    stop: bool,
}

impl State {
    /// Claims the next chunk into `into` (cleared first); `false` when none is left.
    fn claim(&mut self, into: &mut Vec<Range<usize>>) -> bool {
        if self.next >= self.plan.parts() {
            return false;
        }
        into.clear();
        into.extend_from_slice(self.plan.part(self.next));
        self.next += 1;
        true
    }
}

#[derive(Debug)]
struct Shared<W> {
    words: W,
    geo: Geometry,
    state: Mutex<State>,
    /// Helpers wait here for a new epoch (or `stop`).
    go: Condvar,
    /// The committing thread waits here for `pending == 0`.
    done: Condvar,
    /// Negative control of the loom models only: helpers skip their fence.
    #[cfg(shm_loom)]
    skip_fence: bool,
}

impl<W> Shared<W> {
    fn lock(&self) -> shm_sync::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Helper threads that copy chunks of each commit (see the module's protocol).
#[derive(Debug)]
pub(crate) struct Copier<W> {
    shared: Arc<Shared<W>>,
    helpers: Vec<JoinHandle<()>>,
    /// The committing thread's chunk; held for the whole copy, so two
    /// (overlapping, hence misused) commits never share the helpers.
    lead: Mutex<Vec<Range<usize>>>,
    /// The process that started the helpers (a forked child has none).
    pid: u32,
}

/// Chunks per thread a copy is split into: enough that a thread that starts
/// late, or is preempted, holds up the others by a fraction of the copy.
const CHUNKS_PER_THREAD: usize = 4;

/// Starts one helper thread.
#[cfg(not(shm_loom))]
fn spawn(f: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("shm-snap-copy".into())
        .spawn(f)
}

/// Starts one helper thread (a loom thread in the models).
#[cfg(shm_loom)]
#[allow(clippy::unnecessary_wraps, reason = "the std twin can fail")]
fn spawn(f: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    Ok(shm_sync::thread::spawn(f))
}

impl<W: WordsMut + Send + Sync + 'static> Copier<W> {
    /// Starts `helpers` threads copying between the areas of `words`, laid
    /// out as `geo`. A thread the system refuses is logged and done without.
    pub(crate) fn start(words: W, geo: Geometry, helpers: usize) -> Self {
        Self::build(words, geo, helpers, false)
    }

    /// [`Copier::start`], with the loom models' negative control.
    #[cfg_attr(not(shm_loom), allow(unused_variables))]
    pub(crate) fn build(words: W, geo: Geometry, helpers: usize, skip_fence: bool) -> Self {
        let shared = Arc::new(Shared {
            words,
            geo,
            state: Mutex::new(State::default()),
            go: Condvar::new(),
            done: Condvar::new(),
            #[cfg(shm_loom)]
            skip_fence,
        });
        let mut threads = Vec::with_capacity(helpers);
        for _ in 0..helpers {
            let shared = shared.clone();
            match spawn(move || helper(&shared)) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    tracing::warn!("copy helper thread refused ({e}); copying on fewer threads");
                    break;
                }
            }
        }
        Self {
            shared,
            helpers: threads,
            lead: Mutex::new(Vec::new()),
            pid: std::process::id(),
        }
    }
}

impl<W: WordsMut> Copier<W> {
    /// Threads a copy can use: the helpers and the committing thread.
    pub(crate) fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Copies `dirty` on up to `threads` threads: splits it into chunks,
    /// wakes `threads - 1` helpers and runs `lead` on each chunk this thread
    /// claims (at least the first), then waits for the chunks helpers are
    /// still copying. Returns `false`, having copied nothing, when the
    /// helpers cannot take it (fewer than two threads or chunks, a helper
    /// died, a forked child, or another copy in progress): the caller then
    /// copies on its own.
    pub(crate) fn copy(
        &self,
        dirty: &[Range<usize>],
        threads: usize,
        mut lead: impl FnMut(&[Range<usize>]),
    ) -> bool {
        let threads = threads.min(self.threads());
        if threads < 2 || self.pid != std::process::id() {
            return false;
        }
        let Ok(mut own) = self.lead.try_lock() else {
            return false;
        };
        let shared = &*self.shared;
        let mut st = shared.lock();
        if st.lost {
            return false;
        }
        let chunks = threads * CHUNKS_PER_THREAD;
        st.plan
            .split(dirty, shared.geo.region, chunks, shared.geo.page);
        if st.plan.parts() < 2 {
            return false;
        }
        st.next = 0;
        st.epoch += 1;
        st.claim(&mut own);
        // SYNC: the unlock (Release) pairs with each helper's lock in
        // `helper`: the caller's `seq`, stamps and this plan happen before
        // every chunk a helper copies.
        drop(st);
        for _ in 1..threads {
            shared.go.notify_one();
        }
        loop {
            lead(&own);
            if !shared.lock().claim(&mut own) {
                break;
            }
        }
        let mut st = shared.lock();
        while st.active > 0 {
            // SYNC: each wake-up re-locks (Acquire), pairing with the unlock
            // in `Done::drop`: a helper's chunk happens before this returns.
            st = shared.done.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        if st.lost {
            drop(st);
            tracing::error!("a copy helper thread died: copying its chunk on this thread");
            copy_ranges(&shared.words, shared.geo, dirty);
        }
        true
    }
}

impl<W> Drop for Copier<W> {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.go.notify_all();
        if self.pid != std::process::id() {
            // A forked child: the helpers are the parent's, not ours to join.
            std::mem::forget(std::mem::take(&mut self.helpers));
            return;
        }
        // Idle (no copy is in progress while the copier is dropped): each
        // returns as soon as it sees `stop`.
        for t in self.helpers.drain(..) {
            let _ = t.join();
        }
    }
}

/// Marks a helper's chunk done (also when it unwinds), waking the
/// committing thread after the last one.
struct Done<'a, W>(&'a Shared<W>);

impl<W> Drop for Done<'_, W> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        if std::thread::panicking() {
            st.lost = true;
        }
        st.active -= 1;
        let last = st.active == 0;
        // SYNC: the unlock (Release) pairs with the committing thread's
        // re-lock in `Copier::copy`: this chunk's copy happens before it.
        drop(st);
        if last {
            self.0.done.notify_all();
        }
    }
}

/// A helper: waits for each new epoch, then claims and copies chunks until
/// none is left.
fn helper<W: WordsMut>(shared: &Shared<W>) {
    let mut seen = 0;
    let mut mine = Vec::new();
    loop {
        let mut st = shared.lock();
        while st.epoch == seen && !st.stop {
            st = shared.go.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        if st.stop {
            return;
        }
        seen = st.epoch;
        while st.claim(&mut mine) {
            st.active += 1;
            drop(st);
            let done = Done(shared);
            #[cfg(shm_loom)]
            let skip = shared.skip_fence;
            #[cfg(not(shm_loom))]
            let skip = false;
            if !skip {
                // SYNC: Release fence, pairs with the host's Acquire fences
                // in `RawHost::copy` and `RawHost::copy_changed`: a host that
                // reads a byte of this chunk sees `seq` odd and the stamps,
                // which happen before this fence through the lock above.
                fence(Ordering::Release);
            }
            copy_ranges(&shared.words, shared.geo, &mine);
            drop(done);
            st = shared.lock();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Plan;
    use std::ops::Range;

    fn parts(p: &Plan) -> Vec<Vec<Range<usize>>> {
        (0..p.parts()).map(|k| p.part(k).to_vec()).collect()
    }

    #[test]
    fn split_cuts_one_long_range_at_the_grain() {
        let mut sut = Plan::default();
        sut.split(std::slice::from_ref(&(0..100)), 100, 3, 16);
        assert_eq!(parts(&sut), vec![vec![0..48], vec![48..80], vec![80..100]]);
    }

    #[test]
    fn split_balances_bytes_not_ranges() {
        let mut sut = Plan::default();
        sut.split(&[0..8, 16..24, 32..40, 64..128], 200, 2, 8);
        assert_eq!(
            parts(&sut),
            vec![vec![0..8, 16..24, 32..40, 64..88], vec![88..128]]
        );
    }

    #[test]
    fn split_clips_to_the_region_and_drops_empty_ranges() {
        let mut sut = Plan::default();
        sut.split(&[5..5, 90..300, 400..500], 100, 4, 8);
        assert_eq!(parts(&sut), vec![vec![90..96], vec![96..100]]);
        sut.split(&[], 100, 4, 8);
        assert_eq!(sut.parts(), 0);
    }

    proptest::proptest! {
        /// Any dirty list: the parts, in order, are exactly the clipped
        /// non-empty ranges (cut only at the grain), there are at most
        /// `parts` of them, none empty, and none over its share by more than
        /// a grain.
        #[test]
        fn split_covers_every_byte_once_in_balanced_parts(
            dirty in proptest::collection::vec((0usize..5000, 0usize..3000), 0..20),
            region in 1usize..4500,
            parts in 1usize..6,
            grain in proptest::sample::select(vec![1usize, 8, 64, 4096]),
        ) {
            let dirty: Vec<Range<usize>> = dirty.iter().map(|&(s, l)| s..s + l).collect();
            let mut sut = Plan::default();
            sut.split(&dirty, region, parts, grain);
            let clipped = dirty
                .iter()
                .map(|r| r.start.min(region)..r.end.min(region))
                .filter(|r| !r.is_empty());
            let mut pieces = (0..sut.parts()).flat_map(|k| sut.part(k).iter().cloned());
            // Each clipped range is a run of pieces, cut at the grain.
            for r in clipped {
                let mut at = r.start;
                while at < r.end {
                    let p = pieces.next();
                    proptest::prop_assert_eq!(p.as_ref().map(|p| p.start), Some(at));
                    let p = p.unwrap();
                    proptest::prop_assert!(p.end <= r.end && p.start < p.end);
                    proptest::prop_assert!(p.end == r.end || p.end % grain == 0);
                    at = p.end;
                }
            }
            proptest::prop_assert_eq!(pieces.next(), None);
            let total = super::clipped_bytes(&dirty, region);
            proptest::prop_assert!(sut.parts() <= parts);
            proptest::prop_assert_eq!(sut.parts() == 0, total == 0);
            for k in 0..sut.parts() {
                let bytes: usize = sut.part(k).iter().map(ExactSizeIterator::len).sum();
                proptest::prop_assert!(bytes > 0);
                proptest::prop_assert!(bytes <= total.div_ceil(parts) + grain, "part {} has {} bytes", k, bytes);
            }
        }
    }
}
