//! `write-table`: a Hailstorm sink that keeps a table file up to date.
//!
//! The table holds one line `key<TAB>value\n` per key of its input bolts,
//! sorted by key bytes: the key as raw bytes (with `\`, tab and newline
//! written `\\`, `\t`, `\n`), the value as a decimal `u64` when it is 8 bytes
//! (little-endian) and as `0x` plus lowercase hex otherwise (the sink logs a
//! warning the first time it writes such a value). Keys of different inputs
//! share one table: a later entry replaces an earlier one with the same key.
//!
//! A rewrite costs time in proportion to the table, so the sink takes a
//! round only when one is due and declines the others (the engine then
//! sends their changes with the next round it takes): at most every
//! `rewrite_every` (default `5s`), and no more often than keeps rewriting
//! within `rewrite_percent` of the sink's time (default 10: after a rewrite
//! that took 2 s, the next waits at least 18 s); always for the last round
//! of a bounded run or of a stop. Between rewrites the table shows the last rewritten round.
//!
//! Memory stays bounded by one chunk of changes, whatever the size of the
//! table: the changes of each bolt instance arrive sorted by key and are
//! appended to a run file in a scratch directory; the rewrite stream-merges
//! the previous table with the runs into a new file there, syncs it, renames
//! it over `PATH`, and records the round it holds in `PATH.round`. Readers
//! only ever see a complete table. The sink reports that round as durable,
//! so the engine keeps (and after a crash sends again) every change since.
//!
//! The scratch directory, `PATH.work-e<EPOCH>/`, belongs to the cluster epoch
//! of the rounds (the high half of a round id; 0 when embedded). A sink of a
//! new epoch removes the others' before it writes anything, so a sink of an
//! older epoch that was paused past its session and then resumed finds its
//! files gone and cannot publish over the live table.
//!
//! Configuration: `path` (required), the output file, relative to the
//! topology's directory; `rewrite_every` (a duration like `"500ms"`, `"5s"`);
//! `rewrite_percent` (1 to 100).
//! The topology must grant the directory (`grants.dirs`).
//!
//! Build (it uses WASI for files):
//! `cargo build --profile wasm --target wasm32-wasip1 -p write-table`
//! → `target/wasm32-wasip1/wasm/write_table.wasm`.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hailstorm_guest::{Changes, Durable, Init, RoundHeader, Sink};

mod merge;

pub use merge::{escape_key, format_line, parse_line};

/// The sink.
pub struct WriteTable {
    path: PathBuf,
    /// The scratch directory of the current epoch (empty until a round is taken).
    work: PathBuf,
    rewrite_every: Duration,
    /// After a rewrite, the sink waits this many times as long as it took.
    rest: f64,
    /// The next rewrite is due at this time.
    next_rewrite: Instant,
    /// The round the table holds (0: none).
    durable: u64,
    /// The newest round received.
    round: u64,
    /// The runs of the round being taken.
    runs: Vec<PathBuf>,
    /// A run being written: (input, instance, file).
    open: Option<(Vec<u8>, u32, BufWriter<File>)>,
    /// The changes replace the table (a full state arrived).
    reset: bool,
    warned_width: bool,
    /// A rewrite in progress: the merge, the round it gives, when it started.
    rewrite: Option<(merge::Merger, u64, Instant)>,
}

