//! The A/B state of a bolt instance (DESIGN §3.3): pure, synchronous logic.
//!
//! While a snapshot round with clock `C` is open, tuples whose origin lies
//! below `C` fold into slot A and the rest into slot B. When the instance's LWM
//! reaches `C` in every partition, nothing more can arrive for A: A is exactly
//! snapshot(C). It is handed out to be saved, then `A := A ⊕ B` and B is
//! emptied. With no round open, everything folds into A.
//!
//! The state itself lives behind [`Slots`] (a WebAssembly bolt in the engine, a
//! plain map in the tests), so this logic is tested without I/O. Slots save
//! incrementally: a save writes the entries of A that changed since the
//! previous save, so the saves overlaid in order are every snapshot(C).

use crate::core::batch::TupleBatch;
use crate::core::clock::{Clock, LwmTracker};

/// Slot holding everything up to the open round's clock (or everything, between rounds).
pub const SLOT_A: i32 = 0;
/// Slot holding tuples at or above the open round's clock.
pub const SLOT_B: i32 = 1;

/// The keyed monoid state of one bolt instance, in numbered slots.
pub trait Slots {
    type Error;
    /// Folds a batch into a slot. The batch's origins travel with any tuples
    /// the bolt emits.
    fn fold(&mut self, slot: i32, batch: &mut TupleBatch) -> Result<(), Self::Error>;
    /// `dst := dst ⊕ src; src := empty`; what `src` held counts as changed in `dst`.
    fn merge(&mut self, dst: i32, src: i32) -> Result<(), Self::Error>;
    /// Saves the entries of `slot` that changed since its previous save, as
    /// this instance's part of `round`.
    fn save(&mut self, slot: i32, round: &Round) -> Result<(), Self::Error>;
}

/// A round whose snapshot this instance must produce.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Round {
    pub id: u64,
    pub clock: Clock,
}

/// A finished snapshot(C) of this instance: its changes are saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub round: Round,
}

/// Protocol violations a bolt instance detects. Each means a bug or a
/// misbehaving peer, never bad user data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error("round {new} announced while round {open} is still open")]
    OverlappingRound { open: u64, new: u64 },
    #[error("a tuple from partition {partition} at offset {offset} arrived below the LWM {lwm}")]
    BelowLwm { partition: u32, offset: u64, lwm: u64 },
}

/// The exactly-once core of one bolt instance.
#[derive(Debug, Clone)]
pub struct BoltCore {
    tracker: LwmTracker,
    round: Option<Round>,
}

impl BoltCore {
    /// `channels` inputs, restored at `start`.
    pub fn new(channels: usize, start: &Clock) -> BoltCore {
        BoltCore { tracker: LwmTracker::new(channels, start), round: None }
    }

    pub fn lwm(&self) -> &Clock {
        self.tracker.lwm()
    }

    pub fn open_round(&self) -> Option<&Round> {
        self.round.as_ref()
    }

    /// Opens a round. If the LWM already covers its clock (an idle instance),
    /// the snapshot is final at once.
    pub fn announce<S: Slots>(&mut self, s: &mut S, round: Round) -> Result<Option<Finished>, Error<S::Error>> {
        if let Some(open) = &self.round {
            return Err(Error::Core(CoreError::OverlappingRound { open: open.id, new: round.id }));
        }
        self.round = Some(round);
        self.maybe_finish(s)
    }

    /// Folds a batch that arrived on `channel`, then applies the LWM that
    /// came with it.
    pub fn on_batch<S: Slots>(
        &mut self,
        s: &mut S,
        channel: usize,
        batch: TupleBatch,
        lwm: &Clock,
    ) -> Result<Option<Finished>, Error<S::Error>> {
        if let Some(o) = batch.origins().iter().find(|o| !self.tracker.admits(**o)) {
            return Err(Error::Core(CoreError::BelowLwm {
                partition: o.partition,
                offset: o.offset,
                lwm: self.tracker.lwm().get(o.partition),
            }));
        }
        match &self.round {
            None => {
                let mut batch = batch;
                if !batch.is_empty() {
                    s.fold(SLOT_A, &mut batch).map_err(Error::Slots)?;
                }
            }
            Some(r) => {
                let (mut a, mut b) = batch.split(&r.clock);
                if !a.is_empty() {
                    s.fold(SLOT_A, &mut a).map_err(Error::Slots)?;
                }
                if !b.is_empty() {
                    s.fold(SLOT_B, &mut b).map_err(Error::Slots)?;
                }
            }
        }
        self.on_lwm(s, channel, lwm)
    }

