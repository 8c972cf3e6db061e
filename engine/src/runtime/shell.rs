//! The negotiator's shell: feeds the pure [`Negotiator`] the events the
//! instances report and turns its actions into messages and store writes.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{Receiver, Sender};

use super::channels::Channels;
use super::progress::{Progress, Summary};
use super::recover::partition_sources;
use super::Run;
use crate::channel::{send, Inbox, Polled, Report, Shutdown, ToSink, ToSpout, Undelivered};
use crate::core::bolt::Round;
use crate::core::negotiator::{Action, Event, Negotiator, Shape, Waiting};
use crate::store::{CommitRecord, FileRef, FileStore};

/// How a process may write to shared storage and how a complete round
/// becomes durable. Embedded: the commit record in the store is the truth.
/// Distributed: the round is recorded in ZooKeeper too, and a process that
/// lost its lease must not write at all.
pub trait Coordinator: Send + Sync {
    /// `Err` when this process may no longer write snapshots or sink output.
    fn check_fence(&self) -> Result<()>;
    /// Makes a complete round durable.
    fn record_complete(&self, store: &FileStore, record: &CommitRecord) -> Result<()>;
    /// Sink `sink` cannot write and retries (`why`), or writes again
    /// (`None`): for `status` (best effort).
    fn sink_waits(&self, _sink: &str, _why: Option<&str>) {}
}

/// The embedded coordinator: one process, the store's commit record decides.
pub struct LocalCoordinator;

impl Coordinator for LocalCoordinator {
    fn check_fence(&self) -> Result<()> {
        Ok(())
    }
    fn record_complete(&self, store: &FileStore, record: &CommitRecord) -> Result<()> {
        store.write_commit(record).context("cannot record a complete snapshot")
    }
}

/// How often the LWM gauges are brought up to date.
pub(super) const PUBLISH: Duration = Duration::from_millis(500);

struct Shell<'a> {
    run: &'a Run<'a>,
    spouts: &'a [Sender<ToSpout>],
    /// Each bolt instance's announcements.
    announce: &'a [Sender<Round>],
    sinks: &'a [Sender<ToSink>],
    /// Complete rounds for the compactor.
    compactor: &'a Sender<CommitRecord>,
    /// Per sink, the newest commit it has not taken yet (its inbox was full).
    sink_backlog: RefCell<Vec<Option<ToSink>>>,
    /// When each round still open was gated.
    gated: RefCell<BTreeMap<u64, Instant>>,
    /// The sinks that hold the spouts (backpressure), while they do.
    holding: RefCell<Vec<usize>>,
}

/// Runs the negotiator on this thread until the run is over (bounded input,
/// or a drain) or something fails.
pub(super) fn negotiate(
    run: &Run,
    ch: &Channels,
    rx: Receiver<Report>,
    compactor: &Sender<CommitRecord>,
) -> Result<Summary> {
    let (t, plan, shutdown) = (&run.p.topology, &run.p.plan, run.shutdown());
    let shape = Shape { spouts: plan.spout_instances(), bolts: plan.bolt_instances(), sinks: t.sinks.len() };
    let bounded_input = !run.opts.follow && plan.partitions.iter().all(|p| p.kafka.is_none());
    let last_complete = run.start.restore.as_ref().map(|c| (c.round, plan.clock_from_names(&c.clock)));
    let mut neg = Negotiator::new(shape, t.interval, bounded_input, last_complete, run.start.next_round)
        .with_pending_bounds(t.sinks.iter().map(|s| s.max_pending_rounds).collect());
    if run.net.is_some() {
        // In the cluster a round can wait forever on a cut-off worker.
        neg = neg.with_round_timeout(t.round_timeout());
    }
    let backlog = RefCell::new((0..ch.sinks.len()).map(|_| None).collect());
    let shell = Shell {
        run,
        spouts: &ch.spouts,
        announce: &ch.bolt_control,
        sinks: &ch.sinks,
        compactor,
        sink_backlog: backlog,
        gated: RefCell::new(BTreeMap::new()),
        holding: RefCell::new(Vec::new()),
    };
    let inbox = Inbox::new(rx, shutdown.clone());
    let mut progress = Progress::new(run.opts.progress, run.started);
    let (mut rounds, mut draining, mut published) = (0u64, false, Instant::now());
    loop {
        if !draining && shutdown.is_draining() {
            draining = true;
            shell.drain(&mut neg);
        }
        let event = match inbox.poll() {
            Polled::Msg(Report::Event(e)) => Some(e),
            Polled::Msg(Report::Failed(e)) => return Err(e),
            Polled::Idle => None,
            Polled::Closed if shutdown.is_aborted() => bail!("the run was stopped from outside"),
            Polled::Closed => bail!("every instance stopped unexpectedly"),
        };
        let mut actions = event.map(|e| neg.handle(e)).unwrap_or_default();
        actions.extend(neg.handle(Event::Tick(std::time::Instant::now())));
        for a in actions {
            rounds += u64::from(matches!(a, Action::Complete { .. }));
            shell.act(a)?;
        }
        shell.offer_sinks()?;
        if neg.is_finished() {
            return Ok(run.stats.summary(run.started, plan, rounds, neg.last_complete()));
        }
        progress.tick(&run.stats, plan, neg.last_complete());
        if published.elapsed() >= PUBLISH {
            run.stats.publish(&run.opts.observer.metrics, &t.name, plan);
            published = Instant::now();
        }
    }
}

