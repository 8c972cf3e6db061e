//! `changelog`: a Hailstorm sink that appends, for every complete round, one
//! JSON line per changed entry of its input bolts:
//!
//! ```text
//! {"round":3,"input":"counts","instance":1,"key":"the","value":42}
//! ```
//!
//! `key` is the key as a string when it is UTF-8 (else `key_hex`, lowercase
//! hex), `value` the value as a number when it is 8 bytes (a little-endian
//! `u64`), else `value_hex`. A round whose changes are the whole state (the
//! first round, or after the engine could not send changes) starts with a
//! line `{"round":R,"reset":true}`. Replaying the file in order, each line
//! replacing the value of its key, gives the committed table.
//!
//! Each round costs O(change): the lines are appended and the file synced
//! when the round ends, and the sink reports the round durable. On restart
//! the file is truncated back to the last round the engine knows it
//! committed (a round cut short by a crash, or written but not recorded, is
//! removed), and the engine sends everything after it again, so no round is
//! applied twice and none is missing.
//!
//! Configuration: `path` (required), relative to the topology's directory;
//! the topology must grant its directory.
//!
//! Build: `cargo build --profile wasm --target wasm32-wasip1 -p changelog`
//! → `target/wasm32-wasip1/wasm/changelog.wasm`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use hailstorm_guest::serde_json::{json, Map, Value};
use hailstorm_guest::{Changes, Durable, Init, RoundHeader, Sink};

/// The sink.
#[derive(Debug)]
pub struct Changelog {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    round: u64,
    durable: u64,
}

