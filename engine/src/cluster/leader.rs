//! The leader's shell: reads what ZooKeeper holds about a topology, asks
//! the pure [`Leader`] what to do, and does it (placing instances and
//! publishing a new epoch, writing the status, deleting the world, draining
//! its own negotiator's run).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use super::probe::{self, Counts, Prober};
use super::state::{json, Complete, Paths, ShareFault, Spec, State, Status, WorkerInfo, World};
use super::zk::Zk;
use crate::channel::Shutdown;
use crate::core::leader::{Action, Input, Leader, Outcome, StatusView, View, WorldView};
use crate::core::negotiator::show_round;
use crate::core::plan::Plan;
use crate::error::classify;
use crate::net::Endpoint;
use crate::runtime::Summary;
use crate::topology::Topology;

/// How often the leader asks the broker whether a running topology's topics
/// gained partitions (new ones are read after the next reboot).
const RECHECK: Duration = Duration::from_secs(15);
/// How old a probe may be for a reboot to place a world by it.
const FRESH: Duration = Duration::from_secs(10);

/// What the leader works with on one look at the cluster.
pub(super) struct LeaderCtx<'a> {
    pub(super) zk: &'a Zk,
    pub(super) me: &'a str,
    pub(super) addr: &'a str,
    /// The live workers, lowest registration (the leader) first.
    pub(super) workers: &'a [String],
}

/// What ZooKeeper holds about one topology.
struct Known {
    spec: Spec,
    world: Option<World>,
    status: Option<Status>,
    complete: Option<Complete>,
}

impl Known {
    fn read(zk: &Zk, name: &str) -> Result<Option<Known>> {
        let Some((spec, _)) = zk.get_json::<Spec>(&Paths::topology(name))? else { return Ok(None) };
        let world = zk.get_json::<World>(&Paths::world(name))?.map(|w| w.0);
        let status = zk.get_json::<Status>(&Paths::status(name))?.map(|s| s.0);
        let complete = zk.get_json::<Complete>(&Paths::complete(name))?.map(|c| c.0);
        Ok(Some(Known { spec, world, status, complete }))
    }

    fn view(&self, grew: bool) -> View {
        View {
            generation: self.spec.generation,
            stopped: self.spec.stopped,
            world: self.world.as_ref().map(|w| WorldView {
                epoch: w.epoch,
                generation: w.generation,
                leader: w.leader.clone(),
                workers: w.placement.iter().map(|(_, wk, _)| wk.clone()).collect(),
            }),
            status: self.status.as_ref().map(|s| StatusView {
                state: s.state,
                generation: s.generation,
                epoch: s.epoch,
            }),
            complete_round: self.complete.as_ref().map(|c| c.round),
            complete_previous: self.complete.as_ref().and_then(|c| c.previous),
            partitions_grew: grew,
        }
    }
}

/// The leader's shell, kept between looks while this worker leads.
pub(super) struct Leading {
    core: Leader,
    prober: Prober,
}

impl Leading {
    /// `wake`: called when a probe of the broker finishes.
    pub(super) fn new(me: &str, wake: probe::Wake) -> Leading {
        Leading { core: Leader::new(me), prober: Prober::new(wake) }
    }

    /// Whether the broker has more partitions than the running world reads;
    /// asks it again (off this thread) every [`RECHECK`].
    fn partitions_grew(&self, name: &str, known: &Known) -> bool {
        let Some(w) = &known.world else { return false };
        let Ok(t) = Topology::from_source(&known.spec.source, &known.spec.file, &known.spec.overrides) else {
            return false;
        };
        if !probe::reads_kafka(&t) {
            return false;
        }
        let generation = known.spec.generation;
        match self.prober.latest(name, generation, RECHECK) {
            Some(Ok(counts)) => counts.iter().any(|(s, n)| w.kafka_partitions.get(s).is_some_and(|had| n > had)),
            _ => {
                self.prober.request(name, generation, t);
                false
            }
        }
    }

