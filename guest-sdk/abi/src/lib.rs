//! The contract between the Hailstorm engine and its WebAssembly modules.
//!
//! Both sides depend on this crate, so the ABI version, the names of the
//! exports and imports and the byte layout of every batch live in one place.
//! `guest-sdk/ABI.md` is the language-neutral description of the same
//! contract; this crate is its reference implementation.
//!
//! Every batch is a little-endian `u32` count followed by that many items;
//! a *bytes* field is a `u32` length followed by that many bytes.
//!
//! ```
//! use hailstorm_abi::{BatchWriter, BatchReader};
//! let mut w = BatchWriter::new();
//! w.bytes(b"key");
//! w.bytes(b"value");
//! w.end_item();
//! let buf = w.finish();
//! let mut r = BatchReader::new(&buf).unwrap();
//! assert_eq!(r.count(), 1);
//! assert_eq!(r.bytes().unwrap(), b"key");
//! assert_eq!(r.bytes().unwrap(), b"value");
//! assert!(r.is_empty());
//! ```
#![forbid(unsafe_code)]

/// The ABI version this crate describes. A module exports it from
/// `hailstorm_abi_version`; the host refuses any other value.
pub const ABI_VERSION: i32 = 1;

/// The import module name of the engine's host functions.
pub const IMPORT_MODULE: &str = "hailstorm";
/// Host function `log(level: i32, ptr: i32, len: i32)`.
pub const IMPORT_LOG: &str = "log";
/// Host function `fail(ptr: i32, len: i32)`: the message of the current error.
pub const IMPORT_FAIL: &str = "fail";

/// Exports every module has.
pub const EXPORT_MEMORY: &str = "memory";
pub const EXPORT_ABI_VERSION: &str = "hailstorm_abi_version";
pub const EXPORT_ALLOC: &str = "hailstorm_alloc";
pub const EXPORT_FREE: &str = "hailstorm_free";
pub const EXPORT_INIT: &str = "hailstorm_init";
/// Deserializer export: `deserialize(ptr, len) -> i64` (record batch in, emitted batch out).
pub const EXPORT_DESERIALIZE: &str = "hailstorm_deserialize";
/// Bolt exports.
pub const EXPORT_FOLD: &str = "hailstorm_fold";
pub const EXPORT_MERGE: &str = "hailstorm_merge";
pub const EXPORT_SNAPSHOT: &str = "hailstorm_snapshot";
pub const EXPORT_RESTORE: &str = "hailstorm_restore";
pub const EXPORT_CLEAR: &str = "hailstorm_clear";
/// Sink export: `commit(ptr, len) -> i32` (commit document in).
pub const EXPORT_COMMIT: &str = "hailstorm_commit";

/// Number of state slots a bolt must support (slot ids `0..BOLT_SLOTS`).
pub const BOLT_SLOTS: i32 = 4;

/// Log levels of the `log` import.
pub const LOG_ERROR: i32 = 0;
pub const LOG_WARN: i32 = 1;
pub const LOG_INFO: i32 = 2;
pub const LOG_DEBUG: i32 = 3;

