//! The engine: spout, bolt and sink instances and the negotiator shell.
//!
//! Every processor instance runs on its own thread and talks through
//! bounded channels (the in-process transport of the embedded mode); the
//! negotiator's pure state machine ([`crate::negotiator`]) runs on the
//! calling thread. Snapshots are written by a dedicated writer thread, off the
//! hot path of the bolts.
//!
//! Data path: file → [`FileReader`] → WASM deserializer → [`Router`] (key hash)
//! → bolt instance inbox → [`BoltCore`] (A/B split) → WASM bolt. Control path:
//! negotiator → gate spouts → announce to bolts → ungate → bolts save →
//! commit record → sinks read the committed state from the store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use hailstorm_abi as abi;

use crate::batch::TupleBatch;
use crate::bolt::{self, BoltCore, Finished, Round, Slots};
use crate::clock::{Clock, Origin, INFINITY};
use crate::negotiator::{Action, Event, Negotiator, Shape};
use crate::net::{Endpoint, Inboxes, WireReport, Wiring};
use crate::plan::{key_instance, Consumer, Plan};
use crate::snapshot::{CommitRecord, FileRef, FileStore, SnapshotFile};
use crate::spout::{FileReader, RecordBatch};
use crate::topology::{Grouping, ModuleKind, Topology};
use crate::wasm::{self, GuestError, Ident, LoadedModule};
use serde::{Deserialize, Serialize};

/// Records per deserializer call.
const SPOUT_BATCH_RECORDS: usize = 2048;
const SPOUT_BATCH_BYTES: usize = 256 << 10;
/// Tuples buffered for one bolt instance before they are sent.
const FLUSH_TUPLES: usize = 4096;
/// Messages waiting in one bolt instance's inbox.
const INBOX: usize = 64;
/// How often idle instances send LWM heartbeats and check for shutdown.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(50);

/// Options of a run (the default: bounded input, quiet, no outside stop).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Keep tailing the input files instead of stopping at their end.
    pub follow: bool,
    /// Print progress every this often (`None`: quiet).
    pub progress: Option<Duration>,
    /// Set (e.g. by a signal handler) to stop gracefully: read no more input,
    /// take a final snapshot, let the sinks write it, and return.
    pub stop: Option<Arc<AtomicBool>>,
    /// Set from outside to end the run at once (distributed mode: the epoch is over).
    pub abort: Option<Arc<AtomicBool>>,
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub records: u64,
    pub tuples: u64,
    pub elapsed: Duration,
    pub rounds: u64,
    pub last_round: Option<u64>,
    pub last_clock: String,
}

/// Messages to a bolt instance.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToBolt {
    Batch { from: usize, batch: TupleBatch, lwm: Clock },
    Lwm { from: usize, lwm: Clock },
    Announce(Round),
    Stop,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToSpout {
    Gate(u64),
    Ungate,
    /// Read no more: report the current position as the end of the input.
    Drain,
    Stop,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToSink {
    Commit { round: u64, clock: Clock },
    Stop,
}

/// What instances tell the negotiator shell.
pub(crate) enum Report {
    Event(Event),
    Failed(anyhow::Error),
}

struct SaveJob {
    bolt_number: usize,
    file: SnapshotFile,
}

/// Shared counters for progress output.
struct Stats {
    records: AtomicU64,
    tuples: AtomicU64,
    /// Per bolt instance, per partition: the instance's LWM.
    lwm: Vec<Vec<AtomicU64>>,
}

/// Set when the run is being torn down; every blocking loop checks it.
#[derive(Clone)]
pub(crate) struct Abort(pub(crate) Arc<AtomicBool>);

impl Abort {
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::Relaxed)
    }
}

/// Sends on a bounded channel without ever blocking past an abort.
pub(crate) fn send<T>(tx: &Sender<T>, mut msg: T, abort: &Abort) -> Result<(), ()> {
    loop {
        match tx.try_send(msg) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Disconnected(_)) => return Err(()),
            Err(TrySendError::Full(m)) => {
                if abort.is_set() {
                    return Err(());
                }
                match tx.send_timeout(m, HEARTBEAT) {
                    Ok(()) => return Ok(()),
                    Err(crossbeam_channel::SendTimeoutError::Timeout(m)) => msg = m,
                    Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return Err(()),
                }
            }
        }
    }
}

/// Spreads tuples over the instances of downstream bolts and sends them with
/// the sender's LWM. Every flush reaches every downstream instance, with tuples
/// or with a bare LWM, so no instance waits on a sender that has nothing for it.
struct Router {
    from: usize,
    targets: Vec<Target>,
    abort: Abort,
}

struct Target {
    grouping: Grouping,
    inboxes: Vec<Sender<ToBolt>>,
    buffers: Vec<TupleBatch>,
}

impl Router {
    fn new(from: usize, consumers: &[Consumer], plan: &Plan, inboxes: &[Sender<ToBolt>], abort: Abort) -> Router {
        let targets = consumers
            .iter()
            .map(|c| {
                let first = plan.bolt_instance_number(c.bolt, 0);
                let n = plan.bolt_parallelism[c.bolt] as usize;
                Target {
                    grouping: c.grouping,
                    inboxes: inboxes[first..first + n].to_vec(),
                    buffers: (0..n).map(|_| TupleBatch::new()).collect(),
                }
            })
            .collect();
        Router { from, targets, abort }
    }

    fn has_targets(&self) -> bool {
        !self.targets.is_empty()
    }

    /// Buffers one tuple; returns true when a buffer is full enough to flush.
    fn push(&mut self, key: &[u8], value: &[u8], origin: Origin) -> bool {
        let mut full = false;
        for t in &mut self.targets {
            let n = t.buffers.len() as u32;
            match t.grouping {
                Grouping::Key => {
                    let i = key_instance(key, n) as usize;
                    if let Some(b) = t.buffers.get_mut(i) {
                        b.push(key, value, origin);
                        full |= b.len() >= FLUSH_TUPLES;
                    }
                }
                Grouping::Global => {
                    if let Some(b) = t.buffers.first_mut() {
                        b.push(key, value, origin);
                        full |= b.len() >= FLUSH_TUPLES;
                    }
                }
                Grouping::Broadcast => {
                    for b in &mut t.buffers {
                        b.push(key, value, origin);
                        full |= b.len() >= FLUSH_TUPLES;
                    }
                }
            }
        }
        full
    }

