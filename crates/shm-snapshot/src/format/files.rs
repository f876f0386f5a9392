//! The files a log lives in: temporary files created beside it without
//! following anything planted there, stale ones removed, and compaction of
//! a file swapped in by rename.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::writer::SnapshotWriter;
use crate::error::{ErrorKind, SnapshotError};
use crate::storage::{FileStorage, Storage};

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

/// `fsync`s the directory holding `path`: a new or renamed entry survives
/// a power loss once it returns `Ok`.
pub(crate) fn sync_dir_of(path: &Path) -> std::io::Result<()> {
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

/// The byte of a snapshot file that readers lock shared ([`pin`]) and a
/// writer locks exclusively before it overwrites a retired log ([`Spare`]).
/// The locks are advisory OFD locks: they guard no bytes.
pub(crate) const PIN_BYTE: u64 = 0;

/// How many times, 10 ms apart, [`crate::FileStorage::open`] opens a path
/// again when the file it got is being overwritten by its writer at that
/// moment (the inode was a retired log, and the path names another one by
/// then): 2 s in all.
const PIN_TRIES: u32 = 200;

/// Pins `file` for reading: a shared lock on [`PIN_BYTE`] of its own
/// description, held until the description is closed, so that no writer
/// recycles the inode ([`Spare`]) while it is read. `false`: a writer
/// holds the byte (it is rewriting this inode); `true` also where the file
/// system has no OFD locks (then no writer recycles either: its exclusive
/// lock fails the same way).
pub(crate) fn pin(file: &File) -> bool {
    use std::os::fd::AsFd;
    shm_segment::lock_shared(file.as_fd(), PIN_BYTE).unwrap_or_else(|e| {
        tracing::debug!("no OFD lock to pin the snapshot file for reading: {e}");
        true
    })
}

/// Opens `path` with `open` until the file it gets can be [`pin`]ned:
/// a writer that recycles a retired log holds its pin byte for as long as
/// it writes a compacted image into it, and by then `path` names another
/// inode.
pub(crate) fn open_pinned(
    path: &Path,
    open: impl Fn() -> Result<File, SnapshotError>,
) -> Result<File, SnapshotError> {
    for _ in 0..PIN_TRIES {
        let f = open()?;
        if pin(&f) {
            return Ok(f);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(SnapshotError::new(
        ErrorKind::Io,
        format!(
            "{}: another process holds its pin byte exclusively (a writer rewriting it) for over 2 s",
            path.display()
        ),
    ))
}

/// A second description of the writer's file, read-only and [`pin`]ned:
/// what a reader in the writer's own process (the replica uploader) holds,
/// so that the writer does not recycle the inode under it. A `dup` would
/// not do: it shares the writer's description, whose locks never conflict
/// with the writer's own.
#[cfg(feature = "replica")]
pub(crate) fn pinned_reader(file: &File) -> std::io::Result<File> {
    use std::os::fd::AsRawFd;
    let reopened = File::open(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    if pin(&reopened) {
        Ok(reopened)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "the snapshot file's pin byte is held exclusively",
        ))
    }
}

/// A retired log kept for reuse by the next compaction: the log a
/// compaction replaced, under a temporary name (`NAME.compact.*.tmp`).
///
/// Why: its blocks are allocated and written, so the next compaction
/// overwrites them instead of allocating a new file, and the snapshots
/// appended after it land on blocks the file already has: their
/// `fdatasync` flushes data and commits no size change or block
/// allocation to the file system's journal (what databases get by
/// recycling their write-ahead log's segment files). Its old records stay
/// after the new log's end; their generations are all older than the
/// compacted image's, so every reader stops at them as at a torn tail.
///
/// A retired log may still be read: by a process that opened FILE before
/// the compaction, or by the replica uploader. Readers [`pin`] what they
/// read; the writer recycles a spare only while it holds [`PIN_BYTE`]
/// exclusively, and drops it otherwise.
#[derive(Debug)]
pub(crate) struct Spare {
    file: File,
    path: PathBuf,
}

impl Spare {
    /// Whether `path` still names this spare's inode.
    fn named(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self.file.metadata(), std::fs::symlink_metadata(&self.path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino() && b.file_type().is_file(),
            _ => false,
        }
    }

    /// The spare's file and name, with its pin byte held, if no reader pins
    /// it and its name still refers to it; otherwise it is discarded.
    fn claim(self) -> Option<(File, PathBuf, shm_segment::OfdLock)> {
        use std::os::fd::AsFd;
        if !self.named() {
            tracing::debug!("the retired log's name was taken: not reusing it");
            return None;
        }
        match shm_segment::OfdLock::try_acquire(self.file.as_fd(), PIN_BYTE) {
            Ok(Some(lock)) => Some((self.file, self.path, lock)),
            Ok(None) => {
                tracing::debug!("a reader pins the retired log: compacting into a new file");
                self.discard();
                None
            }
            Err(e) => {
                tracing::debug!("cannot lock the retired log ({e}): compacting into a new file");
                self.discard();
                None
            }
        }
    }

    /// Removes the spare's name if it still refers to it (best effort).
    pub(crate) fn discard(self) {
        if self.named()
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            tracing::debug!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Swaps the names `tmp` and `path` in one step (`renameat2` with
/// `RENAME_EXCHANGE`): `path` then names the new log and `tmp` the old one,
/// kept as a [`Spare`]. Where the file system cannot exchange names, a plain
/// rename replaces `path` and the old log is freed. Returns whether the
/// names were exchanged.
fn swap_in(tmp: &Path, path: &Path) -> std::io::Result<bool> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, tmp, CWD, path, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(true),
        Err(
            e @ (rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::NOENT),
        ) => {
            tracing::debug!("cannot exchange the compacted log with the old one ({e}): renaming");
            std::fs::rename(tmp, path).map(|()| false)
        }
        Err(e) => Err(e.into()),
    }
}

impl SnapshotWriter<FileStorage> {
    /// Replaces the log at `path` (this writer's file) by a compacted copy
    /// of the newest durable snapshot ([`SnapshotWriter::compact_into`]):
    /// writes a temporary file next to it and `fdatasync`s it, gives it
    /// `path`'s mode, owner and group, swaps it in for `path` in one rename,
    /// then `fsync`s the directory, and continues appending to the new file.
    ///
    /// The temporary file is the log the previous compaction replaced, kept
    /// under its temporary name, when nobody reads it any more: its blocks
    /// are already allocated and written, so neither this compaction nor the
    /// snapshots appended after it change the file's size or allocate
    /// blocks (their `fdatasync` commits no metadata). Readers that open
    /// the path through [`FileStorage::open`] pin the inode they read (a
    /// shared OFD lock on its byte 0), and a pinned old log is never
    /// reused: a new file is created instead (exclusively, never following
    /// a symlink, mode 0600, under a random name), as on the first
    /// compaction. Dropping the writer removes the kept log.
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
        let (f, tmp, lock) = if let Some((f, tmp, lock)) = self.spare.take().and_then(Spare::claim)
        {
            (f, tmp, Some(lock))
        } else {
            let (f, tmp) = create_exclusive(path).map_err(|e| {
                SnapshotError::io(&format!("create {}", compact_temp_path(path).display()), e)
            })?;
            (f, tmp, None)
        };
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
        let (target, index, end) = self.compact_to(FileStorage(f)).map_err(discard)?;
        // The image is synced: readers may have it (a reader that opened
        // the old log long ago reads a complete log, whose tail is older
        // records it stops at).
        drop(lock);
        let len = target
            .len()
            .map_err(|e| discard(SnapshotError::io(&format!("stat {tshow}"), e)))?;
        crash_point!("compact.temp_synced");
        let exchanged = swap_in(&tmp, path)
            .map_err(|e| discard(SnapshotError::io(&format!("rename {tshow} to {show}"), e)))?;
        crash_point!("compact.renamed");
        // From here on the new file is the log, whatever happens below.
        let old = self.adopt(target, index, end, len);
        if exchanged {
            self.spare = Some(Spare {
                file: old.0,
                path: tmp,
            });
        }
        sync_dir_of(path).map_err(|e| SnapshotError::io("fsync directory", e))?;
        crash_point!("compact.dir_synced");
        Ok(())
    }
}
