//! A bolt instance's thread: its inbox feeds the pure [`BoltCore`], whose
//! slots are the WebAssembly bolt; finished snapshots go to the writer and
//! new LWMs downstream.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use crossbeam_channel::Sender;

use super::channels::{no_such, Channels};
use super::recover::restore_bolt;
use super::router::Router;
use super::threads::Threads;
use super::writer::{SaveJob, Step};
use super::{stopped, Run, Stats, CHUNK};
use crate::channel::{Either, Inbox, Polled, Report, ToBolt};
use crate::core::batch::TupleBatch;
use crate::core::bolt::{self, BoltCore, Finished, Round, Slots};
use crate::core::clock::INFINITY;
use crate::core::negotiator::Event;
use crate::observe::InstanceMeter;
use crate::store::{check_sorted, DataHeader, DataKind, Parent};
use crate::wasm;

/// Instantiates and restores every bolt instance that runs here, then starts its thread.
pub(super) fn start(run: &Run, ch: &mut Channels, threads: &mut Threads, save: &Sender<SaveJob>) -> Result<()> {
    let (p, plan) = (run.p, &run.p.plan);
    for (n, rx) in ch.bolt_rx.iter_mut().enumerate() {
        let Some(rx) = rx.take() else { continue };
        let (b, i) = plan.bolt_of(n).ok_or_else(|| no_such("bolt instance", n))?;
        let spec = p.topology.bolts.get(b).ok_or_else(|| no_such("bolt", b))?;
        let module = p.bolt_modules.get(b).ok_or_else(|| no_such("bolt module", b))?;
        let mut guest = p.new_bolt(b, i)?;
        let meter = run.opts.observer.metrics.instance(&p.topology.name, &spec.name, i);
        guest.set_meter(meter.calls.clone());
        let parent = restore_bolt(run, spec, i, &mut guest)?;
        let consumers = plan.bolt_consumers.get(b).map_or(&[][..], Vec::as_slice);
        let me = plan.spout_instances() + n;
        let router = Router::new(me, consumers, plan, &ch.bolts, run.shutdown().clone());
        let mut start = run.start.clock.clone();
        // Partitions that cannot reach this instance never hold back its LWM.
        for (part, reaches) in plan.bolt_reach.get(b).into_iter().flatten().enumerate() {
            if !reaches {
                start.set(part as u32, INFINITY);
            }
        }
        let inputs = plan.bolt_inputs.get(b).cloned().unwrap_or_default();
        let task = BoltTask {
            number: n,
            header: DataHeader {
                kind: DataKind::Delta,
                topology: p.topology.name.clone(),
                processor: spec.name.clone(),
                instance: i,
                parallelism: spec.parallelism,
                round: 0,
                parent,
                clock: Vec::new(),
                module_hash: module.hash.clone(),
            },
            partitions: plan.partitions.iter().map(|p| p.name.clone()).collect(),
            channel_of: inputs.iter().enumerate().map(|(c, sender)| (*sender, c)).collect(),
            core: BoltCore::new(inputs.len(), &start),
            guest,
            router,
            report: ch.report.clone(),
            save: save.clone(),
            stats: run.stats.clone(),
            meter,
        };
        let inbox = Inbox::new(rx, run.shutdown().clone());
        let control = ch.bolt_control_rx.get_mut(n).and_then(Option::take).ok_or_else(|| no_such("bolt control", n))?;
        let announcements = Inbox::new(control, run.shutdown().clone());
        threads.spawn_instance(&spec.name, i, "bolt", ch.report.clone(), move || task.run(inbox, announcements))?;
    }
    Ok(())
}

/// Everything a bolt instance's thread owns.
struct BoltTask {
    /// The instance's number among all bolt instances.
    number: usize,
    /// The header of this instance's next delta (round, clock and parent
    /// filled in per round: the parent is the previous delta, or what the
    /// instance restored).
    header: DataHeader,
    partitions: Vec<String>,
    /// Sender id → input channel number.
    channel_of: BTreeMap<usize, usize>,
    core: BoltCore,
    guest: wasm::Bolt,
    router: Router,
    report: Sender<Report>,
    save: Sender<SaveJob>,
    stats: Arc<Stats>,
    meter: InstanceMeter,
}

impl BoltTask {
    /// Until the run ends: announcements first, then data.
    fn run(mut self, inbox: Inbox<ToBolt>, announcements: Inbox<Round>) -> Result<()> {
        let mut last_lwm = self.core.lwm().clone();
        loop {
            let msg = match inbox.poll_with(&announcements) {
                Polled::Msg(m) => m,
                Polled::Closed => {
                    let (name, i) = (&self.header.processor, self.header.instance);
                    tracing::debug!("bolt {name}/{i}: {} bytes of memory", self.guest.memory_bytes());
                    return Ok(());
                }
                Polled::Idle => {
                    if self.router.has_targets() {
                        self.router.flush(self.core.lwm()).map_err(stopped)?;
                    }
                    continue;
                }
            };
            let (len, capacity) = inbox.fill();
            self.meter.inbox_fill(len, capacity);
            // A finished snapshot was saved on the way.
            let _: Option<Finished> = self.handle(msg)?;
            if *self.core.lwm() != last_lwm {
                last_lwm = self.core.lwm().clone();
                self.stats.set_lwm(self.number, &last_lwm);
                if self.router.has_targets() {
                    self.router.flush(&last_lwm).map_err(stopped)?;
                }
            }
        }
    }