    /// Routes every tuple of an emitted batch; `origin_of(i)` maps input indexes to origins.
    fn route_emitted(&mut self, emitted: &[u8], origin_of: impl Fn(u32) -> Option<Origin>) -> Result<bool, String> {
        let mut r = abi::BatchReader::new(emitted).map_err(|e| e.to_string())?;
        let mut full = false;
        for _ in 0..r.count() {
            let input = r.u32().map_err(|e| e.to_string())?;
            let key = r.bytes().map_err(|e| e.to_string())?;
            let value = r.bytes().map_err(|e| e.to_string())?;
            let origin = origin_of(input)
                .ok_or_else(|| format!("emitted a tuple for input {input}, which is not in the batch"))?;
            full |= self.push(key, value, origin);
        }
        r.expect_end().map_err(|e| e.to_string())?;
        Ok(full)
    }

    /// Sends every buffer (or a bare LWM where a buffer is empty).
    fn flush(&mut self, lwm: &Clock) -> Result<(), ()> {
        for t in &mut self.targets {
            for (b, tx) in t.buffers.iter_mut().zip(&t.inboxes) {
                let msg = if b.is_empty() {
                    ToBolt::Lwm { from: self.from, lwm: lwm.clone() }
                } else {
                    ToBolt::Batch { from: self.from, batch: std::mem::take(b), lwm: lwm.clone() }
                };
                send(tx, msg, &self.abort)?;
            }
        }
        Ok(())
    }
}

/// Everything a run needs, loaded and checked.
pub struct Prepared {
    pub topology: Topology,
    pub plan: Plan,
    pub spout_modules: Vec<LoadedModule>,
    pub bolt_modules: Vec<LoadedModule>,
    pub sink_modules: Vec<LoadedModule>,
}

impl Prepared {
    /// Every processor's name with its loaded module: spouts, then bolts, then sinks.
    pub fn processor_modules(&self) -> impl Iterator<Item = (&String, &LoadedModule)> {
        let t = &self.topology;
        t.spouts
            .iter()
            .map(|s| &s.name)
            .zip(&self.spout_modules)
            .chain(t.bolts.iter().map(|b| &b.name).zip(&self.bolt_modules))
            .chain(t.sinks.iter().map(|s| &s.name).zip(&self.sink_modules))
    }

    /// Who instance `i` of spout `s` is and the init document it starts with.
    fn spout_init(&self, s: usize, i: u32) -> (Ident, serde_json::Value) {
        let (spec, module) = (&self.topology.spouts[s], &self.spout_modules[s]);
        let instances = self.plan.partitions.iter().filter(|p| p.spout == s).count().max(1) as u32;
        let ident = Ident { processor: spec.name.clone(), instance: i, module: module.name() };
        (ident, wasm::init_doc(&spec.name, i, instances, &self.topology.dir, &spec.module.config))
    }

    /// Starts instance `i` of bolt `b` with its configuration.
    fn new_bolt(&self, b: usize, i: u32) -> Result<wasm::Bolt, GuestError> {
        let (spec, module) = (&self.topology.bolts[b], &self.bolt_modules[b]);
        let ident = Ident { processor: spec.name.clone(), instance: i, module: module.name() };
        let init = wasm::init_doc(&spec.name, i, spec.parallelism, &self.topology.dir, &spec.module.config);
        wasm::Bolt::new(module, ident, spec.module.limits, &init)
    }
}

/// Loads and checks every module of a topology, reporting all failures at once.
pub fn prepare(topology: Topology) -> Result<Prepared> {
    prepare_with(topology, &BTreeMap::new())
}

/// [`prepare`] with the partition count of every Kafka spout's topic.
pub fn prepare_with(topology: Topology, kafka_partitions: &BTreeMap<String, u32>) -> Result<Prepared> {
    let mut errors = Vec::new();
    let mut load = |name: &str, kind: ModuleKind, path: &std::path::Path| match wasm::load(name, path, kind) {
        Ok(m) => Some(m),
        Err(e) => {
            errors.push(e.to_string());
            None
        }
    };
    let spout_modules: Vec<_> =
        topology.spouts.iter().map(|s| load(&s.name, ModuleKind::Deserializer, &s.module.path)).collect();
    let bolt_modules: Vec<_> = topology.bolts.iter().map(|b| load(&b.name, ModuleKind::Bolt, &b.module.path)).collect();
    let sink_modules: Vec<_> = topology.sinks.iter().map(|s| load(&s.name, ModuleKind::Sink, &s.module.path)).collect();
    if !errors.is_empty() {
        let n = errors.len();
        bail!("{n} module{} cannot be used:\n  {}", if n == 1 { "" } else { "s" }, errors.join("\n  "));
    }
    let plan = Plan::with_kafka(&topology, kafka_partitions);
    Ok(Prepared {
        plan,
        spout_modules: spout_modules.into_iter().flatten().collect(),
        bolt_modules: bolt_modules.into_iter().flatten().collect(),
        sink_modules: sink_modules.into_iter().flatten().collect(),
        topology,
    })
}

/// Starts one instance of every deserializer and bolt with its configuration,
/// so a `config` the module rejects is reported before anything runs. (Sinks
/// are left out: starting one may touch the directories it is granted.)
pub fn check_configs(p: &Prepared) -> Result<()> {
    let t = &p.topology;
    let mut errors = Vec::new();
    for (si, (s, m)) in t.spouts.iter().zip(&p.spout_modules).enumerate() {
        let (ident, init) = p.spout_init(si, 0);
        if let Err(e) = wasm::Deserializer::new(m, ident, s.module.limits, &init) {
            errors.push(e.to_string());
        }
    }
    for b in 0..t.bolts.len() {
        if let Err(e) = p.new_bolt(b, 0) {
            errors.push(e.to_string());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("\n"))
    }
}

/// Where a run starts.
pub struct Start {
    /// The clock every spout seeks to.
    pub clock: Clock,
    /// The complete round bolts restore (`None`: empty state).
    pub restore: Option<CommitRecord>,
    /// The id the next round gets.
    pub next_round: u64,
}

/// How a process may write to shared storage and how a complete round
/// becomes durable. Embedded: the commit record in the store is the truth.
/// Distributed: the round is recorded in ZooKeeper too, and a process that
/// lost its lease must not write at all.
pub trait Coordinator: Send + Sync {
    /// `Err` when this process may no longer write snapshots or sink output.
    fn check_fence(&self) -> Result<()>;
    /// Makes a complete round durable.
    fn record_complete(&self, store: &FileStore, record: &CommitRecord) -> Result<()>;
}

/// The embedded coordinator: one process, the store's commit record decides.
pub struct LocalCoordinator;

impl Coordinator for LocalCoordinator {
    fn check_fence(&self) -> Result<()> {
        Ok(())
    }
    fn record_complete(&self, store: &FileStore, record: &CommitRecord) -> Result<()> {
        store.write_commit(record).context("cannot record a complete snapshot")
    }
}

