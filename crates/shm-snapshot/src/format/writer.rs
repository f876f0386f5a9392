//! Appending snapshots to a log, and compacting it.

use super::restore::restore;
use super::{
    HEADER_LEN, KIND_COMMIT, KIND_PAGE, MAX_PAGE, PageIndex, REC_LEN, Restored, VERSION,
    header_bytes, page_len, rd, record_header, record_header_hashed,
};
use crate::error::{ErrorKind, SnapshotError};
use crate::storage::Storage;

/// Appends incremental snapshots to a storage.
///
/// Only pages whose checksum differs from their newest durable version are
/// written; a snapshot counts once its commit returned `Ok` (after the
/// storage's sync). The writer keeps no copy of the state: per page it
/// knows the checksum and the file offset of the newest durable version
/// ([`PageIndex`]), which is all that incremental writes and compaction need.
#[derive(Debug)]
pub struct SnapshotWriter<S: Storage> {
    pub(super) storage: S,
    /// The log's format version: commit records carry their tag from 2 on.
    pub(super) version: u32,
    page_size: u32,
    region_size: u64,
    pub(super) generation: u64,
    /// The tag of `generation` (kept in memory only in a version 1 log).
    tag: u64,
    pub(super) end: u64,
    pub(super) index: PageIndex,
    /// CRC-32C of an all-zero page, and of the (possibly shorter) last page.
    zero_crc: u32,
    zero_last_crc: u32,
    /// Bytes appended by the last snapshot.
    pub last_bytes_written: u64,
    batch: usize,
    /// The buffer a snapshot gathers its records in, kept between snapshots
    /// (grown once to a batch, never reallocated while records are added).
    scratch: Batch,
    /// Bytes of zeros kept written past the log's end ([`SnapshotWriter::set_reserve`]).
    reserve: u64,
    /// The storage's length as this writer left it: `end` plus the zeros
    /// still reserved after it.
    pub(super) reserved_end: u64,
    /// The log the last compaction replaced, kept for the next one to
    /// reuse (file logs only).
    pub(super) spare: Option<super::files::Spare>,
}

/// Bytes a snapshot gathers before one write call ([`SnapshotWriter::set_write_batch`]).
const DEFAULT_BATCH: usize = 1 << 20;

