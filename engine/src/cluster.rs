//! Distributed mode: workers, the leader that places instances and reboots
//! the world, and the client side of `deploy`, `status` and `stop`.
//!
//! Everything shared lives in ZooKeeper under the cluster root:
//!
//! ```text
//! ROOT                         "hailstorm-cluster v1"
//! ROOT/workers/w-NNNNNNNNNN    ephemeral, sequential: WorkerInfo (address)
//! ROOT/modules/SHA256          a module's bytes, in chunks c-NNNNNN
//! ROOT/topologies/NAME         Spec: TOML text, module hashes, generation
//! ROOT/topologies/NAME/world   World: epoch, placement, leader, restore round
//! ROOT/topologies/NAME/complete  the last complete round and its clock
//! ROOT/topologies/NAME/status  what the leader says about the topology
//! ```
//!
//! The leader is the live worker with the lowest sequence number. Each
//! reboot of the world is a new *epoch*: the leader places every instance
//! on the live workers ([`crate::assign`]), names the last complete round,
//! and publishes the world; every worker stops what it ran and starts its
//! share from that round. The negotiator of an epoch runs on the leader.
//! A round is complete once the leader recorded it in ZooKeeper with a
//! write that fails unless its session is alive and the epoch is current;
//! snapshot files and sink output are written only while the worker holds
//! a lease (a successful ZooKeeper exchange within two thirds of the session
//! timeout) and its epoch is current.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{unbounded, Receiver, Sender};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::net::{self, Endpoint, Registry, Wiring};
use crate::plan::Plan;
use crate::runtime::{self, Coordinator, Prepared, RunOptions, Start, Summary};
use crate::snapshot::{CommitRecord, FileStore};
use crate::topology::{Source, Topology};
use crate::zk::{Mode, Zk};

/// How often workers look at the cluster's state.
const POLL: Duration = Duration::from_millis(200);
/// How long `deploy` and `stop` wait for the cluster.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(90);

/// What a worker registers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub addr: String,
    pub pid: u32,
}

/// A deployed topology.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// Bumped by every deploy; a new generation with the world running is a hot swap.
    pub generation: u64,
    /// The topology file's text, its absolute path (relative paths start
    /// there) and the `--set` overrides.
    pub source: String,
    pub file: PathBuf,
    pub overrides: Vec<String>,
    /// Processor name → SHA-256 of its module (stored under `modules/`).
    pub modules: BTreeMap<String, String>,
    /// Set by `hailstorm stop`.
    pub stopped: bool,
}

/// One epoch of a topology: who runs what.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct World {
    pub epoch: u64,
    pub generation: u64,
    /// The worker that runs the negotiator.
    pub leader: String,
    pub placement: Vec<(Endpoint, String, String)>,
    /// The complete round every instance starts from.
    pub restore: Option<u64>,
    pub kafka_partitions: BTreeMap<String, u32>,
}

/// The last complete round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Complete {
    pub round: u64,
    pub epoch: u64,
    pub clock: Vec<(String, u64)>,
    pub at_ms: u64,
}

/// What the leader says about a topology.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// `running`, `waiting`, `stopped` or `failed`.
    pub state: String,
    pub generation: u64,
    pub epoch: u64,
    pub message: String,
    pub at_ms: u64,
}

fn topo(name: &str) -> String {
    format!("topologies/{name}")
}

/// Rounds are numbered `epoch << 32 | n`, so a fenced-off epoch can never
/// write into a round of a later one. Shown as `epoch.n`.
pub fn show_round(r: u64) -> String {
    format!("{}.{}", r >> 32, r & 0xffff_ffff)
}

fn json<T: Serialize>(t: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(t).context("cannot encode cluster state")
}

/// The lease that lets a worker write to shared storage.
struct Lease {
    base: Instant,
    last_ok_ms: AtomicU64,
    limit: Duration,
}

impl Lease {
    fn renew(&self) {
        self.last_ok_ms.store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn held(&self) -> bool {
        let age = (self.base.elapsed().as_millis() as u64).saturating_sub(self.last_ok_ms.load(Ordering::Relaxed));
        Duration::from_millis(age) < self.limit
    }
}

/// The distributed [`Coordinator`] of one epoch on one worker.
struct ClusterCoordinator {
    zk: Arc<Zk>,
    me: String,
    topology: String,
    epoch: u64,
    world_version: i32,
    lease: Arc<Lease>,
    stale: Arc<AtomicBool>,
}

impl Coordinator for ClusterCoordinator {
    fn check_fence(&self) -> Result<()> {
        if self.stale.load(Ordering::Relaxed) {
            bail!("fenced: epoch {} of `{}` is over", self.epoch, self.topology);
        }
        if !self.lease.held() {
            bail!(
                "fenced: worker {} has not heard from ZooKeeper for longer than its lease; it writes nothing more for epoch {}",
                self.me,
                self.epoch
            );
        }
        Ok(())
    }