    /// Applies an LWM heartbeat from `channel`.
    pub fn on_lwm<S: Slots>(
        &mut self,
        s: &mut S,
        channel: usize,
        lwm: &Clock,
    ) -> Result<Option<Finished>, Error<S::Error>> {
        if self.tracker.observe(channel, lwm) {
            self.maybe_finish(s)
        } else {
            Ok(None)
        }
    }

    fn maybe_finish<S: Slots>(&mut self, s: &mut S) -> Result<Option<Finished>, Error<S::Error>> {
        let ready = matches!(&self.round, Some(r) if self.tracker.lwm().dominates(&r.clock));
        if !ready {
            return Ok(None);
        }
        let Some(round) = self.round.take() else { return Ok(None) };
        s.save(SLOT_A, &round).map_err(Error::Slots)?;
        s.merge(SLOT_A, SLOT_B).map_err(Error::Slots)?;
        Ok(Some(Finished { round }))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error<E> {
    #[error(transparent)]
    Core(CoreError),
    #[error("{0}")]
    Slots(E),
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::clock::{Origin, INFINITY};
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet, VecDeque};

    /// A counting monoid in plain maps that tracks what changed since each
    /// save: the reference backend.
    #[derive(Default, Debug)]
    pub struct Counts {
        pub slots: [BTreeMap<Vec<u8>, u64>; 2],
        pub changed: [BTreeSet<Vec<u8>>; 2],
        /// Every save: the round's clock and the changed entries.
        pub saves: Vec<(Clock, BTreeMap<Vec<u8>, u64>)>,
    }

    impl Slots for Counts {
        type Error = String;
        fn fold(&mut self, slot: i32, batch: &mut TupleBatch) -> Result<(), String> {
            let s = slot as usize;
            for (k, _, _) in batch.iter() {
                *self.slots[s].entry(k.to_vec()).or_default() += 1;
                self.changed[s].insert(k.to_vec());
            }
            Ok(())
        }
        fn merge(&mut self, dst: i32, src: i32) -> Result<(), String> {
            let (d, s) = (dst as usize, src as usize);
            let src = std::mem::take(&mut self.slots[s]);
            self.changed[s].clear();
            for (k, v) in src {
                *self.slots[d].entry(k.clone()).or_default() += v;
                self.changed[d].insert(k);
            }
            Ok(())
        }
        fn save(&mut self, slot: i32, round: &Round) -> Result<(), String> {
            let s = slot as usize;
            let changed = std::mem::take(&mut self.changed[s]);
            let delta = changed.into_iter().filter_map(|k| self.slots[s].get(&k).map(|v| (k, *v))).collect();
            self.saves.push((round.clock.clone(), delta));
            Ok(())
        }
    }

    /// Every snapshot(C) the saves stand for: the saves up to each one, overlaid.
    fn snapshots(saves: &[(Clock, BTreeMap<Vec<u8>, u64>)]) -> Vec<(Clock, BTreeMap<Vec<u8>, u64>)> {
        let mut state = BTreeMap::new();
        saves
            .iter()
            .map(|(c, delta)| {
                state.extend(delta.iter().map(|(k, v)| (k.clone(), *v)));
                (c.clone(), state.clone())
            })
            .collect()
    }

    /// Record `offset` of partition `p` carries key `keys[p][offset]`.
    fn reference(keys: &[Vec<u8>], clock: &Clock) -> BTreeMap<Vec<u8>, u64> {
        let mut m = BTreeMap::new();
        for (p, ks) in keys.iter().enumerate() {
            for (off, k) in ks.iter().enumerate() {
                if (off as u64) < clock.get(p as u32) {
                    *m.entry(vec![*k]).or_default() += 1;
                }
            }
        }
        m
    }

    enum Msg {
        Batch(TupleBatch, Clock),
    }

    proptest! {
        /// Spouts emit records in batches over FIFO channels that the bolt reads
        /// in a random interleaving; rounds open at random moments with the
        /// spouts' positions as clock (spouts are gated while the announcement
        /// is delivered, so nothing at or above C is in flight yet, while
        /// records below C may still be). Every snapshot(C) — the changes
        /// saved up to its round, overlaid — equals the sequential fold of the
        /// records below C, and the final state equals the fold of everything.
        #[test]
        fn ab_split_equals_sequential_fold(
            keys in prop::collection::vec(prop::collection::vec(0u8..6, 0..60), 1..4),
            script in prop::collection::vec((0u8..4, any::<u8>(), 1usize..6), 0..300),
        ) {
            let parts = keys.len();
            let start = Clock::filled(parts, 0);
            let mut core = BoltCore::new(parts, &start);
            let mut s = Counts::default();
            let mut sent = vec![0usize; parts];
            let mut queues: Vec<VecDeque<Msg>> = (0..parts).map(|_| VecDeque::new()).collect();
            let mut next_round = 1u64;
            let mut step = |core: &mut BoltCore, s: &mut Counts, queues: &mut Vec<VecDeque<Msg>>, op: u8, pick: u8, n: usize, sent: &mut Vec<usize>| -> Result<(), TestCaseError> {
                let p = pick as usize % parts;
                match op {
                    // A spout emits a batch of up to n records.
                    0 | 1 => {
                        let mut b = TupleBatch::new();
                        let end = (sent[p] + n).min(keys[p].len());
                        for (off, k) in keys[p].iter().enumerate().take(end).skip(sent[p]) {
                            b.push(&[*k], b"", Origin { partition: p as u32, offset: off as u64 });
                        }
                        sent[p] = end;
                        let mut l = Clock::filled(parts, INFINITY);
                        l.set(p as u32, end as u64);
                        queues[p].push_back(Msg::Batch(b, l));
                    }
                    // The bolt reads the next message of some channel.
                    2 => {
                        if let Some(Msg::Batch(b, l)) = queues[p].pop_front() {
                            core.on_batch(s, p, b, &l).map_err(|e| TestCaseError::fail(e.to_string()))?;
                        }
                    }
                    // The negotiator opens a round at the spouts' positions,
                    // if the previous one finished.
                    _ => {
                        if core.open_round().is_none() {
                            let c = Clock(sent.iter().map(|&x| x as u64).collect());
                            let r = Round { id: next_round, clock: c };
                            next_round += 1;
                            core.announce(s, r).map_err(|e| TestCaseError::fail(e.to_string()))?;
                        }
                    }
                }
                Ok(())
            };
            for (op, pick, n) in script {
                step(&mut core, &mut s, &mut queues, op, pick, n, &mut sent)?;
            }
            // Drain: emit everything, deliver everything.
            for p in 0..parts {
                // At least one emission per spout: an empty batch still carries the LWM.
                step(&mut core, &mut s, &mut queues, 0, p as u8, 7, &mut sent)?;
                while sent[p] < keys[p].len() {
                    step(&mut core, &mut s, &mut queues, 0, p as u8, 7, &mut sent)?;
                }
                while !queues[p].is_empty() {
                    step(&mut core, &mut s, &mut queues, 2, p as u8, 1, &mut sent)?;
                }
            }
            // A last round at the end of input always completes.
            step(&mut core, &mut s, &mut queues, 3, 0, 1, &mut sent)?;
            prop_assert!(core.open_round().is_none());
            for (clock, snap) in &snapshots(&s.saves) {
                prop_assert_eq!(snap, &reference(&keys, clock));
            }
            let end = Clock(keys.iter().map(|k| k.len() as u64).collect());
            prop_assert_eq!(&s.slots[0], &reference(&keys, &end));
            prop_assert!(s.slots[1].is_empty());
        }
    }

    #[test]
    fn overlapping_rounds_are_refused() {
        let mut core = BoltCore::new(1, &Clock(vec![0]));
        let mut s = Counts::default();
        core.announce(&mut s, Round { id: 1, clock: Clock(vec![5]) }).unwrap();
        let e = core.announce(&mut s, Round { id: 2, clock: Clock(vec![6]) }).unwrap_err();
        assert!(matches!(e, Error::Core(CoreError::OverlappingRound { .. })));
    }

    #[test]
    fn tuples_below_the_lwm_are_refused() {
        let mut core = BoltCore::new(1, &Clock(vec![10]));
        let mut s = Counts::default();
        let mut b = TupleBatch::new();
        b.push(b"k", b"", Origin { partition: 0, offset: 3 });
        assert!(core.on_batch(&mut s, 0, b, &Clock(vec![11])).is_err());
    }
}
