//! Reading a log: replay up to the newest (or a chosen) commit, telling a
//! torn tail from damage, and salvaging across damage.

use super::{
    FileInfo, HEADER_LEN, KIND_COMMIT, KIND_PAGE, PageCrc, PageIndex, REC_LEN, REC_MAGIC, Restored,
    page_len, parse_header, rd, u32_at, u64_at,
};
use crate::error::{ErrorKind, SnapshotError};
use crate::storage::Storage;

/// Replays the log into the caller's region, which must start all zero:
/// `apply(offset, bytes)` writes `bytes` at `offset` of the region. When
/// `restore` returns `Ok`, the region holds exactly the newest committed
/// generation.
///
/// The file is read once, front to back, in large chunks; each page is
/// applied as soon as its record's checksum is verified. Pages of an
/// uncommitted tail (a snapshot cut short by a crash) are therefore applied
/// too, and then put back: each is overwritten with its newest committed
/// version (read again from the file) or with zeros. `apply` must simply
/// overwrite; the last call for an offset wins.
///
/// # Errors
/// A clear [`SnapshotError`] for an empty, truncated, foreign, corrupt-header
/// or unreadable file. A torn log tail (records of the one snapshot a crash
/// interrupted) is not an error: it ends the replay at the last valid commit.
/// Damage (an invalid record followed by intact records of later, once
/// durable snapshots) is [`ErrorKind::Damaged`], naming the damaged byte
/// ranges, the newest generation before them and the newest after them;
/// [`restore_with`] can restore the former exactly or salvage the latter.
///
/// # Examples
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use shm_snapshot::{MemStorage, SnapshotWriter, restore};
///
/// let mut writer = SnapshotWriter::create(MemStorage::default(), 4096, 8192)?;
/// let mut state = vec![0u8; 8192];
/// state[5000..5005].copy_from_slice(b"hello");
/// assert_eq!(writer.snapshot(&state)?, 1);
///
/// let mut back = vec![0u8; 8192];
/// let restored = restore(writer.storage(), |offset, bytes| {
///     let at = offset as usize;
///     back[at..at + bytes.len()].copy_from_slice(bytes);
/// })?;
/// assert_eq!(restored.info.generation, 1);
/// assert_eq!(back, state);
/// # Ok(())
/// # }
/// ```
pub fn restore<S: Storage + ?Sized>(
    s: &S,
    apply: impl FnMut(u64, &[u8]),
) -> Result<Restored, SnapshotError> {
    restore_with_progress(s, apply, |_, _| {})
}

/// Bytes read per call while replaying.
const READ_CHUNK: u64 = 1 << 18;

/// What to do when a restore meets damage: records that fail their
/// checksums with intact, durable snapshots after them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnDamage {
    /// Refuse with [`ErrorKind::Damaged`] (the default): the file is not
    /// changed, and nothing is guessed.
    #[default]
    Refuse,
    /// Rebuild the newest state in which every page has an intact version:
    /// the newest intact snapshot after the damage, each page taken from its
    /// newest intact record ([`Salvage`] says which pages could only be
    /// taken from before the damage).
    Salvage,
}

/// How [`restore_with`] replays a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// Stop at this committed generation instead of the newest one.
    pub until: Option<u64>,
    /// What to do with damage in the middle of the log.
    pub on_damage: OnDamage,
}

/// Damage in the middle of a log: byte ranges that hold no valid record,
/// followed by intact records of snapshots that were durable (a crash can
/// leave only the one snapshot it interrupted unsynced, so records of a
/// later generation after a bad one mean the bad one was once good).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The byte ranges without valid records, in file order.
    pub ranges: Vec<std::ops::Range<u64>>,
    /// The newest generation that restores exactly: the last commit before
    /// the first damaged range.
    pub last_before: u64,
    /// The newest generation with intact records after the damage.
    pub newest_after: u64,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes: u64 = self.ranges.iter().map(|r| r.end - r.start).sum();
        match self.ranges.first() {
            Some(first) => write!(f, "damaged records at bytes {}..{}", first.start, first.end)?,
            None => f.write_str("damaged records")?,
        }
        if self.ranges.len() > 1 {
            write!(
                f,
                " and {} more ranges ({bytes} bytes in all)",
                self.ranges.len() - 1
            )?;
        }
        write!(
            f,
            ", with intact snapshots after them: generation {} is the newest before the damage, generation {} the newest after it",
            self.last_before, self.newest_after
        )
    }
}

