//! Distributed-mode benchmark (not a test): needs the services of
//! `scripts/services.sh start` (or HAILSTORM_TEST_ZOOKEEPER / HAILSTORM_TEST_KAFKA).
//!
//! In one run, on one topic of one broker:
//! 1. the raw read rate of the topic with a plain rdkafka consumer;
//! 2. the Kafka-mode wordcount on three workers (count parallelism 3): records
//!    per second from deploy until a complete round covers every record;
//!    the ratio engine/raw is the figure;
//! 3. recovery: with records still arriving, `kill -9` a worker that is not
//!    the negotiator's and time until a round of the rebooted world completes
//!    (the table advances again).
//!
//!   cargo bench -p hailstorm --bench cluster

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hailstorm::kafka;

const WORDS_PER_LINE: usize = 8;

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.into())
}

fn status(zk: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_hailstorm"))
        .args(["status", "--json", "--zookeeper", zk])
        .output()
        .expect("run hailstorm status");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

fn committed(s: &serde_json::Value) -> u64 {
    s["topologies"][0]["last_complete"]["clock"]
        .as_array()
        .map(|c| c.iter().filter_map(|p| p[1].as_u64()).sum())
        .unwrap_or(0)
}

fn write_lines(path: &Path, lines: usize, seed: u64) {
    let mut x = seed | 1;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create input"));
    for _ in 0..lines {
        let mut line = String::new();
        for i in 0..WORDS_PER_LINE {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i > 0 {
                line.push(' ');
            }
            line.push_str(&format!("w{}", (x % 10_000) % ((x >> 20) % 10_000 + 1)));
        }
        writeln!(out, "{line}").expect("write input");
    }
    out.flush().expect("flush input");
}

fn main() {
    let zk_server = env_or("HAILSTORM_TEST_ZOOKEEPER", "127.0.0.1:2181");
    let brokers = env_or("HAILSTORM_TEST_KAFKA", "127.0.0.1:9092");
    let lines: usize = env_or("HAILSTORM_BENCH_LINES", "1000000").parse().expect("HAILSTORM_BENCH_LINES");
    let dir = tempfile::tempdir().expect("tempdir");
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let topic = format!("bench-{stamp}");
    let zk = format!("{zk_server}/hailstorm-bench-{stamp}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf();

    let input = dir.path().join("input.txt");
    write_lines(&input, lines, 7);
    let p = kafka::produce(&brokers, &topic, Some(4), std::slice::from_ref(&input), kafka::Batching::records(10_000))
        .expect("produce");
    println!(
        "produced {} records ({} words) to `{topic}` in {:.1}s",
        p.records,
        p.records * WORDS_PER_LINE as u64,
        p.elapsed.as_secs_f64()
    );

    // 1. Raw read rate.
    let (records, bytes, raw) = kafka::raw_read(&brokers, &topic, Duration::from_secs(60)).expect("raw read");
    let raw_rate = records as f64 / raw.as_secs_f64();
    println!(
        "raw rdkafka read: {records} records, {bytes} bytes in {:.2}s = {:.0} records/s",
        raw.as_secs_f64(),
        raw_rate
    );

    // 2. The wordcount on three workers.
    let mut workers: Vec<Child> = (0..3)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_hailstorm"))
                .args(["worker", "--zookeeper", &zk, "--session-timeout", "3s", "--data-dir"])
                .arg(dir.path().join(format!("w{i}")))
                .arg("--allow-grants")
                .arg(dir.path().join("out"))
                .stderr(std::fs::File::create(dir.path().join(format!("w{i}.log"))).expect("log"))
                .stdout(Stdio::null())
                .spawn()
                .expect("start worker")
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let table: PathBuf = dir.path().join("out/table.tsv");
    let sets = [
        format!("cluster.zookeeper={zk:?}"),
        format!("cluster.kafka={brokers:?}"),
        format!("spouts.lines.source.kafka.topic={topic:?}"),
        format!("sinks.table.config.path={:?}", table.display().to_string()),
        format!("sinks.table.grants.dirs=[{:?}]", dir.path().join("out").display().to_string()),
        format!("snapshot.store={:?}", format!("file:{}", dir.path().join("store").display())),
        "snapshot.interval=\"500ms\"".into(),
    ];
    let mut deploy = Command::new(env!("CARGO_BIN_EXE_hailstorm"));
    deploy.arg("deploy").arg(root.join("topologies/wordcount-kafka.toml"));
    for s in &sets {
        deploy.arg("--set").arg(s);
    }
    let started = Instant::now();
    let out = deploy.output().expect("deploy");
    assert!(out.status.success(), "deploy failed: {}", String::from_utf8_lossy(&out.stderr));
    while committed(&status(&zk)) < p.records {
        assert!(started.elapsed() < Duration::from_secs(600), "the wordcount did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let engine = started.elapsed();
    let engine_rate = p.records as f64 / engine.as_secs_f64();
    println!(
        "kafka-mode wordcount, 3 workers: {} records in {:.2}s (deploy to a complete round covering all) = {:.0} records/s ({:.2}M words/s)",
        p.records,
        engine.as_secs_f64(),
        engine_rate,
        engine_rate * WORDS_PER_LINE as f64 / 1e6
    );
    println!("ratio engine/raw read: {:.3}", engine_rate / raw_rate);

    // 3. Recovery from kill -9 of a worker, with records arriving.
    let s = status(&zk);
    let leader = s["topologies"][0]["leader"].as_str().unwrap_or_default().to_string();
    let epoch = s["topologies"][0]["status"]["epoch"].as_u64().unwrap_or(0);
    let victim = (0..3)
        .find(|i| {
            let log = std::fs::read_to_string(dir.path().join(format!("w{i}.log"))).unwrap_or_default();
            !log.contains(&format!("worker {leader}: listening"))
        })
        .expect("a non-leader worker");
    let more = dir.path().join("more.txt");
    write_lines(&more, 20_000, 11);
    let feeder = {
        let (brokers, topic, more) = (brokers.clone(), topic.clone(), more.clone());
        std::thread::spawn(move || {
            for _ in 0..2 {
                kafka::produce(&brokers, &topic, None, std::slice::from_ref(&more), kafka::Batching::records(1))
                    .expect("produce more");
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let killed = Instant::now();
    let killed_ms = hailstorm::store::now_ms();
    workers[victim].kill().expect("kill -9");
    let _ = workers[victim].wait();
    loop {
        let s = status(&zk);
        let c = &s["topologies"][0]["last_complete"];
        if c["epoch"].as_u64().unwrap_or(0) > epoch && c["at_ms"].as_u64().unwrap_or(0) > killed_ms {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(120), "no recovery within 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "recovery: kill -9 of a worker to the first complete round of the rebooted world: {:.2}s (session timeout 3s)",
        killed.elapsed().as_secs_f64()
    );
    let _ = feeder.join();
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }
}
