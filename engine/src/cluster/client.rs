//! The client commands of a cluster: `deploy` (upload a topology and its
//! modules, wait until the leader runs it), `stop` and `status`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::state::{json, Complete, Paths, SinkWaiting, Spec, State, Status, WorkerInfo, World};
use super::zk::{Mode, Zk};
use super::POLL;
use crate::core::health::Health;
use crate::core::negotiator::show_round;
use crate::runtime::Prepared;
use crate::topology::{Source, Topology};

/// How long `deploy` and `stop` wait for the cluster.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a client waits for ZooKeeper or the broker.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// `hailstorm deploy` of a topology with a `[cluster]` table: uploads it and
/// waits until the leader runs it (or says why not).
pub fn deploy(p: &Prepared, overrides: &[String]) -> Result<String> {
    let t = &p.topology;
    let cluster = t.cluster.as_ref().ok_or_else(|| anyhow!("internal: no [cluster] table"))?;
    // The broker first: a topology that cannot read its input is not deployed.
    let partitions = super::probe::partition_counts(t, CLIENT_TIMEOUT)?;
    let zk = Zk::connect(&cluster.zookeeper, CLIENT_TIMEOUT)?;
    zk.check_root(false)?;
    if zk.children(Paths::WORKERS)?.is_empty() {
        bail!(
            "no worker has joined the cluster at {}; start some with `hailstorm worker --zookeeper {}`",
            zk.describe(),
            zk.describe()
        );
    }
    check_grants(&zk, t)?;
    let generation = publish(&zk, p, overrides, partitions)?;
    let started = Instant::now();
    loop {
        if let Some((s, _)) = zk.get_json::<Status>(&Paths::status(&t.name))? {
            if s.generation == generation {
                match s.state {
                    State::Running => {
                        let at = zk.describe();
                        return Ok(format!("deployed `{}` generation {generation} on {at}: {}", t.name, s.message));
                    }
                    State::Failed => bail!("the cluster could not run `{}`: {}", t.name, s.message),
                    State::Waiting | State::Stopped => {}
                }
            }
        }
        if started.elapsed() > ACCEPT_TIMEOUT {
            let (at, name) = (zk.describe(), &t.name);
            bail!(
                "the cluster at {at} did not start `{name}` generation {generation} within {}s; see `hailstorm status {name} --zookeeper {at}`",
                ACCEPT_TIMEOUT.as_secs(),
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Refuses a topology whose sinks are granted directories some worker does
/// not allow (a sink may be placed on any worker).
fn check_grants(zk: &Zk, t: &crate::topology::Topology) -> Result<()> {
    for w in zk.children(Paths::WORKERS)? {
        let Some((info, _)) = zk.get_json::<WorkerInfo>(&Paths::worker(&w))? else { continue };
        if let Some((sink, dir)) = t.grants_outside(&info.allow_grants).into_iter().next() {
            let why = super::epoch::refused_grant(&sink, &dir, &format!("{w} ({})", info.addr), &info.allow_grants);
            return Err(crate::error::mark(anyhow!("{why}"), crate::error::Domain::Usage, false));
        }
    }
    Ok(())
}

/// Uploads the modules (content-addressed) and the spec; returns its generation.
fn publish(zk: &Zk, p: &Prepared, overrides: &[String], partitions: BTreeMap<String, u32>) -> Result<u64> {
    let t = &p.topology;
    let mut modules = BTreeMap::new();
    let store = super::modules::store_of(t)?;
    for (name, m) in p.processor_modules() {
        match &store {
            Some(store) => super::modules::publish(zk, store, &m.hash, &m.path)?,
            None => {
                let path = Paths::module(&m.hash);
                if zk.get_blob(&path)?.is_none() {
                    let bytes = std::fs::read(&m.path).with_context(|| format!("cannot read {}", m.path.display()))?;
                    zk.put_blob(&path, &bytes)?;
                }
            }
        }
        modules.insert(name.clone(), m.hash.clone());
    }
    let source = std::fs::read_to_string(&t.file).with_context(|| format!("cannot read {}", t.file.display()))?;
    let path = Paths::topology(&t.name);
    let old = zk.get_json::<Spec>(&path)?;
    let generation = old.as_ref().map_or(0, |(s, _)| s.generation) + 1;
    let (file, overrides) = (t.file.clone(), overrides.to_vec());
    let partitions_at_ms = crate::store::now_ms();
    let spec = Spec { generation, source, file, overrides, modules, stopped: false, partitions, partitions_at_ms };
    match &old {
        Some((_, v)) => {
            zk.set(&path, &json(&spec)?, Some(*v)).context("another deploy of this topology raced this one")?;
        }
        None => {
            zk.ensure(Paths::TOPOLOGIES)?;
            if zk.create(&path, &json(&spec)?, Mode::Persistent)?.is_none() {
                bail!("another deploy of `{}` raced this one", t.name);
            }
        }
    }
    Ok(generation)
}

/// `hailstorm stop NAME`: a final round, then nothing runs.
pub fn stop(zookeeper: &str, name: &str) -> Result<String> {
    let zk = Zk::connect(zookeeper, CLIENT_TIMEOUT)?;
    zk.check_root(false)?;
    let path = Paths::topology(name);
    let (mut spec, v) =
        zk.get_json::<Spec>(&path)?.ok_or_else(|| anyhow!("no topology `{name}` is deployed at {}", zk.describe()))?;
    if !spec.stopped {
        spec.stopped = true;
        zk.set(&path, &json(&spec)?, Some(v)).context("the topology changed meanwhile; try again")?;
    }
    let started = Instant::now();
    loop {
        if let Some((s, _)) = zk.get_json::<Status>(&Paths::status(name))? {
            if matches!(s.state, State::Stopped | State::Failed) {
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
    /// Is it healthy: running and advancing, stalled since when, failed
    /// and why, waiting for the broker, stopped.
    pub health: Health,
    /// Connector sinks of the current epoch that cannot write, and why.
    #[serde(default)]
    pub sinks_waiting: BTreeMap<String, String>,
    /// Workers of the current epoch that cannot reach the object store, and why.
    #[serde(default)]
    pub store_unreachable: BTreeMap<String, String>,
}

/// `hailstorm status [NAME]`: the workers and every topology (or only `only`).
pub fn status(zookeeper: &str, only: Option<&str>) -> Result<ClusterStatus> {
    let zk = Zk::connect(zookeeper, CLIENT_TIMEOUT)?;
    zk.check_root(false)?;
    let mut workers = Vec::new();
    for w in zk.children(Paths::WORKERS)? {
        if let Some((info, _)) = zk.get_json::<WorkerInfo>(&Paths::worker(&w))? {
            workers.push((w, info.addr));
        }
    }
    let mut topologies = Vec::new();
    for name in zk.children(Paths::TOPOLOGIES)? {
        if only.is_none_or(|o| o == name) {
            topologies.extend(topology_status(&zk, name)?);
        }
    }
    if let Some(o) = only {
        if topologies.is_empty() {
            bail!("no topology `{o}` is deployed at {}", zk.describe());
        }
    }
    Ok(ClusterStatus { cluster: zk.describe(), workers, topologies })
}

fn topology_status(zk: &Zk, name: String) -> Result<Option<TopologyStatus>> {
    let Some((spec, _)) = zk.get_json::<Spec>(&Paths::topology(&name))? else { return Ok(None) };
    let status = zk.get_json::<Status>(&Paths::status(&name))?.map(|s| s.0);
    let world = zk.get_json::<World>(&Paths::world(&name))?.map(|w| w.0);
    let last_complete = zk.get_json::<Complete>(&Paths::complete(&name))?.map(|c| c.0);
    let mut assignment: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (e, wk, _) in world.iter().flat_map(|w| &w.placement) {
        assignment.entry(wk.clone()).or_default().push(e.to_string());
    }
    let topology = Topology::from_source(&spec.source, &spec.file, &spec.overrides).ok();
    let lag = topology.as_ref().map(|t| lag(t, last_complete.as_ref())).unwrap_or_default();
    let interval = topology.as_ref().map_or(Duration::from_secs(1), |t| t.interval);
    let health = health(status.as_ref(), last_complete.as_ref(), interval);
    let epoch = world.as_ref().map(|w| w.epoch);
    let sinks_waiting = notes(zk, &Paths::sinks_waiting(&name), epoch)?;
    let store_unreachable = notes(zk, &Paths::stores_unreachable(&name), epoch)?;
    let leader = world.map(|w| w.leader);
    let generation = spec.generation;
    Ok(Some(TopologyStatus {
        name,
        generation,
        status,
        leader,
        assignment,
        last_complete,
        lag,
        health,
        sinks_waiting,
        store_unreachable,
    }))
}

/// The notes under `parent` (sinks that cannot write, workers that cannot
/// reach the store) of epoch `epoch` (older notes are stale).
fn notes(zk: &Zk, parent: &str, epoch: Option<u64>) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for sink in zk.children(parent)? {
        if let Some((w, _)) = zk.get_json::<SinkWaiting>(&format!("{parent}/{sink}"))? {
            if Some(w.epoch) == epoch {
                let secs = crate::store::now_ms().saturating_sub(w.since_ms) as f64 / 1000.0;
                out.insert(sink, format!("{} (for {secs:.0}s)", w.why));
            }
        }
    }
    Ok(out)
}

/// The verdict on a topology from what the leader and the last round say.
fn health(status: Option<&Status>, complete: Option<&Complete>, interval: Duration) -> Health {
    let facts = crate::core::health::Facts {
        state: status.map(|s| s.state),
        message: status.map_or("", |s| s.message.as_str()),
        state_at_ms: status.map_or(0, |s| s.at_ms),
        // A round of an earlier epoch still counts once the new epoch runs.
        last_complete_ms: complete.map(|c| c.at_ms),
        interval,
        now_ms: crate::store::now_ms(),
    };
    crate::core::health::judge(&facts)
}

/// Records of each Kafka partition not yet in a complete round (partitions
/// whose broker cannot be reached are left out).
fn lag(t: &Topology, last_complete: Option<&Complete>) -> BTreeMap<String, u64> {
    let mut lag = BTreeMap::new();
    let committed: BTreeMap<&str, u64> =
        last_complete.iter().flat_map(|c| c.clock.iter().map(|(p, o)| (p.as_str(), *o))).collect();
    for s in &t.spouts {
        let (Source::Kafka { topic }, Some(c)) = (&s.source, &t.cluster) else { continue };
        let Ok(highs) = crate::kafka::high_watermarks(&c.kafka, topic, Duration::from_secs(5)) else { continue };
        for (i, h) in highs.iter().enumerate() {
            let p = format!("{}/{i}", s.name);
            let done = committed.get(p.as_str()).copied().unwrap_or(0);
            lag.insert(p, h.saturating_sub(done));
        }
    }
    lag
}

/// The human form of [`status`].
pub fn show_status(s: &ClusterStatus) -> String {
    let mut out = format!("cluster {}: {} worker(s)\n", s.cluster, s.workers.len());
    for (w, a) in &s.workers {
        out.push_str(&format!("  {w} at {a}\n"));
    }
    for t in &s.topologies {
        let (state, msg) = t.status.as_ref().map_or(("unknown".into(), ""), |s| (s.state.to_string(), &s.message));
        out.push_str(&format!("topology `{}` generation {}: {state} ({msg})\n", t.name, t.generation));
        let h = &t.health;
        out.push_str(&format!("  health: {} — {}\n", h.verdict, h.reason));
        if let Some(l) = &t.leader {
            out.push_str(&format!("  negotiator on {l}\n"));
        }
        for (w, eps) in &t.assignment {
            out.push_str(&format!("  {w}: {}\n", eps.join(", ")));
        }
        match &t.last_complete {
            Some(c) => {
                let age = crate::store::now_ms().saturating_sub(c.at_ms) as f64 / 1000.0;
                let clock: Vec<String> = c.clock.iter().map(|(p, o)| format!("{p}@{o}")).collect();
                let round = show_round(c.round);
                out.push_str(&format!("  last complete round {round} ({age:.1}s ago): {}\n", clock.join(" ")));
            }
            None => out.push_str("  no complete round yet\n"),
        }
        for (sink, why) in &t.sinks_waiting {
            out.push_str(&format!("  sink `{sink}` waits: {why}\n"));
        }
        for (worker, why) in &t.store_unreachable {
            out.push_str(&format!("  the snapshot store is unreachable from worker {worker}: {why}\n"));
        }
        if !t.lag.is_empty() {
            let lag: Vec<String> = t.lag.iter().map(|(p, l)| format!("{p}={l}")).collect();
            out.push_str(&format!("  lag (records not yet in a complete round): {}\n", lag.join(" ")));
        }
    }
    out
}
