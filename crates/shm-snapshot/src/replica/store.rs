//! Opening the object store a replica URL names, and the few operations on
//! it: list, put (multipart for large objects), get into a file at an
//! offset, delete.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use super::ReplicaError;
use super::names::{EpochId, ObjectName, parse_key};

/// Objects at least this large are uploaded in parts (multipart upload):
/// a killed upload then leaves no object at all.
pub(crate) const MULTIPART_AT: usize = 8 << 20;
/// The part size of a multipart upload.
const PART: usize = 8 << 20;

/// A store and the prefix under which the replica lives.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    pub(crate) inner: Arc<dyn ObjectStore>,
    prefix: ObjPath,
}

/// One listed object of ours.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub(crate) epoch: EpochId,
    pub(crate) name: ObjectName,
    pub(crate) size: u64,
}

impl Store {
    /// `s3://bucket/prefix` (endpoint, region and credentials from the
    /// `AWS_*` environment variables) or `file:///dir` (created if `create`).
    pub(crate) fn open(url: &str, create: bool) -> Result<Self, ReplicaError> {
        let bad = |reason: String| ReplicaError::Url {
            url: url.to_owned(),
            reason,
        };
        if let Some(dir) = url.strip_prefix("file://") {
            if !dir.starts_with('/') {
                return Err(bad("a file URL needs an absolute path: file:///dir".into()));
            }
            if create {
                std::fs::create_dir_all(dir).map_err(|e| bad(format!("creating {dir}: {e}")))?;
            }
            let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| bad(e.to_string()))?;
            return Ok(Self {
                inner: Arc::new(fs),
                prefix: ObjPath::default(),
            });
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(bad("expected s3://BUCKET/PREFIX or file:///DIR".into()));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket".into()));
        }
        // The uploader retries failed uploads itself (with the newest notice):
        // the client gives up on one request after a few quick tries.
        let retry = object_store::RetryConfig {
            max_retries: 2,
            retry_timeout: std::time::Duration::from_secs(10),
            ..Default::default()
        };
        let s3 = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let prefix = ObjPath::parse(prefix.trim_matches('/')).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(s3),
            prefix,
        })
    }

    /// The key of `name` in `epoch`.
    pub(crate) fn key(&self, epoch: &EpochId, name: &ObjectName) -> ObjPath {
        self.prefix.clone().join(epoch.name()).join(name.name())
    }

    /// Every object of ours under the prefix (anything else is ignored).
    pub(crate) async fn list(&self) -> Result<Vec<Listed>, ReplicaError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let mut stream = self.inner.list(prefix);
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(ReplicaError::store("list"))?;
            let Some(rel) = meta.location.prefix_match(&self.prefix) else {
                continue;
            };
            let rel: Vec<_> = rel.map(|p| p.as_ref().to_owned()).collect();
            if let Some((epoch, name)) = parse_key(&rel.join("/")) {
                out.push(Listed {
                    epoch,
                    name,
                    size: meta.size,
                });
            }
        }
        Ok(out)
    }

    /// Writes bytes `range` of `file` as the object `key` (read with
    /// `pread`), in parts if large: an upload cut short leaves no object.
    pub(crate) async fn put_range(
        &self,
        key: &ObjPath,
        file: &File,
        range: Range<u64>,
    ) -> Result<(), ReplicaError> {
        let what = "put";
        let len = range.end.saturating_sub(range.start);
        if len < MULTIPART_AT as u64 {
            let bytes = read_at(file, range.start, len as usize)?;
            self.inner
                .put(key, PutPayload::from(bytes))
                .await
                .map_err(ReplicaError::store(what))?;
            return Ok(());
        }
        let upload = self
            .inner
            .put_multipart(key)
            .await
            .map_err(ReplicaError::store(what))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut at = range.start;
        while at < range.end {
            let n = (range.end - at).min(PART as u64);
            let part = match read_at(file, at, n as usize) {
                Ok(p) => p,
                Err(e) => {
                    let _ = w.abort().await;
                    return Err(e);
                }
            };
            if let Err(e) = w.wait_for_capacity(2).await {
                let _ = w.abort().await;
                return Err(ReplicaError::store(what)(e));
            }
            w.write(&part);
            at += n;
        }
        w.finish().await.map_err(ReplicaError::store(what))?;
        Ok(())
    }

    /// Writes the object `key` into `out` at offset `at` (`pwrite`, chunk by
    /// chunk as they arrive); returns its length.
    pub(crate) async fn get_at(
        &self,
        key: ObjPath,
        out: &File,
        at: u64,
    ) -> Result<u64, ReplicaError> {
        let got = self
            .inner
            .get(&key)
            .await
            .map_err(ReplicaError::store("get"))?;
        let mut stream = got.into_stream();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(ReplicaError::store("get"))?;
            out.write_all_at(&chunk, at + n)
                .map_err(|source| ReplicaError::Io {
                    what: "writing the restored file".into(),
                    source,
                })?;
            n += chunk.len() as u64;
        }
        Ok(n)
    }

    /// Deletes the object `key` (gone already is fine).
    pub(crate) async fn delete(&self, key: &ObjPath) -> Result<(), ReplicaError> {
        match self.inner.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(ReplicaError::store("delete")(e)),
        }
    }
}

/// `len` bytes of `file` at `offset`.
fn read_at(file: &File, offset: u64, len: usize) -> Result<Vec<u8>, ReplicaError> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(|source| ReplicaError::Io {
            what: format!("reading {len} bytes of FILE at {offset}"),
            source,
        })?;
    Ok(buf)
}