    fn record_complete(&self, store: &FileStore, record: &CommitRecord) -> Result<()> {
        self.check_fence()?;
        store.write_commit(record).context("cannot record a complete snapshot")?;
        let c = Complete {
            round: record.round,
            epoch: self.epoch,
            clock: record.clock.clone(),
            at_ms: crate::snapshot::now_ms(),
        };
        let world = format!("{}/world", topo(&self.topology));
        self.zk.fenced_put(
            &format!("workers/{}", self.me),
            Some((&world, self.world_version)),
            &format!("{}/complete", topo(&self.topology)),
            &json(&c)?,
        )
    }
}

/// Options of `hailstorm worker`.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub zookeeper: String,
    pub listen: String,
    pub advertise: Option<String>,
    pub session_timeout: Duration,
    pub data_dir: PathBuf,
}

struct Runner {
    epoch: u64,
    abort: Arc<AtomicBool>,
    drain: Arc<AtomicBool>,
    stale: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

struct Outcome {
    topology: String,
    epoch: u64,
    negotiator: bool,
    result: Result<Summary>,
}

/// Runs a worker until `stop` is set. Returns an error only when it cannot
/// join the cluster at all (ZooKeeper unreachable at start, wrong root, bad
/// listen address); later losses of the session are survived by joining again.
pub fn run_worker(o: WorkerOptions, stop: Arc<AtomicBool>) -> Result<()> {
    let listener = TcpListener::bind(&o.listen).with_context(|| format!("cannot listen on {}", o.listen))?;
    let local = listener.local_addr()?;
    let addr = match &o.advertise {
        Some(a) => a.clone(),
        None if local.ip().is_unspecified() => {
            bail!(
                "--listen {} accepts on every interface: say with --advertise HOST:PORT how others reach this worker",
                o.listen
            )
        }
        None => local.to_string(),
    };
    let registry = Registry::new();
    let _listener = net::serve(listener, registry.clone())?;
    std::fs::create_dir_all(&o.data_dir)
        .with_context(|| format!("cannot create the worker's data directory {}", o.data_dir.display()))?;
    let mut first = true;
    loop {
        let zk = match Zk::connect(&o.zookeeper, o.session_timeout).and_then(|zk| {
            zk.check_root(true)?;
            Ok(zk)
        }) {
            Ok(zk) => Arc::new(zk),
            Err(e) if first => return Err(e),
            Err(e) => {
                eprintln!("hailstorm worker: {e:#}; retrying");
                if sleep_unless(&stop, Duration::from_secs(1)) {
                    return Ok(());
                }
                continue;
            }
        };
        first = false;
        for dir in ["workers", "topologies", "modules"] {
            zk.ensure(dir)?;
        }
        let info = WorkerInfo { addr: addr.clone(), pid: std::process::id() };
        let node = zk
            .create("workers/w-", &json(&info)?, Mode::EphemeralSequential)?
            .ok_or_else(|| anyhow!("cannot register the worker"))?;
        let me = node.trim_start_matches("workers/").to_string();
        eprintln!("hailstorm worker {me}: listening on {addr}, cluster {}", zk.describe());
        let lease =
            Arc::new(Lease { base: Instant::now(), last_ok_ms: AtomicU64::new(0), limit: o.session_timeout / 3 });
        lease.renew();
        let (out_tx, out_rx) = unbounded();
        let mut s = Session {
            zk: zk.clone(),
            me: me.clone(),
            addr: addr.clone(),
            registry: registry.clone(),
            data_dir: o.data_dir.clone(),
            lease,
            runners: BTreeMap::new(),
            done: BTreeMap::new(),
            out_tx,
            out_rx,
            leading: None,
        };
        let why = s.run(&stop);
        s.shutdown();
        match why {
            Ok(()) => {
                let _ = zk.delete(&node);
                eprintln!("hailstorm worker {me}: stopped");
                return Ok(());
            }
            Err(e) => {
                eprintln!("hailstorm worker {me}: {e:#}; stopping its instances and joining again");
                let _ = zk.delete(&node);
            }
        }
    }
}

/// Sleeps; true if `stop` was set meanwhile.
fn sleep_unless(stop: &AtomicBool, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.load(Ordering::Relaxed)
}

/// One ZooKeeper session of a worker.
struct Session {
    zk: Arc<Zk>,
    me: String,
    addr: String,
    registry: Arc<Registry>,
    data_dir: PathBuf,
    lease: Arc<Lease>,
    runners: BTreeMap<String, Runner>,
    /// Epochs whose run ended here (not to be started again).
    done: BTreeMap<String, u64>,
    out_tx: Sender<Outcome>,
    out_rx: Receiver<Outcome>,
    leading: Option<Leading>,
}

impl Session {
    /// Until `stop` (Ok) or the session is lost (Err).
    fn run(&mut self, stop: &AtomicBool) -> Result<()> {
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if !self.zk.is_alive() {
                bail!("the ZooKeeper session expired");
            }
            let workers = match self.zk.children("workers") {
                Ok(w) => w,
                Err(e) if self.zk.is_alive() => {
                    tracing::warn!("{e:#}");
                    std::thread::sleep(POLL);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if !workers.contains(&self.me) {
                bail!("this worker's registration is gone (its session expired)");
            }
            self.lease.renew();
            if let Err(e) = self.step(&workers) {
                if !self.zk.is_alive() {
                    return Err(e);
                }
                eprintln!("hailstorm worker {}: {e:#}", self.me);
            }
            std::thread::sleep(POLL);
        }
    }

    fn step(&mut self, workers: &[String]) -> Result<()> {
        let topologies = self.zk.children("topologies")?;
        // Follow every topology's world.
        for name in &topologies {
            let world = self.zk.get_json::<World>(&format!("{}/world", topo(name)))?;
            let current = self.runners.get(name).map(|r| r.epoch);
            let wanted = world.as_ref().map(|(w, _)| w.epoch);
            if current.is_some() && current != wanted {
                self.stop_runner(name);
            }
            if let Some((w, version)) = world {
                let mine = w.leader == self.me || w.placement.iter().any(|(_, wk, _)| *wk == self.me);
                if mine && !self.runners.contains_key(name) && self.done.get(name) != Some(&w.epoch) {
                    self.start_runner(name, w, version)?;
                }
            }
        }
        for name in self.runners.keys().cloned().collect::<Vec<_>>() {
            if !topologies.contains(&name) {
                self.stop_runner(&name);
            }
        }
        // Outcomes of runs that ended by themselves.
        let mut outcomes = Vec::new();
        while let Ok(o) = self.out_rx.try_recv() {
            outcomes.push(o);
        }
        for o in &outcomes {
            if self.runners.get(&o.topology).is_some_and(|r| r.epoch == o.epoch) {
                if let Some(r) = self.runners.remove(&o.topology) {
                    let _ = r.handle.join();
                }
                self.done.insert(o.topology.clone(), o.epoch);
            }
            match &o.result {
                Ok(s) => eprintln!(
                    "hailstorm worker {}: `{}` epoch {} ended: {} records, last complete round {}",
                    self.me,
                    o.topology,
                    o.epoch,
                    s.records,
                    s.last_round.map(show_round).unwrap_or_else(|| "none".into())
                ),
                Err(e) => eprintln!("hailstorm worker {}: `{}` epoch {} failed: {e:#}", self.me, o.topology, o.epoch),
            }
        }
        // Leadership: the live worker with the lowest number.
        if workers.first() == Some(&self.me) {
            let leading = self.leading.get_or_insert_with(Leading::default);
            let ctx = LeaderCtx { zk: &self.zk, me: &self.me, addr: &self.addr, workers };
            for o in outcomes {
                if o.negotiator {
                    leading.on_outcome(&ctx, &o.topology, o.epoch, o.result)?;
                } else if let Err(e) = &o.result {
                    // A share that cannot run here: let the leader place it elsewhere.
                    leading.reboot_later(&o.topology, format!("{e:#}"));
                }
            }
            for name in &topologies {
                let drain = self.runners.get(name).map(|r| r.drain.clone());
                leading.tick(&ctx, name, drain)?;
            }
        } else {
            self.leading = None;
            for o in outcomes {
                if !o.negotiator && o.result.is_err() {
                    bail!("this worker cannot run its share of `{}`", o.topology);
                }
            }
        }
        Ok(())
    }

    fn stop_runner(&mut self, name: &str) {
        if let Some(r) = self.runners.remove(name) {
            r.stale.store(true, Ordering::Relaxed);
            r.abort.store(true, Ordering::Relaxed);
            let _ = r.handle.join();
            self.done.insert(name.to_string(), r.epoch);
        }
    }

    fn shutdown(&mut self) {
        for name in self.runners.keys().cloned().collect::<Vec<_>>() {
            self.stop_runner(&name);
        }
    }

    fn start_runner(&mut self, name: &str, world: World, version: i32) -> Result<()> {
        let Some((spec, _)) = self.zk.get_json::<Spec>(&topo(name))? else { return Ok(()) };
        let abort = Arc::new(AtomicBool::new(false));
        let drain = Arc::new(AtomicBool::new(false));
        let stale = Arc::new(AtomicBool::new(false));
        let epoch = world.epoch;
        let negotiator = world.leader == self.me;
        let job = EpochJob {
            zk: self.zk.clone(),
            me: self.me.clone(),
            topology: name.to_string(),
            spec,
            world,
            world_version: version,
            registry: self.registry.clone(),
            data_dir: self.data_dir.clone(),
            lease: self.lease.clone(),
            abort: abort.clone(),
            drain: drain.clone(),
            stale: stale.clone(),
        };
        let out = self.out_tx.clone();
        let topology = name.to_string();
        eprintln!("hailstorm worker {}: starting its share of `{name}` epoch {epoch}", self.me);
        let handle = std::thread::Builder::new().name(format!("epoch {epoch}")).spawn(move || {
            let result = job.run();
            let _ = out.send(Outcome { topology, epoch, negotiator, result });
        })?;
        self.runners.insert(name.to_string(), Runner { epoch, abort, drain, stale, handle });
        Ok(())
    }
}

/// Everything one worker needs to run its share of one epoch.
struct EpochJob {
    zk: Arc<Zk>,
    me: String,
    topology: String,
    spec: Spec,
    world: World,
    world_version: i32,
    registry: Arc<Registry>,
    data_dir: PathBuf,
    lease: Arc<Lease>,
    abort: Arc<AtomicBool>,
    drain: Arc<AtomicBool>,
    stale: Arc<AtomicBool>,
}

impl EpochJob {
    fn run(self) -> Result<Summary> {
        let p = load_spec(&self.zk, &self.spec, &self.data_dir, &self.world.kafka_partitions)?;
        let t = &p.topology;
        let store = FileStore::open(t.store_dir())
            .with_context(|| format!("cannot open the snapshot store {}", t.store_dir().display()))?;
        let (clock, restore) = match self.world.restore {
            Some(r) => {
                let c = store.read_commit(r)?.ok_or_else(|| {
                    anyhow!(
                        "the last complete round {} is missing from the snapshot store {}: is the store shared by every worker?",
                        show_round(r),
                        t.store_dir().display()
                    )
                })?;
                (runtime::restore_clock(&p.plan, &c), Some(c))
            }
            None => (crate::clock::Clock::filled(p.plan.spout_instances(), 0), None),
        };
        let start = Start { clock, restore, next_round: (self.world.epoch << 32) + 1 };
        let placement = self.world.placement.iter().map(|(e, w, a)| (*e, (w.clone(), a.clone()))).collect();
        let wiring = Wiring::new(&self.topology, self.world.epoch, &self.me, placement, self.registry.clone());
        let coord = ClusterCoordinator {
            zk: self.zk.clone(),
            me: self.me.clone(),
            topology: self.topology.clone(),
            epoch: self.world.epoch,
            world_version: self.world_version,
            lease: self.lease.clone(),
            stale: self.stale.clone(),
        };
        let opts = RunOptions { follow: true, progress: None, stop: Some(self.drain), abort: Some(self.abort) };
        runtime::run(&p, &opts, &store, start, Some(&wiring), Arc::new(coord))
    }
}

/// Loads a deployed topology on a worker: its text as deployed, its modules
/// from ZooKeeper (cached by hash in the worker's data directory).
fn load_spec(zk: &Zk, spec: &Spec, data_dir: &Path, kafka: &BTreeMap<String, u32>) -> Result<Prepared> {
    let mut t = Topology::from_source(&spec.source, &spec.file, &spec.overrides).map_err(|e| anyhow!("{e}"))?;
    let fix = |name: &str, m: &mut crate::topology::ModuleRef| -> Result<()> {
        let hash = spec.modules.get(name).ok_or_else(|| anyhow!("the deployed topology has no module for `{name}`"))?;
        m.path = fetch_module(zk, hash, data_dir)?;
        m.build = None;
        Ok(())
    };
    for s in &mut t.spouts {
        fix(&s.name.clone(), &mut s.module)?;
    }
    for b in &mut t.bolts {
        fix(&b.name.clone(), &mut b.module)?;
    }
    for s in &mut t.sinks {
        fix(&s.name.clone(), &mut s.module)?;
    }
    runtime::prepare_with(t, kafka)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fetch_module(zk: &Zk, hash: &str, data_dir: &Path) -> Result<PathBuf> {
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("bad module hash {hash:?} in the deployed topology");
    }
    let path = data_dir.join(format!("{hash}.wasm"));
    if path.exists() {
        return Ok(path);
    }
    let bytes = zk
        .get_blob(&format!("modules/{hash}"))?
        .ok_or_else(|| anyhow!("module {hash} is missing from ZooKeeper {}", zk.describe()))?;
    if hex(&Sha256::digest(&bytes)) != hash {
        bail!("module {hash} in ZooKeeper {} is damaged (its hash does not match)", zk.describe());
    }
    let tmp = data_dir.join(format!("{hash}.wasm.tmp"));
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

struct LeaderCtx<'a> {
    zk: &'a Zk,
    me: &'a str,
    addr: &'a str,
    workers: &'a [String],
}

/// The leader's memory between polls (everything else is in ZooKeeper).
#[derive(Default)]
struct Leading {
    /// Topologies whose world must be rebooted, with why and not before when.
    reboot: BTreeMap<String, (String, Instant)>,
}

impl Leading {
    fn reboot_later(&mut self, name: &str, why: String) {
        self.reboot.insert(name.to_string(), (why, Instant::now() + Duration::from_secs(1)));
    }

