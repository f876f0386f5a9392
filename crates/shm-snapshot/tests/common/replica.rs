//! A replica test's store and files, shared by the `replica` and
//! `replica_faults` tests: an S3 server, `shm-restore --replica` over this
//! test binary, `shm-restore restore --from` and `replicas --json`, and
//! checks of what the store lists.

use std::path::{Path, PathBuf};
use std::process::Command;

use shm_snapshot::{FileStorage, inspect};
use shm_testkit::s3::S3Server;

use super::cli::{REGION, Run, SHM_RESTORE, file_image, numbers_after, temp_dir};

/// The uploader's line for each completed upload, `replicated generation N
/// (file generation G): KEY, BYTES bytes` (the lag warning and the summary
/// at exit also say "replicated generation", not this).
pub(crate) const UPLOADED: &str = " (file generation ";

/// The completed uploads in `text`.
pub(crate) fn uploads(text: &str) -> usize {
    text.matches(UPLOADED).count()
}

/// One test's store and files: the S3 server, a fresh directory with FILE
/// in it, and the replica URL (a prefix of the server's bucket).
pub(crate) struct Case {
    pub(crate) s3: S3Server,
    pub(crate) dir: PathBuf,
    pub(crate) file: PathBuf,
    pub(crate) url: String,
}

impl Case {
    /// `None` when there is no server (see [`S3Server::start`]).
    pub(crate) fn new(s3: Option<S3Server>, tag: &str, prefix: &str) -> Option<Case> {
        let s3 = s3?;
        let dir = temp_dir(tag);
        Some(Case {
            file: dir.join("state.snap"),
            url: s3.url(prefix),
            dir,
            s3,
        })
    }

    /// `shm-restore OPTS --replica URL FILE -- <the test fn named test, as the committer>`.
    pub(crate) fn host(&self, test: &str, opts: &[&str]) -> Run {
        self.host_role(test, opts, "committer", &[])
    }

    /// As [`Case::host`], with the program in `role` and extra environment
    /// `env`. Unless `opts` says otherwise: a snapshot every 20 ms, no
    /// compaction, a state of [`REGION`] bytes.
    pub(crate) fn host_role(
        &self,
        test: &str,
        opts: &[&str],
        role: &str,
        env: &[(&str, &str)],
    ) -> Run {
        let mut cmd = Command::new(SHM_RESTORE);
        self.s3.configure(&mut cmd);
        cmd.arg("--create");
        if !opts.contains(&"--interval") {
            cmd.args(["--interval", "0.02"]);
        }
        if !opts.contains(&"--compact-at") {
            cmd.args(["--compact-at", "0"]);
        }
        if !opts.contains(&"--size") {
            cmd.args(["--size", &REGION.to_string()]);
        }
        cmd.args(opts).args(["--replica", &self.url]);
        let err = self
            .file
            .with_extension(format!("err{}", std::process::id()));
        Run::spawn(cmd, role, test, &self.file, &err, env)
    }

    /// `shm-restore restore --from URL DEST EXTRA...`: (success, stdout+stderr).
    pub(crate) fn restore(&self, dest: &Path, extra: &[&str]) -> (bool, String) {
        let mut cmd = Command::new(SHM_RESTORE);
        self.s3.configure(&mut cmd);
        let (status, text) = shm_testkit::output_text(
            cmd.args(["restore", "--from", &self.url])
                .arg(dest)
                .args(extra),
        );
        (status.success(), text)
    }

    /// Restores the replica into `name` in the test's directory (as on
    /// another machine) and checks that it holds FILE's image.
    pub(crate) fn assert_restores_file(&self, name: &str) -> String {
        let fresh = self.dir.join(name);
        let (ok, out) = self.restore(&fresh, &[]);
        assert!(ok, "{out}");
        assert_eq!(file_image(&fresh), file_image(&self.file));
        out
    }

    /// `shm-restore replicas --json URL`.
    pub(crate) fn listing(&self) -> serde_json::Value {
        let mut cmd = Command::new(SHM_RESTORE);
        self.s3.configure(&mut cmd);
        let out = cmd
            .args(["replicas", "--json", &self.url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Removes the test's directory (left behind for a failed test).
    pub(crate) fn finish(self) {
        std::fs::remove_dir_all(&self.dir).unwrap();
    }
}

/// The newest epoch's base generations and segment (first, last) pairs.
pub(crate) fn newest_epoch(
    list: &serde_json::Value,
) -> (String, Vec<u64>, Vec<(u64, u64, String)>) {
    let e = list["epochs"].as_array().unwrap().last().expect("an epoch");
    let bases = e["bases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["last"].as_u64().unwrap())
        .collect();
    let segs = e["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["first"].as_u64().unwrap(),
                s["last"].as_u64().unwrap(),
                s["key"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (e["epoch"].as_str().unwrap().to_owned(), bases, segs)
}

/// Asserts that the newest epoch's chain from its newest base is
/// consecutive up to `until`.
pub(crate) fn assert_no_gap(list: &serde_json::Value, until: u64) {
    let (epoch, bases, segs) = newest_epoch(list);
    let base = *bases.iter().max().expect("a base");
    let mut next = base + 1;
    for (first, last, _) in segs.iter().filter(|s| s.0 > base) {
        assert_eq!(*first, next, "gap in epoch {epoch}: {segs:?}");
        next = last + 1;
    }
    assert_eq!(
        next - 1,
        until,
        "epoch {epoch} ends at {}, FILE at {until}",
        next - 1
    );
}

pub(crate) fn file_generation(file: &Path) -> u64 {
    inspect(&FileStorage(std::fs::File::open(file).unwrap()))
        .unwrap()
        .generation
}

pub(crate) fn last_number_after(text: &str, key: &str) -> Option<u64> {
    numbers_after(text, key).last().copied()
}
