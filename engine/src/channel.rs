//! The vocabulary instances speak, and how they wait for it.
//!
//! Every processor instance runs on its own thread with one inbox: a bounded
//! channel of [`ToBolt`], [`ToSpout`] or [`ToSink`] messages. Instances tell
//! the negotiator what happened through [`Report`]s. The same messages cross
//! the network between workers (`crate::net`), so this module is below both
//! the runtime and the transport.
//!
//! A run stops through one [`Shutdown`]: a graceful *drain* (read no more,
//! take a final round, let the sinks write it) or an *abort* (stop now and
//! write nothing more). Every blocking wait is a [`Inbox::poll`] or a
//! [`send`], which wake at least every [`HEARTBEAT`] to look at it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TryRecvError, TrySendError};
use serde::{Deserialize, Serialize};

use crate::core::batch::TupleBatch;
use crate::core::clock::Clock;
use crate::core::negotiator::Event;

/// How often idle instances send LWM heartbeats and look at the shutdown.
pub const HEARTBEAT: Duration = Duration::from_millis(50);
/// Messages waiting in one instance's inbox.
pub const INBOX: usize = 64;

/// Data messages to a bolt instance. (The rounds it must take are announced
/// on a channel of their own, a [`Round`] each, so that an announcement never
/// waits behind data: the spouts are gated until every instance has it.)
#[derive(Debug, Serialize, Deserialize)]
pub enum ToBolt {
    /// Tuples from sender `from`, then that sender's LWM.
    Batch { from: usize, batch: TupleBatch, lwm: Clock },
    /// A bare LWM heartbeat from sender `from`.
    Lwm { from: usize, lwm: Clock },
}

/// Messages to a spout instance.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToSpout {
    /// Report the position and wait for [`ToSpout::Ungate`].
    Gate(u64),
    Ungate,
    /// Read no more: report the current position as the end of the input.
    Drain,
}

/// Messages to a sink.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToSink {
    /// A round is complete at this clock; `last`: the final round of a
    /// bounded run or a stop, which the sink must make durable at once.
    Commit { round: u64, clock: Clock, last: bool },
}

/// What instances tell the negotiator.
#[derive(Debug)]
pub enum Report {
    Event(Event),
    Failed(anyhow::Error),
}

/// How a run is asked to end. Clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    drain: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// The flag behind [`Shutdown::drain`], for a signal handler to set.
    pub fn drain_flag(&self) -> Arc<AtomicBool> {
        self.drain.clone()
    }

    /// Asks for a graceful stop: no more input, a final round, the sinks write it.
    pub fn drain(&self) {
        self.drain.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.drain.load(Ordering::Relaxed)
    }

    /// Stops the run at once. An aborted run writes nothing more to shared
    /// storage (snapshots, commit records, sink output).
    pub fn abort(&self) {
        self.abort.store(true, Ordering::Relaxed);
    }

    pub fn is_aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    /// Waits up to `d`, waking early on an abort; true if aborted.
    pub fn sleep(&self, d: Duration) -> bool {
        let until = std::time::Instant::now() + d;
        while !self.is_aborted() {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(left.min(HEARTBEAT));
        }
        true
    }
}

/// The receiver of a message that can no longer be delivered: its channel
/// closed, or the run was aborted while the channel was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the receiver stopped")]
pub struct Undelivered;

/// Sends on a bounded channel, waiting while it is full but never past an abort.
pub fn send<T>(tx: &Sender<T>, mut msg: T, shutdown: &Shutdown) -> Result<(), Undelivered> {
    loop {
        match tx.try_send(msg) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Disconnected(_)) => return Err(Undelivered),
            Err(TrySendError::Full(m)) => {
                if shutdown.is_aborted() {
                    return Err(Undelivered);
                }
                match tx.send_timeout(m, HEARTBEAT) {
                    Ok(()) => return Ok(()),
                    Err(SendTimeoutError::Timeout(m)) => msg = m,
                    Err(SendTimeoutError::Disconnected(_)) => return Err(Undelivered),
                }
            }
        }
    }
}

/// What a wait on an inbox gave.
#[derive(Debug)]
pub enum Polled<T> {
    Msg(T),
    /// Nothing for one heartbeat: time for heartbeats and housekeeping.
    Idle,
    /// The channel closed or the run was aborted: the instance stops.
    Closed,
}

/// A message from one of two inboxes.
#[derive(Debug)]
pub enum Either<F, S> {
    First(F),
    Second(S),
}

