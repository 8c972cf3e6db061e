//! The receiving side: accepts connections from other workers and feeds
//! each one into the local inbox of the endpoint its `Hello` names.

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::Sender;
use serde::de::DeserializeOwned;

use super::tls::{Incoming, Tls};
use super::wire::Decoder;
use super::{Endpoint, Hello, Registry, WireReport, MAX_FRAME};
use crate::channel::{send, Report, Shutdown, ToBolt, ToSink, ToSpout, HEARTBEAT};
use crate::core::bolt::Round;

/// The largest frame a connection may send before its `Hello`.
pub(super) const MAX_HELLO: usize = 4 << 10;
/// How long a connection may take to send its `Hello`.
pub(super) const HELLO_WAIT: Duration = Duration::from_secs(5);
/// Connections served at once (one thread each), and of those, how many may
/// not have sent their `Hello` yet: a stranger cannot tie up more.
pub(super) const MAX_CONNECTIONS: usize = 512;
pub(super) const MAX_UNIDENTIFIED: usize = 32;

/// A place in a bounded count, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        let n = count.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(count.clone());
        (n < max).then_some(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accepts connections from other workers for as long as the process
/// lives; with `tls`, only over TLS from the epoch's workers.
pub fn serve(listener: TcpListener, registry: Arc<Registry>, tls: Option<Arc<Tls>>) -> Result<JoinHandle<()>> {
    let (open, unidentified) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    std::thread::Builder::new()
        .name("listener".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (Some(open), Some(hello)) =
                    (Slot::take(&open, MAX_CONNECTIONS), Slot::take(&unidentified, MAX_UNIDENTIFIED))
                else {
                    tracing::warn!("refused a connection: too many open, or waiting for their Hello");
                    continue;
                };
                let (registry, tls) = (registry.clone(), tls.clone());
                let _ = std::thread::Builder::new().name("connection".into()).spawn(move || {
                    let _open = open;
                    let peer = stream.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string());
                    if let Err(e) = secure(stream, tls.as_deref()).and_then(|s| connection(s, &registry, hello)) {
                        tracing::warn!("dropped a connection from {peer}: {e:#}");
                    }
                });
            }
        })
        .context("cannot start the listener thread")
}

/// An accepted connection, made TLS when this worker speaks it: the
/// handshake is bounded like the `Hello` that follows.
fn secure(sock: std::net::TcpStream, tls: Option<&Tls>) -> Result<Incoming> {
    sock.set_read_timeout(Some(HEARTBEAT.min(HELLO_WAIT)))?;
    match tls {
        Some(t) => t.accept(sock, Instant::now() + HELLO_WAIT),
        None => Ok(Incoming::Plain(sock)),
    }
}