/// Runs a prepared topology in this process until its bounded input is done
/// (or forever with `follow`).
pub fn run_embedded(p: Prepared, opts: RunOptions) -> Result<Summary> {
    let t = &p.topology;
    let plan = &p.plan;
    let store = FileStore::open(t.store_dir())
        .with_context(|| format!("cannot open the snapshot store {}", t.store_dir().display()))?;

    // Recovery: the last complete snapshot, if any.
    let recovered = store.latest_complete().context("cannot recover from the snapshot store")?;
    let clock = match &recovered {
        Some(r) => {
            check_same_inputs(t, plan, &r.commit)?;
            for w in &r.warnings {
                eprintln!("hailstorm: warning: {w}");
            }
            let c = restore_clock(plan, &r.commit);
            eprintln!("hailstorm: restoring snapshot #{} ({})", r.commit.round, plan.show_clock(&c));
            report_module_changes(&p, &r.commit);
            c
        }
        None => Clock::filled(plan.spout_instances(), 0),
    };
    let next_round = store.rounds()?.last().map_or(1, |r| r + 1);
    let start = Start { clock, restore: recovered.map(|r| r.commit), next_round };
    run(&p, &opts, &store, start, None, Arc::new(LocalCoordinator))
}

/// The clock a run restored from `commit` starts at (warning about partitions no longer read).
pub fn restore_clock(plan: &Plan, commit: &CommitRecord) -> Clock {
    for (name, _) in &commit.clock {
        if !plan.partitions.iter().any(|p| p.name == *name) {
            eprintln!("hailstorm: warning: the snapshot has partition {name}, which the topology no longer reads");
        }
    }
    plan.clock_from_names(&commit.clock)
}

