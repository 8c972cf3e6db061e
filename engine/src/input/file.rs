//! File partitions: each input file is one partition, and the offset of a
//! record is the byte position where its line starts. A spout can therefore
//! resume from any clock by seeking.
//!
//! Records are lines without their `\n`. A last line with no `\n` is a record
//! only once the input is known to be complete (a bounded run); when following
//! a growing file it waits for its newline.

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
}

const READ_CHUNK: usize = 1 << 20;

impl FileReader {
    pub fn open(path: &Path, offset: u64) -> std::io::Result<FileReader> {
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
        self.buf.resize(old + READ_CHUNK, 0);
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
        self.at_eof = n == 0;
        Ok(n)
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
            let rest = &self.buf[self.start..];
            if let Some(nl) = memchr(rest) {
                let line = &rest[..nl];
                push_record(&mut out.framed, line);
                out.offsets.push(self.pos);
                bytes += nl + 1;
                self.start += nl + 1;
                self.pos += nl as u64 + 1;
                continue;
            }
            if self.fill()? == 0 {
                if complete && self.start < self.buf.len() {
                    let line = &self.buf[self.start..];
                    push_record(&mut out.framed, line);
                    out.offsets.push(self.pos);
                    self.pos += line.len() as u64;
                    self.start = self.buf.len();
                }
                break;
            }
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

    #[test]
    fn offsets_are_exact_and_resumable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in.txt");
        std::fs::write(&p, b"alpha\n\nbeta gamma\ntail").unwrap();
        let mut r = FileReader::open(&p, 0).unwrap();
        let mut b = RecordBatch::default();
        r.read_batch(100, 1 << 20, false, &mut b).unwrap();
        assert_eq!(b.offsets, vec![0, 6, 7]);
        assert_eq!(b.records(), vec![&b"alpha"[..], b"", b"beta gamma"]);
        assert_eq!(b.end, 18);
        // Following: the unterminated tail waits for its newline.
        r.read_batch(100, 1 << 20, false, &mut b).unwrap();
        assert!(b.is_empty());
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b" end\nnext\n").unwrap();
        r.read_batch(100, 1 << 20, false, &mut b).unwrap();
        assert_eq!(b.records(), vec![&b"tail end"[..], b"next"]);
        assert_eq!(b.offsets, vec![18, 27]);
        // Resuming from a clock reads exactly the rest.
        let mut r = FileReader::open(&p, 18).unwrap();
        r.read_batch(1, 1 << 20, true, &mut b).unwrap();
        assert_eq!(b.records(), vec![&b"tail end"[..]]);
        assert_eq!(b.end, 27);
        assert!(FileReader::open(&p, 1000).is_err());
    }

    #[test]
    fn a_bounded_run_takes_the_last_unterminated_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in.txt");
        std::fs::write(&p, b"a\nb").unwrap();
        let mut r = FileReader::open(&p, 0).unwrap();
        let mut b = RecordBatch::default();
        r.read_batch(100, 1 << 20, true, &mut b).unwrap();
        assert_eq!(b.records(), vec![&b"a"[..], b"b"]);
        assert_eq!(b.end, 3);
    }
}
