//! The chaos run: a three-worker cluster counts a topic that keeps being
//! produced, while faults of five kinds hit it one after another — kill -9
//! of a worker (started again later), SIGSTOP of a worker past its session
//! then SIGCONT, a ZooKeeper restart, the broker down for a few seconds
//! (kill -9 of an Apache Kafka of the run's own, started again on its log), and a cut between two
//! workers (a relay that stops moving bytes). After each fault it waits for
//! a round to complete; at the end it compares the committed table with a
//! count of everything produced, and prints what happened.
//!
//! The suite runs it for two minutes; `HAILSTORM_CHAOS_SECS=600 cargo test
//! --release --test all chaos -- --nocapture` runs the long one
//! (RELIABILITY.md has its figures). `HAILSTORM_CHAOS_SEED` picks the faults.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::{restart_zookeeper, Cluster};
use crate::common::*;
use crate::faults::{OwnBroker, Relay};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Kill9,
    Pause,
    ZooKeeperRestart,
    BrokerDown,
    Cut,
}

const KINDS: [Fault; 5] = [Fault::Kill9, Fault::Pause, Fault::ZooKeeperRestart, Fault::BrokerDown, Fault::Cut];

/// What the run saw, for the report.
#[derive(Default)]
struct Tally {
    faults: BTreeMap<String, u32>,
    /// The longest time from injecting a fault to the next complete round.
    longest_recovery: Duration,
}

/// Produces small files one after another, each under a read lock of
/// `hold` (the chaos takes it to write while the broker is down, so no file
/// is cut half-way by a broker kill); returns every file it produced.
fn producer(
    dir: PathBuf,
    brokers: String,
    topic: String,
    hold: Arc<std::sync::RwLock<()>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<PathBuf>> {
    std::thread::spawn(move || {
        let mut files = Vec::new();
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let f = corpus(&dir.join(format!("p{n}")), 9000 + n, 3_000, 1);
            let mut cmd = Command::new(bin());
            cmd.args(["produce", "--brokers", &brokers, "--topic", &topic, "--partitions", "4"]).args(&f);
            let producing = hold.read().unwrap_or_else(|p| p.into_inner());
            assert_ok(&run_limited(cmd, Duration::from_secs(120)));
            drop(producing);
            files.extend(f);
            n += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        files
    })
}

/// The topology's last complete round, as `hailstorm status` says (`None`
/// when it cannot say, during a ZooKeeper restart for one).
fn last_round(zk: &str) -> Option<u64> {
    let mut cmd = Command::new(bin());
    cmd.args(["status", "--json", "--zookeeper", zk]);
    let out = run_limited(cmd, Duration::from_secs(60));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    status["topologies"][0]["last_complete"]["round"].as_u64()
}

/// Watches the last complete round: the longest gap between two.
fn monitor(zk: String, stop: Arc<AtomicBool>, gap_ms: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut last, mut since) = (None, Instant::now());
        while !stop.load(Ordering::SeqCst) {
            let round = last_round(&zk);
            if round.is_some() && round != last {
                (last, since) = (round, Instant::now());
            }
            gap_ms.fetch_max(since.elapsed().as_millis() as u64, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(250));
        }
    })
}

struct Chaos {
    c: Cluster,
    broker: OwnBroker,
    relay: Relay,
    /// The producer waits while the broker is down.
    hold: Arc<std::sync::RwLock<()>>,
    rng: Rng,
    zookeeper_restartable: bool,
}

impl Chaos {
    /// The last complete round (`None` while ZooKeeper cannot be asked).
    fn last_round(&self) -> Option<u64> {
        last_round(&self.c.zk)
    }

    /// Injects one fault and heals it; returns its kind.
    fn inject(&mut self) -> Fault {
        let mut kind = KINDS[self.rng.below(KINDS.len() as u64) as usize];
        if kind == Fault::ZooKeeperRestart && !self.zookeeper_restartable {
            kind = Fault::Kill9;
        }
        match kind {
            Fault::Kill9 => {
                let n = self.rng.below(3) as usize;
                self.c.kill(n);
                std::thread::sleep(Duration::from_millis(1000 + self.rng.below(3000)));
                self.c.restart(n);
            }
            Fault::Pause => {
                let n = self.rng.below(3) as usize;
                self.c.signal(n, "-STOP");
                std::thread::sleep(Duration::from_millis(4000 + self.rng.below(2000)));
                self.c.signal(n, "-CONT");
            }
            Fault::ZooKeeperRestart => {
                if !restart_zookeeper(1) {
                    // Not one this run may restart: kill a worker instead, from now on.
                    self.zookeeper_restartable = false;
                    return self.inject();
                }
            }
            Fault::BrokerDown => {
                let _down = self.hold.write().unwrap_or_else(|p| p.into_inner());
                self.broker.kill_and_restart(Duration::from_millis(2000 + self.rng.below(3000)));
            }
            Fault::Cut => {
                self.relay.pause(true);
                std::thread::sleep(Duration::from_millis(5000 + self.rng.below(2000)));
                self.relay.pause(false);
            }
        }
        kind
    }
}