/// Runs this process's share of a topology: every instance when `net` is
/// `None` (embedded), else the instances `net` places here, reaching the
/// others over the network. The negotiator runs where `net` says.
pub fn run(
    p: &Prepared,
    opts: &RunOptions,
    store: &FileStore,
    start: Start,
    net: Option<&Wiring>,
    coord: Arc<dyn Coordinator>,
) -> Result<Summary> {
    let started = Instant::now();
    let t = &p.topology;
    let plan = &p.plan;
    let local = |e: Endpoint| net.is_none_or(|n| n.is_local(e));
    let last_complete = start.restore.as_ref().map(|c| (c.round, plan.clock_from_names(&c.clock)));
    let start_clock = start.clock;

    let abort = Abort(opts.abort.clone().unwrap_or_else(|| Arc::new(AtomicBool::new(false))));
    let stats = Arc::new(Stats {
        records: AtomicU64::new(0),
        tuples: AtomicU64::new(0),
        lwm: (0..plan.bolt_instances())
            .map(|_| (0..plan.spout_instances()).map(|i| AtomicU64::new(start_clock.get(i as u32))).collect())
            .collect(),
    });
    let mut threads: Vec<(String, JoinHandle<()>)> = Vec::new();
    let spawn = |threads: &mut Vec<(String, JoinHandle<()>)>,
                 name: String,
                 report: Sender<Report>,
                 f: Box<dyn FnOnce() -> Result<()> + Send>|
     -> Result<()> {
        let abort = abort.clone();
        let distributed = net.is_some();
        let label = name.clone();
        let h = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                if let Err(e) = f() {
                    // Errors after the run was torn down are its echo, not news.
                    if !abort.is_set() {
                        if distributed {
                            // Said here too: the negotiator may hear of it second, or not at all.
                            eprintln!("hailstorm: {label}: {e:#}");
                        }
                        let _ = report.send(Report::Failed(e));
                    }
                }
            })
            .with_context(|| format!("cannot start thread {name}"))?;
        threads.push((name, h));
        Ok(())
    };
    let mut result = (|| -> Result<Summary> {
        // Channels: local inboxes, or senders that forward to other workers.
        let (report_tx, report_rx) = unbounded::<Report>();
        let (to_negotiator, report_rx) = if local(Endpoint::Negotiator) {
            (report_tx.clone(), Some(report_rx))
        } else {
            let n = net.ok_or_else(|| anyhow!("internal: a remote negotiator needs a network"))?;
            let (tx, rx) = bounded::<Report>(INBOX);
            let to = Endpoint::Negotiator;
            let (n, abort) = (n.clone(), abort.clone());
            spawn(
                &mut threads,
                "to negotiator".into(),
                report_tx.clone(),
                Box::new(move || n.forward(rx, to, WireReport::from, abort)),
            )?;
            (tx, None)
        };
        let report_tx = to_negotiator;
        let mut forwarder =
            |name: String, f: Box<dyn FnOnce() -> Result<()> + Send>| spawn(&mut threads, name, report_tx.clone(), f);
        let (bolt_tx, bolt_rx) =
            channels::<ToBolt>(plan.bolt_instances(), Endpoint::Bolt, net, &abort, &mut forwarder)?;
        let (spout_tx, spout_rx) =
            channels::<ToSpout>(plan.spout_instances(), Endpoint::Spout, net, &abort, &mut forwarder)?;
        let (sink_tx, sink_rx) = channels::<ToSink>(t.sinks.len(), Endpoint::Sink, net, &abort, &mut forwarder)?;
        let mut inboxes = Inboxes {
            bolts: local_senders(&bolt_tx, &bolt_rx),
            spouts: local_senders(&spout_tx, &spout_rx),
            sinks: local_senders(&sink_tx, &sink_rx),
            negotiator: None,
        };
        if report_rx.is_some() {
            inboxes.negotiator = Some(report_tx.clone());
        }
        // Reachable from other workers at once: what they send waits in the bounded inboxes.
        if let Some(net) = net {
            net.register(std::mem::take(&mut inboxes), abort.clone());
        }

        // Snapshot writer.
        let (save_tx, save_rx) = unbounded::<SaveJob>();
        if bolt_rx.iter().any(Option::is_some) {
            let (store, report, abort, coord) = (store.clone(), report_tx.clone(), abort.clone(), coord.clone());
            spawn(
                &mut threads,
                "snapshot-writer".into(),
                report_tx.clone(),
                Box::new(move || snapshot_writer(store, save_rx, report, abort, coord)),
            )?;
        }

        // Bolt instances: instantiate and restore before anything flows.
        for (n, rx) in bolt_rx.into_iter().enumerate() {
            let Some(rx) = rx else { continue };
            let (b, i) = plan.bolt_of(n).ok_or_else(|| anyhow!("internal: no bolt instance {n}"))?;
            let spec = &t.bolts[b];
            let module = &p.bolt_modules[b];
            let mut guest = p.new_bolt(b, i)?;
            if let Some(commit) = &start.restore {
                restore_bolt(store, commit, &spec.name, spec.grouping, spec.parallelism, i, &mut guest)?;
            }
            let router =
                Router::new(plan.spout_instances() + n, &plan.bolt_consumers[b], plan, &bolt_tx, abort.clone());
            let inputs = plan.bolt_inputs[b].clone();
            let ctx = BoltCtx {
                number: n,
                topology: t.name.clone(),
                processor: spec.name.clone(),
                instance: i,
                parallelism: spec.parallelism,
                module_hash: module.hash.clone(),
                partitions: plan.partitions.iter().map(|p| p.name.clone()).collect(),
                reach: plan.bolt_reach[b].clone(),
            };
            let (start, report, save, abort, stats) =
                (start_clock.clone(), report_tx.clone(), save_tx.clone(), abort.clone(), stats.clone());
            spawn(
                &mut threads,
                format!("bolt {}/{}", spec.name, i),
                report_tx.clone(),
                Box::new(move || run_bolt(ctx, guest, router, inputs, start, rx, report, save, abort, stats)),
            )?;
        }
        drop(save_tx);

        // Sinks.
        for (si, rx) in sink_rx.into_iter().enumerate() {
            let Some(rx) = rx else { continue };
            let spec = &t.sinks[si];
            let module = &p.sink_modules[si];
            let ident = Ident { processor: spec.name.clone(), instance: 0, module: module.name() };
            let init = wasm::init_doc(&spec.name, 0, 1, &t.dir, &spec.module.config);
            let guest = wasm::Sink::new(module, ident, spec.module.limits, &init, &spec.dirs)?;
            let mut inputs = Vec::new();
            for name in &spec.inputs {
                let b = t
                    .bolts
                    .iter()
                    .position(|x| x.name == *name)
                    .ok_or_else(|| anyhow!("sink input {name} is not a bolt"))?;
                let bm = &p.bolt_modules[b];
                let ident =
                    Ident { processor: format!("{}(merge for {})", name, spec.name), instance: 0, module: bm.name() };
                let init = wasm::init_doc(name, 0, 1, &t.dir, &t.bolts[b].module.config);
                let merger = wasm::Bolt::new(bm, ident, t.bolts[b].module.limits, &init)?;
                inputs.push((name.clone(), t.bolts[b].parallelism, merger));
            }
            let ctx = SinkCtx {
                number: si,
                partition_names: plan.partitions.iter().map(|p| p.name.clone()).collect(),
                store: store.clone(),
                coord: coord.clone(),
            };
            let (report, abort) = (report_tx.clone(), abort.clone());
            spawn(
                &mut threads,
                format!("sink {}", spec.name),
                report_tx.clone(),
                Box::new(move || run_sink(ctx, guest, inputs, rx, report, abort)),
            )?;
        }

        // Spouts: one instance per partition.
        for (pi, rx) in spout_rx.into_iter().enumerate() {
            let Some(rx) = rx else { continue };
            let part = plan.partitions.get(pi).ok_or_else(|| anyhow!("internal: no partition {pi}"))?;
            let spec = &t.spouts[part.spout];
            let module = &p.spout_modules[part.spout];
            let (ident, init) = p.spout_init(part.spout, part.index);
            let guest = wasm::Deserializer::new(module, ident.clone(), spec.module.limits, &init)?;
            let offset = start_clock.get(pi as u32);
            let (input, follow) = match (&part.file, &part.kafka) {
                (Some(file), _) => (
                    Input::File(
                        FileReader::open(file, offset)
                            .with_context(|| format!("spout `{}`: cannot read {}", spec.name, file.display()))?,
                    ),
                    opts.follow,
                ),
                (None, Some((topic, partition))) => {
                    let brokers = t.cluster.as_ref().map(|c| c.kafka.clone()).unwrap_or_default();
                    (Input::Kafka { brokers, topic: topic.clone(), partition: *partition, offset, source: None }, true)
                }
                (None, None) => bail!("internal: partition {} has no source", part.name),
            };
            let router = Router::new(pi, &plan.spout_consumers[part.spout], plan, &bolt_tx, abort.clone());
            let ctx = SpoutCtx {
                number: pi,
                partition_name: part.name.clone(),
                partitions: plan.spout_instances(),
                follow,
                module: module.clone(),
                ident,
                limits: spec.module.limits,
                init,
            };
            let (report, abort, stats) = (report_tx.clone(), abort.clone(), stats.clone());
            spawn(
                &mut threads,
                format!("spout {}", part.name),
                report_tx.clone(),
                Box::new(move || run_spout(ctx, guest, input, router, rx, report, abort, stats)),
            )?;
        }
        let Some(report_rx) = report_rx else {
            // No negotiator here: run until the run is torn down from outside.
            while !abort.is_set() {
                std::thread::sleep(HEARTBEAT);
            }
            return Ok(summary(started, &stats, plan, 0, None));
        };
        let shape = Shape { spouts: plan.spout_instances(), bolts: plan.bolt_instances(), sinks: t.sinks.len() };
        let bounded_input = !opts.follow && plan.partitions.iter().all(|p| p.kafka.is_none());
        let mut neg = Negotiator::new(shape, t.interval, bounded_input, last_complete, start.next_round);
        let shell = Shell {
            plan,
            topology: t,
            store,
            p,
            coord: coord.as_ref(),
            spout_tx: &spout_tx,
            bolt_tx: &bolt_tx,
            sink_tx: &sink_tx,
            abort: &abort,
        };
        let mut rounds = 0u64;
        let mut last_progress = Instant::now();
        let mut last_records = 0u64;
        let mut draining = false;
        loop {
            if !draining && opts.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
                draining = true;
                if net.is_none() {
                    eprintln!(
                        "hailstorm: stopping: reading no more input, taking a final snapshot (a second Ctrl-C stops at once)"
                    );
                }
                for tx in &spout_tx {
                    let _ = send(tx, ToSpout::Drain, &abort);
                }
                // Draining only changes the negotiator's mind; it asks for nothing itself.
                let _ = neg.handle(Event::Drain);
            }
            if abort.is_set() {
                bail!("the run was stopped from outside");
            }
            let ev = match report_rx.recv_timeout(HEARTBEAT) {
                Ok(Report::Event(e)) => Some(e),
                Ok(Report::Failed(e)) => return Err(e),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => bail!("every instance stopped unexpectedly"),
            };
            let mut actions = Vec::new();
            if let Some(e) = ev {
                actions.extend(neg.handle(e));
            }
            actions.extend(neg.handle(Event::Tick(Instant::now())));
            for a in actions {
                if let Action::Complete { .. } = a {
                    rounds += 1;
                }
                shell.act(a)?;
            }
            if neg.is_finished() {
                return Ok(summary(started, &stats, plan, rounds, neg.last_complete()));
            }
            if let Some(every) = opts.progress {
                if last_progress.elapsed() >= every {
                    let records = stats.records.load(Ordering::Relaxed);
                    let rate = (records - last_records) as f64 / last_progress.elapsed().as_secs_f64();
                    eprintln!("{}", progress_line(started, records, rate, &stats, plan, neg.last_complete()));
                    last_progress = Instant::now();
                    last_records = records;
                }
            }
        }
    })();

    // Shut everything down, whatever happened.
    abort.set();
    if let Some(net) = net {
        net.unregister();
    }
    for (name, h) in threads {
        if h.join().is_err() {
            eprintln!("hailstorm: internal error: thread {name} panicked");
            if result.is_ok() {
                result = Err(anyhow!("internal error: thread {name} panicked"));
            }
        }
    }
    result
}

