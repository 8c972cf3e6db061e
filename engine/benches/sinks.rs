//! Connector-sink benchmark (not a test): needs the services of
//! `scripts/services.sh start` with its environment (`eval "$(scripts/services.sh env)"`).
//!
//! In one run, both with 1 s rounds:
//! 1. Kafka → Hailstorm → Kafka: `hailstorm produce` writes N lines to a
//!    topic (the broker's raw produce rate for those records is the
//!    baseline); three workers count them and write the counts, one
//!    transaction per round, to another topic. The figure: input records per
//!    second from deploy until the sink committed a round covering every
//!    record, as a ratio to the raw produce rate.
//! 2. Hailstorm → PostgreSQL: an embedded run over M lines of one distinct
//!    word each (so every record becomes a row), rows per second from start
//!    to the end of the run, against one client doing a plain binary COPY
//!    into a staging table and one upsert of the same rows.
//!
//!   cargo bench -p hailstorm --bench sinks

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hailstorm::cluster::state::{Complete, Paths};
use hailstorm::cluster::zk::Zk;
use hailstorm::kafka;
use hailstorm::store::FileStore;

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

fn hailstorm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hailstorm"))
}

fn write_lines(path: &Path, lines: usize, seed: u64, distinct: bool) {
    let mut x = seed | 1;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create input"));
    for n in 0..lines {
        if distinct {
            writeln!(out, "word{seed}x{n}").expect("write input");
            continue;
        }
        let mut words = Vec::with_capacity(8);
        for _ in 0..8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            words.push(format!("w{}", (x % 10_000) % ((x >> 20) % 10_000 + 1)));
        }
        writeln!(out, "{}", words.join(" ")).expect("write input");
    }
    out.flush().expect("flush input");
}

fn start_worker(zk: &str, dir: &Path, i: usize) -> Child {
    hailstorm()
        .args(["worker", "--zookeeper", zk, "--data-dir"])
        .arg(dir.join(format!("w{i}")))
        .stderr(std::fs::File::create(dir.join(format!("w{i}.log"))).expect("log"))
        .stdout(Stdio::null())
        .spawn()
        .expect("start worker")
}