/// What an [`OnDamage::Salvage`] restore rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salvage {
    /// The damage it worked around.
    pub damage: Damage,
    /// The generation of the rebuilt state (the newest after the damage).
    pub generation: u64,
    /// Pages whose version in the rebuilt state lies before the end of the
    /// (last) damaged range, not rewritten by any intact record after it: a
    /// damaged record may have held a newer version (ranges of page indexes).
    pub pages_from_before: Vec<std::ops::Range<u64>>,
}

/// A record whose header and checksum are valid, wherever it lies.
#[derive(Debug, Clone, Copy)]
struct Rec {
    off: u64,
    kind: u32,
    generation: u64,
    index: u64,
    plen: u64,
    /// CRC-32C of the payload.
    page_crc: u32,
    /// A commit record's tag (version 2; 0 otherwise).
    tag: u64,
}

/// The geometry a file's records must fit.
#[derive(Debug, Clone, Copy)]
struct Geo {
    /// The file's format version: commit records carry an 8-byte tag from 2 on.
    version: u32,
    page_size: u32,
    region_size: u64,
    pages: u64,
}

impl Geo {
    /// The payload length a record header announces, if its magic, kind
    /// and length fit this geometry.
    fn payload_len(&self, rh: &[u8; 32]) -> Option<u64> {
        if u32_at(rh, 0) != REC_MAGIC {
            return None;
        }
        let plen = u64::from(u32_at(rh, 24));
        let expected = match u32_at(rh, 4) {
            KIND_PAGE if u64_at(rh, 16) < self.pages => {
                page_len(self.page_size, self.region_size, u64_at(rh, 16))
            }
            KIND_COMMIT => commit_payload(self.version),
            _ => return None,
        };
        (plen == expected).then_some(plen)
    }
}

/// The payload length of a commit record in a file of `version`: its tag.
fn commit_payload(version: u32) -> u64 {
    if version >= 2 { 8 } else { 0 }
}

/// The tag a valid record carries: a commit's payload, 0 for anything else.
fn tag_of(kind: u32, payload: &[u8]) -> u64 {
    match payload.get(..8) {
        Some(t) if kind == KIND_COMMIT => u64_at(t, 0),
        _ => 0,
    }
}

/// Whether the record `rh` + `payload` carries a valid checksum; returns
/// the payload's own CRC-32C (kept in the page index) if so.
fn record_valid(rh: &[u8; 32], payload: &[u8]) -> Option<u32> {
    let head = super::crc32c(&rh[0..28]);
    // One pass over the payload: its own CRC, from which a 4 KiB page's
    // record checksum is derived.
    let page_crc = super::crc32c(payload);
    let record_crc = if payload.len() == PageCrc::LEN {
        PageCrc::get().combine(head, page_crc)
    } else {
        super::crc32c_append(head, payload)
    };
    (record_crc == u32_at(rh, 28)).then_some(page_crc)
}

