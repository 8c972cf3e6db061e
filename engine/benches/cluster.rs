//! Distributed-mode benchmark (not a test): needs the services of
//! `scripts/services.sh start` with its environment (`eval "$(scripts/services.sh env)"`),
//! or HAILSTORM_TEST_ZOOKEEPER / HAILSTORM_TEST_KAFKA (and _SASL, _CA, _USER, _PASSWORD).
//!
//! In one run, on one topic of one broker:
//! 1. the raw read rate of the topic with a plain rdkafka consumer;
//! 2. the Kafka-mode wordcount on three workers (count parallelism 3): records
//!    per second from deploy until a complete round covers every record;
//!    the ratio engine/raw is the figure;
//! 3. recovery: with records still arriving, `kill -9` a worker that is not
//!    the negotiator's and time until a round of the rebooted world completes
//!    (the table advances again); ten times, with the default session
//!    timeout, and the median;
//! 4. over SASL_SSL (SCRAM-SHA-512, the listener `scripts/services.sh`
//!    starts; its `env` names it): the raw read and the wordcount again on
//!    the same topic, as ratios to plaintext — the price of TLS.
//!
//!   cargo bench -p hailstorm --bench cluster

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hailstorm::cluster::state::{Complete, Paths};
use hailstorm::cluster::zk::Zk;
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

/// The topology the benchmark deploys.
const TOPOLOGY: &str = "wordcount-kafka";

/// The last complete round of the Kafka wordcount, if there is one.
fn last_complete(session: &Zk) -> Option<Complete> {
    match session.get_json::<Complete>(&Paths::complete(TOPOLOGY)) {
        Ok(c) => c.map(|(c, _)| c),
        Err(e) => {
            eprintln!("cannot read the last complete round: {e:#}");
            None
        }
    }
}

