//! Where a run starts: the complete round it restores, the clock every spout
//! seeks to, and the state every bolt instance restores. Shared by the
//! embedded mode (the store's newest intact round) and the cluster (the
//! round ZooKeeper names).

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use hailstorm_abi as abi;

use super::Prepared;
use crate::core::bolt;
use crate::core::clock::Clock;
use crate::core::negotiator::show_round;
use crate::core::plan::{key_instance, Plan};
use crate::snapshot::{CommitRecord, FileRef, FileStore};
use crate::topology::{Bolt, Grouping, Topology};
use crate::wasm;

/// Where a run starts.
pub struct Start {
    /// The clock every spout seeks to.
    pub clock: Clock,
    /// The complete round bolts restore (`None`: empty state).
    pub restore: Option<CommitRecord>,
    /// The id the next round gets.
    pub next_round: u64,
}

impl Start {
    /// The embedded mode's start: the store's newest intact complete round
    /// (falling back past damaged ones, with a warning), or a fresh start.
    pub fn latest(p: &Prepared, store: &FileStore) -> Result<Start> {
        let recovered = store.latest_complete().context("cannot recover from the snapshot store")?;
        let next_round = store.rounds()?.last().map_or(1, |r| r + 1);
        let Some(r) = recovered else { return Start::from_commit(p, store, None, next_round) };
        for w in &r.warnings {
            eprintln!("hailstorm: warning: {w}");
        }
        let start = Start::from_commit(p, store, Some(r.commit), next_round)?;
        if let Some(c) = &start.restore {
            eprintln!("hailstorm: restoring snapshot #{} ({})", c.round, p.plan.show_clock(&start.clock));
            report_module_changes(p, c);
        }
        Ok(start)
    }

    /// The cluster's start: the complete round ZooKeeper names (`None`: a
    /// fresh start), with this epoch's rounds numbered from `next_round`.
    pub fn at_round(p: &Prepared, store: &FileStore, round: Option<u64>, next_round: u64) -> Result<Start> {
        let commit = match round {
            None => None,
            Some(r) => Some(store.read_commit(r)?.ok_or_else(|| {
                anyhow!(
                    "the last complete round {} is missing from the snapshot store {}: is the store shared by every worker?",
                    show_round(r),
                    store.root().display()
                )
            })?),
        };
        Start::from_commit(p, store, commit, next_round)
    }

    fn from_commit(p: &Prepared, store: &FileStore, commit: Option<CommitRecord>, next_round: u64) -> Result<Start> {
        let clock = match &commit {
            Some(c) => {
                check_same_inputs(&p.topology, &p.plan, store, c)?;
                restore_clock(&p.plan, c)
            }
            None => Clock::filled(p.plan.spout_instances(), 0),
        };
        Ok(Start { clock, restore: commit, next_round })
    }
}

/// The clock a run restored from `commit` starts at (warning about partitions no longer read).
fn restore_clock(plan: &Plan, commit: &CommitRecord) -> Clock {
    for (name, _) in &commit.clock {
        if !plan.partitions.iter().any(|p| p.name == *name) {
            eprintln!("hailstorm: warning: the snapshot has partition {name}, which the topology no longer reads");
        }
    }
    plan.clock_from_names(&commit.clock)
}

fn report_module_changes(p: &Prepared, commit: &CommitRecord) {
    for (name, m) in p.processor_modules() {
        match commit.modules.get(name) {
            Some(old) if *old != m.hash => eprintln!(
                "hailstorm: module of `{name}` changed since snapshot #{} ({} -> {}): continuing from the old state with the new code",
                commit.round,
                old.get(..12).unwrap_or(old),
                m.short_hash()
            ),
            None => eprintln!("hailstorm: `{name}` is new since snapshot #{}", commit.round),
            _ => {}
        }
    }
}

/// What each partition reads, as recorded in commit records.
pub(super) fn partition_sources(plan: &Plan) -> BTreeMap<String, String> {
    plan.partitions.iter().filter_map(|p| p.file.as_ref().map(|f| (p.name.clone(), f.display().to_string()))).collect()
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

/// Restores instance `instance` of bolt `spec` from a complete round. Under
/// key grouping the entries of every old instance are re-partitioned by key
/// hash, so a change of parallelism is handled too.
pub(super) fn restore_bolt(
    store: &FileStore,
    commit: &CommitRecord,
    spec: &Bolt,
    instance: u32,
    guest: &mut wasm::Bolt,
) -> Result<()> {
    let (name, parallelism) = (spec.name.as_str(), spec.parallelism);
    let files: Vec<&FileRef> = commit.files.iter().filter(|f| f.processor == name).collect();
    let old_parallelism = commit.parallelism.get(name).copied().unwrap_or(files.len() as u32);
    if spec.grouping == Grouping::Broadcast && !files.is_empty() && old_parallelism != parallelism {
        bail!("bolt `{name}` uses broadcast grouping and its parallelism changed ({old_parallelism} -> {parallelism}): its state cannot be re-partitioned");
    }
    for f in files {
        if spec.grouping == Grouping::Broadcast && f.instance != instance {
            continue;
        }
        let (snap, _) = store.read_snapshot(commit.round, &f.processor, f.instance)?;
        let same = old_parallelism == parallelism && f.instance == instance;
        let entries = if spec.grouping == Grouping::Key && !same {
            let pairs =
                abi::read_pairs(&snap.entries).map_err(|e| anyhow!("snapshot of {name}/{}: {e}", f.instance))?;
            let mut w = abi::BatchWriter::new();
            for (k, v) in pairs {
                if key_instance(k, parallelism) == instance {
                    w.bytes(k).bytes(v).end_item();
                }
            }
            w.finish()
        } else {
            snap.entries
        };
        guest.restore(bolt::SLOT_A, &entries)?;
    }
    Ok(())
}