/// Every valid record in `from..file_len`, in file order, found by trying
/// each offset where the record magic appears (a damaged record's length
/// cannot be trusted, so the next one is found by its magic and checksum).
fn scan_records<S: Storage + ?Sized>(
    s: &S,
    geo: Geo,
    from: u64,
    file_len: u64,
) -> Result<Vec<Rec>, SnapshotError> {
    let magic = REC_MAGIC.to_le_bytes();
    let mut found = Vec::new();
    let mut payload = vec![0u8; geo.page_size as usize];
    let mut chunk = vec![0u8; usize::try_from(READ_CHUNK).unwrap_or(1 << 18)];
    let mut off = from;
    while off + REC_LEN <= file_len {
        let mut rh = [0u8; 32];
        rd(s, off, &mut rh)?;
        if let Some(plen) = geo.payload_len(&rh)
            && off + REC_LEN + plen <= file_len
        {
            let p = &mut payload[..usize::try_from(plen).unwrap_or(0)];
            rd(s, off + REC_LEN, p)?;
            if let Some(page_crc) = record_valid(&rh, p) {
                let kind = u32_at(&rh, 4);
                found.push(Rec {
                    off,
                    kind,
                    generation: u64_at(&rh, 8),
                    index: u64_at(&rh, 16),
                    plen,
                    page_crc,
                    tag: tag_of(kind, p),
                });
                off += REC_LEN + plen;
                continue;
            }
        }
        // Not a record here: on to the next place the magic appears.
        let mut next = None;
        let mut at = off + 1;
        while next.is_none() && at + REC_LEN <= file_len {
            let n = usize::try_from((file_len - at).min(READ_CHUNK)).unwrap_or(0);
            rd(s, at, &mut chunk[..n])?;
            next = chunk[..n]
                .windows(4)
                .position(|w| w == magic)
                .map(|i| at + i as u64);
            // Overlap by 3 bytes so a magic split across chunks is found.
            at += (n as u64).saturating_sub(3).max(1);
        }
        match next {
            Some(n) => off = n,
            None => break,
        }
    }
    Ok(found)
}

/// Whether a valid record starts at `off` (read now).
fn record_at<S: Storage + ?Sized>(s: &S, geo: Geo, off: u64) -> Result<bool, SnapshotError> {
    let len = s.len().map_err(|e| SnapshotError::io("stat", e))?;
    if off + REC_LEN > len {
        return Ok(false);
    }
    let mut rh = [0u8; 32];
    rd(s, off, &mut rh)?;
    let Some(plen) = geo.payload_len(&rh).filter(|&p| off + REC_LEN + p <= len) else {
        return Ok(false);
    };
    let mut payload = vec![0u8; usize::try_from(plen).unwrap_or(0)];
    rd(s, off + REC_LEN, &mut payload)?;
    Ok(record_valid(&rh, &payload).is_some())
}

