//! Faults that used to wedge a cluster or a run, each reproduced: a worker
//! that cannot start its share, a damaged round in the cluster's store,
//! input that no retry can bring back, a file that grows during a bounded
//! run, a record too long to hold.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster::{inputs, produce_to, produce_with, Cluster};
use crate::common::*;

fn stop(c: &Cluster) {
    let mut cmd = Command::new(bin());
    cmd.args(["stop", "wordcount-kafka", "--zookeeper", &c.zk]);
    assert_ok(&run_limited(cmd, Duration::from_secs(120)));
}

/// The topology's status: (state, message).
fn state(c: &Cluster) -> (String, String) {
    let s = c.status();
    let st = &s["topologies"][0]["status"];
    (st["state"].as_str().unwrap_or_default().to_string(), st["message"].as_str().unwrap_or_default().to_string())
}

#[test]
fn a_worker_that_cannot_start_its_share_is_placed_around() {
    let mut c = Cluster::new("cannot-start", 2);
    // Its module cache cannot be written: it can never start a share.
    c.start_worker_in(std::path::Path::new("/proc/self"));
    let bad = c.worker_id(2).expect("the third worker joined");
    let files = inputs(&c, 801, 30_000, 3);
    c.produce(&files);
    assert_ok(&c.deploy(&[]));
    c.wait_for_table(&count_words(&files), Duration::from_secs(120));
    let s = c.status();
    let assignment = &s["topologies"][0]["assignment"];
    assert!(assignment.get(&bad).is_none(), "the failing worker still has a share: {assignment}");
    assert_eq!(state(&c).0, "running");
    let logs = c.logs();
    assert!(logs.contains(&format!("worker {bad} cannot start its share")), "{logs}");
}

#[test]
fn a_damaged_round_in_the_cluster_store_falls_back_to_the_previous_one() {
    let c = Cluster::new("damaged", 2);
    let files = inputs(&c, 802, 60_000, 2);
    c.produce(&files[..1]);
    assert_ok(&c.deploy(&[]));
    c.wait_for_table(&count_words(&files[..1]), Duration::from_secs(120));
    stop(&c);
    // Damage every instance's file of the final round (and a base written at it).
    let mut rounds: Vec<_> =
        std::fs::read_dir(c.sb.path("store/rounds")).expect("rounds").flatten().map(|e| e.path()).collect();
    rounds.sort();
    assert!(rounds.len() >= 2, "two complete rounds are kept: {rounds:?}");
    let newest = rounds.last().expect("a round").clone();
    let base = c.sb.path("store/bases").join(newest.file_name().expect("name"));
    let mut victims: Vec<_> = std::fs::read_dir(&newest).expect("round").flatten().map(|e| e.path()).collect();
    victims.extend(std::fs::read_dir(&base).into_iter().flatten().flatten().map(|e| e.path()));
    victims.retain(|p| p.extension().is_some_and(|x| x == "delta" || x == "base"));
    assert!(!victims.is_empty());
    for v in victims {
        let mut bytes = std::fs::read(&v).expect("read");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xFF;
        std::fs::write(&v, bytes).expect("damage");
    }
    c.produce(&files[1..]);
    assert_ok(&c.deploy(&[]));
    c.wait_for_table(&count_words(&files), Duration::from_secs(180));
    let logs = c.logs();
    assert!(logs.contains("is damaged"), "{logs}");
}

