//! Where a run starts: the complete round it restores, the clock every spout
//! seeks to, and the state every bolt instance restores. Shared by the
//! embedded mode (the store's newest intact round) and the cluster (the
//! round ZooKeeper names).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use hailstorm_abi::BatchWriter;

use super::{Prepared, Run, CHUNK};
use crate::core::bolt;
use crate::core::clock::Clock;
use crate::core::negotiator::show_round;
use crate::core::plan::{key_instance, Plan};
use crate::store::{Chain, CommitRecord, DataHeader, DataKind, FileStore, Parent};
use crate::topology::{Bolt, Grouping, Topology};
use crate::wasm;

/// Where a run starts.
pub struct Start {
    /// The clock every spout seeks to.
    pub clock: Clock,
    /// The complete round bolts restore (`None`: empty state).
    pub restore: Option<CommitRecord>,
    /// The verified chain of every bolt instance of that round.
    pub chains: BTreeMap<(String, u32), Chain>,
    /// The id the next round gets.
    pub next_round: u64,
}

impl Start {
    /// The embedded mode's start: the store's newest intact complete round
    /// (falling back past damaged ones, with a warning), or a fresh start.
    /// Its rounds are numbered from `first_round` on, or after the store's newest.
    pub fn latest(p: &Prepared, store: &FileStore, first_round: u64) -> Result<Start> {
        let recovered = store.latest_complete().context("cannot recover from the snapshot store")?;
        let next_round = store.rounds()?.last().map_or(1, |r| r + 1).max(first_round);
        let Some(r) = recovered else { return Start::from_commit(p, store, None, BTreeMap::new(), next_round) };
        for w in &r.warnings {
            crate::observe::logs::warn(format_args!("hailstorm: warning: {w}"));
        }
        let start = Start::from_commit(p, store, Some(r.commit), r.chains, next_round)?;
        if let Some(c) = &start.restore {
            crate::observe::logs::info(format_args!(
                "hailstorm: restoring snapshot #{} ({})",
                c.round,
                p.plan.show_clock(&start.clock)
            ));
            report_module_changes(p, c);
        }
        Ok(start)
    }

    /// The cluster's start: the complete round ZooKeeper names (`None`: a
    /// fresh start), with this epoch's rounds numbered from `next_round`.
    pub fn at_round(p: &Prepared, store: &FileStore, round: Option<u64>, next_round: u64) -> Result<Start> {
        let Some(r) = round else { return Start::from_commit(p, store, None, BTreeMap::new(), next_round) };
        let damaged = DamagedRound { round: r };
        let commit = store.read_commit(r).context(damaged)?.ok_or_else(|| {
            anyhow!(
                "the last complete round {} is missing from the snapshot store {}: is the store shared by every worker?",
                show_round(r),
                store.root().display()
            )
        })?;
        let chains = store.chains(&commit).context(damaged)?;
        Start::from_commit(p, store, Some(commit), chains, next_round)
    }

    fn from_commit(
        p: &Prepared,
        store: &FileStore,
        commit: Option<CommitRecord>,
        chains: BTreeMap<(String, u32), Chain>,
        next_round: u64,
    ) -> Result<Start> {
        let clock = match &commit {
            Some(c) => {
                // Another topology's store or input: no retry changes that.
                check_same_inputs(&p.topology, &p.plan, store, c)
                    .map_err(|e| crate::error::mark(e, crate::error::Domain::Usage, false))?;
                restore_clock(&p.plan, c)
            }
            None => Clock::filled(p.plan.spout_instances(), 0),
        };
        Ok(Start { clock, restore: commit, chains, next_round })
    }
}

/// The context of an error that found a complete round damaged in the
/// store (the cluster's leader then starts from the round before it).
#[derive(Debug, Clone, Copy)]
pub struct DamagedRound {
    pub round: u64,
}

impl std::fmt::Display for DamagedRound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "complete round {} is damaged", show_round(self.round))
    }
}

/// The clock a run restored from `commit` starts at (warning about partitions no longer read).
fn restore_clock(plan: &Plan, commit: &CommitRecord) -> Clock {
    for (name, _) in &commit.clock {
        if !plan.partitions.iter().any(|p| p.name == *name) {
            crate::observe::logs::warn(format_args!(
                "hailstorm: warning: the snapshot has partition {name}, which the topology no longer reads"
            ));
        }
    }
    plan.clock_from_names(&commit.clock)
}

