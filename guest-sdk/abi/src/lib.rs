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
/// `hailstorm_abi_version`; the host refuses any other value, except that
/// deserializers of [`OLDEST_DESERIALIZER_VERSION`] still load (their
/// contract did not change).
pub const ABI_VERSION: i32 = 2;

/// The oldest ABI version a deserializer may implement (version 2 changed
/// only bolts and sinks).
pub const OLDEST_DESERIALIZER_VERSION: i32 = 1;

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
/// Bolt export `fold(slot, ptr, len) -> i64`: a tuple batch in, an emitted batch out.
pub const EXPORT_FOLD: &str = "hailstorm_fold";
/// Bolt export `merge(dst, src) -> i32`: `dst := dst ⊕ src; src := empty`.
pub const EXPORT_MERGE: &str = "hailstorm_merge";
/// Bolt export `snapshot(slot, max_bytes) -> i64`: the next chunk of the
/// entries of `slot` that changed since its previous snapshot, sorted by key;
/// an empty chunk ends the snapshot.
pub const EXPORT_SNAPSHOT: &str = "hailstorm_snapshot";
/// Bolt export `restore(slot, ptr, len) -> i32`: sets the entries of an
/// entries batch in `slot` (replacing values), without marking them changed.
pub const EXPORT_RESTORE: &str = "hailstorm_restore";
/// Sink export `resume() -> i64`: the newest round the sink's output holds
/// durably (0: none; it needs the whole state).
pub const EXPORT_RESUME: &str = "hailstorm_resume";
/// Sink export `commit_begin(ptr, len) -> i32`: a round header; a status,
/// or [`SKIP_ROUND`].
pub const EXPORT_COMMIT_BEGIN: &str = "hailstorm_commit_begin";
/// What `commit_begin` returns when the sink declines a round that is not
/// the last: no changes and no `commit_end` follow, and the next round it
/// takes carries these changes too.
pub const SKIP_ROUND: i32 = 2;
/// Sink export `commit_changes(ptr, len) -> i32`: changed entries of one bolt instance.
pub const EXPORT_COMMIT_CHANGES: &str = "hailstorm_commit_changes";
/// Sink export `commit_end() -> i64`: the newest round now durable in the
/// sink's output (0: none yet), with [`MORE_WORK`] set when the sink has
/// work left that the host must let it do through `commit_step`.
pub const EXPORT_COMMIT_END: &str = "hailstorm_commit_end";
/// Sink export `commit_step() -> i64`: does a bounded part of the sink's
/// pending work; returns as `commit_end` does.
pub const EXPORT_COMMIT_STEP: &str = "hailstorm_commit_step";
/// The flag of a `commit_end` or `commit_step` result saying that work is
/// pending: the host calls `commit_step` until a result comes without it.
pub const MORE_WORK: i64 = 1 << 62;

/// Serializer export `describe() -> i64`: a UTF-8 JSON document saying what
/// its output items are (`{"output":"kafka"}`, or `{"output":"rows",
/// "columns":[...]}`); called once, after `init`.
pub const EXPORT_DESCRIBE: &str = "hailstorm_describe";
/// Serializer export `serialize(ptr, len) -> i64`: changed entries of one
/// bolt instance in one round in, an output batch out.
pub const EXPORT_SERIALIZE: &str = "hailstorm_serialize";
/// The length of a null field of an output item (no bytes follow).
pub const NULL_FIELD: u32 = u32::MAX;

/// The column types a serializer's rows may have (ABI.md §7a). Values come
/// in PostgreSQL's binary format for the type (big-endian integers and
/// floats), except `jsonb`: the JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Bytea,
    Bigint,
    Integer,
    Smallint,
    Double,
    Real,
    Boolean,
    Jsonb,
}

/// Every column type with its name in the describe document (PostgreSQL's
/// name, as `information_schema.columns.data_type` gives it).
pub const COLUMN_TYPES: &[(&str, ColumnType)] = &[
    ("text", ColumnType::Text),
    ("bytea", ColumnType::Bytea),
    ("bigint", ColumnType::Bigint),
    ("integer", ColumnType::Integer),
    ("smallint", ColumnType::Smallint),
    ("double precision", ColumnType::Double),
    ("real", ColumnType::Real),
    ("boolean", ColumnType::Boolean),
    ("jsonb", ColumnType::Jsonb),
];