/// Kafka → Hailstorm → Kafka; prints the figures.
fn kafka_to_kafka(root: &Path, dir: &Path, lines: usize) {
    let brokers = env_or("HAILSTORM_TEST_KAFKA", "127.0.0.1:9092");
    let zk_server = env_or("HAILSTORM_TEST_ZOOKEEPER", "127.0.0.1:2181");
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let (input, output, name) =
        (format!("bench-in-{stamp}"), format!("bench-out-{stamp}"), format!("bench-sink-{stamp}"));
    let files: Vec<_> = (0..4).map(|i| dir.join(format!("input-{i}.txt"))).collect();
    for (i, f) in files.iter().enumerate() {
        write_lines(f, lines / 4, 7 + i as u64, false);
    }
    let p = kafka::produce(&brokers, &input, Some(4), &files, kafka::Batching::records(10_000)).expect("produce");
    let raw = p.records as f64 / p.elapsed.as_secs_f64();
    println!("raw produce: {} records to `{input}` in {:.2}s = {raw:.0} records/s", p.records, p.elapsed.as_secs_f64());
    // `produce` of nothing creates the output topic.
    std::fs::write(dir.join("empty.txt"), "").expect("write");
    let ok = hailstorm()
        .args(["produce", "--brokers", &brokers, "--topic", &output, "--partitions", "3"])
        .arg(dir.join("empty.txt"))
        .status()
        .expect("create the output topic");
    assert!(ok.success(), "cannot create the output topic");
    let zk = format!("{zk_server}/hailstorm-bench-sinks-{stamp}");
    let _workers = Workers((0..3).map(|i| start_worker(&zk, dir, i)).collect());
    std::thread::sleep(Duration::from_secs(1));
    let sets = [
        format!("name={name:?}"),
        format!("cluster={{ zookeeper = {zk:?}, kafka = {brokers:?} }}"),
        format!("spouts.lines.source={{ kafka = {{ topic = {input:?} }} }}"),
        format!("snapshot.store={:?}", format!("file:{}", dir.join("store").display())),
        "snapshot.interval=\"1s\"".into(),
        "bolts.counts.parallelism=3".into(),
        format!("sinks.out.kafka={{ topic = {output:?}, brokers = {brokers:?} }}"),
    ];
    let session = Zk::connect(&zk, Duration::from_secs(10)).expect("connect to ZooKeeper");
    let mut deploy = hailstorm();
    deploy.arg("deploy").arg(root.join("topologies/wordcount-to-kafka.toml"));
    for s in &sets {
        deploy.arg("--set").arg(s);
    }
    let started = Instant::now();
    let out = deploy.output().expect("deploy");
    assert!(out.status.success(), "deploy failed: {}", String::from_utf8_lossy(&out.stderr));
    let covering = loop {
        let c: Option<Complete> = session.get_json(&Paths::complete(&name)).ok().flatten().map(|(c, _)| c);
        if let Some(c) = c.filter(|c| c.clock.iter().map(|(_, o)| o).sum::<u64>() >= p.records) {
            break c.round;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "the wordcount did not finish");
        std::thread::sleep(Duration::from_millis(10));
    };
    let store = FileStore::open(&dir.join("store")).expect("open the store");
    while store.read_sink_round("out").ok().flatten().unwrap_or(0) < covering {
        if started.elapsed() > Duration::from_secs(300) {
            for i in 0..3 {
                eprintln!(
                    "--- w{i}.log\n{}",
                    std::fs::read_to_string(dir.join(format!("w{i}.log"))).unwrap_or_default()
                );
            }
            panic!("the sink did not commit the last round");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let e2e = p.records as f64 / started.elapsed().as_secs_f64();
    println!(
        "Kafka -> Hailstorm (3 workers) -> Kafka, one transaction per 1 s round: {} records in {:.2}s = {e2e:.0} records/s; \
         ratio to the raw produce rate: {:.3}",
        p.records,
        started.elapsed().as_secs_f64(),
        e2e / raw
    );
}

/// Worker processes, killed when dropped (a failed run leaves none behind).
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.0 {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// The binary COPY stream of rows (text, bigint).
fn copy_rows(words: &[String]) -> Vec<u8> {
    let mut b = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
    for w in words {
        b.extend_from_slice(&2i16.to_be_bytes());
        b.extend_from_slice(&(w.len() as i32).to_be_bytes());
        b.extend_from_slice(w.as_bytes());
        b.extend_from_slice(&8i32.to_be_bytes());
        b.extend_from_slice(&1i64.to_be_bytes());
    }
    b.extend_from_slice(&(-1i16).to_be_bytes());
    b
}

/// Hailstorm → PostgreSQL against a plain COPY + upsert; prints the figures.
fn to_postgres(root: &Path, dir: &Path, rows: usize) {
    let url = std::env::var("HAILSTORM_TEST_POSTGRES").expect("HAILSTORM_TEST_POSTGRES (scripts/services.sh env)");
    std::fs::create_dir_all(dir).expect("a directory");
    let input = dir.join("words.txt");
    write_lines(&input, rows, 3, true);
    let words: Vec<String> = std::fs::read_to_string(&input).expect("read").lines().map(str::to_string).collect();
    let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect to PostgreSQL");
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let (base, table) = (format!("bench_copy_{stamp}"), format!("bench_rows_{stamp}"));
    let create = |t: &str| format!("CREATE TABLE {t} (word text PRIMARY KEY, count bigint)");
    c.batch_execute(&format!("{}; {};", create(&base), create(&table))).expect("create tables");
    // Baseline: one client, one transaction.
    let t0 = Instant::now();
    let mut tx = c.transaction().expect("begin");
    tx.batch_execute("CREATE TEMP TABLE stage (word text, count bigint) ON COMMIT DROP").expect("stage");
    let mut w = tx.copy_in("COPY stage (word, count) FROM STDIN (FORMAT binary)").expect("copy");
    w.write_all(&copy_rows(&words)).expect("copy rows");
    w.finish().expect("finish copy");
    tx.batch_execute(&format!(
        "INSERT INTO {base} SELECT word, count FROM stage ON CONFLICT (word) DO UPDATE SET count = EXCLUDED.count"
    ))
    .expect("upsert");
    tx.commit().expect("commit");
    let plain = rows as f64 / t0.elapsed().as_secs_f64();
    println!(
        "plain binary COPY + upsert, one client: {rows} rows in {:.2}s = {plain:.0} rows/s",
        t0.elapsed().as_secs_f64()
    );
    let sets = [
        format!("spouts.lines.source.files=[{:?}]", input.display().to_string()),
        format!("snapshot.store={:?}", format!("file:{}", dir.join("pg-store").display())),
        "snapshot.interval=\"1s\"".into(),
        format!("sinks.out.postgres={{ table = {table:?}, url_env = \"HAILSTORM_TEST_POSTGRES\" }}"),
    ];
    let mut cmd = hailstorm();
    cmd.arg("deploy").arg(root.join("topologies/wordcount-to-postgres.toml")).arg("--quiet");
    for s in &sets {
        cmd.arg("--set").arg(s);
    }
    let t0 = Instant::now();
    let out = cmd.output().expect("deploy");
    assert!(out.status.success(), "deploy failed: {}", String::from_utf8_lossy(&out.stderr));
    let secs = t0.elapsed().as_secs_f64();
    let n: i64 = c.query_one(&format!("SELECT count(*) FROM {table}"), &[]).expect("count").get(0);
    assert_eq!(n as usize, rows, "the table does not hold every row");
    let engine = rows as f64 / secs;
    println!(
        "Hailstorm -> PostgreSQL (embedded, 1 s rounds, start to end of the run): {rows} rows in {secs:.2}s = {engine:.0} rows/s; \
         ratio to the plain COPY + upsert: {:.3}",
        engine / plain
    );
    c.batch_execute(&format!("DROP TABLE {base}; DROP TABLE {table};")).ok();
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf();
    let dir = tempfile::tempdir().expect("tempdir");
    let build = hailstorm().arg("build").arg(root.join("topologies/wordcount-to-kafka.toml")).status();
    assert!(build.is_ok_and(|s| s.success()), "building the modules failed");
    let lines: usize = env_or("HAILSTORM_BENCH_LINES", "1000000").parse().expect("HAILSTORM_BENCH_LINES");
    let rows: usize = env_or("HAILSTORM_BENCH_ROWS", "1000000").parse().expect("HAILSTORM_BENCH_ROWS");
    kafka_to_kafka(&root, dir.path(), lines);
    to_postgres(&root, &dir.path().join("pg"), rows);
}
