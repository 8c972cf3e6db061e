//! What an operator sees of a running process: Prometheus metrics
//! ([`Metrics`]), a board of what runs here (the topology's graph, the
//! placement, the last complete round) and the HTTP endpoint that serves
//! both (`/metrics`, `/api/state`, and the web view at `/`), plus the logs
//! ([`logs`]).
//!
//! The engine updates the metrics as it runs; everything the web view shows
//! is read back from them, so the page and `/metrics` agree.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::core::health::{self, Health};
use crate::core::leader::State;
use crate::topology::{Grouping, Source, Topology};

mod http;
pub mod logs;
mod metrics;
mod state;

pub use http::{serve, Endpoint};
pub use metrics::{clamp, CallMeter, Count, InstanceMeter, Metrics, PartitionMeter};

/// Metrics and the board of one process, shared by its runs.
#[derive(Debug, Default)]
pub struct Observer {
    pub metrics: Metrics,
    board: Mutex<BTreeMap<String, Board>>,
    /// Counters at an earlier read of the state, for rates.
    rate_base: Mutex<Option<RateBase>>,
}

type RateBase = (std::time::Instant, BTreeMap<String, (f64, f64)>);

/// What is known of one topology running here.
#[derive(Debug, Clone)]
struct Board {
    graph: Graph,
    /// Endpoint (`bolt/1`, `sink`) → worker, in cluster mode.
    placement: BTreeMap<String, String>,
    worker: Option<String>,
    epoch: u64,
    started_ms: u64,
    last_complete: Option<(u64, u64)>,
    /// Set when the run ended: why (or "finished").
    ended: Option<(State, String, u64)>,
    /// Sinks here whose connector cannot write, and why.
    sinks_waiting: BTreeMap<String, String>,
    /// Sinks whose unwritten rounds hold the spouts (backpressure).
    sinks_holding: std::collections::BTreeSet<String>,
    /// Why the snapshot store cannot be reached, while it cannot.
    store_unreachable: Option<String>,
}

/// A topology as the web view draws it.
#[derive(Debug, Clone, Serialize)]
pub struct Graph {
    pub topology: String,
    pub interval_ms: u64,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    pub partitions: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub name: String,
    pub kind: &'static str,
    pub parallelism: u32,
    pub source: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub grouping: &'static str,
}

impl Graph {
    pub fn of(t: &Topology, partitions: Vec<String>) -> Graph {
        let mut nodes = Vec::new();
        for s in &t.spouts {
            let source = match &s.source {
                Source::Files(f) => format!("{} file(s)", f.len()),
                Source::Kafka { topic } => format!("Kafka topic {topic}"),
            };
            let parallelism = partitions.iter().filter(|p| p.starts_with(&format!("{}/", s.name))).count();
            nodes.push(Node { name: s.name.clone(), kind: "spout", parallelism: parallelism as u32, source });
        }
        let mut edges = Vec::new();
        for b in &t.bolts {
            nodes.push(Node { name: b.name.clone(), kind: "bolt", parallelism: b.parallelism, source: String::new() });
            let grouping = match b.grouping {
                Grouping::Key => "key",
                Grouping::Broadcast => "broadcast",
                Grouping::Global => "global",
            };
            edges.extend(b.inputs.iter().map(|i| match i.strip_suffix(crate::topology::DEAD_LETTERS) {
                // A spout's dead letters: an edge from the spout.
                Some(spout) => Edge { from: spout.to_string(), to: b.name.clone(), grouping: "dead letters" },
                None => Edge { from: i.clone(), to: b.name.clone(), grouping },
            }));
        }
        for s in &t.sinks {
            let source = match &s.connector {
                Some(crate::topology::Connector::Kafka(k)) => format!("Kafka topic {}", k.topic),
                Some(crate::topology::Connector::Postgres(p)) => format!("PostgreSQL table {}", p.table),
                None => String::new(),
            };
            nodes.push(Node { name: s.name.clone(), kind: "sink", parallelism: 1, source });
            edges.extend(s.inputs.iter().map(|i| Edge { from: i.clone(), to: s.name.clone(), grouping: "state" }));
        }
        let interval_ms = u64::try_from(t.interval.as_millis()).unwrap_or(u64::MAX);
        Graph { topology: t.name.clone(), interval_ms, nodes, edges, partitions }
    }
}

/// Where a run stands, for the board: in cluster mode, the worker, the
/// epoch and which worker runs each endpoint.
#[derive(Debug, Clone, Default)]
pub struct Place {
    pub worker: Option<String>,
    pub epoch: u64,
    pub placement: BTreeMap<String, String>,
}

impl Observer {
    pub fn new() -> Arc<Observer> {
        Arc::new(Observer::default())
    }

