//! The artifact store: S3 or MinIO (or a local directory) through
//! object_store, with keys under a configured prefix built by
//! [`common::artifacts`] so they cannot escape it. Uploads are retried with
//! exponential backoff (`backon`); a caller treats a job as done only after
//! [`Artifacts::put_all`] (or [`Artifacts::put_dir`], which streams files
//! from disk, in parts above [`Artifacts::multipart_threshold`]: S3 refuses
//! single uploads over 5 GB) returned `Ok`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use bytes::Bytes;
use common::config::S3Config;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
};
use tokio::io::AsyncReadExt;

/// Artifact store failures.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact store: {0}")]
    Store(#[from] object_store::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("upload of {key} failed after {attempts} attempts: {last}")]
    GaveUp {
        key: String,
        attempts: u32,
        last: String,
    },
}

pub type Result<T> = std::result::Result<T, ArtifactError>;

/// How uploads are retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UploadRetry {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for UploadRetry {
    fn default() -> Self {
        UploadRetry {
            attempts: 8,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl UploadRetry {
    /// The waits between attempts: doubling from `first_delay`, capped at
    /// `max_delay`, `attempts - 1` of them.
    pub fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.first_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_max_times(self.attempts.saturating_sub(1) as usize)
    }
}

/// A store plus the key prefix everything lives under.
#[derive(Clone)]
pub struct Artifacts {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    pub retry: UploadRetry,
    /// Files at least this large are uploaded in parts.
    pub multipart_threshold: u64,
    /// The size of each part (S3: at least 5 MiB but the last).
    pub part_size: usize,
    /// `s3://bucket/prefix` or a local path, for messages.
    pub location: String,
    /// Uploads tried again so far (for the worker's metrics).
    pub retries: Arc<AtomicU64>,
}

/// Default [`Artifacts::multipart_threshold`].
pub const MULTIPART_THRESHOLD: u64 = 64 << 20;
/// Default [`Artifacts::part_size`].
pub const PART_SIZE: usize = 16 << 20;

impl Artifacts {
    /// S3 or MinIO from configuration. The client's own retries are kept
    /// short: [`Artifacts::put_all`] retries whole uploads itself.
    pub fn s3(cfg: &S3Config) -> Result<Artifacts> {
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_virtual_hosted_style_request(false)
            .with_retry(RetryConfig {
                max_retries: 1,
                retry_timeout: Duration::from_secs(10),
                ..Default::default()
            })
            .with_client_options(
                // allow_http lives in the client options: set it here.
                ClientOptions::new()
                    .with_allow_http(cfg.allow_http)
                    .with_timeout(Duration::from_secs(120))
                    .with_connect_timeout(Duration::from_secs(5)),
            );
        if let Some(e) = &cfg.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(k) = &cfg.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &cfg.secret_access_key {
            b = b.with_secret_access_key(s.expose());
        }
        Ok(Artifacts {
            store: Arc::new(b.build()?),
            prefix: cfg.prefix.trim_matches('/').to_string(),
            retry: UploadRetry::default(),
            multipart_threshold: MULTIPART_THRESHOLD,
            part_size: PART_SIZE,
            location: format!("s3://{}/{}", cfg.bucket, cfg.prefix.trim_matches('/'))
                .trim_end_matches('/')
                .to_string(),
            retries: Arc::default(),
        })
    }

    /// The store the configuration names: S3 (or MinIO) when a bucket is
    /// set, else the local folder `ARTIFACTS`.
    pub fn open(services: &common::config::Services) -> Result<Artifacts> {
        match &services.s3 {
            Some(s3) => Artifacts::s3(s3),
            None => Artifacts::local(std::path::Path::new(&services.artifacts_dir)),
        }
    }

    /// A local directory (created if missing).
    pub fn local(dir: &std::path::Path) -> Result<Artifacts> {
        std::fs::create_dir_all(dir).map_err(|e| object_store::Error::Generic {
            store: "local",
            source: Box::new(e),
        })?;
        Ok(Artifacts {
            store: Arc::new(LocalFileSystem::new_with_prefix(dir)?),
            prefix: String::new(),
            retry: UploadRetry::default(),
            multipart_threshold: MULTIPART_THRESHOLD,
            part_size: PART_SIZE,
            location: dir.display().to_string(),
            retries: Arc::default(),
        })
    }

    fn path(&self, key: &str) -> StorePath {
        if self.prefix.is_empty() {
            StorePath::from(key)
        } else {
            StorePath::from(format!("{}/{key}", self.prefix))
        }
    }

    /// Uploads one object, retrying failures with backoff.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        let path = self.path(key);
        let attempts = AtomicU32::new(0);
        (|| async {
            attempts.fetch_add(1, Ordering::Relaxed);
            self.store.put(&path, PutPayload::from(bytes.clone())).await
        })
        .retry(self.retry.backoff())
        .notify(|e, wait| {
            let error = error_chain(e);
            let attempt = attempts.load(Ordering::Relaxed);
            self.retries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(key, attempt, error = %error, "upload failed; retrying in {wait:?}");
        })
        .await
        .map(|_| ())
        .map_err(|e| ArtifactError::GaveUp {
            key: key.to_string(),
            attempts: attempts.load(Ordering::Relaxed),
            last: error_chain(&e),
        })
    }

    /// Uploads every `(name, bytes)` under `folder`; stops at the first
    /// object that cannot be stored.
    /// The folder's `manifest.json` goes last: a reader that lists the
    /// folder and finds the manifest finds every file it names.
    pub async fn put_all(&self, folder: &str, files: &[(String, Vec<u8>)]) -> Result<()> {
        for (name, bytes) in manifest_last(files.iter().map(|(n, b)| (n.as_str(), b))) {
            self.put(&format!("{folder}/{name}"), Bytes::from(bytes.clone()))
                .await?;
        }
        Ok(())
    }

    /// Uploads every file under the local directory `dir` to `folder`
    /// (same relative names), streaming each from disk, retried with
    /// backoff per file; stops at the first file that cannot be stored.
    /// The manifest goes last, as in [`Artifacts::put_all`].
    pub async fn put_dir(&self, folder: &str, dir: &std::path::Path) -> Result<()> {
        let files = files_under(dir)?;
        for (name, path) in manifest_last(files.iter().map(|(n, p)| (n.as_str(), p))) {
            self.put_file(&format!("{folder}/{name}"), path).await?;
        }
        Ok(())
    }

    /// Uploads one local file, in parts when it is large, retrying whole
    /// uploads with backoff.
    pub async fn put_file(&self, key: &str, file: &std::path::Path) -> Result<()> {
        let path = self.path(key);
        let attempts = AtomicU32::new(0);
        (|| async {
            attempts.fetch_add(1, Ordering::Relaxed);
            self.upload_file(&path, file).await
        })
        .retry(self.retry.backoff())
        .when(|e| !matches!(e, ArtifactError::Read { .. }))
        .notify(|e, wait| {
            let error = error_chain(e);
            let attempt = attempts.load(Ordering::Relaxed);
            self.retries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(key, attempt, error = %error, "upload failed; retrying in {wait:?}");
        })
        .await
        .map_err(|e| match e {
            e @ ArtifactError::Read { .. } => e,
            e => ArtifactError::GaveUp {
                key: key.to_string(),
                attempts: attempts.load(Ordering::Relaxed),
                last: error_chain(&e),
            },
        })
    }

    async fn upload_file(&self, path: &StorePath, file: &std::path::Path) -> Result<()> {
        let read = |source| ArtifactError::Read {
            path: file.display().to_string(),
            source,
        };
        let size = tokio::fs::metadata(file).await.map_err(read)?.len();
        if size < self.multipart_threshold {
            let bytes = tokio::fs::read(file).await.map_err(read)?;
            self.store.put(path, PutPayload::from(bytes)).await?;
            return Ok(());
        }
        let upload = self.store.put_multipart(path).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let mut f = tokio::fs::File::open(file).await.map_err(read)?;
        let mut buf = vec![0u8; self.part_size];
        loop {
            let n = match f.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    abort(writer).await;
                    return Err(read(e));
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = writer.wait_for_capacity(4).await {
                abort(writer).await;
                return Err(e.into());
            }
            writer.write(&buf[..n]);
        }
        writer.finish().await?;
        Ok(())
    }

    /// Removes one object; an absent one is no error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// One object, or `None` when there is none under `key`.
    pub async fn get_opt(&self, key: &str) -> Result<Option<Bytes>> {
        match self.store.get(&self.path(key)).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes> {
        Ok(self.store.get(&self.path(key)).await?.bytes().await?)
    }

    /// Whether an object exists.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.store.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Where `key` lives, for messages: `s3://bucket[/prefix]/key` or a path.
    pub fn url(&self, key: &str) -> String {
        format!(
            "{}/{}",
            self.location.trim_end_matches('/'),
            key.trim_start_matches('/')
        )
    }

    /// Keys under `folder`, relative to the store prefix, sorted.
    pub async fn list(&self, folder: &str) -> Result<Vec<String>> {
        let base = self.path(folder);
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut keys: Vec<String> = self
            .store
            .list(Some(&base))
            .map_ok(|m| m.location.to_string()[strip..].to_string())
            .try_collect()
            .await?;
        keys.sort();
        Ok(keys)
    }
}

/// Every file under `dir` with its name relative to it (`/`-separated),
/// sorted.
/// `files` in their order, with the folder's manifest (if any) moved last.
fn manifest_last<'a, T>(files: impl Iterator<Item = (&'a str, T)>) -> Vec<(&'a str, T)> {
    let mut v: Vec<_> = files.collect();
    v.sort_by_key(|(name, _)| *name == common::artifacts::files::MANIFEST_JSON);
    v
}

