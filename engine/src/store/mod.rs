//! The snapshot store: incremental rounds of versioned, checksummed files
//! written atomically.
//!
//! Layout of a `file:` store:
//!
//! ```text
//! STORE/rounds/00000000000000000042/counts-0.delta      changes of bolt instance counts/0 in round 42
//! STORE/rounds/00000000000000000042/COMMIT              the round is complete: clock, files and CRCs, modules
//! STORE/bases/00000000000000000040/counts-0-of-2.base   the whole state of counts/0 (of 2) as of round 40
//! STORE/sinks/table                                     the newest round sink `table` made durable
//! ```
//!
//! A round saves, per bolt instance, only the entries whose committed value
//! changed since the instance's previous round: a *delta*, which names its
//! *parent* (that previous delta, or a base). An instance's state at a round
//! is its *chain*: the newest base on the way back through the parents, then
//! every delta after it, overlaid in order (a later value replaces an
//! earlier one); see `chain.rs`. Compaction folds a chain into a new base in
//! the background; a damaged base found there is passed over for the deltas.
//!
//! A round is complete only once its `COMMIT` record exists, and that record
//! is written only after every instance's delta is durable. Recovery takes
//! the newest round whose `COMMIT` and whole chains decode with valid
//! checksums, falling back to the one before when the newest is damaged.
//! Garbage collection deletes only what no kept round's chain needs and no
//! sink still has to receive.
//!
//! Small files (`COMMIT`, sink records) are `MAGIC, kind, version, payload
//! length, payload (postcard), CRC-32`; data files are streams of
//! checksummed blocks (`data.rs`). Every write goes to a temporary file that
//! is fsync'd, renamed into place, and its directory fsync'd.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

mod chain;
mod data;
mod merge;
pub mod remote;

pub use chain::{Chain, Recovered};
pub use data::{check_sorted, DataHeader, DataKind, DataReader, DataWriter, Parent};
pub use merge::Merge;
pub use remote::{Lease, Remote};

const MAGIC: &[u8; 8] = b"HAILSTRM";
/// The format of small files. Version 1 stores (whole snapshots per round)
/// are refused with a message.
const FORMAT_VERSION: u16 = 2;
const KIND_COMMIT: u8 = 2;
const KIND_SINK: u8 = 5;
const KIND_HEAD: u8 = 7;
/// Complete rounds an object store's `HEAD` record lists.
const HEAD_ROUNDS: usize = 64;
const HEADER: usize = 8 + 1 + 2 + 8;

/// A data file of a round as its commit record lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub processor: String,
    pub instance: u32,
    /// The checksum of the whole delta file.
    pub crc: u32,
}

/// The record that makes a round complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    pub topology: String,
    pub round: u64,
    pub clock: Vec<(String, u64)>,
    /// The delta of every bolt instance in this round.
    pub files: Vec<FileRef>,
    /// Processor name → content hash of its module when the round was taken.
    pub modules: BTreeMap<String, String>,
    /// Bolt name → parallelism when the round was taken.
    pub parallelism: BTreeMap<String, u32>,
    /// Partition name → what it reads (a file path), so a resumed run can
    /// tell when a partition now names different input.
    pub sources: BTreeMap<String, String>,
    pub created_unix_ms: u64,
}

impl CommitRecord {
    /// The listed checksum of instance `instance` of `processor`'s delta.
    pub fn crc_of(&self, processor: &str, instance: u32) -> Option<u32> {
        self.files.iter().find(|f| f.processor == processor && f.instance == instance).map(|f| f.crc)
    }
}

/// The newest complete rounds of an object store, newest last (a hint:
/// rounds published after it are found by asking for the next ones).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct HeadRecord {
    rounds: Vec<u64>,
}

