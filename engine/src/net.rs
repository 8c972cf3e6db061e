//! The TCP transport between workers (distributed mode).
//!
//! Every channel of the embedded engine whose two ends run on different
//! workers becomes one TCP connection from the sending worker to the
//! receiving one, carrying [`crate::wire`] frames (length-prefixed,
//! versioned, CRC-checked). A connection starts with a [`Hello`] naming the
//! topology, the epoch and the endpoint it feeds; the receiver drops
//! connections of any other epoch, so nothing from before a reboot of the
//! world reaches the new one.
//!
//! Backpressure: the sender's channel is bounded, the connection carries a
//! single receiving endpoint, and the receiver blocks (reads nothing more)
//! while that endpoint's bounded inbox is full. TCP's window is then the
//! credit: a slow instance stops exactly its own senders, never another
//! endpoint's traffic, and memory stays bounded at any input rate.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::negotiator::Event;
use crate::runtime::{send, Abort, Report, ToBolt, ToSink, ToSpout, HEARTBEAT};
use crate::wasm::GuestError;
use crate::wire::{self, Decoder};

/// The largest frame a worker accepts (a batch of tuples is far smaller).
const MAX_FRAME: usize = 64 << 20;
/// How long a sender keeps trying to reach a worker that is not listening yet.
const CONNECT_FOR: Duration = Duration::from_secs(60);
/// How long a receiver waits for its own worker to start the epoch a sender is already in.
const EPOCH_WAIT: Duration = Duration::from_secs(60);

/// Something a connection feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Endpoint {
    /// Spout instance (partition) number `n`.
    Spout(usize),
    /// Bolt instance number `n` (global numbering of the plan).
    Bolt(usize),
    /// Sink number `n`.
    Sink(usize),
    /// The negotiator of the epoch.
    Negotiator,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Spout(n) => write!(f, "spout instance {n}"),
            Endpoint::Bolt(n) => write!(f, "bolt instance {n}"),
            Endpoint::Sink(n) => write!(f, "sink {n}"),
            Endpoint::Negotiator => write!(f, "the negotiator"),
        }
    }
}

/// The first frame of every connection.
#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    topology: String,
    epoch: u64,
    to: Endpoint,
}

/// A report to the negotiator as it travels between workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WireReport {
    Position { spout: usize, round: u64, offset: u64 },
    Eof { spout: usize, offset: u64 },
    Acked { bolt: usize, round: u64 },
    Saved { bolt: usize, round: u64, crc: u32 },
    SinkCommitted { sink: usize, round: u64 },
    Failed { message: String, fatal: bool },
}

impl From<Report> for WireReport {
    fn from(r: Report) -> WireReport {
        match r {
            Report::Event(Event::Position { spout, round, offset }) => WireReport::Position { spout, round, offset },
            Report::Event(Event::Eof { spout, offset }) => WireReport::Eof { spout, offset },
            Report::Event(Event::Acked { bolt, round }) => WireReport::Acked { bolt, round },
            Report::Event(Event::Saved { bolt, round, crc }) => WireReport::Saved { bolt, round, crc },
            Report::Event(Event::SinkCommitted { sink, round }) => WireReport::SinkCommitted { sink, round },
            Report::Event(e @ (Event::Tick(_) | Event::Drain)) => {
                WireReport::Failed { message: format!("internal: {e:?} is not sent between workers"), fatal: false }
            }
            Report::Failed(e) => WireReport::Failed { message: format!("{e:#}"), fatal: is_fatal(&e) },
        }
    }
}

impl From<WireReport> for Report {
    fn from(w: WireReport) -> Report {
        match w {
            WireReport::Position { spout, round, offset } => Report::Event(Event::Position { spout, round, offset }),
            WireReport::Eof { spout, offset } => Report::Event(Event::Eof { spout, offset }),
            WireReport::Acked { bolt, round } => Report::Event(Event::Acked { bolt, round }),
            WireReport::Saved { bolt, round, crc } => Report::Event(Event::Saved { bolt, round, crc }),
            WireReport::SinkCommitted { sink, round } => Report::Event(Event::SinkCommitted { sink, round }),
            WireReport::Failed { message, fatal } => Report::Failed(RemoteFailure { message, fatal }.into()),
        }
    }
}

/// A failure reported by an instance on another worker.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RemoteFailure {
    pub message: String,
    /// A guest failure (trap, timeout, memory, bad output): retrying cannot help.
    pub fatal: bool,
}

/// Whether a run's error is the user code's fault (so rebooting the world
/// would fail the same way) rather than the infrastructure's.
pub fn is_fatal(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<GuestError>() || c.downcast_ref::<RemoteFailure>().is_some_and(|r| r.fatal))
}

