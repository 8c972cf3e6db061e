//! The TCP transport between workers (distributed mode).
//!
//! Every channel of the embedded engine whose two ends run on different
//! workers becomes one TCP connection from the sending worker to the
//! receiving one, carrying [`wire`] frames (length-prefixed,
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
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};

use crate::channel::{Inbox, Polled, Report, Shutdown, ToBolt, ToSink, ToSpout, HEARTBEAT};
use crate::core::bolt::Round;

mod report;
mod serve;
pub mod tls;
pub mod wire;

pub use report::WireReport;

/// A connection to another worker closed or could not be made: that
/// worker may be dead. The leader reboots the world around it at once,
/// instead of waiting for its ZooKeeper session to expire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLost {
    /// The worker's id.
    pub worker: String,
    pub message: String,
}

impl fmt::Display for PeerLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PeerLost {}

/// The worker a failure says was lost, if it says so.
pub fn peer_lost(e: &anyhow::Error) -> Option<&PeerLost> {
    e.chain().find_map(|c| c.downcast_ref::<PeerLost>())
}
pub use serve::serve;
use tls::Link;
pub use tls::Tls;

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
    /// Bolt instance number `n` (global numbering of the plan): its data.
    Bolt(usize),
    /// The announcements of rounds to bolt instance `n`, which must not wait
    /// behind its data; it runs wherever `Bolt(n)` runs.
    BoltControl(usize),
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
            Endpoint::BoltControl(n) => write!(f, "the announcements of bolt instance {n}"),
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

/// The local ends of one epoch's channels, for connections from other workers.
#[derive(Default)]
pub(crate) struct Inboxes {
    pub(crate) bolts: BTreeMap<usize, Sender<ToBolt>>,
    pub(crate) bolt_control: BTreeMap<usize, Sender<Round>>,
    pub(crate) spouts: BTreeMap<usize, Sender<ToSpout>>,
    pub(crate) sinks: BTreeMap<usize, Sender<ToSink>>,
    pub(crate) negotiator: Option<Sender<Report>>,
}

struct Registered {
    epoch: u64,
    inboxes: Arc<Inboxes>,
    shutdown: Shutdown,
    /// The TLS names of the epoch's workers: who may connect.
    peers: Arc<Vec<String>>,
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

    /// The inboxes of `topology` at `epoch` (waiting a while for this worker
    /// to start it), with its shutdown and the TLS names of its workers.
    fn lookup(&self, topology: &str, epoch: u64) -> Option<(Arc<Inboxes>, Shutdown, Arc<Vec<String>>)> {
        let deadline = Instant::now() + EPOCH_WAIT;
        let mut cur = self.current.lock().ok()?;
        loop {
            match cur.get(topology) {
                Some(r) if r.epoch == epoch => return Some((r.inboxes.clone(), r.shutdown.clone(), r.peers.clone())),
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

#[derive(Clone)]
struct WiringInner {
    topology: String,
    epoch: u64,
    me: String,
    /// Endpoint → (worker id, worker address).
    placement: BTreeMap<Endpoint, (String, String)>,
    registry: Arc<Registry>,
    /// With TLS: this worker's identity, and each worker's TLS name by id.
    tls: Option<(Arc<Tls>, BTreeMap<String, String>)>,
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
                tls: None,
            }),
        }
    }

    /// Speaks TLS to the other workers, whose TLS names `names` gives by worker id.
    pub fn with_tls(self, tls: Arc<Tls>, names: BTreeMap<String, String>) -> Wiring {
        let mut inner = WiringInner::clone(&self.inner);
        inner.tls = Some((tls, names));
        Wiring { inner: Arc::new(inner) }
    }

    /// The worker (id, address) that runs `e`.
    fn placed(&self, e: Endpoint) -> Option<&(String, String)> {
        let e = match e {
            Endpoint::BoltControl(n) => Endpoint::Bolt(n),
            other => other,
        };
        self.inner.placement.get(&e)
    }

    /// Whether `e` runs on this worker.
    pub fn is_local(&self, e: Endpoint) -> bool {
        self.placed(e).is_some_and(|(w, _)| *w == self.inner.me)
    }

