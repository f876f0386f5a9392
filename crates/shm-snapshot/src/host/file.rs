//! FILE on disk: resolving it once, opening and checking it, reading it
//! (refusing damage unless told otherwise), creating it private, and the
//! rebuild that writes a new FILE beside the original and keeps the
//! original aside as `FILE.damaged.SECS`.

use std::fs::File;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use super::{HostError, LoadProgress};
use crate::live::{self, Host};
use crate::{
    ErrorKind, FileStorage, RestoreOptions, Restored, SnapshotWriter, Storage, read_header,
    remove_stale_compaction, restore_with,
};

/// The image FILE holds starts with a [`live::CONTROL_LEN`]-byte (4096)
/// prefix page; the state region follows: page `i + 1` of the image is page
/// `i` of the state. In a FILE of format version 2 the program's commit
/// generation is each commit record's tag ([`crate::Snapshot::commit_tagged`])
/// and the host never writes the prefix. In version 1 it was this prefix:
/// the generation in the first 8 bytes (little-endian), the rest zero, written
/// with every snapshot. A host continuing a version 1 FILE still writes it,
/// until the next compaction rewrites FILE as version 2.
///
/// # Examples
/// ```
/// let p = shm_snapshot::host::prefix(7);
/// assert_eq!(p.len(), 4096);
/// assert_eq!(u64::from_le_bytes(p[..8].try_into()?), 7);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use]
pub fn prefix(generation: u64) -> Vec<u8> {
    let mut p = vec![0u8; live::CONTROL_LEN as usize];
    p[..8].copy_from_slice(&generation.to_le_bytes());
    p
}

/// FILE as given, or the file a symlink at FILE points to: resolved once,
/// so that compaction and rebuilds replace the real file in its own
/// directory (renaming over the link would leave the target stale).
pub(crate) fn resolve(path: &Path) -> Result<PathBuf, HostError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            let real = std::fs::canonicalize(path).map_err(|source| HostError::Resolve {
                path: path.to_path_buf(),
                source,
            })?;
            tracing::info!(
                "{} is a symlink: working on {}",
                path.display(),
                real.display()
            );
            Ok(real)
        }
        _ => Ok(path.to_path_buf()),
    }
}

/// Removes the temporary files of a compaction or rebuild that a killed host
/// left behind.
pub(crate) fn cleanup_temp(path: &Path) {
    match remove_stale_compaction(path) {
        Ok(removed) => {
            for p in removed {
                tracing::info!("removed stale {}", p.display());
            }
        }
        Err(e) => tracing::warn!("cannot remove stale compaction files: {e}"),
    }
}

/// FILE, opened and its header checked (not yet read).
#[derive(Debug)]
pub(crate) struct Opened {
    file: File,
    /// The state region size the file holds.
    pub(crate) region: u64,
}

/// FILE as read by one pass of [`restore_with`].
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) file: File,
    pub(crate) restored: Restored,
    /// The program's commit generation in the image.
    pub(crate) generation: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HostError + '_ {
    move |source| HostError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read(path: &Path) -> impl FnOnce(crate::SnapshotError) -> HostError + '_ {
    move |source| HostError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens FILE and checks that its header describes a state a host can
/// hold; `None` if it does not exist.
pub(crate) fn open_file(path: &Path) -> Result<Option<Opened>, HostError> {
    if !path.exists() && path.symlink_metadata().is_err() {
        return Ok(None);
    }
    let file = FileStorage::open(path, true)
        .map_err(|source| HostError::Open {
            path: path.to_path_buf(),
            source,
        })?
        .0;
    let header =
        read_header(&FileStorage(file.try_clone().map_err(io(path))?)).map_err(read(path))?;
    if header.region_size <= live::CONTROL_LEN {
        return Err(HostError::TooSmall {
            path: path.to_path_buf(),
            image_size: header.region_size,
        });
    }
    if u64::from(header.page_size) != live::PAGE {
        return Err(HostError::PageSize {
            path: path.to_path_buf(),
            page_size: header.page_size,
        });
    }
    Ok(Some(Opened {
        file,
        region: header.region_size - live::CONTROL_LEN,
    }))
}