    fn tick(&mut self, cx: &LeaderCtx, name: &str, my_drain: Option<Arc<AtomicBool>>) -> Result<()> {
        let Some((spec, _)) = cx.zk.get_json::<Spec>(&topo(name))? else { return Ok(()) };
        let world = cx.zk.get_json::<World>(&format!("{}/world", topo(name)))?;
        let status = cx.zk.get_json::<Status>(&format!("{}/status", topo(name)))?.map(|s| s.0);
        if status.as_ref().is_some_and(|s| s.state == "failed" && s.generation == spec.generation) {
            return Ok(());
        }
        let Some((w, _)) = world else {
            if spec.stopped {
                if status.as_ref().is_none_or(|s| s.state != "stopped") {
                    set_status(cx.zk, name, "stopped", spec.generation, 0, "stopped")?;
                }
                return Ok(());
            }
            return self.reboot(cx, name, &spec, None, status.as_ref());
        };
        let alive: BTreeSet<&String> = cx.workers.iter().collect();
        let lost: Vec<&String> = w.placement.iter().map(|(_, wk, _)| wk).filter(|wk| !alive.contains(wk)).collect();
        let why = if w.leader != cx.me {
            Some(format!("leader changed to {}", cx.me))
        } else if let Some(wk) = lost.first() {
            Some(format!("worker {wk} is gone"))
        } else {
            self.reboot.get(name).filter(|(_, at)| Instant::now() >= *at).map(|(why, _)| why.clone())
        };
        if let Some(why) = why {
            if spec.stopped {
                // Without its negotiator no final round can be taken: the last complete one stands.
                cx.zk.delete(&format!("{}/world", topo(name)))?;
                return set_status(cx.zk, name, "stopped", spec.generation, w.epoch, "stopped");
            }
            eprintln!("hailstorm leader {}: rebooting `{name}` from its last complete round: {why}", cx.me);
            return self.reboot(cx, name, &spec, Some(&w), status.as_ref());
        }
        if spec.stopped || w.generation != spec.generation {
            // Stop or hot swap: drain (final round), then act on the outcome.
            if let Some(d) = my_drain {
                d.store(true, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn on_outcome(&mut self, cx: &LeaderCtx, name: &str, epoch: u64, result: Result<Summary>) -> Result<()> {
        let Some((spec, _)) = cx.zk.get_json::<Spec>(&topo(name))? else { return Ok(()) };
        let Some((w, _)) = cx.zk.get_json::<World>(&format!("{}/world", topo(name)))? else { return Ok(()) };
        if w.epoch != epoch {
            return Ok(());
        }
        match result {
            Ok(s) => {
                let last = s.last_round.map(show_round).unwrap_or_else(|| "none".into());
                if spec.stopped {
                    cx.zk.delete(&format!("{}/world", topo(name)))?;
                    set_status(cx.zk, name, "stopped", spec.generation, epoch, &format!("final round {last}"))
                } else {
                    eprintln!(
                        "hailstorm leader {}: `{name}` drained at round {last}; starting generation {}",
                        cx.me, spec.generation
                    );
                    let status = cx.zk.get_json::<Status>(&format!("{}/status", topo(name)))?.map(|s| s.0);
                    self.reboot(cx, name, &spec, Some(&w), status.as_ref())
                }
            }
            Err(e) if net::is_fatal(&e) => {
                eprintln!("hailstorm leader {}: `{name}` failed: {e:#}", cx.me);
                cx.zk.delete(&format!("{}/world", topo(name)))?;
                set_status(cx.zk, name, "failed", spec.generation, epoch, &format!("{e:#}"))
            }
            Err(e) => {
                self.reboot_later(name, format!("{e:#}"));
                Ok(())
            }
        }
    }

    fn reboot(
        &mut self,
        cx: &LeaderCtx,
        name: &str,
        spec: &Spec,
        prev: Option<&World>,
        status: Option<&Status>,
    ) -> Result<()> {
        self.reboot.remove(name);
        let t = Topology::from_source(&spec.source, &spec.file, &spec.overrides).map_err(|e| anyhow!("{e}"))?;
        let mut kafka = BTreeMap::new();
        for s in &t.spouts {
            if let Source::Kafka { topic } = &s.source {
                let brokers = t.cluster.as_ref().map(|c| c.kafka.as_str()).unwrap_or_default();
                match crate::kafka::partition_count(brokers, topic, Duration::from_secs(5)) {
                    Ok(n) => {
                        kafka.insert(s.name.clone(), n);
                    }
                    Err(e) => {
                        let epoch = prev.map_or(0, |w| w.epoch);
                        self.reboot_later(name, "waiting for the broker".into());
                        return set_status(cx.zk, name, "waiting", spec.generation, epoch, &format!("{e:#}"));
                    }
                }
            }
        }
        let plan = Plan::with_kafka(&t, &kafka);
        let mut endpoints: Vec<Endpoint> = (0..plan.spout_instances()).map(Endpoint::Spout).collect();
        endpoints.extend((0..plan.bolt_instances()).map(Endpoint::Bolt));
        endpoints.extend((0..t.sinks.len()).map(Endpoint::Sink));
        let key = |e: &Endpoint| format!("{e:?}");
        let previous: crate::assign::Assignment =
            prev.map(|w| w.placement.iter().map(|(e, wk, _)| (key(e), wk.clone())).collect()).unwrap_or_default();
        let names: Vec<String> = endpoints.iter().map(key).collect();
        let assignment = crate::assign::assign(&names, cx.workers, &previous)
            .ok_or_else(|| anyhow!("no live worker to run `{name}`"))?;
        let mut addrs = BTreeMap::new();
        for wk in cx.workers {
            if let Some((info, _)) = cx.zk.get_json::<WorkerInfo>(&format!("workers/{wk}"))? {
                addrs.insert(wk.clone(), info.addr);
            }
        }
        let mut placement = Vec::new();
        for e in &endpoints {
            let wk = assignment.get(&key(e)).ok_or_else(|| anyhow!("internal: {e} was not placed"))?;
            let addr = addrs.get(wk).ok_or_else(|| anyhow!("worker {wk} vanished"))?;
            placement.push((*e, wk.clone(), addr.clone()));
        }
        placement.push((Endpoint::Negotiator, cx.me.to_string(), cx.addr.to_string()));
        let complete = cx.zk.get_json::<Complete>(&format!("{}/complete", topo(name)))?.map(|c| c.0);
        let epoch = prev.map_or(0, |w| w.epoch).max(status.map_or(0, |s| s.epoch)) + 1;
        let world = World {
            epoch,
            generation: spec.generation,
            leader: cx.me.to_string(),
            placement,
            restore: complete.as_ref().map(|c| c.round),
            kafka_partitions: kafka,
        };
        cx.zk.fenced_put(&format!("workers/{}", cx.me), None, &format!("{}/world", topo(name)), &json(&world)?)?;
        let used: BTreeSet<&String> = assignment.values().collect();
        let msg = format!(
            "epoch {epoch}: {} instances on {} workers, from round {}",
            endpoints.len(),
            used.len(),
            complete.map(|c| show_round(c.round)).unwrap_or_else(|| "none (fresh start)".into())
        );
        eprintln!("hailstorm leader {}: `{name}` {msg}", cx.me);
        set_status(cx.zk, name, "running", spec.generation, epoch, &msg)
    }
}

fn set_status(zk: &Zk, name: &str, state: &str, generation: u64, epoch: u64, message: &str) -> Result<()> {
    let s =
        Status { state: state.into(), generation, epoch, message: message.into(), at_ms: crate::snapshot::now_ms() };
    zk.put(&format!("{}/status", topo(name)), &json(&s)?)
}

/// `hailstorm deploy` of a topology with a `[cluster]` table: uploads it and
/// waits until the leader runs it (or says why not).
pub fn deploy(p: &Prepared, overrides: &[String]) -> Result<String> {
    let t = &p.topology;
    let cluster = t.cluster.as_ref().ok_or_else(|| anyhow!("internal: no [cluster] table"))?;
    // The broker first: a topology that cannot read its input is not deployed.
    for s in &t.spouts {
        if let Source::Kafka { topic } = &s.source {
            crate::kafka::partition_count(&cluster.kafka, topic, Duration::from_secs(10))
                .with_context(|| format!("spout `{}`", s.name))?;
        }
    }
    let zk = Zk::connect(&cluster.zookeeper, Duration::from_secs(10))?;
    zk.check_root(false)?;
    if zk.children("workers")?.is_empty() {
        bail!(
            "no worker has joined the cluster at {}; start some with `hailstorm worker --zookeeper {}`",
            zk.describe(),
            zk.describe()
        );
    }
    let mut modules = BTreeMap::new();
    for (name, m) in p.processor_modules() {
        let path = format!("modules/{}", m.hash);
        if zk.get_blob(&path)?.is_none() {
            let bytes = std::fs::read(&m.path).with_context(|| format!("cannot read {}", m.path.display()))?;
            zk.put_blob(&path, &bytes)?;
        }
        modules.insert(name.clone(), m.hash.clone());
    }
    let source = std::fs::read_to_string(&t.file).with_context(|| format!("cannot read {}", t.file.display()))?;
    let path = topo(&t.name);
    let old = zk.get_json::<Spec>(&path)?;
    let generation = old.as_ref().map_or(0, |(s, _)| s.generation) + 1;
    let spec =
        Spec { generation, source, file: t.file.clone(), overrides: overrides.to_vec(), modules, stopped: false };
    match &old {
        Some((_, v)) => {
            zk.set(&path, &json(&spec)?, Some(*v)).context("another deploy of this topology raced this one")?;
        }
        None => {
            zk.ensure("topologies")?;
            if zk.create(&path, &json(&spec)?, Mode::Persistent)?.is_none() {
                bail!("another deploy of `{}` raced this one", t.name);
            }
        }
    }
    let started = Instant::now();
    loop {
        if let Some((s, _)) = zk.get_json::<Status>(&format!("{path}/status"))? {
            if s.generation == generation {
                match s.state.as_str() {
                    "running" => {
                        return Ok(format!(
                            "deployed `{}` generation {generation} on {}: {}",
                            t.name,
                            zk.describe(),
                            s.message
                        ))
                    }
                    "failed" => bail!("the cluster could not run `{}`: {}", t.name, s.message),
                    _ => {}
                }
            }
        }
        if started.elapsed() > ACCEPT_TIMEOUT {
            bail!(
                "the cluster at {} did not start `{}` generation {generation} within {}s; see `hailstorm status {} --zookeeper {}`",
                zk.describe(),
                t.name,
                ACCEPT_TIMEOUT.as_secs(),
                t.name,
                zk.describe()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// `hailstorm stop NAME`: a final round, then nothing runs.
pub fn stop(zookeeper: &str, name: &str) -> Result<String> {
    let zk = Zk::connect(zookeeper, Duration::from_secs(10))?;
    zk.check_root(false)?;
    let path = topo(name);
    let (mut spec, v) =
        zk.get_json::<Spec>(&path)?.ok_or_else(|| anyhow!("no topology `{name}` is deployed at {}", zk.describe()))?;
    if !spec.stopped {
        spec.stopped = true;
        zk.set(&path, &json(&spec)?, Some(v)).context("the topology changed meanwhile; try again")?;
    }
    let started = Instant::now();
    loop {
        if let Some((s, _)) = zk.get_json::<Status>(&format!("{path}/status"))? {
            if s.state == "stopped" || s.state == "failed" {
                return Ok(format!("`{name}` {}: {}", s.state, s.message));
            }
        }
        if started.elapsed() > ACCEPT_TIMEOUT {
            bail!("`{name}` did not stop within {}s (is any worker running?)", ACCEPT_TIMEOUT.as_secs());
        }
        std::thread::sleep(POLL);
    }
}

/// What `hailstorm status` shows, as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub cluster: String,
    pub workers: Vec<(String, String)>,
    pub topologies: Vec<TopologyStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopologyStatus {
    pub name: String,
    pub generation: u64,
    pub status: Option<Status>,
    pub leader: Option<String>,
    pub assignment: BTreeMap<String, Vec<String>>,
    pub last_complete: Option<Complete>,
    /// Partition → records not yet in a complete round (Kafka partitions).
    pub lag: BTreeMap<String, u64>,
}

pub fn status(zookeeper: &str, only: Option<&str>) -> Result<ClusterStatus> {
    let zk = Zk::connect(zookeeper, Duration::from_secs(10))?;
    zk.check_root(false)?;
    let mut workers = Vec::new();
    for w in zk.children("workers")? {
        if let Some((info, _)) = zk.get_json::<WorkerInfo>(&format!("workers/{w}"))? {
            workers.push((w, info.addr));
        }
    }
    let mut topologies = Vec::new();
    for name in zk.children("topologies")? {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let Some((spec, _)) = zk.get_json::<Spec>(&topo(&name))? else { continue };
        let status = zk.get_json::<Status>(&format!("{}/status", topo(&name)))?.map(|s| s.0);
        let world = zk.get_json::<World>(&format!("{}/world", topo(&name)))?.map(|w| w.0);
        let last_complete = zk.get_json::<Complete>(&format!("{}/complete", topo(&name)))?.map(|c| c.0);
        let mut assignment: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if let Some(w) = &world {
            for (e, wk, _) in &w.placement {
                assignment.entry(wk.clone()).or_default().push(e.to_string());
            }
        }
        let mut lag = BTreeMap::new();
        if let Ok(t) = Topology::from_source(&spec.source, &spec.file, &spec.overrides) {
            let committed: BTreeMap<&str, u64> =
                last_complete.iter().flat_map(|c| c.clock.iter().map(|(p, o)| (p.as_str(), *o))).collect();
            for s in &t.spouts {
                if let (Source::Kafka { topic }, Some(c)) = (&s.source, &t.cluster) {
                    if let Ok(highs) = crate::kafka::high_watermarks(&c.kafka, topic, Duration::from_secs(5)) {
                        for (i, h) in highs.iter().enumerate() {
                            let p = format!("{}/{i}", s.name);
                            let done = committed.get(p.as_str()).copied().unwrap_or(0);
                            lag.insert(p, h.saturating_sub(done));
                        }
                    }
                }
            }
        }
        topologies.push(TopologyStatus {
            name,
            generation: spec.generation,
            status,
            leader: world.map(|w| w.leader),
            assignment,
            last_complete,
            lag,
        });
    }
    if let Some(o) = only {
        if topologies.is_empty() {
            bail!("no topology `{o}` is deployed at {}", zk.describe());
        }
    }
    Ok(ClusterStatus { cluster: zk.describe(), workers, topologies })
}

/// The human form of [`status`].
pub fn show_status(s: &ClusterStatus) -> String {
    let mut out = format!("cluster {}: {} worker(s)\n", s.cluster, s.workers.len());
    for (w, a) in &s.workers {
        out.push_str(&format!("  {w} at {a}\n"));
    }
    for t in &s.topologies {
        let (state, msg) = t.status.as_ref().map_or(("unknown", ""), |s| (s.state.as_str(), s.message.as_str()));
        out.push_str(&format!("topology `{}` generation {}: {state} ({msg})\n", t.name, t.generation));
        if let Some(l) = &t.leader {
            out.push_str(&format!("  negotiator on {l}\n"));
        }
        for (w, eps) in &t.assignment {
            out.push_str(&format!("  {w}: {}\n", eps.join(", ")));
        }
        match &t.last_complete {
            Some(c) => {
                let age = crate::snapshot::now_ms().saturating_sub(c.at_ms) as f64 / 1000.0;
                let clock: Vec<String> = c.clock.iter().map(|(p, o)| format!("{p}@{o}")).collect();
                out.push_str(&format!(
                    "  last complete round {} ({age:.1}s ago): {}\n",
                    show_round(c.round),
                    clock.join(" ")
                ));
            }
            None => out.push_str("  no complete round yet\n"),
        }
        if !t.lag.is_empty() {
            let lag: Vec<String> = t.lag.iter().map(|(p, l)| format!("{p}={l}")).collect();
            out.push_str(&format!("  lag (records not yet in a complete round): {}\n", lag.join(" ")));
        }
    }
    out
}
