//! Connector sinks, exactly once: the word counts into an Apache Kafka topic
//! (one transaction per round) and into a PostgreSQL table (one database
//! transaction per round), checked by readers independent of the engine —
//! the broker's own console consumer reading `read_committed`, and `psql` —
//! against a sequential count, across kill -9, a paused (zombie) sink, and
//! outages of the broker and the database.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::kafka_tls::service;

const TO_KAFKA: &str = "topologies/wordcount-to-kafka.toml";
const TO_POSTGRES: &str = "topologies/wordcount-to-postgres.toml";

/// A name no other test (or earlier run) uses.
pub(crate) fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
    format!("{prefix}_{}_{}_{}", std::process::id(), nanos % 1_000_000_000, N.fetch_add(1, Ordering::Relaxed))
}

/// The `--set`s that point a connector sample at the sandbox: its inputs, its
/// store, and a topology name of its own (sink progress is kept per name).
fn sets(sb: &Sandbox, inputs: &[PathBuf], name: &str) -> Vec<String> {
    let mut s: Vec<String> = sb.sets(inputs).into_iter().filter(|s| !s.starts_with("sinks.table")).collect();
    s.push(format!("name={name:?}"));
    s
}

// ---- Kafka ----

/// Runs one of the broker's own tools; its standard output.
fn kafka_tool(class: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(root().join("scripts/services.sh"));
    cmd.arg("kafka-java").arg(class).args(args);
    let out = run_limited(cmd, Duration::from_secs(120));
    assert!(out.status.success(), "{class} {args:?} failed:\n{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn create_topic(brokers: &str, topic: &str, partitions: u32) {
    let p = partitions.to_string();
    kafka_tool(
        "org.apache.kafka.tools.TopicCommand",
        &["--bootstrap-server", brokers, "--create", "--topic", topic, "--partitions", &p],
    );
}

/// Every record of `topic` a `read_committed` consumer sees, as (key, value)
/// in the order of each partition.
fn read_committed(brokers: &str, topic: &str) -> Vec<(String, String)> {
    let out = kafka_tool(
        "org.apache.kafka.tools.consumer.ConsoleConsumer",
        &[
            "--bootstrap-server",
            brokers,
            "--topic",
            topic,
            "--from-beginning",
            "--isolation-level",
            "read_committed",
            "--formatter-property",
            "print.key=true",
            "--timeout-ms",
            "6000",
        ],
    );
    out.lines().filter_map(|l| l.split_once('\t')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The table a reader of the output topic rebuilds: each key's last value.
fn topic_table(brokers: &str, topic: &str) -> BTreeMap<String, u64> {
    let mut t = BTreeMap::new();
    for (k, v) in read_committed(brokers, topic) {
        t.insert(k, v.parse().unwrap_or_else(|_| panic!("`{v}` is not a count")));
    }
    t
}

/// The rounds the progress topic records for the sink, in order: each
/// committed transaction adds one, so a round committed twice, or a round of
/// an older instance after a newer one's, breaks the order.
fn assert_progress_in_order(brokers: &str, name: &str) -> Vec<u64> {
    let topic = format!("hailstorm-progress-{name}-out");
    let rounds: Vec<u64> = read_committed(brokers, &topic)
        .into_iter()
        .map(|(k, v)| {
            assert_eq!(k, format!("hailstorm-{name}-out-0"), "a progress record of another sink");
            v.parse().expect("a round")
        })
        .collect();
    assert!(!rounds.is_empty(), "the progress topic records no round");
    assert!(rounds.windows(2).all(|w| w[0] < w[1]), "rounds committed twice or out of order: {rounds:?}");
    rounds
}

/// A Kafka sink's `--set`s: a fresh three-partition topic on `brokers`.
fn kafka_sets(sb: &Sandbox, inputs: &[PathBuf], brokers: &str) -> (Vec<String>, String, String) {
    let (name, topic) = (unique("wck"), unique("counts"));
    create_topic(brokers, &topic, 3);
    let mut s = sets(sb, inputs, &name);
    s.push(format!("sinks.out.kafka.topic={topic:?}"));
    s.push(format!("sinks.out.kafka.brokers={brokers:?}"));
    (s, name, topic)
}

/// Deleting the store's record of the sink's round is what a kill -9 right
/// after the commit, before the engine recorded it, leaves behind.
fn forget_sink_round(sb: &Sandbox) {
    let _ = std::fs::remove_file(sb.path("store/sinks/out"));
}

#[test]
fn wordcount_into_kafka_is_exactly_once_across_kill_9() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 31, 6_000_000, 2);
    let brokers = service("HAILSTORM_TEST_KAFKA");
    let (sets, name, topic) = kafka_sets(&sb, &inputs, &brokers);
    crate::crash::kill_at_random_then_finish(TO_KAFKA, &sb, &sets, &[], |kill| {
        if kill % 2 == 0 {
            forget_sink_round(&sb);
        }
    });
    assert_counts(&topic_table(&brokers, &topic), &count_words(&inputs));
    assert_progress_in_order(&brokers, &name);
}

#[test]
fn a_kafka_sink_waits_out_a_broker_outage_and_resends_what_it_missed() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 32, 1_000_000, 2);
    let mut broker = crate::faults::OwnBroker::start();
    let (mut sets, name, topic) = kafka_sets(&sb, &inputs, &broker.addr.clone());
    sets.push("snapshot.interval=\"100ms\"".into());
    let log = sb.path("deploy.log");
    let mut child = follow(TO_KAFKA, &sets, &[], &log);
    wait_for_a_sink_round(&sb, &log);
    // 30 s without a broker: hundreds of rounds complete meanwhile.
    broker.kill_and_restart(Duration::from_secs(30));
    let want = count_words(&inputs);
    let started = Instant::now();
    while topic_table(&broker.addr, &topic) != want {
        assert!(started.elapsed() < Duration::from_secs(180), "never caught up:\n{}", tail(&log));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("sink `out` waits") && text.contains("sink `out` writes again"), "{}", tail(&log));
    assert_progress_in_order(&broker.addr, &name);
}

