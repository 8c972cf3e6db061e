//! Control traffic at scale (not a test): the wordcount with 32 file
//! partitions and 32 count instances, embedded, 1 s snapshots.
//!
//!     cargo bench -p hailstorm --bench control
//!     HAILSTORM_BENCH_WORDS=2000000 cargo bench -p hailstorm --bench control
//!
//! It measures the process's CPU time (user + system, from /proc) twice:
//! while the records flow (the data path, LWMs riding on the batches), and
//! then for five seconds with the input read to its end, when the only work
//! left is control: LWM messages, heartbeats and snapshot rounds. The ratio
//! of the two rates is the cost of control traffic relative to the data
//! path; the target is below 5%.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PARTITIONS: usize = 32;
const INSTANCES: usize = 32;

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.into())
}

/// `files` files of lines of 8 words from a 20,000-word vocabulary; the line count.
fn corpus(dir: &Path, words: usize, files: usize) -> (Vec<PathBuf>, usize) {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut lines = 0;
    let paths = (0..files)
        .map(|f| {
            let p = dir.join(format!("part-{f}.txt"));
            let mut w = std::io::BufWriter::new(std::fs::File::create(&p).expect("create corpus"));
            for _ in 0..words / files / 8 {
                let line: Vec<String> = (0..8)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        format!("w{}", x % 20_000)
                    })
                    .collect();
                writeln!(w, "{}", line.join(" ")).expect("write corpus");
                lines += 1;
            }
            w.flush().expect("flush corpus");
            p
        })
        .collect();
    (paths, lines)
}

/// CPU seconds (user + system) in a /proc stat line.
fn stat_seconds(stat: &str, ticks: f64) -> f64 {
    // The fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    let at = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (at(11) + at(12)) / ticks
}

/// CPU seconds the process used so far: all of it, and its spout and bolt
/// threads' (where LWM and heartbeat messages are sent and received).
fn cpu_seconds(pid: u32, ticks: f64) -> (f64, f64) {
    let all = stat_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default(), ticks);
    let mut instances = 0.0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if name.starts_with("spout ") || name.starts_with("bolt ") {
            instances += stat_seconds(&std::fs::read_to_string(task.path().join("stat")).unwrap_or_default(), ticks);
        }
    }
    (all, instances)
}

fn get(addr: &str, path: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

/// The sum of a metric over the series whose labels contain `with`.
fn metric(text: &str, name: &str, with: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(with))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Starts the deploy; the caller kills and waits for it (the lint cannot see that).
#[allow(clippy::zombie_processes)]
fn start(root: &Path, dir: &Path, files: &[PathBuf]) -> (Child, String) {
    let list: Vec<String> = files.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
    let sets = [
        format!("spouts.lines.source.files=[{}]", list.join(", ")),
        format!("bolts.counts.parallelism={INSTANCES}"),
        format!("sinks.table.config.path={:?}", dir.join("out/table.tsv").display().to_string()),
        format!("sinks.table.grants.dirs=[{:?}]", dir.join("out").display().to_string()),
        format!("snapshot.store={:?}", format!("file:{}", dir.join("store").display())),
        "snapshot.interval=\"1s\"".to_string(),
    ];
    let log = dir.join("deploy.log");
    // HAILSTORM_BENCH_BIN: another build to compare with.
    let bin = std::env::var("HAILSTORM_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_hailstorm").into());
    let mut cmd = Command::new(bin);
    cmd.arg("deploy").arg(root.join("topologies/wordcount.toml"));
    cmd.args(["--follow", "--quiet", "--metrics-addr", "127.0.0.1:0"]);
    for s in &sets {
        cmd.arg("--set").arg(s);
    }
    let child =
        cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log).expect("log")).spawn().expect("start deploy");
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(at) = text.find("metrics on http://") {
            let addr = text[at + "metrics on http://".len()..].split('/').next().unwrap_or("").to_string();
            return (child, addr);
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no metrics address:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    let words: usize = env_or("HAILSTORM_BENCH_WORDS", "8000000").parse().expect("HAILSTORM_BENCH_WORDS");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf();
    let dir = tempfile::tempdir().expect("tempdir");
    let (files, lines) = corpus(dir.path(), words, PARTITIONS);
    let ticks: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    let (mut child, addr) = start(&root, dir.path(), &files);
    let pid = child.id();
    let read = || metric(&get(&addr, "/metrics"), "hailstorm_records_in_total", "processor=\"lines\"");
    // The data path: from the first record to the last.
    while read() == 0.0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (t0, (c0, _)) = (Instant::now(), cpu_seconds(pid, ticks));
    while (read() as usize) < lines {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (data_wall, data_cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds(pid, ticks).0 - c0);
    // Let the last batches settle, then control only.
    std::thread::sleep(Duration::from_secs(2));
    let (t1, (c1, i1)) = (Instant::now(), cpu_seconds(pid, ticks));
    std::thread::sleep(Duration::from_secs(5));
    let (c2, i2) = cpu_seconds(pid, ticks);
    let idle_wall = t1.elapsed().as_secs_f64();
    let rounds = metric(&get(&addr, "/metrics"), "hailstorm_rounds_complete_total", "");
    let _ = child.kill();
    let _ = child.wait();
    let per_s = |cpu: f64, wall: f64| 1000.0 * cpu / wall.max(1e-9);
    let (data, idle, messages) = (per_s(data_cpu, data_wall), per_s(c2 - c1, idle_wall), per_s(i2 - i1, idle_wall));
    println!("control traffic, {PARTITIONS} partitions x {INSTANCES} count instances, {lines} lines ({words} words), 1 s rounds:");
    println!("  data path: {data_wall:.2} s wall, {data_cpu:.2} s CPU ({data:.0} ms CPU per second)");
    println!(
        "  input read, {rounds} rounds so far: {idle:.1} ms CPU per second in all, {messages:.1} of them in the spout and bolt threads (LWM and heartbeat messages, idle polls)"
    );
    println!(
        "  ratio control messages / data-path CPU: {:.2}% (target below 5%); with the snapshot rounds (writer, compactor, sink, negotiator): {:.2}%",
        100.0 * messages / data.max(1e-9),
        100.0 * idle / data.max(1e-9)
    );
}
