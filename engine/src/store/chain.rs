//! Chains: the files that give a bolt instance's state at a complete round,
//! how they are found and checked, and how they are folded into a base.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hailstorm_abi::BatchWriter;

use super::data::{DataHeader, DataKind, Parent};
use super::{CommitRecord, FileStore, StoreError};

/// Compact a chain once it has this many deltas after its base (or once its
/// deltas hold more than twice the bytes of its base).
const COMPACT_DELTAS: usize = 8;
/// About this many bytes per block of a base.
const CHUNK: usize = 1 << 20;

/// The files whose overlay (oldest first, later values replacing earlier
/// ones) is an instance's state at a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub files: Vec<PathBuf>,
    /// Deltas after the chain's base (or root).
    pub deltas: usize,
    /// The checksum each file must have, when it was not verified already
    /// (empty: the chain was verified).
    pub expect: Vec<Option<u32>>,
}

/// The newest usable complete round, the chains of its instances, and what
/// was skipped to find it.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub commit: CommitRecord,
    /// (processor, instance) → its verified chain.
    pub chains: BTreeMap<(String, u32), Chain>,
    pub warnings: Vec<String>,
}

fn corrupt(path: PathBuf, why: impl Into<String>) -> StoreError {
    StoreError::Corrupt { path, why: why.into() }
}

impl FileStore {
    /// Walks the parents back from instance `instance`'s delta of `round`.
    /// With `shortcut`, a base that compaction wrote for a round on the way
    /// ends the walk.
    pub(super) fn walk(
        &self,
        round: u64,
        processor: &str,
        instance: u32,
        parallelism: u32,
        shortcut: bool,
    ) -> Result<Chain, StoreError> {
        let mut files = Vec::new();
        let mut deltas = 0;
        let mut cur = Parent::Delta(round);
        loop {
            match cur {
                Parent::None => break,
                Parent::Base(r) => {
                    files.push(self.base_path(r, processor, instance, parallelism));
                    break;
                }
                Parent::Delta(r) => {
                    let base = self.base_path(r, processor, instance, parallelism);
                    if shortcut && self.exists(&base)? {
                        files.push(base);
                        break;
                    }
                    let path = self.delta_path(r, processor, instance);
                    let head = self.header(&path)?;
                    let next = match head.parent {
                        Parent::Delta(p) | Parent::Base(p) if p >= r => {
                            return Err(corrupt(path, format!("names round {p} as its parent")));
                        }
                        p => p,
                    };
                    files.push(path);
                    deltas += 1;
                    cur = next;
                }
            }
        }
        files.reverse();
        Ok(Chain { files, deltas, expect: Vec::new() })
    }

    /// Reads every file of a chain: intact, and each delta with the checksum
    /// its round's commit record lists.
    fn verify(&self, chain: &Chain, processor: &str, instance: u32) -> Result<(), StoreError> {
        for f in &chain.files {
            let (head, crc, _) = self.reader(f)?.verify_all()?;
            if head.processor != processor || head.instance != instance {
                return Err(corrupt(f.clone(), "the file belongs to another instance"));
            }
            if head.kind == DataKind::Delta {
                let listed = self.read_commit(head.round)?.and_then(|c| c.crc_of(processor, instance));
                if listed != Some(crc) {
                    return Err(corrupt(f.clone(), "checksum differs from its round's commit record"));
                }
            }
        }
        Ok(())
    }

    /// The verified chain of an instance at a complete round; a damaged
    /// compaction base on the way is passed over for the deltas under it.
    pub fn chain(&self, commit: &CommitRecord, processor: &str, instance: u32) -> Result<Chain, StoreError> {
        let p = commit.parallelism.get(processor).copied().unwrap_or(1);
        let chain = self.walk(commit.round, processor, instance, p, true)?;
        match self.verify(&chain, processor, instance) {
            Ok(()) => Ok(chain),
            Err(e) => {
                let deltas_only = self.walk(commit.round, processor, instance, p, false)?;
                if deltas_only == chain {
                    return Err(e);
                }
                self.verify(&deltas_only, processor, instance).map_err(|_| e)?;
                Ok(deltas_only)
            }
        }
    }

