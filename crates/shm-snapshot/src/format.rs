//! The snapshot file format: header, page records, commit records.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{ErrorKind, SnapshotError};
use crate::storage::{FileStorage, Storage};

#[cfg(feature = "fault-injection")]
use shm_testkit::crash_point;
#[cfg(not(feature = "fault-injection"))]
macro_rules! crash_point {
    ($name:literal) => {};
}

/// The first eight bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"OUTLSNP1";
/// The format version this library writes and reads.
pub const VERSION: u32 = 1;
/// Length of the file header.
pub const HEADER_LEN: u64 = 64;
const REC_LEN: u64 = 32;
const REC_MAGIC: u32 = 0x5245_4331;
const KIND_PAGE: u32 = 1;
const KIND_COMMIT: u32 = 2;
/// Largest base generation accepted in a header: far beyond any real count,
/// and far enough below `u64::MAX` that generation arithmetic never overflows.
const MAX_GENERATION: u64 = 1 << 62;
/// Largest page size accepted in a header.
const MAX_PAGE: u32 = 1 << 24;

/// Parsed header plus what a scan of the log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Page size of the records.
    pub page_size: u32,
    /// Size of the snapshotted region.
    pub region_size: u64,
    /// Newest valid generation (the header's base generation if no commit follows it).
    pub generation: u64,
    /// Number of valid commits found.
    pub commits: u64,
    /// End of the last valid commit record: everything after it is ignored.
    pub valid_end: u64,
    /// The storage length.
    pub file_len: u64,
    /// Whether the file was all zeros (a fresh state of `region_size` bytes).
    pub all_zero: bool,
    /// Damage in the middle of the log: invalid records with intact, once
    /// durable snapshots after them. `None` for an intact file and for a
    /// torn tail (what a crash leaves).
    pub damage: Option<Damage>,
}

/// Result of [`restore`].
#[derive(Debug)]
pub struct Restored {
    /// What the scan found.
    pub info: FileInfo,
    /// Where the newest committed version of each page is (for
    /// [`SnapshotWriter::open_restored`]).
    pub index: PageIndex,
    /// What an [`OnDamage::Salvage`] restore rebuilt, if it had to.
    pub salvage: Option<Salvage>,
    /// Whether the restore stopped before the file's newest generation or
    /// worked around damage: the state is not the file's, so
    /// [`SnapshotWriter::open_restored`] refuses to continue the file.
    partial: bool,
    /// The header's base generation.
    base: u64,
}

/// Per page, the newest committed version in a file: the CRC-32C of its
/// bytes and the file offset of its payload. Pages not listed are all zero.
///
/// A map rather than a table sized by the header's region: its size is
/// bounded by the records actually in the file, whatever a header claims.
#[derive(Debug, Default, Clone)]
pub struct PageIndex {
    pages: HashMap<u64, (u32, u64)>,
}

impl PageIndex {
    /// Pages with a stored version (including stored all-zero pages).
    #[must_use]
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Whether no page has a stored version.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }
}

fn rd<S: Storage + ?Sized>(s: &S, off: u64, buf: &mut [u8]) -> Result<(), SnapshotError> {
    s.read_at(off, buf)
        .map_err(|e| SnapshotError::io("read", e))
}

