//! The snapshot store in S3-compatible object storage (`s3://BUCKET/PREFIX`),
//! through the `object_store` crate, on a tokio runtime of its own.
//!
//! Objects are immutable and uniquely named (round numbers are unique per run
//! or epoch; a base's content is fixed by its chain): data files are written
//! whole to a local staging file, then uploaded; a round is published by a
//! create-only put of its commit object. A create that finds the object
//! already there reads it back and compares (a retry whose first attempt
//! landed). Reads download into an anonymous staging file, so nothing is
//! cached between runs and no two processes share a path.
//!
//! Endpoint, region and credentials come from the `AWS_*` environment
//! variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_ALLOW_HTTP`), never from the topology.
//!
//! A request that fails for want of the server (connection refused, time-out,
//! a 5xx) is retried with backoff for up to [`RETRY_FOR`]; meanwhile the store
//! is reported unreachable (log, metric) and then reachable again.

use std::fs::File;
use std::future::Future;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ClientOptions, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::StoreError;

mod lease;

pub use lease::Lease;

/// How long a request is retried while the server cannot be reached.
pub const RETRY_FOR: Duration = Duration::from_secs(600);
/// Files up to this size are uploaded in one request; larger ones in parts.
const SINGLE_PUT: u64 = 32 << 20;
const PART: usize = 16 << 20;

/// An object as a listing shows it.
#[derive(Debug, Clone, Copy)]
pub struct Listed {
    pub size: u64,
    /// When it was written, in milliseconds since the Unix epoch.
    pub modified_ms: u64,
}

/// Called with why the store cannot be reached, and with `None` once it can.
pub type HealthHook = Arc<dyn Fn(Option<&str>) + Send + Sync>;

/// A bucket and prefix of an S3-compatible store.
pub struct Remote {
    client: Arc<dyn ObjectStore>,
    rt: tokio::runtime::Runtime,
    /// `s3://BUCKET/PREFIX`: the root of the store's paths.
    root: PathBuf,
    prefix: String,
    endpoint: String,
    staging: tempfile::TempDir,
    hook: Mutex<Option<HealthHook>>,
    /// Why the store is unreachable, while it is.
    down: Mutex<Option<String>>,
    /// Headers of data objects read so far (objects never change).
    headers: Mutex<std::collections::HashMap<PathBuf, super::DataHeader>>,
    /// Set once the lease of an embedded run is lost: nothing more is published.
    fence: Mutex<Option<Arc<lease::Fence>>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.root.display())
    }
}

fn object_error(path: &Path, e: object_store::Error) -> StoreError {
    let kind = match &e {
        object_store::Error::NotFound { .. } => std::io::ErrorKind::NotFound,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            std::io::ErrorKind::PermissionDenied
        }
        _ => std::io::ErrorKind::Other,
    };
    StoreError::Io { path: path.to_path_buf(), source: std::io::Error::new(kind, e.to_string()) }
}