/// The newest round a sink made durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SinkRecord {
    sink: String,
    round: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: corrupt: {why}")]
    Corrupt { path: PathBuf, why: String },
    /// The store cannot be used as set up (an object store that refuses or
    /// cannot be reached at start, one another run holds).
    #[error("{path}: {why}")]
    Setup { path: PathBuf, why: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// Frames a payload: header, payload, CRC-32 of the payload.
pub fn encode<T: Serialize>(kind: u8, value: &T) -> Vec<u8> {
    // postcard into a Vec cannot fail for these types (no maps with non-string
    // keys, no unsupported serde features); an empty payload would fail to
    // decode and so be caught on read.
    let payload = postcard::to_allocvec(value).unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER + payload.len() + 4);
    out.extend_from_slice(MAGIC);
    out.push(kind);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out
}

/// Checks and decodes a framed file. Returns the value and the payload's CRC.
pub fn decode<T: for<'de> Deserialize<'de>>(kind: u8, bytes: &[u8]) -> Result<(T, u32), String> {
    let head = bytes.get(..HEADER).ok_or("shorter than the header")?;
    if &head[..8] != MAGIC {
        return Err("not a Hailstorm store file (bad magic)".into());
    }
    if head[8] != kind {
        return Err(format!("file kind {} where {kind} was expected", head[8]));
    }
    let version = u16::from_le_bytes([head[9], head[10]]);
    if version == 1 {
        return Err("written by an older Hailstorm (store format 1, whole snapshots per round), which this \
                    version cannot resume: use a new snapshot.store"
            .into());
    }
    if version != FORMAT_VERSION {
        return Err(format!("format version {version}; this build reads version {FORMAT_VERSION}"));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&head[11..19]);
    let len = usize::try_from(u64::from_le_bytes(len)).map_err(|_| "length out of range")?;
    let end = HEADER.checked_add(len).ok_or("length out of range")?;
    let payload = bytes.get(HEADER..end).ok_or("truncated payload")?;
    let crc_bytes = bytes.get(end..).ok_or("missing checksum")?;
    if crc_bytes.len() != 4 {
        return Err("bad length after the payload".into());
    }
    let crc = crc32fast::hash(payload);
    if crc.to_le_bytes() != crc_bytes {
        return Err("checksum mismatch".into());
    }
    let value = postcard::from_bytes(payload).map_err(|e| format!("undecodable payload: {e}"))?;
    Ok((value, crc))
}

/// Syncs the directory holding `path`, so a rename into it is durable.
fn sync_dir(path: &Path) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Creates `path` as a new file of our own: one left by a crash is removed
/// first, and a link there is never followed (`O_EXCL`).
pub(crate) fn create_new(path: &Path) -> Result<fs::File, StoreError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::Io { path: path.to_path_buf(), source: e }),
    }
    fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(io(path))
}

/// Writes a file atomically and durably: temporary file, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    {
        let mut f = create_new(&tmp)?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(path)
}

/// A snapshot store in a directory, or in an object store's bucket.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
    remote: Option<Arc<Remote>>,
    /// Objects no kept round needs are deleted once older than this.
    grace: std::time::Duration,
}

/// What keeps other runs off a store while an embedded run uses it.
#[derive(Debug)]
pub enum StoreLock {
    File(fs::File),
    Lease(Lease),
}

impl StoreLock {
    /// The lowest round number this run may use: a lease's run owns the
    /// numbers from its first round on, so no two runs name objects alike.
    pub fn first_round(&self) -> u64 {
        match self {
            StoreLock::File(_) => 1,
            StoreLock::Lease(l) => crate::core::negotiator::first_round_of_epoch(l.run),
        }
    }
}

impl FileStore {
    pub fn open(root: &Path) -> Result<FileStore, StoreError> {
        for dir in ["rounds", "bases", "sinks"] {
            let d = root.join(dir);
            fs::create_dir_all(&d).map_err(io(&d))?;
        }
        Ok(FileStore { root: root.to_path_buf(), remote: None, grace: std::time::Duration::ZERO })
    }

