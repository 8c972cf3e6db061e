//! The engine: spout, bolt and sink instances and the negotiator shell.
//!
//! Every processor instance runs on its own thread and talks through
//! bounded channels ([`crate::channel`]); the negotiator's pure state machine
//! ([`crate::core::negotiator`]) runs on the calling thread. Snapshots are
//! written by a dedicated writer thread, off the hot path of the bolts.
//!
//! Data path: input → WASM deserializer → router (key hash) → bolt
//! instance inbox → [`BoltCore`](crate::core::bolt::BoltCore) (A/B split) →
//! WASM bolt. Control path: negotiator → gate spouts → announce to bolts →
//! ungate → bolts save → commit record → sinks read the committed state from
//! the store.
//!
//! The same [`run`] serves both modes: embedded ([`run_embedded`]: every
//! endpoint here) and distributed (a [`Wiring`] says which endpoints run on
//! this worker; channels to the others are forwarded over TCP).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::Receiver;

use crate::channel::{Report, Shutdown, Undelivered};
use crate::core::leader::State;
use crate::net::Wiring;
use crate::observe::{Graph, Observer, Place};
use crate::store::FileStore;

mod bolt;
mod channels;
mod compactor;
mod prepare;
mod progress;
mod recover;
mod router;
mod shell;
mod sink;
mod spout;
mod threads;
mod writer;

use channels::{Channels, Counts};
use progress::Stats;
use threads::Threads;

pub use prepare::{check_configs, prepare, prepare_with, Prepared};
pub use progress::{human, Summary};
pub use recover::{DamagedRound, Start};
pub use shell::{Coordinator, LocalCoordinator};
pub use sink::check_connectors;

/// About how many bytes of entries one guest call takes or gives when state
/// moves in or out of a bolt (snapshots, restores, changes to sinks), so a
/// call's work is bounded whatever the size of the state.
const CHUNK: usize = 1 << 20;

/// Options of a run (the default: bounded input, quiet, a fresh shutdown).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Keep tailing the input files instead of stopping at their end.
    pub follow: bool,
    /// Print progress every this often (`None`: quiet).
    pub progress: Option<Duration>,
    /// How the run is asked to end from outside: a drain (e.g. from a signal
    /// handler) takes a final snapshot, lets the sinks write it and returns;
    /// an abort (distributed mode: the epoch is over) stops at once.
    pub shutdown: Shutdown,
    /// Where the run's metrics go (and what the web view reads).
    pub observer: Arc<Observer>,
    /// The worker, epoch and placement (cluster mode), for the web view and logs.
    pub place: Place,
}

/// What every part of one run shares.
struct Run<'a> {
    p: &'a Prepared,
    opts: &'a RunOptions,
    store: &'a FileStore,
    start: &'a Start,
    net: Option<&'a Wiring>,
    coord: Arc<dyn Coordinator>,
    stats: Arc<Stats>,
    started: Instant,
}

impl Run<'_> {
    fn shutdown(&self) -> &Shutdown {
        &self.opts.shutdown
    }
}

/// Runs a prepared topology in this process until its bounded input is done
/// (or forever with `follow`), resuming from the store's last complete round.
pub fn run_embedded(p: Prepared, opts: RunOptions) -> Result<Summary> {
    // Another topology's store, one another run is using, or an object
    // store that refuses or cannot be reached: the user must act.
    let usage = |e: crate::store::StoreError| crate::error::mark(e.into(), crate::error::Domain::Usage, false);
    let store = FileStore::open_store(&p.topology.store)
        .map_err(usage)
        .with_context(|| format!("cannot open the snapshot store {}", p.topology.store_dir().display()))?;
    let lock = store.lock().map_err(usage)?;
    store.claim(&p.topology.name).map_err(usage)?;
    watch_store(&store, &opts.observer, &p.topology.name);
    let start = Start::latest(&p, &store, lock.first_round())?;
    run(&p, &opts, &store, start, None, Arc::new(LocalCoordinator))
}

/// Reports an object store's reachability on the metrics and the board of `observer`.
pub fn watch_store(store: &FileStore, observer: &Arc<crate::observe::Observer>, topology: &str) {
    if let Some(r) = store.remote() {
        let (o, t) = (observer.clone(), topology.to_string());
        r.set_health_hook(Arc::new(move |why| o.store_unreachable(&t, why)));
    }
}