// ---- PostgreSQL ----

/// A schema of its own in the test database, and the URL that uses it.
pub(crate) struct Schema {
    name: String,
    pub(crate) url: String,
}

impl Schema {
    pub(crate) fn new() -> Schema {
        let base = service("HAILSTORM_TEST_POSTGRES");
        let name = unique("t");
        psql(&base, &format!("CREATE SCHEMA {name}"));
        let sep = if base.contains('?') { '&' } else { '?' };
        Schema { url: format!("{base}{sep}options=-c%20search_path%3D{name}"), name }
    }

    fn sql(&self, sql: &str) -> String {
        psql(&self.url, sql)
    }

    /// `word_counts` as the sample wants it, and a log of every round the
    /// sink commits (a trigger on `hailstorm_sink_rounds`).
    pub(crate) fn with_table(self) -> Schema {
        self.sql(&format!("CREATE TABLE word_counts (word text PRIMARY KEY, count bigint); {ROUND_LOG}"));
        self
    }

    pub(crate) fn table(&self) -> BTreeMap<String, u64> {
        self.sql("SELECT word, count FROM word_counts")
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(w, c)| (w.to_string(), c.parse().expect("a count")))
            .collect()
    }

    /// The rounds committed, in order: each once, increasing.
    pub(crate) fn assert_rounds_in_order(&self) -> Vec<u64> {
        committed_rounds(&self.url, None)
    }

    fn env(&self) -> [(&str, &str); 1] {
        [("HAILSTORM_PG_URL", self.url.as_str())]
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let base = service("HAILSTORM_TEST_POSTGRES");
        let _ =
            Command::new("psql").args([base.as_str(), "-qc", &format!("DROP SCHEMA {} CASCADE", self.name)]).output();
    }
}

/// Creates `hailstorm_sink_rounds` (as the sink would) and a log of every
/// round a sink commits there (a trigger), where they are missing.
const ROUND_LOG: &str = "
    CREATE TABLE IF NOT EXISTS hailstorm_sink_rounds (sink text PRIMARY KEY, fence bigint NOT NULL, round bigint NOT NULL);
    CREATE TABLE IF NOT EXISTS hailstorm_round_log (n bigserial, sink text, round bigint);
    CREATE OR REPLACE FUNCTION hailstorm_log_round() RETURNS trigger AS $$ BEGIN
      IF NEW.round <> OLD.round THEN INSERT INTO hailstorm_round_log (sink, round) VALUES (NEW.sink, NEW.round); END IF;
      RETURN NEW;
    END $$ LANGUAGE plpgsql;
    CREATE OR REPLACE TRIGGER hailstorm_log_round AFTER UPDATE ON hailstorm_sink_rounds
      FOR EACH ROW EXECUTE FUNCTION hailstorm_log_round();";