/// Records in the last complete round of the Kafka wordcount.
fn committed_in(session: &Zk) -> u64 {
    last_complete(session).map_or(0, |c| c.clock.iter().map(|(_, o)| o).sum())
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

fn start_worker(zk: &str, dir: &Path, i: usize) -> Child {
    start_worker_with(zk, dir, i, &[])
}

/// A worker with environment variables (`HAILSTORM_KAFKA_CONFIG`).
fn start_worker_with(zk: &str, dir: &Path, i: usize, env: &[(&str, String)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_hailstorm"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(["worker", "--zookeeper", zk, "--data-dir"])
        .arg(dir.join(format!("w{i}")))
        .arg("--allow-grants")
        .arg(dir.join("out"))
        .stderr(std::fs::File::create(dir.join(format!("w{i}.log"))).expect("log"))
        .stdout(Stdio::null())
        .spawn()
        .expect("start worker")
}

/// Kills (-9) a worker of the current world that does not run the
/// negotiator, times until a round of the rebooted world completes, then
/// starts a fresh worker in its place. Seconds.
fn kill_one(zk: &str, session: &Zk, dir: &Path, workers: &mut [Child], k: usize) -> f64 {
    let s = status(zk);
    let t = &s["topologies"][0];
    let leader = t["leader"].as_str().unwrap_or_default().to_string();
    let epoch = t["status"]["epoch"].as_u64().unwrap_or(0);
    let placed: Vec<String> = t["assignment"].as_object().map(|a| a.keys().cloned().collect()).unwrap_or_default();
    let id_of = |i: usize| {
        let log = std::fs::read_to_string(dir.join(format!("w{i}.log"))).unwrap_or_default();
        let at = log.rfind("hailstorm worker w-")? + "hailstorm worker ".len();
        Some(log[at..].split(':').next()?.to_string())
    };
    let victim = (0..workers.len())
        .find(|&i| id_of(i).is_some_and(|id| id != leader && placed.contains(&id)))
        .expect("a placed worker that does not lead");
    let killed = Instant::now();
    let killed_ms = hailstorm::store::now_ms();
    workers[victim].kill().expect("kill -9");
    let _ = workers[victim].wait();
    loop {
        if last_complete(session).is_some_and(|c| c.epoch > epoch && c.at_ms > killed_ms) {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(120), "no recovery within 120 s (kill {k})");
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = killed.elapsed().as_secs_f64();
    workers[victim] = start_worker(zk, dir, victim);
    // Its registration, and a settled world, before the next kill.
    while status(zk)["workers"].as_array().map_or(0, Vec::len) < workers.len() {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    took
}

/// Seconds of an embedded `deploy` of `files` (start-up and the final round included).
fn embedded(root: &Path, dir: &Path, files: &[PathBuf]) -> f64 {
    let list: Vec<String> = files.iter().map(|f| format!("{:?}", f.display().to_string())).collect();
    let out = dir.join("embedded");
    let sets = [
        format!("spouts.lines.source.files=[{}]", list.join(", ")),
        format!("sinks.table.config.path={:?}", out.join("out/table.tsv").display().to_string()),
        format!("sinks.table.grants.dirs=[{:?}]", out.join("out").display().to_string()),
        format!("snapshot.store={:?}", format!("file:{}", out.join("store").display())),
    ];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hailstorm"));
    cmd.arg("deploy").arg(root.join("topologies/wordcount.toml")).arg("--quiet");
    for s in &sets {
        cmd.arg("--set").arg(s);
    }
    let t0 = Instant::now();
    let status = cmd.stdout(Stdio::null()).status().expect("run the embedded wordcount");
    assert!(status.success(), "the embedded wordcount failed");
    t0.elapsed().as_secs_f64()
}

/// One Kafka-mode wordcount set-up: where it runs and what it reads.
struct Run<'a> {
    root: &'a Path,
    /// The workers' data and logs, the table and the store.
    home: &'a Path,
    zk: &'a str,
    brokers: &'a str,
    topic: &'a str,
    env: &'a [(&'a str, String)],
}

impl Run<'_> {
    /// Three workers, registered.
    fn workers(&self) -> Vec<Child> {
        std::fs::create_dir_all(self.home).expect("the workers' directory");
        let workers = (0..3).map(|i| start_worker_with(self.zk, self.home, i, self.env)).collect();
        std::thread::sleep(Duration::from_secs(1));
        workers
    }

    /// Deploys the wordcount and times it until a complete round covers `records` records.
    fn wordcount(&self, session: &Zk, records: u64) -> Duration {
        let out = self.home.join("out");
        let sets = [
            format!("cluster.zookeeper={:?}", self.zk),
            format!("cluster.kafka={:?}", self.brokers),
            format!("spouts.lines.source.kafka.topic={:?}", self.topic),
            format!("sinks.table.config.path={:?}", out.join("table.tsv").display().to_string()),
            format!("sinks.table.grants.dirs=[{:?}]", out.display().to_string()),
            format!("snapshot.store={:?}", format!("file:{}", self.home.join("store").display())),
            "snapshot.interval=\"500ms\"".into(),
        ];
        let mut deploy = Command::new(env!("CARGO_BIN_EXE_hailstorm"));
        deploy.arg("deploy").arg(self.root.join("topologies/wordcount-kafka.toml"));
        deploy.envs(self.env.iter().map(|(k, v)| (k, v)));
        for s in &sets {
            deploy.arg("--set").arg(s);
        }
        // The last complete round is read on one ZooKeeper session every 10 ms
        // (`hailstorm status` would add a session and a broker query per look).
        let started = Instant::now();
        let out = deploy.output().expect("deploy");
        assert!(out.status.success(), "deploy failed: {}", String::from_utf8_lossy(&out.stderr));
        while committed_in(session) < records {
            assert!(started.elapsed() < Duration::from_secs(600), "the wordcount did not finish");
            std::thread::sleep(Duration::from_millis(10));
        }
        started.elapsed()
    }
}

/// The SASL_SSL listener and a settings file for it, when the services name them.
fn sasl_settings(dir: &Path) -> Option<(String, PathBuf)> {
    let var = |v: &str| std::env::var(v).ok();
    let (brokers, ca) = (var("HAILSTORM_TEST_KAFKA_SASL")?, var("HAILSTORM_TEST_KAFKA_CA")?);
    let (user, password) = (var("HAILSTORM_TEST_KAFKA_USER")?, var("HAILSTORM_TEST_KAFKA_PASSWORD")?);
    let path = dir.join("sasl.properties");
    let text = format!(
        "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\nsasl.username={user}\nsasl.password={password}\nssl.ca.location={ca}\n"
    );
    std::fs::write(&path, text).expect("write the SASL settings");
    Some((brokers, path))
}

/// Records in `topic` now (the sum of its partitions' high watermarks).
fn committed_in_topic(brokers: &str, topic: &str) -> u64 {
    kafka::high_watermarks(brokers, topic, Duration::from_secs(10)).expect("high watermarks").iter().sum()
}

