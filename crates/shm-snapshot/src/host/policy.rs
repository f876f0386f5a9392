//! When the host writes, warns and retries: the write-rate limit, the lag
//! of FILE behind the live state, the compaction back-off after a full disk,
//! and the rate limit on repeated error messages. Pure logic over
//! [`Instant`]s handed in, so every rule is tested without a clock.

use std::fmt;
use std::time::{Duration, Instant};

/// The write-rate limit: after a snapshot that started at `t` and wrote `n`
/// bytes, the next periodic one waits until `t + n / rate`. The average write
/// rate therefore stays at or below `rate`; the snapshot at the program's
/// exit is never delayed.
#[derive(Debug)]
pub(crate) struct RateLimit {
    /// Bytes per second; `None`: unlimited.
    rate: Option<u64>,
    /// The earliest start of the next periodic snapshot.
    next: Option<Instant>,
}

impl RateLimit {
    /// A limit of `rate` bytes per second (`None` or 0: unlimited).
    pub(crate) fn new(rate: Option<u64>) -> Self {
        Self {
            rate: rate.filter(|&r| r > 0),
            next: None,
        }
    }

    /// Whether a periodic snapshot may start at `now`.
    pub(crate) fn ready(&self, now: Instant) -> bool {
        self.next.is_none_or(|t| now >= t)
    }

    /// Records a snapshot that started at `started` and wrote `bytes`.
    pub(crate) fn wrote(&mut self, started: Instant, bytes: u64) {
        if let Some(rate) = self.rate {
            #[allow(clippy::cast_precision_loss)] // byte counts far below 2^52
            let wait =
                Duration::try_from_secs_f64(bytes as f64 / rate as f64).unwrap_or(Duration::MAX);
            self.next = Some(started.checked_add(wait).unwrap_or(started));
        }
    }
}

/// How far FILE is behind the live commit generation, and the largest lag seen.
#[derive(Debug)]
pub(crate) struct Lag {
    /// Warn once FILE has been behind this long (and at most this often).
    warn_after: Duration,
    /// When the host first saw a commit that is not yet on disk.
    behind_since: Option<Instant>,
    last_warned: Option<Instant>,
    max_generations: u64,
    max_time: Duration,
}

/// A warning that FILE has been behind the live state for too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LagWarning {
    /// The live generation.
    pub(crate) live: u64,
    /// FILE's generation.
    pub(crate) durable: u64,
    /// How long FILE has been behind.
    pub(crate) behind: Duration,
}

impl fmt::Display for LagWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lag: the file is {} generations ({:.1}s) behind the live state (file at {}, live at {})",
            self.live - self.durable,
            self.behind.as_secs_f64(),
            self.durable,
            self.live
        )
    }
}

impl Lag {
    /// Tracks the lag, warning after `warn_after`.
    pub(crate) fn new(warn_after: Duration) -> Self {
        Self {
            warn_after,
            behind_since: None,
            last_warned: None,
            max_generations: 0,
            max_time: Duration::ZERO,
        }
    }

    /// Records an observation; returns a warning when the lag has exceeded
    /// `warn_after` (at most once per `warn_after`).
    pub(crate) fn observe(&mut self, now: Instant, live: u64, durable: u64) -> Option<LagWarning> {
        if live <= durable {
            self.behind_since = None;
            return None;
        }
        let since = *self.behind_since.get_or_insert(now);
        let behind = now.saturating_duration_since(since);
        self.max_generations = self.max_generations.max(live - durable);
        self.max_time = self.max_time.max(behind);
        let due = self
            .last_warned
            .is_none_or(|t| now.saturating_duration_since(t) >= self.warn_after);
        if behind >= self.warn_after && due {
            self.last_warned = Some(now);
            return Some(LagWarning {
                live,
                durable,
                behind,
            });
        }
        None
    }

    /// FILE now holds what was committed before `copied` (when a snapshot's
    /// copy began): if the live state is still ahead (commits arrived during
    /// the snapshot), FILE has been behind at most since then; otherwise it
    /// is caught up.
    pub(crate) fn caught_up(&mut self, live: u64, durable: u64, copied: Instant) {
        self.behind_since = (live > durable).then_some(copied);
    }

    /// Whether FILE is known to be behind (a commit was seen that FILE
    /// does not hold yet).
    pub(crate) fn behind(&self) -> bool {
        self.behind_since.is_some()
    }

    /// The largest lag seen, in generations.
    pub(crate) fn max_generations(&self) -> u64 {
        self.max_generations
    }

    /// The longest time FILE was behind.
    pub(crate) fn max_time(&self) -> Duration {
        self.max_time
    }
}

/// Compaction after it failed on a full disk: retrying after every snapshot
/// would rewrite the whole image into a full disk again and again, so the
/// next attempt waits 1 s, then 2 s, doubling up to 5 min; a success
/// starts over.
#[derive(Debug)]
pub(crate) struct Backoff {
    /// No attempt before then.
    after: Option<Instant>,
    /// The wait after the next failure.
    wait: Duration,
}

