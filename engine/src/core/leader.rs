//! The cluster leader's decisions, pure and synchronous: for one topology,
//! what the leader knows ([`View`]) and what just happened ([`Input`]) in,
//! what to do ([`Action`]) out. The shell (`cluster::leader`) reads the view
//! from ZooKeeper, asks [`Leader::decide`], and carries the actions out:
//! placing instances and publishing a new epoch, writing the status,
//! deleting the world, draining the negotiator's run.
//!
//! Time comes in as a value, so every rule is tested without a server.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long a reboot the leader decided on waits (a failed share, a
/// retryable failure, an unreachable broker), so a failing world is not
/// rebooted in a tight loop.
pub const REBOOT_DELAY: Duration = Duration::from_secs(1);

/// What a topology is doing, as the leader says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// A world (epoch) is published and its workers run it.
    Running,
    /// No world can start yet (the broker cannot be reached); retried.
    Waiting,
    /// Stopped by `hailstorm stop` after a final round (or without one when
    /// its negotiator was lost).
    Stopped,
    /// Stopped by an error no retry can fix; deploying again retries.
    Failed,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Running => "running",
            State::Waiting => "waiting",
            State::Stopped => "stopped",
            State::Failed => "failed",
        })
    }
}

/// The published world of a topology, as far as decisions go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldView {
    pub epoch: u64,
    pub generation: u64,
    /// The worker running the negotiator (the leader that published it).
    pub leader: String,
    /// Every worker with something placed on it.
    pub workers: Vec<String>,
}

/// The last status the leader wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusView {
    pub state: State,
    pub generation: u64,
    pub epoch: u64,
}

/// What the leader knows of one topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The deployed generation (every deploy bumps it).
    pub generation: u64,
    /// `hailstorm stop` asked for it.
    pub stopped: bool,
    pub world: Option<WorldView>,
    pub status: Option<StatusView>,
}

/// How the negotiator's run of an epoch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It drained (stop or hot swap) and its final round is complete.
    Finished {
        last_round: Option<u64>,
    },
    Failed {
        message: String,
        retryable: bool,
    },
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The leader's periodic look.
    Tick,
    /// The negotiator's run of `epoch` ended.
    Ended { epoch: u64, outcome: Outcome },
    /// A share of the topology (not the negotiator) failed on some worker.
    ShareFailed { why: String },
    /// A reboot could not place the world: the broker cannot be reached.
    BrokerDown { why: String },
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Place every instance on the live workers and publish epoch `epoch`.
    Reboot {
        epoch: u64,
        why: String,
    },
    SetStatus {
        state: State,
        epoch: u64,
        message: String,
    },
    /// Nothing runs any more: the workers stop their shares.
    DeleteWorld,
    /// Ask the negotiator's run for a final round (stop or hot swap).
    Drain,
}

/// The leader's memory between looks (everything else is in ZooKeeper).
#[derive(Debug, Clone)]
pub struct Leader {
    me: String,
    /// Topologies whose world must be rebooted: why, and not before when.
    pending: BTreeMap<String, (String, Instant)>,
}

impl Leader {
    pub fn new(me: &str) -> Leader {
        Leader { me: me.to_string(), pending: BTreeMap::new() }
    }

    /// Decides what to do about topology `name`, given the live workers.
    pub fn decide(&mut self, name: &str, view: &View, alive: &[String], input: Input, now: Instant) -> Vec<Action> {
        let actions = match input {
            Input::Tick => self.tick(name, view, alive, now),
            Input::Ended { epoch, outcome } => self.ended(name, view, epoch, outcome, now),
            Input::ShareFailed { why } => {
                self.later(name, why, now);
                Vec::new()
            }
            Input::BrokerDown { why } => {
                self.later(name, "waiting for the broker".into(), now);
                let epoch = view.world.as_ref().map_or(0, |w| w.epoch);
                vec![Action::SetStatus { state: State::Waiting, epoch, message: why }]
            }
        };
        if actions.iter().any(|a| matches!(a, Action::Reboot { .. })) {
            self.pending.remove(name);
        }
        actions
    }

    /// Whether a reboot of `name` is waiting for its time.
    pub fn is_pending(&self, name: &str) -> bool {
        self.pending.contains_key(name)
    }

    fn later(&mut self, name: &str, why: String, now: Instant) {
        self.pending.insert(name.to_string(), (why, now + REBOOT_DELAY));
    }

