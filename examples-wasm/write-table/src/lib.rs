//! `write-table`: a Hailstorm sink that keeps a table file up to date.
//!
//! On each commit it writes every entry of every input bolt as one line
//! `key<TAB>value\n`, sorted by key bytes: the key as raw bytes, the value
//! as a decimal `u64` when it is 8 bytes (little-endian) and as `0x` plus
//! lowercase hex otherwise. The table is written to `PATH.tmp` next to
//! `PATH`, synced to disk, then renamed over `PATH`, so readers only ever
//! see a complete table and a repeated commit rewrites the same file: the
//! output is exactly-once.
//!
//! Configuration: `path` (required), the output file; a relative path is
//! resolved against the topology's directory. The topology must grant the
//! directory (`grants.dirs`).
//!
//! Build (it uses WASI for files):
//! `cargo build --profile wasm --target wasm32-wasip1 -p write-table`
//! → `target/wasm32-wasip1/wasm/write_table.wasm`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use hailstorm_guest::{Commit, Init, Sink};

/// The sink.
#[derive(Debug)]
pub struct WriteTable {
    path: PathBuf,
    tmp: PathBuf,
}

impl WriteTable {
    /// The table file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Appends one table line for an entry to `out`.
pub fn format_line(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    out.extend_from_slice(key);
    out.push(b'\t');
    match <[u8; 8]>::try_from(value) {
        Ok(le) => out.extend_from_slice(u64::from_le_bytes(le).to_string().as_bytes()),
        Err(_) => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"0x");
            for b in value {
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
    }
    out.push(b'\n');
}

/// The whole table for a commit: every entry of every input, sorted by key
/// (entries with equal keys keep the order of the inputs).
pub fn render(commit: &Commit<'_>) -> Vec<u8> {
    let mut entries: Vec<(&[u8], &[u8])> =
        commit.inputs.iter().flat_map(|(_, entries)| entries.iter().copied()).collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(entries.iter().map(|(k, _)| k.len() + 22).sum());
    for (k, v) in entries {
        format_line(&mut out, k, v);
    }
    out
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(64 * 1024, File::create(path)?);
    w.write_all(bytes)?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

impl Sink for WriteTable {
    fn init(init: &Init) -> Result<Self, String> {
        let path = init.resolve_path(init.require_str("path")?);
        let mut tmp_name =
            path.file_name().ok_or_else(|| format!("config `path` ({}) names no file", path.display()))?.to_os_string();
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
        }
        Ok(WriteTable { path, tmp })
    }

    fn commit(&mut self, commit: &Commit<'_>) -> Result<(), String> {
        let table = render(commit);
        write_synced(&self.tmp, &table).map_err(|e| format!("cannot write {}: {e}", self.tmp.display()))?;
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| format!("cannot rename {} to {}: {e}", self.tmp.display(), self.path.display()))?;
        hailstorm_guest::log::debug!("round {}: wrote {} bytes to {}", commit.round, table.len(), self.path.display());
        Ok(())
    }
}

hailstorm_guest::sink!(WriteTable);

#[cfg(test)]
mod tests {
    use super::*;
    use hailstorm_guest::abi::write_commit;
    use hailstorm_guest::serde_json::json;
    use hailstorm_guest::testing::pairs_batch;
    use hailstorm_guest::SinkRuntime;

    fn scratch_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("write-table-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn lines() {
        let mut out = Vec::new();
        format_line(&mut out, b"word", &42u64.to_le_bytes());
        format_line(&mut out, b"odd", &[0xab, 0x01, 0xff]);
        format_line(&mut out, b"", b"");
        assert_eq!(out, b"word\t42\nodd\t0xab01ff\n\t0x\n");
    }

    #[test]
    fn commits_replace_the_table_atomically() {
        let dir = scratch_dir("commit");
        let mut init = Init::new("table", json!({"path": "out/counts.tsv"}));
        init.topology_dir = dir.clone();
        let mut rt = SinkRuntime::<WriteTable>::new();
        rt.init(&init.to_document()).unwrap();
        let path = dir.join("out/counts.tsv");
        assert_eq!(rt.get().unwrap().path(), path);

        let n = |v: u64| v.to_le_bytes().to_vec();
        let a = pairs_batch(&[(b"the".to_vec(), n(3)), (b"cat".to_vec(), n(1))]);
        let b = pairs_batch(&[(b"zebra".to_vec(), vec![1u8, 2]), (b"ant".to_vec(), n(7))]);
        let doc = write_commit(1, &[("lines/0".into(), 10)], &[("a".into(), a), ("b".into(), b)]);
        rt.commit(&doc).unwrap();
        let want = "ant\t7\ncat\t1\nthe\t3\nzebra\t0x0102\n";
        assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
        assert!(!dir.join("out/counts.tsv.tmp").exists());

        // The same commit again gives the same file; an empty one empties it.
        rt.commit(&doc).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
        rt.commit(&write_commit(2, &[], &[])).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_is_checked() {
        let mut rt = SinkRuntime::<WriteTable>::new();
        let err = rt.init(&Init::new("table", json!({})).to_document()).unwrap_err();
        assert!(err.contains("path"), "{err}");
        let mut rt = SinkRuntime::<WriteTable>::new();
        assert!(rt.init(&Init::new("table", json!({"path": 3})).to_document()).is_err());
    }
}
