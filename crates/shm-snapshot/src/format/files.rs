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
        self.reserved_end = end;
        self.index = index;
        self.version = super::VERSION;
        sync_dir_of(path).map_err(|e| SnapshotError::io("fsync directory", e))?;
        crash_point!("compact.dir_synced");
        Ok(())
    }
}
