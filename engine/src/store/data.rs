//! Data files: the entries of one bolt instance, sorted by key, written and
//! read as a stream of checksummed blocks, so neither side holds a whole
//! state in memory.
//!
//! ```text
//! MAGIC "HAILSTRM" | kind u8 (3 delta, 4 base) | version u16
//! u32 header length | header (postcard DataHeader) | u32 CRC-32 of the header
//! blocks: u32 length (> 0) | entries batch (ABI framing) | u32 CRC-32 of the block
//! end:    u32 0 | u64 entries | u32 CRC-32 of every byte before it
//! ```
//!
//! Keys increase strictly across the whole file; a reader checks it, with
//! every checksum, and returns an error for anything else.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use hailstorm_abi::BatchReader;
use serde::{Deserialize, Serialize};

use super::remote::Remote;
use super::{io, sync_dir, StoreError, MAGIC};

/// The format version of data files.
const DATA_VERSION: u16 = 3;
const KIND_DELTA: u8 = 3;
const KIND_BASE: u8 = 4;
/// The largest header or block a reader accepts.
const MAX_PIECE: u32 = 256 << 20;

/// What a data file's entries build on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Parent {
    /// Nothing: the entries are the instance's whole state.
    None,
    /// The instance's delta of that round.
    Delta(u64),
    /// The instance's base at that round.
    Base(u64),
}

/// Whether a data file holds the changes of a round or a whole state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataKind {
    /// The entries whose committed value changed in the round, over `parent`.
    Delta,
    /// The whole state of the instance as of the round.
    Base,
}

/// Who a data file belongs to and what it builds on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataHeader {
    pub kind: DataKind,
    pub topology: String,
    pub processor: String,
    pub instance: u32,
    pub parallelism: u32,
    /// The round whose state (with the files it builds on) the file gives.
    pub round: u64,
    pub parent: Parent,
    /// The round's clock by partition name.
    pub clock: Vec<(String, u64)>,
    /// Content hash of the module that produced the entries.
    pub module_hash: String,
}

/// Checks that an entries batch is well framed and its keys increase
/// strictly from `last` (the previous block's last key), which it updates.
pub fn check_sorted(block: &[u8], last: &mut Option<Vec<u8>>) -> Result<u32, String> {
    let mut r = BatchReader::new(block).map_err(|e| e.to_string())?;
    let mut prev: Option<&[u8]> = None;
    for i in 0..r.count() {
        let k = r.bytes().map_err(|e| e.to_string())?;
        r.bytes().map_err(|e| e.to_string())?;
        let before = prev.or(last.as_deref());
        if before.is_some_and(|l| l >= k) {
            return Err(format!("entry {i}: keys are not sorted, or a key comes twice"));
        }
        prev = Some(k);
    }
    r.expect_end().map_err(|e| e.to_string())?;
    if let Some(k) = prev {
        *last = Some(k.to_vec());
    }
    Ok(r.count())
}

/// Writes a data file: blocks go to a temporary file, which `finish` syncs
/// and renames into place (or, for an object store, uploads).
pub struct DataWriter {
    /// `None` once finished.
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    /// Where `finish` uploads the file, for an object store.
    upload: Option<std::sync::Arc<Remote>>,
    path: PathBuf,
    crc: crc32fast::Hasher,
    last: Option<Vec<u8>>,
    entries: u64,
    bytes: u64,
}

/// A temporary name no other writer of this process or another uses.
fn tmp_path(path: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tmp-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    PathBuf::from(name)
}