    /// The periodic look at topology `name`; `drain` is the shutdown of the
    /// negotiator's run when it runs here. Faults the workers reported come first.
    pub(super) fn tick(&mut self, cx: &LeaderCtx, name: &str, drain: Option<&Shutdown>) -> Result<()> {
        for worker in cx.zk.children(&Paths::faults(name))? {
            let path = Paths::fault(name, &worker);
            if let Some((f, _)) = cx.zk.get_json::<ShareFault>(&path)? {
                crate::observe::logs::error(format_args!(
                    "hailstorm leader {}: worker {worker} cannot start its share of `{name}`: {}",
                    cx.me, f.why
                ));
                let input = match f.damaged_round {
                    Some(round) => Input::RoundDamaged { round, why: f.why },
                    None => Input::ShareFailed { epoch: f.epoch, worker, why: f.why, retryable: f.retryable },
                };
                self.decide(cx, name, input, None)?;
            }
            cx.zk.delete(&path)?;
        }
        self.decide(cx, name, Input::Tick, drain)
    }

    /// The negotiator's run of `epoch` (on this worker) ended.
    pub(super) fn ended(&mut self, cx: &LeaderCtx, name: &str, epoch: u64, result: Result<Summary>) -> Result<()> {
        let outcome = match result {
            Ok(s) => Outcome::Finished { last_round: s.last_round },
            Err(e) => {
                let retryable = classify(&e).retryable;
                if !retryable {
                    crate::observe::logs::error(format_args!("hailstorm leader {}: `{name}` failed: {e:#}", cx.me));
                }
                let lost = crate::net::peer_lost(&e).map(|p| p.worker.clone());
                Outcome::Failed { message: format!("{e:#}"), retryable, lost }
            }
        };
        self.decide(cx, name, Input::Ended { epoch, outcome }, None)
    }

    fn decide(&mut self, cx: &LeaderCtx, name: &str, input: Input, drain: Option<&Shutdown>) -> Result<()> {
        let Some(known) = Known::read(cx.zk, name)? else { return Ok(()) };
        let view = known.view(self.partitions_grew(name, &known));
        let actions = self.core.decide(name, &view, cx.workers, input, Instant::now());
        for a in actions {
            self.act(cx, name, &known, a, drain)?;
        }
        Ok(())
    }

    fn act(&mut self, cx: &LeaderCtx, name: &str, known: &Known, a: Action, drain: Option<&Shutdown>) -> Result<()> {
        let generation = known.spec.generation;
        match a {
            Action::Reboot { epoch, why, avoid, restore } => {
                let Some(kafka) = self.counts(cx, name, known, &why)? else { return Ok(()) };
                crate::observe::logs::info(format_args!("hailstorm leader {}: rebooting `{name}`: {why}", cx.me));
                self.reboot(cx, name, known, (epoch, restore, kafka), &avoid)
            }
            Action::SetStatus { state, epoch, message } => {
                cx.zk.put(&Paths::status(name), &json(&Status::new(state, generation, epoch, &message))?)
            }
            Action::DeleteWorld => cx.zk.delete(&Paths::world(name)),
            Action::Drain => {
                if let Some(d) = drain {
                    d.drain();
                }
                Ok(())
            }
        }
    }

    /// The partition counts a reboot places by: the ones `deploy` found for
    /// the first world of a generation (if it found them within [`FRESH`]),
    /// else a recent probe's; None
    /// when it must wait for one (it is asked for, and the reboot deferred)
    /// or the broker is down (the core is told).
    fn counts(&mut self, cx: &LeaderCtx, name: &str, known: &Known, why: &str) -> Result<Option<Counts>> {
        let spec = &known.spec;
        let t = Topology::from_source(&spec.source, &spec.file, &spec.overrides).map_err(|e| anyhow!("{e}"))?;
        if !probe::reads_kafka(&t) {
            return Ok(Some(Counts::new()));
        }
        // The first world of a generation: deploy has just asked the broker.
        let placed = known.world.as_ref().is_some_and(|w| w.generation == spec.generation);
        let age = Duration::from_millis(crate::store::now_ms().abs_diff(spec.partitions_at_ms));
        if !placed && age <= FRESH && probe::covers_kafka_spouts(&t, &spec.partitions) {
            return Ok(Some(spec.partitions.clone()));
        }
        match self.prober.latest(name, spec.generation, FRESH) {
            Some(Ok(k)) => Ok(Some(k)),
            Some(Err(e)) => {
                self.prober.request(name, spec.generation, t);
                let input =
                    if e.retryable { Input::BrokerDown { why: e.why } } else { Input::BrokerRefused { why: e.why } };
                self.decide(cx, name, input, None)?;
                Ok(None)
            }
            None => {
                self.prober.request(name, spec.generation, t);
                self.core.defer(name, why.to_string(), Instant::now());
                Ok(None)
            }
        }
    }