/// One bounded channel per endpoint `endpoint(0..count)`: a local endpoint
/// keeps its receiver; a remote one gets a forwarder thread (started through
/// `spawn`) that drains the channel into a connection to its worker.
#[allow(clippy::type_complexity)]
fn channels<T: Serialize + Send + 'static>(
    count: usize,
    endpoint: fn(usize) -> Endpoint,
    net: Option<&Wiring>,
    abort: &Abort,
    spawn: &mut dyn FnMut(String, Box<dyn FnOnce() -> Result<()> + Send>) -> Result<()>,
) -> Result<(Vec<Sender<T>>, Vec<Option<Receiver<T>>>)> {
    let mut txs = Vec::with_capacity(count);
    let mut rxs = Vec::with_capacity(count);
    for n in 0..count {
        let (tx, rx) = bounded::<T>(INBOX);
        let to = endpoint(n);
        match net.filter(|w| !w.is_local(to)) {
            None => rxs.push(Some(rx)),
            Some(w) => {
                let (w, abort) = (w.clone(), abort.clone());
                spawn(format!("to {to}"), Box::new(move || w.forward(rx, to, |m| m, abort)))?;
                rxs.push(None);
            }
        }
        txs.push(tx);
    }
    Ok((txs, rxs))
}

/// The senders of the endpoints that run here, for connections from other workers.
fn local_senders<T>(txs: &[Sender<T>], rxs: &[Option<Receiver<T>>]) -> BTreeMap<usize, Sender<T>> {
    txs.iter().zip(rxs).enumerate().filter(|(_, (_, rx))| rx.is_some()).map(|(n, (tx, _))| (n, tx.clone())).collect()
}

fn summary(started: Instant, stats: &Stats, plan: &Plan, rounds: u64, last: Option<&(u64, Clock)>) -> Summary {
    let (last_round, last_clock) = match last {
        Some((r, c)) => (Some(*r), plan.show_clock(c)),
        None => (None, String::new()),
    };
    Summary {
        records: stats.records.load(Ordering::Relaxed),
        tuples: stats.tuples.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        rounds,
        last_round,
        last_clock,
    }
}

fn progress_line(
    started: Instant,
    records: u64,
    rate: f64,
    stats: &Stats,
    plan: &Plan,
    last: Option<&(u64, Clock)>,
) -> String {
    let lwm = Clock(
        (0..plan.spout_instances())
            .map(|p| {
                stats
                    .lwm
                    .iter()
                    .map(|inst| inst.get(p).map_or(INFINITY, |a| a.load(Ordering::Relaxed)))
                    .min()
                    .unwrap_or(INFINITY)
            })
            .collect(),
    );
    let snap = match last {
        Some((r, c)) => format!("snapshot #{r} complete at {}", plan.show_clock(c)),
        None => "no snapshot complete yet".into(),
    };
    format!(
        "[{:>6.1}s] {} records ({}/s) · LWM {} · {}",
        started.elapsed().as_secs_f64(),
        human(records as f64),
        human(rate),
        plan.show_clock(&lwm),
        snap
    )
}

/// 1234567 → "1.23M".
pub fn human(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2}G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn report_module_changes(p: &Prepared, commit: &CommitRecord) {
    for (name, m) in p.processor_modules() {
        match commit.modules.get(name) {
            Some(old) if *old != m.hash => eprintln!(
                "hailstorm: module of `{name}` changed since snapshot #{} ({} -> {}): continuing from the old state with the new code",
                commit.round,
                old.get(..12).unwrap_or(old),
                m.short_hash()
            ),
            None => eprintln!("hailstorm: `{name}` is new since snapshot #{}", commit.round),
            _ => {}
        }
    }
}

/// What each partition reads, as recorded in commit records.
fn partition_sources(plan: &Plan) -> BTreeMap<String, String> {
    plan.partitions.iter().filter_map(|p| p.file.as_ref().map(|f| (p.name.clone(), f.display().to_string()))).collect()
}

/// A snapshot's offsets only mean something for the input they were taken
/// on: resuming another topology's store, or a partition that now names a
/// different file, would silently skip or repeat records. Refuse instead.
fn check_same_inputs(t: &Topology, plan: &Plan, commit: &CommitRecord) -> Result<()> {
    if commit.topology != t.name {
        bail!(
            "the snapshot store {} belongs to topology `{}`, not `{}`; give this topology its own snapshot.store",
            t.store_dir().display(),
            commit.topology,
            t.name
        );
    }
    for (name, now) in partition_sources(plan) {
        if let Some(then) = commit.sources.get(&name) {
            if *then != now {
                bail!(
                    "partition {name} read {then} in snapshot #{}, but now names {now}: its offsets would apply to other data. \
                     Keep the list of files in the same order (add new files at the end), or use a new snapshot.store to start over",
                    commit.round
                );
            }
        }
    }
    Ok(())
}

/// Restores one bolt instance from a complete round. Under key grouping the
/// entries of every old instance are re-partitioned by key hash, so a change
/// of parallelism is handled too.
fn restore_bolt(
    store: &FileStore,
    commit: &CommitRecord,
    bolt: &str,
    grouping: Grouping,
    parallelism: u32,
    instance: u32,
    guest: &mut wasm::Bolt,
) -> Result<()> {
    let files: Vec<&FileRef> = commit.files.iter().filter(|f| f.processor == bolt).collect();
    let old_parallelism = commit.parallelism.get(bolt).copied().unwrap_or(files.len() as u32);
    for f in files {
        let take = match grouping {
            Grouping::Key => true,
            Grouping::Global => true,
            Grouping::Broadcast => {
                if old_parallelism != parallelism {
                    bail!("bolt `{bolt}` uses broadcast grouping and its parallelism changed ({old_parallelism} -> {parallelism}): its state cannot be re-partitioned");
                }
                f.instance == instance
            }
        };
        if !take {
            continue;
        }
        let (snap, _) = store.read_snapshot(commit.round, &f.processor, f.instance)?;
        let entries = if grouping == Grouping::Key && !(old_parallelism == parallelism && f.instance == instance) {
            let pairs =
                abi::read_pairs(&snap.entries).map_err(|e| anyhow!("snapshot of {bolt}/{}: {e}", f.instance))?;
            let mut w = abi::BatchWriter::new();
            for (k, v) in pairs {
                if key_instance(k, parallelism) == instance {
                    w.bytes(k).bytes(v).end_item();
                }
            }
            w.finish()
        } else {
            snap.entries
        };
        guest.restore(bolt::SLOT_A, &entries)?;
    }
    Ok(())
}