#[test]
fn input_that_no_retry_brings_back_fails_the_topology_with_the_reason() {
    let c = Cluster::new("gone", 2);
    let files = inputs(&c, 803, 20_000, 1);
    c.produce(&files);
    assert_ok(&c.deploy(&[]));
    c.wait_for_table(&count_words(&files), Duration::from_secs(120));
    stop(&c);
    // The same partitions now name a fresh topic with far fewer records:
    // the snapshot's offsets are past its end.
    let other = format!("{}-other", c.topic);
    let small = corpus(&c.sb.path("small"), 804, 200, 1);
    produce_to(&other, &small);
    let out = c.deploy(&[format!("spouts.lines.source.kafka.topic={other:?}")]);
    if !out.status.success() {
        // The world failed before deploy stopped waiting: it says why.
        let err = stderr(&out);
        assert!(err.contains("could not run") && (err.contains(&other) || err.contains("lines/0")), "{err}");
    }
    let started = Instant::now();
    loop {
        let (st, message) = state(&c);
        if st == "failed" {
            assert!(message.contains(&other) || message.contains("lines/0"), "{message}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "still {st}: {message}\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A second broker of the test's own: Apache Kafka, plaintext, as
/// `scripts/services.sh kafka-run` starts it, with its log in a directory of
/// its own so that a restart finds it again.
pub(crate) struct OwnBroker {
    child: std::process::Child,
    pub(crate) addr: String,
    dir: tempfile::TempDir,
    ports: (u16, u16),
}

impl OwnBroker {
    pub(crate) fn start() -> OwnBroker {
        let dir = tempfile::tempdir().expect("a directory for the broker");
        let port =
            || std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
        let ports = (port(), port());
        let child = OwnBroker::spawn(dir.path(), ports);
        let b = OwnBroker { child, addr: format!("127.0.0.1:{}", ports.0), dir, ports };
        b.wait_until_started(0);
        b
    }

    fn spawn(dir: &std::path::Path, (port, controller): (u16, u16)) -> std::process::Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("broker.log")).expect("log");
        Command::new(root().join("scripts/services.sh"))
            .arg("kafka-run")
            .arg(dir.join("broker"))
            .args([port.to_string(), controller.to_string()])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start a broker with scripts/services.sh kafka-run")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    /// Waits until the log says the `n`th start (from 0) is done.
    fn wait_until_started(&self, n: usize) {
        let started = Instant::now();
        while self.log().matches("Kafka Server started").count() <= n {
            assert!(started.elapsed() < Duration::from_secs(90), "the second broker did not start:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().expect("kill").success();
        assert!(ok, "kill {sig} of the second broker failed");
    }

    /// kill -9, then (after `down`) the same broker again on its log.
    pub(crate) fn kill_and_restart(&mut self, down: Duration) {
        let starts = self.log().matches("Kafka Server started").count();
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = OwnBroker::spawn(self.dir.path(), self.ports);
        self.wait_until_started(starts);
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_topology_whose_broker_hangs_does_not_disturb_the_others() {
    let mut c = Cluster::new("broker-hangs", 3);
    let files = inputs(&c, 809, 40_000, 3);
    c.produce(&files[..1]);
    assert_ok(&c.deploy(&[]));
    c.wait_for_table(&count_words(&files[..1]), Duration::from_secs(120));
    // Topology `zz-b` reads a topic on a broker of its own, which then hangs.
    let own = OwnBroker::start();
    let b_files = inputs(&c, 810, 2_000, 1);
    let mut cmd = Command::new(bin());
    cmd.args(["produce", "--brokers", &own.addr, "--topic", "b", "--partitions", "2"]).args(&b_files);
    assert_ok(&run_limited(cmd, Duration::from_secs(120)));
    let b_table = c.sb.path("out/b.tsv");
    assert_ok(&c.deploy(&[
        "name=\"zz-b\"".into(),
        format!("cluster.kafka={:?}", own.addr),
        "spouts.lines.source.kafka.topic=\"b\"".into(),
        format!("sinks.table.config.path={:?}", b_table.display().to_string()),
        format!("snapshot.store={:?}", format!("file:{}", c.sb.path("store-b").display())),
    ]));
    let started = Instant::now();
    while !b_table.exists() || read_table(&b_table) != count_words(&b_files) {
        assert!(started.elapsed() < Duration::from_secs(120), "zz-b never counted its topic:\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    own.signal("-STOP");
    // A worker that is not the leader dies: both worlds reboot, and zz-b's
    // reboot must wait for its broker without holding up anything else.
    let leader = c.leader();
    let victim = (0..3).find(|&i| i != leader).expect("a worker that is not the leader");
    c.kill(victim);
    c.wait_until("wordcount-kafka placed on the two live workers", Duration::from_secs(60), || {
        c.status()["topologies"][0]["assignment"].as_object().is_some_and(|a| a.len() == 2)
    });
    let epoch = c.epoch();
    c.produce(&files[1..]);
    c.wait_for_table(&count_words(&files), Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(c.epoch(), epoch, "wordcount-kafka was rebooted again while zz-b waited:\n{}", c.logs());
    let s = c.status();
    let b = s["topologies"].as_array().and_then(|t| t.iter().find(|t| t["name"] == "zz-b")).expect("zz-b");
    assert_eq!(b["status"]["state"], "waiting", "{b}");
    own.signal("-CONT");
}

/// A TCP relay the test can pause: while paused it moves no bytes (the
/// connections stay open, as across a cut link).
pub(crate) struct Relay {
    pub(crate) addr: String,
    paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    /// Starts the cluster's next worker behind a relay: the other workers
    /// reach it only through the relay (its advertised address).
    pub(crate) fn start_worker_behind(c: &mut Cluster) -> Relay {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let listen = format!("127.0.0.1:{port}");
        let relay = Relay::start(listen.clone());
        let dir = c.sb.path(&format!("worker-{}", c.worker_count()));
        c.start_worker_with(&dir, &["--listen", &listen, "--advertise", &relay.addr]);
        relay
    }

    pub(crate) fn start(to: String) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let addr = listener.local_addr().expect("addr").to_string();
        let paused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let p = paused.clone();
        std::thread::spawn(move || {
            for inbound in listener.incoming().flatten() {
                let Ok(outbound) = std::net::TcpStream::connect(&to) else { continue };
                for (from, into) in [(&inbound, &outbound), (&outbound, &inbound)] {
                    let (mut from, mut into) = (from.try_clone().expect("clone"), into.try_clone().expect("clone"));
                    let p = p.clone();
                    std::thread::spawn(move || pump(&mut from, &mut into, &p));
                }
            }
        });
        Relay { addr, paused }
    }

    pub(crate) fn pause(&self, yes: bool) {
        self.paused.store(yes, std::sync::atomic::Ordering::SeqCst);
    }
}

fn pump(from: &mut std::net::TcpStream, into: &mut std::net::TcpStream, paused: &std::sync::atomic::AtomicBool) {
    use std::io::Read;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if paused.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if into.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

#[test]
fn a_cut_between_two_workers_ends_the_round_and_the_world_recovers() {
    let mut c = Cluster::new("cut", 1);
    // The second worker is reached through a relay the test can cut.
    let relay = Relay::start_worker_behind(&mut c);
    let files = inputs(&c, 811, 60_000, 3);
    c.produce(&files[..1]);
    assert_ok(&c.deploy(&["snapshot.round_timeout=\"4s\"".into()]));
    c.wait_for_table(&count_words(&files[..1]), Duration::from_secs(120));
    let epoch = c.epoch();
    relay.pause(true);
    let cut = Instant::now();
    c.produce(&files[1..2]);
    c.wait_until("the world rebooted after the cut", Duration::from_secs(60), || c.epoch() > epoch);
    let rebooted = cut.elapsed();
    assert!(c.logs().contains("did not complete within"), "{}", c.logs());
    relay.pause(false);
    c.produce(&files[2..]);
    c.wait_for_table(&count_words(&files), Duration::from_secs(120));
    eprintln!(
        "cut to reboot: {:.1} s; cut to the full table: {:.1} s",
        rebooted.as_secs_f64(),
        cut.elapsed().as_secs_f64()
    );
}

#[test]
fn a_zstd_compressed_topic_is_counted_exactly() {
    let c = Cluster::new("zstd", 2);
    let files = inputs(&c, 807, 40_000, 2);
    produce_with(&c.topic, &files, &["--compression", "zstd"]);
    assert_ok(&c.deploy(&[]));
    c.wait_for_table(&count_words(&files), Duration::from_secs(120));
}

#[test]
fn a_bounded_run_reads_files_to_their_length_at_start_even_as_they_grow() {
    let sb = Sandbox::new();
    let small = corpus(&sb.path("small"), 805, 1_000, 1);
    let large = corpus(&sb.path("large"), 806, 3_000_000, 1);
    let inputs = vec![small[0].clone(), large[0].clone()];
    let want = count_words(&inputs);
    // A tenth of a second in, the small file (long read to its end) grows by
    // 200,000 words, and keeps growing while the run goes on.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, grow) = (stop.clone(), small[0].clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut f = std::fs::OpenOptions::new().append(true).open(&grow).expect("open");
            f.write_all("late late late late\n".repeat(50_000).as_bytes()).expect("append");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(b"late late\nlate ").expect("append");
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let out = deploy("topologies/wordcount.toml", &sb.sets(&inputs), Duration::from_secs(90));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().expect("writer");
    assert_ok(&out);
    let mut got = sb.table();
    got.remove("late");
    assert_counts(&got, &want);
}

#[test]
fn two_runs_on_one_store_and_two_topologies_on_one_store_are_refused() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 812, 10_000, 1);
    let mut cmd = Command::new(bin());
    cmd.args(["deploy", &topology("topologies/wordcount.toml").display().to_string(), "--follow", "-q"]);
    for s in sb.sets(&inputs) {
        cmd.arg("--set").arg(s);
    }
    let mut first = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().expect("run");
    let started = Instant::now();
    while !sb.table_path().exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "the first run wrote no table");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = deploy("topologies/wordcount.toml", &sb.sets(&inputs), Duration::from_secs(60));
    let _ = first.kill();
    let _ = first.wait();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("another run is using this store"), "{err}");
    let mut sets = sb.sets(&inputs);
    sets.push("name=\"other\"".into());
    let out = deploy("topologies/wordcount.toml", &sets, Duration::from_secs(60));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("belongs to topology `wordcount`, not `other`"), "{err}");
}

#[test]
fn a_record_over_max_record_stops_the_run_naming_partition_and_offset() {
    let sb = Sandbox::new();
    let p = sb.path("data/long.txt");
    std::fs::create_dir_all(p.parent().expect("dir")).expect("mkdir");
    let mut bytes = b"a short line\n".to_vec();
    bytes.extend(std::iter::repeat_n(b'x', 3 << 20));
    std::fs::write(&p, &bytes).expect("write");
    let mut sets = sb.sets(&[p]);
    sets.push("spouts.lines.max_record=\"1MiB\"".into());
    let out = deploy("topologies/wordcount.toml", &sets, Duration::from_secs(60));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("lines/0") && err.contains("offset 13") && err.contains("max_record"), "{err}");
    // A bad value is a usage error naming the key.
    let mut sets = sb.sets(&[sb.path("data/long.txt")]);
    sets.push("spouts.lines.max_record=\"lots\"".into());
    let out = deploy("topologies/wordcount.toml", &sets, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("spouts.lines.max_record"), "{}", stderr(&out));
}

#[test]
fn a_sink_fed_by_a_broadcast_bolt_gets_one_copy() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 813, 20_000, 2);
    let mut sets = sb.sets(&inputs);
    sets.retain(|s| !s.starts_with("sinks.table"));
    let (table, log) = (sb.path("out/table.tsv"), sb.path("out/changelog.jsonl"));
    for (sink, path) in [("table", &table), ("log", &log)] {
        sets.push(format!("sinks.{sink}.config.path={:?}", path.display().to_string()));
        sets.push(format!("sinks.{sink}.grants.dirs=[{:?}]", sb.path("out").display().to_string()));
    }
    sets.push("bolts.counts.grouping=\"broadcast\"".into());
    sets.push("bolts.counts.parallelism=3".into());
    assert_ok(&deploy("tests/fixtures/changelog.toml", &sets, Duration::from_secs(300)));
    let want = count_words(&inputs);
    assert_counts(&read_table(&table), &want);
    // Every line comes from instance 0, and a key appears once per round.
    let text = std::fs::read_to_string(&log).expect("the changelog");
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        if v.get("reset").is_some() {
            continue;
        }
        assert_eq!(v["instance"], 0, "{line}");
        let key = (v["round"].as_u64(), v["key"].as_str().map(str::to_string));
        assert!(seen.insert(key), "a key twice in one round: {line}");
    }
    assert!(!seen.is_empty());
}
