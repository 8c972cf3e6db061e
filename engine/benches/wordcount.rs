//! Embedded wordcount against the same count done natively, in one run.
//!
//!     cargo bench -p hailstorm --bench wordcount            # 20M words
//!     HAILSTORM_BENCH_WORDS=2000000 cargo bench -p hailstorm --bench wordcount
//!
//! The embedded run is the real engine: the WASM deserializer and count bolt
//! of topologies/wordcount.toml (parallelism 2), snapshots every 2 s to a
//! temporary store, and the table sink writing the result. The native run is
//! the same Rust splitting and counting code (crates `words` and
//! `count-words`) compiled for the host, on one thread, reading the same
//! files. Both results are checked to be equal before any number is printed.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hailstorm::runtime::{self, RunOptions};
use hailstorm::topology::Topology;
use hailstorm_guest::hash::FxBuildHasher;

fn corpus(dir: &Path, words: usize, files: usize) -> Vec<PathBuf> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let vocab: Vec<String> = (0..50_000)
        .map(|_| {
            let len = 1 + (next() % 10) as usize;
            (0..len).map(|_| (b'a' + (next() % 26) as u8) as char).collect()
        })
        .collect();
    let mut out = Vec::new();
    for f in 0..files {
        let p = dir.join(format!("bench-{f}.txt"));
        let mut w = std::io::BufWriter::new(std::fs::File::create(&p).expect("create corpus"));
        let mut n = 0;
        while n < words / files {
            let k = 5 + (next() % 11) as usize;
            for i in 0..k {
                if i > 0 {
                    w.write_all(b" ").expect("write");
                }
                let a = next() % vocab.len() as u64;
                let idx = (next() % (a + 1)) as usize;
                w.write_all(vocab[idx].as_bytes()).expect("write");
            }
            w.write_all(b"\n").expect("write");
            n += k;
        }
        w.flush().expect("flush");
        out.push(p);
    }
    out
}

fn native(files: &[PathBuf]) -> (HashMap<Vec<u8>, u64, FxBuildHasher>, u64) {
    let mut map: HashMap<Vec<u8>, u64, FxBuildHasher> = HashMap::default();
    let mut words = 0u64;
    for f in files {
        let mut r = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(f).expect("open"));
        let mut line = Vec::new();
        while r.read_until(b'\n', &mut line).expect("read") > 0 {
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            words::for_each_word(&line, |w| {
                count_words::count_into(&mut map, w);
                words += 1;
            });
            line.clear();
        }
    }
    (map, words)
}

fn read_table(p: &Path) -> BTreeMap<Vec<u8>, u64> {
    let text = std::fs::read(p).expect("read table");
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let tab = l.iter().position(|b| *b == b'\t').expect("tab");
            let n: u64 = std::str::from_utf8(&l[tab + 1..]).expect("utf8").parse().expect("count");
            (l[..tab].to_vec(), n)
        })
        .collect()
}

fn rate(words: u64, d: Duration) -> f64 {
    words as f64 / d.as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let words: usize = std::env::var("HAILSTORM_BENCH_WORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000_000);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let dir = tempfile::tempdir().expect("tempdir");
    eprintln!("generating a corpus of {words} words in 2 files...");
    let files = corpus(dir.path(), words, 2);
    let out = dir.path().join("out");
    let list: Vec<String> = files.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
    let sets = vec![
        format!("spouts.lines.source.files=[{}]", list.join(", ")),
        format!("sinks.table.config.path={:?}", out.join("wc.tsv").display().to_string()),
        format!("sinks.table.grants.dirs=[{:?}]", out.display().to_string()),
        format!("snapshot.store={:?}", format!("file:{}", dir.path().join("store").display())),
    ];
    let t = Topology::load(&root.join("topologies/wordcount.toml"), &sets).unwrap_or_else(|e| panic!("{e}"));
    hailstorm::modbuild::build_modules(&t, false).expect("build modules");
    let prepared = runtime::prepare(t).expect("prepare");

    // Warm the page cache for both runs alike.
    let (_, _) = native(&files);

    let t0 = Instant::now();
    let summary = runtime::run_embedded(prepared, RunOptions::default()).expect("embedded run");
    let embedded = t0.elapsed();

    let t0 = Instant::now();
    let (map, native_words) = native(&files);
    let native_time = t0.elapsed();

    // The two must agree before their speeds mean anything.
    let table = read_table(&out.join("wc.tsv"));
    let native_sorted: BTreeMap<Vec<u8>, u64> = map.into_iter().collect();
    assert_eq!(table, native_sorted, "embedded and native counts differ");
    assert_eq!(summary.tuples, native_words, "embedded and native word totals differ");

    let e = rate(summary.tuples, embedded);
    let n = rate(native_words, native_time);
    println!("wordcount, {} words in 2 files ({} distinct)", native_words, table.len());
    println!(
        "  embedded (WASM, parallelism 2, snapshots every 2s, {} rounds): {:>8.2} M words/s  ({:.2} s)",
        summary.rounds,
        e / 1e6,
        embedded.as_secs_f64()
    );
    println!(
        "  native   (same Rust code, 1 thread, no snapshots):           {:>8.2} M words/s  ({:.2} s)",
        n / 1e6,
        native_time.as_secs_f64()
    );
    println!("  ratio embedded/native: {:.2}", e / n);
}
