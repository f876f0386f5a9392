//! The commit's copy on several threads: the dirty ranges are split into
//! parts of about equal bytes; the committing thread copies the first part
//! and helper threads owned by the [`Client`](super::Client) copy the others.
//!
//! # Protocol
//!
//! A [`Copier`] owns `n` helper threads, started once and parked on a
//! condition variable (a futex) between commits: an idle helper never runs.
//! The shared [`State`] (under one mutex) holds the plan of the current copy,
//! its `epoch` (bumped once per copy), `pending` (helpers whose part is not
//! yet copied) and `lost` (a helper died).
//!
//! 1. The committing thread has stored the odd `seq` and the stamps and run
//!    its Release fence ([`RawClient::publish`](super::client::RawClient)).
//! 2. Under the mutex it writes the plan, sets `pending` and bumps `epoch`,
//!    then wakes the helpers. The unlock is a Release that the helpers'
//!    lock (Acquire) pairs with: `seq`, the stamps and the plan happen
//!    before everything a helper does with its part.
//! 3. Each helper whose index has a part copies it with the storage's
//!    Relaxed stores, after its own Release fence. A host that reads a byte
//!    a helper copied and then runs its Acquire fence synchronises with that
//!    fence, and so sees the odd `seq` and the stamps (the committing
//!    thread's fence orders only the committing thread's own later stores).
//! 4. The committing thread copies part 0, then waits until `pending` is 0.
//!    Each helper decrements `pending` under the mutex after its last store;
//!    the committing thread's lock of the mutex pairs with that unlock, so
//!    every helper's copy happens before the Release store of the even
//!    `seq` that publishes the commit. No helper touches the mapping after
//!    its decrement, so none touches it after the commit returns.
//!
//! A crash (SIGKILL) anywhere in between kills the helpers with the process
//! and leaves `seq` odd with some parts copied: the next client finishes the
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
    /// Helpers whose part of the current copy is not copied yet.
    pending: usize,
    /// A helper died: copy on one thread from now on.
    lost: bool,
    /// The copier is being dropped: helpers return.
    stop: bool,
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

/// Helper threads that copy parts of each commit (see the module's protocol).
#[derive(Debug)]
pub(crate) struct Copier<W> {
    shared: Arc<Shared<W>>,
    helpers: Vec<JoinHandle<()>>,
    /// The committing thread's part; held for the whole copy, so two
    /// (overlapping, hence misused) commits never share the helpers.
    lead: Mutex<Vec<Range<usize>>>,
    /// The process that started the helpers (a forked child has none).
    pid: u32,
}

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
        for index in 1..=helpers {
            let shared = shared.clone();
            match spawn(move || helper(&shared, index)) {
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

    /// Copies `dirty` on up to `parts` threads: hands parts 1.. to the
    /// helpers, runs `lead` on part 0 in this thread, then waits for every
    /// helper. Returns `false`, having copied nothing, when the helpers
    /// cannot take it (fewer than two parts, a helper died, a forked child,
    /// or another copy in progress): the caller then copies on its own.
    pub(crate) fn copy(
        &self,
        dirty: &[Range<usize>],
        parts: usize,
        lead: impl FnOnce(&[Range<usize>]),
    ) -> bool {
        let parts = parts.min(self.threads());
        if parts < 2 || self.pid != std::process::id() {
            return false;
        }
        let Ok(mut own) = self.lead.try_lock() else {
            return false;
        };
        let mut st = self.shared.lock();
        if st.lost {
            return false;
        }
        st.plan
            .split(dirty, self.shared.geo.region, parts, self.shared.geo.page);
        if st.plan.parts() < 2 {
            return false;
        }
        own.clear();
        own.extend_from_slice(st.plan.part(0));
        st.pending = st.plan.parts() - 1;
        st.epoch += 1;
        // SYNC: the unlock (Release) pairs with each helper's lock in
        // `helper`: the caller's `seq`, stamps and this plan happen before
        // the helper's copy.
        drop(st);
        self.shared.go.notify_all();
        lead(&own);
        let mut st = self.shared.lock();
        while st.pending > 0 {
            // SYNC: each wake-up re-locks (Acquire), pairing with the unlock
            // in `Done::drop`: a helper's copy happens before this returns.
            st = self
                .shared
                .done
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if st.lost {
            drop(st);
            tracing::error!("a copy helper thread died: copying its part on this thread");
            copy_ranges(&self.shared.words, self.shared.geo, dirty);
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

/// Marks a helper's part done (also when it unwinds), waking the
/// committing thread after the last one.
struct Done<'a, W>(&'a Shared<W>);

impl<W> Drop for Done<'_, W> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        if std::thread::panicking() {
            st.lost = true;
        }
        st.pending -= 1;
        let last = st.pending == 0;
        // SYNC: the unlock (Release) pairs with the committing thread's
        // re-lock in `Copier::copy`: this helper's copy happens before it.
        drop(st);
        if last {
            self.0.done.notify_all();
        }
    }
}

/// Helper `index` (1..): waits for each new epoch and copies its part of it.
fn helper<W: WordsMut>(shared: &Shared<W>, index: usize) {
    let mut seen = 0;
    let mut mine = Vec::new();
    loop {
        {
            let mut st = shared.lock();
            while st.epoch == seen && !st.stop {
                st = shared.go.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            if st.stop {
                return;
            }
            seen = st.epoch;
            if index >= st.plan.parts() {
                continue;
            }
            mine.clear();
            mine.extend_from_slice(st.plan.part(index));
        }
        let done = Done(shared);
        #[cfg(shm_loom)]
        let skip = shared.skip_fence;
        #[cfg(not(shm_loom))]
        let skip = false;
        if !skip {
            // SYNC: Release fence, pairs with the host's Acquire fences in
            // `RawHost::copy` and `RawHost::copy_changed`: a host that reads
            // a byte of this copy sees `seq` odd and the stamps, which
            // happen before this fence through the lock above.
            fence(Ordering::Release);
        }
        copy_ranges(&shared.words, shared.geo, &mine);
        drop(done);
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
