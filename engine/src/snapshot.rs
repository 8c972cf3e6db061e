//! The snapshot store: versioned, checksummed files written atomically.
//!
//! Layout of a `file:` store:
//!
//! ```text
//! STORE/rounds/00000000000000000042/counts-0.snap   snapshot(C) of bolt instance counts/0
//! STORE/rounds/00000000000000000042/COMMIT          the round is complete: clock, files, module hashes
//! ```
//!
//! A round is complete only once its `COMMIT` record exists, and that record
//! is written only after every instance's snapshot is durable. Recovery takes
//! the newest round whose `COMMIT` and files all decode with valid checksums,
//! falling back to the one before when the newest is damaged; that is why the
//! previous complete round is only deleted once a newer one is complete.
//!
//! Every file is `MAGIC, kind, version, payload length, payload, CRC-32`, the
//! payload being postcard-encoded. Writes go to a temporary file that is
//! fsync'd, renamed into place, and the directory fsync'd.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"HAILSTRM";
const FORMAT_VERSION: u16 = 1;
const KIND_SNAPSHOT: u8 = 1;
const KIND_COMMIT: u8 = 2;
const HEADER: usize = 8 + 1 + 2 + 8;

/// One bolt instance's state at a clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    pub topology: String,
    pub processor: String,
    pub instance: u32,
    pub parallelism: u32,
    pub round: u64,
    /// The snapshot clock by partition name (`spout/N`).
    pub clock: Vec<(String, u64)>,
    /// Content hash of the module that produced the entries.
    pub module_hash: String,
    /// An ABI entries batch.
    pub entries: Vec<u8>,
}

/// A snapshot file as listed by its round's commit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub processor: String,
    pub instance: u32,
    pub crc: u32,
}

/// The record that makes a round complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    pub topology: String,
    pub round: u64,
    pub clock: Vec<(String, u64)>,
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

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: corrupt: {why}")]
    Corrupt { path: PathBuf, why: String },
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

/// Writes a file atomically and durably: temporary file, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io(path))?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    Ok(())
}

/// A snapshot store in a directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
}

/// The newest usable complete round, and what was skipped to find it.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub commit: CommitRecord,
    pub warnings: Vec<String>,
}

