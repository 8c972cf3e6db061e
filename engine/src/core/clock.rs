//! Clocks, origins and low water marks: the arithmetic of exactly-once.
//!
//! A [`Clock`] maps every partition of a topology (by dense index) to an
//! *exclusive* offset: the next record not yet included. A low water mark
//! (LWM) is a clock with a promise attached: no tuple whose origin offset is
//! below it will arrive again. Partitions that can never reach a channel hold
//! [`INFINITY`], so the pointwise minimum over channels works unchanged.
//!
//! **Invariant (DESIGN §3.2):** after an instance has observed LWM `L`, every
//! tuple it receives has `origin.offset >= L[origin.partition]`. The property
//! tests at the bottom check it over random interleavings of FIFO channels.

use serde::{Deserialize, Serialize};

/// The offset of a partition that will never send anything on a channel.
pub const INFINITY: u64 = u64::MAX;

/// Where a tuple came from: the partition (dense index) and offset of its input record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Origin {
    pub partition: u32,
    pub offset: u64,
}

/// A vector clock over the partitions of a topology, indexed densely.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Clock(pub Vec<u64>);

impl Clock {
    /// A clock of `n` partitions, all at `offset`.
    pub fn filled(n: usize, offset: u64) -> Clock {
        Clock(vec![offset; n])
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The offset of partition `p`; partitions beyond the clock are at infinity.
    pub fn get(&self, p: u32) -> u64 {
        self.0.get(p as usize).copied().unwrap_or(INFINITY)
    }

    pub fn set(&mut self, p: u32, offset: u64) {
        if let Some(slot) = self.0.get_mut(p as usize) {
            *slot = offset;
        }
    }

    /// True when a record of that origin lies below the clock (the clock includes it).
    pub fn includes(&self, o: Origin) -> bool {
        o.offset < self.get(o.partition)
    }

    /// True when `self >= other` in every partition.
    pub fn dominates(&self, other: &Clock) -> bool {
        (0..self.len().max(other.len())).all(|p| self.get(p as u32) >= other.get(p as u32))
    }

    /// Pointwise maximum, in place.
    pub fn join(&mut self, other: &Clock) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a = (*a).max(*b);
        }
    }

    /// Pointwise minimum, in place.
    pub fn meet(&mut self, other: &Clock) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a = (*a).min(*b);
        }
    }
}

/// Tracks the LWM of one processor instance from the LWMs of its input channels.
///
/// Each channel's latest LWM is kept (the pointwise maximum of what it sent, as
/// each sender's LWM only grows and channels are FIFO); the instance's LWM is
/// the pointwise minimum over channels.
#[derive(Debug, Clone)]
pub struct LwmTracker {
    channels: Vec<Clock>,
    lwm: Clock,
}

impl LwmTracker {
    /// `channels` inputs, all starting at `start` (nothing below the restored
    /// clock will ever be replayed).
    pub fn new(channels: usize, start: &Clock) -> LwmTracker {
        LwmTracker { channels: vec![start.clone(); channels], lwm: start.clone() }
    }

    /// Records an LWM received on `channel`; returns true if the instance LWM changed.
    /// Unknown channels are ignored (the caller validated the sender).
    ///
    /// The work is O(partitions) plus O(channels) for each partition whose
    /// minimum this channel held and raised, not O(channels × partitions):
    /// a spout's LWM raises one partition (the others are at infinity).
    pub fn observe(&mut self, channel: usize, lwm: &Clock) -> bool {
        let Some(c) = self.channels.get_mut(channel) else { return false };
        let mut raised = Vec::new();
        for (p, (mine, &new)) in c.0.iter_mut().zip(&lwm.0).enumerate() {
            if new > *mine {
                // Only a partition whose minimum this channel held can rise.
                if self.lwm.0.get(p) == Some(mine) {
                    raised.push(p);
                }
                *mine = new;
            }
        }
        let mut changed = false;
        for p in raised {
            let min = self.channels.iter().map(|c| c.0.get(p).copied().unwrap_or(INFINITY)).min();
            if let (Some(min), Some(slot)) = (min, self.lwm.0.get_mut(p)) {
                changed |= min != *slot;
                *slot = min;
            }
        }
        changed
    }

    pub fn lwm(&self) -> &Clock {
        &self.lwm
    }

