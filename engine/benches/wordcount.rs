//! Embedded wordcount against the same count done natively and in
//! timely-dataflow, all in one run, on two corpora:
//!
//!     cargo bench -p hailstorm --bench wordcount
//!     HAILSTORM_BENCH_WORDS=2000000 HAILSTORM_BENCH_KEYS=400000 cargo bench -p hailstorm --bench wordcount
//!
//! - *zipf*: `HAILSTORM_BENCH_WORDS` words (default 20M) from a Zipf-like
//!   vocabulary of 50,000 words;
//! - *high-cardinality*: as many words over `HAILSTORM_BENCH_KEYS` distinct
//!   keys (default 4M; every key at least once), a per-user count.
//!
//! For each corpus it runs, each in a process of its own (so peak RSS is
//! each run's own): the native count (the same Rust splitting and counting
//! code, one thread, no snapshots); timely-dataflow with 1 and 2 workers (the
//! same code in an exchange-and-count dataflow); Hailstorm embedded (the real
//! engine: the WASM modules of topologies/wordcount.toml, parallelism 2,
//! default limits) with snapshots every 1 s and with one snapshot at the end;
//! and a rerun of the 1 s store with nothing new, whose restore time is the
//! time to restore the final state. Every run's counts are checked to agree
//! (a digest of the whole table) before any number is printed.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hailstorm::runtime::{self, RunOptions};
use hailstorm::topology::Topology;
use hailstorm_guest::hash::FxBuildHasher;
use serde_json::{json, Value};

type Counts = HashMap<Vec<u8>, u64, FxBuildHasher>;

fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// Lines of 5 to 15 words drawn by `word`, `words` in all, over `files` files.
fn write_corpus(
    dir: &Path,
    name: &str,
    words: usize,
    files: usize,
    mut word: impl FnMut(usize) -> String,
) -> Vec<PathBuf> {
    let mut next = xorshift(0x5DEE_CE66_D1CE_4E5B);
    let mut out = Vec::new();
    let mut n = 0;
    for f in 0..files {
        let p = dir.join(format!("{name}-{f}.txt"));
        let mut w = std::io::BufWriter::new(std::fs::File::create(&p).expect("create corpus"));
        while n < words * (f + 1) / files {
            let k = 5 + (next() % 11) as usize;
            let line: Vec<String> = (0..k).map(|i| word(n + i)).collect();
            writeln!(w, "{}", line.join(" ")).expect("write");
            n += k;
        }
        w.flush().expect("flush");
        out.push(p);
    }
    out
}

fn zipf(dir: &Path, words: usize) -> Vec<PathBuf> {
    let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
    let vocab: Vec<String> = (0..50_000)
        .map(|_| {
            let len = 1 + (next() % 10) as usize;
            (0..len).map(|_| (b'a' + (next() % 26) as u8) as char).collect()
        })
        .collect();
    write_corpus(dir, "zipf", words, 2, move |_| {
        let a = next() % vocab.len() as u64;
        vocab[(next() % (a + 1)) as usize].clone()
    })
}

/// Every key once (in a shuffled order), then keys drawn uniformly.
fn high_cardinality(dir: &Path, words: usize, keys: usize) -> Vec<PathBuf> {
    let mut next = xorshift(0xD1B5_4A32_D192_ED03);
    let mut order: Vec<u32> = (0..keys as u32).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    write_corpus(dir, "keys", words, 2, move |i| {
        let id = order.get(i).copied().map_or_else(|| next() % keys as u64, u64::from);
        format!("u{id:x}")
    })
}

/// A digest of a whole count: distinct keys, total, and a hash of every (key, count).
fn digest<'a>(entries: impl Iterator<Item = (&'a [u8], u64)>) -> Value {
    let (mut distinct, mut total, mut hash) = (0u64, 0u64, 0u64);
    for (k, n) in entries {
        distinct += 1;
        total += n;
        hash = hash.wrapping_add(xxhash_rust::xxh3::xxh3_64(k).wrapping_mul(n | 1).wrapping_add(n));
    }
    json!({ "distinct": distinct, "total": total, "hash": hash.to_string() })
}

fn for_each_line(f: &Path, mut each: impl FnMut(&[u8])) {
    let mut r = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(f).expect("open"));
    let mut line = Vec::new();
    while r.read_until(b'\n', &mut line).expect("read") > 0 {
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        each(&line);
        line.clear();
    }
}

/// Peak resident memory of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok());
    kb.unwrap_or(0) * 1024
}