/// Reads FILE once (header, then every valid record), handing the state's
/// bytes to `state(offset, bytes)` as they are verified.
pub(crate) fn load(
    path: &Path,
    opened: Opened,
    opts: RestoreOptions,
    progress: &mut dyn LoadProgress,
    mut state: impl FnMut(u64, &[u8]),
) -> Result<Loaded, HostError> {
    let st = FileStorage(opened.file.try_clone().map_err(io(path))?);
    let mut head = [0u8; 8];
    progress.start(st.len().unwrap_or(0));
    let restored = restore_with(
        &st,
        opts,
        |off, b| {
            // Split at the end of the prefix: bytes before it are the image's
            // generation field, the rest is state.
            let cut = usize::try_from(live::CONTROL_LEN.saturating_sub(off))
                .unwrap_or(usize::MAX)
                .min(b.len());
            let (pre, rest) = b.split_at(cut);
            if let Some(n) = usize::try_from(off).ok().filter(|&o| o < 8) {
                let k = pre.len().min(8 - n);
                head[n..n + k].copy_from_slice(&pre[..k]);
            }
            if !rest.is_empty() {
                state(off + cut as u64 - live::CONTROL_LEN, rest);
            }
        },
        |done, total| progress.update(done, total),
    )
    .map_err(|source| {
        if source.kind() == ErrorKind::Damaged {
            HostError::Damaged {
                path: path.to_path_buf(),
                source,
            }
        } else {
            read(path)(source)
        }
    })?;
    progress.finish();
    report_load(path, &restored);
    Ok(Loaded {
        file: opened.file,
        generation: program_generation(&restored.info, head),
        restored,
    })
}

/// The program's commit generation in a restored image whose first 8 bytes
/// are `head`: the newest commit's tag from format version 2 on, the image
/// prefix in version 1, 0 for an all-zero FILE.
pub(crate) fn program_generation(info: &crate::FileInfo, head: [u8; 8]) -> u64 {
    if info.all_zero {
        0
    } else if info.version >= 2 {
        info.tag
    } else {
        u64::from_le_bytes(head)
    }
}

/// Logs what a load found besides the generation it restored: a torn tail
/// it ignored, or what a salvage had to take from before the damage.
fn report_load(path: &Path, r: &Restored) {
    let show = path.display();
    let i = &r.info;
    if let Some(s) = &r.salvage {
        // Image page 0 is the prefix; image page `i + 1` is state page `i`.
        let state_pages: Vec<_> = s
            .pages_from_before
            .iter()
            .map(|p| p.start.saturating_sub(1)..p.end.saturating_sub(1))
            .filter(|p| !p.is_empty())
            .collect();
        let n: u64 = state_pages.iter().map(|p| p.end - p.start).sum();
        tracing::warn!(
            "{show}: salvaged file generation {} across the damage ({}); {n} state pages of 4096 bytes could only be taken from file generation {} or before (a damaged record may have held a newer version): {}",
            s.generation,
            s.damage,
            s.damage.last_before,
            show_ranges(&state_pages)
        );
    } else if i.damage.is_none() && i.valid_end < i.file_len && !i.all_zero && i.commits == 0 {
        tracing::warn!(
            "{show}: no complete commit found: the {} bytes after the header were ignored (a first snapshot a crash interrupted, or a cut file); starting from an all-zero state",
            i.file_len - i.valid_end
        );
    } else if i.damage.is_none() && i.valid_end + i.reserved < i.file_len && !i.all_zero {
        tracing::info!(
            "{show}: ignored a torn tail of {} bytes after file generation {} (a snapshot a crash interrupted)",
            i.file_len - i.valid_end,
            i.generation
        );
    }
}

/// Page ranges as `0-3, 7, 9-12`, at most 20 of them.
fn show_ranges(r: &[std::ops::Range<u64>]) -> String {
    let mut out: Vec<String> = r
        .iter()
        .take(20)
        .map(|p| {
            if p.end - p.start == 1 {
                p.start.to_string()
            } else {
                format!("{}-{}", p.start, p.end - 1)
            }
        })
        .collect();
    if r.len() > 20 {
        out.push(format!("and {} more ranges", r.len() - 20));
    }
    out.join(", ")
}