    /// Hands one message to the core; a finished snapshot comes back.
    fn handle(&mut self, msg: Either<Round, ToBolt>) -> Result<Option<Finished>> {
        let channel_of = &self.channel_of;
        let who = format!("bolt {}/{}", self.header.processor, self.header.instance);
        let channel = |from: usize| {
            channel_of.get(&from).copied().ok_or_else(|| anyhow!("{who}: message from unknown sender {from}"))
        };
        let mut slots = WasmSlots {
            guest: &mut self.guest,
            router: &mut self.router,
            partitions: &self.partitions,
            meter: &self.meter,
            saver: Saver { number: self.number, header: &mut self.header, save: &self.save },
        };
        let finished = match msg {
            Either::Second(ToBolt::Batch { from, batch, lwm }) => {
                let (started, tuples) = (std::time::Instant::now(), batch.len() as u64);
                let r = self.core.on_batch(&mut slots, channel(from)?, batch, &lwm);
                self.meter.records_in.inc_by(tuples);
                self.meter.batch.observe(started.elapsed().as_secs_f64());
                r
            }
            Either::Second(ToBolt::Lwm { from, lwm }) => self.core.on_lwm(&mut slots, channel(from)?, &lwm),
            Either::First(round) => {
                let id = round.id;
                let r = self.core.announce(&mut slots, round);
                let _ = self.report.send(Report::Event(Event::Acked { bolt: self.number, round: id }));
                r
            }
        };
        finished.map_err(|e| match e {
            bolt::Error::Core(c) => anyhow!("bolt {}/{}: {c}", self.header.processor, self.header.instance),
            bolt::Error::Slots(e) => e,
        })
    }
}

/// Streams an instance's deltas to the snapshot writer.
struct Saver<'a> {
    number: usize,
    header: &'a mut DataHeader,
    save: &'a Sender<SaveJob>,
}

impl Saver<'_> {
    fn send(&self, step: Step) -> Result<()> {
        let job = SaveJob { bolt_number: self.number, step };
        self.save.send(job).map_err(|_| anyhow!("the snapshot writer stopped"))
    }
}

/// The WASM bolt seen as [`Slots`], routing what it emits downstream.
struct WasmSlots<'a> {
    guest: &'a mut wasm::Bolt,
    router: &'a mut Router,
    partitions: &'a [String],
    meter: &'a InstanceMeter,
    saver: Saver<'a>,
}

impl Slots for WasmSlots<'_> {
    type Error = anyhow::Error;

    fn fold(&mut self, slot: i32, batch: &mut TupleBatch) -> Result<()> {
        let ident = self.guest.ident().clone();
        let emitted = match self.guest.fold(slot, batch.frame()) {
            Ok(e) => e,
            Err(e) => return Err(e.with_origin(describe_origins(batch, self.partitions)).into()),
        };
        if emitted.len() > 4 {
            let count = hailstorm_abi::BatchReader::new(emitted).map(|r| r.count()).unwrap_or(0);
            self.meter.records_out.inc_by(u64::from(count));
            let origins = batch.origins();
            self.router
                .route_emitted(emitted, |i| origins.get(i as usize).copied())
                .map_err(|e| super::router::route_error(e, &ident, "hailstorm_fold"))?;
        }
        Ok(())
    }

    fn merge(&mut self, dst: i32, src: i32) -> Result<()> {
        Ok(self.guest.merge(dst, src)?)
    }

    /// Streams the changed entries of `slot` to the writer, chunk by chunk,
    /// checking that the guest hands them out sorted.
    fn save(&mut self, slot: i32, round: &Round) -> Result<()> {
        self.saver.header.round = round.id;
        self.saver.header.clock = self.partitions.iter().cloned().zip(round.clock.0.iter().copied()).collect();
        self.saver.send(Step::Begin(Box::new(self.saver.header.clone())))?;
        let mut last = None;
        loop {
            let chunk = self.guest.snapshot_chunk(slot, CHUNK)?;
            let n = match check_sorted(chunk, &mut last) {
                Ok(n) => n,
                Err(why) => return Err(self.guest.bad_output("hailstorm_snapshot", why).into()),
            };
            if n == 0 {
                break;
            }
            let chunk = chunk.to_vec();
            self.saver.send(Step::Chunk(chunk))?;
        }
        self.saver.send(Step::End)?;
        self.saver.header.parent = Parent::Delta(round.id);
        Ok(())
    }
}

/// "a batch of 12 tuples from records lines/0@5..=80, lines/1@3".
fn describe_origins(batch: &TupleBatch, partitions: &[String]) -> String {
    let mut lo: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for o in batch.origins() {
        let e = lo.entry(o.partition).or_insert((o.offset, o.offset));
        e.0 = e.0.min(o.offset);
        e.1 = e.1.max(o.offset);
    }
    let parts: Vec<String> = lo
        .iter()
        .map(|(p, (a, b))| {
            let name = partitions.get(*p as usize).map_or("?", |s| s.as_str());
            if a == b {
                format!("{name}@{a}")
            } else {
                format!("{name}@{a}..={b}")
            }
        })
        .collect();
    format!("a batch of {} tuples from records {}", batch.len(), parts.join(", "))
}
