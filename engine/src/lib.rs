//! Hailstorm: a stream processor with exactly-once state and WebAssembly user code.
//!
//! The crate is the engine behind the `hailstorm` command. Its pure cores —
//! [`clock`] (clocks and LWMs), [`bolt`] (the A/B snapshot split) and
//! [`negotiator`] (snapshot rounds) — are synchronous and tested without I/O;
//! [`runtime`] runs them on threads with in-process channels; [`wasm`] hosts
//! the user modules; [`snapshot`] is the durable store; [`topology`] reads the
//! topology file. The distributed mode adds [`cluster`] (workers, leader,
//! deploy/status/stop), [`net`] (TCP between workers), [`zk`] (ZooKeeper) and
//! [`kafka`] (Kafka spouts and `produce`).
//!
//! ```no_run
//! use hailstorm::{runtime, topology::Topology};
//! let t = Topology::load("topologies/wordcount.toml".as_ref(), &[]).unwrap();
//! let prepared = runtime::prepare(t).unwrap();
//! let summary = runtime::run_embedded(prepared, runtime::RunOptions::default()).unwrap();
//! println!("{} records", summary.records);
//! ```

pub mod assign;
pub mod batch;
pub mod bolt;
pub mod clock;
pub mod cluster;
pub mod kafka;
pub mod modbuild;
pub mod negotiator;
pub mod net;
pub mod plan;
pub mod runtime;
pub mod snapshot;
pub mod spout;
pub mod topology;
pub mod wasm;
pub mod wire;
pub mod zk;
