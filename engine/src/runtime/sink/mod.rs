//! A sink's thread: on every complete round, the changes of its input bolts
//! go to the WebAssembly sink, per bolt instance, in chunks.
//!
//! A sink starts where its output stands (`hailstorm_resume`): the first
//! round it gets carries every change since that round, or the whole state
//! when those changes are gone (or it holds nothing). Every later round
//! carries the changes since the previous one it took (a sink may decline
//! rounds other than the last, to space out costly work). When the sink reports a
//! round durable, the store records it, so a restarted sink is told.

mod make;
mod out;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use crossbeam_channel::Sender;
use hailstorm_abi::BatchWriter;

pub use make::check_connectors;
use out::{Out, Retry};

use super::channels::{no_such, Channels};
use super::shell::Coordinator;
use super::threads::Threads;
use super::{Run, CHUNK};
use crate::channel::{Inbox, Polled, Report, ToSink};
use crate::core::clock::Clock;
use crate::core::negotiator::Event;
use crate::observe::InstanceMeter;
use crate::store::{Chain, CommitRecord, FileStore, Merge, StoreError};
use crate::topology::Grouping;
use crate::wasm;

/// Starts every sink that runs here.
pub(super) fn start(run: &Run, ch: &mut Channels, threads: &mut Threads) -> Result<()> {
    let t = &run.p.topology;
    for (si, rx) in ch.sink_rx.iter_mut().enumerate() {
        let Some(rx) = rx.take() else { continue };
        let spec = t.sinks.get(si).ok_or_else(|| no_such("sink", si))?;
        let committed = run.store.read_sink_round(&spec.name)?;
        let mut init = wasm::init_doc(&spec.name, 0, 1, &t.dir, &spec.module.config);
        init["committed_round"] = serde_json::json!(committed.unwrap_or(0));
        let restored = run.start.restore.as_ref().map_or(0, |c| c.round);
        let mut out = make::output(run.p, si, &init, restored)?;
        let meter = run.opts.observer.metrics.instance(&t.name, &spec.name, 0);
        out.set_meter(meter.calls.clone());
        let mut inputs = Vec::new();
        for name in &spec.inputs {
            let b =
                t.bolts.iter().find(|x| x.name == *name).ok_or_else(|| anyhow!("sink input {name} is not a bolt"))?;
            // Every instance of a broadcast bolt holds the same state: one copy is enough.
            inputs.push((name.clone(), b.grouping == Grouping::Broadcast));
        }
        let task = SinkTask {
            number: si,
            name: spec.name.clone(),
            partition_names: run.p.plan.partitions.iter().map(|p| p.name.clone()).collect(),
            store: run.store.clone(),
            coord: run.coord.clone(),
            topology: t.name.clone(),
            observer: run.opts.observer.clone(),
            out,
            inputs,
            position: 0,
            recorded: committed.unwrap_or(0),
            report: ch.report.clone(),
            meter,
        };
        let inbox = Inbox::new(rx, run.shutdown().clone());
        threads.spawn_instance(&spec.name, 0, "sink", ch.report.clone(), move || task.run(inbox))?;
    }
    Ok(())
}

struct SinkTask {
    number: usize,
    name: String,
    partition_names: Vec<String>,
    store: FileStore,
    coord: Arc<dyn Coordinator>,
    topology: String,
    observer: Arc<crate::observe::Observer>,
    out: Out,
    /// Input bolts, and whether only instance 0 is sent (broadcast).
    inputs: Vec<(String, bool)>,
    /// The round whose state the sink holds (0: nothing).
    position: u64,
    /// The newest durable round the store records for the sink.
    recorded: u64,
    report: Sender<Report>,
    meter: InstanceMeter,
}