struct Shell<'a> {
    plan: &'a Plan,
    topology: &'a Topology,
    store: &'a FileStore,
    p: &'a Prepared,
    coord: &'a dyn Coordinator,
    spout_tx: &'a [Sender<ToSpout>],
    bolt_tx: &'a [Sender<ToBolt>],
    sink_tx: &'a [Sender<ToSink>],
    abort: &'a Abort,
}

impl Shell<'_> {
    fn act(&self, a: Action) -> Result<()> {
        let lost = || anyhow!("an instance stopped while the negotiator was talking to it");
        match a {
            Action::Gate { round } => {
                for tx in self.spout_tx {
                    send(tx, ToSpout::Gate(round), self.abort).map_err(|_| lost())?;
                }
            }
            Action::Announce { round, clock } => {
                for tx in self.bolt_tx {
                    send(tx, ToBolt::Announce(Round { id: round, clock: clock.clone() }), self.abort)
                        .map_err(|_| lost())?;
                }
            }
            Action::Ungate { .. } => {
                for tx in self.spout_tx {
                    send(tx, ToSpout::Ungate, self.abort).map_err(|_| lost())?;
                }
            }
            Action::Complete { round, clock, crcs } => {
                let mut files = Vec::new();
                for (n, crc) in crcs.into_iter().enumerate() {
                    let (b, i) = self.plan.bolt_of(n).ok_or_else(|| anyhow!("internal: no bolt instance {n}"))?;
                    files.push(FileRef { processor: self.topology.bolts[b].name.clone(), instance: i, crc });
                }
                let modules = self.p.processor_modules().map(|(name, m)| (name.clone(), m.hash.clone())).collect();
                let record = CommitRecord {
                    topology: self.topology.name.clone(),
                    round,
                    clock: self.plan.clock_names(&clock),
                    files,
                    modules,
                    parallelism: self.topology.bolts.iter().map(|b| (b.name.clone(), b.parallelism)).collect(),
                    sources: partition_sources(self.plan),
                    created_unix_ms: crate::snapshot::now_ms(),
                };
                self.coord.record_complete(self.store, &record)?;
                tracing::debug!("snapshot #{round} complete at {}", self.plan.show_clock(&clock));
                for tx in self.sink_tx {
                    send(tx, ToSink::Commit { round, clock: clock.clone() }, self.abort).map_err(|_| lost())?;
                }
            }
            Action::Collect { keep, below } => {
                self.coord.check_fence()?;
                for r in self.store.rounds()? {
                    if r < below && !keep.contains(&r) {
                        self.store.remove_round(r)?;
                    }
                }
            }
            Action::Finish => {}
        }
        Ok(())
    }
}