/// The rounds committed (of `sink`, or of every sink in the schema), in
/// order; fails unless there are some, each once, increasing.
fn committed_rounds(url: &str, sink: Option<&str>) -> Vec<u64> {
    let only = sink.map(|s| format!("WHERE sink = '{s}'")).unwrap_or_default();
    let rounds: Vec<u64> = psql(url, &format!("SELECT round FROM hailstorm_round_log {only} ORDER BY n"))
        .lines()
        .map(|l| l.parse().expect("round"))
        .collect();
    assert!(!rounds.is_empty(), "no round was committed");
    assert!(rounds.windows(2).all(|w| w[0] < w[1]), "rounds committed twice or out of order: {rounds:?}");
    rounds
}

/// Runs `sql` with psql (`-At`: unaligned rows, no headers); fails the test on error.
fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql").args([url, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql]).output().expect("run psql");
    assert!(out.status.success(), "psql failed on {sql}:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn wordcount_into_postgres_is_exactly_once_across_kill_9() {
    let sb = Sandbox::new();
    let db = Schema::new().with_table();
    let inputs = corpus(&sb.path("data"), 33, 12_000_000, 2);
    let name = unique("wcp");
    let sets = sets(&sb, &inputs, &name);
    crate::crash::kill_at_random_then_finish(TO_POSTGRES, &sb, &sets, &db.env(), |kill| {
        if kill % 2 == 0 {
            forget_sink_round(&sb);
        }
    });
    assert_counts(&db.table(), &count_words(&inputs));
    let rounds = db.assert_rounds_in_order();
    let recorded = db.sql(&format!("SELECT round FROM hailstorm_sink_rounds WHERE sink = '{name}/out'"));
    assert_eq!(
        recorded.trim().parse::<u64>().ok(),
        rounds.last().copied(),
        "hailstorm_sink_rounds shows the last round"
    );
}