    fn tick(&mut self, name: &str, view: &View, alive: &[String], now: Instant) -> Vec<Action> {
        if view.status.is_some_and(|s| s.state == State::Failed && s.generation == view.generation) {
            return Vec::new();
        }
        let Some(w) = &view.world else {
            if !view.stopped {
                return vec![Action::Reboot { epoch: next_epoch(view), why: "no world is running".into() }];
            }
            if view.status.is_none_or(|s| s.state != State::Stopped) {
                return vec![Action::SetStatus { state: State::Stopped, epoch: 0, message: "stopped".into() }];
            }
            return Vec::new();
        };
        let lost = w.workers.iter().find(|wk| !alive.contains(wk));
        let why = if w.leader != self.me {
            Some(format!("leader changed to {}", self.me))
        } else if let Some(wk) = lost {
            Some(format!("worker {wk} is gone"))
        } else {
            self.pending.get(name).filter(|(_, at)| now >= *at).map(|(why, _)| why.clone())
        };
        match why {
            // Without its negotiator no final round can be taken: the last complete one stands.
            Some(_) if view.stopped => vec![
                Action::DeleteWorld,
                Action::SetStatus { state: State::Stopped, epoch: w.epoch, message: "stopped".into() },
            ],
            Some(why) => vec![Action::Reboot { epoch: next_epoch(view), why }],
            None if view.stopped || w.generation != view.generation => vec![Action::Drain],
            None => Vec::new(),
        }
    }

    fn ended(&mut self, name: &str, view: &View, epoch: u64, outcome: Outcome, now: Instant) -> Vec<Action> {
        if view.world.as_ref().is_none_or(|w| w.epoch != epoch) {
            return Vec::new();
        }
        match outcome {
            Outcome::Finished { last_round } => {
                let last = last_round.map_or_else(|| "none".into(), super::negotiator::show_round);
                if view.stopped {
                    let message = format!("final round {last}");
                    vec![Action::DeleteWorld, Action::SetStatus { state: State::Stopped, epoch, message }]
                } else {
                    let why = format!("drained at round {last}; starting generation {}", view.generation);
                    vec![Action::Reboot { epoch: next_epoch(view), why }]
                }
            }
            Outcome::Failed { message, retryable: false } => {
                vec![Action::DeleteWorld, Action::SetStatus { state: State::Failed, epoch, message }]
            }
            Outcome::Failed { message, retryable: true } => {
                self.later(name, message, now);
                Vec::new()
            }
        }
    }
}

