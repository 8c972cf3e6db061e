//! `/api/state`: what the web view draws, read back from the metrics and
//! the board.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use super::metrics::Sample;
use super::{logs, Board, Graph, Observer};
use crate::core::health::Health;

#[derive(Debug, Serialize)]
pub struct State {
    pub now_ms: u64,
    pub rss_bytes: Option<f64>,
    pub topologies: Vec<TopologyState>,
    pub errors: Vec<logs::Said>,
}

#[derive(Debug, Serialize)]
pub struct TopologyState {
    pub name: String,
    pub worker: Option<String>,
    pub epoch: u64,
    pub health: Health,
    pub graph: Graph,
    pub placement: BTreeMap<String, String>,
    pub instances: Vec<InstanceState>,
    pub partitions: Vec<PartitionState>,
    pub last_round: Option<u64>,
    pub last_round_age_s: Option<f64>,
    pub rounds_complete: f64,
    /// Per spout: records its deserializer failed on, sent to its dead
    /// letters or skipped (spouts with none are left out).
    pub bad_records: BTreeMap<String, BadRecords>,
    /// Sinks whose connector cannot write (broker or database down), and why.
    pub sinks_waiting: BTreeMap<String, String>,
    /// Sinks whose unwritten rounds hold the spouts (backpressure).
    pub sinks_holding: Vec<String>,
    /// Why the snapshot store cannot be reached, while it cannot.
    pub store_unreachable: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct BadRecords {
    pub dead_letters: f64,
    pub skipped: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct InstanceState {
    pub processor: String,
    pub instance: String,
    pub records_in: f64,
    pub records_out: f64,
    /// Per second, over the last second or so (measured between reads of the state).
    pub rate_in: f64,
    pub rate_out: f64,
    pub guest_seconds: f64,
    pub inbox_fill: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct PartitionState {
    pub name: String,
    pub position: Option<f64>,
    pub end: Option<f64>,
    pub lag: Option<f64>,
    pub lwm: Option<f64>,
}

impl Observer {
    /// Everything the web view shows, now.
    pub fn state(&self) -> State {
        let health = self.health();
        let samples = self.metrics.samples();
        let now = crate::store::now_ms();
        let board = self.board.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut topologies: Vec<TopologyState> = board
            .into_iter()
            .filter_map(|(name, b)| {
                let h = health.get(&name)?.clone();
                Some(topology(&name, b, h, &samples, now))
            })
            .collect();
        self.rates(&mut topologies);
        let rss_bytes = samples.iter().find(|s| s.name == "process_resident_bytes").map(|s| s.value);
        State { now_ms: now, rss_bytes, topologies, errors: logs::recent() }
    }
}

impl Observer {
    /// Fills in every instance's rates against the counters of an earlier
    /// read (moved forward once it is a second old).
    fn rates(&self, topologies: &mut [TopologyState]) {
        let now = Instant::now();
        let mut base = self.rate_base.lock().unwrap_or_else(|p| p.into_inner());
        let current: BTreeMap<String, (f64, f64)> = topologies
            .iter()
            .flat_map(|t| {
                t.instances
                    .iter()
                    .map(move |i| (format!("{}|{}|{}", t.name, i.processor, i.instance), (i.records_in, i.records_out)))
            })
            .collect();
        let Some((at, old)) = base.as_ref() else {
            *base = Some((now, current));
            return;
        };
        let secs = now.duration_since(*at).as_secs_f64();
        if secs > 0.0 {
            for t in topologies.iter_mut() {
                for i in t.instances.iter_mut() {
                    let key = format!("{}|{}|{}", t.name, i.processor, i.instance);
                    let (was_in, was_out) = old.get(&key).copied().unwrap_or((0.0, 0.0));
                    i.rate_in = (i.records_in - was_in).max(0.0) / secs;
                    i.rate_out = (i.records_out - was_out).max(0.0) / secs;
                }
            }
        }
        if secs >= 1.0 {
            *base = Some((now, current));
        }
    }
}

fn topology(name: &str, b: Board, health: Health, samples: &[Sample], now: u64) -> TopologyState {
    let mine = |s: &&Sample| s.label("topology") == Some(name);
    let mut instances: BTreeMap<(String, String), InstanceState> = BTreeMap::new();
    let mut partitions: BTreeMap<String, PartitionState> = b
        .graph
        .partitions
        .iter()
        .map(|p| (p.clone(), PartitionState { name: p.clone(), ..Default::default() }))
        .collect();
    let mut rounds_complete = 0.0;
    let mut bad_records: BTreeMap<String, BadRecords> = BTreeMap::new();
    for s in samples.iter().filter(mine) {
        if let ("dead_letters_total" | "records_skipped_total", Some(p)) = (s.name.as_str(), s.label("processor")) {
            let b = bad_records.entry(p.to_string()).or_default();
            if s.name == "dead_letters_total" {
                b.dead_letters = s.value;
            } else {
                b.skipped = s.value;
            }
            continue;
        }
        if let (Some(p), Some(i)) = (s.label("processor"), s.label("instance")) {
            let e = instances.entry((p.to_string(), i.to_string())).or_insert_with(|| InstanceState {
                processor: p.to_string(),
                instance: i.to_string(),
                ..Default::default()
            });
            match s.name.as_str() {
                "records_in_total" => e.records_in = s.value,
                "records_out_total" => e.records_out = s.value,
                "guest_call_seconds_total" => e.guest_seconds = s.value,
                "inbox_fill_ratio" => e.inbox_fill = s.value,
                _ => {}
            }
        } else if let Some(p) = s.label("partition").and_then(|p| partitions.get_mut(p)) {
            match s.name.as_str() {
                "partition_position" => p.position = Some(s.value),
                "partition_end" => p.end = Some(s.value),
                "partition_lag" => p.lag = Some(s.value),
                "partition_lwm" if s.value >= 0.0 => p.lwm = Some(s.value),
                _ => {}
            }
        } else if s.name == "rounds_complete_total" {
            rounds_complete = s.value;
        }
    }
    let (last_round, last_round_age_s) = match b.last_complete {
        Some((r, at)) => (Some(r), Some(now.saturating_sub(at) as f64 / 1000.0)),
        None => (None, None),
    };
    TopologyState {
        name: name.to_string(),
        worker: b.worker,
        epoch: b.epoch,
        health,
        graph: b.graph,
        placement: b.placement,
        instances: instances.into_values().collect(),
        partitions: partitions.into_values().collect(),
        last_round,
        last_round_age_s,
        rounds_complete,
        // A processor whose counters were made but never moved has none.
        bad_records: bad_records.into_iter().filter(|(_, b)| b.dead_letters > 0.0 || b.skipped > 0.0).collect(),
        sinks_waiting: b.sinks_waiting,
        sinks_holding: b.sinks_holding.into_iter().collect(),
        store_unreachable: b.store_unreachable,
    }
}