/// A TCP proxy to the database that can cut every connection and refuse
/// new ones for a while: the database is unreachable, as in an outage.
pub(crate) struct Proxy {
    pub(crate) addr: String,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub(crate) fn start(to: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (cut, open) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (c, o, to) = (cut.clone(), open.clone(), to.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let Ok(server) = TcpStream::connect(&to) else { continue };
                if let Ok(mut v) = o.lock() {
                    v.extend(client.try_clone().ok());
                    v.extend(server.try_clone().ok());
                }
                pipe(client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                pipe(server, client);
            }
        });
        Proxy { addr, cut, open }
    }

    /// A proxy to the test database, and `db`'s URL through it.
    fn to_database(db: &Schema) -> (Proxy, String) {
        let base = service("HAILSTORM_TEST_POSTGRES");
        let target = base.split('@').nth(1).and_then(|h| h.split('/').next()).expect("host:port in the URL");
        let proxy = Proxy::start(target);
        let url = db.url.replacen(target, &proxy.addr, 1);
        (proxy, url)
    }

    pub(crate) fn cut(&self, on: bool) {
        self.cut.store(on, Ordering::SeqCst);
        if on {
            for s in self.open.lock().expect("lock").drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

/// `deploy --follow` in the background, its log in `log`.
fn follow(topology_file: &str, sets: &[String], env: &[(&str, &str)], log: &std::path::Path) -> std::process::Child {
    follow_with(topology_file, sets, env, log, &[])
}

/// [`follow`] with more arguments for `deploy`.
pub(crate) fn follow_with(
    topology_file: &str,
    sets: &[String],
    env: &[(&str, &str)],
    log: &std::path::Path,
    extra: &[&str],
) -> std::process::Child {
    let mut cmd = Command::new(bin());
    cmd.envs(env.iter().copied()).arg("deploy").arg(topology(topology_file)).arg("--follow").args(extra);
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    let file = std::fs::File::create(log).expect("log");
    cmd.stdout(std::process::Stdio::null()).stderr(file).spawn().expect("spawn deploy")
}

/// Waits until the store records a round of the sink (its output holds
/// something, so an outage then makes it fall behind).
fn wait_for_a_sink_round(sb: &Sandbox, log: &std::path::Path) {
    let started = Instant::now();
    while !sb.path("store/sinks/out").exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "the sink never recorded a round:\n{}", tail(log));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

#[test]
fn a_postgres_sink_waits_out_a_database_outage_and_rounds_with_no_change_commit_too() {
    let sb = Sandbox::new();
    let db = Schema::new().with_table();
    let inputs = corpus(&sb.path("data"), 34, 1_000_000, 2);
    let base = service("HAILSTORM_TEST_POSTGRES");
    let (proxy, url) = Proxy::to_database(&db);
    let mut sets = sets(&sb, &inputs, &unique("wcp"));
    sets.push("snapshot.interval=\"100ms\"".into());
    let log = sb.path("deploy.log");
    let mut child = follow(TO_POSTGRES, &sets, &[("HAILSTORM_PG_URL", &url)], &log);
    wait_for_a_sink_round(&sb, &log);
    proxy.cut(true);
    std::thread::sleep(Duration::from_secs(30));
    proxy.cut(false);
    let want = count_words(&inputs);
    let started = Instant::now();
    while db.table() != want {
        assert!(started.elapsed() < Duration::from_secs(120), "never caught up:\n{}", tail(&log));
        std::thread::sleep(Duration::from_millis(300));
    }
    // The input is all read: the rounds that follow change nothing, and commit all the same.
    let done = db.assert_rounds_in_order().len();
    let started = Instant::now();
    while db.assert_rounds_in_order().len() < done + 5 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "rounds without changes were not committed:\n{}",
            tail(&log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_counts(&db.table(), &want);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("sink `out` waits") && text.contains("sink `out` writes again"), "{}", tail(&log));
    assert!(
        !text.contains(base.split(':').nth(2).and_then(|p| p.split('@').next()).unwrap_or("-")),
        "the password shows"
    );
}

/// A database behind a proxy that can cut it off, and a followed
/// PostgreSQL wordcount writing through it (100 ms rounds) with a
/// metrics endpoint, once the table holds the first count; `extra` adds
/// `--set`s.
struct Outage {
    sb: Sandbox,
    db: Schema,
    proxy: Proxy,
    inputs: Vec<PathBuf>,
    log: PathBuf,
    child: std::process::Child,
    addr: String,
}

impl Outage {
    fn start(seed: u64, words: usize, extra: &[&str]) -> Outage {
        let sb = Sandbox::new();
        let db = Schema::new().with_table();
        let inputs = corpus(&sb.path("data"), seed, words, 2);
        let (proxy, url) = Proxy::to_database(&db);
        let mut sets = sets(&sb, &inputs, &unique("wcp"));
        sets.push("snapshot.interval=\"100ms\"".into());
        sets.extend(extra.iter().map(|s| s.to_string()));
        let log = sb.path("deploy.log");
        let metrics = ["--metrics-addr", "127.0.0.1:0"];
        let child = follow_with(TO_POSTGRES, &sets, &[("HAILSTORM_PG_URL", &url)], &log, &metrics);
        let mut o = Outage { sb, db, proxy, inputs, log, child, addr: String::new() };
        let started = Instant::now();
        while o.addr.is_empty() {
            assert!(started.elapsed() < Duration::from_secs(60), "no metrics address:\n{}", tail(&o.log));
            o.addr =
                crate::observe::address_in(&std::fs::read_to_string(&o.log).unwrap_or_default()).unwrap_or_default();
            std::thread::sleep(Duration::from_millis(50));
        }
        let first = count_words(&o.inputs);
        o.wait("the first rows", Duration::from_secs(120), || o.db.table() == first);
        o
    }

    /// The sum of the series of metric `name` whose labels contain `with`.
    fn metric(&self, name: &str, with: &str) -> f64 {
        crate::observe::sum(&crate::observe::samples(&crate::observe::get(&self.addr, "/metrics")), name, &[with])
    }

    fn wait(&self, what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
        let started = Instant::now();
        while !ok() {
            assert!(started.elapsed() < limit, "timed out waiting for {what}:\n{}", self.events());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Appends a fresh corpus to the inputs (the followed run reads it).
    fn append(&self, seed: u64, words: usize) {
        let more = corpus(&self.sb.path(&format!("more-{seed}")), seed, words, self.inputs.len());
        crate::observe::append(&self.inputs, &more);
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the table to hold `want`; fails showing the difference.
    fn converge(&self, want: &BTreeMap<String, u64>) {
        let started = Instant::now();
        let mut got = self.db.table();
        while got != *want && started.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(300));
            got = self.db.table();
        }
        if got != *want {
            eprintln!("{}", self.events());
        }
        assert_counts(&got, want);
    }

    /// The log without its progress lines.
    fn events(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('[')).collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Backpressure: a sink that cannot write holds the spouts once it has
/// `max_pending_rounds` complete rounds unwritten. The metrics and the web
/// view (its state, and the page in a browser) say which sink holds them
/// and why it waits, input that arrives meanwhile is not read, and once the
/// database is back every count is exact.
#[test]
fn a_sink_that_cannot_write_holds_the_spouts_after_its_pending_rounds() {
    let o = Outage::start(37, 200_000, &["sinks.out.max_pending_rounds=3"]);
    o.proxy.cut(true);
    o.wait("the sink to hold the spouts", Duration::from_secs(60), || {
        o.metric("hailstorm_sink_holding", "processor=\"out\"") == 1.0
    });
    assert_eq!(o.metric("hailstorm_sink_waiting", "processor=\"out\""), 1.0);
    let state = crate::observe::get(&o.addr, "/api/state");
    assert!(state.contains("\"sinks_holding\":[\"out\"]") && state.contains("\"sinks_waiting\":{\"out\":"), "{state}");
    let rounds = o.metric("hailstorm_rounds_complete_total", "");
    let position = o.metric("hailstorm_partition_position", "");
    o.append(38, 100_000);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(o.metric("hailstorm_partition_position", ""), position, "the spouts read while held");
    assert_eq!(o.metric("hailstorm_rounds_complete_total", ""), rounds, "rounds completed while held");
    // The page, as a browser renders it, says so on the sink's node.
    let dom = crate::observe::rendered(&format!("http://{}/", o.addr), None);
    let node = dom.split("data-name=\"out\"").nth(1).and_then(|n| n.split("</g>").next()).unwrap_or_default();
    assert!(node.contains("holds the spouts") && node.contains("waits: "), "the sink's node: {node}\n{dom}");
    o.proxy.cut(false);
    // The inputs now hold what was appended too.
    o.converge(&count_words(&o.inputs));
    o.wait("the hold to end", Duration::from_secs(30), || {
        o.metric("hailstorm_sink_holding", "processor=\"out\"") == 0.0
            && o.metric("hailstorm_sink_waiting", "processor=\"out\"") == 0.0
    });
    let text = o.log_text();
    assert!(text.contains("the spouts wait for it (backpressure)") && text.contains("caught up"), "{}", o.events());
    o.db.assert_rounds_in_order();
}

/// A sink allowed to fall far behind (`max_pending_rounds` over the 32
/// rounds the store keeps changes for) while the input keeps changing gets
/// the whole state once it writes again, and the table is exact.
#[test]
fn a_sink_that_fell_behind_gets_the_whole_state_and_is_exact() {
    let o = Outage::start(39, 100_000, &["sinks.out.max_pending_rounds=100000"]);
    o.proxy.cut(true);
    let at_cut = o.metric("hailstorm_rounds_complete_total", "");
    // Changes in many rounds: their chains get compacted and the deltas the sink would need collected.
    for i in 0..15 {
        o.append(100 + i, 5_000);
        std::thread::sleep(Duration::from_millis(400));
    }
    o.wait("rounds to go on without the sink", Duration::from_secs(60), || {
        o.metric("hailstorm_rounds_complete_total", "") >= at_cut + 60.0
    });
    assert_eq!(o.metric("hailstorm_sink_holding", "processor=\"out\""), 0.0, "held under a bound it never reached");
    o.proxy.cut(false);
    o.converge(&count_words(&o.inputs));
    let text = o.log_text();
    assert!(text.contains("sink `out` fell behind") && text.contains("whole state"), "{}", o.events());
    o.db.assert_rounds_in_order();
}

// ---- clear errors ----

fn deploy_fails(topology_file: &str, sets: &[String], env: &[(&str, &str)], want: &[&str]) -> String {
    let started = Instant::now();
    let out = deploy_env(topology_file, sets, env, Duration::from_secs(120));
    let err = stderr(&out);
    assert!(!out.status.success(), "deploy succeeded:\n{err}");
    for w in want {
        assert!(err.contains(w), "expected {w:?} in:\n{err}");
    }
    assert!(!err.contains("thread '"), "the host panicked:\n{err}");
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    err
}

#[test]
fn postgres_set_up_errors_are_clear() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 35, 2_000, 1);
    let sets = sets(&sb, &inputs, &unique("wcp"));
    let db = Schema::new();
    let env = db.env();
    deploy_fails(TO_POSTGRES, &sets, &[], &["sink `out`", "HAILSTORM_PG_URL is not set"]);
    deploy_fails(TO_POSTGRES, &sets, &env, &["table `word_counts` does not exist", "CREATE TABLE word_counts"]);
    db.sql("CREATE TABLE word_counts (word text, count text)");
    deploy_fails(
        TO_POSTGRES,
        &sets,
        &env,
        &["column `count` of table `word_counts` is text, but the serializer writes bigint"],
    );
    db.sql("ALTER TABLE word_counts ALTER COLUMN count TYPE bigint USING count::bigint");
    deploy_fails(TO_POSTGRES, &sets, &env, &["no primary key (or unique index) on (word)"]);
    db.sql("ALTER TABLE word_counts ADD PRIMARY KEY (word)");
    // Bad credentials: the password is never printed.
    let bad = db.url.replacen("hailstorm:", "hailstorm:WRONG", 1).replacen("@", "x@", 1);
    let err = deploy_fails(TO_POSTGRES, &sets, &[("HAILSTORM_PG_URL", &bad)], &["password authentication failed"]);
    assert!(!err.contains("WRONG"), "the password shows:\n{err}");
    // Output the table would not take: the run stops naming the sink, the entry and the round.
    let mut narrow = sets.clone();
    narrow.push("sinks.out.config.count_as=\"integer\"".into());
    deploy_fails(
        TO_POSTGRES,
        &narrow,
        &env,
        &[
            "sink `out`: the serializer's output for entry `",
            "of counts/",
            "in round ",
            "column `count` (bigint): 4 bytes, expected 8",
        ],
    );
    assert!(db.table().is_empty(), "a malformed round was written in part");
    // A Kafka serializer cannot feed a table.
    let mut kafka = sets;
    kafka.push(format!("sinks.out.serializer={:?}", wasm("counts_to_kafka.wasm")));
    deploy_fails(TO_POSTGRES, &kafka, &env, &["writes Kafka records, but the sink writes to PostgreSQL"]);
}

#[test]
fn kafka_set_up_errors_are_clear() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 36, 2_000, 1);
    let brokers = service("HAILSTORM_TEST_KAFKA");
    let (sets, _, _) = kafka_sets(&sb, &inputs, &brokers);
    let mut missing = sets.clone();
    missing.push("sinks.out.kafka.topic=\"no-such-topic-here\"".into());
    deploy_fails(TO_KAFKA, &missing, &[], &["sink `out`", "topic `no-such-topic-here` does not exist on"]);
    let mut long = sets.clone();
    long.push("sinks.out.kafka.transaction_timeout=\"20m\"".into());
    deploy_fails(TO_KAFKA, &long, &[], &["longer than the broker's transaction.max.timeout.ms (900000 ms)"]);
    let mut rows = sets.clone();
    rows.push(format!("sinks.out.serializer={:?}", wasm("counts_to_rows.wasm")));
    deploy_fails(TO_KAFKA, &rows, &[], &["writes table rows, but the sink writes to Kafka"]);
    // A wrong password on the SASL listener: refused at once, the password not shown.
    let props = sb.path("sasl.properties");
    let ca = service("HAILSTORM_TEST_KAFKA_CA");
    let lines = format!(
        "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\nsasl.username=hailstorm\nsasl.password=NOT-IT\nssl.ca.location={ca}\n"
    );
    std::fs::write(&props, lines).expect("write settings");
    let mut sasl = sets;
    sasl.push(format!("sinks.out.kafka.brokers={:?}", service("HAILSTORM_TEST_KAFKA_SASL")));
    let p = props.display().to_string();
    let err = deploy_fails(TO_KAFKA, &sasl, &[("HAILSTORM_KAFKA_CONFIG", &p)], &["sink `out`", "refused this client"]);
    assert!(!err.contains("NOT-IT"), "the password shows:\n{err}");
}