/// Lines a rewrite writes per call, so every call stays well within its deadline.
const LINES_PER_STEP: u64 = 250_000;

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

    /// The scratch directory of `epoch`.
    fn work_dir(&self, epoch: u64) -> PathBuf {
        self.with_suffix(&format!(".work-e{epoch}"))
    }

    /// Takes the scratch directory of `epoch` (the first time): removes
    /// every other epoch's, renaming it away first so that a writer still
    /// using it fails at once, and empties its own.
    fn claim_work_dir(&mut self, epoch: u64) -> Result<(), String> {
        let mine = self.work_dir(epoch);
        if self.work == mine {
            return Ok(());
        }
        let Some(prefix) = self.with_suffix(".work-e").file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return Err(format!("{} names no file", self.path.display()));
        };
        let parent = self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        for e in fs::read_dir(parent).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&prefix) {
                continue;
            }
            let dead = e.path().with_file_name(format!("{name}.dead"));
            if name.ends_with(".dead") {
                let _ = fs::remove_dir_all(e.path());
            } else if fs::rename(e.path(), &dead).is_ok() {
                let _ = fs::remove_dir_all(&dead);
            }
        }
        fs::create_dir_all(&mine).map_err(|e| format!("cannot create {}: {e}", mine.display()))?;
        self.work = mine;
        Ok(())
    }

    fn close_run(&mut self) -> Result<(), String> {
        if let Some((_, _, w)) = self.open.take() {
            w.into_inner().map_err(|e| format!("cannot write a run file: {}", e.error()))?;
        }
        Ok(())
    }

    /// Starts merging the table with the runs received so far into a new table.
    fn start_rewrite(&mut self) -> Result<(), String> {
        self.close_run()?;
        let tmp = self.work.join("table.tmp");
        let table = (!self.reset).then_some(self.path.as_path());
        let m = merge::Merger::open(table, &self.runs, &tmp)
            .map_err(|e| format!("cannot start rewriting {}: {e}", self.path.display()))?;
        self.rewrite = Some((m, self.round, Instant::now()));
        self.reset = false;
        Ok(())
    }

    /// Advances the rewrite in progress by one step; once it is complete,
    /// moves the new table into place and records its round.
    fn step_rewrite(&mut self) -> Result<Durable, String> {
        let tmp = self.work.join("table.tmp");
        let Some((m, _, _)) = self.rewrite.as_mut() else { return Ok(Durable::done(self.durable)) };
        let done = m.step(LINES_PER_STEP).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        if !done {
            return Ok(Durable { round: self.durable, more: true });
        }
        let Some((m, round, started)) = self.rewrite.take() else { return Err("no rewrite in progress".into()) };
        let stats = m.finish().map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
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
        let (round_file, round_tmp) = (self.with_suffix(".round"), self.work.join("round.tmp"));
        fs::write(&round_tmp, round.to_string())
            .and_then(|()| fs::rename(&round_tmp, &round_file))
            .map_err(|e| format!("cannot write {}: {e}", round_file.display()))?;
        for r in self.runs.drain(..) {
            let _ = fs::remove_file(r);
        }
        self.durable = round;
        let took = started.elapsed();
        self.next_rewrite = Instant::now() + self.rewrite_every.max(took.mul_f64(self.rest));
        hailstorm_guest::log::debug!("round {round}: {} lines in {}", stats.lines, self.path.display());
        Ok(Durable::done(round))
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
        let percent = init.config_u64("rewrite_percent")?.unwrap_or(10);
        if !(1..=100).contains(&percent) {
            return Err(format!("config `rewrite_percent` must be 1 to 100, not {percent}"));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
        }
        Ok(WriteTable {
            path,
            work: PathBuf::new(),
            rewrite_every,
            rest: (100 - percent) as f64 / percent as f64,
            next_rewrite: Instant::now(),
            durable: 0,
            round: 0,
            runs: Vec::new(),
            open: None,
            reset: false,
            warned_width: false,
            rewrite: None,
        })
    }

    /// The round `PATH.round` names, if the table is there too (scratch
    /// files left by a crash are not durable; the first round taken removes them).
    fn resume(&mut self, _committed_round: u64) -> Result<u64, String> {
        let round = fs::read_to_string(self.with_suffix(".round")).ok().and_then(|s| s.trim().parse::<u64>().ok());
        self.durable = match round {
            Some(r) if self.path.exists() => r,
            _ => 0,
        };
        Ok(self.durable)
    }

    /// Takes a round only when a rewrite is due (the last one always comes).
    fn take(&mut self, _header: &RoundHeader<'_>) -> bool {
        Instant::now() >= self.next_rewrite
    }

    fn begin(&mut self, header: &RoundHeader<'_>) -> Result<(), String> {
        self.claim_work_dir(header.round >> 32)?;
        self.close_run()?;
        for r in self.runs.drain(..) {
            let _ = fs::remove_file(r);
        }
        // With the whole state, the table is rebuilt from it alone.
        self.reset = header.since == 0;
        self.round = header.round;
        Ok(())
    }

    fn changes(&mut self, changes: &Changes<'_>) -> Result<(), String> {
        let same = matches!(&self.open, Some((i, n, _)) if i.as_slice() == changes.input && *n == changes.instance);
        if !same {
            self.close_run()?;
            let name = format!("{:020}-{}.run", self.round, self.runs.len());
            let path = self.work.join(name);
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

    /// Starts the rewrite (it then goes on in steps).
    fn end(&mut self) -> Result<Durable, String> {
        if self.rewrite.is_none() {
            self.start_rewrite()?;
        }
        self.step_rewrite()
    }

    fn step(&mut self) -> Result<Durable, String> {
        self.step_rewrite()
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
