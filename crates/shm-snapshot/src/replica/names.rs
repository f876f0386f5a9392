//! Object names under the replica prefix: epochs, bases and log segments.
//! Names come from a listing of a store anyone may write to: parsing never
//! panics, and anything that is not exactly one of our names is ignored.
//!
//! * `E/base-<G:020>-<MS:016>.snap`: a complete snapshot file whose newest
//!   file generation is `G`, made durable at unix time `MS` (milliseconds);
//! * `E/log-<FIRST:020>-<LAST:020>-<MS:016>.seg`: FILE's records of file
//!   generations `FIRST..=LAST`, the last one made durable at `MS`;
//! * `E = <start MS:016>-<8 hex>`: one epoch per host start, sorting by start time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One history of uploads: a host start. Sorts by start time, then by its tag.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EpochId {
    /// Start time, unix milliseconds.
    pub start_ms: u64,
    /// Eight hex digits telling apart epochs started in the same millisecond.
    pub tag: u32,
}

impl EpochId {
    /// A new epoch starting now, its tag a hash of the host name, the
    /// process id and random bytes.
    pub fn new_now() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(&std::fs::read("/proc/sys/kernel/hostname").unwrap_or_default());
        h.write_u32(std::process::id());
        h.write_u128(now_ms().into());
        Self {
            start_ms: now_ms(),
            tag: h.finish() as u32,
        }
    }

    /// The epoch's directory name, e.g. `0001764745200000-1a2b3c4d`.
    pub fn name(&self) -> String {
        format!("{:016}-{:08x}", self.start_ms, self.tag)
    }

    /// Parses a directory name made by [`EpochId::name`].
    pub fn parse(s: &str) -> Option<Self> {
        let (ms, tag) = s.split_once('-')?;
        if ms.len() != 16 || tag.len() != 8 {
            return None;
        }
        Some(Self {
            start_ms: digits(ms)?,
            tag: u32::from_str_radix(tag, 16)
                .ok()
                .filter(|_| tag.bytes().all(|b| b.is_ascii_hexdigit()))?,
        })
    }
}

/// What one object of an epoch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A complete snapshot file whose newest file generation is `generation`.
    Base {
        /// Its newest file generation.
        generation: u64,
    },
    /// The records of file generations `first..=last`.
    Segment {
        /// The first file generation.
        first: u64,
        /// The last file generation.
        last: u64,
    },
}

/// A parsed object name within an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectName {
    /// Base or segment.
    pub kind: Kind,
    /// When its newest generation was durable in FILE (unix milliseconds).
    pub time_ms: u64,
}

impl ObjectName {
    /// The newest file generation the object holds.
    pub fn last(&self) -> u64 {
        match self.kind {
            Kind::Base { generation } => generation,
            Kind::Segment { last, .. } => last,
        }
    }

    /// The file name (without the epoch directory).
    pub fn name(&self) -> String {
        match self.kind {
            Kind::Base { generation } => format!("base-{generation:020}-{:016}.snap", self.time_ms),
            Kind::Segment { first, last } => {
                format!("log-{first:020}-{last:020}-{:016}.seg", self.time_ms)
            }
        }
    }

    /// Parses a file name made by [`ObjectName::name`]; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        if let Some(rest) = s
            .strip_prefix("base-")
            .and_then(|r| r.strip_suffix(".snap"))
        {
            let (g, t) = rest.split_once('-')?;
            if g.len() != 20 || t.len() != 16 {
                return None;
            }
            let generation = digits(g)?;
            return Some(Self {
                kind: Kind::Base { generation },
                time_ms: digits(t)?,
            });
        }
        let rest = s.strip_prefix("log-")?.strip_suffix(".seg")?;
        let mut parts = rest.split('-');
        let (a, b, t) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || a.len() != 20 || b.len() != 20 || t.len() != 16 {
            return None;
        }
        let (first, last) = (digits(a)?, digits(b)?);
        (first <= last && first > 0).then_some(Self {
            kind: Kind::Segment { first, last },
            time_ms: digits(t)?,
        })
    }
}

/// A decimal number of ASCII digits only (no sign, no spaces).
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A key `epoch/name` split and parsed; `None` for anything else.
pub(super) fn parse_key(rel: &str) -> Option<(EpochId, ObjectName)> {
    let (e, n) = rel.split_once('/')?;
    Some((EpochId::parse(e)?, ObjectName::parse(n)?))
}

/// Unix milliseconds now (0 before 1970).
pub(super) fn now_ms() -> u64 {
    to_ms(SystemTime::now())
}

/// Unix milliseconds of a time (0 before 1970, saturating far in the future).
pub(super) fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time of unix milliseconds.
pub(super) fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_round_trip() {
        let e = EpochId {
            start_ms: 1_764_745_200_000,
            tag: 0x1a2b_3c4d,
        };
        assert_eq!(e.name(), "0001764745200000-1a2b3c4d");
        assert_eq!(EpochId::parse(&e.name()), Some(e.clone()));
        for kind in [
            Kind::Base { generation: 7 },
            Kind::Segment { first: 8, last: 9 },
        ] {
            let n = ObjectName { kind, time_ms: 42 };
            assert_eq!(ObjectName::parse(&n.name()), Some(n));
            let key = format!("{}/{}", e.name(), n.name());
            assert_eq!(parse_key(&key), Some((e.clone(), n)));
        }
    }

    #[test]
    fn foreign_names_are_ignored() {
        for bad in [
            "",
            "base-.snap",
            "base-00000000000000000007-0000000000000042.snap.tmp",
            "base-+0000000000000000007-0000000000000042.snap",
            "log-00000000000000000009-00000000000000000008-0000000000000042.seg",
            "log-00000000000000000000-00000000000000000008-0000000000000042.seg",
            "log-00000000000000000001-00000000000000000008-0000000000000042-1.seg",
            "log-99999999999999999999-99999999999999999999-0000000000000042.seg",
        ] {
            assert_eq!(ObjectName::parse(bad), None, "{bad:?}");
        }
        for bad in [
            "",
            "-",
            "0001764745200000-1a2b3c4",
            "000176474520000x-1a2b3c4d",
            "0001764745200000-+a2b3c4d",
        ] {
            assert_eq!(EpochId::parse(bad), None, "{bad:?}");
        }
        assert_eq!(parse_key("no-slash"), None);
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC{0,80}") {
            let _ = parse_key(&s);
            let _ = ObjectName::parse(&s);
            let _ = EpochId::parse(&s);
        }

        #[test]
        fn near_names_never_panic(g in any::<u64>(), t in any::<u64>(), cut in 0usize..60) {
            let mut s = format!("log-{g:020}-{g:020}-{t:016}.seg");
            s.truncate(cut.min(s.len()));
            let _ = ObjectName::parse(&s);
            let full = format!("base-{g:020}-{t:016}.snap");
            if t < 10_000_000_000_000_000 {
                prop_assert_eq!(ObjectName::parse(&full).map(|n| n.last()), Some(g));
            }
        }
    }
}