// ---- in a cluster ----

/// A cluster running the Kafka sample with a second sink `pg` into a
/// PostgreSQL table (the database of `HAILSTORM_TEST_POSTGRES`, public
/// schema): (cluster, output topic, table, topology name).
fn cluster_with_both_sinks(label: &str, seed: u64) -> (crate::cluster::Cluster, Vec<PathBuf>, String, String, String) {
    use crate::cluster::{inputs, Cluster};
    let c = Cluster::new(label, 3);
    let files = inputs(&c, seed, 240_000, 6);
    c.produce(&files[..1]);
    let (name, topic, table) = (unique("wcc"), unique("counts"), unique("word_counts"));
    let url = service("HAILSTORM_TEST_POSTGRES");
    create_topic(&c.kafka.brokers, &topic, 3);
    psql(&url, &format!("CREATE TABLE {table} (word text PRIMARY KEY, count bigint); {ROUND_LOG}"));
    let sets = vec![
        format!("name={name:?}"),
        format!("cluster={{ zookeeper = {:?}, kafka = {:?} }}", c.zk, c.kafka.brokers),
        format!("spouts.lines.source={{ kafka = {{ topic = {:?} }} }}", c.topic),
        format!("snapshot.store={:?}", format!("file:{}", c.sb.path("store").display())),
        "snapshot.interval=\"500ms\"".into(),
        format!("sinks.out.kafka.topic={topic:?}"),
        format!("sinks.out.kafka.brokers={:?}", c.kafka.brokers),
        "sinks.pg.inputs=[\"counts\"]".into(),
        format!("sinks.pg.serializer={:?}", wasm("counts_to_rows.wasm")),
        format!("sinks.pg.postgres={{ table = {table:?}, url_env = \"HAILSTORM_TEST_POSTGRES\" }}"),
    ];
    assert_ok(&deploy_env(TO_KAFKA, &sets, &c.env(), Duration::from_secs(300)));
    c.wait_for_a_complete_round();
    (c, files, topic, table, name)
}

