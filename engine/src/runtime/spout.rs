//! A spout instance's thread: reads its partition in batches, runs the
//! deserializer, routes the tuples with its position as LWM, and obeys the
//! negotiator's gates.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crossbeam_channel::Sender;
use hailstorm_abi as abi;

use super::channels::{no_such, Channels};
use super::router::{route_error, Router};
use super::threads::Threads;
use super::{stopped, Run, Stats};
use crate::channel::{Inbox, Polled, Report, ToSpout, HEARTBEAT};
use crate::core::batch::RecordBatch;
use crate::core::clock::{Clock, Origin, INFINITY};
use crate::core::negotiator::Event;
use crate::input::{FileReader, Input, ReadOptions};
use crate::observe::{InstanceMeter, PartitionMeter};
use crate::topology::{Limits, OnError};
use crate::wasm::{self, GuestError, Ident, LoadedModule};

mod salvage;

/// Records per deserializer call.
const BATCH_RECORDS: usize = 2048;
const BATCH_BYTES: usize = 256 << 10;

/// Opens the input of every spout instance that runs here and starts its thread.
pub(super) fn start(run: &Run, ch: &mut Channels, threads: &mut Threads) -> Result<()> {
    let (p, plan) = (run.p, &run.p.plan);
    for (pi, rx) in ch.spout_rx.iter_mut().enumerate() {
        let Some(rx) = rx.take() else { continue };
        let part = plan.partitions.get(pi).ok_or_else(|| no_such("partition", pi))?;
        let spec = p.topology.spouts.get(part.spout).ok_or_else(|| no_such("spout", part.spout))?;
        let module = p.spout_modules.get(part.spout).ok_or_else(|| no_such("spout module", part.spout))?;
        let (ident, init) = p.spout_init(part.spout, part.index).ok_or_else(|| no_such("spout", part.spout))?;
        let mut guest = wasm::Deserializer::new(module, ident.clone(), spec.module.limits, &init)?;
        let metrics = &run.opts.observer.metrics;
        let meter = metrics.instance(&p.topology.name, &spec.name, part.index);
        guest.set_meter(meter.calls.clone());
        let offset = run.start.clock.get(pi as u32);
        let (input, follow) = match (&part.file, &part.kafka) {
            (Some(file), _) => {
                let opts = ReadOptions { bounded: !run.opts.follow, max_record: spec.max_record };
                let r = FileReader::open(file, offset, opts)
                    .with_context(|| format!("spout `{}`: cannot read {}", spec.name, file.display()))?;
                (Input::File(r), run.opts.follow)
            }
            (None, Some((topic, partition))) => {
                let brokers = p.topology.cluster.as_ref().map(|c| c.kafka.clone()).unwrap_or_default();
                (Input::Kafka { brokers, topic: topic.clone(), partition: *partition, offset, source: None }, true)
            }
            (None, None) => bail!("internal: partition {} has no source", part.name),
        };
        let consumers = plan.spout_consumers.get(part.spout).map_or(&[][..], Vec::as_slice);
        let task = SpoutTask {
            number: pi,
            partition_name: part.name.clone(),
            partitions: plan.spout_instances(),
            follow,
            drained: false,
            module: module.clone(),
            ident,
            limits: spec.module.limits,
            init,
            guest,
            on_error: spec.on_error,
            bad: 0,
            input,
            router: Router::new(pi, consumers, plan, &ch.bolts, run.shutdown().clone()),
            report: ch.report.clone(),
            stats: run.stats.clone(),
            meter,
            partition: metrics.partition(&p.topology.name, &part.name),
            measured: Instant::now(),
        };
        let inbox = Inbox::new(rx, run.shutdown().clone());
        threads.spawn_instance(&spec.name, part.index, "spout", ch.report.clone(), move || task.run(inbox))?;
    }
    Ok(())
}

/// What a spout does after a control message.
enum Flow {
    Go,
    Stop,
}

/// Everything a spout instance's thread owns.
struct SpoutTask {
    /// The partition number (also the instance's sender id).
    number: usize,
    partition_name: String,
    partitions: usize,
    /// Keep tailing the input at its end (until told to drain).
    follow: bool,
    /// Told to drain: the input ends where the spout stands.
    drained: bool,
    /// For re-running a failed batch record by record in a fresh instance.
    module: LoadedModule,
    ident: Ident,
    limits: Limits,
    init: serde_json::Value,
    guest: wasm::Deserializer,
    /// What a record the deserializer fails on does, and how many did.
    on_error: OnError,
    bad: u64,
    input: Input,
    router: Router,
    report: Sender<Report>,
    stats: Arc<Stats>,
    meter: InstanceMeter,
    partition: PartitionMeter,
    /// When the partition's end was last looked up.
    measured: Instant,
}

