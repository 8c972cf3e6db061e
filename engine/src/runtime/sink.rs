//! A sink's thread: on every complete round, the committed state of its
//! input bolts goes to the WebAssembly sink.

use std::sync::Arc;

use anyhow::{anyhow, Result};
use crossbeam_channel::Sender;
use hailstorm_abi as abi;

use super::channels::{no_such, Channels};
use super::shell::Coordinator;
use super::threads::Threads;
use super::Run;
use crate::channel::{Inbox, Polled, Report, ToSink};
use crate::core::clock::Clock;
use crate::core::negotiator::Event;
use crate::snapshot::FileStore;
use crate::wasm::{self, Ident};

/// The slot of a merge instance that combines a bolt's instances.
const SCRATCH: i32 = 2;

/// Starts every sink that runs here, with a merge instance per input bolt.
pub(super) fn start(run: &Run, ch: &mut Channels, threads: &mut Threads) -> Result<()> {
    let t = &run.p.topology;
    for (si, rx) in ch.sink_rx.iter_mut().enumerate() {
        let Some(rx) = rx.take() else { continue };
        let spec = t.sinks.get(si).ok_or_else(|| no_such("sink", si))?;
        let module = run.p.sink_modules.get(si).ok_or_else(|| no_such("sink module", si))?;
        let ident = Ident { processor: spec.name.clone(), instance: 0, module: module.name() };
        let init = wasm::init_doc(&spec.name, 0, 1, &t.dir, &spec.module.config);
        let guest = wasm::Sink::new(module, ident, spec.module.limits, &init, &spec.dirs)?;
        let mut inputs = Vec::new();
        for name in &spec.inputs {
            let b = t
                .bolts
                .iter()
                .position(|x| x.name == *name)
                .ok_or_else(|| anyhow!("sink input {name} is not a bolt"))?;
            let (bolt, bm) = (&t.bolts[b], &run.p.bolt_modules[b]);
            let ident =
                Ident { processor: format!("{}(merge for {})", name, spec.name), instance: 0, module: bm.name() };
            let init = wasm::init_doc(name, 0, 1, &t.dir, &bolt.module.config);
            let merger = wasm::Bolt::new(bm, ident, bolt.module.limits, &init)?;
            inputs.push(Input { bolt: name.clone(), parallelism: bolt.parallelism, merger });
        }
        let task = SinkTask {
            number: si,
            partition_names: run.p.plan.partitions.iter().map(|p| p.name.clone()).collect(),
            store: run.store.clone(),
            coord: run.coord.clone(),
            guest,
            inputs,
            report: ch.report.clone(),
        };
        let inbox = Inbox::new(rx, run.shutdown().clone());
        threads.spawn(format!("sink {}", spec.name), ch.report.clone(), move || task.run(inbox))?;
    }
    Ok(())
}

/// An input bolt of a sink, and the instance that merges its instances' snapshots.
struct Input {
    bolt: String,
    parallelism: u32,
    merger: wasm::Bolt,
}

struct SinkTask {
    number: usize,
    partition_names: Vec<String>,
    store: FileStore,
    coord: Arc<dyn Coordinator>,
    guest: wasm::Sink,
    inputs: Vec<Input>,
    report: Sender<Report>,
}

impl SinkTask {
    fn run(mut self, inbox: Inbox<ToSink>) -> Result<()> {
        loop {
            let mut latest = match inbox.poll() {
                Polled::Msg(ToSink::Commit { round, clock }) => (round, clock),
                Polled::Idle => continue,
                Polled::Closed => return Ok(()),
            };
            // A sink that falls behind writes only the newest committed state.
            while let Some(ToSink::Commit { round, clock }) = inbox.try_next() {
                latest = (round, clock);
            }
            let (round, clock) = latest;
            self.commit(round, &clock)?;
            let _ = self.report.send(Report::Event(Event::SinkCommitted { sink: self.number, round }));
        }
    }

    /// Gives the sink the committed state of every input bolt at `round`.
    fn commit(&mut self, round: u64, clock: &Clock) -> Result<()> {
        let mut docs = Vec::new();
        for input in &mut self.inputs {
            // The committed state of a bolt is the ⊕ of its instances' snapshots.
            input.merger.clear(SCRATCH)?;
            for i in 0..input.parallelism {
                let (snap, _) = self.store.read_snapshot(round, &input.bolt, i)?;
                input.merger.restore(SCRATCH, &snap.entries)?;
            }
            docs.push((input.bolt.clone(), input.merger.snapshot(SCRATCH)?));
        }
        let named: Vec<(String, u64)> = self.partition_names.iter().cloned().zip(clock.0.iter().copied()).collect();
        let doc = abi::write_commit(round, &named, &docs);
        self.coord.check_fence()?;
        Ok(self.guest.commit(&doc)?)
    }
}