impl DataWriter {
    /// Starts the file at `path` (its directory is created); with `upload`,
    /// the file is staged locally and `path` names its object.
    pub fn create(
        path: &Path,
        header: &DataHeader,
        upload: Option<std::sync::Arc<Remote>>,
    ) -> Result<DataWriter, StoreError> {
        let tmp = match &upload {
            Some(r) => r.staging_path(),
            None => {
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir).map_err(io(dir))?;
                }
                tmp_path(path)
            }
        };
        let file = super::create_new(&tmp)?;
        let mut w = DataWriter {
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp,
            upload,
            path: path.to_path_buf(),
            crc: crc32fast::Hasher::new(),
            last: None,
            entries: 0,
            bytes: 0,
        };
        let kind = match header.kind {
            DataKind::Delta => KIND_DELTA,
            DataKind::Base => KIND_BASE,
        };
        let mut head = Vec::with_capacity(11);
        head.extend_from_slice(MAGIC);
        head.push(kind);
        head.extend_from_slice(&DATA_VERSION.to_le_bytes());
        w.put(&head)?;
        let payload = postcard::to_allocvec(header).map_err(|e| corrupt(path, format!("header: {e}")))?;
        w.piece(&payload)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.crc.update(bytes);
        self.put_unsummed(bytes)
    }

    /// Writes bytes the file's checksum leaves out: a block's own checksum,
    /// which would otherwise cancel the block's content out of the file's
    /// (a CRC over a message followed by its CRC no longer depends on the message).
    fn put_unsummed(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.bytes += bytes.len() as u64;
        let out = self.out.as_mut().ok_or_else(|| corrupt(&self.path, "written after its end".into()))?;
        out.write_all(bytes).map_err(io(&self.tmp))
    }

    fn piece(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let len = u32::try_from(bytes.len()).map_err(|_| corrupt(&self.path, "a block over 4 GiB".into()))?;
        self.put(&len.to_le_bytes())?;
        self.put(bytes)?;
        self.put_unsummed(&crc32fast::hash(bytes).to_le_bytes())
    }

    /// Appends an entries batch; its keys must follow the previous ones.
    pub fn block(&mut self, entries: &[u8]) -> Result<(), StoreError> {
        let n = check_sorted(entries, &mut self.last).map_err(|why| corrupt(&self.path, why))?;
        if n > 0 {
            self.entries += u64::from(n);
            self.piece(entries)?;
        }
        Ok(())
    }

    /// Entries written so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Ends the file, syncs it, moves it into place and syncs its directory;
    /// returns its checksum (what a commit record lists).
    pub fn finish(mut self) -> Result<u32, StoreError> {
        self.put(&0u32.to_le_bytes())?;
        self.put(&self.entries.to_le_bytes())?;
        let crc = self.crc.clone().finalize();
        let mut out = self.out.take().ok_or_else(|| corrupt(&self.path, "finished twice".into()))?;
        out.write_all(&crc.to_le_bytes()).map_err(io(&self.tmp))?;
        let file = out.into_inner().map_err(|e| StoreError::Io { path: self.tmp.clone(), source: e.into_error() })?;
        if let Some(remote) = &self.upload {
            drop(file);
            remote.upload(&self.path, &self.tmp)?;
            return Ok(crc);
        }
        file.sync_all().map_err(io(&self.tmp))?;
        fs::rename(&self.tmp, &self.path).map_err(io(&self.path))?;
        sync_dir(&self.path)?;
        Ok(crc)
    }
}

impl Drop for DataWriter {
    fn drop(&mut self) {
        // An unfinished file is not left behind (after `finish` the temporary name is gone).
        let _ = fs::remove_file(&self.tmp);
    }
}

fn corrupt(path: &Path, why: String) -> StoreError {
    StoreError::Corrupt { path: path.to_path_buf(), why }
}

/// Reads a data file block by block, checking everything on the way.
pub struct DataReader {
    input: BufReader<File>,
    path: PathBuf,
    crc: crc32fast::Hasher,
    last: Option<Vec<u8>>,
    entries: u64,
    header: DataHeader,
    done: Option<u32>,
}

impl DataReader {
    /// Opens a file and reads its header.
    pub fn open(path: &Path) -> Result<DataReader, StoreError> {
        let file = File::open(path).map_err(io(path))?;
        DataReader::from_file(file, path)
    }