impl SpoutTask {
    fn run(mut self, control: Inbox<ToSpout>) -> Result<()> {
        let mut batch = RecordBatch::default();
        let mut eof_reported = false;
        let mut last_send = Instant::now();
        let mut quiet = Quiet::new();
        loop {
            // Control messages between batches: gating pauses here.
            while let Some(msg) = control.try_next() {
                if let Flow::Stop = self.control(msg, &control)? {
                    return Ok(());
                }
            }
            if control.shutdown().is_aborted() {
                return Ok(());
            }
            self.read(&mut batch)?;
            self.measure();
            if !batch.is_empty() {
                self.tell(quiet.busy(self.number));
                self.process(&batch)?;
                last_send = Instant::now();
                continue;
            }
            self.tell(quiet.nothing_read(self.number, self.input.position()));
            if !self.follow && !eof_reported {
                let eof = Event::Eof { spout: self.number, offset: self.input.position() };
                let _ = self.report.send(Report::Event(eof));
                eof_reported = true;
                // A bounded run's partition ends here, even if the file grows.
                self.drained = true;
            }
            if last_send.elapsed() >= HEARTBEAT {
                self.router.flush(&self.lwm(self.input.position())).map_err(stopped)?;
                last_send = Instant::now();
            }
            // Idle: wait for control or for the input to grow.
            match control.poll() {
                Polled::Msg(msg) => {
                    if let Flow::Stop = self.control(msg, &control)? {
                        return Ok(());
                    }
                }
                Polled::Idle => {}
                Polled::Closed => return Ok(()),
            }
        }
    }

    fn tell(&self, event: Option<Event>) {
        if let Some(e) = event {
            let _ = self.report.send(Report::Event(e));
        }
    }

    /// The next batch of records (none once drained).
    fn read(&mut self, batch: &mut RecordBatch) -> Result<()> {
        if self.drained {
            batch.offsets.clear();
            return Ok(());
        }
        let wait = HEARTBEAT / 5;
        self.input
            .read_batch(BATCH_RECORDS, BATCH_BYTES, !self.follow, wait, batch)
            .with_context(|| format!("spout partition {}: cannot read {}", self.partition_name, self.input.describe()))
    }

    /// Deserializes a batch and routes its tuples, then its end as LWM.
    fn process(&mut self, batch: &RecordBatch) -> Result<()> {
        let started = Instant::now();
        let partition = self.number as u32;
        let count = match self.guest.deserialize(&batch.framed) {
            Ok(emitted) => {
                let offsets = &batch.offsets;
                let count = abi::BatchReader::new(emitted).map(|r| r.count()).unwrap_or(0);
                self.router
                    .route_emitted(emitted, |i| offsets.get(i as usize).map(|&offset| Origin { partition, offset }))
                    .map_err(|e| route_error(e, &self.ident, "hailstorm_deserialize"))?;
                count
            }
            Err(e) => self.salvage(batch, e)?,
        };
        self.stats.records.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.stats.tuples.fetch_add(u64::from(count), Ordering::Relaxed);
        self.router.flush(&self.lwm(batch.end)).map_err(stopped)?;
        self.meter.records_in.inc_by(batch.len() as u64);
        self.meter.records_out.inc_by(u64::from(count));
        self.meter.batch.observe(started.elapsed().as_secs_f64());
        self.partition.position(batch.end);
        Ok(())
    }

    /// About once a second: the partition's end, for the lag.
    fn measure(&mut self) {
        if self.measured.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.measured = Instant::now();
        let position = self.input.position();
        self.partition.position(position);
        if let Some(end) = self.input.end() {
            self.partition.end(end, position);
        }
    }

    /// The LWM a spout sends: its position for its partition, infinity elsewhere.
    fn lwm(&self, position: u64) -> Clock {
        let mut c = Clock::filled(self.partitions, INFINITY);
        c.set(self.number as u32, position);
        c
    }