fn report_module_changes(p: &Prepared, commit: &CommitRecord) {
    for (name, m) in p.processor_modules() {
        match commit.modules.get(name) {
            Some(old) if *old != m.hash => crate::observe::logs::info(format_args!(
                "hailstorm: module of `{name}` changed since snapshot #{} ({} -> {}): continuing from the old state with the new code",
                commit.round,
                old.get(..12).unwrap_or(old),
                m.short_hash()
            )),
            None => crate::observe::logs::info(format_args!("hailstorm: `{name}` is new since snapshot #{}", commit.round)),
            _ => {}
        }
    }
}

/// What each partition reads, as recorded in commit records.
pub(super) fn partition_sources(plan: &Plan) -> BTreeMap<String, String> {
    let source = |p: &crate::core::plan::Partition| match (&p.file, &p.kafka) {
        (Some(f), _) => Some(f.display().to_string()),
        (None, Some((topic, partition))) => Some(format!("kafka topic {topic} partition {partition}")),
        (None, None) => None,
    };
    plan.partitions.iter().filter_map(|p| Some((p.name.clone(), source(p)?))).collect()
}

/// A snapshot's offsets only mean something for the input they were taken
/// on: resuming another topology's store, or a partition that now names a
/// different file, would silently skip or repeat records. Refuse instead.
fn check_same_inputs(t: &Topology, plan: &Plan, store: &FileStore, commit: &CommitRecord) -> Result<()> {
    if commit.topology != t.name {
        bail!(
            "the snapshot store {} belongs to topology `{}`, not `{}`; give this topology its own snapshot.store",
            store.root().display(),
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

/// Restores instance `instance` of bolt `spec` from the run's complete round
/// and returns what its next delta builds on. With the same parallelism the
/// instance's own chain is restored, and its next delta follows it; under
/// key grouping with another parallelism the entries of every old instance
/// are re-partitioned by key hash and also written as a base of the new
/// instance, which its next delta follows.
pub(super) fn restore_bolt(run: &Run, spec: &Bolt, instance: u32, guest: &mut wasm::Bolt) -> Result<Parent> {
    let Some(commit) = &run.start.restore else { return Ok(Parent::None) };
    let (name, parallelism) = (spec.name.as_str(), spec.parallelism);
    let old: Vec<&Chain> = run.start.chains.iter().filter(|((p, _), _)| p == name).map(|(_, c)| c).collect();
    if old.is_empty() {
        return Ok(Parent::None);
    }
    let old_parallelism = commit.parallelism.get(name).copied().unwrap_or(old.len() as u32);
    if old_parallelism == parallelism {
        let chain = run.start.chains.get(&(name.to_string(), instance)).map_or(&[][..], |c| c.files.as_slice());
        stream(run.store, chain, &|_| true, guest, None)?;
        return Ok(Parent::Delta(commit.round));
    }
    if spec.grouping != Grouping::Key {
        bail!("bolt `{name}` uses {:?} grouping and its parallelism changed ({old_parallelism} -> {parallelism}): its state cannot be re-partitioned", spec.grouping);
    }
    let files: Vec<PathBuf> = old.iter().flat_map(|c| c.files.iter().cloned()).collect();
    let first = files.first().ok_or_else(|| anyhow!("internal: no file to restore {name} from"))?;
    let head = run.store.reader(first)?.header().clone();
    let clock = commit.clock.clone();
    let header = DataHeader {
        kind: DataKind::Base,
        instance,
        parallelism,
        round: commit.round,
        parent: Parent::None,
        clock,
        ..head
    };
    run.coord.check_fence()?;
    let base = run.store.base_writer(&header)?;
    stream(run.store, &files, &|k| key_instance(k, parallelism) == instance, guest, Some(base))?;
    Ok(Parent::Base(commit.round))
}

/// Restores the merge of `files` (the entries `keep` accepts) into slot A of
/// `guest`, in chunks, writing them to `base` too if given.
fn stream(
    store: &FileStore,
    files: &[PathBuf],
    keep: &dyn Fn(&[u8]) -> bool,
    guest: &mut wasm::Bolt,
    mut base: Option<crate::store::DataWriter>,
) -> Result<()> {
    let mut merge = store.merge(files)?;
    let mut chunk = BatchWriter::new();
    loop {
        chunk.clear();
        let more = merge.next_chunk(&mut chunk, CHUNK, keep)?;
        if !chunk.is_empty() {
            guest.restore(bolt::SLOT_A, chunk.as_bytes())?;
            if let Some(b) = base.as_mut() {
                b.block(chunk.as_bytes())?;
            }
        }
        if !more {
            break;
        }
    }
    if let Some(b) = base {
        b.finish()?;
    }
    Ok(())
}