/// Runs this process's share of a topology: every instance when `net` is
/// `None` (embedded), else the instances `net` places here, reaching the
/// others over the network. The negotiator runs where `net` says.
pub fn run(
    p: &Prepared,
    opts: &RunOptions,
    store: &FileStore,
    start: Start,
    net: Option<&Wiring>,
    coord: Arc<dyn Coordinator>,
) -> Result<Summary> {
    let stats = Arc::new(Stats::new(&p.plan, &start.clock));
    let partitions = p.plan.partitions.iter().map(|x| x.name.clone()).collect();
    opts.observer.started(Graph::of(&p.topology, partitions), opts.place.clone());
    let span = tracing::info_span!("run", topology = %p.topology.name, epoch = opts.place.epoch);
    let _entered = span.enter();
    let run = Run { p, opts, store, start: &start, net, coord, stats, started: Instant::now() };
    let mut threads = Threads::new(opts.shutdown.clone(), net.is_some());
    let result = start_all(&run, &mut threads).and_then(|(ch, negotiator)| match negotiator {
        Some(rx) => {
            let (jobs, compactions) = crossbeam_channel::unbounded();
            let c = compactor::Compactor {
                store: store.clone(),
                jobs: compactions,
                shutdown: opts.shutdown.clone(),
                coord: run.coord.clone(),
            };
            threads.spawn("compactor".into(), ch.report.clone(), move || c.run())?;
            shell::negotiate(&run, &ch, rx, &jobs)
        }
        None => {
            // No negotiator here: run until the run is torn down from outside.
            while !run.shutdown().sleep(shell::PUBLISH) {
                run.stats.publish(&run.opts.observer.metrics, &p.topology.name, &p.plan);
            }
            Ok(run.stats.summary(run.started, &p.plan, 0, None))
        }
    });
    let from_outside = opts.shutdown.is_aborted();
    opts.shutdown.abort();
    if let Some(net) = net {
        net.unregister();
    }
    let result = threads.join_all(result);
    let (state, why) = match &result {
        Ok(_) => (State::Stopped, "finished".to_string()),
        Err(_) if from_outside => (State::Stopped, "stopped".to_string()),
        Err(e) => (State::Failed, format!("{e:#}")),
    };
    opts.observer.ended(&p.topology.name, state, why);
    result
}

/// Opens the channels and starts every instance that runs here: the
/// snapshot writer, bolts (restored before anything flows), sinks, spouts.
fn start_all(run: &Run, threads: &mut Threads) -> Result<(Channels, Option<Receiver<Report>>)> {
    let (plan, t) = (&run.p.plan, &run.p.topology);
    let counts = Counts { spouts: plan.spout_instances(), bolts: plan.bolt_instances(), sinks: t.sinks.len() };
    let mut ch = Channels::open(counts, run.net, threads, run.shutdown())?;
    let (save_tx, save_rx) = crossbeam_channel::bounded(writer::SAVE_QUEUE);
    if ch.bolt_rx.iter().any(Option::is_some) {
        let w = writer::Writer {
            store: run.store.clone(),
            jobs: save_rx,
            report: ch.report.clone(),
            shutdown: run.shutdown().clone(),
            coord: run.coord.clone(),
            stats: run.stats.clone(),
            round_bytes: run.opts.observer.metrics.round_bytes.with_label_values(&[t.name.as_str()]),
        };
        threads.spawn("snapshot-writer".into(), ch.report.clone(), move || w.run())?;
    }
    let restoring = Instant::now();
    bolt::start(run, &mut ch, threads, &save_tx)?;
    let micros = u64::try_from(restoring.elapsed().as_micros()).unwrap_or(u64::MAX);
    run.stats.restore_micros.store(micros, std::sync::atomic::Ordering::Relaxed);
    sink::start(run, &mut ch, threads)?;
    spout::start(run, &mut ch, threads)?;
    let negotiator = ch.negotiator.take();
    Ok((ch, negotiator))
}

/// The error of an instance whose peer stopped (the run is ending).
pub(super) fn stopped(_: Undelivered) -> anyhow::Error {
    anyhow::anyhow!("stopped")
}