    /// Places every instance on the live workers but `avoid` and publishes
    /// `epoch`, starting from complete round `restore`, reading `kafka`'s partitions.
    fn reboot(
        &mut self,
        cx: &LeaderCtx,
        name: &str,
        known: &Known,
        (epoch, restore, kafka): (u64, Option<u64>, Counts),
        avoid: &[String],
    ) -> Result<()> {
        let spec = &known.spec;
        let t = Topology::from_source(&spec.source, &spec.file, &spec.overrides).map_err(|e| anyhow!("{e}"))?;
        let plan = Plan::with_kafka(&t, &kafka);
        let mut endpoints: Vec<Endpoint> = (0..plan.spout_instances()).map(Endpoint::Spout).collect();
        endpoints.extend((0..plan.bolt_instances()).map(Endpoint::Bolt));
        endpoints.extend((0..t.sinks.len()).map(Endpoint::Sink));
        let placement = place(cx, &endpoints, known.world.as_ref(), avoid)?;
        let used: BTreeSet<&String> = placement.iter().map(|(_, wk, _)| wk).collect();
        let msg = format!("epoch {epoch}: {} instances on {} workers", endpoints.len(), used.len());
        let from = restore.map_or_else(|| "none (fresh start)".into(), show_round);
        let mut placement = placement;
        placement.push((Endpoint::Negotiator, cx.me.to_string(), cx.addr.to_string()));
        let world = World {
            epoch,
            generation: spec.generation,
            leader: cx.me.to_string(),
            placement,
            restore,
            kafka_partitions: kafka,
        };
        cx.zk.fenced_put(&Paths::worker(cx.me), None, &Paths::world(name), &json(&world)?)?;
        let msg = format!("{msg}, from round {from}");
        crate::observe::logs::info(format_args!("hailstorm leader {}: `{name}` {msg}", cx.me));
        let status = Status::new(State::Running, spec.generation, epoch, &msg);
        cx.zk.put(&Paths::status(name), &json(&status)?)
    }
}

/// Every endpoint with the worker it runs on and that worker's address:
/// balanced over the live workers but `avoid`, sticky to the previous world.
fn place(
    cx: &LeaderCtx,
    endpoints: &[Endpoint],
    prev: Option<&World>,
    avoid: &[String],
) -> Result<Vec<(Endpoint, String, String)>> {
    let key = |e: &Endpoint| format!("{e:?}");
    let previous: crate::core::assign::Assignment =
        prev.map(|w| w.placement.iter().map(|(e, wk, _)| (key(e), wk.clone())).collect()).unwrap_or_default();
    let names: Vec<String> = endpoints.iter().map(key).collect();
    let usable: Vec<String> = cx.workers.iter().filter(|w| !avoid.contains(w)).cloned().collect();
    let assignment = crate::core::assign::assign(&names, &usable, &previous)
        .ok_or_else(|| anyhow!("no live worker to run the topology"))?;
    let mut addrs = BTreeMap::new();
    for wk in cx.workers {
        if let Some((info, _)) = cx.zk.get_json::<WorkerInfo>(&Paths::worker(wk))? {
            addrs.insert(wk.clone(), info.addr);
        }
    }
    let mut placement = Vec::new();
    for e in endpoints {
        let wk = assignment.get(&key(e)).ok_or_else(|| anyhow!("internal: {e} was not placed"))?;
        let addr = addrs.get(wk).ok_or_else(|| anyhow!("worker {wk} vanished"))?;
        placement.push((*e, wk.clone(), addr.clone()));
    }
    Ok(placement)
}