/// The worker (index) that runs sink number `n`.
fn sink_worker(c: &crate::cluster::Cluster, n: usize) -> usize {
    let s = c.status();
    let want = serde_json::Value::String(format!("sink {n}"));
    let id = s["topologies"][0]["assignment"]
        .as_object()
        .and_then(|a| a.iter().find(|(_, eps)| eps.as_array().is_some_and(|e| e.contains(&want))))
        .map(|(w, _)| w.clone())
        .unwrap_or_else(|| panic!("no worker runs sink {n}: {s}"));
    (0..c.worker_count()).find(|&i| c.worker_id(i).as_deref() == Some(&id)).expect("a worker of ours")
}

/// Both outputs equal the count of `files`, and each committed its rounds once, in order.
fn wait_for_both(c: &crate::cluster::Cluster, files: &[PathBuf], topic: &str, table: &str, name: &str) {
    let want = count_words(files);
    let url = service("HAILSTORM_TEST_POSTGRES");
    let pg = || -> BTreeMap<String, u64> {
        psql(&url, &format!("SELECT word, count FROM {table}"))
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(w, n)| (w.to_string(), n.parse().expect("count")))
            .collect()
    };
    c.wait_until("the table to match the count", Duration::from_secs(180), || pg() == want);
    c.wait_until("the topic to match the count", Duration::from_secs(180), || {
        topic_table(&c.kafka.brokers, topic) == want
    });
    // Stopped, so that the progress topic has an end to read to.
    let mut cmd = Command::new(bin());
    cmd.args(["stop", name, "--zookeeper", &c.zk]).envs(c.env());
    assert_ok(&run_limited(cmd, Duration::from_secs(120)));
    assert_progress_in_order(&c.kafka.brokers, name);
    committed_rounds(&url, Some(&format!("{name}/pg")));
    psql(&url, &format!("DROP TABLE {table}"));
}

