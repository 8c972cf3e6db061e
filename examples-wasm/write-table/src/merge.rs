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

/// One sorted input of a merge: the previous table or a run of changes.
enum Source {
    Table(BufReader<File>),
    Run(BufReader<File>),
}

/// The head of a source: its next key and the line it stands for.
struct Head {
    key: Vec<u8>,
    line: Vec<u8>,
    odd: bool,
}

fn read_field(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut field = vec![0; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut field)?;
    Ok(Some(field))
}

impl Source {
    fn next(&mut self) -> io::Result<Option<Head>> {
        match self {
            Source::Table(r) => loop {
                let mut line = Vec::new();
                if r.read_until(b'\n', &mut line)? == 0 {
                    return Ok(None);
                }
                let text = line.strip_suffix(b"\n").unwrap_or(&line);
                if let Some((key, _)) = parse_line(text) {
                    if !line.ends_with(b"\n") {
                        line.push(b'\n');
                    }
                    return Ok(Some(Head { key, line, odd: false }));
                }
            },
            Source::Run(r) => {
                let Some(key) = read_field(r)? else { return Ok(None) };
                let value = read_field(r)?.ok_or_else(|| io::Error::other("a run file ends inside an entry"))?;
                let mut line = Vec::with_capacity(key.len() + 22);
                let odd = format_line(&mut line, &key, &value);
                Ok(Some(Head { key, line, odd }))
            }
        }
    }
}

/// What a merge wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub lines: u64,
    pub odd_width: u64,
}

/// Writes to `out` the merge of the `table` (if any) with the `runs`
/// (oldest first), all sorted by key: one line per key, from the newest
/// source that has it. The file is synced before this returns.
pub fn merge(table: Option<&Path>, runs: &[PathBuf], out: &Path) -> io::Result<Stats> {
    let mut sources = Vec::with_capacity(runs.len() + 1);
    if let Some(t) = table {
        match File::open(t) {
            Ok(f) => sources.push(Source::Table(BufReader::with_capacity(64 << 10, f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    for r in runs {
        sources.push(Source::Run(BufReader::with_capacity(64 << 10, File::open(r)?)));
    }
    let mut heads = Vec::with_capacity(sources.len());
    for s in &mut sources {
        heads.push(s.next()?);
    }
    let mut w = BufWriter::with_capacity(256 << 10, File::create(out)?);
    let mut stats = Stats::default();
    // The smallest key; among equal keys the newest source (the last one) wins.
    while let Some(min) = heads.iter().flatten().map(|h| &h.key).min().cloned() {
        let mut chosen: Option<Head> = None;
        for (head, source) in heads.iter_mut().zip(&mut sources) {
            if head.as_ref().is_some_and(|h| h.key == min) {
                chosen = std::mem::replace(head, source.next()?);
            }
        }
        if let Some(h) = chosen {
            w.write_all(&h.line)?;
            stats.lines += 1;
            stats.odd_width += u64::from(h.odd);
        }
    }
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    Ok(stats)
}
