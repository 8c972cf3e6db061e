//! The receiving side: accepts connections from other workers and feeds
//! each one into the local inbox of the endpoint its `Hello` names.

use std::io::{ErrorKind, Read};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use crossbeam_channel::Sender;
use serde::de::DeserializeOwned;

use super::wire::Decoder;
use super::{Endpoint, Hello, Registry, WireReport, EPOCH_WAIT, MAX_FRAME};
use crate::channel::{send, Report, Shutdown, ToBolt, ToSink, ToSpout, HEARTBEAT};
use crate::core::bolt::Round;

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
    let Some((inboxes, shutdown)) = registry.lookup(&hello.topology, hello.epoch) else {
        return Ok(()); // another epoch: drop it
    };
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
fn pump<W: DeserializeOwned, T>(
    stream: &mut TcpStream,
    mut decoder: Decoder,
    mut buf: Vec<u8>,
    tx: &Sender<T>,
    map: impl Fn(W) -> T,
    shutdown: &Shutdown,
) -> Result<()> {
    loop {
        while let Some(m) = decoder.next_frame::<W>()? {
            if send(tx, map(m), shutdown).is_err() {
                return Ok(());
            }
        }
        if shutdown.is_aborted() || !fill(stream, &mut decoder, &mut buf)? {
            return Ok(());
        }
    }
}
