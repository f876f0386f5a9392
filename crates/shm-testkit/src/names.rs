use std::sync::atomic::{AtomicU64, Ordering}; // atomics-ok: process-local counter

/// A name unique to this process, this call and this run: `ot-<prefix>-<pid>-<n>-<nanos>`.
///
/// Short enough for POSIX shm names (`NAME_MAX` 255) and Unix socket paths.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // Relaxed: only uniqueness of the returned value matters, no other memory is published.
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("ot-{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// Names of the objects in `/dev/shm` that start with `prefix` (for leak checks).
pub fn shm_objects_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/dev/shm") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn unique_name_differs_between_calls() {
        let a = super::unique_name("x");
        let b = super::unique_name("x");
        assert_ne!(a, b);
        assert!(a.starts_with("ot-x-"));
    }
}
