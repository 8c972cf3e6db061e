//! Reports to the negotiator as they travel between workers: the events,
//! and failures with their class (so the leader knows whether a reboot of
//! the world can help).

use serde::{Deserialize, Serialize};

use crate::channel::Report;
use crate::core::negotiator::Event;
use crate::error::{classify, Class, Classified, Domain};

/// A report to the negotiator as it travels between workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireReport {
    Position {
        spout: usize,
        round: u64,
        offset: u64,
    },
    Eof {
        spout: usize,
        offset: u64,
    },
    Idle {
        spout: usize,
        offset: u64,
    },
    Busy {
        spout: usize,
    },
    Acked {
        bolt: usize,
        round: u64,
    },
    Saved {
        bolt: usize,
        round: u64,
        crc: u32,
    },
    SinkCommitted {
        sink: usize,
        round: u64,
    },
    Failed(Classified),
    /// A failure because a connection to `worker` was lost (it may be dead).
    PeerLost {
        worker: String,
        message: String,
    },
}

impl From<Report> for WireReport {
    fn from(r: Report) -> WireReport {
        match r {
            Report::Event(Event::Position { spout, round, offset }) => WireReport::Position { spout, round, offset },
            Report::Event(Event::Eof { spout, offset }) => WireReport::Eof { spout, offset },
            Report::Event(Event::Idle { spout, offset }) => WireReport::Idle { spout, offset },
            Report::Event(Event::Busy { spout }) => WireReport::Busy { spout },
            Report::Event(Event::Acked { bolt, round }) => WireReport::Acked { bolt, round },
            Report::Event(Event::Saved { bolt, round, crc }) => WireReport::Saved { bolt, round, crc },
            Report::Event(Event::SinkCommitted { sink, round }) => WireReport::SinkCommitted { sink, round },
            Report::Event(e @ (Event::Tick(_) | Event::Drain)) => WireReport::Failed(Classified {
                class: Class { domain: Domain::Internal, retryable: true },
                message: format!("internal: {e:?} is not sent between workers"),
            }),
            Report::Failed(e) => match super::peer_lost(&e) {
                Some(p) => WireReport::PeerLost { worker: p.worker.clone(), message: format!("{e:#}") },
                None => WireReport::Failed(Classified { class: classify(&e), message: format!("{e:#}") }),
            },
        }
    }
}

impl From<WireReport> for Report {
    fn from(w: WireReport) -> Report {
        match w {
            WireReport::Position { spout, round, offset } => Report::Event(Event::Position { spout, round, offset }),
            WireReport::Eof { spout, offset } => Report::Event(Event::Eof { spout, offset }),
            WireReport::Idle { spout, offset } => Report::Event(Event::Idle { spout, offset }),
            WireReport::Busy { spout } => Report::Event(Event::Busy { spout }),
            WireReport::Acked { bolt, round } => Report::Event(Event::Acked { bolt, round }),
            WireReport::Saved { bolt, round, crc } => Report::Event(Event::Saved { bolt, round, crc }),
            WireReport::SinkCommitted { sink, round } => Report::Event(Event::SinkCommitted { sink, round }),
            WireReport::Failed(c) => Report::Failed(c.into()),
            WireReport::PeerLost { worker, message } => Report::Failed(super::PeerLost { worker, message }.into()),
        }
    }
}