fn header_bytes(page_size: u32, region_size: u64, base_generation: u64) -> [u8; 64] {
    let mut h = [0u8; 64];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&page_size.to_le_bytes());
    h[16..24].copy_from_slice(&region_size.to_le_bytes());
    h[24..32].copy_from_slice(&base_generation.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

fn record_header(kind: u32, generation: u64, index: u64, payload: &[u8]) -> [u8; 32] {
    record_header_hashed(kind, generation, index, payload, None)
}

/// [`record_header`] for a payload whose `crc32c` the caller already has:
/// for a 4 KiB page the record checksum is then derived from it
/// ([`PageCrc`]) instead of reading the page a second time.
fn record_header_hashed(
    kind: u32,
    generation: u64,
    index: u64,
    payload: &[u8],
    payload_crc: Option<u32>,
) -> [u8; 32] {
    let mut r = [0u8; 32];
    r[0..4].copy_from_slice(&REC_MAGIC.to_le_bytes());
    r[4..8].copy_from_slice(&kind.to_le_bytes());
    r[8..16].copy_from_slice(&generation.to_le_bytes());
    r[16..24].copy_from_slice(&index.to_le_bytes());
    #[allow(clippy::cast_possible_truncation)] // payload is at most one page (< 2^24)
    r[24..28].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    let head = crc32c::crc32c(&r[0..28]);
    let crc = match payload_crc {
        Some(p) if payload.len() == PageCrc::LEN => PageCrc::get().combine(head, p),
        _ => crc32c::crc32c_append(head, payload),
    };
    r[28..32].copy_from_slice(&crc.to_le_bytes());
    r
}

/// `crc32c(a ‖ b)` from `crc32c(a)` and `crc32c(b)` when `b` is 4096 bytes
/// long. Appending `n` bytes to a CRC is `M_n(crc(a)) ^ crc(b)` with `M_n` a
/// linear map over GF(2) (the technique of zlib's `crc32_combine`); `M_4096`
/// is tabulated once here, one table per byte of its input. The crc32c
/// crate's `crc32c_combine` rebuilds the operator on every call (about a
/// microsecond), which would cost more than reading the page again.
struct PageCrc {
    table: [[u32; 256]; 4],
}

impl PageCrc {
    const LEN: usize = 4096;

    fn get() -> &'static PageCrc {
        static TABLE: std::sync::OnceLock<PageCrc> = std::sync::OnceLock::new();
        TABLE.get_or_init(|| {
            let mut table = [[0u32; 256]; 4];
            for (j, row) in table.iter_mut().enumerate() {
                for (v, cell) in (0u32..).zip(row.iter_mut()) {
                    // combine(x, 0, n) = M_n(x): the operator applied to one input byte.
                    *cell = crc32c::crc32c_combine(v << (8 * j), 0, Self::LEN);
                }
            }
            PageCrc { table }
        })
    }

    fn combine(&self, crc_a: u32, crc_b: u32) -> u32 {
        let [b0, b1, b2, b3] = crc_a.to_le_bytes();
        self.table[0][usize::from(b0)]
            ^ self.table[1][usize::from(b1)]
            ^ self.table[2][usize::from(b2)]
            ^ self.table[3][usize::from(b3)]
            ^ crc_b
    }
}

fn page_len(page_size: u32, region_size: u64, index: u64) -> u64 {
    let start = index * u64::from(page_size);
    u64::from(page_size).min(region_size - start)
}

/// Whether bytes `0..len` are all zero. Holes of a sparse file are skipped
/// without reading them ([`Storage::data_from`]).
fn is_all_zero<S: Storage + ?Sized>(s: &S, len: u64) -> Result<bool, SnapshotError> {
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0;
    while off < len {
        match s
            .data_from(off)
            .map_err(|e| SnapshotError::io("seek data", e))?
        {
            Some(data) if data < len => off = data,
            _ => return Ok(true),
        }
        let n = usize::try_from((len - off).min(CHUNK as u64)).unwrap_or(CHUNK);
        rd(s, off, &mut buf[..n])?;
        if buf[..n] != zeros[..n] {
            return Ok(false);
        }
        off += n as u64;
    }
    Ok(true)
}

fn parse_header<S: Storage + ?Sized>(s: &S) -> Result<(u32, u64, u64, bool, u64), SnapshotError> {
    let len = s.len().map_err(|e| SnapshotError::io("stat", e))?;
    if len == 0 {
        return Err(SnapshotError::new(ErrorKind::Empty, "file is empty"));
    }
    if len < HEADER_LEN {
        if is_all_zero(s, len)? {
            return Err(SnapshotError::new(
                ErrorKind::BadGeometry,
                format!("all-zero file of {len} bytes is too small for a state region"),
            ));
        }
        return Err(SnapshotError::new(
            ErrorKind::Truncated,
            format!("file is {len} bytes, shorter than the {HEADER_LEN}-byte header"),
        ));
    }
    let mut h = [0u8; 64];
    rd(s, 0, &mut h)?;
    if h[0..8] != MAGIC {
        if h.iter().all(|&b| b == 0) && is_all_zero(s, len)? {
            return Ok((4096, len, len, true, 0));
        }
        return Err(SnapshotError::new(
            ErrorKind::Foreign,
            "not a snapshot file (bad magic)",
        ));
    }
    if crc32c::crc32c(&h[0..60]) != u32_at(&h, 60) {
        return Err(SnapshotError::new(
            ErrorKind::CorruptHeader,
            "header checksum mismatch",
        ));
    }
    let version = u32_at(&h, 8);
    if version != VERSION {
        return Err(SnapshotError::new(
            ErrorKind::Version,
            format!("unsupported format version {version} (this build reads {VERSION})"),
        ));
    }
    let page_size = u32_at(&h, 12);
    let region_size = u64_at(&h, 16);
    if page_size == 0 || page_size > MAX_PAGE || !page_size.is_power_of_two() {
        return Err(SnapshotError::new(
            ErrorKind::BadGeometry,
            format!("bad page size {page_size}"),
        ));
    }
    if region_size == 0 || region_size > (1 << 48) {
        return Err(SnapshotError::new(
            ErrorKind::BadGeometry,
            format!("bad region size {region_size}"),
        ));
    }
    let base = u64_at(&h, 24);
    if base > MAX_GENERATION {
        return Err(SnapshotError::new(
            ErrorKind::BadGeometry,
            format!("implausible base generation {base}"),
        ));
    }
    Ok((page_size, region_size, len, false, base))
}

