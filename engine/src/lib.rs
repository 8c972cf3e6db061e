//! Hailstorm: a stream processor with exactly-once state and WebAssembly user code.
//!
//! The crate is the engine behind the `hailstorm` command. Its pure cores
//! live in [`core`]: clocks and LWMs, the A/B snapshot split of a bolt, the
//! negotiator's rounds, the physical plan, placement and the cluster
//! leader's decisions, all synchronous and tested without I/O. Around them:
//! [`topology`] reads the topology file; [`wasm`] hosts the user modules;
//! [`input`] is what spouts read (files, and Kafka through [`kafka`]);
//! [`store`] is the durable store; [`channel`] is the vocabulary instances
//! speak; [`runtime`] runs instances on threads; [`net`] carries channels
//! between workers; [`cluster`] is the distributed mode (workers, leader,
//! deploy/status/stop) over ZooKeeper; [`error`] is the error domain.
//!
//! ```no_run
//! use hailstorm::{runtime, topology::Topology};
//! let t = Topology::load("topologies/wordcount.toml".as_ref(), &[]).unwrap();
//! let prepared = runtime::prepare(t).unwrap();
//! let summary = runtime::run_embedded(prepared, runtime::RunOptions::default()).unwrap();
//! println!("{} records", summary.records);
//! ```

pub mod channel;
pub mod cluster;
pub mod connect;
pub mod core;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod input;
pub mod kafka;
pub mod modbuild;
pub mod net;
pub mod observe;
pub mod postgres;
pub mod runtime;
pub mod store;
pub mod topology;
pub mod wasm;
