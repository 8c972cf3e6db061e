//! The channels of one run: a bounded inbox per endpoint. An endpoint that
//! runs here keeps its receiver; one that runs on another worker gets a
//! forwarder thread that drains the channel into a connection, so instance
//! code is the same in both modes.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use serde::Serialize;

use super::threads::Threads;
use crate::channel::{Report, Shutdown, ToBolt, ToSink, ToSpout, INBOX};
use crate::core::bolt::Round;
use crate::net::{Endpoint, Inboxes, WireReport, Wiring};

/// Senders to every endpoint of the run, and the receivers of those that run here.
pub(super) struct Channels {
    /// To the negotiator (a local inbox or a forwarder).
    pub(super) report: Sender<Report>,
    /// The negotiator's inbox, when it runs here.
    pub(super) negotiator: Option<Receiver<Report>>,
    pub(super) bolts: Vec<Sender<ToBolt>>,
    pub(super) bolt_rx: Vec<Option<Receiver<ToBolt>>>,
    /// Each bolt instance's announcements of rounds.
    pub(super) bolt_control: Vec<Sender<Round>>,
    pub(super) bolt_control_rx: Vec<Option<Receiver<Round>>>,
    pub(super) spouts: Vec<Sender<ToSpout>>,
    pub(super) spout_rx: Vec<Option<Receiver<ToSpout>>>,
    pub(super) sinks: Vec<Sender<ToSink>>,
    pub(super) sink_rx: Vec<Option<Receiver<ToSink>>>,
}

/// How many endpoints of each kind a run has.
pub(super) struct Counts {
    pub(super) spouts: usize,
    pub(super) bolts: usize,
    pub(super) sinks: usize,
}

impl Channels {
    /// Opens every channel; with `net`, makes the local inboxes reachable
    /// from other workers at once (what they send waits in the bounded inboxes).
    pub(super) fn open(
        n: Counts,
        net: Option<&Wiring>,
        threads: &mut Threads,
        shutdown: &Shutdown,
    ) -> Result<Channels> {
        let (local_tx, local_rx) = unbounded::<Report>();
        let (report, negotiator) = match net.filter(|w| !w.is_local(Endpoint::Negotiator)) {
            None => (local_tx, Some(local_rx)),
            Some(w) => {
                let (tx, rx) = bounded::<Report>(INBOX);
                let (w, s) = (w.clone(), shutdown.clone());
                let to = Endpoint::Negotiator;
                threads.spawn("to negotiator".into(), local_tx, move || w.forward(rx, to, WireReport::from, s))?;
                (tx, None)
            }
        };
        let (bolts, bolt_rx) = endpoints(n.bolts, Endpoint::Bolt, net, shutdown, threads, &report)?;
        let (bolt_control, bolt_control_rx) =
            endpoints(n.bolts, Endpoint::BoltControl, net, shutdown, threads, &report)?;
        let (spouts, spout_rx) = endpoints(n.spouts, Endpoint::Spout, net, shutdown, threads, &report)?;
        let (sinks, sink_rx) = endpoints(n.sinks, Endpoint::Sink, net, shutdown, threads, &report)?;
        let ch = Channels {
            report,
            negotiator,
            bolts,
            bolt_rx,
            bolt_control,
            bolt_control_rx,
            spouts,
            spout_rx,
            sinks,
            sink_rx,
        };
        if let Some(net) = net {
            net.register(ch.inboxes(), shutdown.clone());
        }
        Ok(ch)
    }

    /// The senders of the endpoints that run here, for connections from other workers.
    fn inboxes(&self) -> Inboxes {
        Inboxes {
            bolts: local_senders(&self.bolts, &self.bolt_rx),
            bolt_control: local_senders(&self.bolt_control, &self.bolt_control_rx),
            spouts: local_senders(&self.spouts, &self.spout_rx),
            sinks: local_senders(&self.sinks, &self.sink_rx),
            negotiator: self.negotiator.as_ref().map(|_| self.report.clone()),
        }
    }
}

/// One bounded channel per endpoint `endpoint(0..count)`.
#[allow(clippy::type_complexity)]
fn endpoints<T: Serialize + Send + 'static>(
    count: usize,
    endpoint: fn(usize) -> Endpoint,
    net: Option<&Wiring>,
    shutdown: &Shutdown,
    threads: &mut Threads,
    report: &Sender<Report>,
) -> Result<(Vec<Sender<T>>, Vec<Option<Receiver<T>>>)> {
    let mut txs = Vec::with_capacity(count);
    let mut rxs = Vec::with_capacity(count);
    for n in 0..count {
        let (tx, rx) = bounded::<T>(INBOX);
        let to = endpoint(n);
        match net.filter(|w| !w.is_local(to)) {
            None => rxs.push(Some(rx)),
            Some(w) => {
                let (w, s) = (w.clone(), shutdown.clone());
                threads.spawn(format!("to {to}"), report.clone(), move || w.forward(rx, to, |m| m, s))?;
                rxs.push(None);
            }
        }
        txs.push(tx);
    }
    Ok((txs, rxs))
}

fn local_senders<T>(txs: &[Sender<T>], rxs: &[Option<Receiver<T>>]) -> BTreeMap<usize, Sender<T>> {
    txs.iter().zip(rxs).enumerate().filter(|(_, (_, rx))| rx.is_some()).map(|(n, (tx, _))| (n, tx.clone())).collect()
}

/// The error for an endpoint number the plan does not have.
pub(super) fn no_such(what: &str, n: usize) -> anyhow::Error {
    anyhow!("internal: no {what} {n}")
}