/// What a file's header says, without scanning the log: enough to size the
/// region before [`restore`] fills it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Page size of the records.
    pub page_size: u32,
    /// Size of the snapshotted region (for an all-zero file, the file's size).
    pub region_size: u64,
    /// The generation before the first record of the log.
    pub base_generation: u64,
    /// Whether the file is all zeros (a fresh state of `region_size` bytes).
    pub all_zero: bool,
}

/// Reads and checks a file's header.
///
/// # Errors
/// As [`restore`].
pub fn read_header<S: Storage + ?Sized>(s: &S) -> Result<Header, SnapshotError> {
    let (page_size, region_size, _, all_zero, base_generation) = parse_header(s)?;
    Ok(Header {
        page_size,
        region_size,
        base_generation,
        all_zero,
    })
}

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
        if let Some(first) = self.ranges.first() {
            write!(f, "damaged records at bytes {}..{}", first.start, first.end)?;
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
}

/// The geometry a file's records must fit.
#[derive(Debug, Clone, Copy)]
struct Geo {
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
            KIND_COMMIT => 0,
            _ => return None,
        };
        (plen == expected).then_some(plen)
    }
}

/// Whether the record `rh` + `payload` carries a valid checksum; returns
/// the payload's own CRC-32C (kept in the page index) if so.
fn record_valid(rh: &[u8; 32], payload: &[u8]) -> Option<u32> {
    let head = crc32c::crc32c(&rh[0..28]);
    // One pass over the payload: its own CRC, from which a 4 KiB page's
    // record checksum is derived.
    let page_crc = crc32c::crc32c(payload);
    let record_crc = if payload.len() == PageCrc::LEN {
        PageCrc::get().combine(head, page_crc)
    } else {
        crc32c::crc32c_append(head, payload)
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
                found.push(Rec {
                    off,
                    kind: u32_at(&rh, 4),
                    generation: u64_at(&rh, 8),
                    index: u64_at(&rh, 16),
                    plen,
                    page_crc,
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
/// describe the whole file: [`SnapshotWriter::open_restored`] refuses it
/// (write the state to a new file instead).
///
/// # Errors
/// As [`restore`]; [`ErrorKind::NoSuchGeneration`] for an `until` the file
/// does not hold exactly (including one after damage).
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
fn scan<S: Storage + ?Sized>(
    s: &S,
    opts: RestoreOptions,
    apply: &mut dyn FnMut(u64, &[u8]),
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Restored, SnapshotError> {
    let (page_size, region_size, file_len, all_zero, base) = parse_header(s)?;
    let mut info = FileInfo {
        page_size,
        region_size,
        generation: base,
        commits: 0,
        valid_end: if all_zero { 0 } else { HEADER_LEN },
        file_len,
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
        return Ok(restored);
    }
    if opts
        .until
        .is_some_and(|g| g <= base && !(g == 0 && base == 0))
    {
        // Not in this file (a compacted file starts after its base).
        restored.partial = true;
        return Ok(restored);
    }
    let ps = u64::from(page_size);
    let pages = region_size.div_ceil(ps);
    let geo = Geo {
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
            info.generation += 1;
            info.commits += 1;
            info.valid_end = off + REC_LEN;
        }
        off += REC_LEN + plen;
    }
    // What follows the last valid commit: nothing, the torn tail of a
    // snapshot a crash interrupted, or damage with durable snapshots after it.
    let mut tail = Vec::new();
    if !stopped && info.valid_end < file_len {
        tail = scan_records(s, geo, off, file_len)?;
        if let Some((damage, end)) = classify_tail(&tail, off, info.generation) {
            tail.truncate(end);
            info.damage = Some(damage);
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
    Ok(restored)
}

/// Scans a file without keeping its contents. Damage is reported in
/// [`FileInfo::damage`], not as an error.
///
/// # Errors
/// As [`restore`], except for damage.
pub fn inspect<S: Storage + ?Sized>(s: &S) -> Result<FileInfo, SnapshotError> {
    scan(s, RestoreOptions::default(), &mut |_, _| {}, &mut |_, _| {}).map(|r| r.info)
}

/// Appends incremental snapshots to a storage.
///
/// Only pages whose checksum differs from their newest durable version are
/// written; a snapshot counts once its commit returned `Ok` (after the
/// storage's sync). The writer keeps no copy of the state: per page it
/// knows the checksum and the file offset of the newest durable version
/// ([`PageIndex`]), which is all that incremental writes and compaction need.
#[derive(Debug)]
pub struct SnapshotWriter<S: Storage> {
    storage: S,
    page_size: u32,
    region_size: u64,
    generation: u64,
    end: u64,
    index: PageIndex,
    /// CRC-32C of an all-zero page, and of the (possibly shorter) last page.
    zero_crc: u32,
    zero_last_crc: u32,
    /// Bytes appended by the last snapshot.
    pub last_bytes_written: u64,
    batch: usize,
}

impl<S: Storage> SnapshotWriter<S> {
    /// Starts a new file (generation 0 = all zeros) on `storage`, replacing its contents.
    ///
    /// # Errors
    /// Bad geometry or I/O errors.
    pub fn create(mut storage: S, page_size: u32, region_size: u64) -> Result<Self, SnapshotError> {
        if page_size == 0
            || page_size > MAX_PAGE
            || !page_size.is_power_of_two()
            || region_size == 0
        {
            return Err(SnapshotError::new(
                ErrorKind::BadGeometry,
                "bad page or region size",
            ));
        }
        storage
            .set_len(0)
            .map_err(|e| SnapshotError::io("truncate", e))?;
        storage
            .write_at(0, &header_bytes(page_size, region_size, 0))
            .map_err(|e| SnapshotError::io("write header", e))?;
        storage
            .sync()
            .map_err(|e| SnapshotError::io("fdatasync", e))?;
        Ok(Self::with_index(
            storage,
            page_size,
            region_size,
            0,
            HEADER_LEN,
            PageIndex::default(),
        ))
    }

    fn with_index(
        storage: S,
        page_size: u32,
        region_size: u64,
        generation: u64,
        end: u64,
        index: PageIndex,
    ) -> Self {
        let pages = region_size.div_ceil(u64::from(page_size));
        let last = page_len(page_size, region_size, pages - 1);
        let zeros = vec![0u8; page_size as usize];
        Self {
            storage,
            page_size,
            region_size,
            generation,
            end,
            index,
            zero_crc: crc32c::crc32c(&zeros),
            zero_last_crc: crc32c::crc32c(&zeros[..usize::try_from(last).unwrap_or(0)]),
            last_bytes_written: 0,
            batch: 1 << 20,
        }
    }

    /// Continues an existing file: scans it ([`restore`] without keeping
    /// the state) and cuts off any torn tail durably before the next append.
    ///
    /// # Errors
    /// As [`restore`], and I/O errors.
    pub fn open(storage: S) -> Result<Self, SnapshotError> {
        let restored = restore(&storage, |_, _| {})?;
        Self::open_restored(storage, restored)
    }

    /// [`SnapshotWriter::open`] without scanning the file again: `restored`
    /// must come from a [`restore`] of this same storage.
    ///
    /// # Errors
    /// As [`SnapshotWriter::open`].
    /// A `restored` that stopped early or salvaged damage is refused
    /// ([`ErrorKind::Damaged`]): cutting the file back to it would delete
    /// intact snapshots. Write that state to a new file instead.
    pub fn open_restored(mut storage: S, restored: Restored) -> Result<Self, SnapshotError> {
        if restored.partial {
            return Err(SnapshotError::new(
                ErrorKind::Damaged,
                match &restored.info.damage {
                    Some(d) => format!("not continuing a damaged file ({d})"),
                    None => "not continuing a file restored to an earlier generation".into(),
                },
            ));
        }
        let Restored { info, index, .. } = restored;
        if info.all_zero {
            // The file holds generation 0 (all zeros): an empty index
            // describes it, so the next snapshot writes every non-zero page.
            return Self::create(storage, info.page_size, info.region_size);
        }
        if info.file_len != info.valid_end {
            storage
                .set_len(info.valid_end)
                .map_err(|e| SnapshotError::io("truncate torn tail", e))?;
            storage
                .sync()
                .map_err(|e| SnapshotError::io("fdatasync", e))?;
        }
        Ok(Self::with_index(
            storage,
            info.page_size,
            info.region_size,
            info.generation,
            info.valid_end,
            index,
        ))
    }

    /// Sets how many bytes are gathered before one write call (default 1 MiB;
    /// tests use small values to get many independently reorderable writes).
    pub fn set_write_batch(&mut self, bytes: usize) {
        self.batch = bytes.max(1);
    }

    /// The newest durable generation.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The storage length in use.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.end
    }

    /// Whether nothing but the header is stored.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.end == HEADER_LEN
    }

    /// The storage.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The page size of the records.
    #[must_use]
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// The size of the snapshotted region.
    #[must_use]
    pub fn region_size(&self) -> u64 {
        self.region_size
    }

    fn pages(&self) -> u64 {
        self.region_size.div_ceil(u64::from(self.page_size))
    }

    /// The checksum of page `index`'s newest durable version.
    fn crc_of(&self, index: u64) -> u32 {
        match self.index.pages.get(&index) {
            Some(&(crc, _)) => crc,
            None if index + 1 == self.pages() => self.zero_last_crc,
            None => self.zero_crc,
        }
    }

    /// Starts the next snapshot: hand it pages with [`Snapshot::page`], then
    /// [`Snapshot::commit`]. Pages not handed keep their previous contents.
    /// Dropping it without a commit discards what it appended.
    pub fn begin(&mut self) -> Snapshot<'_, S> {
        Snapshot {
            generation: self.generation + 1,
            off: self.end,
            buf: Vec::new(),
            new: Vec::new(),
            failed: false,
            done: false,
            wrote: false,
            w: self,
        }
    }

    /// Appends the changed pages of `state` and a commit record, then syncs.
    /// On error the previous snapshot stays the newest valid one and the
    /// writer stays usable (the failed tail is cut off best-effort and is
    /// ignored by readers anyway).
    ///
    /// # Errors
    /// I/O errors (e.g. a full disk); a state of the wrong size.
    pub fn snapshot(&mut self, state: &[u8]) -> Result<u64, SnapshotError> {
        if state.len() as u64 != self.region_size {
            return Err(SnapshotError::new(
                ErrorKind::SizeMismatch,
                "state size differs from the file's region size",
            ));
        }
        let ps = self.page_size as usize;
        let mut tx = self.begin();
        for (i, page) in (0u64..).zip(state.chunks(ps)) {
            tx.page(i, page)?;
        }
        tx.commit()
    }

    /// Writes a compacted copy (header plus one generation holding only the
    /// non-zero pages of the newest durable snapshot, numbered as the
    /// current generation) to `target`, synced, reading each page back from
    /// this writer's own storage. The caller swaps it in (rename, then fsync
    /// of the directory) and continues with [`SnapshotWriter::open`];
    /// [`SnapshotWriter::compact_file`] does all of that for a file.
    ///
    /// # Errors
    /// I/O errors; a page whose stored bytes no longer match the checksum
    /// they were written with (the storage changed under the writer).
    pub fn compact_into<T: Storage>(&self, target: T) -> Result<T, SnapshotError> {
        self.compact_to(target).map(|(t, _)| t)
    }

    fn compact_to<T: Storage>(&self, mut target: T) -> Result<(T, PageIndex), SnapshotError> {
        target
            .set_len(0)
            .map_err(|e| SnapshotError::io("truncate", e))?;
        target
            .write_at(
                0,
                &header_bytes(
                    self.page_size,
                    self.region_size,
                    self.generation.saturating_sub(1),
                ),
            )
            .map_err(|e| SnapshotError::io("write header", e))?;
        let mut off = HEADER_LEN;
        // The header's base generation makes this one commit carry the current number.
        let g = self.generation.max(1);
        let mut order: Vec<(u64, (u32, u64))> =
            self.index.pages.iter().map(|(&i, &v)| (i, v)).collect();
        order.sort_unstable_by_key(|&(i, _)| i);
        let mut index = PageIndex::default();
        let mut page = vec![0u8; self.page_size as usize];
        let mut buf = Vec::new();
        for (i, (crc, loc)) in order {
            let len = usize::try_from(page_len(self.page_size, self.region_size, i)).unwrap_or(0);
            let p = &mut page[..len];
            rd(&self.storage, loc, p)?;
            if crc32c::crc32c(p) != crc {
                return Err(SnapshotError::new(
                    ErrorKind::CorruptHeader,
                    format!("page {i} at offset {loc} changed on disk since it was written"),
                ));
            }
            if p.iter().all(|&b| b == 0) {
                continue;
            }
            buf.extend_from_slice(&record_header_hashed(KIND_PAGE, g, i, p, Some(crc)));
            index.pages.insert(i, (crc, off + buf.len() as u64));
            buf.extend_from_slice(p);
            if buf.len() >= self.batch {
                target
                    .write_at(off, &buf)
                    .map_err(|e| SnapshotError::io("write", e))?;
                target.start_writeback(off, buf.len() as u64);
                off += buf.len() as u64;
                buf.clear();
                crash_point!("compact.batch_written");
            }
        }
        buf.extend_from_slice(&record_header(KIND_COMMIT, g, index.len() as u64, &[]));
        target
            .write_at(off, &buf)
            .map_err(|e| SnapshotError::io("write", e))?;
        target
            .sync()
            .map_err(|e| SnapshotError::io("fdatasync", e))?;
        Ok((target, index))
    }
}

/// One snapshot being appended ([`SnapshotWriter::begin`]).
#[derive(Debug)]
pub struct Snapshot<'w, S: Storage> {
    w: &'w mut SnapshotWriter<S>,
    generation: u64,
    /// File offset where `buf` starts.
    off: u64,
    buf: Vec<u8>,
    /// Pages appended: index, crc, payload offset.
    new: Vec<(u64, u32, u64)>,
    failed: bool,
    done: bool,
    /// Whether a write was attempted: a failed one (a full disk) may have
    /// left part of its bytes after `w.end`.
    wrote: bool,
}

impl<S: Storage> Snapshot<'_, S> {
    /// Hands page `index` (`bytes` is its whole content) to the snapshot.
    /// It is appended unless its checksum equals its newest durable
    /// version's; returns whether it was.
    ///
    /// # Errors
    /// An index beyond the region or a length other than the page's
    /// (`SizeMismatch`); I/O errors, after which only dropping is useful.
    pub fn page(&mut self, index: u64, bytes: &[u8]) -> Result<bool, SnapshotError> {
        let w = &mut *self.w;
        if index >= w.pages() || bytes.len() as u64 != page_len(w.page_size, w.region_size, index) {
            return Err(SnapshotError::new(
                ErrorKind::SizeMismatch,
                format!(
                    "page {index} of {} bytes does not fit the region",
                    bytes.len()
                ),
            ));
        }
        if self.failed {
            return Err(SnapshotError::new(
                ErrorKind::Io,
                "an earlier write of this snapshot failed",
            ));
        }
        let crc = crc32c::crc32c(bytes);
        if crc == w.crc_of(index) {
            return Ok(false);
        }
        self.buf.extend_from_slice(&record_header_hashed(
            KIND_PAGE,
            self.generation,
            index,
            bytes,
            Some(crc),
        ));
        self.new
            .push((index, crc, self.off + self.buf.len() as u64));
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= w.batch {
            self.wrote = true;
            if let Err(e) = w.storage.write_at(self.off, &self.buf) {
                self.failed = true;
                return Err(SnapshotError::io("write", e));
            }
            // Overlap the device writes with checksumming the next batch.
            w.storage.start_writeback(self.off, self.buf.len() as u64);
            self.off += self.buf.len() as u64;
            self.buf.clear();
            crash_point!("writer.batch_written");
        }
        Ok(true)
    }

    /// Pages appended so far.
    #[must_use]
    pub fn pages_written(&self) -> usize {
        self.new.len()
    }

    /// Appends the commit record and syncs: the snapshot is then durable.
    /// Returns its generation.
    ///
    /// # Errors
    /// I/O errors (e.g. a full disk): the previous snapshot stays the newest
    /// valid one.
    pub fn commit(mut self) -> Result<u64, SnapshotError> {
        if self.failed {
            return Err(SnapshotError::new(
                ErrorKind::Io,
                "an earlier write of this snapshot failed",
            ));
        }
        self.buf.extend_from_slice(&record_header(
            KIND_COMMIT,
            self.generation,
            self.new.len() as u64,
            &[],
        ));
        let w = &mut *self.w;
        self.wrote = true;
        w.storage
            .write_at(self.off, &self.buf)
            .map_err(|e| SnapshotError::io("write", e))?;
        self.off += self.buf.len() as u64;
        crash_point!("writer.before_sync");
        w.storage
            .sync()
            .map_err(|e| SnapshotError::io("fdatasync", e))?;
        crash_point!("writer.after_sync");
        for &(i, crc, loc) in &self.new {
            w.index.pages.insert(i, (crc, loc));
        }
        w.last_bytes_written = self.off - w.end;
        w.end = self.off;
        w.generation = self.generation;
        self.done = true;
        Ok(self.generation)
    }
}

impl<S: Storage> Drop for Snapshot<'_, S> {
    fn drop(&mut self) {
        if !self.done && self.wrote {
            // Best effort: readers ignore an uncommitted tail anyway, and the
            // next snapshot overwrites it from `end`. A write that failed
            // partway (ENOSPC) left bytes beyond `off`: cut from `end`.
            if let Err(e) = self.w.storage.set_len(self.w.end) {
                tracing::warn!(
                    end = self.w.end,
                    "cannot cut an unfinished snapshot's tail: {e}"
                );
            }
        }
    }
}