impl ColumnType {
    /// Its name in the describe document.
    pub fn name(self) -> &'static str {
        COLUMN_TYPES.iter().find(|(_, t)| *t == self).map_or("?", |(n, _)| n)
    }

    /// The type a describe document names.
    pub fn parse(name: &str) -> Option<ColumnType> {
        COLUMN_TYPES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
    }

    /// The width of a fixed-width value.
    pub fn width(self) -> Option<usize> {
        match self {
            ColumnType::Bigint | ColumnType::Double => Some(8),
            ColumnType::Integer | ColumnType::Real => Some(4),
            ColumnType::Smallint => Some(2),
            ColumnType::Boolean => Some(1),
            _ => None,
        }
    }
}

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

    #[inline]
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    #[inline]
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a bytes field. Panics only if a field exceeds 4 GiB, which
    /// no wasm32 memory can hold.
    #[inline]
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.u32(len);
        self.buf.extend_from_slice(b);
        self
    }

    /// Appends one whole emitted tuple (`u32` input index, key, value) as
    /// one item, growing the buffer at most once.
    #[inline]
    pub fn tuple(&mut self, input: u32, key: &[u8], value: &[u8]) -> &mut Self {
        self.buf.reserve(12 + key.len() + value.len());
        self.u32(input).bytes(key).bytes(value).end_item()
    }

    /// Appends already-framed item bytes (one or more fields) verbatim.
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    /// Marks the end of one item.
    #[inline]
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

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let end = self.pos.checked_add(n).ok_or(FrameError::Truncated { at: self.pos })?;
        let s = self.buf.get(self.pos..end).ok_or(FrameError::Truncated { at: self.pos })?;
        self.pos = end;
        Ok(s)
    }

    #[inline]
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

    #[inline]
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

/// The header of a round a sink receives (`hailstorm_commit_begin`): which
/// round, and what the changes that follow build on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundHeader<'a> {
    /// The complete round whose state the sink holds once it applied the changes.
    pub round: u64,
    /// The round the changes build on: they are every entry whose committed
    /// value changed after `since` and up to `round`. 0: they are the whole
    /// state (the sink's output must be rebuilt from them).
    pub since: u64,
    /// The last round of a bounded run or of a stop: make it durable now.
    pub last: bool,
    /// The complete clock: (partition name, exclusive offset).
    pub clock: Vec<(&'a [u8], u64)>,
}

/// Encodes a round header (host side): a batch of clock entries
/// (`bytes partition`, `u64 offset`) after `u64 round`, `u64 since`, `u32 flags`.
pub fn write_round_header(round: u64, since: u64, last: bool, clock: &[(String, u64)]) -> Vec<u8> {
    let mut w = BatchWriter::new();
    w.u64(round).u64(since).u32(u32::from(last));
    for (p, o) in clock {
        w.bytes(p.as_bytes()).u64(*o).end_item();
    }
    w.finish()
}

/// Decodes a round header (guest side).
pub fn read_round_header(buf: &[u8]) -> Result<RoundHeader<'_>, FrameError> {
    let mut r = BatchReader::new(buf)?;
    let (round, since, flags) = (r.u64()?, r.u64()?, r.u32()?);
    let mut clock = Vec::with_capacity((r.count() as usize).min(buf.len() / 12 + 1));
    for _ in 0..r.count() {
        let p = r.bytes()?;
        clock.push((p, r.u64()?));
    }
    r.expect_end()?;
    Ok(RoundHeader { round, since, last: flags & 1 == 1, clock })
}

/// Changed entries of one instance of one input bolt (`hailstorm_commit_changes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes<'a> {
    /// The input bolt's name.
    pub input: &'a [u8],
    /// The bolt instance they come from.
    pub instance: u32,
    /// Entries (key, committed value), sorted by key.
    pub entries: Vec<Pair<'a>>,
}

/// Encodes changes (host side): `bytes input`, `u32 instance`, then an entries batch.
pub fn write_changes(input: &str, instance: u32, entries: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + entries.len() + 8);
    out.extend_from_slice(&u32::try_from(input.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(input.as_bytes());
    out.extend_from_slice(&instance.to_le_bytes());
    out.extend_from_slice(entries);
    out
}

/// Decodes changes (guest side).
pub fn read_changes(buf: &[u8]) -> Result<Changes<'_>, FrameError> {
    let u32_at = |at: usize| {
        buf.get(at..at.saturating_add(4))
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(FrameError::Truncated { at })
    };
    let len = u32_at(0)? as usize;
    let at = 4usize.checked_add(len).ok_or(FrameError::Truncated { at: 0 })?;
    let input = buf.get(4..at).ok_or(FrameError::Truncated { at: 4 })?;
    let instance = u32_at(at)?;
    let entries = read_pairs(buf.get(at + 4..).unwrap_or(&[]))?;
    Ok(Changes { input, instance, entries })
}