/// Removes `.` and `name/..` from a path without touching any file system.
///
/// Host and guest must agree on it: the host pre-opens a sink's granted
/// directories at their normalised absolute paths, and WASI finds the
/// directory of a path by its prefix, so `/t/../out/x` would not match a
/// grant of `/out`.
pub fn normalize_path(p: &std::path::Path) -> std::path::PathBuf {
    use std::path::{Component, PathBuf};
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !matches!(out.components().next_back(), Some(Component::Normal(_))) || !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Packs a (ptr, len) result into the `i64` an export returns.
pub fn pack(ptr: u32, len: u32) -> i64 {
    ((u64::from(ptr) << 32) | u64::from(len)) as i64
}

/// Unpacks an export's `i64` result: `None` when it signals an error (< 0).
pub fn unpack(v: i64) -> Option<(u32, u32)> {
    if v < 0 {
        None
    } else {
        let v = v as u64;
        Some(((v >> 32) as u32, v as u32))
    }
}

/// Why a batch could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The buffer ends before a field it announces.
    Truncated { at: usize },
    /// Bytes remain after the last item.
    Trailing { at: usize },
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::Truncated { at } => write!(f, "batch truncated at byte {at}"),
            FrameError::Trailing { at } => write!(f, "unexpected bytes after the last item at byte {at}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Builds a batch: a count, then items made of `u32` and bytes fields.
#[derive(Debug, Default, Clone)]
pub struct BatchWriter {
    buf: Vec<u8>,
    count: u32,
}

impl BatchWriter {
    pub fn new() -> Self {
        BatchWriter { buf: vec![0; 4], count: 0 }
    }

    /// Starts over, keeping the allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; 4]);
        self.count = 0;
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a bytes field. Panics only if a field exceeds 4 GiB, which
    /// no wasm32 memory can hold.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.u32(len);
        self.buf.extend_from_slice(b);
        self
    }

    /// Appends already-framed item bytes (one or more fields) verbatim.
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    /// Marks the end of one item.
    pub fn end_item(&mut self) -> &mut Self {
        self.count = self.count.wrapping_add(1);
        self
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Current length of the framed batch in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// The framed batch so far, count included.
    pub fn as_bytes(&mut self) -> &[u8] {
        let c = self.count.to_le_bytes();
        self.buf[..4].copy_from_slice(&c);
        &self.buf
    }

    pub fn finish(mut self) -> Vec<u8> {
        let c = self.count.to_le_bytes();
        self.buf[..4].copy_from_slice(&c);
        self.buf
    }
}

/// Reads a batch written by [`BatchWriter`] (or by any implementation of ABI.md).
/// Every read is bounds-checked: malformed input is an error, never a panic.
#[derive(Debug, Clone)]
pub struct BatchReader<'a> {
    buf: &'a [u8],
    pos: usize,
    count: u32,
}

impl<'a> BatchReader<'a> {
    pub fn new(buf: &'a [u8]) -> Result<Self, FrameError> {
        let mut r = BatchReader { buf, pos: 0, count: 0 };
        r.count = r.u32()?;
        Ok(r)
    }

    /// Number of items the batch announces.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Byte position of the next field.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// True when every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// Errors if bytes remain after the last item.
    pub fn expect_end(&self) -> Result<(), FrameError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Trailing { at: self.pos })
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let end = self.pos.checked_add(n).ok_or(FrameError::Truncated { at: self.pos })?;
        let s = self.buf.get(self.pos..end).ok_or(FrameError::Truncated { at: self.pos })?;
        self.pos = end;
        Ok(s)
    }

    pub fn u32(&mut self) -> Result<u32, FrameError> {
        let s = self.take(4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(s);
        Ok(u32::from_le_bytes(a))
    }

    pub fn u64(&mut self) -> Result<u64, FrameError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], FrameError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// The bytes between two positions of this batch (for copying framed items verbatim).
    pub fn slice(&self, from: usize, to: usize) -> &'a [u8] {
        self.buf.get(from..to).unwrap_or(&[])
    }
}

/// One (key, value) pair of a tuple batch or an entries batch.
pub type Pair<'a> = (&'a [u8], &'a [u8]);

/// Reads every (key, value) pair of a tuple or entries batch.
pub fn read_pairs(buf: &[u8]) -> Result<Vec<Pair<'_>>, FrameError> {
    let mut r = BatchReader::new(buf)?;
    let mut out = Vec::with_capacity((r.count() as usize).min(buf.len() / 8 + 1));
    for _ in 0..r.count() {
        let k = r.bytes()?;
        let v = r.bytes()?;
        out.push((k, v));
    }
    r.expect_end()?;
    Ok(out)
}

