//! Helpers shared by the integration tests.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use wait_timeout::ChildExt;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("engine/ has a parent").to_path_buf()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hailstorm")
}

pub fn topology(name: &str) -> PathBuf {
    root().join(name)
}

/// Builds every module the tests use, once per test binary.
pub fn modules() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        for t in [
            "topologies/wordcount.toml",
            "topologies/wordcount-c.toml",
            "tests/fixtures/faulty.toml",
            "tests/fixtures/chain.toml",
            "tests/fixtures/changelog.toml",
            "tests/fixtures/dead-letters.toml",
            "topologies/wordcount-to-kafka.toml",
            "topologies/wordcount-hosts.toml",
        ] {
            let out = Command::new(bin()).args(["build"]).arg(topology(t)).output().expect("run hailstorm build");
            assert!(out.status.success(), "hailstorm build {t} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        let status = Command::new("cargo")
            .args([
                "build",
                "--quiet",
                "--profile",
                "wasm",
                "--target",
                "wasm32-unknown-unknown",
                "-p",
                "count-words-v2",
            ])
            .current_dir(root())
            .status()
            .expect("run cargo");
        assert!(status.success(), "building count-words-v2 failed");
    });
}

pub fn wasm(name: &str) -> String {
    root().join("target/wasm32-unknown-unknown/wasm").join(name).display().to_string()
}

/// A private directory for one test: inputs, output table and snapshot store.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        modules();
        Sandbox { dir: tempfile::tempdir().expect("tempdir") }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn table_path(&self) -> PathBuf {
        self.path("out/table.tsv")
    }

    /// `--set` options that point the wordcount sample at this sandbox.
    pub fn sets(&self, inputs: &[PathBuf]) -> Vec<String> {
        let files: Vec<String> = inputs.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
        vec![
            format!("spouts.lines.source.files=[{}]", files.join(", ")),
            format!("sinks.table.config.path={:?}", self.table_path().display().to_string()),
            format!("sinks.table.grants.dirs=[{:?}]", self.path("out").display().to_string()),
            format!("snapshot.store={:?}", format!("file:{}", self.path("store").display())),
        ]
    }

    pub fn table(&self) -> BTreeMap<String, u64> {
        read_table(&self.table_path())
    }
}

/// `hailstorm deploy` with options; waits at most `limit`.
pub fn deploy(topology_file: &str, sets: &[String], limit: Duration) -> Output {
    deploy_env(topology_file, sets, &[], limit)
}

/// `deploy` with environment variables set.
pub fn deploy_env(topology_file: &str, sets: &[String], env: &[(&str, &str)], limit: Duration) -> Output {
    let mut cmd = Command::new(bin());
    cmd.envs(env.iter().copied());
    cmd.arg("deploy").arg(topology(topology_file)).arg("--quiet");
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    run_limited(cmd, limit)
}

pub fn run_limited(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn hailstorm");
    // Drain the pipes on threads so a chatty child never blocks.
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let t1 = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut so, &mut v).ok();
        v
    });
    let t2 = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut se, &mut v).ok();
        v
    });
    let status = match child.wait_timeout(limit).expect("wait") {
        Some(s) => s,
        None => {
            child.kill().ok();
            child.wait().ok();
            panic!("hailstorm did not finish within {limit:?} (a hang)");
        }
    };
    Output { status, stdout: t1.join().unwrap_or_default(), stderr: t2.join().unwrap_or_default() }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn assert_ok(o: &Output) {
    assert!(o.status.success(), "hailstorm failed ({}):\n{}", o.status, stderr(o));
}