/// The local ends of one epoch's channels, for connections from other workers.
#[derive(Default)]
pub(crate) struct Inboxes {
    pub(crate) bolts: BTreeMap<usize, Sender<ToBolt>>,
    pub(crate) spouts: BTreeMap<usize, Sender<ToSpout>>,
    pub(crate) sinks: BTreeMap<usize, Sender<ToSink>>,
    pub(crate) negotiator: Option<Sender<Report>>,
}

struct Registered {
    epoch: u64,
    inboxes: Arc<Inboxes>,
    abort: Abort,
}

/// What this worker runs now, per topology: where incoming connections go.
#[derive(Default)]
pub struct Registry {
    current: Mutex<BTreeMap<String, Registered>>,
    changed: Condvar,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    fn lookup(&self, topology: &str, epoch: u64) -> Option<(Arc<Inboxes>, Abort)> {
        let deadline = Instant::now() + EPOCH_WAIT;
        let mut cur = self.current.lock().ok()?;
        loop {
            match cur.get(topology) {
                Some(r) if r.epoch == epoch => return Some((r.inboxes.clone(), r.abort.clone())),
                Some(r) if r.epoch > epoch => return None,
                _ => {}
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            cur = self.changed.wait_timeout(cur, left).ok()?.0;
        }
    }
}

/// Where every endpoint of one epoch of one topology runs, seen from one worker.
#[derive(Clone)]
pub struct Wiring {
    inner: Arc<WiringInner>,
}

struct WiringInner {
    topology: String,
    epoch: u64,
    me: String,
    /// Endpoint → (worker id, worker address).
    placement: BTreeMap<Endpoint, (String, String)>,
    registry: Arc<Registry>,
}

impl Wiring {
    pub fn new(
        topology: &str,
        epoch: u64,
        me: &str,
        placement: BTreeMap<Endpoint, (String, String)>,
        registry: Arc<Registry>,
    ) -> Wiring {
        Wiring {
            inner: Arc::new(WiringInner {
                topology: topology.to_string(),
                epoch,
                me: me.to_string(),
                placement,
                registry,
            }),
        }
    }

    /// Whether `e` runs on this worker.
    pub fn is_local(&self, e: Endpoint) -> bool {
        self.inner.placement.get(&e).is_some_and(|(w, _)| *w == self.inner.me)
    }

    /// Makes this epoch's local inboxes reachable from other workers.
    pub(crate) fn register(&self, inboxes: Inboxes, abort: Abort) {
        let i = &self.inner;
        if let Ok(mut cur) = i.registry.current.lock() {
            cur.insert(i.topology.clone(), Registered { epoch: i.epoch, inboxes: Arc::new(inboxes), abort });
        }
        i.registry.changed.notify_all();
    }

    /// Forgets this epoch's inboxes (if they are still the registered ones).
    pub(crate) fn unregister(&self) {
        let i = &self.inner;
        if let Ok(mut cur) = i.registry.current.lock() {
            if cur.get(&i.topology).is_some_and(|r| r.epoch == i.epoch) {
                cur.remove(&i.topology);
            }
        }
        i.registry.changed.notify_all();
    }