fn native(files: &[PathBuf]) -> Value {
    let t0 = Instant::now();
    let mut map = Counts::default();
    for f in files {
        for_each_line(f, |line| words::for_each_word(line, |w| count_words::count_into(&mut map, w)));
    }
    let secs = t0.elapsed().as_secs_f64();
    let rss = peak_rss();
    json!({ "secs": secs, "rss": rss, "digest": digest(map.iter().map(|(k, v)| (k.as_slice(), *v))) })
}

fn timely_count(files: &[PathBuf], workers: usize) -> Value {
    use timely::dataflow::channels::pact::Exchange;
    use timely::dataflow::operators::generic::Operator;
    use timely::dataflow::operators::vec::Map;
    use timely::dataflow::operators::Input;
    use timely::dataflow::InputHandle;

    let t0 = Instant::now();
    let maps: Arc<Mutex<Vec<Counts>>> = Arc::new(Mutex::new(Vec::new()));
    let (files, out) = (files.to_vec(), maps.clone());
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let mut input = InputHandle::<u64, timely::container::CapacityContainerBuilder<Vec<Vec<u8>>>>::new();
        let counts = std::rc::Rc::new(std::cell::RefCell::new(Counts::default()));
        let c = counts.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            scope
                .input_from(&mut input)
                .flat_map(|line: Vec<u8>| {
                    let mut v = Vec::new();
                    words::for_each_word(&line, |w| v.push(w.to_vec()));
                    v
                })
                .sink(Exchange::new(|w: &Vec<u8>| xxhash_rust::xxh3::xxh3_64(w)), "count", move |(input, _)| {
                    input.for_each(|_, data| {
                        let mut m = c.borrow_mut();
                        for w in data.drain(..) {
                            count_words::count_into(&mut m, &w);
                        }
                    })
                });
        });
        for (i, f) in files.iter().enumerate() {
            if i % peers == index {
                let mut n = 0usize;
                for_each_line(f, |line| {
                    input.send(line.to_vec());
                    n += 1;
                    if n.is_multiple_of(4096) {
                        worker.step();
                    }
                });
            }
        }
        input.close();
        while worker.step() {}
        if let Ok(mut all) = out.lock() {
            all.push(std::mem::take(&mut counts.borrow_mut()));
        }
    })
    .expect("timely");
    let secs = t0.elapsed().as_secs_f64();
    let rss = peak_rss();
    let all = maps.lock().expect("maps");
    let d = digest(all.iter().flat_map(|m| m.iter().map(|(k, v)| (k.as_slice(), *v))));
    json!({ "secs": secs, "rss": rss, "digest": d })
}

/// The embedded engine on `files`, storing into `store` (a directory, or an
/// `s3://` URL) and writing `table`.
fn hailstorm_run(files: &[PathBuf], store: &str, table: &Path, interval: &str) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let list: Vec<String> = files.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
    let dir = table.parent().expect("table dir");
    let sets = vec![
        format!("spouts.lines.source.files=[{}]", list.join(", ")),
        format!("sinks.table.config.path={:?}", table.display().to_string()),
        format!("sinks.table.grants.dirs=[{:?}]", dir.display().to_string()),
        format!(
            "snapshot.store={:?}",
            if store.starts_with("s3://") { store.to_string() } else { format!("file:{store}") }
        ),
        format!("snapshot.interval={interval:?}"),
    ];
    let t = Topology::load(&root.join("topologies/wordcount.toml"), &sets).unwrap_or_else(|e| panic!("{e}"));
    let prepared = runtime::prepare(t).expect("prepare");
    let t0 = Instant::now();
    let s = runtime::run_embedded(prepared, RunOptions::default()).expect("embedded run");
    let secs = t0.elapsed().as_secs_f64();
    let rss = peak_rss();
    let text = std::fs::read(table).expect("read table");
    let rows = text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| {
        let tab = l.iter().rposition(|b| *b == b'\t').expect("tab");
        let n: u64 = std::str::from_utf8(&l[tab + 1..]).expect("utf8").parse().expect("count");
        (&l[..tab], n)
    });
    json!({
        "secs": secs, "rss": rss, "digest": digest(rows), "rounds": s.rounds, "words": s.tuples,
        "saved_bytes": s.saved_bytes, "restore_secs": s.restore.as_secs_f64(),
    })
}

/// Runs this benchmark as a child process doing one measurement.
fn child(args: &[String]) -> Value {
    let files = |from: usize| -> Vec<PathBuf> { args[from..].iter().map(PathBuf::from).collect() };
    match args[0].as_str() {
        "native" => native(&files(1)),
        "timely" => timely_count(&files(2), args[1].parse().expect("workers")),
        "hailstorm" => hailstorm_run(&files(4), &args[1], Path::new(&args[2]), &args[3]),
        other => panic!("unknown measurement {other}"),
    }
}

