//! The physical plan of a topology: partitions, instances and channels.
//!
//! Instances are numbered densely: spout instances first (one per
//! partition), then the instances of every bolt in order. A *sender id* is
//! that number; each bolt instance numbers its input channels by the senders
//! that can reach it.

use crate::core::clock::Clock;
use crate::topology::{Grouping, Source, Topology};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// `spout/N`.
    pub name: String,
    pub spout: usize,
    pub index: u32,
    pub file: Option<std::path::PathBuf>,
    /// For Kafka sources: the topic and its partition number.
    pub kafka: Option<(String, u32)>,
}

/// A downstream bolt of some processor and how tuples reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consumer {
    pub bolt: usize,
    pub grouping: Grouping,
    /// It reads the spout's dead letters (`SPOUT.dead`), not its tuples.
    pub dead_letters: bool,
}

/// The spout an input names, and whether it names the spout's dead letters.
fn spout_input(t: &Topology, input: &str) -> Option<(usize, bool)> {
    let (name, dead) = match input.strip_suffix(crate::topology::DEAD_LETTERS) {
        Some(name) => (name, true),
        None => (input, false),
    };
    t.spouts.iter().position(|s| s.name == name).map(|si| (si, dead))
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub partitions: Vec<Partition>,
    /// Global id of the first instance of each bolt.
    pub bolt_base: Vec<usize>,
    pub bolt_parallelism: Vec<u32>,
    /// Consumers of each spout, and of each bolt.
    pub spout_consumers: Vec<Vec<Consumer>>,
    pub bolt_consumers: Vec<Vec<Consumer>>,
    /// For each bolt: the sender ids of its input channels, in channel order.
    pub bolt_inputs: Vec<Vec<usize>>,
    /// For each bolt: which partitions can reach it.
    pub bolt_reach: Vec<Vec<bool>>,
}

impl Plan {
    /// The plan of a file-sourced topology (Kafka spouts get no partitions).
    pub fn new(t: &Topology) -> Plan {
        Plan::with_kafka(t, &std::collections::BTreeMap::new())
    }

    /// The plan with the partition count of every Kafka spout's topic
    /// (discovered from the broker), keyed by spout name.
    pub fn with_kafka(t: &Topology, kafka_partitions: &std::collections::BTreeMap<String, u32>) -> Plan {
        let partitions = partitions(t, kafka_partitions);
        let mut bolt_base = Vec::new();
        let mut next = partitions.len();
        for b in &t.bolts {
            bolt_base.push(next);
            next += b.parallelism as usize;
        }
        let bolt_index = |name: &str| t.bolts.iter().position(|b| b.name == name);
        let mut spout_consumers = vec![Vec::new(); t.spouts.len()];
        let mut bolt_consumers = vec![Vec::new(); t.bolts.len()];
        let mut bolt_inputs = vec![Vec::new(); t.bolts.len()];
        for (bi, b) in t.bolts.iter().enumerate() {
            for input in &b.inputs {
                let c = Consumer { bolt: bi, grouping: b.grouping, dead_letters: false };
                if let Some((si, dead_letters)) = spout_input(t, input) {
                    spout_consumers[si].push(Consumer { dead_letters, ..c });
                    bolt_inputs[bi]
                        .extend(partitions.iter().enumerate().filter(|(_, p)| p.spout == si).map(|(i, _)| i));
                } else if let Some(ui) = bolt_index(input) {
                    bolt_consumers[ui].push(c);
                    let base = bolt_base[ui];
                    bolt_inputs[bi].extend(base..base + t.bolts[ui].parallelism as usize);
                }
            }
        }
        Plan {
            bolt_reach: reach(t, &partitions),
            partitions,
            bolt_parallelism: t.bolts.iter().map(|b| b.parallelism).collect(),
            bolt_base,
            spout_consumers,
            bolt_consumers,
            bolt_inputs,
        }
    }