fn snapshot_writer(
    store: FileStore,
    jobs: Receiver<SaveJob>,
    report: Sender<Report>,
    abort: Abort,
    coord: Arc<dyn Coordinator>,
) -> Result<()> {
    loop {
        match jobs.recv_timeout(HEARTBEAT) {
            Ok(job) => {
                coord.check_fence()?;
                let crc = store.write_snapshot(&job.file).with_context(|| {
                    format!("cannot save the snapshot of {}/{}", job.file.processor, job.file.instance)
                })?;
                let _ = report.send(Report::Event(Event::Saved { bolt: job.bolt_number, round: job.file.round, crc }));
            }
            Err(RecvTimeoutError::Timeout) => {
                if abort.is_set() {
                    return Ok(());
                }
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

struct SpoutCtx {
    number: usize,
    partition_name: String,
    partitions: usize,
    /// Keep tailing the file at its end (until told to drain).
    follow: bool,
    module: LoadedModule,
    ident: Ident,
    limits: crate::topology::Limits,
    init: serde_json::Value,
}

#[allow(clippy::too_many_arguments)]
fn run_spout(
    ctx: SpoutCtx,
    mut guest: wasm::Deserializer,
    mut reader: Input,
    mut router: Router,
    control: Receiver<ToSpout>,
    report: Sender<Report>,
    abort: Abort,
    stats: Arc<Stats>,
) -> Result<()> {
    let lwm_at = |pos: u64| spout_lwm(&ctx, pos);
    let mut batch = RecordBatch::default();
    let mut eof_reported = false;
    let mut st = SpoutState { follow: ctx.follow, drained: false };
    let mut last_send = Instant::now();
    loop {
        // Control messages between batches: gating pauses here.
        while let Ok(msg) = control.try_recv() {
            if let Flow::Stop = st.control(msg, &ctx, reader.position(), &mut router, &control, &report, &abort)? {
                return Ok(());
            }
        }
        if abort.is_set() {
            return Ok(());
        }
        if st.drained {
            // Stopping: the input ends where this spout stands.
            batch.offsets.clear();
        } else {
            reader.read_batch(SPOUT_BATCH_RECORDS, SPOUT_BATCH_BYTES, !st.follow, &mut batch).with_context(|| {
                format!("spout partition {}: cannot read {}", ctx.partition_name, reader.describe())
            })?;
        }
        if batch.is_empty() {
            if !st.follow && !eof_reported {
                let _ = report.send(Report::Event(Event::Eof { spout: ctx.number, offset: reader.position() }));
                eof_reported = true;
            }
            if last_send.elapsed() >= HEARTBEAT {
                router.flush(&lwm_at(reader.position())).map_err(|_| anyhow!("stopped"))?;
                last_send = Instant::now();
            }
            // Idle: wait for control or for the file to grow.
            match control.recv_timeout(HEARTBEAT) {
                Ok(msg) => {
                    if let Flow::Stop =
                        st.control(msg, &ctx, reader.position(), &mut router, &control, &report, &abort)?
                    {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
                Err(RecvTimeoutError::Timeout) => {}
            }
            continue;
        }
        let partition = ctx.number as u32;
        let emitted = match guest.deserialize(&batch.framed) {
            Ok(e) => e,
            Err(e) => return Err(pinpoint(&ctx, &batch, e).into()),
        };
        let offsets = &batch.offsets;
        let count = abi::BatchReader::new(emitted).map(|r| r.count()).unwrap_or(0);
        router
            .route_emitted(emitted, |i| offsets.get(i as usize).map(|&offset| Origin { partition, offset }))
            .map_err(|m| {
                anyhow!(
                    "processor `{}` instance {} (module {}) broke the ABI in hailstorm_deserialize: {m}",
                    ctx.ident.processor,
                    ctx.ident.instance,
                    ctx.ident.module
                )
            })?;
        stats.records.fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats.tuples.fetch_add(u64::from(count), Ordering::Relaxed);
        router.flush(&lwm_at(batch.end)).map_err(|_| anyhow!("stopped"))?;
        last_send = Instant::now();
    }
}

/// The LWM a spout sends: its position for its partition, infinity elsewhere.
fn spout_lwm(ctx: &SpoutCtx, position: u64) -> Clock {
    let mut c = Clock::filled(ctx.partitions, INFINITY);
    c.set(ctx.number as u32, position);
    c
}

/// What a spout does after a control message.
enum Flow {
    Go,
    Stop,
}

/// A spout's reading mode, changed by control messages.
struct SpoutState {
    follow: bool,
    drained: bool,
}

impl SpoutState {
    /// Handles one control message. A gate reports the spout's position,
    /// makes sure every downstream instance has it as LWM (the round's
    /// clock), then waits for the ungate, still obeying drains and stops.
    #[allow(clippy::too_many_arguments)]
    fn control(
        &mut self,
        msg: ToSpout,
        ctx: &SpoutCtx,
        position: u64,
        router: &mut Router,
        control: &Receiver<ToSpout>,
        report: &Sender<Report>,
        abort: &Abort,
    ) -> Result<Flow> {
        let round = match msg {
            ToSpout::Stop => return Ok(Flow::Stop),
            ToSpout::Ungate => return Ok(Flow::Go),
            ToSpout::Drain => {
                self.drain();
                return Ok(Flow::Go);
            }
            ToSpout::Gate(round) => round,
        };
        let _ = report.send(Report::Event(Event::Position { spout: ctx.number, round, offset: position }));
        router.flush(&spout_lwm(ctx, position)).map_err(|_| anyhow!("stopped"))?;
        loop {
            match control.recv_timeout(HEARTBEAT) {
                Ok(ToSpout::Ungate) => return Ok(Flow::Go),
                Ok(ToSpout::Drain) => self.drain(),
                Ok(ToSpout::Gate(_)) => {}
                Ok(ToSpout::Stop) | Err(RecvTimeoutError::Disconnected) => return Ok(Flow::Stop),
                Err(RecvTimeoutError::Timeout) if abort.is_set() => return Ok(Flow::Stop),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn drain(&mut self) {
        self.drained = true;
        self.follow = false;
    }
}

/// A deserializer failed on a batch: find the first record that fails on its
/// own, in a fresh instance, so the error names its exact origin.
fn pinpoint(ctx: &SpoutCtx, batch: &RecordBatch, batch_err: GuestError) -> GuestError {
    let records = batch.records();
    let mut fresh = match wasm::Deserializer::new(&ctx.module, ctx.ident.clone(), ctx.limits, &ctx.init) {
        Ok(g) => g,
        Err(_) => return batch_err,
    };
    for (i, rec) in records.iter().enumerate() {
        let mut w = abi::BatchWriter::new();
        w.bytes(rec).end_item();
        if let Err(e) = fresh.deserialize(&w.finish()) {
            let offset = batch.offsets.get(i).copied().unwrap_or(0);
            let preview: String = String::from_utf8_lossy(rec).chars().take(60).collect();
            return e.with_origin(format!("record {}@{offset} ({preview:?})", ctx.partition_name));
        }
    }
    let first = batch.offsets.first().copied().unwrap_or(0);
    batch_err.with_origin(format!("a batch of {} records from {}@{first}", batch.len(), ctx.partition_name))
}

struct BoltCtx {
    number: usize,
    topology: String,
    processor: String,
    instance: u32,
    parallelism: u32,
    module_hash: String,
    partitions: Vec<String>,
    reach: Vec<bool>,
}

/// The WASM bolt seen as [`Slots`], routing what it emits downstream.
struct WasmSlots<'a> {
    guest: &'a mut wasm::Bolt,
    router: &'a mut Router,
    partitions: &'a [String],
}

fn describe_origins(batch: &TupleBatch, partitions: &[String]) -> String {
    let mut lo: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for o in batch.origins() {
        let e = lo.entry(o.partition).or_insert((o.offset, o.offset));
        e.0 = e.0.min(o.offset);
        e.1 = e.1.max(o.offset);
    }
    let parts: Vec<String> = lo
        .iter()
        .map(|(p, (a, b))| {
            let name = partitions.get(*p as usize).map_or("?", |s| s.as_str());
            if a == b {
                format!("{name}@{a}")
            } else {
                format!("{name}@{a}..={b}")
            }
        })
        .collect();
    format!("a batch of {} tuples from records {}", batch.len(), parts.join(", "))
}

impl Slots for WasmSlots<'_> {
    type Error = anyhow::Error;

    fn fold(&mut self, slot: i32, batch: &mut TupleBatch) -> Result<()> {
        let ident = self.guest.ident().clone();
        let emitted = match self.guest.fold(slot, batch.frame()) {
            Ok(e) => e,
            Err(e) => return Err(e.with_origin(describe_origins(batch, self.partitions)).into()),
        };
        if emitted.len() > 4 {
            let origins = batch.origins();
            self.router.route_emitted(emitted, |i| origins.get(i as usize).copied()).map_err(|m| {
                anyhow!(
                    "processor `{}` instance {} (module {}) broke the ABI in hailstorm_fold: {m}",
                    ident.processor,
                    ident.instance,
                    ident.module
                )
            })?;
        }
        Ok(())
    }

    fn merge(&mut self, dst: i32, src: i32) -> Result<()> {
        Ok(self.guest.merge(dst, src)?)
    }

    fn snapshot(&mut self, slot: i32) -> Result<Vec<u8>> {
        Ok(self.guest.snapshot(slot)?)
    }
}

#[allow(clippy::too_many_arguments)]
fn run_bolt(
    ctx: BoltCtx,
    mut guest: wasm::Bolt,
    mut router: Router,
    inputs: Vec<usize>,
    start: Clock,
    inbox: Receiver<ToBolt>,
    report: Sender<Report>,
    save: Sender<SaveJob>,
    abort: Abort,
    stats: Arc<Stats>,
) -> Result<()> {
    // Partitions that cannot reach this instance never hold back its LWM.
    let mut start = start;
    for (p, r) in ctx.reach.iter().enumerate() {
        if !r {
            start.set(p as u32, INFINITY);
        }
    }
    let mut channel_of = BTreeMap::new();
    for (c, sender) in inputs.iter().enumerate() {
        channel_of.insert(*sender, c);
    }
    let mut core = BoltCore::new(inputs.len(), &start);
    let mut last_lwm = core.lwm().clone();
    loop {
        let msg = match inbox.recv_timeout(HEARTBEAT) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => {
                if abort.is_set() {
                    return Ok(());
                }
                if router.has_targets() {
                    router.flush(core.lwm()).map_err(|_| anyhow!("stopped"))?;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        if abort.is_set() {
            return Ok(());
        }
        let mut slots = WasmSlots { guest: &mut guest, router: &mut router, partitions: &ctx.partitions };
        let finished = match msg {
            ToBolt::Stop => return Ok(()),
            ToBolt::Batch { from, batch, lwm } => {
                let c = *channel_of.get(&from).ok_or_else(|| {
                    anyhow!("bolt {}/{}: message from unknown sender {from}", ctx.processor, ctx.instance)
                })?;
                core.on_batch(&mut slots, c, batch, &lwm)
            }
            ToBolt::Lwm { from, lwm } => {
                let c = *channel_of.get(&from).ok_or_else(|| {
                    anyhow!("bolt {}/{}: message from unknown sender {from}", ctx.processor, ctx.instance)
                })?;
                core.on_lwm(&mut slots, c, &lwm)
            }
            ToBolt::Announce(round) => {
                let id = round.id;
                let r = core.announce(&mut slots, round);
                let _ = report.send(Report::Event(Event::Acked { bolt: ctx.number, round: id }));
                r
            }
        };
        let finished = finished.map_err(|e| match e {
            bolt::Error::Core(c) => anyhow!("bolt {}/{}: {c}", ctx.processor, ctx.instance),
            bolt::Error::Slots(e) => e,
        })?;
        if let Some(Finished { round, entries }) = finished {
            let file = SnapshotFile {
                topology: ctx.topology.clone(),
                processor: ctx.processor.clone(),
                instance: ctx.instance,
                parallelism: ctx.parallelism,
                round: round.id,
                clock: ctx.partitions.iter().cloned().zip(round.clock.0.iter().copied()).collect(),
                module_hash: ctx.module_hash.clone(),
                entries,
            };
            save.send(SaveJob { bolt_number: ctx.number, file }).map_err(|_| anyhow!("the snapshot writer stopped"))?;
        }
        if *core.lwm() != last_lwm {
            last_lwm = core.lwm().clone();
            if let Some(mine) = stats.lwm.get(ctx.number) {
                for (p, a) in mine.iter().enumerate() {
                    a.store(last_lwm.get(p as u32), Ordering::Relaxed);
                }
            }
            if router.has_targets() {
                router.flush(&last_lwm).map_err(|_| anyhow!("stopped"))?;
            }
        }
    }
}

struct SinkCtx {
    number: usize,
    partition_names: Vec<String>,
    store: FileStore,
    coord: Arc<dyn Coordinator>,
}

fn run_sink(
    ctx: SinkCtx,
    mut guest: wasm::Sink,
    mut inputs: Vec<(String, u32, wasm::Bolt)>,
    rx: Receiver<ToSink>,
    report: Sender<Report>,
    abort: Abort,
) -> Result<()> {
    let SinkCtx { number, partition_names, store, coord } = ctx;
    const SCRATCH: i32 = 2;
    loop {
        let mut latest = match rx.recv_timeout(HEARTBEAT) {
            Ok(ToSink::Commit { round, clock }) => (round, clock),
            Ok(ToSink::Stop) => return Ok(()),
            Err(RecvTimeoutError::Timeout) => {
                if abort.is_set() {
                    return Ok(());
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        // A sink that falls behind writes only the newest committed state.
        while let Ok(m) = rx.try_recv() {
            match m {
                ToSink::Commit { round, clock } => latest = (round, clock),
                ToSink::Stop => return Ok(()),
            }
        }
        let (round, clock) = latest;
        let mut docs = Vec::new();
        for (bolt, parallelism, merger) in &mut inputs {
            // The committed state of a bolt is the ⊕ of its instances' snapshots.
            merger.clear(SCRATCH)?;
            for i in 0..*parallelism {
                let (snap, _) = store.read_snapshot(round, bolt, i)?;
                merger.restore(SCRATCH, &snap.entries)?;
            }
            docs.push((bolt.clone(), merger.snapshot(SCRATCH)?));
        }
        let named: Vec<(String, u64)> = partition_names.iter().cloned().zip(clock.0.iter().copied()).collect();
        let doc = abi::write_commit(round, &named, &docs);
        coord.check_fence()?;
        guest.commit(&doc)?;
        let _ = report.send(Report::Event(Event::SinkCommitted { sink: number, round }));
    }
}

/// How long a Kafka spout waits for the broker when it opens its partition.
const KAFKA_OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// What a spout instance reads: a file, or a Kafka partition (opened on the
/// first read, in the spout's own thread).
pub(crate) enum Input {
    File(FileReader),
    Kafka { brokers: String, topic: String, partition: u32, offset: u64, source: Option<crate::kafka::KafkaSource> },
}

impl Input {
    fn read_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
        complete: bool,
        out: &mut RecordBatch,
    ) -> Result<()> {
        match self {
            Input::File(r) => Ok(r.read_batch(max_records, max_bytes, complete, out)?),
            Input::Kafka { brokers, topic, partition, offset, source } => {
                let src = match source {
                    Some(s) => s,
                    None => source.insert(crate::kafka::KafkaSource::open(
                        brokers,
                        topic,
                        *partition,
                        *offset,
                        KAFKA_OPEN_TIMEOUT,
                    )?),
                };
                src.read_batch(max_records, max_bytes, HEARTBEAT / 5, out)
            }
        }
    }

    fn position(&self) -> u64 {
        match self {
            Input::File(r) => r.position(),
            Input::Kafka { source: Some(s), .. } => s.position(),
            Input::Kafka { offset, .. } => *offset,
        }
    }

    fn describe(&self) -> String {
        match self {
            Input::File(r) => r.path().display().to_string(),
            Input::Kafka { source: Some(s), .. } => s.describe(),
            Input::Kafka { brokers, topic, partition, .. } => {
                format!("topic `{topic}` partition {partition} on {brokers}")
            }
        }
    }
}