/// Reads every record of a record batch.
pub fn read_records(buf: &[u8]) -> Result<Vec<&[u8]>, FrameError> {
    let mut r = BatchReader::new(buf)?;
    let mut out = Vec::with_capacity((r.count() as usize).min(buf.len() / 4 + 1));
    for _ in 0..r.count() {
        out.push(r.bytes()?);
    }
    r.expect_end()?;
    Ok(out)
}

/// One emitted tuple: the index of the input it came from, its key and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Emitted<'a> {
    pub input: u32,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// Reads every tuple of an emitted batch.
pub fn read_emitted(buf: &[u8]) -> Result<Vec<Emitted<'_>>, FrameError> {
    let mut r = BatchReader::new(buf)?;
    let mut out = Vec::with_capacity((r.count() as usize).min(buf.len() / 12 + 1));
    for _ in 0..r.count() {
        let input = r.u32()?;
        let key = r.bytes()?;
        let value = r.bytes()?;
        out.push(Emitted { input, key, value });
    }
    r.expect_end()?;
    Ok(out)
}

/// The commit document a sink receives when a snapshot clock is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit<'a> {
    /// The snapshot round that completed.
    pub round: u64,
    /// The complete clock: (partition name, exclusive offset).
    pub clock: Vec<(&'a [u8], u64)>,
    /// For each input bolt: its name and its committed state entries.
    pub inputs: Vec<(&'a [u8], Vec<Pair<'a>>)>,
}

/// Encodes a commit document (host side).
pub fn write_commit(round: u64, clock: &[(String, u64)], inputs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = BatchWriter::new();
    // The outer count is the number of input bolts.
    w.u64(round);
    w.u32(u32::try_from(clock.len()).unwrap_or(u32::MAX));
    for (p, o) in clock {
        w.bytes(p.as_bytes());
        w.u64(*o);
    }
    for (name, entries) in inputs {
        w.bytes(name.as_bytes());
        w.bytes(entries);
        w.end_item();
    }
    w.finish()
}

/// Decodes a commit document (guest side).
pub fn read_commit(buf: &[u8]) -> Result<Commit<'_>, FrameError> {
    let mut r = BatchReader::new(buf)?;
    let round = r.u64()?;
    let n = r.u32()?;
    let mut clock = Vec::new();
    for _ in 0..n {
        let p = r.bytes()?;
        let o = r.u64()?;
        clock.push((p, o));
    }
    let mut inputs = Vec::new();
    for _ in 0..r.count() {
        let name = r.bytes()?;
        let entries = read_pairs(r.bytes()?)?;
        inputs.push((name, entries));
    }
    r.expect_end()?;
    Ok(Commit { round, clock, inputs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trip() {
        assert_eq!(unpack(pack(1024, 77)), Some((1024, 77)));
        assert_eq!(unpack(-1), None);
    }

    #[test]
    fn truncated_batches_are_errors() {
        let mut w = BatchWriter::new();
        w.bytes(b"abc").bytes(b"").end_item();
        let buf = w.finish();
        for cut in 0..buf.len() {
            assert!(read_pairs(&buf[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(read_pairs(&buf).unwrap(), vec![(&b"abc"[..], &b""[..])]);
    }

    #[test]
    fn commit_round_trip() {
        let mut e = BatchWriter::new();
        e.bytes(b"a").bytes(&7u64.to_le_bytes()).end_item();
        let entries = e.finish();
        let doc = write_commit(3, &[("lines/0".into(), 10)], &[("counts".into(), entries)]);
        let c = read_commit(&doc).unwrap();
        assert_eq!(c.round, 3);
        assert_eq!(c.clock, vec![(&b"lines/0"[..], 10)]);
        assert_eq!(c.inputs.len(), 1);
        assert_eq!(c.inputs[0].1, vec![(&b"a"[..], &7u64.to_le_bytes()[..])]);
    }
}