    /// The chains of every instance of a complete round.
    pub fn chains(&self, commit: &CommitRecord) -> Result<BTreeMap<(String, u32), Chain>, StoreError> {
        let mut out = BTreeMap::new();
        for f in &commit.files {
            out.insert((f.processor.clone(), f.instance), self.chain(commit, &f.processor, f.instance)?);
        }
        Ok(out)
    }

    /// The newest complete round whose chains are all intact, if any.
    pub fn latest_complete(&self) -> Result<Option<Recovered>, StoreError> {
        let mut warnings = Vec::new();
        for round in self.rounds()?.into_iter().rev() {
            let commit = match self.read_commit(round) {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => {
                    warnings.push(format!("skipping snapshot round {round}: {e}"));
                    continue;
                }
            };
            match self.chains(&commit) {
                Ok(chains) => return Ok(Some(Recovered { commit, chains, warnings })),
                Err(e) => warnings.push(format!("skipping snapshot round {round}: {e}")),
            }
        }
        if !warnings.is_empty() {
            return Err(corrupt(
                self.root.clone(),
                format!("no intact complete snapshot is left ({})", warnings.join("; ")),
            ));
        }
        Ok(None)
    }

    /// The deltas of an instance after round `since` up to its delta of
    /// `commit.round`, oldest first: its changes in that span, each with the
    /// checksum its round's commit record lists (the reader checks them).
    /// `None` when they cannot be had (`since` is not on the chain, a delta
    /// is gone, or a file is not the instance's delta of its round).
    pub fn changes_since(&self, commit: &CommitRecord, processor: &str, instance: u32, since: u64) -> Option<Chain> {
        let (mut files, mut expect) = (Vec::new(), Vec::new());
        let mut cur = commit.round;
        while cur > since {
            let path = self.delta_path(cur, processor, instance);
            let head = self.header(&path).ok()?;
            let mine = head.kind == DataKind::Delta
                && head.topology == commit.topology
                && head.processor == processor
                && head.instance == instance
                && head.round == cur;
            if !mine {
                return None;
            }
            let listed = self.read_commit(cur).ok()??.crc_of(processor, instance)?;
            files.push(path);
            expect.push(Some(listed));
            match head.parent {
                Parent::Delta(p) if p < cur => cur = p,
                _ => return None,
            }
        }
        files.reverse();
        expect.reverse();
        (cur == since).then_some(Chain { deltas: files.len(), files, expect })
    }

    /// Folds the chain of an instance at a complete round into a base at
    /// that round, when the chain is long enough to be worth it: at least
    /// [`COMPACT_DELTAS`] deltas, or deltas over twice the base. Returns
    /// whether it wrote one. Nothing is removed here; collection does that
    /// once no kept round needs the old files.
    pub fn compact(&self, commit: &CommitRecord, processor: &str, instance: u32) -> Result<bool, StoreError> {
        let p = commit.parallelism.get(processor).copied().unwrap_or(1);
        let chain = self.walk(commit.round, processor, instance, p, true)?;
        let size = |f: &PathBuf| self.size(f);
        // Without a base, the chain's first delta (all the state of its time) stands for one.
        let (base, deltas): (u64, u64) = match chain.files.split_first() {
            Some((first, rest)) => (size(first), rest.iter().map(size).sum()),
            None => (0, 0),
        };
        if chain.deltas < 2 || (chain.deltas < COMPACT_DELTAS && deltas <= 2 * base) {
            return Ok(false);
        }
        let head = self.header(&self.delta_path(commit.round, processor, instance))?;
        let header = DataHeader { kind: DataKind::Base, parent: Parent::None, parallelism: p, ..head };
        let mut merge = self.merge(&chain.files)?;
        let mut out = self.base_writer(&header)?;
        let mut chunk = BatchWriter::new();
        loop {
            chunk.clear();
            let more = merge.next_chunk(&mut chunk, CHUNK, &|_| true)?;
            out.block(chunk.as_bytes())?;
            if !more {
                break;
            }
        }
        out.finish()?;
        Ok(true)
    }
}