#[test]
fn a_cluster_writes_kafka_and_postgres_exactly_once_with_the_sinks_worker_killed() {
    let (mut c, files, topic, table, name) = cluster_with_both_sinks("sinks-kill", 41);
    let epoch = c.epoch();
    let victim = sink_worker(&c, 0);
    let producer = c.produce_in_background(&files[1..], Duration::from_millis(500));
    std::thread::sleep(Duration::from_millis(1200));
    c.kill(victim);
    producer.join().expect("producer");
    c.wait_until("a reboot without the killed worker", Duration::from_secs(60), || c.epoch() > epoch);
    wait_for_both(&c, &files, &topic, &table, &name);
}

/// A worker paused past its session (SIGSTOP) while its sinks hold open
/// transactions, then resumed (SIGCONT) after a newer epoch took over: it
/// commits nothing, in the topic or the table.
#[test]
fn a_zombie_sink_cannot_commit_after_its_epoch_ended() {
    let (c, files, topic, table, name) = cluster_with_both_sinks("sinks-zombie", 42);
    let epoch = c.epoch();
    let victim = sink_worker(&c, 0);
    let producer = c.produce_in_background(&files[1..], Duration::from_millis(400));
    std::thread::sleep(Duration::from_millis(1000));
    c.signal(victim, "-STOP");
    c.wait_until("a new epoch without the paused worker", Duration::from_secs(60), || c.epoch() > epoch);
    std::thread::sleep(Duration::from_secs(3));
    c.signal(victim, "-CONT");
    producer.join().expect("producer");
    // Its session expired, or ZooKeeper stopped answering it while it was paused: either way it stops.
    c.wait_until("the paused worker to leave its old epoch", Duration::from_secs(60), || {
        c.log(victim).contains("stopping its instances")
    });
    wait_for_both(&c, &files, &topic, &table, &name);
}