/// Encodes a serializer's input (host side): `u64 round`, then changes as
/// [`write_changes`] encodes them.
pub fn write_serialize_input(round: u64, input: &str, instance: u32, entries: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + entries.len() + 16);
    out.extend_from_slice(&round.to_le_bytes());
    out.extend_from_slice(&write_changes(input, instance, entries));
    out
}

/// Decodes a serializer's input (guest side): the round and the changes.
pub fn read_serialize_input(buf: &[u8]) -> Result<(u64, Changes<'_>), FrameError> {
    let head = buf.get(..8).ok_or(FrameError::Truncated { at: 0 })?;
    let mut a = [0u8; 8];
    a.copy_from_slice(head);
    Ok((u64::from_le_bytes(a), read_changes(buf.get(8..).unwrap_or(&[]))?))
}

/// One item of a serializer's output batch: the index of the entry it came
/// from and its fields (`None`: null).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item<'a> {
    pub entry: u32,
    pub fields: Vec<Option<&'a [u8]>>,
}

impl BatchWriter {
    /// Appends one field of an output item: bytes, or null.
    pub fn field(&mut self, f: Option<&[u8]>) -> &mut Self {
        match f {
            Some(b) => self.bytes(b),
            None => self.u32(NULL_FIELD),
        }
    }
}

/// Reads every item of a serializer's output batch: `u32 entry`, `u32
/// fields`, then each field as bytes or [`NULL_FIELD`].
pub fn read_items(buf: &[u8]) -> Result<Vec<Item<'_>>, FrameError> {
    let mut r = BatchReader::new(buf)?;
    let mut out = Vec::with_capacity((r.count() as usize).min(buf.len() / 8 + 1));
    for _ in 0..r.count() {
        let entry = r.u32()?;
        let n = r.u32()? as usize;
        let mut fields = Vec::with_capacity(n.min(buf.len() / 4 + 1));
        for _ in 0..n {
            let at = r.position();
            fields.push(match r.u32()? {
                NULL_FIELD => None,
                len => Some(r.take(len as usize).map_err(|_| FrameError::Truncated { at })?),
            });
        }
        out.push(Item { entry, fields });
    }
    r.expect_end()?;
    Ok(out)
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
    fn output_items_round_trip_and_truncations_are_errors() {
        let mut w = BatchWriter::new();
        w.u32(3).u32(3).field(Some(b"k")).field(None).field(Some(b"")).end_item();
        let buf = w.finish();
        let items = read_items(&buf).unwrap();
        assert_eq!(items, vec![Item { entry: 3, fields: vec![Some(&b"k"[..]), None, Some(&b""[..])] }]);
        for cut in 0..buf.len() {
            assert!(read_items(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let input = write_serialize_input(9, "counts", 1, &buf);
        let empty = write_serialize_input(9, "counts", 1, &[0, 0, 0, 0]);
        let (round, changes) = read_serialize_input(&empty).unwrap();
        assert_eq!((round, changes.input, changes.instance, changes.entries.len()), (9, &b"counts"[..], 1, 0));
        assert!(read_serialize_input(&input[..7]).is_err());
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
    fn sink_documents_round_trip() {
        let doc = write_round_header(3, 2, true, &[("lines/0".into(), 10)]);
        let h = read_round_header(&doc).unwrap();
        assert_eq!((h.round, h.since, h.last), (3, 2, true));
        assert_eq!(h.clock, vec![(&b"lines/0"[..], 10)]);
        for cut in 0..doc.len() {
            assert!(read_round_header(&doc[..cut]).is_err(), "cut at {cut}");
        }
        let mut e = BatchWriter::new();
        e.bytes(b"a").bytes(&7u64.to_le_bytes()).end_item();
        let doc = write_changes("counts", 1, &e.finish());
        let c = read_changes(&doc).unwrap();
        assert_eq!((c.input, c.instance), (&b"counts"[..], 1));
        assert_eq!(c.entries, vec![(&b"a"[..], &7u64.to_le_bytes()[..])]);
        for cut in 0..doc.len() {
            assert!(read_changes(&doc[..cut]).is_err(), "cut at {cut}");
        }
    }
}