/// The receiving end of an instance's channel, aware of the run's shutdown.
pub struct Inbox<T> {
    rx: Receiver<T>,
    shutdown: Shutdown,
}

impl<T> Inbox<T> {
    pub fn new(rx: Receiver<T>, shutdown: Shutdown) -> Inbox<T> {
        Inbox { rx, shutdown }
    }

    /// Messages waiting, and how many fit (`None`: unbounded).
    pub fn fill(&self) -> (usize, Option<usize>) {
        (self.rx.len(), self.rx.capacity())
    }

    /// Waits at most one [`HEARTBEAT`] for the next message.
    pub fn poll(&self) -> Polled<T> {
        let r = self.rx.recv_timeout(HEARTBEAT);
        if self.shutdown.is_aborted() {
            return Polled::Closed;
        }
        match r {
            Ok(m) => Polled::Msg(m),
            Err(RecvTimeoutError::Timeout) => Polled::Idle,
            Err(RecvTimeoutError::Disconnected) => Polled::Closed,
        }
    }

    /// Whether the run is stopping (nothing more will come).
    pub fn is_closed(&self) -> bool {
        self.shutdown.is_aborted()
    }

    /// The next message if one is waiting.
    pub fn try_next(&self) -> Option<T> {
        self.rx.try_recv().ok()
    }

    /// Waits at most one [`HEARTBEAT`] for a message on this inbox or on
    /// `first` (which always goes first when both have one).
    pub fn poll_with<F>(&self, first: &Inbox<F>) -> Polled<Either<F, T>> {
        if let Some(f) = first.try_next() {
            return Polled::Msg(Either::First(f));
        }
        let mut sel = crossbeam_channel::Select::new();
        sel.recv(&first.rx);
        sel.recv(&self.rx);
        let ready = sel.ready_timeout(HEARTBEAT);
        if self.shutdown.is_aborted() {
            return Polled::Closed;
        }
        if ready.is_err() {
            return Polled::Idle;
        }
        // One message at most: the second inbox is read only if the first has none.
        let first_closed = match first.rx.try_recv() {
            Ok(f) => return Polled::Msg(Either::First(f)),
            Err(e) => e == TryRecvError::Disconnected,
        };
        match self.rx.try_recv() {
            Ok(m) => Polled::Msg(Either::Second(m)),
            Err(TryRecvError::Disconnected) => Polled::Closed,
            Err(TryRecvError::Empty) if first_closed => Polled::Closed,
            Err(TryRecvError::Empty) => Polled::Idle,
        }
    }

    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;

    #[test]
    fn an_inbox_is_closed_by_an_abort_or_by_its_senders() {
        let shutdown = Shutdown::new();
        let (tx, rx) = bounded::<u32>(1);
        let inbox = Inbox::new(rx, shutdown.clone());
        assert!(matches!(inbox.poll(), Polled::Idle));
        send(&tx, 7, &shutdown).unwrap();
        assert!(matches!(inbox.poll(), Polled::Msg(7)));
        // A full channel waits, but not past an abort.
        send(&tx, 8, &shutdown).unwrap();
        shutdown.abort();
        assert_eq!(send(&tx, 9, &shutdown), Err(Undelivered));
        assert!(matches!(inbox.poll(), Polled::Closed));
        let (tx, rx) = bounded::<u32>(1);
        let inbox = Inbox::new(rx, Shutdown::new());
        drop(tx);
        assert!(matches!(inbox.poll(), Polled::Closed));
    }

    #[test]
    fn two_inboxes_lose_nothing_and_the_first_goes_first() {
        let shutdown = Shutdown::new();
        let (ctx, crx) = bounded::<u32>(4);
        let (dtx, drx) = bounded::<u32>(4);
        let (control, data) = (Inbox::new(crx, shutdown.clone()), Inbox::new(drx, shutdown.clone()));
        for i in 0..3 {
            send(&dtx, i, &shutdown).unwrap();
        }
        send(&ctx, 100, &shutdown).unwrap();
        let mut got = Vec::new();
        while let Polled::Msg(m) = data.poll_with(&control) {
            got.push(match m {
                Either::First(c) => c,
                Either::Second(d) => d,
            });
        }
        assert_eq!(got, vec![100, 0, 1, 2]);
    }

    #[test]
    fn draining_is_not_aborting() {
        let s = Shutdown::new();
        let t = s.clone();
        t.drain();
        assert!(s.is_draining() && !s.is_aborted());
        assert!(!s.sleep(Duration::from_millis(1)));
        s.abort();
        assert!(t.sleep(Duration::from_secs(60)));
    }
}