impl SinkTask {
    fn run(mut self, inbox: Inbox<ToSink>) -> Result<()> {
        let mut pause = Pause::new();
        while !self.resume(&inbox, &mut pause)? {}
        loop {
            let (mut round, mut clock, mut last) = match inbox.poll() {
                Polled::Msg(ToSink::Commit { round, clock, last }) => (round, clock, last),
                Polled::Idle => continue,
                Polled::Closed => return Ok(()),
            };
            loop {
                // A sink that falls behind takes the changes of several rounds at once.
                while let Some(ToSink::Commit { round: r, clock: c, last: l }) = inbox.try_next() {
                    (round, clock, last) = (r, c, last || l);
                }
                self.out.complete(round);
                if !last && self.store.read_commit(round)?.is_none() {
                    // Collected while the sink waited: a newer round (the newest is always kept) comes next.
                    break;
                }
                let started = Instant::now();
                match self.commit(round, &clock, last) {
                    Ok(durable) => {
                        self.meter.batch.observe(started.elapsed().as_secs_f64());
                        self.record(durable)?;
                        pause.reset(&self);
                        break;
                    }
                    Err(e) if !last && self.superseded(round, &e)? => {
                        // Only the newest rounds' chains are kept: a sink far behind may find an
                        // older one gone before it opened its files (nothing was begun). A newer
                        // round comes next.
                        tracing::warn!(
                            "sink `{}`: round {} was collected before it was read ({e:#}); it takes the next",
                            self.name,
                            crate::core::negotiator::show_round(round)
                        );
                        break;
                    }
                    Err(e) if e.is::<Retry>() => {
                        self.out.abort();
                        if !pause.wait(&self, &e, &inbox) {
                            return Ok(());
                        }
                        // Reopening settles a round whose commit may have landed.
                        while !self.resume(&inbox, &mut pause)? {}
                        if self.position >= round {
                            self.record(self.position)?;
                            break;
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Asks the output where it stands (a connector connects first); false
    /// after a failure a retry may fix (it paused meanwhile).
    fn resume(&mut self, inbox: &Inbox<ToSink>, pause: &mut Pause) -> Result<bool> {
        // A sink of an ended epoch must not reopen: that would fence off the current one.
        self.coord.check_fence()?;
        match self.out.resume() {
            Ok(p) => {
                self.position = p;
                Ok(true)
            }
            Err(e) if e.is::<Retry>() => {
                if !pause.wait(self, &e, inbox) {
                    bail!("stopped while sink `{}` waited: {e:#}", self.name);
                }
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `e`, met reading round `round`, means the round was collected
    /// while the sink waited and a newer complete round stands in its place
    /// (a missing file of the newest round is damage, and stays an error).
    fn superseded(&self, round: u64, e: &anyhow::Error) -> Result<bool> {
        if self.store.read_commit(round)?.is_none() {
            return Ok(true);
        }
        if !collected(e) {
            return Ok(false);
        }
        for r in self.store.rounds()?.into_iter().rev().take_while(|r| *r > round) {
            if self.store.read_commit(r)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Records a round the output holds durably.
    fn record(&mut self, durable: u64) -> Result<()> {
        if durable > self.recorded {
            self.coord.check_fence()?;
            self.store.write_sink_round(&self.name, durable)?;
            self.recorded = durable;
            let _ = self.report.send(Report::Event(Event::SinkCommitted { sink: self.number, round: durable }));
        }
        Ok(())
    }

    /// Gives the sink the changes from its position up to `round`; returns the
    /// newest round it now holds durably.
    fn commit(&mut self, round: u64, clock: &Clock, last: bool) -> Result<u64> {
        let commit = self
            .store
            .read_commit(round)?
            .ok_or_else(|| anyhow!("sink `{}`: complete round {round} has no commit record", self.name))?;
        let (since, parts) = self.open_changes(&commit)?;
        if since == 0 && self.position > 0 {
            tracing::info!(
                "sink `{}` fell behind: the changes since round {} are gone, so it gets the whole state of round {}",
                self.name,
                crate::core::negotiator::show_round(self.position),
                crate::core::negotiator::show_round(round)
            );
        }
        let named: Vec<(String, u64)> = self.partition_names.iter().cloned().zip(clock.0.iter().copied()).collect();
        self.coord.check_fence()?;
        if !self.out.begin(round, since, last, &named)? {
            if last {
                return Err(self.out.declined_last());
            }
            // Declined: the next round it takes carries these changes too.
            return Ok(self.recorded);
        }
        for ((bolt, instance), chain, mut merge) in parts {
            let mut chunk = BatchWriter::new();
            loop {
                chunk.clear();
                let more = merge.next_chunk(&mut chunk, CHUNK, &|_| true)?;
                if !chunk.is_empty() {
                    self.meter.records_in.inc_by(u64::from(chunk.count()));
                    self.coord.check_fence()?;
                    self.out.changes(&bolt, instance, chunk.as_bytes())?;
                }
                if !more {
                    break;
                }
            }
            check_checksums(&chain, &merge.checksums())?;
        }
        // A fenced sink makes no more calls, not even the steps of a rewrite
        // it began: each may publish output.
        self.coord.check_fence()?;
        let (mut durable, mut more) = self.out.end()?;
        while more {
            self.coord.check_fence()?;
            (durable, more) = self.out.step()?;
        }
        self.position = round;
        Ok(durable)
    }

    /// The changes for `commit` with their files open (so that collection
    /// deleting them meanwhile does no harm); the whole state when the
    /// changes since the sink's position are gone already.
    fn open_changes(&self, commit: &CommitRecord) -> Result<(u64, Vec<OpenPart>)> {
        let open = |parts: Vec<Part>| -> Result<Vec<OpenPart>> {
            parts.into_iter().map(|(id, chain)| Ok((id, chain.clone(), self.store.merge(&chain.files)?))).collect()
        };
        let (since, parts) = self.changes(commit)?;
        match open(parts) {
            Ok(m) => Ok((since, m)),
            Err(_) if since > 0 => {
                let (since, parts) = self.whole(commit)?;
                Ok((since, open(parts)?))
            }
            Err(e) => Err(e),
        }
    }

    /// What to send for `commit`: the changes since the sink's position (the
    /// round they build on, and per input instance its deltas), or the whole
    /// state (round 0 and the chains) when those cannot be had.
    fn changes(&self, commit: &CommitRecord) -> Result<(u64, Vec<Part>)> {
        if self.position > 0 {
            let mut parts = Vec::new();
            for (bolt, one) in &self.inputs {
                for i in instances(commit, bolt, *one) {
                    match self.store.changes_since(commit, bolt, i, self.position) {
                        Some(c) => parts.push(((bolt.clone(), i), c)),
                        None => return self.whole(commit),
                    }
                }
            }
            return Ok((self.position, parts));
        }
        self.whole(commit)
    }

    fn whole(&self, commit: &CommitRecord) -> Result<(u64, Vec<Part>)> {
        let mut parts = Vec::new();
        for (bolt, one) in &self.inputs {
            for i in instances(commit, bolt, *one) {
                parts.push(((bolt.clone(), i), self.store.chain(commit, bolt, i)?));
            }
        }
        Ok((0, parts))
    }
}

/// A file of the store was not there (collected, once a sink fell behind).
fn collected(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(c.downcast_ref::<StoreError>(), Some(StoreError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound)
    })
}

/// The sink read what the commit records vouch for, or nothing is published.
fn check_checksums(chain: &Chain, got: &[Option<u32>]) -> Result<()> {
    for ((file, want), got) in chain.files.iter().zip(&chain.expect).zip(got) {
        if want.is_some() && want != got {
            bail!(
                "{}: its checksum differs from its round's commit record: it changed after the round",
                file.display()
            );
        }
    }
    Ok(())
}

/// An input instance: (bolt, instance).
type InputInstance = (String, u32);

/// The files that give one input instance's changes.
type Part = (InputInstance, Chain);

/// A part with its files open.
type OpenPart = (InputInstance, Chain, Merge);

/// The instances of `bolt` in `commit` whose changes a sink gets (only the
/// first when `one`).
fn instances(commit: &CommitRecord, bolt: &str, one: bool) -> std::ops::Range<u32> {
    let p = commit.parallelism.get(bolt).copied().unwrap_or(1);
    0..if one { p.min(1) } else { p }
}

/// The pause between attempts of a sink whose connector failed: from 0.5 s,
/// doubling up to 10 s. While it waits, the metrics, the web view and the
/// log say which sink waits and why.
struct Pause {
    next: Duration,
    waiting: bool,
}

impl Pause {
    const FIRST: Duration = Duration::from_millis(500);
    const MOST: Duration = Duration::from_secs(10);

    fn new() -> Pause {
        Pause { next: Pause::FIRST, waiting: false }
    }

    /// Waits before the next attempt; false if the run stops meanwhile.
    fn wait(&mut self, task: &SinkTask, e: &anyhow::Error, inbox: &Inbox<ToSink>) -> bool {
        let why = format!("{e:#}");
        tracing::warn!("sink `{}` waits: {why}; trying again in {:.1}s", task.name, self.next.as_secs_f64());
        task.observer.sink_waits(&task.topology, &task.name, Some(&why));
        task.coord.sink_waits(&task.name, Some(&why));
        self.waiting = true;
        let until = Instant::now() + self.next;
        self.next = (self.next * 2).min(Pause::MOST);
        while Instant::now() < until {
            if inbox.is_closed() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// The sink works again.
    fn reset(&mut self, task: &SinkTask) {
        if self.waiting {
            tracing::info!("sink `{}` writes again", task.name);
            task.observer.sink_waits(&task.topology, &task.name, None);
            task.coord.sink_waits(&task.name, None);
        }
        *self = Pause::new();
    }
}
