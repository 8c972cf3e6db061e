//! Integration tests of the `hailstorm` command: one binary, a module per area.
//!
//! Every test runs the real binary on real files and WebAssembly modules built
//! from the workspace's sources, and checks results against counts computed
//! here, independently of the engine and of the guest modules.

mod chaos;
mod cluster;
mod common;
mod crash;
mod dead_letters;
mod errors;
mod faults;
mod fixtures;
mod follow;
mod hostile;
mod hosts;
mod kafka_tls;
mod observe;
mod resume;
mod s3;
mod security;
mod sinks;
mod state;
mod tidy;
mod wordcount;