    /// Reads the data file `path` from `file` (a local copy of its object).
    pub fn from_file(file: File, path: &Path) -> Result<DataReader, StoreError> {
        let mut r = DataReader {
            input: BufReader::with_capacity(1 << 20, file),
            path: path.to_path_buf(),
            crc: crc32fast::Hasher::new(),
            last: None,
            entries: 0,
            header: DataHeader {
                kind: DataKind::Delta,
                topology: String::new(),
                processor: String::new(),
                instance: 0,
                parallelism: 0,
                round: 0,
                parent: Parent::None,
                clock: Vec::new(),
                module_hash: String::new(),
            },
            done: None,
        };
        let mut head = [0u8; 11];
        r.take(&mut head)?;
        if head[..8] != MAGIC[..] {
            return Err(r.corrupt("not a Hailstorm store file (bad magic)"));
        }
        let kind = match head[8] {
            KIND_DELTA => DataKind::Delta,
            KIND_BASE => DataKind::Base,
            k => return Err(r.corrupt(&format!("file kind {k} is not a data file"))),
        };
        let version = u16::from_le_bytes([head[9], head[10]]);
        if version != DATA_VERSION {
            return Err(r.corrupt(&format!("format version {version}; this build reads version {DATA_VERSION}")));
        }
        let payload = r.piece()?.ok_or_else(|| r.corrupt("no header"))?;
        let header: DataHeader = postcard::from_bytes(&payload).map_err(|e| r.corrupt(&format!("header: {e}")))?;
        if header.kind != kind {
            return Err(r.corrupt("the header's kind differs from the file's"));
        }
        r.header = header;
        Ok(r)
    }

    /// The file's checksum, once it has been read to its end.
    pub fn checksum(&self) -> Option<u32> {
        self.done
    }

    pub fn header(&self) -> &DataHeader {
        &self.header
    }

    fn corrupt(&self, why: &str) -> StoreError {
        corrupt(&self.path, why.to_string())
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<(), StoreError> {
        self.take_unsummed(buf)?;
        self.crc.update(buf);
        Ok(())
    }

    /// Reads bytes the file's checksum leaves out (see `DataWriter::put_unsummed`).
    fn take_unsummed(&mut self, buf: &mut [u8]) -> Result<(), StoreError> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => self.corrupt("truncated"),
            _ => StoreError::Io { path: self.path.clone(), source: e },
        })
    }

    /// The next length-prefixed, checksummed piece; `None` at the end marker.
    fn piece(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        let mut len = [0u8; 4];
        self.take(&mut len)?;
        let len = u32::from_le_bytes(len);
        if len == 0 {
            return Ok(None);
        }
        if len > MAX_PIECE {
            return Err(self.corrupt(&format!("a block of {len} bytes")));
        }
        let mut bytes = vec![0u8; len as usize];
        self.take(&mut bytes)?;
        let mut crc = [0u8; 4];
        self.take_unsummed(&mut crc)?;
        if crc32fast::hash(&bytes).to_le_bytes() != crc {
            return Err(self.corrupt("checksum mismatch in a block"));
        }
        Ok(Some(bytes))
    }

    /// The next entries batch, `None` once the file ended (and checked whole).
    pub fn next_block(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        if self.done.is_some() {
            return Ok(None);
        }
        match self.piece()? {
            Some(block) => {
                let n = check_sorted(&block, &mut self.last).map_err(|why| self.corrupt(&why))?;
                self.entries += u64::from(n);
                Ok(Some(block))
            }
            None => {
                let mut count = [0u8; 8];
                self.take(&mut count)?;
                let crc = self.crc.clone().finalize();
                let mut stored = [0u8; 4];
                self.input.read_exact(&mut stored).map_err(|_| self.corrupt("truncated at the end"))?;
                if u64::from_le_bytes(count) != self.entries || crc.to_le_bytes() != stored {
                    return Err(self.corrupt("checksum mismatch at the end"));
                }
                let mut extra = [0u8; 1];
                if self.input.read(&mut extra).map_err(io(&self.path))? != 0 {
                    return Err(self.corrupt("bytes after the end"));
                }
                self.done = Some(crc);
                Ok(None)
            }
        }
    }

    /// Reads to the end; returns the header, the file's checksum and its entries.
    pub fn verify(path: &Path) -> Result<(DataHeader, u32, u64), StoreError> {
        DataReader::open(path)?.verify_all()
    }

    /// Reads the rest to the end; returns the header, the file's checksum and its entries.
    pub fn verify_all(mut self) -> Result<(DataHeader, u32, u64), StoreError> {
        let r = &mut self;
        while r.next_block()?.is_some() {}
        let crc = r.done.ok_or_else(|| r.corrupt("not read to its end"))?;
        Ok((r.header.clone(), crc, r.entries))
    }
}