/// Reads a `write-table` table. The per-instance totals of `count-words-v2`
/// (`(total)@I`) are added up into one `(total)` entry.
pub fn read_table(path: &Path) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut out = BTreeMap::new();
    let mut prev: Option<String> = None;
    for line in text.lines() {
        let (k, v) = line.split_once('\t').unwrap_or_else(|| panic!("bad table line {line:?}"));
        if let Some(p) = &prev {
            assert!(p.as_bytes() < k.as_bytes(), "table not sorted by key: {p:?} then {k:?}");
        }
        prev = Some(k.to_string());
        let n: u64 = v.parse().unwrap_or_else(|_| panic!("bad count in {line:?}"));
        if k.starts_with("(total)@") {
            *out.entry("(total)".to_string()).or_insert(0) += n;
        } else {
            out.insert(k.to_string(), n);
        }
    }
    out
}

/// The reference word count, written from the specification and nothing
/// else: words are maximal runs of ASCII letters and digits, lowercased;
/// every other byte separates.
pub fn count_words(files: &[PathBuf]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for f in files {
        let bytes = std::fs::read(f).expect("read input");
        for w in bytes.split(|b| !b.is_ascii_alphanumeric()).filter(|w| !w.is_empty()) {
            *m.entry(String::from_utf8_lossy(w).to_ascii_lowercase()).or_insert(0) += 1;
        }
    }
    m
}

/// Words counted by their first byte: what the chain fixture computes.
pub fn count_first_letters(files: &[PathBuf]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for (w, n) in count_words(files) {
        let first = w.chars().next().map(String::from).unwrap_or_default();
        *m.entry(first).or_insert(0) += n;
    }
    m
}

/// A small deterministic generator (xorshift), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Writes `files` text files holding about `words` words in total, with mixed
/// case, digits, punctuation, UTF-8 and blank lines. Returns their paths.
pub fn corpus(dir: &Path, seed: u64, words: usize, files: usize) -> Vec<PathBuf> {
    let mut rng = Rng::new(seed);
    let vocab: Vec<String> = (0..5000)
        .map(|_| {
            let len = 1 + rng.below(9) as usize;
            (0..len)
                .map(|_| {
                    let c = rng.below(40) as u8;
                    match c {
                        0..=25 => (b'a' + c) as char,
                        26..=35 => (b'0' + c - 26) as char,
                        _ => (b'A' + c) as char,
                    }
                })
                .collect()
        })
        .collect();
    let seps = [" ", " ", " ", ", ", ". ", " - ", "\t", "'", " é ", "!? "];
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut paths = Vec::new();
    for f in 0..files {
        let path = dir.join(format!("input-{f}.txt"));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        let mut n = 0;
        while n < words / files {
            let per_line = 1 + rng.below(14) as usize;
            let mut line = String::new();
            for i in 0..per_line {
                if i > 0 {
                    line.push_str(seps[rng.below(seps.len() as u64) as usize]);
                }
                // Zipf-ish: small indexes are much more frequent.
                let a = rng.below(vocab.len() as u64);
                let idx = rng.below(a + 1) as usize;
                line.push_str(&vocab[idx]);
            }
            n += per_line;
            writeln!(out, "{line}").expect("write");
            if rng.below(50) == 0 {
                writeln!(out).expect("write");
            }
        }
        out.flush().expect("flush");
        paths.push(path);
    }
    paths
}

/// Compares two counts and shows the first differences.
pub fn assert_counts(got: &BTreeMap<String, u64>, want: &BTreeMap<String, u64>) {
    if got == want {
        return;
    }
    let mut diffs = Vec::new();
    for (k, v) in want {
        if got.get(k) != Some(v) {
            diffs.push(format!("{k:?}: want {v}, got {:?}", got.get(k)));
        }
    }
    for (k, v) in got {
        if !want.contains_key(k) {
            diffs.push(format!("{k:?}: not expected, got {v}"));
        }
    }
    let total_want: u64 = want.values().sum();
    let total_got: u64 = got.values().sum();
    panic!(
        "counts differ ({} keys; total want {total_want}, got {total_got}); first differences:\n{}",
        diffs.len(),
        diffs.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Every file under `dir`, at any depth.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