impl<S: Storage> SnapshotWriter<S> {
    /// Starts a new file (generation 0 = all zeros) on `storage`, replacing its contents.
    ///
    /// # Errors
    /// Bad geometry or I/O errors.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use shm_snapshot::{MemStorage, SnapshotWriter};
    ///
    /// // 4096-byte pages, a 16 KiB state; generation 0 is all zeros.
    /// let writer = SnapshotWriter::create(MemStorage::default(), 4096, 16 << 10)?;
    /// assert_eq!(writer.generation(), 0);
    /// assert_eq!(writer.region_size(), 16 << 10);
    /// # Ok(())
    /// # }
    /// ```
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
            .write_at(0, &header_bytes(page_size, region_size, 0, 0))
            .map_err(|e| SnapshotError::io("write header", e))?;
        storage
            .sync()
            .map_err(|e| SnapshotError::io("fdatasync", e))?;
        Ok(Self::with_index(
            storage,
            (VERSION, page_size, region_size),
            (0, 0),
            HEADER_LEN,
            PageIndex::default(),
        ))
    }

    /// A writer at the end `end` of a log of `(version, page_size,
    /// region_size)` whose newest generation is `(generation, tag)`.
    fn with_index(
        storage: S,
        (version, page_size, region_size): (u32, u32, u64),
        (generation, tag): (u64, u64),
        end: u64,
        index: PageIndex,
    ) -> Self {
        let pages = region_size.div_ceil(u64::from(page_size));
        let last = page_len(page_size, region_size, pages - 1);
        let zeros = vec![0u8; page_size as usize];
        let reserve = storage.preferred_reserve();
        Self {
            storage,
            version,
            page_size,
            region_size,
            generation,
            tag,
            end,
            index,
            zero_crc: super::crc32c(&zeros),
            zero_last_crc: super::crc32c(&zeros[..usize::try_from(last).unwrap_or(0)]),
            last_bytes_written: 0,
            batch: DEFAULT_BATCH,
            scratch: Batch::default(),
            reserve,
            reserved_end: end,
            spare: None,
        }
    }

    /// Continues an existing file: scans it ([`restore`] without keeping
    /// the state) and cuts off any torn tail durably before the next append.
    ///
    /// # Errors
    /// As [`restore`], and I/O errors.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use shm_snapshot::{MemStorage, SnapshotWriter};
    ///
    /// let mut writer = SnapshotWriter::create(MemStorage::default(), 4096, 4096)?;
    /// writer.snapshot(&[3u8; 4096])?;
    ///
    /// // Later (e.g. after a restart): continue the same log.
    /// let mut writer = SnapshotWriter::open(writer.storage().clone())?;
    /// assert_eq!(writer.generation(), 1);
    /// assert_eq!(writer.snapshot(&[4u8; 4096])?, 2);
    /// # Ok(())
    /// # }
    /// ```
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
            (info.version, info.page_size, info.region_size),
            (info.generation, info.tag),
            info.valid_end,
            index,
        ))
    }

    /// Sets how many bytes of zeros the writer keeps written past the end of
    /// the log (default: [`Storage::preferred_reserve`], 1 MiB for a
    /// [`crate::FileStorage`]; 0 turns it off).
    ///
    /// Why: appending changes the file's size, and an `fdatasync` after a
    /// size change must also commit the file system's journal (on ext4 and
    /// XFS about as long as the data flush itself). Records written over
    /// zeros that are already allocated and on disk change no metadata, so
    /// their `fdatasync` is a data flush only. When a snapshot's records
    /// pass the reserved zeros, the same snapshot writes the next `bytes`
    /// of zeros after them, covered by its one `fdatasync`: one snapshot in
    /// many pays the size change (a snapshot larger than a quarter of
    /// `bytes` reserves nothing: the zeros would not outlast the next one or
    /// two, and each of their bytes is written twice). The zeros are not records: a restore stops
    /// at them as at a torn tail, [`SnapshotWriter::open`] cuts them off, and
    /// dropping the writer trims them (best effort).
    pub fn set_reserve(&mut self, bytes: u64) {
        self.reserve = bytes;
    }

    /// Sets how many bytes are gathered before one write call (default 1 MiB;
    /// tests use small values to get many independently reorderable writes).
    ///
    /// Each batch is handed to write-back once the next one is written, so
    /// that the device writes it while the snapshot goes on. Not at once:
    /// the snapshot's next write would then wait for it (the page the two
    /// share is under write-back), and a snapshot just over one batch (256
    /// pages with their record headers) would reach the device in two
    /// writes one after the other instead of in one.
    pub fn set_write_batch(&mut self, bytes: usize) {
        self.batch = bytes.max(1);
    }

    /// The newest durable generation.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The tag of the newest durable generation ([`Snapshot::commit_tagged`];
    /// 0 if none was given).
    #[must_use]
    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// The log's format version: [`VERSION`] for a log this library
    /// created or compacted, 1 for an older log it continues (whose commit
    /// records cannot store tags: [`Snapshot::commit_tagged`] keeps the tag
    /// in memory until a compaction rewrites the log as [`VERSION`]).
    #[must_use]
    pub fn version(&self) -> u32 {
        self.version
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
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        Snapshot {
            generation: self.generation + 1,
            off: self.end,
            buf,
            slot: None,
            new: Vec::new(),
            unsent: None,
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
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use shm_snapshot::{MemStorage, SnapshotWriter};
    ///
    /// let mut writer = SnapshotWriter::create(MemStorage::default(), 4096, 8192)?;
    /// let mut state = vec![0u8; 8192];
    /// state[0] = 1;
    /// assert_eq!(writer.snapshot(&state)?, 1);
    /// let len = writer.len();
    /// // Only the changed page is appended.
    /// state[4096] = 1;
    /// assert_eq!(writer.snapshot(&state)?, 2);
    /// assert!(writer.len() - len < 8192);
    /// # Ok(())
    /// # }
    /// ```
    pub fn snapshot(&mut self, state: &[u8]) -> Result<u64, SnapshotError> {
        let tag = self.tag;
        self.snapshot_tagged(state, tag)
    }

    /// [`SnapshotWriter::snapshot`], its commit carrying `tag`
    /// ([`Snapshot::commit_tagged`]).
    ///
    /// # Errors
    /// As [`SnapshotWriter::snapshot`].
    pub fn snapshot_tagged(&mut self, state: &[u8], tag: u64) -> Result<u64, SnapshotError> {
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
        tx.commit_tagged(tag)
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
    pub fn compact_into<T: Storage>(&self, mut target: T) -> Result<T, SnapshotError> {
        target
            .set_len(0)
            .map_err(|e| SnapshotError::io("truncate", e))?;
        self.compact_to(target).map(|(t, _, _)| t)
    }

    /// Writes a compacted copy of the newest durable snapshot over the
    /// start of `target` (synced), then goes on appending to `target`, and
    /// returns the storage it replaces: a compaction that reuses storage.
    ///
    /// Unlike [`SnapshotWriter::compact_into`], `target` is not truncated:
    /// what it held after the image stays, and later snapshots overwrite it
    /// as the log grows. Pass the storage a previous `compact_onto`
    /// returned (an older log of this writer): its records are all older
    /// than the image's generation, so every reader stops at them as at a
    /// torn tail, and a file's blocks are reused instead of allocated
    /// ([`SnapshotWriter::compact_file`] does this with the file it
    /// replaced). `target` is read first, to check that: it must be empty,
    /// all zeros, or an intact log of this writer's geometry whose newest
    /// generation is older than this writer's.
    ///
    /// # Errors
    /// [`ErrorKind::SizeMismatch`] for a `target` that holds anything else
    /// (a newer or damaged log, another geometry; unreadable bytes give
    /// [`crate::inspect`]'s error); otherwise as
    /// [`SnapshotWriter::compact_into`]. The writer then goes on with its
    /// current storage.
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use shm_snapshot::{MemStorage, SnapshotWriter, restore};
    ///
    /// let mut writer = SnapshotWriter::create(MemStorage::default(), 4096, 8192)?;
    /// writer.snapshot(&[1u8; 8192])?;
    /// let spare = writer.compact_onto(MemStorage::default())?; // the first log
    /// writer.snapshot(&[2u8; 8192])?;
    /// let first = writer.compact_onto(spare)?; // back on the first log's storage
    /// writer.snapshot(&[3u8; 8192])?;
    /// let mut back = vec![0u8; 8192];
    /// let restored = restore(writer.storage(), |at, bytes| {
    ///     back[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
    /// })?;
    /// assert_eq!((restored.info.generation, back), (3, vec![3u8; 8192]));
    /// # drop(first);
    /// # Ok(())
    /// # }
    /// ```
    pub fn compact_onto(&mut self, target: S) -> Result<S, SnapshotError> {
        if target.len().map_err(|e| SnapshotError::io("stat", e))? > 0 {
            let info = super::restore::inspect(&target)?;
            let older = info.page_size == self.page_size
                && info.region_size == self.region_size
                && info.damage.is_none()
                && info.generation < self.generation;
            if !(info.all_zero || older) {
                return Err(SnapshotError::new(
                    ErrorKind::SizeMismatch,
                    format!(
                        "cannot compact onto a log at generation {} ({} B pages, {} B region{}): only an older log of this writer (generation below {}, {} B pages, {} B region) or empty storage",
                        info.generation,
                        info.page_size,
                        info.region_size,
                        if info.damage.is_some() {
                            ", damaged"
                        } else {
                            ""
                        },
                        self.generation,
                        self.page_size,
                        self.region_size
                    ),
                ));
            }
        }
        let (target, index, end) = self.compact_to(target)?;
        let len = target.len().map_err(|e| SnapshotError::io("stat", e))?;
        Ok(self.adopt(target, index, end, len))
    }

    /// Goes on appending to `target`, which holds this writer's compacted
    /// image up to `end` and is `len` bytes long; returns the storage it
    /// replaces.
    pub(super) fn adopt(&mut self, target: S, index: PageIndex, end: u64, len: u64) -> S {
        let old = std::mem::replace(&mut self.storage, target);
        self.end = end;
        // A reused storage's older records after `end` are overwritten as
        // the log grows, like reserved zeros.
        self.reserved_end = len.max(end);
        self.index = index;
        self.version = VERSION;
        old
    }

    /// [`SnapshotWriter::compact_into`] without truncating `target` first:
    /// whatever `target` holds after the image stays (a reused log's older
    /// records, which readers stop at: their generations are all older
    /// than the image's). Returns the end of the image.
    pub(super) fn compact_to<T: Storage>(
        &self,
        mut target: T,
    ) -> Result<(T, PageIndex, u64), SnapshotError> {
        target
            .write_at(
                0,
                &header_bytes(
                    self.page_size,
                    self.region_size,
                    self.generation.saturating_sub(1),
                    // The base carries the tag of the generation before the
                    // one commit below (the generation restored by `until`
                    // = base is not in this file, so only that commit's tag
                    // is ever read back; the header's is the same value).
                    self.tag,
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
        let mut unsent = None;
        for (i, (crc, loc)) in order {
            let len = usize::try_from(page_len(self.page_size, self.region_size, i)).unwrap_or(0);
            let p = &mut page[..len];
            rd(&self.storage, loc, p)?;
            if super::crc32c(p) != crc {
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
                // As `Snapshot::page`: the previous batch, once this one is written.
                if let Some((at, len)) = unsent.replace((off, buf.len() as u64)) {
                    target.start_writeback(at, len);
                }
                off += buf.len() as u64;
                buf.clear();
                crash_point!("compact.batch_written");
            }
        }
        let tag = self.tag.to_le_bytes();
        buf.extend_from_slice(&record_header(KIND_COMMIT, g, index.len() as u64, &tag));
        buf.extend_from_slice(&tag);
        target
            .write_at(off, &buf)
            .map_err(|e| SnapshotError::io("write", e))?;
        target
            .sync()
            .map_err(|e| SnapshotError::io("fdatasync", e))?;
        Ok((target, index, off + buf.len() as u64))
    }
}

impl<S: Storage> SnapshotWriter<S> {
    /// Writes [`SnapshotWriter::set_reserve`]'s zeros from `from` on, before
    /// the snapshot's sync. The zeros are an optimisation: a failed write
    /// (a full disk) is undone and the snapshot goes on without them.
    fn reserve_after(&mut self, from: u64) {
        if self.reserve == 0 {
            return;
        }
        let Ok(n) = usize::try_from(self.reserve) else {
            return;
        };
        match self.storage.write_at(from, &vec![0u8; n]) {
            Ok(()) => self.reserved_end = from + self.reserve,
            Err(e) => {
                tracing::debug!("no zeros reserved after the log ({e})");
                if let Err(e) = self.storage.set_len(from) {
                    tracing::warn!(end = from, "cannot cut the reserved zeros: {e}");
                }
            }
        }
    }
}

impl<S: Storage> Drop for SnapshotWriter<S> {
    fn drop(&mut self) {
        // Trim the reserved zeros (or a reused log's older records) so a
        // file at rest ends with its last commit. Not synced: a crash keeps
        // either length, and what follows the last commit is ignored by
        // every reader.
        if self.reserved_end > self.end
            && let Err(e) = self.storage.set_len(self.end)
        {
            tracing::debug!(end = self.end, "cannot trim the reserved zeros: {e}");
        }
        if let Some(spare) = self.spare.take() {
            spare.discard();
        }
    }
}

/// One snapshot being appended ([`SnapshotWriter::begin`]).
#[derive(Debug)]
pub struct Snapshot<'w, S: Storage> {
    w: &'w mut SnapshotWriter<S>,
    generation: u64,
    /// File offset where `buf` starts.
    off: u64,
    buf: Batch,
    /// The page whose slot ends `buf` ([`Snapshot::slot`]), and where its
    /// record starts in `buf`.
    slot: Option<(u64, usize)>,
    /// Pages appended: index, crc, payload offset.
    new: Vec<(u64, u32, u64)>,
    /// The last batch written and not yet handed to write-back.
    unsent: Option<(u64, u64)>,
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
        self.slot(index, bytes.len())?.copy_from_slice(bytes);
        self.keep()
    }

    /// Room for page `index`, `len` bytes long, at the end of the write
    /// buffer, for the caller to fill whole; then [`Snapshot::keep`] appends
    /// it as [`Snapshot::page`] does, or [`Snapshot::discard`] forgets it.
    /// A page copied straight into its record this way is checksummed while
    /// it is still in the CPU's caches, and is not copied again before its
    /// `pwrite`. A slot not kept yet is discarded by the next one.
    ///
    /// # Errors
    /// As [`Snapshot::page`], before any byte is reserved.
    pub(crate) fn slot(&mut self, index: u64, len: usize) -> Result<&mut [u8], SnapshotError> {
        self.discard();
        let w = &*self.w;
        if index >= w.pages() || len as u64 != page_len(w.page_size, w.region_size, index) {
            return Err(SnapshotError::new(
                ErrorKind::SizeMismatch,
                format!("page {index} of {len} bytes does not fit the region"),
            ));
        }
        if self.failed {
            return Err(SnapshotError::new(
                ErrorKind::Io,
                "an earlier write of this snapshot failed",
            ));
        }
        self.slot = Some((index, self.buf.len()));
        // The record header is written by `keep`, once the page's checksum is known.
        Ok(&mut self.buf.grow(REC_LEN as usize + len)[REC_LEN as usize..])
    }

    /// Appends the page in the last [`Snapshot::slot`] unless its checksum
    /// equals its newest durable version's (the slot is then discarded);
    /// returns whether it was. `Ok(false)` without a slot.
    ///
    /// # Errors
    /// I/O errors, after which only dropping is useful.
    pub(crate) fn keep(&mut self) -> Result<bool, SnapshotError> {
        let Some((index, start)) = self.slot.take() else {
            return Ok(false);
        };
        let w = &mut *self.w;
        let body = start + REC_LEN as usize;
        let bytes = &self.buf.filled()[body..];
        let crc = super::crc32c(bytes);
        if crc == w.crc_of(index) {
            self.buf.truncate(start);
            return Ok(false);
        }
        let head = record_header_hashed(KIND_PAGE, self.generation, index, bytes, Some(crc));
        self.buf.filled_mut()[start..body].copy_from_slice(&head);
        self.new.push((index, crc, self.off + body as u64));
        if self.buf.len() >= w.batch {
            self.wrote = true;
            if let Err(e) = w.storage.write_at(self.off, self.buf.filled()) {
                self.failed = true;
                return Err(SnapshotError::io("write", e));
            }
            // Overlap the device writes with checksumming the next batches:
            // the batch before this one, whose last page this one completed.
            if let Some((at, len)) = self.unsent.replace((self.off, self.buf.len() as u64)) {
                w.storage.start_writeback(at, len);
            }
            self.off += self.buf.len() as u64;
            self.buf.clear();
            crash_point!("writer.batch_written");
        }
        Ok(true)
    }

    /// Forgets the page in the last [`Snapshot::slot`], if any.
    pub(crate) fn discard(&mut self) {
        if let Some((_, start)) = self.slot.take() {
            self.buf.truncate(start);
        }
    }

    /// Pages appended so far.
    #[must_use]
    pub fn pages_written(&self) -> usize {
        self.new.len()
    }

    /// Appends the commit record and syncs: the snapshot is then durable.
    /// Returns its generation. The commit carries the previous generation's
    /// tag ([`Snapshot::commit_tagged`]).
    ///
    /// # Errors
    /// I/O errors (e.g. a full disk): the previous snapshot stays the newest
    /// valid one.
    pub fn commit(self) -> Result<u64, SnapshotError> {
        let tag = self.w.tag;
        self.commit_tagged(tag)
    }

    /// [`Snapshot::commit`], with `tag` stored in the commit record: eight
    /// bytes the caller chooses, read back as [`FileInfo::tag`](super::FileInfo::tag)
    /// by a restore of this generation and carried by compaction. A host
    /// stores the program's own generation number there, so that a snapshot
    /// needs no page of its own for it.
    ///
    /// In a version 1 log ([`SnapshotWriter::version`]), whose commit
    /// records have no room for a tag, the tag is kept in memory only (and
    /// written by the next compaction, which upgrades the log).
    ///
    /// # Errors
    /// As [`Snapshot::commit`].
    ///
    /// # Examples
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use shm_snapshot::{MemStorage, SnapshotWriter, inspect};
    ///
    /// let mut writer = SnapshotWriter::create(MemStorage::default(), 4096, 4096)?;
    /// let mut tx = writer.begin();
    /// tx.page(0, &[9u8; 4096])?;
    /// assert_eq!(tx.commit_tagged(1234)?, 1);
    /// assert_eq!(inspect(writer.storage())?.tag, 1234);
    /// # Ok(())
    /// # }
    /// ```
    pub fn commit_tagged(mut self, tag: u64) -> Result<u64, SnapshotError> {
        if self.failed {
            return Err(SnapshotError::new(
                ErrorKind::Io,
                "an earlier write of this snapshot failed",
            ));
        }
        self.discard();
        let payload = tag.to_le_bytes();
        let payload: &[u8] = if self.w.version >= 2 { &payload } else { &[] };
        self.buf.extend_from_slice(&record_header(
            KIND_COMMIT,
            self.generation,
            self.new.len() as u64,
            payload,
        ));
        self.buf.extend_from_slice(payload);
        let w = &mut *self.w;
        self.wrote = true;
        w.storage
            .write_at(self.off, self.buf.filled())
            .map_err(|e| SnapshotError::io("write", e))?;
        self.off += self.buf.len() as u64;
        if self.off > w.reserved_end {
            w.reserved_end = self.off;
            // Zeros pay off only if they serve several snapshots of this
            // size: each byte of them is written twice (as a zero, then as a
            // record), to spare later syncs a size change. A snapshot larger
            // than a quarter of the reserve lets the file grow instead.
            if (self.off - w.end).saturating_mul(4) <= w.reserve {
                w.reserve_after(self.off);
            }
        }
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
        w.tag = tag;
        self.done = true;
        Ok(self.generation)
    }
}

impl<S: Storage> Drop for Snapshot<'_, S> {
    fn drop(&mut self) {
        // The next snapshot gathers its records in the same buffer.
        self.w.scratch = std::mem::take(&mut self.buf);
        if !self.done && self.wrote {
            // Best effort: readers ignore an uncommitted tail anyway, and the
            // next snapshot overwrites it from `end`. A write that failed
            // partway (ENOSPC) left bytes beyond `off`: cut from `end`.
            self.w.reserved_end = self.w.end;
            if let Err(e) = self.w.storage.set_len(self.w.end) {
                tracing::warn!(
                    end = self.w.end,
                    "cannot cut an unfinished snapshot's tail: {e}"
                );
            }
        }
    }
}

/// A snapshot's write buffer: its bytes stay allocated, and initialized,
/// between batches and snapshots, so [`Batch::grow`] hands out room a page
/// is copied into without zeroing it first (only the buffer's first growth
/// to its largest size writes zeros).
#[derive(Debug, Default)]
struct Batch {
    bytes: Vec<u8>,
    /// The bytes in use: `bytes[..len]`.
    len: usize,
}

impl Batch {
    fn len(&self) -> usize {
        self.len
    }

    fn filled(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn filled_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.len]
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    /// Drops the bytes from `len` on (no-op if fewer are in use).
    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// `n` more bytes in use, returned for the caller to overwrite (they
    /// hold whatever an earlier batch left there).
    fn grow(&mut self, n: usize) -> &mut [u8] {
        let start = self.len;
        let end = start + n;
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        self.len = end;
        &mut self.bytes[start..end]
    }

    fn extend_from_slice(&mut self, b: &[u8]) {
        self.grow(b.len()).copy_from_slice(b);
    }
}

#[cfg(test)]
mod tests {
    use crate::{MemStorage, SnapshotWriter};

    fn page(fill: u8) -> Vec<u8> {
        vec![fill; 4096]
    }

    /// The log `page` leaves, and the one slots leave when every discarded
    /// or replaced slot is forgotten: the same bytes.
    #[test]
    fn slots_kept_make_the_log_pages_make() {
        let (mut a, mut b) = (
            SnapshotWriter::create(MemStorage::default(), 4096, 4 * 4096).unwrap(),
            SnapshotWriter::create(MemStorage::default(), 4096, 4 * 4096).unwrap(),
        );
        for round in 1..4u8 {
            let mut tx = a.begin();
            assert!(tx.page(0, &page(round)).unwrap());
            assert!(tx.page(2, &page(round + 10)).unwrap());
            // Unchanged since the last snapshot: not appended.
            assert!(!tx.page(3, &page(0)).unwrap());
            tx.commit_tagged(u64::from(round)).unwrap();

            let mut tx = b.begin();
            tx.slot(0, 4096).unwrap().fill(round);
            assert!(tx.keep().unwrap());
            // A torn copy, discarded; then one replaced by the next slot.
            tx.slot(1, 4096).unwrap().fill(0xee);
            tx.discard();
            tx.slot(3, 4096).unwrap().fill(0xdd);
            tx.slot(2, 4096).unwrap().fill(round + 10);
            assert!(tx.keep().unwrap());
            // `keep` without a slot keeps nothing.
            assert!(!tx.keep().unwrap());
            tx.slot(3, 4096).unwrap().fill(0);
            assert!(!tx.keep().unwrap());
            // Left in a slot at the commit: forgotten.
            tx.slot(1, 4096).unwrap().fill(0xcc);
            tx.commit_tagged(u64::from(round)).unwrap();
            assert_eq!(a.storage().data, b.storage().data, "round {round}");
        }
    }

    #[test]
    fn a_slot_outside_the_region_is_refused_before_any_byte() {
        let mut w = SnapshotWriter::create(MemStorage::default(), 4096, 2 * 4096).unwrap();
        let mut tx = w.begin();
        assert!(tx.slot(2, 4096).is_err());
        assert!(tx.slot(1, 100).is_err());
        assert!(!tx.keep().unwrap());
        assert_eq!(tx.commit_tagged(1).unwrap(), 1);
        assert_eq!(w.len(), crate::inspect(w.storage()).unwrap().valid_end);
    }
}
