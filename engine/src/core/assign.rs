//! Placing processor instances on workers (distributed mode): pure and
//! deterministic, so every worker that reads the same inputs from the
//! coordinator computes the same answer.
//!
//! The assignment is balanced (worker loads differ by at most one) and
//! sticky: when workers come and go, an instance stays where it was if its
//! worker is still alive and not over its share, so a reboot of the world
//! moves as little as possible.

use std::collections::{BTreeMap, BTreeSet};

/// An instance to place, e.g. `counts/1` or `lines/0`.
pub type Instance = String;
/// A live worker's id (its ZooKeeper node name).
pub type Worker = String;

/// Instance → worker.
pub type Assignment = BTreeMap<Instance, Worker>;

/// Places `instances` on `workers`, keeping as much of `previous` as balance allows.
/// Returns `None` when there is no worker.
pub fn assign(instances: &[Instance], workers: &[Worker], previous: &Assignment) -> Option<Assignment> {
    let workers: BTreeSet<&Worker> = workers.iter().collect();
    if workers.is_empty() {
        return None;
    }
    let n = instances.len();
    let w = workers.len();
    // The first `n % w` workers (in id order) may take one more than the others.
    let quota: BTreeMap<&Worker, usize> =
        workers.iter().enumerate().map(|(i, wk)| (*wk, n / w + usize::from(i < n % w))).collect();
    let mut load: BTreeMap<&Worker, usize> = workers.iter().map(|wk| (*wk, 0)).collect();
    let mut out = Assignment::new();
    let mut unplaced = Vec::new();
    let mut sorted: Vec<&Instance> = instances.iter().collect();
    sorted.sort();
    sorted.dedup();
    // Keep previous placements on live workers, within quota.
    for inst in &sorted {
        match previous.get(*inst).and_then(|wk| workers.get(wk)) {
            Some(wk) if load[wk] < quota[wk] => {
                if let Some(l) = load.get_mut(wk) {
                    *l += 1;
                }
                out.insert((*inst).clone(), (*wk).clone());
            }
            _ => unplaced.push(*inst),
        }
    }
    // Fill the least-loaded workers (relative to their quota) with the rest.
    for inst in unplaced {
        let target = workers.iter().filter(|wk| load[*wk] < quota[*wk]).min_by_key(|wk| (load[*wk], **wk))?;
        if let Some(l) = load.get_mut(*target) {
            *l += 1;
        }
        out.insert(inst.clone(), (*target).clone());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    proptest! {
        /// Every instance lands on exactly one live worker, loads differ by at
        /// most one, and an instance whose worker survives stays unless its
        /// worker is over its new share.
        #[test]
        fn balanced_complete_and_sticky(n in 0usize..40, w0 in 1usize..6, kill in prop::collection::vec(any::<bool>(), 6), add in 0usize..3) {
            let instances = names("i", n);
            let before = names("w", w0);
            let first = assign(&instances, &before, &Assignment::new()).unwrap();
            let mut after: Vec<String> = before.iter().zip(&kill).filter(|(_, k)| !**k).map(|(w, _)| w.clone()).collect();
            after.extend(names("new", add));
            let Some(second) = assign(&instances, &after, &first) else {
                prop_assert!(after.is_empty());
                return Ok(());
            };
            prop_assert_eq!(second.len(), n);
            let mut load: BTreeMap<&String, usize> = after.iter().map(|w| (w, 0)).collect();
            for (i, w) in &second {
                prop_assert!(after.contains(w), "{} placed on dead worker {}", i, w);
                *load.get_mut(w).unwrap() += 1;
            }
            let (lo, hi) = (load.values().min().copied().unwrap_or(0), load.values().max().copied().unwrap_or(0));
            prop_assert!(hi - lo <= 1, "unbalanced: {:?}", load);
            // Stickiness: the number of moved instances whose worker survived is
            // at most what rebalancing needs.
            let moved = instances.iter().filter(|i| after.contains(&first[*i]) && first[*i] != second[*i]).count();
            let over_share: usize = after
                .iter()
                .map(|w| first.values().filter(|x| *x == w).count().saturating_sub(n / after.len()))
                .sum();
            prop_assert!(moved <= over_share, "moved {} instances off surviving workers, more than {}", moved, over_share);
            // Deterministic.
            prop_assert_eq!(assign(&instances, &after, &first), Some(second));
        }
    }

    #[test]
    fn no_worker_no_assignment() {
        assert_eq!(assign(&names("i", 3), &[], &Assignment::new()), None);
    }
}
