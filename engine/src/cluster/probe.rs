//! Broker probes off the session thread: asking a broker for a topic's
//! partition count can take seconds when the broker is down, and the
//! session thread renews the worker's lease, so a slow probe there would
//! fence every topology on the worker. The leader asks here instead: a probe
//! runs on a thread of its own, and the leader reads its latest result.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::topology::{Source, Topology};

/// How long the leader waits for the broker when it probes a topology.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A Kafka spout's name → its topic's partition count (empty without Kafka spouts).
pub(super) type Counts = BTreeMap<String, u32>;

/// Why a probe failed, and whether the broker may yet answer (it is down)
/// or never will (it refuses the topology's credentials or certificates).
#[derive(Debug, Clone)]
pub(super) struct Failed {
    pub(super) why: String,
    pub(super) retryable: bool,
}

#[derive(Default)]
struct Probe {
    /// The generation the probe ran for (a deploy may change the topics).
    generation: u64,
    running: bool,
    result: Option<(Instant, Result<Counts, Failed>)>,
}

/// What a finished probe calls, so the leader decides at once.
pub(super) type Wake = Arc<dyn Fn() + Send + Sync>;

/// The latest probe of each topology.
#[derive(Clone)]
pub(super) struct Prober {
    probes: Arc<Mutex<BTreeMap<String, Probe>>>,
    wake: Wake,
}

impl Prober {
    pub(super) fn new(wake: Wake) -> Prober {
        Prober { probes: Arc::default(), wake }
    }

    /// The result of a probe of generation `generation` of `name` that
    /// finished within `max_age`, if there is one.
    pub(super) fn latest(&self, name: &str, generation: u64, max_age: Duration) -> Option<Result<Counts, Failed>> {
        let probes = self.probes.lock().ok()?;
        let p = probes.get(name).filter(|p| p.generation == generation)?;
        p.result.as_ref().filter(|(at, _)| at.elapsed() <= max_age).map(|(_, r)| r.clone())
    }

    /// Starts a probe of `t` (generation `generation` of `name`) unless one is running.
    pub(super) fn request(&self, name: &str, generation: u64, t: Topology) {
        let Ok(mut probes) = self.probes.lock() else { return };
        let p = probes.entry(name.to_string()).or_default();
        if p.running && p.generation == generation {
            return;
        }
        (p.running, p.generation) = (true, generation);
        let (probes, name, wake) = (self.probes.clone(), name.to_string(), self.wake.clone());
        let spawned = std::thread::Builder::new().name(format!("probe {name}")).spawn(move || {
            let result = partition_counts(&t, PROBE_TIMEOUT)
                .map_err(|e| Failed { why: format!("{e:#}"), retryable: crate::error::classify(&e).retryable });
            if let Ok(mut probes) = probes.lock() {
                let p = probes.entry(name).or_default();
                if p.generation == generation {
                    (p.running, p.result) = (false, Some((Instant::now(), result)));
                }
            }
            wake();
        });
        if spawned.is_err() {
            p.running = false;
        }
    }
}

/// Whether `t` reads Kafka (only then is there anything to probe).
pub(super) fn reads_kafka(t: &Topology) -> bool {
    t.spouts.iter().any(|s| matches!(s.source, Source::Kafka { .. }))
}

/// The partition count of every Kafka spout's topic.
pub(super) fn partition_counts(t: &Topology, timeout: Duration) -> anyhow::Result<Counts> {
    let mut kafka = BTreeMap::new();
    for s in &t.spouts {
        if let Source::Kafka { topic } = &s.source {
            let brokers = t.cluster.as_ref().map(|c| c.kafka.as_str()).unwrap_or_default();
            let n = crate::kafka::partition_count(brokers, topic, timeout)
                .map_err(|e| e.context(format!("spout `{}`", s.name)))?;
            kafka.insert(s.name.clone(), n);
        }
    }
    Ok(kafka)
}

/// Whether `counts` has the partition count of every Kafka spout of `t`.
pub(super) fn covers_kafka_spouts(t: &Topology, counts: &Counts) -> bool {
    t.spouts.iter().all(|s| !matches!(s.source, Source::Kafka { .. }) || counts.contains_key(&s.name))
}