impl FileStore {
    pub fn open(root: &Path) -> Result<FileStore, StoreError> {
        let rounds = root.join("rounds");
        fs::create_dir_all(&rounds).map_err(io(&rounds))?;
        Ok(FileStore { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn round_dir(&self, round: u64) -> PathBuf {
        self.root.join("rounds").join(format!("{round:020}"))
    }

    pub fn snapshot_path(&self, round: u64, processor: &str, instance: u32) -> PathBuf {
        self.round_dir(round).join(format!("{processor}-{instance}.snap"))
    }

    /// Round numbers present in the store (complete or not), ascending.
    pub fn rounds(&self) -> Result<Vec<u64>, StoreError> {
        let dir = self.root.join("rounds");
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

    /// Durably writes one instance's snapshot; returns its checksum for the commit record.
    pub fn write_snapshot(&self, snap: &SnapshotFile) -> Result<u32, StoreError> {
        let dir = self.round_dir(snap.round);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let bytes = encode(KIND_SNAPSHOT, snap);
        let crc = crc_of(&bytes);
        write_atomic(&self.snapshot_path(snap.round, &snap.processor, snap.instance), &bytes)?;
        Ok(crc)
    }

    /// Makes a round complete.
    pub fn write_commit(&self, c: &CommitRecord) -> Result<(), StoreError> {
        let dir = self.round_dir(c.round);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        write_atomic(&dir.join("COMMIT"), &encode(KIND_COMMIT, c))
    }

    pub fn read_snapshot(&self, round: u64, processor: &str, instance: u32) -> Result<(SnapshotFile, u32), StoreError> {
        let path = self.snapshot_path(round, processor, instance);
        let bytes = fs::read(&path).map_err(io(&path))?;
        let (snap, crc): (SnapshotFile, u32) =
            decode(KIND_SNAPSHOT, &bytes).map_err(|why| StoreError::Corrupt { path: path.clone(), why })?;
        if snap.round != round || snap.processor != processor || snap.instance != instance {
            return Err(StoreError::Corrupt { path, why: "the file describes another snapshot".into() });
        }
        Ok((snap, crc))
    }

    pub fn read_commit(&self, round: u64) -> Result<Option<CommitRecord>, StoreError> {
        let path = self.round_dir(round).join("COMMIT");
        match fs::read(&path) {
            Ok(bytes) => {
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
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { path, source: e }),
        }
    }

    /// Checks that every file of a commit record is present and intact.
    fn verify(&self, c: &CommitRecord) -> Result<(), StoreError> {
        for f in &c.files {
            let (_, crc) = self.read_snapshot(c.round, &f.processor, f.instance)?;
            if crc != f.crc {
                let path = self.snapshot_path(c.round, &f.processor, f.instance);
                return Err(StoreError::Corrupt { path, why: "checksum differs from the commit record".into() });
            }
        }
        Ok(())
    }

    /// The newest complete round whose files are all intact, if any.
    pub fn latest_complete(&self) -> Result<Option<Recovered>, StoreError> {
        let mut warnings = Vec::new();
        for round in self.rounds()?.into_iter().rev() {
            let commit = match self.read_commit(round) {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => {
                    warnings.push(format!("skipping snapshot round {round}: {e}"));
                    continue;
                }
            };
            match self.verify(&commit) {
                Ok(()) => return Ok(Some(Recovered { commit, warnings })),
                Err(e) => warnings.push(format!("skipping snapshot round {round}: {e}")),
            }
        }
        if !warnings.is_empty() {
            return Err(StoreError::Corrupt {
                path: self.root.clone(),
                why: format!("no intact complete snapshot is left ({})", warnings.join("; ")),
            });
        }
        Ok(None)
    }

    /// Deletes one round.
    pub fn remove_round(&self, round: u64) -> Result<(), StoreError> {
        let dir = self.round_dir(round);
        fs::remove_dir_all(&dir).map_err(io(&dir))
    }

    /// Deletes every round except those in `keep`.
    pub fn retain(&self, keep: &[u64]) -> Result<(), StoreError> {
        for r in self.rounds()? {
            if !keep.contains(&r) {
                let dir = self.round_dir(r);
                fs::remove_dir_all(&dir).map_err(io(&dir))?;
            }
        }
        Ok(())
    }
}

fn crc_of(framed: &[u8]) -> u32 {
    // The checksum of a framed file is the CRC-32 of its payload, stored in its last 4 bytes.
    let n = framed.len();
    let mut b = [0u8; 4];
    if let Some(tail) = framed.get(n.saturating_sub(4)..) {
        if tail.len() == 4 {
            b.copy_from_slice(tail);
        }
    }
    u32::from_le_bytes(b)
}

/// Milliseconds since the Unix epoch, for records meant for people.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn snap(round: u64, instance: u32, entries: Vec<u8>) -> SnapshotFile {
        SnapshotFile {
            topology: "t".into(),
            processor: "counts".into(),
            instance,
            parallelism: 2,
            round,
            clock: vec![("lines/0".into(), round * 10)],
            module_hash: "abc".into(),
            entries,
        }
    }

    fn commit(store: &FileStore, round: u64) -> CommitRecord {
        let mut files = Vec::new();
        for i in 0..2 {
            let crc = store.write_snapshot(&snap(round, i, vec![round as u8, i as u8])).unwrap();
            files.push(FileRef { processor: "counts".into(), instance: i, crc });
        }
        let c = CommitRecord {
            topology: "t".into(),
            round,
            clock: vec![("lines/0".into(), round * 10)],
            files,
            modules: BTreeMap::new(),
            parallelism: BTreeMap::new(),
            sources: BTreeMap::new(),
            created_unix_ms: 0,
        };
        store.write_commit(&c).unwrap();
        c
    }

    proptest! {
        #[test]
        fn snapshot_round_trip(entries in prop::collection::vec(any::<u8>(), 0..2000), round in any::<u64>(), inst in any::<u32>()) {
            let s = snap(round, inst, entries);
            let bytes = encode(KIND_SNAPSHOT, &s);
            let (back, _): (SnapshotFile, u32) = decode(KIND_SNAPSHOT, &bytes).unwrap();
            prop_assert_eq!(back, s);
        }

        /// Any single corrupted byte or truncation is detected, never a panic or a wrong value.
        #[test]
        fn corruption_is_detected(entries in prop::collection::vec(any::<u8>(), 1..500), pos in any::<usize>(), flip in 1u8..=255, cut in any::<usize>()) {
            let s = snap(7, 1, entries);
            let mut bytes = encode(KIND_SNAPSHOT, &s);
            let i = pos % bytes.len();
            bytes[i] ^= flip;
            prop_assert!(decode::<SnapshotFile>(KIND_SNAPSHOT, &bytes).is_err());
            let good = encode(KIND_SNAPSHOT, &s);
            let c = cut % good.len();
            prop_assert!(decode::<SnapshotFile>(KIND_SNAPSHOT, &good[..c]).is_err());
        }

        /// Whatever junk is in the file, decoding returns an error, never panics.
        #[test]
        fn junk_never_panics(junk in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode::<CommitRecord>(KIND_COMMIT, &junk);
        }
    }

    #[test]
    fn a_corrupt_round_falls_back_to_the_previous_complete_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        assert!(store.latest_complete().unwrap().is_none());
        commit(&store, 1);
        commit(&store, 2);
        // An incomplete round 3 (no COMMIT) is ignored.
        store.write_snapshot(&snap(3, 0, vec![1])).unwrap();
        assert_eq!(store.latest_complete().unwrap().unwrap().commit.round, 2);
        // Flip a byte in one of round 2's snapshots.
        let p = store.snapshot_path(2, "counts", 1);
        let mut b = fs::read(&p).unwrap();
        let n = b.len();
        b[n / 2] ^= 0x55;
        fs::write(&p, b).unwrap();
        let r = store.latest_complete().unwrap().unwrap();
        assert_eq!(r.commit.round, 1);
        assert!(r.warnings[0].contains("round 2"), "{:?}", r.warnings);
        // Damage round 1 too: nothing intact is left, and that is an error, not an empty start.
        fs::write(store.snapshot_path(1, "counts", 0), b"junk").unwrap();
        assert!(store.latest_complete().is_err());
    }

    #[test]
    fn retain_keeps_only_what_it_is_told() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        for r in 1..=4 {
            commit(&store, r);
        }
        store.retain(&[3, 4]).unwrap();
        assert_eq!(store.rounds().unwrap(), vec![3, 4]);
    }
}