/// The continued log of a loaded FILE.
pub(crate) fn continue_file(
    path: &Path,
    l: Loaded,
) -> Result<SnapshotWriter<FileStorage>, HostError> {
    SnapshotWriter::open_restored(FileStorage(l.file), l.restored).map_err(|source| {
        HostError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// A new FILE for the image of a `region`-byte state, mode 0600 (it holds
/// the program's whole state), its directory synced.
///
/// The file is written and `fdatasync`ed under a temporary name next to
/// FILE and only then renamed to FILE, refusing to replace anything there:
/// a host killed while creating FILE leaves no FILE (the next start creates
/// it again and removes the temporary file), never an empty or half-written
/// one that a later start would refuse, and two hosts racing to create FILE
/// cannot both succeed.
pub(crate) fn create_file(
    path: &Path,
    region: u64,
) -> Result<SnapshotWriter<FileStorage>, HostError> {
    let (w, tmp) = create_beside(path, region)?;
    shm_sync::crash_point!("create.temp_synced");
    // RENAME_NOREPLACE (Linux 3.15; ext4, xfs, btrfs, tmpfs) makes "FILE
    // did not exist" and "FILE is now this file" one atomic step, as
    // O_CREAT | O_EXCL did for the direct create.
    let cwd = rustix::fs::CWD;
    if let Err(e) =
        rustix::fs::renameat_with(cwd, &tmp, cwd, path, rustix::fs::RenameFlags::NOREPLACE)
    {
        let _ = std::fs::remove_file(&tmp);
        return Err(HostError::Create {
            path: path.to_path_buf(),
            source: e.into(),
        });
    }
    shm_sync::crash_point!("create.renamed");
    sync_dir(path)?;
    Ok(w)
}

/// A new, empty snapshot file for the image of a `region`-byte state, at a
/// temporary name next to `path` (renamed over it once it holds the state).
pub(crate) fn create_beside(
    path: &Path,
    region: u64,
) -> Result<(SnapshotWriter<FileStorage>, PathBuf), HostError> {
    let (f, tmp) = crate::create_temp_beside(path).map_err(|source| HostError::CreateBeside {
        path: path.to_path_buf(),
        source,
    })?;
    let w = new_log(f, &tmp, region)?;
    Ok((w, tmp))
}

/// The header of a new log in `f` (at `path`, for messages).
fn new_log(f: File, path: &Path, region: u64) -> Result<SnapshotWriter<FileStorage>, HostError> {
    let page = u32::try_from(live::PAGE).unwrap_or(4096);
    SnapshotWriter::create(FileStorage(f), page, live::CONTROL_LEN + region).map_err(|source| {
        HostError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Puts the new file of a rebuild in place: the original FILE is kept aside
/// ([`keep_aside`]), then `tmp` is renamed over FILE. Returns the name the
/// original is kept as.
pub(crate) fn replace_with(path: &Path, tmp: &Path) -> Result<PathBuf, HostError> {
    let aside = keep_aside(path)?;
    std::fs::rename(tmp, path).map_err(|source| HostError::Rename {
        from: tmp.to_path_buf(),
        to: path.to_path_buf(),
        source,
    })?;
    sync_dir(path)?;
    Ok(aside)
}

/// Keeps the original FILE as `FILE.damaged.SECONDS[.N]` (SECONDS since the
/// epoch, `N` from 1 when that name is taken): a hard link, so FILE itself
/// is replaced only once its successor is complete. Returns the name.
///
/// # Errors
/// [`HostError::KeepAside`] for an OS error, [`HostError::NoAsideName`] when
/// 100 names are taken.
///
/// # Examples
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = std::env::temp_dir().join(format!("keep-aside-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let file = dir.join("state.snap");
/// std::fs::write(&file, b"old log")?;
/// let aside = shm_snapshot::host::keep_aside(&file)?;
/// assert!(aside.to_string_lossy().contains("state.snap.damaged."));
/// assert_eq!(std::fs::read(&aside)?, b"old log");
/// assert!(file.exists(), "the original stays until it is replaced");
/// std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
pub fn keep_aside(path: &Path) -> Result<PathBuf, HostError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for n in 0..100 {
        let aside = aside_name(path, secs, n);
        match std::fs::hard_link(path, &aside) {
            Ok(()) => return Ok(aside),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(HostError::KeepAside {
                    path: path.to_path_buf(),
                    aside,
                    source,
                });
            }
        }
    }
    Err(HostError::NoAsideName {
        path: path.to_path_buf(),
    })
}

/// `FILE.damaged.SECS`, then `FILE.damaged.SECS.N` for `n > 0`.
fn aside_name(path: &Path, secs: u64, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".damaged.{secs}"));
    if n > 0 {
        name.push(format!(".{n}"));
    }
    PathBuf::from(name)
}

/// Whether an inherited fd is not a snapshot memfd and reads as all zeros
/// (holes are skipped without reading them): a fresh region a supervisor
/// created (`shm-fd --supervise` does the first time), nobody's data, which
/// a host may replace by a memfd of its own. A memfd with other contents is
/// never fresh.
///
/// # Examples
/// ```
/// use std::os::fd::AsFd;
/// let fd = shm_segment::memfd::create("fresh", 1 << 16, shm_segment::memfd::FIXED_SIZE)?;
/// assert!(shm_snapshot::host::is_fresh(fd.as_fd()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn is_fresh(fd: BorrowedFd<'_>) -> bool {
    if Host::open(fd).is_ok() {
        return false;
    }
    let Ok(dup) = fd.try_clone_to_owned() else {
        return false;
    };
    crate::inspect(&FileStorage(File::from(dup))).is_ok_and(|i| i.all_zero)
}

/// `fsync`s the directory holding `path`, so that a created or renamed FILE
/// survives a power loss before its generation is published as durable.
fn sync_dir(path: &Path) -> Result<(), HostError> {
    crate::format::files::sync_dir_of(path).map_err(|source| HostError::SyncDir {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(what: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "host-file-{what}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn aside_names_count_up_after_the_seconds() {
        let p = Path::new("/d/state.snap");
        assert_eq!(
            aside_name(p, 1700, 0),
            Path::new("/d/state.snap.damaged.1700")
        );
        assert_eq!(
            aside_name(p, 1700, 3),
            Path::new("/d/state.snap.damaged.1700.3")
        );
    }

    #[test]
    fn keep_aside_takes_the_next_free_name_and_keeps_the_bytes() {
        let dir = temp_dir("aside");
        let file = dir.join("state.snap");
        std::fs::write(&file, b"log").unwrap();
        let first = keep_aside(&file).unwrap();
        let second = keep_aside(&file).unwrap();
        assert_ne!(first, second);
        let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name(&first).starts_with("state.snap.damaged."), "{first:?}");
        assert!(
            name(&second).starts_with("state.snap.damaged."),
            "{second:?}"
        );
        for p in [&first, &second, &file] {
            assert_eq!(std::fs::read(p).unwrap(), b"log");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keep_aside_of_a_missing_file_names_both() {
        let dir = temp_dir("aside-missing");
        let file = dir.join("gone.snap");
        let e = keep_aside(&file).unwrap_err();
        assert!(matches!(e, HostError::KeepAside { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("gone.snap: keeping the original as"), "{msg}");
        assert!(std::error::Error::source(&e).is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn prefix_holds_the_generation_then_zeros() {
        let p = prefix(0x0102_0304_0506_0708);
        assert_eq!(p.len(), 4096);
        assert_eq!(p[..8], 0x0102_0304_0506_0708u64.to_le_bytes());
        assert!(p[8..].iter().all(|&b| b == 0));
    }

    /// A log of `generations` snapshots of a one-page state (each page all
    /// the generation's low byte), written as the host writes them.
    fn write_log(path: &Path, generations: u64) {
        let f = File::create_new(path).unwrap();
        let mut w = SnapshotWriter::create(FileStorage(f), 4096, 2 * 4096).unwrap();
        for g in 1..=generations {
            let mut tx = w.begin();
            tx.page(1, &[g as u8; 4096]).unwrap();
            tx.commit_tagged(g).unwrap();
        }
    }

    #[test]
    fn open_and_load_give_the_program_generation_and_state() {
        let dir = temp_dir("load");
        let file = dir.join("state.snap");
        write_log(&file, 3);
        let opened = open_file(&file).unwrap().expect("FILE exists");
        assert_eq!(opened.region, 4096);
        let mut state = vec![0u8; 4096];
        let l = load(&file, opened, RestoreOptions::default(), &mut (), |o, b| {
            let o = usize::try_from(o).unwrap();
            state[o..o + b.len()].copy_from_slice(b);
        })
        .unwrap();
        assert_eq!(l.generation, 3);
        assert!(state.iter().all(|&b| b == 3));
        assert!(open_file(&dir.join("missing")).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_file_is_refused_and_left_unchanged() {
        let dir = temp_dir("damaged");
        let file = dir.join("state.snap");
        write_log(&file, 3);
        // Flip a byte in the first snapshot's records: intact, durable
        // snapshots follow, so this is damage, not a torn tail.
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[200] ^= 0x40;
        std::fs::write(&file, &bytes).unwrap();
        let opened = open_file(&file).unwrap().unwrap();
        let e = load(&file, opened, RestoreOptions::default(), &mut (), |_, _| {}).unwrap_err();
        let HostError::Damaged { path, source } = &e else {
            panic!("not refused as damaged: {e:?}");
        };
        assert_eq!(path, &file);
        assert_eq!(source.kind(), ErrorKind::Damaged);
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("{}: ", file.display())), "{msg}");
        assert!(msg.ends_with("; nothing was changed"), "{msg}");
        assert_eq!(std::fs::read(&file).unwrap(), bytes, "FILE was changed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn too_small_or_foreign_files_are_refused_naming_them() {
        let dir = temp_dir("small");
        let small = dir.join("small.snap");
        let f = File::create_new(&small).unwrap();
        SnapshotWriter::create(FileStorage(f), 4096, 4096).unwrap();
        let e = open_file(&small).unwrap_err();
        assert!(
            matches!(
                e,
                HostError::TooSmall {
                    image_size: 4096,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("small.snap: file of 4096 bytes is too small")
        );
        let foreign = dir.join("foreign.snap");
        std::fs::write(&foreign, [7u8; 200]).unwrap();
        let e = open_file(&foreign).unwrap_err();
        assert!(matches!(e, HostError::Read { .. }), "{e:?}");
        assert!(e.to_string().starts_with(&foreign.display().to_string()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