    /// A run of `graph` starts here.
    pub fn started(&self, graph: Graph, placed: Place) {
        let name = graph.topology.clone();
        self.metrics.epochs.with_label_values(&[name.as_str()]).inc();
        let mut board = self.board.lock().unwrap_or_else(|p| p.into_inner());
        let last_complete = board.get(&name).and_then(|b| b.last_complete);
        let last = last_complete.map_or(-1, |(round, _)| clamp(round));
        self.metrics.last_round.with_label_values(&[name.as_str()]).set(last);
        board.insert(
            name,
            Board {
                graph,
                placement: placed.placement,
                worker: placed.worker,
                epoch: placed.epoch,
                started_ms: crate::store::now_ms(),
                last_complete,
                ended: None,
                sinks_waiting: BTreeMap::new(),
                sinks_holding: std::collections::BTreeSet::new(),
                store_unreachable: None,
            },
        );
    }

    /// Round `round` of `topology` is complete; it took `took` from its gate.
    pub fn round_complete(&self, topology: &str, round: u64, took: Duration) {
        let m = &self.metrics;
        m.rounds_complete.with_label_values(&[topology]).inc();
        m.last_round.with_label_values(&[topology]).set(clamp(round));
        m.round_seconds.with_label_values(&[topology]).observe(took.as_secs_f64());
        if let Some(b) = self.board.lock().unwrap_or_else(|p| p.into_inner()).get_mut(topology) {
            b.last_complete = Some((round, crate::store::now_ms()));
        }
    }

    /// Sink `sink` of `topology` holds the spouts (its unwritten rounds
    /// reached their bound), or no longer does.
    pub fn sink_holds(&self, topology: &str, sink: &str, on: bool) {
        self.metrics.sink_holding.with_label_values(&[topology, sink]).set(i64::from(on));
        if let Some(b) = self.board.lock().unwrap_or_else(|p| p.into_inner()).get_mut(topology) {
            if on {
                b.sinks_holding.insert(sink.to_string());
            } else {
                b.sinks_holding.remove(sink);
            }
        }
    }

    /// The snapshot store of `topology` cannot be reached (`why`), or can again (`None`).
    pub fn store_unreachable(&self, topology: &str, why: Option<&str>) {
        self.metrics.store_unreachable.with_label_values(&[topology]).set(i64::from(why.is_some()));
        if let Some(b) = self.board.lock().unwrap_or_else(|p| p.into_inner()).get_mut(topology) {
            b.store_unreachable = why.map(str::to_string);
        }
    }

    /// Sink `sink` of `topology` waits for its broker or database (`why`),
    /// or writes again (`None`).
    pub fn sink_waits(&self, topology: &str, sink: &str, why: Option<&str>) {
        let l = [topology, sink];
        self.metrics.sink_waiting.with_label_values(&l).set(i64::from(why.is_some()));
        if why.is_some() {
            self.metrics.sink_retries.with_label_values(&l).inc();
        }
        if let Some(b) = self.board.lock().unwrap_or_else(|p| p.into_inner()).get_mut(topology) {
            match why {
                Some(w) => b.sinks_waiting.insert(sink.to_string(), w.to_string()),
                None => b.sinks_waiting.remove(sink),
            };
        }
    }

    /// The run of `topology` here ended (`Failed` with the error, or `Stopped`).
    pub fn ended(&self, topology: &str, state: State, why: String) {
        if let Some(b) = self.board.lock().unwrap_or_else(|p| p.into_inner()).get_mut(topology) {
            b.ended = Some((state, why, crate::store::now_ms()));
        }
    }

    /// The health of every topology here, and updates the staleness gauges.
    fn health(&self) -> BTreeMap<String, Health> {
        let now = crate::store::now_ms();
        let board = self.board.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = BTreeMap::new();
        for (name, b) in board.iter() {
            let (state, message, at) = match &b.ended {
                Some((s, why, at)) => (*s, why.as_str(), *at),
                None => (State::Running, "", b.started_ms),
            };
            let facts = health::Facts {
                state: Some(state),
                message,
                state_at_ms: at,
                last_complete_ms: b.last_complete.map(|(_, at)| at),
                interval: Duration::from_millis(b.graph.interval_ms),
                now_ms: now,
            };
            let elsewhere = b.worker.is_some() && b.placement.get("negotiator") != b.worker.as_ref();
            if elsewhere && b.ended.is_none() {
                // Rounds are known where the negotiator runs.
                let on = b.placement.get("negotiator").map_or("another worker", String::as_str);
                let reason = format!("running here; its negotiator runs on {on}, whose metrics and `hailstorm status` tell whether rounds complete");
                out.insert(name.clone(), Health { verdict: health::Verdict::Running, reason, since_ms: b.started_ms });
                continue;
            }
            let h = health::judge(&facts);
            let since = b.last_complete.map_or(b.started_ms, |(_, at)| at.max(b.started_ms));
            let l = [name.as_str()];
            self.metrics.since_round.with_label_values(&l).set(now.saturating_sub(since) as f64 / 1000.0);
            self.metrics.stalled.with_label_values(&l).set(i64::from(h.verdict == health::Verdict::Stalled));
            out.insert(name.clone(), h);
        }
        out
    }

    /// The Prometheus text of every metric (staleness brought up to date).
    pub fn render_metrics(&self) -> String {
        let _ = self.health();
        self.metrics.render()
    }
}