/// One line of the log for an entry.
pub fn entry_line(round: u64, input: &[u8], instance: u32, key: &[u8], value: &[u8]) -> String {
    let mut m = Map::new();
    m.insert("round".into(), json!(round));
    m.insert("input".into(), json!(String::from_utf8_lossy(input)));
    m.insert("instance".into(), json!(instance));
    match std::str::from_utf8(key) {
        Ok(k) => m.insert("key".into(), json!(k)),
        Err(_) => m.insert("key_hex".into(), json!(hex(key))),
    };
    match <[u8; 8]>::try_from(value) {
        Ok(le) => m.insert("value".into(), json!(u64::from_le_bytes(le))),
        Err(_) => m.insert("value_hex".into(), json!(hex(value))),
    };
    Value::Object(m).to_string()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The round of a complete line, if it is one.
fn round_of(line: &[u8]) -> Option<u64> {
    let v: Value = hailstorm_guest::serde_json::from_slice(line).ok()?;
    v.get("round")?.as_u64()
}

/// The length the log keeps: every complete line up to the last one whose
/// round is at most `keep` (rounds only grow along the file), read backwards
/// from the end so only the part that goes is read.
fn keep_len(f: &mut File, keep: u64) -> std::io::Result<u64> {
    if keep == 0 {
        return Ok(0);
    }
    let mut end = f.seek(SeekFrom::End(0))?;
    // `tail` holds the file from `end` on, up to the first newline after it
    // (the rest has been looked at already).
    let mut tail: Vec<u8> = Vec::new();
    while end > 0 {
        let start = end.saturating_sub(64 << 10);
        let mut block = vec![0; (end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut block)?;
        block.extend_from_slice(&tail);
        let newlines: Vec<usize> = block.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i).collect();
        // Complete lines, last first; the first one starts at the block's start only at the file's start.
        for (w, &e) in newlines.iter().enumerate().rev() {
            let s = match w.checked_sub(1).and_then(|p| newlines.get(p)) {
                Some(prev) => prev + 1,
                None if start == 0 => 0,
                None => break,
            };
            if block.get(s..e).and_then(round_of).is_some_and(|r| r <= keep) {
                return Ok(start + e as u64 + 1);
            }
        }
        block.truncate(newlines.first().map_or(block.len(), |first| first + 1));
        tail = block;
        end = start;
    }
    Ok(0)
}

impl Changelog {
    fn writer(&mut self) -> Result<&mut BufWriter<File>, String> {
        if self.out.is_none() {
            let f = OpenOptions::new()
                .append(true)
                .create(true)
                .open(&self.path)
                .map_err(|e| format!("cannot open {}: {e}", self.path.display()))?;
            self.out = Some(BufWriter::with_capacity(256 << 10, f));
        }
        self.out.as_mut().ok_or_else(|| "no log file".to_string())
    }

    fn write(&mut self, line: &str) -> Result<(), String> {
        let path = self.path.display().to_string();
        let w = self.writer()?;
        w.write_all(line.as_bytes()).and_then(|()| w.write_all(b"\n")).map_err(|e| format!("cannot write {path}: {e}"))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Sink for Changelog {
    fn init(init: &Init) -> Result<Self, String> {
        let path = init.resolve_path(init.require_str("path")?);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
        }
        Ok(Changelog { path, out: None, round: 0, durable: 0 })
    }

    /// Truncates the log back to the last round the engine knows it committed.
    fn resume(&mut self, committed_round: u64) -> Result<u64, String> {
        let what = |e: std::io::Error| format!("cannot truncate {}: {e}", self.path.display());
        match OpenOptions::new().read(true).write(true).open(&self.path) {
            Ok(mut f) => {
                let keep = keep_len(&mut f, committed_round).map_err(what)?;
                f.set_len(keep).and_then(|()| f.sync_all()).map_err(what)?;
                self.durable = if keep == 0 { 0 } else { committed_round };
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.durable = 0,
            Err(e) => return Err(what(e)),
        }
        Ok(self.durable)
    }

    fn begin(&mut self, header: &RoundHeader<'_>) -> Result<(), String> {
        self.round = header.round;
        if header.since == 0 {
            self.write(&json!({"round": header.round, "reset": true}).to_string())?;
        }
        Ok(())
    }

    fn changes(&mut self, changes: &Changes<'_>) -> Result<(), String> {
        for (k, v) in &changes.entries {
            let line = entry_line(self.round, changes.input, changes.instance, k, v);
            self.write(&line)?;
        }
        Ok(())
    }

    fn end(&mut self) -> Result<Durable, String> {
        let path = self.path.display().to_string();
        let w = self.writer()?;
        w.flush().and_then(|()| w.get_ref().sync_data()).map_err(|e| format!("cannot sync {path}: {e}"))?;
        self.durable = self.round;
        Ok(Durable::done(self.durable))
    }
}

hailstorm_guest::sink!(Changelog);

#[cfg(test)]
mod tests {
    use super::*;
    use hailstorm_guest::abi::{write_changes, write_round_header};
    use hailstorm_guest::testing::pairs_batch;
    use hailstorm_guest::SinkRuntime;

    fn sink(dir: &Path, committed: u64) -> SinkRuntime<Changelog> {
        let mut init = Init::new("log", json!({"path": "log.jsonl"}));
        init.topology_dir = dir.to_path_buf();
        init.committed_round = committed;
        let mut rt = SinkRuntime::<Changelog>::new();
        rt.init(&init.to_document()).unwrap();
        rt
    }

    fn round(rt: &mut SinkRuntime<Changelog>, r: u64, since: u64, keys: &[(&str, u64)]) -> u64 {
        rt.begin(&write_round_header(r, since, false, &[])).unwrap();
        let entries: Vec<(Vec<u8>, Vec<u8>)> =
            keys.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.to_le_bytes().to_vec())).collect();
        rt.changes(&write_changes("counts", 0, &pairs_batch(&entries))).unwrap();
        rt.end().unwrap().round
    }

    #[test]
    fn rounds_append_and_a_restart_truncates_to_the_committed_round() {
        let dir = std::env::temp_dir().join(format!("changelog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut rt = sink(&dir, 0);
        assert_eq!(rt.resume().unwrap(), 0);
        assert_eq!(round(&mut rt, 1, 0, &[("a", 1), ("b", 2)]), 1);
        assert_eq!(round(&mut rt, 2, 1, &[("a", 5)]), 2);
        assert_eq!(round(&mut rt, 3, 2, &[("c", 1)]), 3);
        let text = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 5, "{text}");
        assert!(text.starts_with("{\"reset\":true,\"round\":1}\n{\"input\":\"counts\""), "{text}");
        // A partial line from a crash, then a restart that knows round 2 only.
        std::fs::OpenOptions::new().append(true).open(dir.join("log.jsonl")).unwrap().write_all(b"{\"rou").unwrap();
        let mut rt = sink(&dir, 2);
        assert_eq!(rt.resume().unwrap(), 2);
        let text = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(text.lines().all(|l| round_of(l.as_bytes()).is_some_and(|r| r <= 2)));
        assert_eq!(round(&mut rt, 3, 2, &[("c", 1)]), 3);
        assert_eq!(
            entry_line(1, b"i", 2, &[0xff], b"xy"),
            "{\"input\":\"i\",\"instance\":2,\"key_hex\":\"ff\",\"round\":1,\"value_hex\":\"7879\"}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
