//! `write-table`: a Hailstorm sink that keeps a table file up to date.
//!
//! The table holds one line `key<TAB>value\n` per key of its input bolts,
//! sorted by key bytes: the key as raw bytes (with `\`, tab and newline
//! written `\\`, `\t`, `\n`), the value as a decimal `u64` when it is 8 bytes
//! (little-endian) and as `0x` plus lowercase hex otherwise (the sink logs a
//! warning the first time it writes such a value). Keys of different inputs
//! share one table: a later entry replaces an earlier one with the same key.
//!
//! Memory stays bounded by one chunk of changes, whatever the size of the
//! table: the changes of each bolt instance arrive sorted by key and are
//! appended to a run file in `PATH.pending/`; a rewrite stream-merges the
//! previous table with the runs (newer rounds win) into `PATH.tmp`, syncs it,
//! renames it over `PATH`, and records the round it holds in `PATH.round`.
//! Readers only ever see a complete table. A rewrite happens at most every
//! `rewrite_every` (default `5s`), and always for the last round of a bounded
//! run or of a stop; between rewrites the table shows the last rewritten
//! round. The sink reports that round as durable, so the engine keeps (and
//! after a crash sends again) every change since.
//!
//! Configuration: `path` (required), the output file, relative to the
//! topology's directory; `rewrite_every` (a duration like `"500ms"`, `"5s"`).
//! The topology must grant the directory (`grants.dirs`).
//!
//! Build (it uses WASI for files):
//! `cargo build --profile wasm --target wasm32-wasip1 -p write-table`
//! → `target/wasm32-wasip1/wasm/write_table.wasm`.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hailstorm_guest::{Changes, Init, RoundHeader, Sink};

mod merge;

pub use merge::{escape_key, format_line, parse_line};

/// The sink.
#[derive(Debug)]
pub struct WriteTable {
    path: PathBuf,
    pending: PathBuf,
    rewrite_every: Duration,
    last_rewrite: Instant,
    /// The round the table holds (0: none).
    durable: u64,
    /// The newest round received.
    round: u64,
    /// The runs received since the last rewrite, oldest first.
    runs: Vec<PathBuf>,
    /// A run being written: (input, instance, file).
    open: Option<(Vec<u8>, u32, BufWriter<File>)>,
    /// The changes since the last rewrite replace the table (a full state arrived).
    reset: bool,
    last: bool,
    warned_width: bool,
}

impl WriteTable {
    /// The table file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with_suffix(&self, suffix: &str) -> PathBuf {
        let mut name = self.path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(suffix);
        self.path.with_file_name(name)
    }

    fn close_run(&mut self) -> Result<(), String> {
        if let Some((_, _, w)) = self.open.take() {
            w.into_inner().map_err(|e| format!("cannot write a run file: {}", e.error()))?;
        }
        Ok(())
    }

    /// Merges the table with the runs into a new table, atomically.
    fn rewrite(&mut self) -> Result<(), String> {
        self.close_run()?;
        let tmp = self.with_suffix(".tmp");
        let table = (!self.reset).then_some(self.path.as_path());
        let stats =
            merge::merge(table, &self.runs, &tmp).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        if stats.odd_width > 0 && !self.warned_width {
            hailstorm_guest::log::warn!(
                "{}: {} value(s) are not 8 bytes wide; they are written as 0x-prefixed hex",
                self.path.display(),
                stats.odd_width
            );
            self.warned_width = true;
        }
        fs::rename(&tmp, &self.path)
            .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), self.path.display()))?;
        let round_file = self.with_suffix(".round");
        fs::write(&round_file, self.round.to_string())
            .map_err(|e| format!("cannot write {}: {e}", round_file.display()))?;
        for r in self.runs.drain(..) {
            let _ = fs::remove_file(r);
        }
        self.durable = self.round;
        self.reset = false;
        self.last_rewrite = Instant::now();
        hailstorm_guest::log::debug!("round {}: {} lines in {}", self.round, stats.lines, self.path.display());
        Ok(())
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, ""), |i| s.split_at(i));
    let n: u64 = n.parse().map_err(|_| format!("`{s}` is not a duration like \"500ms\" or \"5s\""))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("`{s}` is not a duration like \"500ms\" or \"5s\"")),
    }
}

impl Sink for WriteTable {
    fn init(init: &Init) -> Result<Self, String> {
        let path = init.resolve_path(init.require_str("path")?);
        if path.file_name().is_none() {
            return Err(format!("config `path` ({}) names no file", path.display()));
        }
        let rewrite_every = match init.config_str("rewrite_every")? {
            Some(s) => parse_duration(s).map_err(|e| format!("config `rewrite_every`: {e}"))?,
            None => Duration::from_secs(5),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
        }
        let mut t = WriteTable {
            path,
            pending: PathBuf::new(),
            rewrite_every,
            last_rewrite: Instant::now(),
            durable: 0,
            round: 0,
            runs: Vec::new(),
            open: None,
            reset: false,
            last: false,
            warned_width: false,
        };
        t.pending = t.with_suffix(".pending");
        Ok(t)
    }

    /// The round `PATH.round` names, if the table is there too; runs left by
    /// a crash are not durable and are dropped.
    fn resume(&mut self, _committed_round: u64) -> Result<u64, String> {
        let _ = fs::remove_dir_all(&self.pending);
        fs::create_dir_all(&self.pending).map_err(|e| format!("cannot create {}: {e}", self.pending.display()))?;
        let round = fs::read_to_string(self.with_suffix(".round")).ok().and_then(|s| s.trim().parse::<u64>().ok());
        self.durable = match round {
            Some(r) if self.path.exists() => r,
            _ => 0,
        };
        Ok(self.durable)
    }

    fn begin(&mut self, header: &RoundHeader<'_>) -> Result<(), String> {
        self.close_run()?;
        if header.since == 0 {
            // The whole state follows: the table is rebuilt from it alone.
            for r in self.runs.drain(..) {
                let _ = fs::remove_file(r);
            }
            self.reset = true;
        }
        self.round = header.round;
        self.last = header.last;
        Ok(())
    }

    fn changes(&mut self, changes: &Changes<'_>) -> Result<(), String> {
        let same = matches!(&self.open, Some((i, n, _)) if i.as_slice() == changes.input && *n == changes.instance);
        if !same {
            self.close_run()?;
            let name = format!("{:020}-{}.run", self.round, self.runs.len());
            let path = self.pending.join(name);
            let f = File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            self.runs.push(path);
            self.open = Some((changes.input.to_vec(), changes.instance, BufWriter::with_capacity(64 << 10, f)));
        }
        let Some((_, _, w)) = self.open.as_mut() else { return Err("no run file is open".into()) };
        for (k, v) in &changes.entries {
            merge::write_entry(w, k, v).map_err(|e| format!("cannot write a run file: {e}"))?;
        }
        Ok(())
    }

    fn end(&mut self) -> Result<u64, String> {
        if self.last || self.last_rewrite.elapsed() >= self.rewrite_every {
            self.rewrite()?;
        } else {
            self.close_run()?;
        }
        Ok(self.durable)
    }
}

/// Reads a whole table file into (key, value) lines, for tests.
pub fn read_table(path: &Path) -> std::io::Result<Vec<(Vec<u8>, String)>> {
    let mut out = Vec::new();
    for line in BufReader::new(File::open(path)?).split(b'\n') {
        let line = line?;
        if let Some((k, v)) = parse_line(&line) {
            out.push((k, String::from_utf8_lossy(v).into_owned()));
        }
    }
    Ok(out)
}

hailstorm_guest::sink!(WriteTable);

#[cfg(test)]
mod tests;
