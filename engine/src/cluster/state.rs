//! The cluster's state in ZooKeeper: where every node lives ([`Paths`]) and
//! what it holds. Paths are relative to the cluster root:
//!
//! ```text
//! ROOT                           "hailstorm-cluster v1"
//! ROOT/workers/w-NNNNNNNNNN      ephemeral, sequential: WorkerInfo (address)
//! ROOT/modules/SHA256            a module's bytes, in chunks c-NNNNNN
//! ROOT/topologies/NAME           Spec: TOML text, module hashes, generation
//! ROOT/topologies/NAME/world     World: epoch, placement, leader, restore round
//! ROOT/topologies/NAME/complete  Complete: the last complete round and its clock
//! ROOT/topologies/NAME/status    Status: what the leader says about the topology
//! ROOT/topologies/NAME/faults/W  ShareFault: worker W could not start its share
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub use crate::core::leader::State;
use crate::net::Endpoint;

/// Every ZooKeeper path the cluster uses, relative to its root.
pub struct Paths;

impl Paths {
    pub const WORKERS: &'static str = "workers";
    pub const TOPOLOGIES: &'static str = "topologies";
    pub const MODULES: &'static str = "modules";

    /// The prefix of a new worker's sequential node.
    pub fn new_worker() -> String {
        format!("{}/w-", Paths::WORKERS)
    }

    /// The node of worker `id` (`w-NNNNNNNNNN`).
    pub fn worker(id: &str) -> String {
        format!("{}/{id}", Paths::WORKERS)
    }

    /// The blob of the module with this SHA-256.
    pub fn module(hash: &str) -> String {
        format!("{}/{hash}", Paths::MODULES)
    }

    /// The [`Spec`] of a topology (the parent of its other nodes).
    pub fn topology(name: &str) -> String {
        format!("{}/{name}", Paths::TOPOLOGIES)
    }

    /// The [`World`] of a topology's current epoch.
    pub fn world(name: &str) -> String {
        format!("{}/world", Paths::topology(name))
    }

    /// The topology's last [`Complete`] round.
    pub fn complete(name: &str) -> String {
        format!("{}/complete", Paths::topology(name))
    }

    /// The [`Status`] the leader writes.
    pub fn status(name: &str) -> String {
        format!("{}/status", Paths::topology(name))
    }

    /// The parent of the topology's [`ShareFault`]s.
    pub fn faults(name: &str) -> String {
        format!("{}/faults", Paths::topology(name))
    }

    /// The [`ShareFault`] of worker `id`.
    pub fn fault(name: &str, id: &str) -> String {
        format!("{}/{id}", Paths::faults(name))
    }

    /// The parent of the notes of workers that cannot reach the topology's object store.
    pub fn stores_unreachable(name: &str) -> String {
        format!("{}/store-unreachable", Paths::topology(name))
    }

    /// Worker `id`'s note (a [`SinkWaiting`]) while it cannot reach the object store.
    pub fn store_unreachable(name: &str, id: &str) -> String {
        format!("{}/{id}", Paths::stores_unreachable(name))
    }

    /// The parent of the topology's [`SinkWaiting`] notes.
    pub fn sinks_waiting(name: &str) -> String {
        format!("{}/sinks-waiting", Paths::topology(name))
    }

    /// The [`SinkWaiting`] note of sink `sink`, while it cannot write.
    pub fn sink_waiting(name: &str, sink: &str) -> String {
        format!("{}/{sink}", Paths::sinks_waiting(name))
    }
}

/// A connector sink that cannot write (its broker or database is down),
/// written by its worker while it retries and deleted when it writes again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SinkWaiting {
    pub epoch: u64,
    pub why: String,
    pub since_ms: u64,
}

/// A worker's report that it could not start its share of an epoch (the
/// leader reads it, places around the worker, and deletes it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShareFault {
    pub epoch: u64,
    pub why: String,
    pub retryable: bool,
    /// The complete round the worker found damaged in the store, if that is the fault.
    #[serde(default)]
    pub damaged_round: Option<u64>,
}

/// What a worker registers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub addr: String,
    pub pid: u32,
    /// The roots under which this worker lets sinks be granted directories
    /// (`--allow-grants`).
    #[serde(default)]
    pub allow_grants: Vec<PathBuf>,
    /// The name in this worker's certificate, when it speaks TLS with the others.
    #[serde(default)]
    pub tls_name: Option<String>,
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
    /// Each Kafka spout's partition count as `deploy` found it, and when
    /// (ms since the epoch, deploy's clock): the first world of this
    /// generation is placed by it without asking the broker again if it is
    /// at most a few seconds old (the leader's regular re-check notices a
    /// topic that grows).
    #[serde(default)]
    pub partitions: BTreeMap<String, u32>,
    #[serde(default)]
    pub partitions_at_ms: u64,
}

/// One epoch of a topology: who runs what.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct World {
    pub epoch: u64,
    pub generation: u64,
    /// The worker that runs the negotiator.
    pub leader: String,
    /// Every endpoint with its worker's id and address.
    pub placement: Vec<(Endpoint, String, String)>,
    /// The complete round every instance starts from.
    pub restore: Option<u64>,
    pub kafka_partitions: BTreeMap<String, u32>,
}

/// The last complete round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Complete {
    pub round: u64,
    /// The complete round before it (the store keeps both).
    #[serde(default)]
    pub previous: Option<u64>,
    pub epoch: u64,
    pub clock: Vec<(String, u64)>,
    pub at_ms: u64,
}

/// What the leader says about a topology.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    pub generation: u64,
    pub epoch: u64,
    pub message: String,
    pub at_ms: u64,
}

impl Status {
    pub fn new(state: State, generation: u64, epoch: u64, message: &str) -> Status {
        Status { state, generation, epoch, message: message.into(), at_ms: crate::store::now_ms() }
    }
}

/// The JSON a node holds.
pub fn json<T: Serialize>(t: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(t).context("cannot encode cluster state")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec written by a build before `partitions` existed still reads,
    /// with no counts (so the leader asks the broker, as it did then).
    #[test]
    fn a_spec_without_partition_counts_reads_with_none() {
        let old =
            r#"{"generation":3,"source":"name = \"t\"","file":"/t.toml","overrides":[],"modules":{},"stopped":false}"#;
        let spec: Spec = serde_json::from_str(old).expect("an older spec reads");
        assert_eq!(spec.generation, 3);
        assert!(spec.partitions.is_empty());
        assert_eq!(spec.partitions_at_ms, 0);
    }
}
