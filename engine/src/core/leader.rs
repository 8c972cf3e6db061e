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
/// rebooted in a tight loop. It doubles with each failure in a row, up to
/// [`MAX_REBOOT_DELAY`].
pub const REBOOT_DELAY: Duration = Duration::from_secs(1);
pub const MAX_REBOOT_DELAY: Duration = Duration::from_secs(30);
/// How soon a deferred reboot is decided again (the probe it waits for
/// wakes the leader when it is done).
pub const DEFER: Duration = Duration::from_millis(20);

/// Failures in a row (with no round completing between them) after which
/// the leader gives up and marks the topology failed.
pub const MAX_ATTEMPTS: u32 = 6;

/// How long a worker whose connection was lost is placed around while it
/// stays registered (a live worker behind a broken link comes back after).
pub const SUSPECT_FOR: Duration = Duration::from_secs(30);

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
    /// The last complete round ZooKeeper records (its epoch is in the high half).
    pub complete_round: Option<u64>,
    /// The complete round before it, which the store also keeps.
    pub complete_previous: Option<u64>,
    /// The broker has more partitions than the world reads.
    pub partitions_grew: bool,
}

/// How the negotiator's run of an epoch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It drained (stop or hot swap) and its final round is complete.
    Finished { last_round: Option<u64> },
    Failed {
        message: String,
        retryable: bool,
        /// The run failed because a connection to this worker was lost.
        lost: Option<String>,
    },
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The leader's periodic look.
    Tick,
    /// The negotiator's run of `epoch` ended.
    Ended { epoch: u64, outcome: Outcome },
    /// `worker` could not start its share of `epoch` (it could not load the
    /// modules, open the store, ...). Retryable: elsewhere, it may work.
    ShareFailed { epoch: u64, worker: String, why: String, retryable: bool },
    /// A reboot could not place the world: the broker cannot be reached.
    BrokerDown { why: String },
    /// A reboot could not place the world: the broker refuses the
    /// topology's credentials or certificates, which no retry fixes.
    BrokerRefused { why: String },
    /// A worker found complete round `round` damaged in the store.
    RoundDamaged { round: u64, why: String },
}