/// The names of the temporary files [`SnapshotWriter::compact_file`] writes
/// before renaming one over `path`: `NAME.compact.*.tmp` in `path`'s
/// directory, where `NAME` is `path`'s file name and `*` is random. Returns
/// the directory and the name's prefix.
fn compact_temp_prefix(path: &Path) -> (PathBuf, std::ffi::OsString) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut prefix = path.file_name().unwrap_or_default().to_owned();
    prefix.push(".compact.");
    (dir, prefix)
}

/// A pattern naming the temporary files of a compaction of `path`
/// (`NAME.compact.*.tmp` next to it), for messages.
#[must_use]
pub fn compact_temp_path(path: &Path) -> PathBuf {
    let (dir, mut prefix) = compact_temp_prefix(path);
    prefix.push("*.tmp");
    dir.join(prefix)
}

/// Creates a new temporary file next to `path`, to be renamed over it once
/// complete (as [`SnapshotWriter::compact_file`] does): `NAME.compact.*.tmp`
/// ([`compact_temp_path`]), opened `O_CREAT | O_EXCL | O_NOFOLLOW` with mode
/// 0600 under a random name, then given `path`'s mode, owner and group if
/// `path` exists. Nothing planted in the directory (a symlink, a file) is
/// ever opened or truncated: an existing name fails with `EEXIST` and the
/// next random name is tried. A crash leaves it for
/// [`remove_stale_compaction`].
///
/// # Errors
/// The OS error.
pub fn create_temp_beside(path: &Path) -> std::io::Result<(File, PathBuf)> {
    let (f, tmp) = create_exclusive(path)?;
    match std::fs::metadata(path) {
        Ok(m) => {
            if let Err(e) = copy_access(&m, &f) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    }
    Ok((f, tmp))
}

fn create_exclusive(path: &Path) -> std::io::Result<(File, PathBuf)> {
    use rustix::fs::{Mode, OFlags};
    use std::hash::{BuildHasher, Hasher};
    let (dir, prefix) = compact_temp_prefix(path);
    // `RandomState`'s keys come from the OS's random source: unpredictable
    // enough for a name that only has to be hard to guess in advance (the
    // security comes from O_EXCL | O_NOFOLLOW; a guessed name costs a retry).
    let state = std::collections::hash_map::RandomState::new();
    let mut last = None;
    for attempt in 0u64..16 {
        let mut h = state.build_hasher();
        h.write_u64(attempt);
        h.write_u32(std::process::id());
        let mut name = prefix.clone();
        name.push(format!("{:016x}.tmp", h.finish()));
        let tmp = dir.join(&name);
        match rustix::fs::open(
            &tmp,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => return Ok((File::from(fd), tmp)),
            Err(rustix::io::Errno::EXIST) => last = Some(rustix::io::Errno::EXIST),
            Err(e) => return Err(std::io::Error::from(e)),
        }
    }
    Err(std::io::Error::from(
        last.unwrap_or(rustix::io::Errno::EXIST),
    ))
}

/// Removes the temporary files of compactions that were killed before
/// their rename (the snapshot file itself is then still the complete old
/// log): every `NAME.compact.*.tmp` next to `path` that is a regular file or
/// a symlink (unlinking a symlink removes the link, never its target).
/// Returns the names removed; a directory that does not exist or has no
/// such entries gives an empty list.
///
/// # Errors
/// I/O errors reading the directory or removing an entry, naming the entry.
pub fn remove_stale_compaction(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let (dir, prefix) = compact_temp_prefix(path);
    let prefix = prefix.as_encoded_bytes();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("read directory {}: {e}", dir.display()),
            ));
        }
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let b = name.as_encoded_bytes();
        if !(b.starts_with(prefix) && b.ends_with(b".tmp")) {
            continue;
        }
        let ty = entry.file_type()?;
        if !(ty.is_file() || ty.is_symlink()) {
            continue;
        }
        let p = entry.path();
        match std::fs::remove_file(&p) {
            Ok(()) => removed.push(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("remove {}: {e}", p.display()),
                ));
            }
        }
    }
    Ok(removed)
}