    /// Opens the store of a topology (`file:` or `s3://`).
    pub fn open_store(store: &crate::topology::Store) -> Result<FileStore, StoreError> {
        match store {
            crate::topology::Store::File(p) => FileStore::open(p),
            crate::topology::Store::S3 { url, grace } => {
                let remote = Arc::new(Remote::connect(url)?);
                Ok(FileStore { root: remote.root().to_path_buf(), remote: Some(remote), grace: *grace })
            }
        }
    }

    /// The object store under this store, if it is one.
    pub fn remote(&self) -> Option<&Arc<Remote>> {
        self.remote.as_ref()
    }

    /// The bytes of a small file, `None` when there is none.
    fn read_small(&self, path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(r) = &self.remote {
            return r.get(path);
        }
        match fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(path)(e)),
        }
    }

    /// Writes a small file whole; `create`: an object store's put is
    /// create-only (a file store's is atomic either way).
    fn write_small(&self, path: &Path, bytes: &[u8], create: bool) -> Result<(), StoreError> {
        match &self.remote {
            Some(r) => r.write(path, bytes, create),
            None => {
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir).map_err(io(dir))?;
                }
                write_atomic(path, bytes)
            }
        }
    }

    /// Whether a file of the store exists.
    pub(crate) fn exists(&self, path: &Path) -> Result<bool, StoreError> {
        match &self.remote {
            Some(r) => Ok(r.head(path)?.is_some()),
            None => Ok(path.exists()),
        }
    }

    /// The size of a file of the store (0 when it cannot be had).
    pub(crate) fn size(&self, path: &Path) -> u64 {
        match &self.remote {
            Some(r) => r.head(path).ok().flatten().map_or(0, |m| m.size),
            None => fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        }
    }

    /// Opens a data file of the store.
    pub fn reader(&self, path: &Path) -> Result<DataReader, StoreError> {
        match &self.remote {
            Some(r) => DataReader::from_file(r.download(path)?, path),
            None => DataReader::open(path),
        }
    }

    /// The header of a data file of the store (an object store's are read
    /// from the object's first bytes, once).
    pub fn header(&self, path: &Path) -> Result<DataHeader, StoreError> {
        match &self.remote {
            Some(r) => r.header(path),
            None => Ok(DataReader::open(path)?.header().clone()),
        }
    }

    /// The merge of data files of the store (oldest first).
    pub fn merge(&self, files: &[PathBuf]) -> Result<Merge, StoreError> {
        Merge::of(files.iter().map(|f| self.reader(f)).collect::<Result<Vec<_>, _>>()?)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Makes the store topology `topology`'s, or checks that it is: a store
    /// holds one topology's rounds (its collection deletes rounds whoever
    /// wrote them). A store from before owner records belongs to the
    /// topology its newest commit record names.
    pub fn claim(&self, topology: &str) -> Result<(), StoreError> {
        let path = self.root.join("OWNER");
        let (holder, recorded) = match self.read_small(&path)? {
            Some(s) => (String::from_utf8_lossy(&s).trim().to_string(), true),
            None if self.remote.is_some() => (topology.to_string(), false),
            None => {
                let newest = self.rounds()?.into_iter().rev().find_map(|r| self.read_commit(r).ok().flatten());
                (newest.map_or_else(|| topology.to_string(), |c| c.topology), false)
            }
        };
        if holder != topology {
            let why = format!(
                "the store belongs to topology `{holder}`, not `{topology}`; give each topology its own snapshot.store"
            );
            return Err(StoreError::Corrupt { path: self.root.clone(), why });
        }
        if !recorded {
            // Create-only on an object store: two topologies claiming at once
            // cannot both win (the loser's put finds other content).
            self.write_small(&path, format!("{topology}\n").as_bytes(), true).map_err(|e| match e {
                StoreError::Corrupt { .. } => StoreError::Corrupt {
                    path: self.root.clone(),
                    why: "another topology claimed the store at the same moment; give each its own snapshot.store"
                        .into(),
                },
                e => e,
            })?;
        }
        Ok(())
    }

    /// Locks the store for one process (an embedded run): two runs writing
    /// one store would number their rounds alike. The lock ends with the
    /// returned file (and with the process).
    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        if let Some(r) = &self.remote {
            return Lease::take(r.clone()).map(StoreLock::Lease);
        }
        let path = self.root.join("LOCK");
        let f = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
        match f.try_lock() {
            Ok(()) => Ok(StoreLock::File(f)),
            Err(fs::TryLockError::WouldBlock) => Err(StoreError::Corrupt {
                path: self.root.clone(),
                why: "another run is using this store; wait for it to end, or give this run its own snapshot.store"
                    .into(),
            }),
            Err(fs::TryLockError::Error(e)) => Err(StoreError::Io { path, source: e }),
        }
    }

    fn round_dir(&self, round: u64) -> PathBuf {
        self.root.join("rounds").join(format!("{round:020}"))
    }

    fn base_dir(&self, round: u64) -> PathBuf {
        self.root.join("bases").join(format!("{round:020}"))
    }

    /// The delta of instance `instance` of `processor` in `round`.
    pub fn delta_path(&self, round: u64, processor: &str, instance: u32) -> PathBuf {
        self.round_dir(round).join(format!("{processor}-{instance}.delta"))
    }

    /// The base of instance `instance` (of `parallelism`) of `processor` as of `round`.
    pub fn base_path(&self, round: u64, processor: &str, instance: u32, parallelism: u32) -> PathBuf {
        self.base_dir(round).join(format!("{processor}-{instance}-of-{parallelism}.base"))
    }

    /// The numbers of the directories under `dir` (rounds or bases), ascending.
    fn numbered(&self, dir: &str) -> Result<Vec<u64>, StoreError> {
        let dir = self.root.join(dir);
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io(&dir))? {
            let e = e.map_err(io(&dir))?;
            if let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Round numbers present in the store (complete or not), ascending.
    /// An object store is not listed: its `HEAD` record names the newest
    /// complete rounds, and the rounds after them are asked for one by one.
    pub fn rounds(&self) -> Result<Vec<u64>, StoreError> {
        match &self.remote {
            Some(_) => self.head_rounds(),
            None => self.numbered("rounds"),
        }
    }

    fn read_head(&self) -> Result<HeadRecord, StoreError> {
        let path = self.root.join("HEAD");
        match self.read_small(&path)? {
            Some(b) => decode(KIND_HEAD, &b).map(|(h, _)| h).map_err(|why| StoreError::Corrupt { path, why }),
            None => Ok(HeadRecord::default()),
        }
    }

    /// The complete rounds of an object store: those its `HEAD` lists, then
    /// every later one that exists (the next numbers of the newest one's
    /// run, and the first rounds of the runs after it).
    fn head_rounds(&self) -> Result<Vec<u64>, StoreError> {
        use crate::core::negotiator::first_round_of_epoch;
        let mut rounds = self.read_head()?.rounds;
        let newest = rounds.last().copied().unwrap_or(0);
        let mut next = newest + 1;
        let mut run = newest >> 32;
        // A run numbers its rounds from its first; runs that published
        // nothing leave a gap, so a few later runs are tried too.
        let mut misses = 0;
        while misses < 8 {
            if self.exists(&self.round_dir(next).join("COMMIT"))? {
                rounds.push(next);
                next += 1;
                misses = 0;
            } else {
                run += 1;
                next = first_round_of_epoch(run);
                misses += 1;
            }
        }
        rounds.sort_unstable();
        rounds.dedup();
        Ok(rounds)
    }

    /// Starts the delta of an instance (`header.kind` must be `Delta`).
    pub fn delta_writer(&self, header: &DataHeader) -> Result<DataWriter, StoreError> {
        DataWriter::create(
            &self.delta_path(header.round, &header.processor, header.instance),
            header,
            self.remote.clone(),
        )
    }

    /// Starts a base of an instance (`header.kind` must be `Base`).
    pub fn base_writer(&self, header: &DataHeader) -> Result<DataWriter, StoreError> {
        let path = self.base_path(header.round, &header.processor, header.instance, header.parallelism);
        DataWriter::create(&path, header, self.remote.clone())
    }

    /// Makes a round complete.
    pub fn write_commit(&self, c: &CommitRecord) -> Result<(), StoreError> {
        let path = self.round_dir(c.round).join("COMMIT");
        let Some(r) = &self.remote else { return self.write_small(&path, &encode(KIND_COMMIT, c), true) };
        if !r.may_publish() {
            let why = "this run lost the store's lease to another run; it publishes nothing more".to_string();
            return Err(StoreError::Corrupt { path, why });
        }
        self.write_small(&path, &encode(KIND_COMMIT, c), true)?;
        // The pointer to the newest rounds; a crash before it is mended by
        // `head_rounds`, which asks for the rounds after it.
        let mut head = self.read_head().unwrap_or_default();
        head.rounds.push(c.round);
        head.rounds.sort_unstable();
        head.rounds.dedup();
        let excess = head.rounds.len().saturating_sub(HEAD_ROUNDS);
        head.rounds.drain(..excess);
        if let Err(e) = self.write_small(&self.root.join("HEAD"), &encode(KIND_HEAD, &head), false) {
            tracing::warn!("cannot update the store's HEAD: {e}");
        }
        Ok(())
    }

    pub fn read_commit(&self, round: u64) -> Result<Option<CommitRecord>, StoreError> {
        let path = self.round_dir(round).join("COMMIT");
        match self.read_small(&path).map(|b| b.ok_or(())) {
            Ok(Ok(bytes)) => {
                let (c, _): (CommitRecord, u32) =
                    decode(KIND_COMMIT, &bytes).map_err(|why| StoreError::Corrupt { path: path.clone(), why })?;
                if c.round != round {
                    return Err(StoreError::Corrupt {
                        path,
                        why: format!("names round {} inside round {round}", c.round),
                    });
                }
                Ok(Some(c))
            }
            Ok(Err(())) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn sink_path(&self, sink: &str) -> PathBuf {
        self.root.join("sinks").join(sink)
    }

    /// Records the newest round sink `sink` made durable.
    pub fn write_sink_round(&self, sink: &str, round: u64) -> Result<(), StoreError> {
        self.write_small(
            &self.sink_path(sink),
            &encode(KIND_SINK, &SinkRecord { sink: sink.to_string(), round }),
            false,
        )
    }

    /// The newest round sink `sink` made durable, as recorded (`None`: never).
    pub fn read_sink_round(&self, sink: &str) -> Result<Option<u64>, StoreError> {
        let path = self.sink_path(sink);
        let Some(bytes) = self.read_small(&path)? else { return Ok(None) };
        let (r, _): (SinkRecord, u32) = decode(KIND_SINK, &bytes).map_err(|why| StoreError::Corrupt { path, why })?;
        Ok((r.sink == sink).then_some(r.round))
    }

    /// Deletes what is not needed: rounds below `below` that are neither in
    /// `keep` nor on the chain of a kept round, and bases below the newest
    /// kept round that no kept chain uses.
    pub fn collect(&self, keep: &[u64], below: u64) -> Result<(), StoreError> {
        let needed = self.needed(keep)?;
        if let Some(r) = &self.remote {
            return self.collect_objects(r, keep, below, &needed);
        }
        for r in self.rounds()? {
            if r < below && !keep.contains(&r) && !needed.iter().any(|p| p.starts_with(self.round_dir(r))) {
                fs::remove_dir_all(self.round_dir(r)).map_err(io(&self.round_dir(r)))?;
            }
        }
        let newest = keep.iter().copied().max().unwrap_or(0);
        for b in self.numbered("bases")? {
            let dir = self.base_dir(b);
            if b >= newest {
                continue;
            }
            for e in fs::read_dir(&dir).map_err(io(&dir))? {
                let path = e.map_err(io(&dir))?.path();
                if !needed.contains(&path) && !being_written(&path) {
                    match fs::remove_file(&path) {
                        // A compaction moved its file into place meanwhile.
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path)(e)),
                        _ => {}
                    }
                }
            }
            if fs::read_dir(&dir).map_err(io(&dir))?.next().is_none() {
                match fs::remove_dir(&dir) {
                    // A compaction started writing in it meanwhile.
                    Err(e) if e.kind() != std::io::ErrorKind::DirectoryNotEmpty => return Err(io(&dir)(e)),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// `collect` on an object store: the same rules, by listing, and only
    /// for objects older than the grace period (a writer elsewhere may be
    /// about to use a fresh one).
    fn collect_objects(&self, r: &Remote, keep: &[u64], below: u64, needed: &[PathBuf]) -> Result<(), StoreError> {
        let now = now_ms();
        let old = |m: &remote::Listed| now.saturating_sub(m.modified_ms) >= self.grace.as_millis() as u64;
        let number = |dir: &str, p: &Path| -> Option<u64> {
            p.strip_prefix(self.root.join(dir)).ok()?.components().next()?.as_os_str().to_str()?.parse().ok()
        };
        for (path, meta) in r.list(&self.root.join("rounds"))? {
            let Some(n) = number("rounds", &path) else { continue };
            let in_use = keep.contains(&n) || needed.iter().any(|p| p.starts_with(self.round_dir(n)));
            if n < below && !in_use && old(&meta) {
                r.delete(&path)?;
            }
        }
        // HEAD names only rounds that are still there.
        let mut head = self.read_head()?;
        let before = head.rounds.len();
        head.rounds.retain(|n| *n >= below || keep.contains(n));
        if head.rounds.len() != before {
            self.write_small(&self.root.join("HEAD"), &encode(KIND_HEAD, &head), false)?;
        }
        let newest = keep.iter().copied().max().unwrap_or(0);
        for (path, meta) in r.list(&self.root.join("bases"))? {
            let Some(n) = number("bases", &path) else { continue };
            if n < newest && !needed.contains(&path) && old(&meta) {
                r.delete(&path)?;
            }
        }
        Ok(())
    }

    /// Every file the chains of the kept complete rounds need.
    fn needed(&self, keep: &[u64]) -> Result<Vec<PathBuf>, StoreError> {
        let mut needed = Vec::new();
        for &r in keep {
            let Some(c) = self.read_commit(r)? else { continue };
            for f in &c.files {
                let p = c.parallelism.get(&f.processor).copied().unwrap_or(1);
                // A chain that cannot be walked keeps its head's round anyway.
                if let Ok(chain) = self.walk(r, &f.processor, f.instance, p, true) {
                    needed.extend(chain.files);
                }
            }
        }
        Ok(needed)
    }
}

/// How long a temporary file may go unwritten before collection takes it
/// for the leftover of a crash.
const WRITING_GRACE: std::time::Duration = std::time::Duration::from_secs(120);

/// Whether `path` is a temporary file a writer (a compaction, maybe of
/// another process) may still be filling: collection leaves those alone.
fn being_written(path: &Path) -> bool {
    let tmp = path.file_name().is_some_and(|n| n.to_string_lossy().contains(".tmp-"));
    let fresh = || {
        fs::metadata(path).and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().map_or(true, |age| age < WRITING_GRACE))
    };
    tmp && fresh()
}

/// Milliseconds since the Unix epoch, for records meant for people.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_s3;
