//! Distributed mode against the real ZooKeeper and broker that
//! `scripts/test.sh` starts (or the ones HAILSTORM_TEST_ZOOKEEPER and
//! HAILSTORM_TEST_KAFKA name): separate worker processes, kill -9, SIGSTOP,
//! a ZooKeeper restart, hot swap — and every final table compared with a
//! count computed here from the produced files.

use std::collections::BTreeMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::common::*;

pub(crate) fn zookeeper() -> String {
    std::env::var("HAILSTORM_TEST_ZOOKEEPER").unwrap_or_else(|_| "127.0.0.1:2181".into())
}

/// Whether the tests use the ZooKeeper `scripts/services.sh` runs (which
/// they may restart), not one HAILSTORM_TEST_ZOOKEEPER names elsewhere.
pub(crate) fn zookeeper_is_ours() -> bool {
    zookeeper() == "127.0.0.1:2181"
}

pub(crate) fn kafka() -> String {
    std::env::var("HAILSTORM_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn reachable(addr: &str) -> bool {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// Cluster tests run one at a time: each starts several processes on a 2-core machine.
pub(crate) fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

struct Worker {
    child: Child,
    log: PathBuf,
    /// How it was started (data directory, extra arguments), to start it again.
    dir: PathBuf,
    extra: Vec<String>,
}

/// A cluster of worker processes in its own ZooKeeper root, with its own topic.
pub(crate) struct Cluster {
    pub(crate) sb: Sandbox,
    pub(crate) zk: String,
    pub(crate) topic: String,
    /// `HAILSTORM_ZK_AUTH` for the workers and commands, when the cluster is secured.
    pub(crate) auth: Option<String>,
    /// The broker its processes read and `produce` writes.
    pub(crate) kafka: KafkaAccess,
    /// More environment for its workers.
    pub(crate) worker_env: Vec<(String, String)>,
    /// Its snapshot store, when not a directory of its sandbox (`s3://`).
    pub(crate) store: Option<String>,
    workers: Vec<Worker>,
    _lock: MutexGuard<'static, ()>,
}

impl Cluster {
    pub(crate) fn new(name: &str, workers: usize) -> Cluster {
        Cluster::with_auth(name, workers, None)
    }

    /// A cluster whose workers and commands use ZooKeeper credentials `auth` (USER:PASSWORD).
    pub(crate) fn with_auth(name: &str, workers: usize, auth: Option<&str>) -> Cluster {
        Cluster::with(name, workers, auth, KafkaAccess::plain())
    }

    /// A cluster whose processes reach Kafka as `kafka` says (TLS, SASL).
    pub(crate) fn with_kafka(name: &str, workers: usize, kafka: KafkaAccess) -> Cluster {
        Cluster::with(name, workers, None, kafka)
    }

    /// A cluster whose workers have `env` in their environment as well.
    pub(crate) fn with_worker_env(name: &str, workers: usize, env: &[(&str, &str)]) -> Cluster {
        let mut c = Cluster::with(name, 0, None, KafkaAccess::plain());
        c.worker_env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        for _ in 0..workers {
            c.start_worker();
        }
        c
    }

    fn with(name: &str, workers: usize, auth: Option<&str>, kafka: KafkaAccess) -> Cluster {
        let lock = one_at_a_time();
        for (what, addr) in [("ZooKeeper", zookeeper()), ("the Kafka broker", kafka.brokers.clone())] {
            assert!(
                reachable(&addr),
                "{what} does not answer on {addr}: start the services with `scripts/services.sh start` (scripts/test.sh does)"
            );
        }
        let stamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let id = format!("{name}-{}-{stamp}", std::process::id());
        let mut c = Cluster {
            sb: Sandbox::new(),
            zk: format!("{}/hailstorm-test-{id}", zookeeper()),
            topic: format!("t-{id}"),
            auth: auth.map(str::to_string),
            kafka,
            worker_env: Vec::new(),
            store: None,
            workers: Vec::new(),
            _lock: lock,
        };
        for _ in 0..workers {
            c.start_worker();
        }
        c
    }

    pub(crate) fn start_worker(&mut self) {
        let dir = self.sb.path(&format!("worker-{}", self.workers.len()));
        self.start_worker_in(&dir);
    }

    /// Starts a worker whose data directory (its module cache) is `dir`.
    pub(crate) fn start_worker_in(&mut self, dir: &std::path::Path) {
        self.start_worker_with(dir, &[]);
    }

    /// Starts a worker with more arguments (`--listen`, `--advertise`).
    pub(crate) fn start_worker_with(&mut self, dir: &std::path::Path, extra: &[&str]) {
        let n = self.workers.len();
        let log = self.sb.path(&format!("worker-{n}.log"));
        let file = std::fs::File::create(&log).expect("create worker log");
        let child = self.spawn_worker(dir, extra, file);
        let extra = extra.iter().map(|s| s.to_string()).collect();
        self.workers.push(Worker { child, log, dir: dir.to_path_buf(), extra });
        // Registered once its log says so.
        let started = Instant::now();
        while self.worker_id(n).is_none() {
            assert!(started.elapsed() < Duration::from_secs(30), "worker {n} did not join:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn_worker(&self, dir: &std::path::Path, extra: &[&str], log: std::fs::File) -> Child {
        // Sinks may write the sandbox's `out`, unless the test says otherwise.
        let out = self.sb.path("out").display().to_string();
        let grants = if extra.contains(&"--allow-grants") { vec![] } else { vec!["--allow-grants", &out] };
        let session = if extra.contains(&"--session-timeout") { vec![] } else { vec!["--session-timeout", "3s"] };
        Command::new(bin())
            .args(["worker", "--zookeeper", &self.zk])
            .args(session)
            .envs(self.env())
            .envs(self.worker_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(extra)
            .arg("--data-dir")
            .arg(dir)
            .args(grants)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start a worker")
    }

    /// Starts worker `n` again after it was killed (its log goes on).
    pub(crate) fn restart(&mut self, n: usize) {
        let w = &self.workers[n];
        let log = std::fs::OpenOptions::new().append(true).open(&w.log).expect("open worker log");
        let extra: Vec<&str> = w.extra.iter().map(String::as_str).collect();
        let child = self.spawn_worker(&w.dir, &extra, log);
        self.workers[n].child = child;
    }

    /// How many workers were started.
    pub(crate) fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// The id worker `n` registered with most recently.
    pub(crate) fn worker_id(&self, n: usize) -> Option<String> {
        let log = std::fs::read_to_string(&self.workers.get(n)?.log).ok()?;
        log.lines()
            .rev()
            .filter(|l| l.contains(": listening on "))
            .find_map(|l| l.strip_prefix("hailstorm worker ")?.split(':').next().map(str::to_string))
    }

    /// The address worker `n` listens on, from its log.
    pub(crate) fn worker_addr(&self, n: usize) -> Option<String> {
        let log = std::fs::read_to_string(&self.workers.get(n)?.log).ok()?;
        let line = log.lines().rev().find(|l| l.contains(": listening on "))?;
        Some(line.split(": listening on ").nth(1)?.split(',').next()?.to_string())
    }

    /// Worker `n`'s log.
    pub(crate) fn log(&self, n: usize) -> String {
        self.workers.get(n).and_then(|w| std::fs::read_to_string(&w.log).ok()).unwrap_or_default()
    }

    pub(crate) fn logs(&self) -> String {
        let mut out = String::new();
        for (i, w) in self.workers.iter().enumerate() {
            let log = std::fs::read_to_string(&w.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out.push_str(&format!("--- worker {i} ({})\n", w.log.display()));
            for l in tail.iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    pub(crate) fn sets(&self) -> Vec<String> {
        vec![
            format!("cluster.zookeeper={:?}", self.zk),
            format!("cluster.kafka={:?}", self.kafka.brokers),
            format!("spouts.lines.source.kafka.topic={:?}", self.topic),
            format!("sinks.table.config.path={:?}", self.sb.table_path().display().to_string()),
            format!("sinks.table.grants.dirs=[{:?}]", self.sb.path("out").display().to_string()),
            format!(
                "snapshot.store={:?}",
                self.store.clone().unwrap_or_else(|| format!("file:{}", self.sb.path("store").display()))
            ),
            "snapshot.interval=\"500ms\"".into(),
        ]
    }

    pub(crate) fn produce(&self, files: &[PathBuf]) {
        self.kafka.produce(&self.topic, files, &[]);
    }

    /// Produces `files` one at a time on another thread, pausing after each.
    pub(crate) fn produce_in_background(&self, files: &[PathBuf], pause: Duration) -> std::thread::JoinHandle<()> {
        let (topic, files, kafka) = (self.topic.clone(), files.to_vec(), self.kafka.clone());
        std::thread::spawn(move || {
            for f in files {
                kafka.produce(&topic, std::slice::from_ref(&f), &[]);
                std::thread::sleep(pause);
            }
        })
    }

    pub(crate) fn deploy(&self, extra: &[String]) -> std::process::Output {
        let mut sets = self.sets();
        sets.extend(extra.iter().cloned());
        deploy_env("topologies/wordcount-kafka.toml", &sets, &self.env(), Duration::from_secs(300))
    }

    /// The environment of the cluster's processes: its credentials and Kafka settings, if any.
    pub(crate) fn env(&self) -> Vec<(&'static str, &str)> {
        let zk = self.auth.iter().map(|a| ("HAILSTORM_ZK_AUTH", a.as_str()));
        zk.chain(self.kafka.env()).collect()
    }

    pub(crate) fn status(&self) -> serde_json::Value {
        let mut cmd = Command::new(bin());
        cmd.args(["status", "--json", "--zookeeper", &self.zk]).envs(self.env());
        let out = run_limited(cmd, Duration::from_secs(60));
        assert_ok(&out);
        serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
    }

    /// The worker (index) that runs the negotiator.
    pub(crate) fn leader(&self) -> usize {
        let s = self.status();
        let leader = s["topologies"][0]["leader"].as_str().expect("a leader").to_string();
        (0..self.workers.len()).find(|&i| self.worker_id(i).as_deref() == Some(&leader)).expect("leader is ours")
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.status()["topologies"][0]["status"]["epoch"].as_u64().unwrap_or(0)
    }

    pub(crate) fn kill(&mut self, n: usize) {
        let w = &mut self.workers[n];
        w.child.kill().expect("kill -9 a worker");
        let _ = w.child.wait();
    }

    pub(crate) fn signal(&self, n: usize, sig: &str) {
        let pid = self.workers[n].child.id().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status().expect("run kill").success();
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// Waits until the committed table equals `want`.
    pub(crate) fn wait_for_table(&self, want: &BTreeMap<String, u64>, limit: Duration) {
        let started = Instant::now();
        loop {
            if self.sb.table_path().exists() && self.sb.table() == *want {
                return;
            }
            if started.elapsed() > limit {
                eprintln!("{}", self.logs());
                let got = if self.sb.table_path().exists() { self.sb.table() } else { BTreeMap::new() };
                assert_counts(&got, want);
                panic!("the table never matched");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(crate) fn wait_for_a_complete_round(&self) {
        self.wait_until("a complete round", Duration::from_secs(60), || {
            !self.status()["topologies"][0]["last_complete"].is_null()
        });
    }

    pub(crate) fn wait_until(&self, what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
        let started = Instant::now();
        while !f() {
            assert!(started.elapsed() < limit, "{what} did not happen within {limit:?}:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
}

/// Stops the ZooKeeper `scripts/services.sh` started and starts it again
/// after `secs` seconds. False (saying why) when that script did not start
/// the one running (on a fresh machine it always does); fails the test if
/// the restart fails.
pub(crate) fn restart_zookeeper(secs: u32) -> bool {
    let out = Command::new(root().join("scripts/services.sh"))
        .args(["restart-zookeeper", &secs.to_string()])
        .current_dir(root())
        .output()
        .expect("run services.sh");
    if out.status.code() == Some(3) {
        eprintln!("not restarting ZooKeeper: {}", String::from_utf8_lossy(&out.stderr).trim());
        return false;
    }
    assert!(out.status.success(), "restarting ZooKeeper failed:\n{}", String::from_utf8_lossy(&out.stderr));
    true
}

/// How processes reach a broker: its address and, for TLS or SASL, the
/// settings file `HAILSTORM_KAFKA_CONFIG` names.
#[derive(Clone)]
pub(crate) struct KafkaAccess {
    pub(crate) brokers: String,
    pub(crate) settings: Option<String>,
}

impl KafkaAccess {
    /// The plaintext broker of the tests.
    pub(crate) fn plain() -> KafkaAccess {
        KafkaAccess { brokers: kafka(), settings: None }
    }

    pub(crate) fn env(&self) -> Vec<(&'static str, &str)> {
        self.settings.iter().map(|f| ("HAILSTORM_KAFKA_CONFIG", f.as_str())).collect()
    }

    /// `hailstorm produce` of `files` into a 4-partition topic with extra arguments; fails the test on error.
    pub(crate) fn produce(&self, topic: &str, files: &[PathBuf], extra: &[&str]) {
        let mut cmd = Command::new(bin());
        cmd.args(["produce", "--brokers", &self.brokers, "--topic", topic, "--partitions", "4"]);
        cmd.args(extra).args(files).envs(self.env());
        assert_ok(&run_limited(cmd, Duration::from_secs(300)));
    }
}

/// `hailstorm produce` of `files` into a 4-partition topic; fails the test on error.
pub(crate) fn produce_to(topic: &str, files: &[PathBuf]) {
    produce_with(topic, files, &[]);
}

/// `hailstorm produce` with extra arguments (`--compression zstd`, say).
pub(crate) fn produce_with(topic: &str, files: &[PathBuf], extra: &[&str]) {
    KafkaAccess::plain().produce(topic, files, extra);
}

/// About `words` words in `parts` files.
pub(crate) fn inputs(c: &Cluster, seed: u64, words: usize, parts: usize) -> Vec<PathBuf> {
    corpus(&c.sb.path(&format!("data-{seed}")), seed, words, parts)
}

#[test]
fn three_workers_count_a_topic_exactly_while_it_is_produced() {
    let c = Cluster::new("basic", 3);
    let files = inputs(&c, 101, 600_000, 3);
    c.produce(&files[..1]);
    let out = c.deploy(&[]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("on 3 workers"), "{}", String::from_utf8_lossy(&out.stdout));
    c.produce(&files[1..]);
    c.wait_for_table(&count_words(&files), Duration::from_secs(180));
    let s = c.status();
    assert_eq!(s["workers"].as_array().map(Vec::len), Some(3));
    assert!(s["topologies"][0]["last_complete"]["round"].as_u64().is_some());
    for (p, lag) in s["topologies"][0]["lag"].as_object().expect("lag per partition") {
        assert_eq!(lag.as_u64(), Some(0), "partition {p} still lags");
    }
}

fn kill_mid_stream(name: &str, leader: bool) {
    kill_mid_stream_of(&mut Cluster::new(name, 3), 202 + u64::from(leader), leader);
}

/// Kills a worker of `c` (three workers; the negotiator's when `leader`) while
/// a corpus made from `seed` is produced, and checks the count.
pub(crate) fn kill_mid_stream_of(c: &mut Cluster, seed: u64, leader: bool) {
    let files = inputs(c, seed, 240_000, 8);
    c.produce(&files[..1]);
    assert_ok(&c.deploy(&[]));
    c.produce(&files[1..2]);
    // Wait for a complete round, so the kill lands on a cluster with state to restore.
    c.wait_for_a_complete_round();
    let epoch = c.epoch();
    let l = c.leader();
    let victim = if leader { l } else { (l + 1) % 3 };
    // The rest arrives a file at a time, before, during and after the kill.
    let producer = c.produce_in_background(&files[2..], Duration::from_millis(700));
    std::thread::sleep(Duration::from_millis(1500));
    c.kill(victim);
    producer.join().expect("producer thread");
    c.wait_until("a reboot without the killed worker", Duration::from_secs(60), || c.epoch() > epoch);
    c.wait_for_table(&count_words(&files), Duration::from_secs(180));
    let s = c.status();
    assert_eq!(s["workers"].as_array().map(Vec::len), Some(2), "the dead worker is still registered");
    assert_eq!(s["topologies"][0]["status"]["state"], "running");
    let victim_id = c.worker_id(victim).expect("victim id");
    assert!(
        !serde_json::to_string(&s["topologies"][0]["assignment"]).unwrap_or_default().contains(&victim_id),
        "instances are still placed on the dead worker: {s}"
    );
}

/// Peers notice a dead worker's closed connections at once: the world
/// reboots around it long before its ZooKeeper session (30 s here) expires.
#[test]
fn a_killed_worker_is_noticed_by_its_peers_before_its_session_expires() {
    let mut c = Cluster::new("noticed", 0);
    for i in 0..3 {
        let dir = c.sb.path(&format!("worker-{i}"));
        c.start_worker_with(&dir, &["--session-timeout", "30s"]);
    }
    let files = inputs(&c, 207, 120_000, 4);
    c.produce(&files[..1]);
    assert_ok(&c.deploy(&["snapshot.interval=\"300ms\"".into()]));
    c.produce(&files[1..2]);
    c.wait_for_a_complete_round();
    let (epoch, leader) = (c.epoch(), c.leader());
    let s = c.status();
    let placed = s["topologies"][0]["assignment"].as_object().expect("assignment").clone();
    let victim = (0..3)
        .find(|&i| i != leader && c.worker_id(i).is_some_and(|id| placed.contains_key(&id)))
        .expect("a placed worker that does not lead");
    let producer = c.produce_in_background(&files[2..], Duration::from_millis(300));
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    c.kill(victim);
    c.wait_until("a reboot", Duration::from_secs(25), || c.epoch() > epoch);
    let noticed = killed.elapsed();
    assert!(noticed < Duration::from_secs(10), "the reboot took {noticed:?}: it waited for the session");
    let log = c.log(leader);
    assert!(log.contains("lost the connection to worker"), "the leader did not hear of the lost peer:\n{log}");
    producer.join().expect("producer thread");
    c.wait_for_table(&count_words(&files), Duration::from_secs(180));
    eprintln!("kill -9 to the reboot: {:.2} s", noticed.as_secs_f64());
}

#[test]
fn kill_9_of_a_worker_mid_stream_loses_and_repeats_nothing() {
    kill_mid_stream("kill-worker", false);
}

#[test]
fn kill_9_of_the_negotiators_worker_mid_stream_loses_and_repeats_nothing() {
    kill_mid_stream("kill-leader", true);
}

#[test]
fn a_worker_paused_past_its_session_is_fenced() {
    paused_zombie_of(&Cluster::new("fence", 3));
}

/// What the cluster's store holds for rounds of epochs up to `epoch`: each
/// file or object with when it was written.
fn written_up_to_epoch(c: &Cluster, epoch: u64) -> Vec<(String, SystemTime)> {
    let round_of = |name: &str| name.parse::<u64>().unwrap_or(u64::MAX);
    let mut out = Vec::new();
    if let Some(url) = &c.store {
        let store = crate::s3::open(url);
        let root = store.root().join("rounds");
        for (path, meta) in store.remote().expect("an object store").list(&root).expect("list") {
            let rel = path.strip_prefix(&root).expect("under rounds").display().to_string();
            let round = round_of(rel.split('/').next().unwrap_or_default());
            let at = SystemTime::UNIX_EPOCH + Duration::from_millis(meta.modified_ms);
            if round >> 32 <= epoch {
                out.push((rel, at));
            }
        }
        return out;
    }
    for e in std::fs::read_dir(c.sb.path("store/rounds")).expect("rounds") {
        let e = e.expect("entry");
        if round_of(&e.file_name().to_string_lossy()) >> 32 > epoch {
            continue;
        }
        for f in std::fs::read_dir(e.path()).expect("round dir") {
            let f = f.expect("file");
            let modified = f.metadata().and_then(|m| m.modified()).expect("mtime");
            out.push((f.path().display().to_string(), modified));
        }
    }
    out
}

/// Pauses a worker of `c` (three workers, not the negotiator's) past its
/// session; after it resumes, nothing of an old epoch is written and the
/// count is exact.
pub(crate) fn paused_zombie_of(c: &Cluster) {
    let files = inputs(c, 303, 150_000, 3);
    c.produce(&files[..1]);
    assert_ok(&c.deploy(&[]));
    c.wait_for_a_complete_round();
    let old_epoch = c.epoch();
    let victim = (c.leader() + 1) % 3;
    let victim_id = c.worker_id(victim).expect("id");
    c.signal(victim, "-STOP");
    // Past the 3 s session: the others reboot the world without it.
    c.wait_until("a reboot without the paused worker", Duration::from_secs(60), || {
        let s = c.status();
        s["topologies"][0]["status"]["epoch"].as_u64().unwrap_or(0) > old_epoch
            && !s["workers"].to_string().contains(&victim_id)
    });
    c.produce(&files[1..2]);
    std::thread::sleep(Duration::from_secs(2));
    let resumed = SystemTime::now();
    c.signal(victim, "-CONT");
    c.produce(&files[2..]);
    c.wait_for_table(&count_words(&files), Duration::from_secs(180));
    std::thread::sleep(Duration::from_secs(2));
    // Nothing written for an old epoch after the paused worker resumed (the
    // object store's times are in whole seconds: a second's slack).
    let resumed = resumed - Duration::from_secs(1);
    for (what, at) in written_up_to_epoch(c, old_epoch) {
        assert!(at < resumed, "{what} (an old epoch's) was written after the fenced worker resumed:\n{}", c.logs());
    }
    let log = std::fs::read_to_string(&c.workers[victim].log).unwrap_or_default();
    assert!(
        log.contains("joining again") || log.contains("fenced"),
        "the paused worker did not notice it lost its session:\n{log}"
    );
    // The table is still right after the zombie had its chance to write.
    assert_counts(&c.sb.table(), &count_words(&files));
}

#[test]
fn hot_swap_of_the_count_module_on_a_running_cluster() {
    let c = Cluster::new("swap", 3);
    let files = inputs(&c, 404, 150_000, 3);
    c.produce(&files[..1]);
    assert_ok(&c.deploy(&[]));
    c.wait_for_table(&count_words(&files[..1]), Duration::from_secs(120));
    let producer = c.produce_in_background(&files[1..], Duration::ZERO);
    let out = c.deploy(&[
        format!("bolts.counts.module={:?}", wasm("count_words_v2.wasm")),
        "bolts.counts.build.command=\"cargo build --quiet --profile wasm --target wasm32-unknown-unknown -p count-words-v2\"".into(),
    ]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("generation 2"));
    producer.join().expect("producer");
    let mut want = count_words(&files);
    let total: u64 = want.values().sum();
    want.insert("(total)".into(), total);
    c.wait_for_table(&want, Duration::from_secs(180));
}

#[test]
fn a_zookeeper_restart_mid_run_loses_and_repeats_nothing() {
    if !zookeeper_is_ours() {
        eprintln!("skipped: ZooKeeper is external (HAILSTORM_TEST_ZOOKEEPER), so this test cannot restart it");
        return;
    }
    let c = Cluster::new("zk-restart", 3);
    let files = inputs(&c, 505, 150_000, 4);
    c.produce(&files[..1]);
    assert_ok(&c.deploy(&[]));
    c.produce(&files[1..2]);
    c.wait_for_a_complete_round();
    if !restart_zookeeper(2) {
        return;
    }
    c.produce(&files[2..]);
    c.wait_for_table(&count_words(&files), Duration::from_secs(180));
    assert_eq!(c.status()["topologies"][0]["status"]["state"], "running");
}

#[test]
fn stop_takes_a_final_round_and_deploy_resumes_from_it() {
    let c = Cluster::new("stop", 2);
    let files = inputs(&c, 606, 60_000, 2);
    c.produce(&files[..1]);
    assert_ok(&c.deploy(&[]));
    c.wait_for_table(&count_words(&files[..1]), Duration::from_secs(120));
    let mut cmd = Command::new(bin());
    cmd.args(["stop", "wordcount-kafka", "--zookeeper", &c.zk]);
    let out = run_limited(cmd, Duration::from_secs(120));
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped"));
    c.produce(&files[1..]);
    assert_ok(&c.deploy(&[]));
    c.wait_for_table(&count_words(&files), Duration::from_secs(120));
}

/// Runs `hailstorm ARGS` and returns (exit code, stderr).
pub(crate) fn hailstorm(args: &[&str], sets: &[String]) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    let out = run_limited(cmd, Duration::from_secs(120));
    (out.status.code(), stderr(&out))
}

#[test]
fn clear_errors_for_a_broker_or_zookeeper_that_is_down_and_a_wrong_root() {
    let c = Cluster::new("errors", 1);
    let file = topology("topologies/wordcount-kafka.toml").display().to_string();
    c.produce(&inputs(&c, 707, 1000, 1));

    // Broker down at deploy.
    let mut sets = c.sets();
    sets.push("cluster.kafka=\"127.0.0.1:1\"".into());
    let (code, err) = hailstorm(&["deploy", &file], &sets);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach the Kafka broker at 127.0.0.1:1"), "{err}");

    // A topic that does not exist.
    let mut sets = c.sets();
    sets.push("spouts.lines.source.kafka.topic=\"no-such-topic-here\"".into());
    let (code, err) = hailstorm(&["deploy", &file], &sets);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("topic `no-such-topic-here` does not exist"), "{err}");

    // ZooKeeper unreachable: deploy, worker, status.
    let mut sets = c.sets();
    sets.push("cluster.zookeeper=\"127.0.0.1:1\"".into());
    let (code, err) = hailstorm(&["deploy", &file], &sets);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach ZooKeeper at 127.0.0.1:1"), "{err}");
    let (code, err) = hailstorm(&["worker", "--zookeeper", "127.0.0.1:1"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot reach ZooKeeper at 127.0.0.1:1"), "{err}");
    let (code, err) = hailstorm(&["status", "--zookeeper", "127.0.0.1:1"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach ZooKeeper at 127.0.0.1:1"), "{err}");

    // A worker pointed at a ZooKeeper tree that is not a Hailstorm cluster.
    let wrong = format!("{}/zookeeper", zookeeper());
    let (code, err) = hailstorm(&["worker", "--zookeeper", &wrong], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/zookeeper") && err.contains("is not a Hailstorm cluster root"), "{err}");

    // A deploy to a root no worker joined.
    let mut sets = c.sets();
    sets.push(format!("cluster.zookeeper={:?}", format!("{}/hailstorm-nobody-{}", zookeeper(), std::process::id())));
    let (code, err) = hailstorm(&["deploy", &file], &sets);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("there is no Hailstorm cluster at") && err.contains("hailstorm worker --zookeeper"), "{err}");
}