fn measure(what: &[&str], files: &[PathBuf]) -> Value {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe).arg("--measure").args(what).args(files).output().expect("run a measurement");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{what:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{what:?}: {e}: {stdout}"))
}

fn mb(v: &Value) -> f64 {
    v["rss"].as_f64().unwrap_or(0.0) / 1e6
}

fn secs(v: &Value) -> f64 {
    v["secs"].as_f64().unwrap_or(f64::NAN)
}

fn bench_corpus(name: &str, files: &[PathBuf], dir: &Path) {
    for f in files {
        for_each_line(f, |_| {}); // warm the page cache for every run alike
    }
    let native = measure(&["native"], files);
    let t1 = measure(&["timely", "1"], files);
    let t2 = measure(&["timely", "2"], files);
    let s = |x: &str| dir.join(x).display().to_string();
    let h1 = measure(&["hailstorm", &s(&format!("{name}-store-1s")), &s(&format!("{name}-out/t.tsv")), "1s"], files);
    let hend =
        measure(&["hailstorm", &s(&format!("{name}-store-end")), &s(&format!("{name}-out-end/t.tsv")), "24h"], files);
    let again = measure(&["hailstorm", &s(&format!("{name}-store-1s")), &s(&format!("{name}-out/t.tsv")), "1s"], files);
    for (who, v) in
        [("timely 1", &t1), ("timely 2", &t2), ("hailstorm 1s", &h1), ("hailstorm end", &hend), ("rerun", &again)]
    {
        assert_eq!(v["digest"], native["digest"], "{who} counted differently from the native count");
    }
    let words = native["digest"]["total"].as_u64().unwrap_or(0);
    let timely_best = secs(&t1).min(secs(&t2));
    let rate = |v: &Value| words as f64 / secs(v) / 1e6;
    println!("{name}: {words} words, {} distinct", native["digest"]["distinct"]);
    let row = |label: &str, v: &Value| {
        println!("  {label:<44} {:>7.2} s  {:>7.2} M words/s  peak RSS {:>7.0} MB", secs(v), rate(v), mb(v));
    };
    row("native (same Rust code, 1 thread)", &native);
    row("timely-dataflow, 1 worker", &t1);
    row("timely-dataflow, 2 workers", &t2);
    row(&format!("hailstorm, snapshots every 1 s ({} rounds)", h1["rounds"]), &h1);
    row("hailstorm, one snapshot at the end", &hend);
    let rounds = h1["rounds"].as_f64().unwrap_or(1.0).max(1.0);
    println!("  ratios: hailstorm 1s / native {:.2}, / timely best {:.2}; snapshot overhead (1 s vs end) {:+.1}%; RSS hailstorm / native {:.2}",
        secs(&h1) / secs(&native), secs(&h1) / timely_best, (secs(&h1) / secs(&hend) - 1.0) * 100.0, mb(&h1) / mb(&native));
    println!("  bytes written per round (deltas): {:.1} MB average over {rounds} rounds; restore of the final state: {:.2} s",
        h1["saved_bytes"].as_f64().unwrap_or(0.0) / rounds / 1e6, again["restore_secs"].as_f64().unwrap_or(f64::NAN));
    if let Ok(bucket) = std::env::var("HAILSTORM_TEST_S3_BUCKET") {
        against_s3(name, files, dir, &bucket, (&h1, &again));
    }
}

/// The same 1 s-round run with the store in S3-compatible object storage
/// (the server `scripts/services.sh` starts, or the one the `AWS_*`
/// variables name), then its rerun (a restore of the final state), against
/// the file store's figures `file` (run, rerun).
fn against_s3(name: &str, files: &[PathBuf], dir: &Path, bucket: &str, file: (&Value, &Value)) {
    let url = format!("s3://{bucket}/bench-{name}-{}-{}", std::process::id(), hailstorm::store::now_ms());
    let table = dir.join(format!("{name}-out-s3/t.tsv")).display().to_string();
    let run = measure(&["hailstorm", &url, &table, "1s"], files);
    let again = measure(&["hailstorm", &url, &table, "1s"], files);
    assert_eq!(run["digest"], file.0["digest"], "the s3:// run counted differently");
    assert_eq!(again["digest"], file.0["digest"], "the s3:// rerun counted differently");
    let per_round =
        |v: &Value| v["saved_bytes"].as_f64().unwrap_or(0.0) / v["rounds"].as_f64().unwrap_or(1.0).max(1.0) / 1e6;
    let restore = |v: &Value| v["restore_secs"].as_f64().unwrap_or(f64::NAN);
    println!(
        "  hailstorm, snapshots every 1 s to s3:// ({} rounds)       {:>7.2} s  peak RSS {:>7.0} MB",
        run["rounds"],
        secs(&run),
        mb(&run)
    );
    println!(
        "  s3:// / file: wall time {:.2}; bytes per round {:.1} MB / {:.1} MB; restore {:.2} s / {:.2} s ({:.2})",
        secs(&run) / secs(file.0),
        per_round(&run),
        per_round(file.0),
        restore(&again),
        restore(file.1),
        restore(&again) / restore(file.1)
    );
}