/// Reads from the stream into the decoder; `false` when the stream ended.
/// Read timeouts come back as `Ok(true)` with nothing new.
fn fill(stream: &mut Incoming, decoder: &mut Decoder, buf: &mut [u8]) -> Result<bool> {
    match stream.read(buf) {
        Ok(0) => Ok(false),
        Ok(n) => {
            decoder.push(buf.get(..n).unwrap_or_default());
            Ok(true)
        }
        Err(e) if super::slow(&e) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Serves one connection: a small `Hello` within [`HELLO_WAIT`] (while it
/// holds `unidentified`), then frames up to [`MAX_FRAME`].
fn connection(mut stream: Incoming, registry: &Registry, unidentified: Slot) -> Result<()> {
    let mut decoder = Decoder::new(MAX_HELLO);
    let mut buf = vec![0u8; MAX_HELLO];
    stream.socket().set_read_timeout(Some(HEARTBEAT.min(HELLO_WAIT)))?;
    let started = Instant::now();
    let hello: Hello = loop {
        if let Some(h) = decoder.next_frame()? {
            break h;
        }
        if started.elapsed() > HELLO_WAIT || !fill(&mut stream, &mut decoder, &mut buf)? {
            return Ok(());
        }
    };
    drop(unidentified);
    decoder.set_max(MAX_FRAME);
    buf.resize(256 << 10, 0);
    stream.socket().set_read_timeout(Some(HEARTBEAT))?;
    let Some((inboxes, shutdown, peers)) = registry.lookup(&hello.topology, hello.epoch) else {
        return Ok(()); // another epoch: drop it
    };
    if !stream.peer_is_one_of(peers.iter().map(String::as_str)) {
        bail!("its certificate names none of the workers of `{}` epoch {}", hello.topology, hello.epoch);
    }
    let what = hello.to;
    match what {
        Endpoint::Bolt(n) => {
            let tx = inboxes.bolts.get(&n).ok_or_else(|| anyhow!("{what} does not run here"))?;
            pump(&mut stream, decoder, buf, tx, |m: ToBolt| m, &shutdown)
        }
        Endpoint::BoltControl(n) => {
            let tx = inboxes.bolt_control.get(&n).ok_or_else(|| anyhow!("{what} does not run here"))?;
            pump(&mut stream, decoder, buf, tx, |m: Round| m, &shutdown)
        }
        Endpoint::Spout(n) => {
            let tx = inboxes.spouts.get(&n).ok_or_else(|| anyhow!("{what} does not run here"))?;
            pump(&mut stream, decoder, buf, tx, |m: ToSpout| m, &shutdown)
        }
        Endpoint::Sink(n) => {
            let tx = inboxes.sinks.get(&n).ok_or_else(|| anyhow!("{what} does not run here"))?;
            pump(&mut stream, decoder, buf, tx, |m: ToSink| m, &shutdown)
        }
        Endpoint::Negotiator => {
            let tx = inboxes.negotiator.as_ref().ok_or_else(|| anyhow!("{what} does not run here"))?;
            pump(&mut stream, decoder, buf, tx, |m: WireReport| Report::from(m), &shutdown)
        }
    }
}

/// Decodes frames and hands them to a local inbox, blocking while it is full.
/// Once the endpoint stopped (its inbox is gone: it failed, and says so
/// itself), the rest is read and dropped until the epoch ends: a sender that
/// saw the connection close would take this live worker for a dead one.
fn pump<W: DeserializeOwned, T>(
    stream: &mut Incoming,
    mut decoder: Decoder,
    mut buf: Vec<u8>,
    tx: &Sender<T>,
    map: impl Fn(W) -> T,
    shutdown: &Shutdown,
) -> Result<()> {
    let mut stopped = false;
    loop {
        while let Some(m) = decoder.next_frame::<W>()? {
            if !stopped && send(tx, map(m), shutdown).is_err() {
                stopped = true;
            }
        }
        if shutdown.is_aborted() || !fill(stream, &mut decoder, &mut buf)? {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;
    use std::io::Write;
    use std::net::TcpStream;

    fn server() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        serve(listener, Registry::new(), None).unwrap();
        addr
    }

    /// How long until the server closes `s` (reads return 0 or fail).
    fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut b = [0u8; 16];
        while started.elapsed() < limit {
            match s.read(&mut b) {
                Ok(0) => return Some(started.elapsed()),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                _ => return Some(started.elapsed()),
            }
        }
        None
    }

    #[test]
    fn strangers_get_a_small_hello_a_short_wait_and_few_places() {
        let addr = server();
        // A huge frame before any Hello: closed at once, nothing allocated for it.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&(32u32 << 20).to_le_bytes()).unwrap();
        assert!(closed_within(&mut s, Duration::from_secs(2)).is_some(), "a huge first frame was accepted");
        // Idle connections: the first MAX_UNIDENTIFIED wait, the next is refused at once.
        let mut idle: Vec<TcpStream> = (0..MAX_UNIDENTIFIED).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut extra = TcpStream::connect(addr).unwrap();
        let refused = closed_within(&mut extra, Duration::from_secs(2));
        assert!(refused.is_some(), "connection {} was not refused", MAX_UNIDENTIFIED + 1);
        // A connection that never says Hello is closed after HELLO_WAIT.
        let first = idle.first_mut().unwrap();
        let waited = closed_within(first, HELLO_WAIT * 2).expect("an idle connection was kept");
        assert!(waited <= HELLO_WAIT + Duration::from_secs(2), "{waited:?}");
    }
}
