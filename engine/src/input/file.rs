//! File partitions: each input file is one partition, and the offset of a
//! record is the byte position where its line starts. A spout can therefore
//! resume from any clock by seeking.
//!
//! Records are lines without their `\n`. A bounded run reads a file up to the
//! length it had when the run opened it (bytes appended later are for the
//! next run), and its last line with no `\n` is a record only if the file has
//! not grown since; when following a growing file it waits for the newline.
//! A line longer than the partition's `max_record` is an error naming its
//! offset, so a file without newlines is never held whole in memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::core::batch::RecordBatch;

/// Reads framed record batches from one file, from a given offset.
pub struct FileReader {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..]`; `pos` is the file offset of `buf[start]`.
    start: usize,
    pos: u64,
    at_eof: bool,
    /// Bytes of `buf[start..]` already searched for a newline.
    scanned: usize,
    /// A bounded run reads no further than this file offset.
    limit: Option<u64>,
    /// File offset just past the bytes in `buf`.
    read_to: u64,
    max_record: usize,
}

/// How a [`FileReader`] reads.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions {
    /// Stop at the file's length at open (a bounded run), instead of following it.
    pub bounded: bool,
    /// The longest record, in bytes.
    pub max_record: u64,
}

const READ_CHUNK: usize = 1 << 20;

impl FileReader {
    pub fn open(path: &Path, offset: u64, opts: ReadOptions) -> std::io::Result<FileReader> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        if offset > len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the snapshot says offset {offset} but the file has only {len} bytes: was it truncated or replaced?"),
            ));
        }
        file.seek(SeekFrom::Start(offset))?;
        Ok(FileReader {
            path: path.to_path_buf(),
            file,
            buf: Vec::with_capacity(READ_CHUNK),
            start: 0,
            pos: offset,
            at_eof: false,
            scanned: 0,
            limit: opts.bounded.then_some(len),
            read_to: offset,
            max_record: usize::try_from(opts.max_record).unwrap_or(usize::MAX).max(1),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Offset of the next record.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// True once a read found no more bytes (the file may still grow).
    pub fn at_eof(&self) -> bool {
        self.at_eof
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let old = self.buf.len();
        let room = match self.limit {
            Some(l) => usize::try_from(l.saturating_sub(self.read_to)).unwrap_or(usize::MAX).min(READ_CHUNK),
            None => READ_CHUNK,
        };
        // At the end of a file nothing new to read: no buffer to clear for it
        // (a tailing spout asks many times a second).
        if room == 0 || (self.at_eof && self.file.metadata().is_ok_and(|m| m.len() <= self.read_to)) {
            self.at_eof = true;
            return Ok(0);
        }
        self.buf.resize(old + room, 0);
        let n = loop {
            match self.file.read(&mut self.buf[old..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e);
                }
            }
        };
        self.buf.truncate(old + n);
        self.read_to += n as u64;
        self.at_eof = n == 0;
        Ok(n)
    }

    /// A bounded run's unterminated last line is a whole record only if the
    /// file has not grown since the run opened it (else its writer may be
    /// in the middle of it).
    fn tail_is_whole(&self) -> bool {
        match self.limit {
            Some(l) => self.file.metadata().is_ok_and(|m| m.len() == l),
            None => true,
        }
    }

    /// The next line's length, reading more as needed; None at the end of the input.
    fn next_line(&mut self) -> std::io::Result<Option<usize>> {
        loop {
            let rest = self.buf.get(self.start..).unwrap_or_default();
            if let Some(nl) = rest.get(self.scanned..).and_then(memchr) {
                let len = self.scanned + nl;
                self.scanned = 0;
                return Ok(Some(len));
            }
            self.scanned = rest.len();
            if rest.len() > self.max_record {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "the record at offset {} is longer than max_record ({} bytes) and has no newline",
                        self.pos, self.max_record
                    ),
                ));
            }
            if self.fill()? == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads up to `max_records` records or about `max_bytes` bytes. `complete`
    /// says the input will not grow, so a last line without `\n` is a record.
    pub fn read_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
        complete: bool,
        out: &mut RecordBatch,
    ) -> std::io::Result<()> {
        out.framed.clear();
        out.framed.extend_from_slice(&[0; 4]);
        out.offsets.clear();
        let mut bytes = 0;
        while out.offsets.len() < max_records && bytes < max_bytes {
            if let Some(len) = self.next_line()? {
                let line = self.buf.get(self.start..self.start + len).unwrap_or_default();
                push_record(&mut out.framed, line);
                out.offsets.push(self.pos);
                bytes += len + 1;
                self.start += len + 1;
                self.pos += len as u64 + 1;
                continue;
            }
            if complete && self.start < self.buf.len() && self.tail_is_whole() {
                let line = self.buf.get(self.start..).unwrap_or_default();
                push_record(&mut out.framed, line);
                out.offsets.push(self.pos);
                self.pos += line.len() as u64;
                self.start = self.buf.len();
                self.scanned = 0;
            }
            break;
        }
        let n = u32::try_from(out.offsets.len()).unwrap_or(u32::MAX).to_le_bytes();
        out.framed[..4].copy_from_slice(&n);
        out.end = self.pos;
        Ok(())
    }
}

fn memchr(s: &[u8]) -> Option<usize> {
    s.iter().position(|&b| b == b'\n')
}

fn push_record(framed: &mut Vec<u8>, line: &[u8]) {
    framed.extend_from_slice(&u32::try_from(line.len()).unwrap_or(u32::MAX).to_le_bytes());
    framed.extend_from_slice(line);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const FOLLOW: ReadOptions = ReadOptions { bounded: false, max_record: 1 << 20 };
    const BOUNDED: ReadOptions = ReadOptions { bounded: true, max_record: 1 << 20 };

    fn append(p: &Path, bytes: &[u8]) {
        std::fs::OpenOptions::new().append(true).open(p).unwrap().write_all(bytes).unwrap();
    }

    #[test]
    fn offsets_are_exact_and_resumable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in.txt");
        std::fs::write(&p, b"alpha\n\nbeta gamma\ntail").unwrap();
        let mut r = FileReader::open(&p, 0, FOLLOW).unwrap();
        let mut b = RecordBatch::default();
        r.read_batch(100, 1 << 20, false, &mut b).unwrap();
        assert_eq!(b.offsets, vec![0, 6, 7]);
        assert_eq!(b.records(), vec![&b"alpha"[..], b"", b"beta gamma"]);
        assert_eq!(b.end, 18);
        // Following: the unterminated tail waits for its newline.
        r.read_batch(100, 1 << 20, false, &mut b).unwrap();
        assert!(b.is_empty());
        append(&p, b" end\nnext\n");
        r.read_batch(100, 1 << 20, false, &mut b).unwrap();
        assert_eq!(b.records(), vec![&b"tail end"[..], b"next"]);
        assert_eq!(b.offsets, vec![18, 27]);
        // Resuming from a clock reads exactly the rest.
        let mut r = FileReader::open(&p, 18, BOUNDED).unwrap();
        r.read_batch(1, 1 << 20, true, &mut b).unwrap();
        assert_eq!(b.records(), vec![&b"tail end"[..]]);
        assert_eq!(b.end, 27);
        assert!(FileReader::open(&p, 1000, BOUNDED).is_err());
    }

    #[test]
    fn a_bounded_run_takes_the_last_unterminated_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in.txt");
        std::fs::write(&p, b"a\nb").unwrap();
        let mut r = FileReader::open(&p, 0, BOUNDED).unwrap();
        let mut b = RecordBatch::default();
        r.read_batch(100, 1 << 20, true, &mut b).unwrap();
        assert_eq!(b.records(), vec![&b"a"[..], b"b"]);
        assert_eq!(b.end, 3);
    }

    #[test]
    fn a_bounded_run_stops_at_the_length_the_file_had_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in.txt");
        std::fs::write(&p, b"a\nb\n").unwrap();
        let mut r = FileReader::open(&p, 0, BOUNDED).unwrap();
        append(&p, b"late\nlater\n");
        let mut b = RecordBatch::default();
        r.read_batch(100, 1 << 20, true, &mut b).unwrap();
        assert_eq!(b.records(), vec![&b"a"[..], b"b"]);
        r.read_batch(100, 1 << 20, true, &mut b).unwrap();
        assert!(b.is_empty(), "nothing past the length at open");
        assert!(r.at_eof());
        assert_eq!(r.position(), 4);
        // A line being written when the run opened the file is left for the next run.
        std::fs::write(&p, b"a\nhalf").unwrap();
        let mut r = FileReader::open(&p, 0, BOUNDED).unwrap();
        append(&p, b" a line\n");
        r.read_batch(100, 1 << 20, true, &mut b).unwrap();
        assert_eq!(b.records(), vec![&b"a"[..]]);
        assert_eq!(b.end, 2);
    }

    #[test]
    fn a_record_over_max_record_is_an_error_naming_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in.txt");
        let mut bytes = b"ok\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', 5000));
        std::fs::write(&p, &bytes).unwrap();
        for opts in [ReadOptions { max_record: 100, ..FOLLOW }, ReadOptions { max_record: 100, ..BOUNDED }] {
            let mut r = FileReader::open(&p, 0, opts).unwrap();
            let mut b = RecordBatch::default();
            let err = r.read_batch(100, 1 << 20, opts.bounded, &mut b).unwrap_err().to_string();
            assert!(err.contains("offset 3") && err.contains("max_record (100 bytes)"), "{err}");
        }
        // Within the limit, a long line is one record.
        let mut r = FileReader::open(&p, 0, ReadOptions { max_record: 5000, ..BOUNDED }).unwrap();
        let mut b = RecordBatch::default();
        r.read_batch(100, 1 << 20, true, &mut b).unwrap();
        assert_eq!(b.offsets, vec![0, 3]);
    }
}