fn sync_dir_of(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Gives `to` the permission bits, owner and group of `from` (a compacted
/// file replaces the original with the same access).
fn copy_access(m: &std::fs::Metadata, to: &File) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    rustix::fs::fchmod(to, rustix::fs::Mode::from_raw_mode(m.mode() & 0o7777))?;
    let mine = to.metadata()?;
    if (mine.uid(), mine.gid()) != (m.uid(), m.gid()) {
        let (uid, gid) = (
            rustix::fs::Uid::from_raw(m.uid()),
            rustix::fs::Gid::from_raw(m.gid()),
        );
        if let Err(e) = rustix::fs::fchown(to, Some(uid), Some(gid)) {
            // Without the privilege to give the file away it stays ours,
            // with the original's permission bits.
            tracing::warn!(
                uid = m.uid(),
                gid = m.gid(),
                "compacted file keeps this process's owner: {e}"
            );
        }
    }
    Ok(())
}

impl SnapshotWriter<FileStorage> {
    /// Replaces the log at `path` (this writer's file) by a compacted copy
    /// of the newest durable snapshot ([`SnapshotWriter::compact_into`]):
    /// writes a new temporary file next to it (created exclusively, never
    /// following a symlink, mode 0600, under a random name) and
    /// `fdatasync`s it, gives it `path`'s mode, owner and group, renames it
    /// over `path`, then `fsync`s the directory, and continues appending to
    /// the new file.
    ///
    /// A crash at any point leaves `path` restorable to the same generation:
    /// before the rename it is the old log (the temporary file is garbage,
    /// see [`remove_stale_compaction`]); after it, the synced compacted copy;
    /// a power loss before the directory sync brings back either of the two.
    /// On an error the writer keeps appending to the old log.
    ///
    /// # Errors
    /// I/O errors (the old log stays in use); a writer that has not
    /// snapshotted yet; a `path` that is a symlink (the rename would replace
    /// the link and leave its target stale: pass the resolved path).
    pub fn compact_file(&mut self, path: &Path) -> Result<(), SnapshotError> {
        if self.generation == 0 {
            return Err(SnapshotError::new(
                ErrorKind::SizeMismatch,
                "nothing to compact before the first snapshot",
            ));
        }
        let show = path.display();
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(SnapshotError::new(
                    ErrorKind::Io,
                    format!(
                        "{show} is a symlink: compaction would replace the link, not its target (pass the resolved path)"
                    ),
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(SnapshotError::io(&format!("stat {show}"), e)),
        }
        let (f, tmp) = create_exclusive(path).map_err(|e| {
            SnapshotError::io(&format!("create {}", compact_temp_path(path).display()), e)
        })?;
        let tshow = tmp.display();
        let discard = |e: SnapshotError| {
            let _ = std::fs::remove_file(&tmp);
            e
        };
        // The access of the file being replaced (this writer's, by its fd).
        self.storage
            .0
            .metadata()
            .and_then(|m| copy_access(&m, &f))
            .map_err(|e| {
                discard(SnapshotError::io(
                    &format!("set the owner and mode of {tshow}"),
                    e,
                ))
            })?;
        let (target, index) = self.compact_to(FileStorage(f)).map_err(discard)?;
        let end = target
            .len()
            .map_err(|e| discard(SnapshotError::io(&format!("stat {tshow}"), e)))?;
        crash_point!("compact.temp_synced");
        std::fs::rename(&tmp, path)
            .map_err(|e| discard(SnapshotError::io(&format!("rename {tshow} to {show}"), e)))?;
        crash_point!("compact.renamed");
        // From here on the new file is the log, whatever happens below.
        self.storage = target;
        self.end = end;
        self.index = index;
        sync_dir_of(path).map_err(|e| SnapshotError::io("fsync directory", e))?;
        crash_point!("compact.dir_synced");
        Ok(())
    }
}

/// The client's crash point inside `commit` (between the copy and the even store).
#[inline]
pub(crate) fn crash_point_client() {
    crash_point!("client.mid_commit");
}

#[cfg(test)]
mod tests {
    use super::{PageCrc, record_header, record_header_hashed};

    #[test]
    fn derived_page_checksum_equals_the_direct_one() {
        let mut x = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..200u64 {
            let page: Vec<u8> = (0..PageCrc::LEN).map(|_| next() as u8).collect();
            let (g, i) = (next(), next() % 1000);
            let h = crc32c::crc32c(&page);
            let kind = 1 + (round % 2) as u32;
            assert_eq!(
                record_header_hashed(kind, g, i, &page, Some(h)),
                record_header(kind, g, i, &page),
                "round {round}"
            );
        }
        // Other lengths take the direct path.
        let short = [7u8; 100];
        assert_eq!(
            record_header_hashed(1, 1, 1, &short, Some(crc32c::crc32c(&short))),
            record_header(1, 1, 1, &short)
        );
    }
}