    pub fn spout_instances(&self) -> usize {
        self.partitions.len()
    }

    pub fn bolt_instances(&self) -> usize {
        self.bolt_parallelism.iter().map(|p| *p as usize).sum()
    }

    /// (bolt, instance index) of a global bolt-instance number (0-based among bolts).
    pub fn bolt_of(&self, n: usize) -> Option<(usize, u32)> {
        let g = n + self.spout_instances();
        self.bolt_base.iter().enumerate().rev().find(|(_, base)| **base <= g).and_then(|(b, base)| {
            let i = g - base;
            (i < self.bolt_parallelism[b] as usize).then_some((b, i as u32))
        })
    }

    /// The 0-based bolt-instance number of (bolt, instance).
    pub fn bolt_instance_number(&self, bolt: usize, instance: u32) -> usize {
        self.bolt_base[bolt] + instance as usize - self.spout_instances()
    }

    /// Renders a clock with partition names.
    pub fn clock_names(&self, c: &Clock) -> Vec<(String, u64)> {
        self.partitions.iter().enumerate().map(|(i, p)| (p.name.clone(), c.get(i as u32))).collect()
    }

    /// Reads a named clock back; partitions it does not mention start at 0.
    pub fn clock_from_names(&self, named: &[(String, u64)]) -> Clock {
        Clock(self.partitions.iter().map(|p| named.iter().find(|(n, _)| *n == p.name).map_or(0, |(_, o)| *o)).collect())
    }

    /// A clock shown to people: `lines/0=120 lines/1=88`.
    pub fn show_clock(&self, c: &Clock) -> String {
        self.clock_names(c)
            .iter()
            .map(|(n, o)| if *o == crate::core::clock::INFINITY { format!("{n}=∞") } else { format!("{n}={o}") })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// One partition per input file, or per partition of a Kafka spout's topic.
fn partitions(t: &Topology, kafka_partitions: &std::collections::BTreeMap<String, u32>) -> Vec<Partition> {
    let mut partitions = Vec::new();
    for (si, s) in t.spouts.iter().enumerate() {
        let part = |i: u32, file: Option<std::path::PathBuf>, kafka: Option<(String, u32)>| Partition {
            name: format!("{}/{}", s.name, i),
            spout: si,
            index: i,
            file,
            kafka,
        };
        match &s.source {
            Source::Files(files) => {
                partitions.extend(files.iter().enumerate().map(|(i, f)| part(i as u32, Some(f.clone()), None)));
            }
            Source::Kafka { topic } => {
                let n = kafka_partitions.get(&s.name).copied().unwrap_or(0);
                partitions.extend((0..n).map(|i| part(i, None, Some((topic.clone(), i)))));
            }
        }
    }
    partitions
}

/// For each bolt, which partitions can reach it. Bolts are validated
/// acyclic, so this iterates to a fixed point.
fn reach(t: &Topology, partitions: &[Partition]) -> Vec<Vec<bool>> {
    let bolt_index = |name: &str| t.bolts.iter().position(|b| b.name == name);
    let mut reach = vec![vec![false; partitions.len()]; t.bolts.len()];
    loop {
        let mut changed = false;
        for (bi, b) in t.bolts.iter().enumerate() {
            for input in &b.inputs {
                let from: Vec<bool> = if let Some((si, _)) = spout_input(t, input) {
                    partitions.iter().map(|p| p.spout == si).collect()
                } else if let Some(ui) = bolt_index(input) {
                    reach[ui].clone()
                } else {
                    continue;
                };
                for (p, r) in from.into_iter().enumerate() {
                    if r && !reach[bi][p] {
                        reach[bi][p] = true;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            return reach;
        }
    }
}

/// The bolt instance a key goes to under key grouping (stable across processes and versions).
pub fn key_instance(key: &[u8], parallelism: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(key) % u64::from(parallelism.max(1))) as u32
}