fn main() {
    let zk_server = env_or("HAILSTORM_TEST_ZOOKEEPER", "127.0.0.1:2181");
    let brokers = env_or("HAILSTORM_TEST_KAFKA", "127.0.0.1:9092");
    let lines: usize = env_or("HAILSTORM_BENCH_LINES", "1000000").parse().expect("HAILSTORM_BENCH_LINES");
    let dir = tempfile::tempdir().expect("tempdir");
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let topic = format!("bench-{stamp}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf();

    let inputs: Vec<PathBuf> = (0..4).map(|i| dir.path().join(format!("input-{i}.txt"))).collect();
    for (i, f) in inputs.iter().enumerate() {
        write_lines(f, lines / 4, 7 + i as u64);
    }
    let p = kafka::produce(&brokers, &topic, Some(4), &inputs, kafka::Batching::records(10_000)).expect("produce");
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
    let zk = format!("{zk_server}/hailstorm-bench-{stamp}");
    let run = Run { root: &root, home: dir.path(), zk: &zk, brokers: &brokers, topic: &topic, env: &[] };
    let mut workers = run.workers();
    let session = Zk::connect(&zk, Duration::from_secs(10)).expect("connect to ZooKeeper");
    let engine = run.wordcount(&session, p.records);
    let engine_rate = p.records as f64 / engine.as_secs_f64();
    println!(
        "kafka-mode wordcount, 3 workers: {} records in {:.2}s (deploy to a complete round covering all) = {:.0} records/s ({:.2}M words/s)",
        p.records,
        engine.as_secs_f64(),
        engine_rate,
        engine_rate * WORDS_PER_LINE as f64 / 1e6
    );
    let embedded_rate = p.records as f64 / embedded(&root, dir.path(), &inputs);
    println!("embedded wordcount of the same records (4 files, parallelism 2): {embedded_rate:.0} records/s");
    println!(
        "ratio engine/raw read: {:.3}; engine / min(raw read, embedded): {:.3} (target at least 0.8)",
        engine_rate / raw_rate,
        engine_rate / raw_rate.min(embedded_rate)
    );

    // 3. Recovery from kill -9 of a worker, with records arriving: ten kills.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let more = dir.path().join("more.txt");
    write_lines(&more, 2_000, 11);
    let feeder = {
        let (brokers, topic, more, stop) = (brokers.clone(), topic.clone(), more.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                kafka::produce(&brokers, &topic, None, std::slice::from_ref(&more), kafka::Batching::records(100))
                    .expect("produce more");
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let kills: usize = env_or("HAILSTORM_BENCH_KILLS", "10").parse().expect("HAILSTORM_BENCH_KILLS");
    let mut times = Vec::new();
    for k in 0..kills {
        times.push(kill_one(&zk, &session, dir.path(), &mut workers, k));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    let shown: Vec<String> = times.iter().map(|t| format!("{t:.2}")).collect();
    println!(
        "recovery: kill -9 of a worker to the first complete round of the rebooted world, {kills} kills (default session timeout 6s): median {median:.2}s (target 1.5s, ratio {:.2}); sorted: {}",
        median / 1.5,
        shown.join(" ")
    );
    let _ = feeder.join();
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }

    // 4. The same wordcount over SASL_SSL (SCRAM-SHA-512), on the listener
    // `scripts/services.sh` starts: the price of TLS.
    match sasl_settings(dir.path()) {
        Some((sasl_brokers, settings)) => {
            let zk = format!("{zk_server}/hailstorm-bench-sasl-{stamp}");
            let env = [("HAILSTORM_KAFKA_CONFIG", settings.display().to_string())];
            let home = dir.path().join("sasl");
            let run = Run { root: &root, home: &home, zk: &zk, brokers: &sasl_brokers, topic: &topic, env: &env };
            // SAFETY of the process: no other thread reads the environment now (the feeder has stopped).
            std::env::set_var("HAILSTORM_KAFKA_CONFIG", &settings);
            let (records, _, sasl_raw) =
                kafka::raw_read(&sasl_brokers, &topic, Duration::from_secs(60)).expect("raw read over SASL_SSL");
            let sasl_raw_rate = records as f64 / sasl_raw.as_secs_f64();
            let mut workers = run.workers();
            let session = Zk::connect(&zk, Duration::from_secs(10)).expect("connect to ZooKeeper");
            let records = committed_in_topic(&sasl_brokers, &topic);
            let sasl_rate = records as f64 / run.wordcount(&session, records).as_secs_f64();
            println!(
                "over SASL_SSL ({sasl_brokers}, SCRAM-SHA-512): raw read {sasl_raw_rate:.0} records/s ({:.3} of plaintext), \
                 kafka-mode wordcount {sasl_rate:.0} records/s ({:.3} of plaintext; {:.3} of min(SASL_SSL raw read, embedded))",
                sasl_raw_rate / raw_rate,
                sasl_rate / engine_rate,
                sasl_rate / sasl_raw_rate.min(embedded_rate)
            );
            for w in &mut workers {
                let _ = w.kill();
                let _ = w.wait();
            }
        }
        None => println!("over SASL_SSL: skipped (HAILSTORM_TEST_KAFKA_SASL and its credentials are not set; see scripts/services.sh env)"),
    }
    if std::env::var_os("HAILSTORM_BENCH_KEEP").is_some() {
        println!("logs kept in {}", dir.keep().display());
    }
}