    /// Checks the invariant for a tuple that just arrived: its origin is not
    /// below the LWM the instance already had.
    pub fn admits(&self, o: Origin) -> bool {
        o.offset >= self.lwm.get(o.partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// A message on a channel: a tuple with an origin, or an LWM.
    #[derive(Debug, Clone)]
    enum Msg {
        Tuple(Origin),
        Lwm(Clock),
    }

    proptest! {
        /// Spouts emit records in offset order and follow each with their LWM;
        /// channels are FIFO but interleave arbitrarily at the receiver. Every
        /// tuple that arrives is admitted by the LWM observed before it, and the
        /// final LWM equals the spouts' final positions.
        #[test]
        fn lwm_invariant_under_random_interleavings(
            records in prop::collection::vec(0usize..40, 1..4),
            picks in prop::collection::vec(any::<u8>(), 0..400),
            start in prop::collection::vec(0u64..5, 4),
        ) {
            let parts = records.len();
            let start = Clock(start[..parts].to_vec());
            // One channel per spout (partition); each carries only its partition.
            let mut queues: Vec<VecDeque<Msg>> = Vec::new();
            for (p, &n) in records.iter().enumerate() {
                let mut q = VecDeque::new();
                let s = start.get(p as u32);
                // Like a real spout, announce the position before any record
                // (spouts send LWM heartbeats even when they have nothing).
                let mut first = Clock::filled(parts, INFINITY);
                first.set(p as u32, s);
                q.push_back(Msg::Lwm(first));
                for off in s..s + n as u64 {
                    q.push_back(Msg::Tuple(Origin { partition: p as u32, offset: off }));
                    let mut l = Clock::filled(parts, INFINITY);
                    l.set(p as u32, off + 1);
                    q.push_back(Msg::Lwm(l));
                }
                queues.push(q);
            }
            let mut t = LwmTracker::new(parts, &start);
            let mut pick = picks.into_iter();
            loop {
                let live: Vec<usize> = (0..parts).filter(|&c| !queues[c].is_empty()).collect();
                if live.is_empty() { break; }
                let c = live[pick.next().unwrap_or(0) as usize % live.len()];
                match queues[c].pop_front() {
                    Some(Msg::Tuple(o)) => prop_assert!(t.admits(o), "tuple {:?} below LWM {:?}", o, t.lwm()),
                    Some(Msg::Lwm(l)) => { t.observe(c, &l); }
                    None => {}
                }
                // The LWM never exceeds what any spout has actually passed.
                for (p, n) in records.iter().enumerate() {
                    prop_assert!(t.lwm().get(p as u32) <= start.get(p as u32) + *n as u64);
                }
            }
            let end: Vec<u64> = (0..parts).map(|p| start.get(p as u32) + records[p] as u64).collect();
            prop_assert_eq!(t.lwm(), &Clock(end));
        }

        /// min/max laws: join is an upper bound, meet a lower bound, dominates is consistent.
        #[test]
        fn clock_lattice(a in prop::collection::vec(0u64..100, 3), b in prop::collection::vec(0u64..100, 3)) {
            let (a, b) = (Clock(a), Clock(b));
            let mut j = a.clone(); j.join(&b);
            let mut m = a.clone(); m.meet(&b);
            prop_assert!(j.dominates(&a) && j.dominates(&b));
            prop_assert!(a.dominates(&m) && b.dominates(&m));
            prop_assert_eq!(a.dominates(&b) && b.dominates(&a), a == b);
            for p in 0..3u32 {
                let o = Origin { partition: p, offset: b.get(p) };
                prop_assert_eq!(a.includes(o), b.get(p) < a.get(p));
            }
        }
    }

    #[test]
    fn lwm_waits_for_every_channel() {
        let start = Clock(vec![0, 0]);
        let mut t = LwmTracker::new(2, &start);
        assert!(!t.observe(0, &Clock(vec![5, INFINITY])));
        assert_eq!(t.lwm(), &Clock(vec![0, 0]));
        assert!(t.observe(1, &Clock(vec![INFINITY, 7])));
        assert_eq!(t.lwm(), &Clock(vec![5, 7]));
        // Stale (smaller) LWMs never move it back.
        assert!(!t.observe(0, &Clock(vec![3, INFINITY])));
        assert_eq!(t.lwm(), &Clock(vec![5, 7]));
    }
}