/// Whether `from..to` reads as zeros (the writer's reserved space,
/// [`crate::SnapshotWriter::set_reserve`]).
fn all_zeros<S: Storage + ?Sized>(s: &S, from: u64, to: u64) -> Result<bool, SnapshotError> {
    let mut chunk = vec![0u8; usize::try_from(READ_CHUNK.min(to - from)).unwrap_or(1 << 18)];
    let mut at = from;
    while at < to {
        let n = usize::try_from((to - at).min(READ_CHUNK)).unwrap_or(0);
        rd(s, at, &mut chunk[..n])?;
        if chunk[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Whether the tail after the last valid commit (generation `last`), whose
/// valid records are `tail`, is damage rather than a torn write.
///
/// The writer starts generation `g + 1` only after the sync of `g`
/// returned, so a crash leaves at most one generation unsynced, and any
/// record of generation `g + 1` (page or commit) proves that `g` was
/// durable. A torn tail holds records of `last + 1` only; a record of
/// `last + 2` or later means the records of `last + 1` were once whole: the
/// invalid bytes before it are damage. Returns the damage and the index in
/// `tail` past the last record that belongs to it.
fn classify_tail(tail: &[Rec], from: u64, last: u64) -> Option<(Damage, usize)> {
    let durable = tail.iter().map(|r| r.generation).max()?.saturating_sub(1);
    if durable <= last {
        return None;
    }
    // The newest generation after the damage: one proven durable, or the
    // one after it if its commit record and all the pages it counts are
    // intact (a whole snapshot, though perhaps never synced).
    let pages_of = |g: u64| {
        tail.iter()
            .filter(|r| r.kind == KIND_PAGE && r.generation == g)
            .count() as u64
    };
    let whole_next = tail.iter().any(|r| {
        r.kind == KIND_COMMIT && r.generation == durable + 1 && pages_of(durable + 1) == r.index
    });
    let newest = if whole_next { durable + 1 } else { durable };
    // The records of generations up to `newest` end where the first record
    // of a later one starts (the rest is the torn tail of the snapshot after
    // it); every gap before that is damage, even one after the last intact
    // record of `newest` (it held that generation's later records).
    let end = tail
        .iter()
        .position(|r| r.generation > newest)
        .unwrap_or(tail.len());
    let mut ranges = Vec::new();
    let mut at = from;
    for r in &tail[..end] {
        if r.off > at {
            ranges.push(at..r.off);
        }
        at = at.max(r.off + REC_LEN + r.plen);
    }
    if let Some(next) = tail.get(end)
        && next.off > at
    {
        ranges.push(at..next.off);
    }
    Some((
        Damage {
            ranges,
            last_before: last,
            newest_after: newest,
        },
        end,
    ))
}

/// `[0, pages)` minus the sorted set `taken`, as ranges.
fn complement(pages: u64, taken: &std::collections::BTreeSet<u64>) -> Vec<std::ops::Range<u64>> {
    let mut out = Vec::new();
    let mut at = 0;
    for &p in taken {
        if p > at {
            out.push(at..p);
        }
        at = p + 1;
    }
    if at < pages {
        out.push(at..pages);
    }
    out
}

/// [`restore`], reporting `progress(bytes_read, file_len)` after each chunk read.
///
/// # Errors
/// As [`restore`].
pub fn restore_with_progress<S: Storage + ?Sized>(
    s: &S,
    apply: impl FnMut(u64, &[u8]),
    progress: impl FnMut(u64, u64),
) -> Result<Restored, SnapshotError> {
    restore_with(s, RestoreOptions::default(), apply, progress)
}

/// [`restore_with_progress`] with [`RestoreOptions`]: up to a chosen
/// generation, or salvaging a damaged file.
///
/// A [`Restored`] from a restore that stopped early or salvaged does not
/// describe the whole file: [`SnapshotWriter::open_restored`](super::SnapshotWriter::open_restored) refuses it
/// (write the state to a new file instead).
///
/// # Errors
/// As [`restore`]; [`ErrorKind::NoSuchGeneration`] for an `until` the file
/// does not hold exactly (including one after damage).
///
/// # Examples
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use shm_snapshot::{MemStorage, RestoreOptions, SnapshotWriter, restore_with};
///
/// let mut writer = SnapshotWriter::create(MemStorage::default(), 4096, 4096)?;
/// writer.snapshot(&[1u8; 4096])?;
/// writer.snapshot(&[2u8; 4096])?;
///
/// // Generation 1, not the newest (2).
/// let mut back = vec![0u8; 4096];
/// let options = RestoreOptions { until: Some(1), ..RestoreOptions::default() };
/// restore_with(
///     writer.storage(),
///     options,
///     |offset, bytes| {
///         let at = offset as usize;
///         back[at..at + bytes.len()].copy_from_slice(bytes);
///     },
///     |_read, _len| {},
/// )?;
/// assert_eq!(back, vec![1u8; 4096]);
/// # Ok(())
/// # }
/// ```
#[allow(clippy::too_many_lines)]
pub fn restore_with<S: Storage + ?Sized>(
    s: &S,
    opts: RestoreOptions,
    mut apply: impl FnMut(u64, &[u8]),
    mut progress: impl FnMut(u64, u64),
) -> Result<Restored, SnapshotError> {
    let r = scan(s, opts, &mut apply, &mut progress)?;
    if let Some(d) = &r.info.damage
        && r.salvage.is_none()
        && opts.until.is_none()
    {
        return Err(SnapshotError::new(ErrorKind::Damaged, d));
    }
    if let Some(g) = opts.until
        && r.info.generation != g
    {
        let base = if r.info.all_zero { 0 } else { r.base };
        let first = if base == 0 { 0 } else { base + 1 };
        return Err(SnapshotError::new(
            ErrorKind::NoSuchGeneration,
            match &r.info.damage {
                Some(d) if g > d.last_before => format!(
                    "generation {g} lies after the damage ({d}); only {first}..={} restore exactly",
                    d.last_before
                ),
                _ => format!(
                    "generation {g} is not in the file: it holds generations {first}..={}",
                    r.info.generation
                ),
            },
        ));
    }
    Ok(r)
}

#[allow(clippy::too_many_lines)]
/// Passes [`scan`] makes over a file that grows while it is read.
const SCAN_PASSES: u32 = 8;

/// [`scan_once`] until a pass reads the file unchanged (at most
/// [`SCAN_PASSES`] times; the last pass's findings stand).
///
/// A file can be read while its writer appends: a live host's FILE ends in
/// reserved zeros ([`crate::SnapshotWriter::set_reserve`]) that the writer
/// overwrites with new records. A pass may then read zeros where a record
/// lies by the time it reads a later one, which looks like damage (invalid
/// bytes with intact snapshots after them). POSIX makes a `read` that
/// starts after a `write` returned see its bytes, and the writer writes
/// records in file order, so reading the first invalid offset again after
/// finding the later records tells the two apart: a record there now means
/// the file grew under this pass; the same invalid bytes mean damage. A
/// writer that starts on the file cuts those zeros off, so a pass that
/// meets the end of the file early also reads it again.
fn scan<S: Storage + ?Sized>(
    s: &S,
    opts: RestoreOptions,
    apply: &mut dyn FnMut(u64, &[u8]),
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Restored, SnapshotError> {
    let mut pass = 1;
    loop {
        let last = pass == SCAN_PASSES;
        match scan_once(s, opts, apply, progress, last) {
            Ok(Some(r)) => return Ok(r),
            Ok(None) => tracing::debug!("the file grew while it was read: reading it again"),
            // The writer cut its reserved zeros (or a torn tail) off while
            // this pass read them.
            Err(e) if !last && e.is_short_read() => {
                tracing::debug!("the file shrank while it was read: reading it again");
            }
            Err(e) => return Err(e),
        }
        pass += 1;
    }
}

/// One pass of [`scan`]; `None` if damage it found turned out to be a
/// record written while the pass read the file (never when `last`).
#[allow(clippy::too_many_lines)]
fn scan_once<S: Storage + ?Sized>(
    s: &S,
    opts: RestoreOptions,
    apply: &mut dyn FnMut(u64, &[u8]),
    progress: &mut dyn FnMut(u64, u64),
    last: bool,
) -> Result<Option<Restored>, SnapshotError> {
    let super::Parsed { header, file_len } = parse_header(s)?;
    let super::Header {
        version,
        page_size,
        region_size,
        base_generation: base,
        base_tag,
        all_zero,
    } = header;
    let mut info = FileInfo {
        version,
        page_size,
        region_size,
        generation: base,
        tag: base_tag,
        commits: 0,
        valid_end: if all_zero { 0 } else { HEADER_LEN },
        file_len,
        reserved: 0,
        all_zero,
        damage: None,
    };
    let mut restored = Restored {
        info: info.clone(),
        index: PageIndex::default(),
        salvage: None,
        partial: false,
        base,
    };
    if all_zero {
        progress(file_len, file_len);
        restored.partial = opts.until.is_some_and(|g| g != 0);
        return Ok(Some(restored));
    }
    if opts
        .until
        .is_some_and(|g| g <= base && !(g == 0 && base == 0))
    {
        // Not in this file (a compacted file starts after its base).
        restored.partial = true;
        return Ok(Some(restored));
    }
    let ps = u64::from(page_size);
    let pages = region_size.div_ceil(ps);
    let geo = Geo {
        version,
        page_size,
        region_size,
        pages,
    };
    // The window [win_off, win_off + win_len) of the file held in `buf`; one
    // record (header and payload) always fits.
    let cap = READ_CHUNK.max(2 * (REC_LEN + ps));
    let mut buf = vec![0u8; usize::try_from(cap).unwrap_or(usize::MAX)];
    let (mut win_off, mut win_len) = (HEADER_LEN, 0u64);
    // Newest committed version of each page written so far, and the pages
    // applied since the last commit (index, (crc, payload offset)).
    let mut committed = PageIndex::default();
    let mut pending: Vec<(u64, (u32, u64))> = Vec::new();
    let mut off = HEADER_LEN;
    let mut stopped = false;
    while off + REC_LEN <= file_len {
        if opts.until == Some(info.generation) {
            stopped = true;
            break;
        }
        if off + REC_LEN > win_off + win_len {
            win_off = off;
            win_len = cap.min(file_len - off);
            rd(s, off, &mut buf[..usize::try_from(win_len).unwrap_or(0)])?;
            progress(off + win_len, file_len);
        }
        let at = usize::try_from(off - win_off).unwrap_or(0);
        let rh: [u8; 32] = buf[at..at + 32].try_into().unwrap_or([0; 32]);
        let Some(plen) = geo.payload_len(&rh) else {
            break;
        };
        let kind = u32_at(&rh, 4);
        let index = u64_at(&rh, 16);
        if u64_at(&rh, 8) != info.generation + 1
            || (kind == KIND_COMMIT && index != pending.len() as u64)
            || off + REC_LEN + plen > file_len
        {
            break;
        }
        if off + REC_LEN + plen > win_off + win_len {
            // The payload runs past the window: slide it to this record.
            win_off = off;
            win_len = cap.min(file_len - off);
            rd(s, off, &mut buf[..usize::try_from(win_len).unwrap_or(0)])?;
            progress(off + win_len, file_len);
        }
        let at = usize::try_from(off - win_off).unwrap_or(0) + REC_LEN as usize;
        let payload = &buf[at..at + usize::try_from(plen).unwrap_or(0)];
        let Some(page_crc) = record_valid(&rh, payload) else {
            break;
        };
        if kind == KIND_PAGE {
            apply(index * ps, payload);
            pending.push((index, (page_crc, off + REC_LEN)));
        } else {
            committed.pages.extend(pending.drain(..));
            info.tag = tag_of(kind, payload);
            info.generation += 1;
            info.commits += 1;
            info.valid_end = off + REC_LEN + plen;
        }
        off += REC_LEN + plen;
    }
    // What follows the last valid commit: nothing, the torn tail of a
    // snapshot a crash interrupted, or damage with durable snapshots after it.
    let mut tail = Vec::new();
    if !stopped && info.valid_end < file_len {
        tail = scan_records(s, geo, off, file_len)?;
        if let Some((damage, end)) = classify_tail(&tail, off, info.generation) {
            if !last && record_at(s, geo, off)? {
                return Ok(None);
            }
            tail.truncate(end);
            info.damage = Some(damage);
        }
        // Space the writer keeps after the log: zeros, or a reused log's
        // older records (all of generations up to this log's base: they
        // were written before its compacted image).
        let reused = info.damage.is_none()
            && !all_zero
            && !tail.is_empty()
            && tail.iter().all(|r| r.generation <= base);
        if reused || (tail.is_empty() && all_zeros(s, info.valid_end, file_len)?) {
            info.reserved = file_len - info.valid_end;
        }
    }
    let salvage = matches!(opts.on_damage, OnDamage::Salvage) && opts.until.is_none();
    match info.damage.clone() {
        Some(damage) if salvage => {
            // Pages of the snapshot the damage cut into were durable: keep
            // them, then lay every later intact page record over them, in
            // generation order (a record older than one already laid is a
            // leftover of a failed write, not state).
            // A page is certain only if its version lies after the last
            // damaged byte: an earlier version may have been replaced by a
            // record inside a damaged range.
            let damage_end = damage.ranges.last().map_or(off, |r| r.end);
            let mut after: std::collections::BTreeSet<u64> = std::collections::BTreeSet::new();
            for (index, v) in pending.drain(..) {
                committed.pages.insert(index, v);
            }
            let mut payload = vec![0u8; page_size as usize];
            let mut newest = info.generation;
            for r in tail.iter().filter(|r| r.kind == KIND_PAGE) {
                if r.generation < newest || r.generation > damage.newest_after {
                    continue;
                }
                newest = r.generation;
                let p = &mut payload[..usize::try_from(r.plen).unwrap_or(0)];
                rd(s, r.off + REC_LEN, p)?;
                apply(r.index * ps, p);
                if r.off >= damage_end {
                    after.insert(r.index);
                } else {
                    after.remove(&r.index);
                }
                committed
                    .pages
                    .insert(r.index, (r.page_crc, r.off + REC_LEN));
            }
            info.commits += tail.iter().filter(|r| r.kind == KIND_COMMIT).count() as u64;
            // The tag of the newest intact commit up to the salvaged generation
            // (its own commit record may lie in the damage).
            if let Some(c) = tail
                .iter()
                .filter(|r| r.kind == KIND_COMMIT && r.generation <= damage.newest_after)
                .max_by_key(|r| r.generation)
            {
                info.tag = c.tag;
            }
            info.generation = damage.newest_after;
            restored.salvage = Some(Salvage {
                generation: damage.newest_after,
                pages_from_before: complement(pages, &after),
                damage,
            });
            restored.partial = true;
        }
        _ => {
            // Put back the pages of the uncommitted tail.
            let mut page = vec![0u8; page_size as usize];
            for (index, _) in pending {
                let l = usize::try_from(page_len(page_size, region_size, index)).unwrap_or(0);
                match committed.pages.get(&index) {
                    Some(&(_, poff)) => rd(s, poff, &mut page[..l])?,
                    None => page[..l].fill(0),
                }
                apply(index * ps, &page[..l]);
            }
            restored.partial = stopped || info.damage.is_some();
        }
    }
    restored.info = info;
    restored.index = committed;
    Ok(Some(restored))
}

/// Scans a file without keeping its contents. Damage is reported in
/// [`FileInfo::damage`], not as an error.
///
/// # Errors
/// As [`restore`], except for damage.
///
/// # Examples
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use shm_snapshot::{MemStorage, SnapshotWriter, inspect};
///
/// let mut writer = SnapshotWriter::create(MemStorage::default(), 4096, 8192)?;
/// writer.snapshot(&[7u8; 8192])?;
/// let info = inspect(writer.storage())?;
/// assert_eq!((info.page_size, info.region_size, info.generation), (4096, 8192, 1));
/// assert!(info.damage.is_none());
/// # Ok(())
/// # }
/// ```
pub fn inspect<S: Storage + ?Sized>(s: &S) -> Result<FileInfo, SnapshotError> {
    scan(s, RestoreOptions::default(), &mut |_, _| {}, &mut |_, _| {}).map(|r| r.info)
}

#[cfg(test)]
mod tests {
    use super::Damage;

    #[test]
    fn damage_reads_as_a_sentence_with_or_without_ranges() {
        let mut d = Damage {
            ranges: vec![10..20, 30..35],
            last_before: 3,
            newest_after: 5,
        };
        assert_eq!(
            d.to_string(),
            "damaged records at bytes 10..20 and 1 more ranges (15 bytes in all), with intact \
             snapshots after them: generation 3 is the newest before the damage, generation 5 \
             the newest after it"
        );
        d.ranges.clear();
        assert!(
            d.to_string()
                .starts_with("damaged records, with intact snapshots")
        );
    }
}