    /// Drains a channel into a connection to the worker that runs `to`,
    /// until the channel closes or the run is aborted.
    pub(crate) fn forward<T, W: Serialize>(
        &self,
        rx: Receiver<T>,
        to: Endpoint,
        map: impl Fn(T) -> W,
        abort: Abort,
    ) -> Result<()> {
        let i = &self.inner;
        let (worker, addr) = i.placement.get(&to).ok_or_else(|| anyhow!("internal: {to} is placed nowhere"))?;
        let Some(mut stream) =
            connect(addr, &abort).with_context(|| format!("cannot reach worker {worker} for {to}"))?
        else {
            return Ok(());
        };
        let hello = Hello { topology: i.topology.clone(), epoch: i.epoch, to };
        let lost = |e: std::io::Error| anyhow!("connection to worker {worker} ({addr}) for {to} lost: {e}");
        write_frame(&mut stream, &wire::encode(&hello, MAX_FRAME)?, &abort).map_err(lost)?;
        let mut out = Vec::new();
        loop {
            match rx.recv_timeout(HEARTBEAT) {
                Ok(m) => {
                    out.clear();
                    out.extend_from_slice(&wire::encode(&map(m), MAX_FRAME)?);
                    // Whatever else is already waiting goes in the same write.
                    while out.len() < (1 << 20) {
                        match rx.try_recv() {
                            Ok(m) => out.extend_from_slice(&wire::encode(&map(m), MAX_FRAME)?),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = write_frame(&mut stream, &out, &abort) {
                        if abort.is_set() {
                            return Ok(());
                        }
                        return Err(lost(e));
                    }
                }
                Err(RecvTimeoutError::Timeout) if abort.is_set() => return Ok(()),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    }
}

/// Connects, retrying while the peer is not listening yet. `None`: aborted.
fn connect(addr: &str, abort: &Abort) -> Result<Option<TcpStream>> {
    let started = Instant::now();
    let target = addr
        .to_socket_addrs()
        .with_context(|| format!("bad worker address {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("worker address {addr} resolves to nothing"))?;
    loop {
        if abort.is_set() {
            return Ok(None);
        }
        match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
            Ok(s) => {
                s.set_nodelay(true)?;
                s.set_write_timeout(Some(HEARTBEAT))?;
                return Ok(Some(s));
            }
            Err(e) if started.elapsed() >= CONNECT_FOR => bail!("{addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Writes all of `bytes`, checking for an abort whenever the peer is slow.
fn write_frame(stream: &mut TcpStream, mut bytes: &[u8], abort: &Abort) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                if abort.is_set() {
                    return Err(ErrorKind::ConnectionAborted.into());
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Accepts connections from other workers for as long as the process lives.
pub fn serve(listener: TcpListener, registry: Arc<Registry>) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("listener".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let registry = registry.clone();
                let _ = std::thread::Builder::new().name("connection".into()).spawn(move || {
                    if let Err(e) = connection(stream, &registry) {
                        tracing::warn!("dropped a connection from another worker: {e:#}");
                    }
                });
            }
        })
        .context("cannot start the listener thread")
}

/// Reads from the stream into the decoder; `false` when the stream ended.
/// Read timeouts come back as `Ok(true)` with nothing new.
fn fill(stream: &mut TcpStream, decoder: &mut Decoder, buf: &mut [u8]) -> Result<bool> {
    match stream.read(buf) {
        Ok(0) => Ok(false),
        Ok(n) => {
            decoder.push(buf.get(..n).unwrap_or_default());
            Ok(true)
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

fn connection(mut stream: TcpStream, registry: &Registry) -> Result<()> {
    let mut decoder = Decoder::new(MAX_FRAME);
    let mut buf = vec![0u8; 256 << 10];
    stream.set_read_timeout(Some(HEARTBEAT))?;
    let started = Instant::now();
    let hello: Hello = loop {
        if let Some(h) = decoder.next_frame()? {
            break h;
        }
        if started.elapsed() > EPOCH_WAIT || !fill(&mut stream, &mut decoder, &mut buf)? {
            return Ok(());
        }
    };
    let Some((inboxes, abort)) = registry.lookup(&hello.topology, hello.epoch) else {
        return Ok(()); // another epoch: drop it
    };
    let what = hello.to;
    match what {
        Endpoint::Bolt(n) => {
            let tx = inboxes.bolts.get(&n).ok_or_else(|| anyhow!("{what} does not run here"))?;
            pump(&mut stream, decoder, buf, tx, |m: ToBolt| m, &abort)
        }
        Endpoint::Spout(n) => {
            let tx = inboxes.spouts.get(&n).ok_or_else(|| anyhow!("{what} does not run here"))?;
            pump(&mut stream, decoder, buf, tx, |m: ToSpout| m, &abort)
        }
        Endpoint::Sink(n) => {
            let tx = inboxes.sinks.get(&n).ok_or_else(|| anyhow!("{what} does not run here"))?;
            pump(&mut stream, decoder, buf, tx, |m: ToSink| m, &abort)
        }
        Endpoint::Negotiator => {
            let tx = inboxes.negotiator.as_ref().ok_or_else(|| anyhow!("{what} does not run here"))?;
            pump(&mut stream, decoder, buf, tx, |m: WireReport| Report::from(m), &abort)
        }
    }
}

/// Decodes frames and hands them to a local inbox, blocking while it is full.
fn pump<W: DeserializeOwned, T>(
    stream: &mut TcpStream,
    mut decoder: Decoder,
    mut buf: Vec<u8>,
    tx: &Sender<T>,
    map: impl Fn(W) -> T,
    abort: &Abort,
) -> Result<()> {
    loop {
        while let Some(m) = decoder.next_frame::<W>()? {
            if send(tx, map(m), abort).is_err() {
                return Ok(());
            }
        }
        if abort.is_set() || !fill(stream, &mut decoder, &mut buf)? {
            return Ok(());
        }
    }
}