/// An output written by another deployment (another store under the same
/// topology name) records a round the new store never reached: the sink
/// says so and starts over from the whole state instead of skipping rounds.
#[test]
fn an_output_of_another_deployment_is_rewritten_not_skipped() {
    let db = Schema::new().with_table();
    let name = unique("wcp");
    let first = Sandbox::new();
    let a = corpus(&first.path("data"), 37, 200_000, 1);
    let mut sets_a = sets(&first, &a, &name);
    sets_a.push("snapshot.interval=\"50ms\"".into());
    assert_ok(&deploy_env(TO_POSTGRES, &sets_a, &db.env(), Duration::from_secs(120)));
    let second = Sandbox::new();
    let b = corpus(&second.path("data"), 38, 20_000, 1);
    let out = deploy_env(TO_POSTGRES, &sets(&second, &b, &name), &db.env(), Duration::from_secs(120));
    assert_ok(&out);
    assert!(stderr(&out).contains("another deployment wrote it"), "{}", stderr(&out));
    let (got, want) = (db.table(), count_words(&b));
    for (word, n) in &want {
        assert_eq!(got.get(word), Some(n), "`{word}` in the table of the second deployment");
    }
}

/// In a cluster, a sink whose database is unreachable is named by
/// `hailstorm status` (and the note goes once it writes again); the table
/// is exact afterwards.
#[test]
fn status_names_a_cluster_sink_that_waits_for_its_database() {
    use crate::cluster::{inputs, Cluster};
    let db = Schema::new().with_table();
    let (proxy, url) = Proxy::to_database(&db);
    let c = Cluster::with_worker_env("sink-waits", 2, &[("HAILSTORM_SINK_TEST_PG_URL", &url)]);
    let files = inputs(&c, 43, 60_000, 2);
    c.produce(&files[..1]);
    let sets = vec![
        format!("name={:?}", unique("wcs")),
        format!("cluster={{ zookeeper = {:?}, kafka = {:?} }}", c.zk, c.kafka.brokers),
        format!("spouts.lines.source={{ kafka = {{ topic = {:?} }} }}", c.topic),
        format!("snapshot.store={:?}", format!("file:{}", c.sb.path("store").display())),
        "snapshot.interval=\"500ms\"".into(),
        "sinks.out.postgres.url_env=\"HAILSTORM_SINK_TEST_PG_URL\"".into(),
    ];
    let mut env = c.env();
    env.push(("HAILSTORM_SINK_TEST_PG_URL", url.as_str()));
    assert_ok(&deploy_env(TO_POSTGRES, &sets, &env, Duration::from_secs(300)));
    c.wait_until("the first rows", Duration::from_secs(120), || db.table() == count_words(&files[..1]));
    proxy.cut(true);
    c.produce(&files[1..]);
    let waits = |c: &Cluster| c.status()["topologies"][0]["sinks_waiting"]["out"].as_str().map(str::to_string);
    c.wait_until("status to name the waiting sink", Duration::from_secs(60), || waits(&c).is_some());
    let why = waits(&c).unwrap_or_default();
    assert!(why.contains("cannot connect to the database") || why.contains("connection"), "{why}");
    proxy.cut(false);
    c.wait_until("the table to match the count", Duration::from_secs(120), || db.table() == count_words(&files));
    c.wait_until("the note to go", Duration::from_secs(30), || waits(&c).is_none());
}