impl Drop for Shell<'_> {
    /// A run that ends while sinks hold its spouts leaves no gauge behind.
    fn drop(&mut self) {
        let t = &self.run.p.topology;
        for s in self.holding.borrow().iter() {
            let name = t.sinks.get(*s).map_or("?", |s| s.name.as_str());
            self.run.opts.observer.sink_holds(&t.name, name, false);
        }
    }
}

impl Shell<'_> {
    fn shutdown(&self) -> &Shutdown {
        self.run.shutdown()
    }

    /// A graceful stop: every spout reads no more, and the run becomes bounded.
    fn drain(&self, neg: &mut Negotiator) {
        if self.run.net.is_none() {
            crate::observe::logs::info(format_args!(
                "hailstorm: stopping: reading no more input, taking a final snapshot (a second Ctrl-C stops at once)"
            ));
        }
        for tx in self.spouts {
            let _ = send(tx, ToSpout::Drain, self.shutdown());
        }
        // Draining only changes the negotiator's mind; it asks for nothing itself.
        let _ = neg.handle(Event::Drain);
    }

    /// Sends one message to every endpoint of a kind.
    fn to_all<T>(&self, txs: &[Sender<T>], msg: impl Fn() -> T) -> Result<()> {
        for tx in txs {
            send(tx, msg(), self.shutdown())
                .map_err(|Undelivered| anyhow!("an instance stopped while the negotiator was talking to it"))?;
        }
        Ok(())
    }

    fn act(&self, a: Action) -> Result<()> {
        match a {
            Action::Gate { round } => {
                self.gated.borrow_mut().insert(round, Instant::now());
                self.to_all(self.spouts, || ToSpout::Gate(round))
            }
            Action::Announce { round, clock } => {
                self.to_all(self.announce, || Round { id: round, clock: clock.clone() })
            }
            Action::Ungate { .. } => {
                self.hold(Vec::new());
                self.to_all(self.spouts, || ToSpout::Ungate)
            }
            Action::Hold { sinks, .. } => {
                self.hold(sinks);
                Ok(())
            }
            Action::Complete { round, clock, crcs, last } => {
                let record = self.complete(round, &clock, crcs)?;
                self.observe_complete(round);
                let _ = self.compactor.send(record);
                // A busy sink takes the newest round later (it would merge them anyway).
                for slot in self.sink_backlog.borrow_mut().iter_mut() {
                    let last = last || matches!(slot, Some(ToSink::Commit { last: true, .. }));
                    *slot = Some(ToSink::Commit { round, clock: clock.clone(), last });
                }
                self.offer_sinks()
            }
            Action::Collect { keep, below } => {
                self.run.coord.check_fence()?;
                Ok(self.run.store.collect(&keep, below)?)
            }
            Action::Finish => Ok(()),
            Action::Overdue { round, waiting } => Err(self.overdue(round, &waiting)),
        }
    }

    /// The spouts stay gated for `sinks` (backpressure), or go on (none):
    /// the log, the metrics and the web view say so.
    fn hold(&self, sinks: Vec<usize>) {
        let t = &self.run.p.topology;
        let name = |s: usize| t.sinks.get(s).map_or("?", |s| s.name.as_str());
        let mut holding = self.holding.borrow_mut();
        for s in holding.iter().filter(|s| !sinks.contains(s)) {
            tracing::info!("sink `{}` caught up: the spouts read again", name(*s));
            self.run.opts.observer.sink_holds(&t.name, name(*s), false);
        }
        for s in sinks.iter().filter(|s| !holding.contains(s)) {
            let most = t.sinks.get(*s).and_then(|s| s.max_pending_rounds).unwrap_or(0);
            tracing::warn!(
                "sink `{}` has {most} complete rounds it has not written (sinks.{}.max_pending_rounds): the spouts \
                 wait for it (backpressure)",
                name(*s),
                name(*s)
            );
            self.run.opts.observer.sink_holds(&t.name, name(*s), true);
        }
        *holding = sinks;
    }

    /// Tells the observer a round is complete, with the time since its gate.
    fn observe_complete(&self, round: u64) {
        let mut gated = self.gated.borrow_mut();
        let took = gated.get(&round).map_or(Duration::ZERO, Instant::elapsed);
        gated.retain(|r, _| *r > round);
        self.run.opts.observer.round_complete(&self.run.p.topology.name, round, took);
        if crate::observe::logs::json() {
            tracing::info!(round, took_ms = took.as_millis() as u64, "round complete");
        }
    }

    /// Hands each sink its newest complete round, if its inbox has room;
    /// never waits for a busy sink.
    fn offer_sinks(&self) -> Result<()> {
        for (slot, tx) in self.sink_backlog.borrow_mut().iter_mut().zip(self.sinks) {
            let Some(msg) = slot.take() else { continue };
            match tx.try_send(msg) {
                Ok(()) => {}
                Err(crossbeam_channel::TrySendError::Full(msg)) => *slot = Some(msg),
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                    bail!("a sink stopped while the negotiator was talking to it")
                }
            }
        }
        Ok(())
    }

    /// A round that did not complete in time: the run ends (and the cluster's
    /// leader reboots the world), naming what the round waited for.
    fn overdue(&self, round: u64, waiting: &[Waiting]) -> anyhow::Error {
        let plan = &self.run.p.plan;
        let t = &self.run.p.topology;
        let bolt = |n: usize| match plan.bolt_of(n) {
            Some((b, i)) => format!("{}/{i}", t.bolts.get(b).map_or("?", |b| b.name.as_str())),
            None => format!("bolt instance {n}"),
        };
        let what: Vec<String> = waiting
            .iter()
            .map(|w| match *w {
                Waiting::Position(p) => {
                    format!("the position of {}", plan.partitions.get(p).map_or("?", |p| p.name.as_str()))
                }
                Waiting::Ack(n) => format!("{} to take the announcement", bolt(n)),
                Waiting::Save(n) => format!("{} to save", bolt(n)),
            })
            .collect();
        anyhow!(
            "round {} did not complete within {:?} (snapshot.round_timeout), waiting for {}: an instance may be cut off",
            crate::core::negotiator::show_round(round),
            t.round_timeout(),
            what.join(", ")
        )
    }

    /// Writes the commit record of a round every instance has saved.
    fn complete(&self, round: u64, clock: &crate::core::clock::Clock, crcs: Vec<u32>) -> Result<CommitRecord> {
        let (p, plan) = (self.run.p, &self.run.p.plan);
        let t = &p.topology;
        let mut files = Vec::new();
        for (n, crc) in crcs.into_iter().enumerate() {
            let (b, i) = plan.bolt_of(n).ok_or_else(|| anyhow!("internal: no bolt instance {n}"))?;
            let processor = t.bolts.get(b).map(|b| b.name.clone()).unwrap_or_default();
            files.push(FileRef { processor, instance: i, crc });
        }
        let record = CommitRecord {
            topology: t.name.clone(),
            round,
            clock: plan.clock_names(clock),
            files,
            modules: p.processor_modules().map(|(name, m)| (name.clone(), m.hash.clone())).collect(),
            parallelism: t.bolts.iter().map(|b| (b.name.clone(), b.parallelism)).collect(),
            sources: partition_sources(plan),
            created_unix_ms: crate::store::now_ms(),
        };
        self.run.coord.record_complete(self.run.store, &record)?;
        tracing::debug!("snapshot #{round} complete at {}", plan.show_clock(clock));
        Ok(record)
    }
}
