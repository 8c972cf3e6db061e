//! The table format and the streaming merge of a table with runs of changes.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Appends `key` with `\`, tab and newline escaped.
pub fn escape_key(out: &mut Vec<u8>, key: &[u8]) {
    for &b in key {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            _ => out.push(b),
        }
    }
}

fn unescape_key(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut it = text.iter();
    while let Some(&b) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match it.next() {
            Some(b't') => out.push(b'\t'),
            Some(b'n') => out.push(b'\n'),
            Some(&other) => out.push(other),
            None => out.push(b'\\'),
        }
    }
    out
}

/// Appends one table line for an entry to `out`; true if the value is not
/// 8 bytes wide (and so written as hex).
pub fn format_line(out: &mut Vec<u8>, key: &[u8], value: &[u8]) -> bool {
    escape_key(out, key);
    out.push(b'\t');
    let odd = match <[u8; 8]>::try_from(value) {
        Ok(le) => {
            out.extend_from_slice(u64::from_le_bytes(le).to_string().as_bytes());
            false
        }
        Err(_) => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"0x");
            for b in value {
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            true
        }
    };
    out.push(b'\n');
    odd
}

/// Splits a table line (without its newline) into the unescaped key and the value text.
pub fn parse_line(line: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let tab = line.iter().rposition(|&b| b == b'\t')?;
    Some((unescape_key(line.get(..tab)?), line.get(tab + 1..)?))
}

/// Appends one entry to a run file: `u32 len, key, u32 len, value` (little-endian).
pub fn write_entry(w: &mut impl Write, key: &[u8], value: &[u8]) -> io::Result<()> {
    for field in [key, value] {
        let len = u32::try_from(field.len()).map_err(|_| io::Error::other("an entry over 4 GiB"))?;
        w.write_all(&len.to_le_bytes())?;
        w.write_all(field)?;
    }
    Ok(())
}

/// One sorted input of a merge (the previous table or a run of changes),
/// positioned at its next entry, whose buffers are reused entry after entry.
struct Source {
    input: BufReader<File>,
    table: bool,
    /// The next entry's key and the line it stands for; `live` false at the end.
    key: Vec<u8>,
    line: Vec<u8>,
    value: Vec<u8>,
    odd: bool,
    live: bool,
}

/// Reads a length-prefixed field into `out`; false at the end of the input.
fn read_field(r: &mut impl Read, out: &mut Vec<u8>) -> io::Result<bool> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    out.clear();
    out.resize(u32::from_le_bytes(len) as usize, 0);
    r.read_exact(out)?;
    Ok(true)
}

impl Source {
    fn open(path: &Path, table: bool) -> io::Result<Source> {
        let input = BufReader::with_capacity(64 << 10, File::open(path)?);
        let mut s =
            Source { input, table, key: Vec::new(), line: Vec::new(), value: Vec::new(), odd: false, live: true };
        s.advance()?;
        Ok(s)
    }

    /// Moves to the next entry.
    fn advance(&mut self) -> io::Result<()> {
        self.line.clear();
        if self.table {
            loop {
                self.line.clear();
                if self.input.read_until(b'\n', &mut self.line)? == 0 {
                    self.live = false;
                    return Ok(());
                }
                let text = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
                if let Some((key, _)) = parse_line(text) {
                    self.key = key;
                    if !self.line.ends_with(b"\n") {
                        self.line.push(b'\n');
                    }
                    return Ok(());
                }
            }
        }
        if !read_field(&mut self.input, &mut self.key)? {
            self.live = false;
            return Ok(());
        }
        if !read_field(&mut self.input, &mut self.value)? {
            return Err(io::Error::other("a run file ends inside an entry"));
        }
        self.odd = format_line(&mut self.line, &self.key, &self.value);
        Ok(())
    }
}

/// What a merge wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub lines: u64,
    pub odd_width: u64,
}

/// A merge of the `table` (if any) with the `runs` (oldest first), all
/// sorted by key, into a new file: one line per key, from the newest source
/// that has it. It advances by bounded steps.
pub struct Merger {
    sources: Vec<Source>,
    out: BufWriter<File>,
    stats: Stats,
    /// The key being written (a reused buffer).
    key: Vec<u8>,
}

impl Merger {
    /// Opens the sources and creates `out`.
    pub fn open(table: Option<&Path>, runs: &[PathBuf], out: &Path) -> io::Result<Merger> {
        let mut sources = Vec::with_capacity(runs.len() + 1);
        if let Some(t) = table {
            match Source::open(t, true) {
                Ok(s) => sources.push(s),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        for r in runs {
            sources.push(Source::open(r, false)?);
        }
        let out = BufWriter::with_capacity(256 << 10, File::create(out)?);
        Ok(Merger { sources, out, stats: Stats::default(), key: Vec::new() })
    }

    /// Writes up to `lines` lines; true when the merge is complete.
    pub fn step(&mut self, lines: u64) -> io::Result<bool> {
        for _ in 0..lines {
            // The smallest key; among equal keys the newest source (the last one) wins.
            let mut newest: Option<usize> = None;
            for (i, s) in self.sources.iter().enumerate() {
                let best = newest.and_then(|n| self.sources.get(n));
                if s.live && best.is_none_or(|b| s.key <= b.key) {
                    newest = Some(i);
                }
            }
            let Some(n) = newest else { return Ok(true) };
            if let Some(s) = self.sources.get(n) {
                self.out.write_all(&s.line)?;
                self.stats.lines += 1;
                self.stats.odd_width += u64::from(s.odd);
                self.key.clear();
                self.key.extend_from_slice(&s.key);
            }
            let key = &self.key;
            for s in self.sources.iter_mut().filter(|s| s.live && s.key == *key) {
                s.advance()?;
            }
        }
        Ok(self.sources.iter().all(|s| !s.live))
    }

    /// Syncs the new file; what it wrote.
    pub fn finish(self) -> io::Result<Stats> {
        let f = self.out.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(self.stats)
    }
}