/// Runs the chaos for `secs` seconds and checks the result.
fn chaos(secs: u64, seed: u64) {
    let zookeeper_restartable = crate::cluster::zookeeper_is_ours();
    let mut c = Cluster::new("chaos", 2);
    // The third worker is reached through a relay the run can cut.
    let relay = Relay::start_worker_behind(&mut c);
    let broker = OwnBroker::start();
    let first = corpus(&c.sb.path("first"), seed, 3_000, 1);
    let mut cmd = Command::new(bin());
    cmd.args(["produce", "--brokers", &broker.addr, "--topic", &c.topic, "--partitions", "4"]).args(&first);
    assert_ok(&run_limited(cmd, Duration::from_secs(120)));
    let sets = [format!("cluster.kafka={:?}", broker.addr), "snapshot.round_timeout=\"4s\"".into()];
    assert_ok(&c.deploy(&sets));
    c.wait_for_table(&count_words(&first), Duration::from_secs(120));

    let (hold, stop) = (Arc::new(std::sync::RwLock::new(())), Arc::new(AtomicBool::new(false)));
    let prod = producer(c.sb.path("produced"), broker.addr.clone(), c.topic.clone(), hold.clone(), stop.clone());
    let gap_ms = Arc::new(AtomicU64::new(0));
    let watch = monitor(c.zk.clone(), stop.clone(), gap_ms.clone());
    let epoch_before = c.epoch();
    let mut chaos = Chaos { c, broker, relay, hold, rng: Rng::new(seed), zookeeper_restartable };
    let tally = Mutex::new(Tally::default());
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        let before = chaos.last_round();
        let at = Instant::now();
        let kind = chaos.inject();
        *tally.lock().expect("tally").faults.entry(format!("{kind:?}")).or_default() += 1;
        // The table must advance again after every fault.
        chaos.c.wait_until(&format!("a complete round after {kind:?}"), Duration::from_secs(90), || {
            chaos.last_round() > before
        });
        let mut t = tally.lock().expect("tally");
        t.longest_recovery = t.longest_recovery.max(at.elapsed());
        drop(t);
        std::thread::sleep(Duration::from_millis(chaos.rng.below(2000)));
    }
    stop.store(true, Ordering::SeqCst);
    let mut produced = first.clone();
    produced.extend(prod.join().expect("producer"));
    watch.join().expect("monitor");
    let reboots = chaos.c.epoch().saturating_sub(epoch_before);
    let want = count_words(&produced);
    let settled = Instant::now();
    while chaos.c.sb.table() != want && settled.elapsed() < Duration::from_secs(180) {
        std::thread::sleep(Duration::from_millis(500));
    }
    let got = chaos.c.sb.table();
    let lines: usize = produced.iter().map(|f| std::fs::read_to_string(f).map_or(0, |t| t.lines().count())).sum();
    let (mut lost, mut duplicated) = (0u64, 0u64);
    for (k, w) in &want {
        let g = got.get(k).copied().unwrap_or(0);
        lost += w.saturating_sub(g);
        duplicated += g.saturating_sub(*w);
    }
    duplicated += got.iter().filter(|(k, _)| !want.contains_key(*k)).map(|(_, v)| v).sum::<u64>();
    let t = tally.into_inner().expect("tally");
    let total: u32 = t.faults.values().sum();
    eprintln!("chaos run: {secs} s, seed {seed}");
    eprintln!(
        "  faults: {total} ({})",
        t.faults.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
    );
    eprintln!("  reboots (epochs): {reboots}");
    eprintln!("  records produced: {lines} lines, {} words", want.values().sum::<u64>());
    eprintln!("  committed: {} words", got.values().sum::<u64>());
    eprintln!("  lost: {lost}, duplicated: {duplicated}");
    eprintln!("  longest time without a complete round: {:.1} s", gap_ms.load(Ordering::SeqCst) as f64 / 1000.0);
    eprintln!("  longest time from a fault to the next complete round: {:.1} s", t.longest_recovery.as_secs_f64());
    assert_eq!((lost, duplicated), (0, 0), "the chaos run lost or repeated counts:\n{}", chaos.c.logs());
    assert!(total as usize >= KINDS.len().min(secs as usize / 30), "too few faults: {total}");
}

#[test]
fn a_chaos_run_loses_and_repeats_nothing() {
    let secs = std::env::var("HAILSTORM_CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    let seed = std::env::var("HAILSTORM_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(2026);
    chaos(secs, seed);
}