    /// Handles one control message. A gate reports the spout's position,
    /// makes sure every downstream instance has it as LWM (the round's
    /// clock), then waits for the ungate, still obeying drains.
    fn control(&mut self, msg: ToSpout, control: &Inbox<ToSpout>) -> Result<Flow> {
        let round = match msg {
            ToSpout::Ungate => return Ok(Flow::Go),
            ToSpout::Drain => {
                self.drain();
                return Ok(Flow::Go);
            }
            ToSpout::Gate(round) => round,
        };
        let position = self.input.position();
        let _ = self.report.send(Report::Event(Event::Position { spout: self.number, round, offset: position }));
        self.router.flush(&self.lwm(position)).map_err(stopped)?;
        loop {
            match control.poll() {
                Polled::Msg(ToSpout::Ungate) => return Ok(Flow::Go),
                Polled::Msg(ToSpout::Drain) => self.drain(),
                Polled::Msg(ToSpout::Gate(_)) | Polled::Idle => {}
                Polled::Closed => return Ok(Flow::Stop),
            }
        }
    }

    fn drain(&mut self) {
        self.drained = true;
        self.follow = false;
    }
}

/// Whether a spout has read everything there was: after [`QUIET`] without
/// a record it says it is idle (once), and busy again at the next record,
/// so the negotiator can take a round at once when the input pauses.
struct Quiet {
    last_record: Instant,
    idle: bool,
}

/// How long a spout reads nothing before it says it is idle.
const QUIET: Duration = Duration::from_millis(25);

impl Quiet {
    fn new() -> Quiet {
        Quiet { last_record: Instant::now(), idle: false }
    }

    fn busy(&mut self, spout: usize) -> Option<Event> {
        self.last_record = Instant::now();
        std::mem::replace(&mut self.idle, false).then_some(Event::Busy { spout })
    }

    fn nothing_read(&mut self, spout: usize, offset: u64) -> Option<Event> {
        if self.idle || self.last_record.elapsed() < QUIET {
            return None;
        }
        self.idle = true;
        Some(Event::Idle { spout, offset })
    }
}

/// A deserializer failed on a batch: find the first record that fails on its
/// own, in a fresh instance, so the error names its exact origin.
fn pinpoint(task: &SpoutTask, batch: &RecordBatch, batch_err: GuestError) -> GuestError {
    let records = batch.records();
    let mut fresh = match wasm::Deserializer::new(&task.module, task.ident.clone(), task.limits, &task.init) {
        Ok(g) => g,
        Err(_) => return batch_err,
    };
    // Each record may take up to its deadline: the search is bounded as a whole.
    let budget = (task.limits.call_timeout * 10).clamp(Duration::from_secs(5), Duration::from_secs(60));
    let started = Instant::now();
    for (i, rec) in records.iter().enumerate() {
        if started.elapsed() > budget {
            let first = batch.offsets.first().copied().unwrap_or(0);
            let what = format!("a batch of {} records from {}@{first}", batch.len(), task.partition_name);
            return batch_err.with_origin(format!("{what}; no single record failed in the first {i} ({budget:?})"));
        }
        let mut w = abi::BatchWriter::new();
        w.bytes(rec).end_item();
        if let Err(e) = fresh.deserialize(&w.finish()) {
            let offset = batch.offsets.get(i).copied().unwrap_or(0);
            let preview: String = String::from_utf8_lossy(rec).chars().take(60).collect();
            return e.with_origin(format!("record {}@{offset} ({preview:?})", task.partition_name));
        }
    }
    let first = batch.offsets.first().copied().unwrap_or(0);
    batch_err.with_origin(format!("a batch of {} records from {}@{first}", batch.len(), task.partition_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spout_says_once_that_it_is_idle_and_once_that_it_is_busy_again() {
        let mut q = Quiet::new();
        assert_eq!(q.nothing_read(3, 10), None, "not quiet for long enough yet");
        assert_eq!(q.busy(3), None, "it never said it was idle");
        std::thread::sleep(QUIET + Duration::from_millis(5));
        assert_eq!(q.nothing_read(3, 12), Some(Event::Idle { spout: 3, offset: 12 }));
        assert_eq!(q.nothing_read(3, 12), None, "said once");
        assert_eq!(q.busy(3), Some(Event::Busy { spout: 3 }));
        assert_eq!(q.busy(3), None);
        assert_eq!(q.nothing_read(3, 20), None, "it just read a record");
    }
}