    /// Makes this epoch's local inboxes reachable from other workers.
    pub(crate) fn register(&self, inboxes: Inboxes, shutdown: Shutdown) {
        let i = &self.inner;
        if let Ok(mut cur) = i.registry.current.lock() {
            let peers = Arc::new(i.tls.as_ref().map(|(_, n)| n.values().cloned().collect()).unwrap_or_default());
            let r = Registered { epoch: i.epoch, inboxes: Arc::new(inboxes), shutdown, peers };
            cur.insert(i.topology.clone(), r);
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
        shutdown: Shutdown,
    ) -> Result<()> {
        let i = &self.inner;
        let (worker, addr) = self.placed(to).ok_or_else(|| anyhow!("internal: {to} is placed nowhere"))?;
        let gone = |message: String| anyhow::Error::new(PeerLost { worker: worker.to_string(), message });
        let Some(mut stream) = self
            .link(worker, addr, &shutdown)
            .map_err(|e| gone(format!("cannot reach worker {worker} for {to}: {e:#}")))?
        else {
            return Ok(());
        };
        let hello = Hello { topology: i.topology.clone(), epoch: i.epoch, to };
        let lost = |e: std::io::Error| gone(format!("connection to worker {worker} ({addr}) for {to} lost: {e}"));
        stream.send(&wire::encode(&hello, MAX_FRAME)?, &shutdown).map_err(lost)?;
        let rx = Inbox::new(rx, shutdown.clone());
        let mut out = Vec::new();
        loop {
            let m = match rx.poll() {
                Polled::Msg(m) => m,
                // Nothing to send: a peer that died shows now, not at the next write.
                Polled::Idle if stream.peer_closed() && !shutdown.is_aborted() => {
                    return Err(lost(std::io::ErrorKind::ConnectionReset.into()));
                }
                Polled::Idle => continue,
                Polled::Closed => return Ok(()),
            };
            out.clear();
            out.extend_from_slice(&frame(&map(m), to)?);
            // Whatever else is already waiting goes in the same write.
            while out.len() < (1 << 20) {
                match rx.try_next() {
                    Some(m) => out.extend_from_slice(&frame(&map(m), to)?),
                    None => break,
                }
            }
            if let Err(e) = stream.send(&out, &shutdown) {
                if shutdown.is_aborted() {
                    return Ok(());
                }
                return Err(lost(e));
            }
        }
    }
}

impl Wiring {
    /// A connection to `worker` at `addr`: over TLS, to that worker only. `None`: aborted.
    fn link(&self, worker: &str, addr: &str, shutdown: &Shutdown) -> Result<Option<Link>> {
        let Some(sock) = connect(addr, shutdown)? else { return Ok(None) };
        match &self.inner.tls {
            None => Ok(Some(Link::Plain(sock))),
            Some((tls, names)) => {
                let peer = names
                    .get(worker)
                    .ok_or_else(|| anyhow!("worker {worker} runs without TLS, and this one speaks only TLS"))?;
                Ok(Some(tls.dial(sock, peer, shutdown)?))
            }
        }
    }
}

/// Whether an I/O error only means "not now" (a timeout on a slow peer).
fn slow(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted)
}

/// Connects, retrying while the peer is not listening yet. `None`: aborted.
fn connect(addr: &str, shutdown: &Shutdown) -> Result<Option<TcpStream>> {
    let started = Instant::now();
    let target = addr
        .to_socket_addrs()
        .with_context(|| format!("bad worker address {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("worker address {addr} resolves to nothing"))?;
    loop {
        if shutdown.is_aborted() {
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

/// A message for `to` as a frame. One over [`MAX_FRAME`] (a huge record or
/// emitted batch) would be over it on every retry: that ends the topology.
fn frame<T: Serialize>(msg: &T, to: Endpoint) -> Result<Vec<u8>> {
    wire::encode(msg, MAX_FRAME).map_err(|e| match e {
        wire::WireError::TooLarge { len, max } => crate::error::error(
            crate::error::Domain::External,
            false,
            format!("a message of {len} bytes for {to} exceeds the {max}-byte limit of a frame between workers"),
        ),
        e => anyhow!("cannot send a message to {to}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use crossbeam_channel::{bounded, Receiver};

    use super::*;
    use crate::channel::ToSink;
    use crate::core::clock::Clock;

    fn commit(round: u64) -> ToSink {
        ToSink::Commit { round, clock: Clock(vec![1]), last: false }
    }

    /// A forwarder to sink 0 at `addr` (worker `w2`) in a thread of its own,
    /// with nothing to send until told; returns its channel and its result.
    fn forwarder(addr: &str, shutdown: Shutdown) -> (Sender<ToSink>, Receiver<Result<()>>) {
        let placement: BTreeMap<Endpoint, (String, String)> =
            [(Endpoint::Sink(0), ("w2".to_string(), addr.to_string()))].into_iter().collect();
        let wiring = Wiring::new("t", 1, "w1", placement, Registry::new());
        let (tx, rx) = bounded(4);
        let (done_tx, done) = bounded(1);
        std::thread::spawn(move || {
            let _ = done_tx.send(wiring.forward(rx, Endpoint::Sink(0), |m| m, shutdown));
        });
        (tx, done)
    }

    #[test]
    fn a_forwarder_with_nothing_to_send_notices_its_peer_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (_tx, done) = forwarder(&addr, Shutdown::new());
        // The peer accepts, then its process dies: the connection closes.
        let (conn, _) = listener.accept().unwrap();
        drop(conn);
        let result = done.recv_timeout(Duration::from_secs(5)).expect("the forwarder noticed within 5 s");
        let e = result.expect_err("a closed peer is an error");
        assert_eq!(peer_lost(&e).map(|p| p.worker.as_str()), Some("w2"), "{e:#}");
    }

    #[test]
    fn a_worker_whose_endpoint_stopped_keeps_the_connection_open_until_the_epoch_ends() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let registry = Registry::new();
        serve(listener, registry.clone(), None).unwrap();
        let placement: BTreeMap<Endpoint, (String, String)> =
            [(Endpoint::Sink(0), ("w2".to_string(), addr.clone()))].into_iter().collect();
        let receiving = Wiring::new("t", 1, "w2", placement, registry);
        let (inbox, stopped) = bounded(4);
        drop(stopped); // the sink failed: its inbox is gone
        let epoch = Shutdown::new();
        receiving.register(Inboxes { sinks: [(0, inbox)].into_iter().collect(), ..Inboxes::default() }, epoch.clone());
        let sender = Shutdown::new();
        let (tx, done) = forwarder(&addr, sender.clone());
        tx.send(commit(1)).unwrap();
        tx.send(commit(2)).unwrap();
        // The sending side must not take the live worker for a dead one.
        assert!(done.recv_timeout(Duration::from_millis(1500)).is_err(), "the forwarder ended");
        epoch.abort();
        tx.send(commit(3)).unwrap();
        let ended = done.recv_timeout(Duration::from_secs(5)).expect("the epoch's end closes the connection");
        assert!(ended.as_ref().err().and_then(peer_lost).is_some(), "{ended:?}");
        sender.abort();
    }
}