impl Backoff {
    /// The first wait.
    pub(crate) const FIRST: Duration = Duration::from_secs(1);
    /// The longest wait.
    pub(crate) const MAX: Duration = Duration::from_secs(300);

    pub(crate) fn new() -> Self {
        Self {
            after: None,
            wait: Self::FIRST,
        }
    }

    /// Whether an attempt may be made at `now`.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.after.is_none_or(|t| now >= t)
    }

    /// Records a failure at `now`; returns the wait before the next attempt.
    pub(crate) fn failed(&mut self, now: Instant) -> Duration {
        let wait = self.wait;
        self.after = Some(now.checked_add(wait).unwrap_or(now));
        self.wait = (wait * 2).min(Self::MAX);
        wait
    }

    /// Records a success: the next failure waits [`Backoff::FIRST`] again.
    pub(crate) fn succeeded(&mut self) {
        *self = Self::new();
    }
}

/// Error messages are logged, but the same one at most every
/// [`Repeats::EVERY`]: a host that fails every interval the same way would
/// otherwise fill the log.
#[derive(Debug, Default)]
pub(crate) struct Repeats {
    /// The last message logged, and when.
    last: Option<(String, Instant)>,
}

impl Repeats {
    /// The shortest time between two identical messages.
    pub(crate) const EVERY: Duration = Duration::from_secs(10);

    /// Whether `message` is to be logged at `now` (and records it if so).
    pub(crate) fn due(&mut self, now: Instant, message: &str) -> bool {
        if let Some((last, at)) = &self.last
            && last == message
            && now.saturating_duration_since(*at) < Self::EVERY
        {
            return false;
        }
        self.last = Some((message.to_owned(), now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn rate_limit_spaces_snapshots_by_bytes_over_rate() {
        let t0 = Instant::now();
        let mut none = RateLimit::new(None);
        none.wrote(t0, 1 << 30);
        assert!(none.ready(t0));
        let mut sut = RateLimit::new(Some(1000));
        assert!(sut.ready(t0));
        sut.wrote(t0, 5000);
        assert!(!sut.ready(t0 + Duration::from_millis(4999)));
        assert!(sut.ready(t0 + s(5)));
        // The wait counts from the snapshot's start, not from its end.
        sut.wrote(t0 + s(5), 500);
        assert!(sut.ready(t0 + Duration::from_millis(5500)));
    }

    #[test]
    fn rate_limit_of_zero_is_unlimited() {
        let t0 = Instant::now();
        let mut sut = RateLimit::new(Some(0));
        sut.wrote(t0, 1 << 30);
        assert!(sut.ready(t0));
    }

    #[test]
    fn lag_is_tracked_and_warned_once_per_threshold() {
        let t0 = Instant::now();
        let mut sut = Lag::new(s(10));
        assert_eq!(sut.observe(t0, 5, 5), None);
        assert_eq!(sut.observe(t0 + s(1), 7, 5), None);
        assert_eq!(sut.observe(t0 + s(10), 9, 5), None);
        let w = sut
            .observe(t0 + s(11), 12, 5)
            .expect("a warning after 10 s");
        assert_eq!(
            w.to_string(),
            "lag: the file is 7 generations (10.0s) behind the live state (file at 5, live at 12)"
        );
        assert_eq!(sut.observe(t0 + s(12), 13, 5), None, "warned 1 s ago");
        assert!(sut.observe(t0 + s(21), 14, 5).is_some());
        // Caught up: the clock restarts.
        assert_eq!(sut.observe(t0 + s(22), 14, 14), None);
        assert_eq!(sut.observe(t0 + s(23), 15, 14), None);
        assert_eq!((sut.max_generations(), sut.max_time()), (9, s(20)));
    }

    #[test]
    fn compaction_backoff_doubles_to_five_minutes_and_resets() {
        let t0 = Instant::now();
        let mut sut = Backoff::new();
        assert!(sut.due(t0));
        let waits: Vec<u64> = (0..12).map(|_| sut.failed(t0).as_secs()).collect();
        assert_eq!(
            waits,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300],
            "doubling from 1 s, at most 5 min"
        );
        assert!(!sut.due(t0 + s(299)));
        assert!(sut.due(t0 + s(300)));
        sut.succeeded();
        assert!(sut.due(t0));
        assert_eq!(sut.failed(t0), s(1));
        assert!(!sut.due(t0 + Duration::from_millis(999)));
        assert!(sut.due(t0 + s(1)));
    }

    #[test]
    fn repeated_messages_are_logged_at_most_every_ten_seconds() {
        let t0 = Instant::now();
        let mut sut = Repeats::default();
        assert!(sut.due(t0, "a"));
        assert!(!sut.due(t0 + s(9), "a"));
        assert!(sut.due(t0 + s(9), "b"), "a new message is logged at once");
        assert!(sut.due(t0 + s(9), "a"), "a after b is new again");
        assert!(!sut.due(t0 + s(18), "a"));
        assert!(sut.due(t0 + s(19), "a"));
    }
}