fn local(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// Whether a failed request may succeed later unchanged: the server was not
/// reached, timed out or failed on its side.
fn transient(e: &object_store::Error) -> bool {
    match e {
        object_store::Error::Generic { source, .. } => {
            let text = format!("{source:?}");
            let text = format!("{text} {source}");
            let refused = ["NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"];
            // A client error (4xx) stays one however often it is sent.
            let client_error = ["status: 4", "status code: 4"].iter().any(|s| text.contains(s));
            !refused.iter().any(|r| text.contains(r)) && !client_error
        }
        object_store::Error::JoinError { .. } => true,
        _ => false,
    }
}

impl Remote {
    /// Connects to `s3://BUCKET/PREFIX` with the `AWS_*` environment and
    /// checks at once that the bucket answers to these credentials.
    pub fn connect(url: &str) -> Result<Remote, StoreError> {
        let root = PathBuf::from(url.trim_end_matches('/'));
        let bad = |why: String| StoreError::Setup { path: root.clone(), why };
        let (bucket, prefix) = crate::topology::parse_s3_url(url).map_err(bad)?;
        // reqwest looks up the process's TLS provider: ring, as for the engine's own TLS.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let endpoint =
            std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "AWS S3 (AWS_ENDPOINT_URL is not set)".into());
        let options =
            ClientOptions::new().with_connect_timeout(Duration::from_secs(5)).with_timeout(Duration::from_secs(60));
        let retry =
            object_store::RetryConfig { max_retries: 2, retry_timeout: Duration::from_secs(10), ..Default::default() };
        // As `AmazonS3Builder::from_env`, over our time-outs (the client
        // options it may set, such as AWS_ALLOW_HTTP, stay).
        let mut builder = AmazonS3Builder::new().with_client_options(options);
        for (k, v) in std::env::vars() {
            if let Some(key) = k.starts_with("AWS_").then(|| k.to_ascii_lowercase().parse().ok()).flatten() {
                builder = builder.with_config(key, v);
            }
        }
        let client = builder
            .with_bucket_name(&bucket)
            .with_retry(retry)
            .build()
            .map_err(|e| bad(format!("cannot set up the S3 client: {e}")))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("hailstorm-s3")
            .enable_all()
            .build()
            .map_err(local(&root))?;
        let staging = tempfile::Builder::new().prefix("hailstorm-s3-").tempdir().map_err(local(&root))?;
        let remote = Remote {
            client: Arc::new(client),
            rt,
            root,
            prefix,
            endpoint,
            staging,
            hook: Mutex::new(None),
            down: Mutex::new(None),
            fence: Mutex::new(None),
            headers: Mutex::new(std::collections::HashMap::new()),
        };
        remote.probe(&bucket)?;
        Ok(remote)
    }

    /// One listing of the prefix, not retried: a missing bucket, refused
    /// credentials or an unreachable endpoint is an error now, at deploy.
    fn probe(&self, bucket: &str) -> Result<(), StoreError> {
        let client = self.client.clone();
        let prefix = Key::from(self.prefix.as_str());
        let r = self.block(async move { client.list_with_delimiter(Some(&prefix)).await });
        let Err(e) = r else { return Ok(()) };
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            let more = c.to_string();
            if !text.contains(&more) {
                text = format!("{text}: {more}");
            }
            cause = c.source();
        }
        let why = if text.contains("NoSuchBucket") || matches!(e, object_store::Error::NotFound { .. }) {
            format!("the bucket `{bucket}` does not exist at {}: create it first", self.endpoint)
        } else if matches!(
            e,
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
        ) || text.contains("InvalidAccessKeyId")
            || text.contains("SignatureDoesNotMatch")
            || text.contains("AccessDenied")
        {
            let id = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "(AWS_ACCESS_KEY_ID unset)".into());
            format!(
                "{} refuses the credentials of access key `{id}` (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY): {text}",
                self.endpoint
            )
        } else {
            format!("cannot reach {} (AWS_ENDPOINT_URL; AWS_ALLOW_HTTP=true for http://): {text}", self.endpoint)
        };
        Err(StoreError::Setup { path: self.root.clone(), why })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn set_fence(&self, fence: Arc<lease::Fence>) {
        *self.fence.lock().unwrap_or_else(|p| p.into_inner()) = Some(fence);
    }

    /// Whether this process may publish rounds: false once its lease is
    /// lost; while the lease could not be renewed of late, waits (up to
    /// [`RETRY_FOR`]) to learn which.
    pub fn may_publish(&self) -> bool {
        let fence = self.fence.lock().unwrap_or_else(|p| p.into_inner()).clone();
        fence.is_none_or(|f| f.may_publish(RETRY_FOR))
    }

    /// Whom to tell when the store becomes unreachable, and reachable again.
    pub fn set_health_hook(&self, hook: HealthHook) {
        *self.hook.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// Why the store cannot be reached now, if it cannot.
    pub fn unreachable(&self) -> Option<String> {
        self.down.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn note_health(&self, why: Option<String>) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if *down == why || (down.is_some() && why.is_some()) {
            return;
        }
        match &why {
            Some(w) => tracing::warn!("the snapshot store {} is unreachable ({w}); retrying", self.root.display()),
            None => tracing::info!("the snapshot store {} answers again", self.root.display()),
        }
        down.clone_from(&why);
        drop(down);
        if let Some(h) = self.hook.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            h(why.as_deref());
        }
    }

    /// The object key of a store path.
    fn key(&self, path: &Path) -> Result<Key, StoreError> {
        let rel = path.strip_prefix(&self.root).map_err(|_| StoreError::Corrupt {
            path: path.to_path_buf(),
            why: format!("not under the store {}", self.root.display()),
        })?;
        let rel =
            rel.to_str().ok_or_else(|| StoreError::Corrupt { path: path.to_path_buf(), why: "not UTF-8".into() })?;
        let full = if self.prefix.is_empty() { rel.to_string() } else { format!("{}/{rel}", self.prefix) };
        Key::parse(&full).map_err(|e| StoreError::Corrupt { path: path.to_path_buf(), why: e.to_string() })
    }

    /// The store path of an object key.
    fn path_of(&self, key: &Key) -> PathBuf {
        let s = key.as_ref();
        let rel =
            if self.prefix.is_empty() { s } else { s.strip_prefix(&self.prefix).unwrap_or(s).trim_start_matches('/') };
        self.root.join(rel)
    }

    /// Runs a future on the store's runtime and waits for it (from any thread).
    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = object_store::Result<T>> + Send + 'static,
    ) -> object_store::Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(object_store::Error::Generic { store: "S3", source: "the store's runtime stopped".into() })
        })
    }

    /// `block`, retrying while the failure is transient.
    fn retry<T, F, Fut>(&self, path: &Path, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(Arc<dyn ObjectStore>, Key) -> Fut,
        Fut: Future<Output = object_store::Result<T>> + Send + 'static,
    {
        let key = self.key(path)?;
        let started = Instant::now();
        let mut wait = Duration::from_millis(200);
        loop {
            match self.block(f(self.client.clone(), key.clone())) {
                Err(e) if transient(&e) && started.elapsed() < RETRY_FOR => {
                    self.note_health(Some(format!("{e}")));
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    if !transient(&e) {
                        self.note_health(None);
                    }
                    return Err(object_error(path, e));
                }
                Ok(v) => {
                    self.note_health(None);
                    return Ok(v);
                }
            }
        }
    }

    /// The bytes of an object, `None` when there is none.
    pub fn get(&self, path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get_meta(path)?.map(|(b, _)| b))
    }

    /// The bytes and version of an object, `None` when there is none.
    pub fn get_meta(&self, path: &Path) -> Result<Option<(Vec<u8>, ObjectMeta)>, StoreError> {
        let r = self.retry(path, |client, key| async move {
            match client.get(&key).await {
                Ok(g) => {
                    let meta = g.meta.clone();
                    Ok(Some((g.bytes().await?.to_vec(), meta)))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        r
    }

    /// Downloads an object into an anonymous staging file, read from its start.
    pub fn download(&self, path: &Path) -> Result<File, StoreError> {
        let dir = self.staging.path().to_path_buf();
        let file = self.retry(path, |client, key| {
            let dir = dir.clone();
            async move {
                let io = |e: std::io::Error| object_store::Error::Generic { store: "local", source: Box::new(e) };
                let mut f = tempfile::tempfile_in(&dir).map_err(io)?;
                let mut stream = client.get(&key).await?.into_stream();
                while let Some(chunk) = stream.next().await {
                    f.write_all(&chunk?).map_err(io)?;
                }
                f.rewind().map_err(io)?;
                Ok(f)
            }
        })?;
        Ok(file)
    }

    /// The header of data object `path`: remembered, or read from the
    /// object's first bytes (the whole object when they do not hold it).
    pub fn header(&self, path: &Path) -> Result<super::DataHeader, StoreError> {
        if let Some(h) = self.headers.lock().unwrap_or_else(|p| p.into_inner()).get(path) {
            return Ok(h.clone());
        }
        let head = match self.download_prefix(path, 64 << 10) {
            Ok(f) => super::DataReader::from_file(f, path).map(|r| r.header().clone()),
            Err(e) => Err(e),
        };
        let head = match head {
            Ok(h) => h,
            Err(e @ StoreError::Io { .. }) if is_not_found(&e) => return Err(e),
            Err(_) => super::DataReader::from_file(self.download(path)?, path)?.header().clone(),
        };
        let mut cache = self.headers.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(path.to_path_buf(), head.clone());
        Ok(head)
    }

    /// The first `n` bytes of an object (all of it, if shorter), in a staging file.
    fn download_prefix(&self, path: &Path, n: u64) -> Result<File, StoreError> {
        let dir = self.staging.path().to_path_buf();
        self.retry(path, |client, key| {
            let dir = dir.clone();
            async move {
                let io = |e: std::io::Error| object_store::Error::Generic { store: "local", source: Box::new(e) };
                let opts = object_store::GetOptions {
                    range: Some(object_store::GetRange::Bounded(0..n)),
                    ..Default::default()
                };
                let bytes = client.get_opts(&key, opts).await?.bytes().await?;
                let mut f = tempfile::tempfile_in(&dir).map_err(io)?;
                f.write_all(&bytes).map_err(io)?;
                f.rewind().map_err(io)?;
                Ok(f)
            }
        })
    }

    /// The size and time of an object, `None` when there is none.
    pub fn head(&self, path: &Path) -> Result<Option<ObjectMeta>, StoreError> {
        self.retry(path, |client, key| async move {
            match client.head(&key).await {
                Ok(m) => Ok(Some(m)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    /// Puts a whole object: create-only (see [`Remote::put`]) or replacing what is there.
    pub fn write(&self, path: &Path, bytes: &[u8], create: bool) -> Result<(), StoreError> {
        self.put(path, bytes, if create { PutMode::Create } else { PutMode::Overwrite }).map(|_| ())
    }

    /// Puts an object. With `PutMode::Create`, an object already there with
    /// the same bytes is success (an earlier attempt landed); with other
    /// bytes, an error. Returns the new version (for `PutMode::Update`).
    pub fn put(&self, path: &Path, bytes: &[u8], mode: PutMode) -> Result<ObjectMeta, StoreError> {
        let payload = PutPayload::from(bytes.to_vec());
        let create = matches!(mode, PutMode::Create);
        let r = self.retry(path, |client, key| {
            let payload = payload.clone();
            let opts = PutOptions { mode: mode.clone(), ..Default::default() };
            async move { client.put_opts(&key, payload, opts).await }
        });
        match r {
            Ok(put) => Ok(ObjectMeta {
                location: self.key(path)?,
                last_modified: Default::default(),
                size: bytes.len() as u64,
                e_tag: put.e_tag,
                version: put.version,
            }),
            Err(e) if create && already_there(&e) => match self.get_meta(path)? {
                Some((there, meta)) if there == bytes => Ok(meta),
                _ => Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    why: "exists already, with other content".into(),
                }),
            },
            Err(e) => Err(e),
        }
    }

    /// Uploads a finished local file to `path`, create-only: in one request
    /// when small, in parts (aborted on failure) when large. A file already
    /// there must end with the same bytes (its entry count and checksum).
    pub fn upload(&self, path: &Path, file: &Path) -> Result<(), StoreError> {
        let size = std::fs::metadata(file).map_err(local(file))?.len();
        if size <= SINGLE_PUT {
            let bytes = std::fs::read(file).map_err(local(file))?;
            return self.put(path, &bytes, PutMode::Create).map(|_| ());
        }
        if let Some(meta) = self.head(path)? {
            return self.same_end(path, file, &meta);
        }
        let local_file = file.to_path_buf();
        self.retry(path, |client, key| {
            let local_file = local_file.clone();
            async move { upload_parts(client, key, local_file).await }
        })
    }

    /// Whether the object at `path` ends like the local `file` (size, entry
    /// count and checksum of a data file).
    fn same_end(&self, path: &Path, file: &Path, meta: &ObjectMeta) -> Result<(), StoreError> {
        use std::io::{Read, SeekFrom};
        let size = std::fs::metadata(file).map_err(local(file))?.len();
        let mut mine = [0u8; 12];
        let mut f = File::open(file).map_err(local(file))?;
        f.seek(SeekFrom::Start(size.saturating_sub(12))).and_then(|_| f.read_exact(&mut mine)).map_err(local(file))?;
        let start = meta.size.saturating_sub(12);
        let end = meta.size;
        let theirs = self.retry(path, |client, key| async move { client.get_range(&key, start..end).await })?;
        if meta.size == size && theirs.as_ref() == mine {
            return Ok(());
        }
        Err(StoreError::Corrupt { path: path.to_path_buf(), why: "exists already, with other content".into() })
    }

    pub fn delete(&self, path: &Path) -> Result<(), StoreError> {
        self.retry(path, |client, key| async move {
            match client.delete(&key).await {
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                r => r,
            }
        })
    }

    /// Every object under `dir` (a store path), with its path, size and time.
    pub fn list(&self, dir: &Path) -> Result<Vec<(PathBuf, Listed)>, StoreError> {
        let metas = self.retry(dir, |client, key| async move {
            let mut out = Vec::new();
            let mut s = client.list(Some(&key));
            while let Some(m) = s.next().await {
                out.push(m?);
            }
            Ok(out)
        })?;
        let listed = |m: &ObjectMeta| Listed {
            size: m.size,
            modified_ms: u64::try_from(m.last_modified.timestamp_millis()).unwrap_or(0),
        };
        Ok(metas.into_iter().map(|m| (self.path_of(&m.location), listed(&m))).collect())
    }

    /// A new staging file name for a writer (removed by the writer).
    pub fn staging_path(&self) -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.staging.path().join(format!("upload-{n}"))
    }
}

fn is_not_found(e: &StoreError) -> bool {
    matches!(e, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

fn already_there(e: &StoreError) -> bool {
    match e {
        StoreError::Io { source, .. } => {
            let t = source.to_string();
            t.contains("already exists") || t.contains("precondition") || t.contains("PreconditionFailed")
        }
        StoreError::Corrupt { .. } | StoreError::Setup { .. } => false,
    }
}

/// A multipart upload of a local file; aborted when a part or the
/// completion fails, so no incomplete upload is left behind.
async fn upload_parts(client: Arc<dyn ObjectStore>, key: Key, file: PathBuf) -> object_store::Result<()> {
    use tokio::io::AsyncReadExt;
    let io = |e: std::io::Error| object_store::Error::Generic { store: "local", source: Box::new(e) };
    let mut f = tokio::fs::File::open(&file).await.map_err(io)?;
    let mut upload = client.put_multipart(&key).await?;
    let result: object_store::Result<()> = async {
        loop {
            let mut buf = vec![0u8; PART];
            let mut n = 0;
            while n < PART {
                let got = f.read(&mut buf[n..]).await.map_err(io)?;
                if got == 0 {
                    break;
                }
                n += got;
            }
            if n == 0 {
                break;
            }
            buf.truncate(n);
            upload.put_part(PutPayload::from(buf)).await?;
            if n < PART {
                break;
            }
        }
        upload.complete().await.map(|_| ())
    }
    .await;
    if result.is_err() {
        let _ = upload.abort().await;
    }
    result
}