/// Start-up: the whole `hailstorm deploy` of the 10-line sample (so almost
/// all of it is start-up), with modules compiled, then from the compile cache.
fn startup(dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let cache = dir.join("compile-cache");
    let run = |n: usize| {
        let out = dir.join(format!("startup-{n}"));
        let t0 = Instant::now();
        let status = deploy_sample(&root, &out, &cache).status().expect("run hailstorm");
        assert!(status.success(), "the start-up run failed");
        t0.elapsed().as_secs_f64()
    };
    let cold = run(0);
    let warm = (1..=3).map(run).fold(f64::INFINITY, f64::min);
    println!("start-up (deploy of the 10-line sample): compiling {cold:.3} s, from the compile cache {warm:.3} s (ratio {:.2})", warm / cold);
    let cold_dir = dir.join("compile-cache-2");
    let first_cold = first_record(dir, &root, &cold_dir, 10);
    let first_warm = (11..=13).map(|n| first_record(dir, &root, &cache, n)).fold(f64::INFINITY, f64::min);
    println!(
        "start-up: deploy to the first record processed: compiling {first_cold:.3} s, from the compile cache {first_warm:.3} s (ratio {:.2})",
        first_warm / first_cold
    );
}

/// `hailstorm deploy --quiet` of the sample wordcount, its store and table
/// under `out`, its compiled modules cached in `cache`.
fn deploy_sample(root: &Path, out: &Path, cache: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hailstorm"));
    cmd.arg("deploy").arg(root.join("topologies/wordcount.toml")).arg("--quiet");
    let sets = [
        format!("snapshot.store={:?}", format!("file:{}", out.join("store").display())),
        format!("sinks.table.config.path={:?}", out.join("out/t.tsv").display().to_string()),
        format!("sinks.table.grants.dirs=[{:?}]", out.join("out").display().to_string()),
    ];
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    cmd.env("HAILSTORM_CACHE_DIR", cache);
    cmd
}

/// Seconds from starting `deploy --follow` of the sample to its first
/// record processed (read back from its metrics endpoint).
fn first_record(dir: &Path, root: &Path, cache: &Path, n: usize) -> f64 {
    let out = dir.join(format!("startup-{n}"));
    std::fs::create_dir_all(&out).expect("startup dir");
    let log = out.join("deploy.log");
    let t0 = Instant::now();
    let mut child = deploy_sample(root, &out, cache)
        .args(["--follow", "--metrics-addr", "127.0.0.1:0"])
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("run hailstorm");
    let mut addr = None;
    let took = loop {
        assert!(t0.elapsed().as_secs() < 60, "no first record within 60 s");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if addr.is_none() {
            addr = text
                .find("metrics on http://")
                .map(|at| text[at + "metrics on http://".len()..].split('/').next().unwrap_or("").to_string());
        }
        if let Some(a) = &addr {
            if records_in(a) > 0.0 {
                break t0.elapsed().as_secs_f64();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    let _ = child.kill();
    let _ = child.wait();
    took
}

/// The records the spouts of the process at `addr` have read.
fn records_in(addr: &str) -> f64 {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return 0.0 };
    let _ = write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .filter(|l| l.starts_with("hailstorm_records_in_total{") && l.contains("processor=\"lines\""))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.first().map(String::as_str) == Some("--measure") {
        let v = child(&args[1..]);
        println!("{v}");
        return;
    }
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (words, keys) = (env("HAILSTORM_BENCH_WORDS", 20_000_000), env("HAILSTORM_BENCH_KEYS", 4_000_000));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let t = Topology::load(&root.join("topologies/wordcount.toml"), &[]).unwrap_or_else(|e| panic!("{e}"));
    hailstorm::modbuild::build_modules(&t, false).expect("build modules");
    let dir = tempfile::tempdir().expect("tempdir");
    startup(dir.path());
    eprintln!("generating the corpora ({words} words each)...");
    // HAILSTORM_BENCH_ONLY=high-cardinality: one corpus.
    let only = std::env::var("HAILSTORM_BENCH_ONLY").ok();
    if only.as_deref().is_none_or(|o| o == "zipf") {
        let z = zipf(dir.path(), words);
        bench_corpus("zipf", &z, dir.path());
    }
    let h = high_cardinality(dir.path(), words, keys);
    bench_corpus("high-cardinality", &h, dir.path());
}