/// What to do, in order (a status is written before the world is deleted, so
/// the highest epoch stays visible at every moment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Place every instance on the live workers but `avoid` (workers that
    /// could not start their share) and publish epoch `epoch`, starting from
    /// complete round `restore` (`None`: from the beginning).
    Reboot {
        epoch: u64,
        why: String,
        avoid: Vec<String>,
        restore: Option<u64>,
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

/// A topology's failures in a row, as the leader remembers them.
#[derive(Debug, Clone, Default)]
struct Trouble {
    /// The generation they happened in (a new deploy starts afresh).
    generation: u64,
    /// Retryable failures since a round last completed.
    attempts: u32,
    /// The complete round at the last failure.
    progress: Option<u64>,
    /// Workers that could not start their share, and why.
    avoid: BTreeMap<String, String>,
    /// Workers whose connections were lost, avoided until they leave or until when.
    suspects: BTreeMap<String, Instant>,
    /// Complete rounds found damaged, and why.
    damaged: BTreeMap<u64, String>,
}

/// The leader's memory between looks (everything else is in ZooKeeper).
#[derive(Debug, Clone)]
pub struct Leader {
    me: String,
    /// Topologies whose world must be rebooted: why, and not before when.
    pending: BTreeMap<String, (String, Instant)>,
    trouble: BTreeMap<String, Trouble>,
}

impl Leader {
    pub fn new(me: &str) -> Leader {
        Leader { me: me.to_string(), pending: BTreeMap::new(), trouble: BTreeMap::new() }
    }

    /// Decides what to do about topology `name`, given the live workers.
    pub fn decide(&mut self, name: &str, view: &View, alive: &[String], input: Input, now: Instant) -> Vec<Action> {
        self.remember(name, view, alive, now);
        let actions = match input {
            Input::Tick => self.tick(name, view, alive, now),
            Input::Ended { epoch, outcome } => self.ended(name, view, alive, (epoch, outcome), now),
            Input::ShareFailed { epoch, worker, why, retryable } => {
                self.share_failed(name, view, alive, (epoch, worker, why, retryable), now)
            }
            Input::RoundDamaged { round, why } => self.round_damaged(name, view, round, why, now),
            Input::BrokerDown { why } => {
                self.pending.insert(name.to_string(), ("waiting for the broker".into(), now + REBOOT_DELAY));
                vec![Action::SetStatus { state: State::Waiting, epoch: highest_epoch(view), message: why }]
            }
            Input::BrokerRefused { why } => {
                self.pending.remove(name);
                vec![
                    Action::SetStatus { state: State::Failed, epoch: highest_epoch(view), message: why },
                    Action::DeleteWorld,
                ]
            }
        };
        if actions.iter().any(|a| matches!(a, Action::Reboot { .. })) {
            self.pending.remove(name);
        }
        actions
    }

    /// The shell could not carry out a reboot yet (it waits for a probe of
    /// the broker): ask again shortly, without counting a failure.
    pub fn defer(&mut self, name: &str, why: String, now: Instant) {
        self.pending.insert(name.to_string(), (why, now + DEFER));
    }

    /// Whether a reboot of `name` is waiting for its time.
    pub fn is_pending(&self, name: &str) -> bool {
        self.pending.contains_key(name)
    }

    /// Forgets failures of an older generation or from before a round
    /// completed, and workers that are gone.
    fn remember(&mut self, name: &str, view: &View, alive: &[String], now: Instant) {
        let t = self.trouble.entry(name.to_string()).or_default();
        if t.generation != view.generation {
            *t = Trouble { generation: view.generation, ..Trouble::default() };
        }
        if view.complete_round > t.progress {
            t.attempts = 0;
            t.progress = view.complete_round;
        }
        t.avoid.retain(|w, _| alive.contains(w));
        t.suspects.retain(|w, until| alive.contains(w) && *until > now);
    }

    /// A retryable failure: reboot later (the delay doubling with each
    /// failure in a row), or give up after [`MAX_ATTEMPTS`].
    fn failed(&mut self, name: &str, view: &View, why: String, now: Instant) -> Vec<Action> {
        let attempts = match self.count_failure(name, view, &why) {
            Ok(n) => n,
            Err(give_up) => return give_up,
        };
        let delay = REBOOT_DELAY.saturating_mul(1 << (attempts - 1).min(16)).min(MAX_REBOOT_DELAY);
        self.pending.insert(name.to_string(), (why, now + delay));
        Vec::new()
    }

    /// Counts one more failure in a row: how many so far, or (after
    /// [`MAX_ATTEMPTS`]) the actions that fail the topology.
    fn count_failure(&mut self, name: &str, view: &View, why: &str) -> Result<u32, Vec<Action>> {
        let t = self.trouble.entry(name.to_string()).or_default();
        t.attempts += 1;
        if t.attempts >= MAX_ATTEMPTS {
            let message = format!("gave up after {} failures with no round completing; the last: {why}", t.attempts);
            let epoch = highest_epoch(view);
            return Err(vec![Action::SetStatus { state: State::Failed, epoch, message }, Action::DeleteWorld]);
        }
        Ok(t.attempts)
    }

    /// A worker could not start its share: place around it from now on,
    /// unless no worker is left to place on.
    fn share_failed(
        &mut self,
        name: &str,
        view: &View,
        alive: &[String],
        (epoch, worker, why, retryable): (u64, String, String, bool),
        now: Instant,
    ) -> Vec<Action> {
        if view.world.as_ref().is_none_or(|w| w.epoch != epoch) {
            return Vec::new();
        }
        let message = format!("worker {worker} cannot start its share: {why}");
        let epoch = highest_epoch(view);
        if !retryable {
            return vec![Action::SetStatus { state: State::Failed, epoch, message }, Action::DeleteWorld];
        }
        let t = self.trouble.entry(name.to_string()).or_default();
        if alive.contains(&worker) {
            t.avoid.insert(worker, why);
        }
        if !alive.is_empty() && alive.iter().all(|w| t.avoid.contains_key(w)) {
            let each: Vec<String> = t.avoid.iter().map(|(w, why)| format!("{w}: {why}")).collect();
            let message = format!("no live worker can start its share ({})", each.join("; "));
            return vec![Action::SetStatus { state: State::Failed, epoch, message }, Action::DeleteWorld];
        }
        self.failed(name, view, message, now)
    }

    /// A complete round is damaged: start from the one before it (as an
    /// embedded run does), or fail when no intact one is left.
    fn round_damaged(&mut self, name: &str, view: &View, round: u64, why: String, now: Instant) -> Vec<Action> {
        let t = self.trouble.entry(name.to_string()).or_default();
        if t.damaged.insert(round, why.clone()).is_some() {
            return Vec::new(); // another worker said so first
        }
        self.failed(name, view, format!("complete round {} is damaged: {why}", show(round)), now)
    }

    /// The complete round a reboot starts from: the newest one not found
    /// damaged (`Some(None)`: a fresh start, as nothing completed yet).
    fn restore(&self, name: &str, view: &View) -> Option<Option<u64>> {
        let Some(newest) = view.complete_round else { return Some(None) };
        let damaged = self.trouble.get(name).map(|t| &t.damaged);
        let intact = |r: &u64| damaged.is_none_or(|d| !d.contains_key(r));
        [Some(newest), view.complete_previous].into_iter().flatten().find(intact).map(Some)
    }

    /// A reboot, or the end of the topology when no intact round is left.
    fn reboot(&self, name: &str, view: &View, alive: &[String], why: String) -> Vec<Action> {
        let t = self.trouble.get(name);
        let Some(restore) = self.restore(name, view) else {
            let each: Vec<String> = t
                .map(|t| t.damaged.iter().map(|(r, why)| format!("{}: {why}", show(*r))).collect())
                .unwrap_or_default();
            let message = format!("no intact complete round is left ({})", each.join("; "));
            let epoch = highest_epoch(view);
            return vec![Action::SetStatus { state: State::Failed, epoch, message }, Action::DeleteWorld];
        };
        vec![Action::Reboot { epoch: next_epoch(view), why, avoid: self.avoiding(name, alive), restore }]
    }

    /// The workers a reboot places around: those that could not start
    /// their share, and suspects, unless that would leave no live worker.
    fn avoiding(&self, name: &str, alive: &[String]) -> Vec<String> {
        let Some(t) = self.trouble.get(name) else { return Vec::new() };
        let with_suspects: Vec<String> = t.avoid.keys().chain(t.suspects.keys()).cloned().collect();
        if alive.iter().any(|w| !with_suspects.contains(w)) {
            let mut v = with_suspects;
            v.sort();
            v.dedup();
            return v;
        }
        // Everyone is avoided: place on all of them (a share that fails
        // again fails the topology) rather than on no one.
        if alive.iter().any(|w| !t.avoid.contains_key(w)) {
            return t.avoid.keys().cloned().collect();
        }
        Vec::new()
    }

    /// The run failed because the connection to `worker` was lost: reboot
    /// at once around it (it is likely dead; its session will tell).
    fn peer_lost(
        &mut self,
        name: &str,
        view: &View,
        alive: &[String],
        (message, worker): (String, String),
        now: Instant,
    ) -> Vec<Action> {
        let t = self.trouble.entry(name.to_string()).or_default();
        // A stopped topology takes no reboot; a worker that already left is the usual case.
        if view.stopped || worker == self.me || !alive.contains(&worker) {
            return self.failed(name, view, message, now);
        }
        t.suspects.insert(worker.clone(), now + SUSPECT_FOR);
        if let Err(give_up) = self.count_failure(name, view, &message) {
            return give_up;
        }
        let why = format!("lost the connection to worker {worker}: {message}");
        self.reboot(name, view, alive, why)
    }

    fn tick(&mut self, name: &str, view: &View, alive: &[String], now: Instant) -> Vec<Action> {
        if view.status.is_some_and(|s| s.state == State::Failed && s.generation == view.generation) {
            return Vec::new();
        }
        let due = self.pending.get(name).map(|(why, at)| (why.clone(), now >= *at));
        let Some(w) = &view.world else {
            if !view.stopped {
                return match due {
                    Some((_, false)) => Vec::new(),
                    Some((why, true)) => self.reboot(name, view, alive, why),
                    None => self.reboot(name, view, alive, "no world is running".into()),
                };
            }
            if view.status.is_none_or(|s| s.state != State::Stopped) {
                return vec![Action::SetStatus {
                    state: State::Stopped,
                    epoch: highest_epoch(view),
                    message: "stopped".into(),
                }];
            }
            return Vec::new();
        };
        let lost = w.workers.iter().find(|wk| !alive.contains(wk));
        let why = if w.leader != self.me {
            Some(format!("leader changed to {}", self.me))
        } else if let Some(wk) = lost {
            Some(format!("worker {wk} is gone"))
        } else {
            due.filter(|(_, now_due)| *now_due).map(|(why, _)| why)
        };
        match why {
            // Without its negotiator no final round can be taken: the last complete one stands.
            Some(_) if view.stopped => vec![
                Action::SetStatus { state: State::Stopped, epoch: highest_epoch(view), message: "stopped".into() },
                Action::DeleteWorld,
            ],
            Some(why) => self.reboot(name, view, alive, why),
            None if view.stopped || w.generation != view.generation || view.partitions_grew => vec![Action::Drain],
            None => Vec::new(),
        }
    }

    fn ended(
        &mut self,
        name: &str,
        view: &View,
        alive: &[String],
        (epoch, outcome): (u64, Outcome),
        now: Instant,
    ) -> Vec<Action> {
        if view.world.as_ref().is_none_or(|w| w.epoch != epoch) {
            return Vec::new();
        }
        let epoch = highest_epoch(view);
        match outcome {
            Outcome::Finished { last_round } => {
                let last = last_round.map_or_else(|| "none".into(), super::negotiator::show_round);
                if view.stopped {
                    let message = format!("final round {last}");
                    vec![Action::SetStatus { state: State::Stopped, epoch, message }, Action::DeleteWorld]
                } else {
                    let why = format!("drained at round {last}; starting generation {}", view.generation);
                    self.reboot(name, view, alive, why)
                }
            }
            Outcome::Failed { message, retryable: false, .. } => {
                vec![Action::SetStatus { state: State::Failed, epoch, message }, Action::DeleteWorld]
            }
            Outcome::Failed { message, retryable: true, lost: Some(w) } => {
                self.peer_lost(name, view, alive, (message, w), now)
            }
            Outcome::Failed { message, retryable: true, lost: None } => self.failed(name, view, message, now),
        }
    }
}

fn show(round: u64) -> String {
    super::negotiator::show_round(round)
}

/// The highest epoch the topology had, as far as the leader can see: of
/// its world, its status and its last complete round. Every status carries
/// at least this, so epochs (and the round ids built on them) only grow.
pub fn highest_epoch(view: &View) -> u64 {
    let world = view.world.as_ref().map_or(0, |w| w.epoch);
    let complete = view.complete_round.map_or(0, |r| r >> 32);
    world.max(view.status.map_or(0, |s| s.epoch)).max(complete)
}

/// The epoch a reboot publishes: above every epoch the topology had.
fn next_epoch(view: &View) -> u64 {
    highest_epoch(view) + 1
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
            complete_round: None,
            complete_previous: None,
            partitions_grew: false,
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
        assert_eq!(a, vec![Action::Reboot { epoch: 4, why: "worker b is gone".into(), avoid: vec![], restore: None }]);
    }

    #[test]
    fn a_retryable_failure_reboots_after_a_delay_and_a_fatal_one_fails_the_topology() {
        let mut l = Leader::new("a");
        let t0 = Instant::now();
        let v = view(Some((2, "a", &["a"])), Some((State::Running, 2)));
        let failed = |retryable| Input::Ended {
            epoch: 2,
            outcome: Outcome::Failed { message: "boom".into(), retryable, lost: None },
        };
        assert!(l.decide("t", &v, &alive(&["a"]), failed(true), t0).is_empty());
        assert!(l.is_pending("t"));
        assert!(l.decide("t", &v, &alive(&["a"]), Input::Tick, t0).is_empty());
        let a = l.decide("t", &v, &alive(&["a"]), Input::Tick, t0 + REBOOT_DELAY);
        assert_eq!(a, vec![Action::Reboot { epoch: 3, why: "boom".into(), avoid: vec![], restore: None }]);
        assert!(!l.is_pending("t"));
        let a = l.decide("t", &v, &alive(&["a"]), failed(false), t0);
        assert_eq!(
            a,
            vec![Action::SetStatus { state: State::Failed, epoch: 2, message: "boom".into() }, Action::DeleteWorld]
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
                Action::SetStatus { state: State::Stopped, epoch: 5, message: "final round 5.3".into() },
                Action::DeleteWorld,
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

    #[test]
    fn epochs_only_grow_even_without_a_world() {
        let mut l = Leader::new("a");
        let t0 = Instant::now();
        // A failed generation 0 at epoch 7, then a deploy of generation 1 while the broker is down.
        let mut v = view(None, Some((State::Failed, 7)));
        v.status = Some(StatusView { state: State::Failed, generation: 0, epoch: 7 });
        let a = l.decide("t", &v, &alive(&["a"]), Input::BrokerDown { why: "no broker".into() }, t0);
        assert_eq!(a, vec![Action::SetStatus { state: State::Waiting, epoch: 7, message: "no broker".into() }]);
        assert!(l.decide("t", &v, &alive(&["a"]), Input::Tick, t0).is_empty(), "waits for the delay");
        let a = l.decide("t", &v, &alive(&["a"]), Input::Tick, t0 + REBOOT_DELAY);
        assert!(matches!(&a[..], [Action::Reboot { epoch: 8, .. }]), "{a:?}");
        // A broker that refuses the topology's credentials fails it: no retry would help.
        let a = l.decide("t", &v, &alive(&["a"]), Input::BrokerRefused { why: "bad password".into() }, t0);
        let failed = Action::SetStatus { state: State::Failed, epoch: 7, message: "bad password".into() };
        assert_eq!(a, vec![failed, Action::DeleteWorld]);
        v.status = Some(StatusView { state: State::Failed, generation: 1, epoch: 7 });
        assert!(
            l.decide("t", &v, &alive(&["a"]), Input::Tick, t0 + REBOOT_DELAY).is_empty(),
            "no reboot after failing"
        );
        // A stopped topology with no world keeps its epoch too; so does a complete round's.
        let mut v = view(None, None);
        (v.stopped, v.complete_round) = (true, Some((9 << 32) + 4));
        let a = l.decide("t", &v, &alive(&["a"]), Input::Tick, t0);
        assert_eq!(a, vec![Action::SetStatus { state: State::Stopped, epoch: 9, message: "stopped".into() }]);
    }

    #[test]
    fn failures_in_a_row_back_off_then_fail_the_topology_unless_a_round_completes() {
        let mut l = Leader::new("a");
        let mut now = Instant::now();
        let mut v = view(Some((2, "a", &["a"])), Some((State::Running, 2)));
        let failed =
            Input::Ended { epoch: 2, outcome: Outcome::Failed { message: "net".into(), retryable: true, lost: None } };
        let mut delays = Vec::new();
        for i in 1..MAX_ATTEMPTS {
            assert!(l.decide("t", &v, &alive(&["a"]), failed.clone(), now).is_empty(), "attempt {i}");
            let start = now;
            while l.decide("t", &v, &alive(&["a"]), Input::Tick, now).is_empty() {
                now += Duration::from_millis(250);
            }
            delays.push((now - start).as_secs());
        }
        assert_eq!(delays, vec![1, 2, 4, 8, 16]);
        // A round completes: the count starts again.
        v.complete_round = Some((2 << 32) + 1);
        assert!(l.decide("t", &v, &alive(&["a"]), failed.clone(), now).is_empty());
        for _ in 1..MAX_ATTEMPTS - 1 {
            assert!(l.decide("t", &v, &alive(&["a"]), failed.clone(), now).is_empty());
        }
        let a = l.decide("t", &v, &alive(&["a"]), failed, now);
        assert!(
            matches!(&a[..], [Action::SetStatus { state: State::Failed, message, .. }, Action::DeleteWorld]
            if message.contains("gave up after 6 failures") && message.contains("net")),
            "{a:?}"
        );
    }

    #[test]
    fn a_worker_that_cannot_start_its_share_is_placed_around() {
        let mut l = Leader::new("a");
        let now = Instant::now();
        let v = view(Some((3, "a", &["a", "b", "c"])), Some((State::Running, 3)));
        let all = alive(&["a", "b", "c"]);
        let bad = |w: &str, epoch| Input::ShareFailed { epoch, worker: w.into(), why: "disk".into(), retryable: true };
        assert!(l.decide("t", &v, &all, bad("c", 2), now).is_empty(), "an older epoch's fault means nothing");
        assert!(!l.is_pending("t"));
        assert!(l.decide("t", &v, &all, bad("c", 3), now).is_empty());
        let a = l.decide("t", &v, &all, Input::Tick, now + REBOOT_DELAY);
        assert!(
            matches!(&a[..], [Action::Reboot { epoch: 4, avoid, why, .. }] if avoid == &["c"] && why.contains("disk")),
            "{a:?}"
        );
        // Every live worker failing: the topology fails, saying why for each.
        let _ = l.decide("t", &v, &all, bad("b", 3), now);
        let a = l.decide("t", &v, &all, bad("a", 3), now);
        assert!(
            matches!(&a[..], [Action::SetStatus { state: State::Failed, message, .. }, Action::DeleteWorld]
            if message.contains("b: disk") && message.contains("c: disk")),
            "{a:?}"
        );
        // A worker that left (and came back under a new name) is not avoided any more.
        let mut l = Leader::new("a");
        let _ = l.decide("t", &v, &all, bad("c", 3), now);
        let a = l.decide("t", &v, &alive(&["a", "b"]), Input::Tick, now + REBOOT_DELAY);
        assert!(matches!(&a[..], [Action::Reboot { avoid, .. }] if avoid.is_empty()), "{a:?}");
    }

    #[test]
    fn a_damaged_round_falls_back_to_the_previous_one_then_fails() {
        let mut l = Leader::new("a");
        let now = Instant::now();
        let mut v = view(Some((4, "a", &["a"])), Some((State::Running, 4)));
        (v.complete_round, v.complete_previous) = (Some((4 << 32) + 7), Some((4 << 32) + 6));
        let damaged = |r: u64| Input::RoundDamaged { round: (4 << 32) + r, why: "bad crc".into() };
        assert!(l.decide("t", &v, &alive(&["a"]), damaged(7), now).is_empty());
        let a = l.decide("t", &v, &alive(&["a"]), Input::Tick, now + REBOOT_DELAY);
        assert!(matches!(&a[..], [Action::Reboot { epoch: 5, restore: Some(r), .. }] if *r == (4 << 32) + 6), "{a:?}");
        assert!(l.decide("t", &v, &alive(&["a"]), damaged(7), now).is_empty(), "said twice: nothing new");
        let _ = l.decide("t", &v, &alive(&["a"]), damaged(6), now);
        let a = l.decide("t", &v, &alive(&["a"]), Input::Tick, now + REBOOT_DELAY * 4);
        assert!(
            matches!(&a[..], [Action::SetStatus { state: State::Failed, message, .. }, Action::DeleteWorld]
            if message.contains("no intact complete round") && message.contains("4.7: bad crc")),
            "{a:?}"
        );
    }

    #[test]
    fn a_lost_connection_reboots_at_once_around_the_worker_until_it_leaves_or_clears() {
        let mut l = Leader::new("a");
        let now = Instant::now();
        let v = view(Some((2, "a", &["a", "b", "c"])), Some((State::Running, 2)));
        let lost = |w: &str| Input::Ended {
            epoch: 2,
            outcome: Outcome::Failed { message: "connection lost".into(), retryable: true, lost: Some(w.into()) },
        };
        let all = alive(&["a", "b", "c"]);
        let a = l.decide("t", &v, &all, lost("b"), now);
        assert!(
            matches!(&a[..], [Action::Reboot { epoch: 3, avoid, why, .. }] if avoid == &["b"] && why.contains("worker b")),
            "no immediate reboot around b: {a:?}"
        );
        // While b stays registered, later reboots avoid it until SUSPECT_FOR has passed.
        let v3 = view(Some((3, "a", &["a", "c"])), Some((State::Running, 3)));
        let again = Input::Ended { epoch: 3, outcome: Outcome::Finished { last_round: None } };
        let a = l.decide("t", &v3, &all, again.clone(), now + Duration::from_secs(1));
        assert!(matches!(&a[..], [Action::Reboot { avoid, .. }] if avoid == &["b"]), "{a:?}");
        let a = l.decide("t", &v3, &all, again, now + SUSPECT_FOR + Duration::from_secs(1));
        assert!(matches!(&a[..], [Action::Reboot { avoid, .. }] if avoid.is_empty()), "{a:?}");
        // Losing the only other worker: nobody else is left, so it is not avoided.
        let mut l = Leader::new("a");
        let v = view(Some((2, "a", &["a", "b"])), Some((State::Running, 2)));
        let a = l.decide("t", &v, &alive(&["b"]), lost("b"), now);
        assert!(matches!(&a[..], [Action::Reboot { avoid, .. }] if avoid.is_empty()), "{a:?}");
        // A worker that already left: the usual delayed retry.
        let mut l = Leader::new("a");
        let v = view(Some((2, "a", &["a", "b"])), Some((State::Running, 2)));
        assert!(l.decide("t", &v, &alive(&["a"]), lost("b"), now).is_empty());
    }

    #[test]
    fn more_partitions_drain_the_world_for_a_reboot() {
        let mut l = Leader::new("a");
        let mut v = view(Some((5, "a", &["a"])), Some((State::Running, 5)));
        v.partitions_grew = true;
        assert_eq!(l.decide("t", &v, &alive(&["a"]), Input::Tick, Instant::now()), vec![Action::Drain]);
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
            complete_round: None,
            complete_previous: None,
            partitions_grew: false,
        })
    }

    fn any_input() -> impl Strategy<Value = Input> {
        prop_oneof![
            Just(Input::Tick),
            (0u64..6, any::<bool>(), proptest::option::of(any::<bool>()), proptest::option::of(0usize..4)).prop_map(
                |(epoch, ok, retry, lost)| Input::Ended {
                    epoch,
                    outcome: match retry {
                        _ if ok => Outcome::Finished { last_round: Some(epoch << 32) },
                        Some(r) =>
                            Outcome::Failed { message: "x".into(), retryable: r, lost: lost.map(|w| format!("w{w}")) },
                        None => Outcome::Failed { message: "y".into(), retryable: false, lost: None },
                    },
                }
            ),
            (0u64..6, 0usize..4, any::<bool>()).prop_map(|(epoch, w, retryable)| Input::ShareFailed {
                epoch,
                worker: format!("w{w}"),
                why: "share".into(),
                retryable
            }),
            Just(Input::BrokerDown { why: "down".into() }),
            Just(Input::BrokerRefused { why: "refused".into() }),
            (0u64..3).prop_map(|r| Input::RoundDamaged { round: (1 << 32) + r, why: "crc".into() }),
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

        /// Carrying the actions out on the view, as the shell does: the
        /// highest epoch never goes down, every reboot is above it, a
        /// reboot never places on a worker it avoids while others live, and
        /// failures with no round completing end in `Failed` within
        /// [`MAX_ATTEMPTS`] of them.
        #[test]
        fn epochs_only_grow_and_failing_topologies_stop_failing(
            start in any_view(),
            inputs in proptest::collection::vec((any_input(), 0u64..40_000), 1..40),
        ) {
            let alive: Vec<String> = (0..4).map(|i| format!("w{i}")).collect();
            let mut view = start;
            let mut l = Leader::new("w0");
            let mut now = Instant::now();
            view.complete_round = Some((1 << 32) + 2);
            view.complete_previous = Some((1 << 32) + 1);
            let mut highest = highest_epoch(&view);
            let mut failures = 0;
            let mut damaged = Vec::new();
            for (input, dt) in inputs {
                now += Duration::from_millis(dt);
                let input = match input {
                    // Outcomes and faults of the current world, mostly.
                    Input::Ended { outcome, .. } => Input::Ended { epoch: view.world.as_ref().map_or(0, |w| w.epoch), outcome },
                    Input::ShareFailed { worker, why, retryable, .. } =>
                        Input::ShareFailed { epoch: view.world.as_ref().map_or(0, |w| w.epoch), worker, why, retryable },
                    i => i,
                };
                if let Input::RoundDamaged { round, .. } = &input {
                    damaged.push(*round);
                }
                let world_here = view.world.is_some();
                if world_here && matches!(&input, Input::Ended { outcome: Outcome::Failed { retryable: true, .. }, .. }) {
                    failures += 1;
                }
                for a in l.decide("t", &view, &alive, input, now) {
                    match a {
                        Action::Reboot { epoch, avoid, restore, .. } => {
                            prop_assert!(epoch > highest, "reboot to {epoch}, highest {highest}");
                            prop_assert!(restore.is_some_and(|r| !damaged.contains(&r)), "restores {restore:?}");
                            prop_assert!(avoid.len() < alive.len());
                            let workers = alive.iter().filter(|w| !avoid.contains(w)).cloned().collect();
                            view.world = Some(WorldView { epoch, generation: view.generation, leader: "w0".into(), workers });
                            view.status = Some(StatusView { state: State::Running, generation: view.generation, epoch });
                        }
                        Action::SetStatus { state, epoch, .. } => {
                            prop_assert!(epoch >= highest, "status epoch {epoch} below {highest}");
                            if state == State::Failed {
                                failures = 0;
                            }
                            view.status = Some(StatusView { state, generation: view.generation, epoch });
                        }
                        Action::DeleteWorld => view.world = None,
                        Action::Drain => {}
                    }
                    prop_assert!(highest_epoch(&view) >= highest);
                    highest = highest_epoch(&view);
                }
                prop_assert!(failures < MAX_ATTEMPTS, "{failures} failures in a row and still running");
            }
        }
    }
}