pub fn files_under(dir: &std::path::Path) -> Result<Vec<(String, std::path::PathBuf)>> {
    let read = |source, p: &std::path::Path| ArtifactError::Read {
        path: p.display().to_string(),
        source,
    };
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| read(e, &d))? {
            let entry = entry.map_err(|e| read(e, &d))?;
            let p = entry.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                let name = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((name, p));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// An error with its sources, for messages.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Gives up a multipart upload after a failure (the failure is what the
/// caller reports; a part left behind by a failed abort expires with the
/// bucket's lifecycle rules).
async fn abort(writer: WriteMultipart) {
    if let Err(e) = writer.abort().await {
        tracing::debug!(error = %e, "cannot abort a multipart upload");
    }
}

#[cfg(test)]
mod tests {

    /// Whatever order the files come in, the manifest is stored last and
    /// the others keep their order.
    #[test]
    fn the_manifest_is_stored_last() {
        let files = [
            "Results.csv",
            "manifest.json",
            "metrics.json",
            "PAI/PAI.png",
        ];
        let got: Vec<&str> = manifest_last(files.iter().map(|f| (*f, ())))
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            got,
            [
                "Results.csv",
                "metrics.json",
                "PAI/PAI.png",
                "manifest.json"
            ]
        );
    }

    use super::*;
    use backon::BackoffBuilder;

    #[test]
    fn backoff_doubles_and_caps() {
        let r = UploadRetry {
            attempts: 5,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
        };
        let waits: Vec<u64> = r.backoff().build().map(|d| d.as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 350, 350]);
    }

    #[tokio::test]
    async fn local_store_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let a = Artifacts::local(dir.path()).unwrap();
        a.put_all(
            "sweeps/s/jobs/j",
            &[
                ("a.txt".into(), b"x".to_vec()),
                ("PAI/b.csv".into(), b"y".to_vec()),
            ],
        )
        .await
        .unwrap();
        assert_eq!(
            a.list("sweeps/s").await.unwrap(),
            vec!["sweeps/s/jobs/j/PAI/b.csv", "sweeps/s/jobs/j/a.txt"]
        );
        assert_eq!(&a.get("sweeps/s/jobs/j/a.txt").await.unwrap()[..], b"x");
        assert!(!a.exists("nope").await.unwrap());
    }
}