/// The epoch a reboot publishes: above every epoch the topology had.
fn next_epoch(view: &View) -> u64 {
    view.world.as_ref().map_or(0, |w| w.epoch).max(view.status.map_or(0, |s| s.epoch)) + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn view(world: Option<(u64, &str, &[&str])>, status: Option<(State, u64)>) -> View {
        View {
            generation: 1,
            stopped: false,
            world: world.map(|(epoch, leader, workers)| WorldView {
                epoch,
                generation: 1,
                leader: leader.into(),
                workers: workers.iter().map(|w| w.to_string()).collect(),
            }),
            status: status.map(|(state, epoch)| StatusView { state, generation: 1, epoch }),
        }
    }

    fn alive(ws: &[&str]) -> Vec<String> {
        ws.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn a_lost_worker_reboots_the_world_into_a_higher_epoch() {
        let mut l = Leader::new("a");
        let now = Instant::now();
        let v = view(Some((3, "a", &["a", "b"])), Some((State::Running, 3)));
        assert!(l.decide("t", &v, &alive(&["a", "b"]), Input::Tick, now).is_empty());
        let a = l.decide("t", &v, &alive(&["a"]), Input::Tick, now);
        assert_eq!(a, vec![Action::Reboot { epoch: 4, why: "worker b is gone".into() }]);
    }

    #[test]
    fn a_retryable_failure_reboots_after_a_delay_and_a_fatal_one_fails_the_topology() {
        let mut l = Leader::new("a");
        let t0 = Instant::now();
        let v = view(Some((2, "a", &["a"])), Some((State::Running, 2)));
        let failed =
            |retryable| Input::Ended { epoch: 2, outcome: Outcome::Failed { message: "boom".into(), retryable } };
        assert!(l.decide("t", &v, &alive(&["a"]), failed(true), t0).is_empty());
        assert!(l.is_pending("t"));
        assert!(l.decide("t", &v, &alive(&["a"]), Input::Tick, t0).is_empty());
        let a = l.decide("t", &v, &alive(&["a"]), Input::Tick, t0 + REBOOT_DELAY);
        assert_eq!(a, vec![Action::Reboot { epoch: 3, why: "boom".into() }]);
        assert!(!l.is_pending("t"));
        let a = l.decide("t", &v, &alive(&["a"]), failed(false), t0);
        assert_eq!(
            a,
            vec![Action::DeleteWorld, Action::SetStatus { state: State::Failed, epoch: 2, message: "boom".into() }]
        );
    }

    #[test]
    fn stop_drains_then_records_the_final_round() {
        let mut l = Leader::new("a");
        let now = Instant::now();
        let mut v = view(Some((5, "a", &["a"])), Some((State::Running, 5)));
        v.stopped = true;
        assert_eq!(l.decide("t", &v, &alive(&["a"]), Input::Tick, now), vec![Action::Drain]);
        let ended = Input::Ended { epoch: 5, outcome: Outcome::Finished { last_round: Some((5 << 32) + 3) } };
        let a = l.decide("t", &v, &alive(&["a"]), ended, now);
        assert_eq!(
            a,
            vec![
                Action::DeleteWorld,
                Action::SetStatus { state: State::Stopped, epoch: 5, message: "final round 5.3".into() }
            ]
        );
        // An outcome of an older epoch means nothing.
        let old = Input::Ended { epoch: 4, outcome: Outcome::Finished { last_round: None } };
        assert!(l.decide("t", &v, &alive(&["a"]), old, now).is_empty());
    }

    #[test]
    fn a_new_generation_is_a_hot_swap_drain_then_reboot() {
        let mut l = Leader::new("a");
        let now = Instant::now();
        let mut v = view(Some((5, "a", &["a"])), Some((State::Running, 5)));
        v.generation = 2;
        assert_eq!(l.decide("t", &v, &alive(&["a"]), Input::Tick, now), vec![Action::Drain]);
        let ended = Input::Ended { epoch: 5, outcome: Outcome::Finished { last_round: None } };
        let a = l.decide("t", &v, &alive(&["a"]), ended, now);
        assert!(matches!(&a[..], [Action::Reboot { epoch: 6, .. }]), "{a:?}");
    }

    fn any_state() -> impl Strategy<Value = State> {
        prop_oneof![Just(State::Running), Just(State::Waiting), Just(State::Stopped), Just(State::Failed)]
    }

    fn any_view() -> impl Strategy<Value = View> {
        let world = proptest::option::of((0u64..6, 0u64..3, 0usize..3, proptest::collection::vec(0usize..4, 0..4)));
        let status = proptest::option::of((any_state(), 0u64..3, 0u64..6));
        (0u64..3, any::<bool>(), world, status).prop_map(|(generation, stopped, world, status)| View {
            generation,
            stopped,
            world: world.map(|(epoch, g, leader, ws)| WorldView {
                epoch,
                generation: g,
                leader: format!("w{leader}"),
                workers: ws.into_iter().map(|w| format!("w{w}")).collect(),
            }),
            status: status.map(|(state, g, epoch)| StatusView { state, generation: g, epoch }),
        })
    }

    fn any_input() -> impl Strategy<Value = Input> {
        prop_oneof![
            Just(Input::Tick),
            (0u64..6, any::<bool>(), proptest::option::of(any::<bool>())).prop_map(|(epoch, ok, retry)| Input::Ended {
                epoch,
                outcome: match retry {
                    _ if ok => Outcome::Finished { last_round: Some(epoch << 32) },
                    Some(r) => Outcome::Failed { message: "x".into(), retryable: r },
                    None => Outcome::Failed { message: "y".into(), retryable: false },
                },
            }),
            Just(Input::ShareFailed { why: "share".into() }),
            Just(Input::BrokerDown { why: "down".into() }),
        ]
    }

    proptest! {
        /// Whatever the leader knows and whatever happens: a reboot always
        /// goes to an epoch above every epoch the topology had; a topology
        /// asked to stop is never rebooted; a failed generation is left
        /// alone by ticks; a world whose negotiator or workers are gone never
        /// stays as it is; and a fatal failure always ends with the world
        /// deleted and the failure recorded.
        #[test]
        fn leader_decisions_are_safe(
            view in any_view(),
            alive_mask in proptest::collection::vec(any::<bool>(), 4),
            inputs in proptest::collection::vec((any_input(), 0u64..3000), 1..8),
        ) {
            let alive: Vec<String> = (0..4).filter(|i| alive_mask[*i]).map(|i| format!("w{i}")).collect();
            let mut l = Leader::new("w0");
            let mut now = Instant::now();
            for (input, dt) in inputs {
                now += Duration::from_millis(dt);
                let actions = l.decide("t", &view, &alive, input.clone(), now);
                let highest = view.world.as_ref().map_or(0, |w| w.epoch).max(view.status.map_or(0, |s| s.epoch));
                for a in &actions {
                    if let Action::Reboot { epoch, .. } = a {
                        prop_assert!(*epoch > highest);
                        prop_assert!(!view.stopped, "a stopped topology was rebooted");
                    }
                }
                let failed_here = view.status.is_some_and(|s| s.state == State::Failed && s.generation == view.generation);
                if input == Input::Tick {
                    if failed_here {
                        prop_assert!(actions.is_empty());
                    } else if let Some(w) = &view.world {
                        let broken = w.leader != "w0" || w.workers.iter().any(|wk| !alive.contains(wk));
                        if broken {
                            let acts = actions.iter().any(|a| matches!(a, Action::Reboot { .. } | Action::DeleteWorld));
                            prop_assert!(acts, "a broken world stayed: {:?}", actions);
                        }
                    }
                }
                if let Input::Ended { epoch, outcome: Outcome::Failed { retryable: false, .. } } = &input {
                    if view.world.as_ref().is_some_and(|w| w.epoch == *epoch) {
                        prop_assert!(actions.contains(&Action::DeleteWorld));
                        let failed = actions.iter().any(|a| matches!(a, Action::SetStatus { state: State::Failed, .. }));
                        prop_assert!(failed, "a fatal failure did not fail the topology: {:?}", actions);
                    }
                }
            }
        }
    }
}
