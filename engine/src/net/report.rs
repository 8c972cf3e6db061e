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
    // New variants go last: postcard numbers variants by position.
    Idle {
        spout: usize,
        offset: u64,
    },
    Busy {
        spout: usize,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoding of every report is pinned: a change here must come with
    /// a new `WIRE_VERSION`, or workers of two builds misread each other.
    #[test]
    fn every_report_keeps_its_encoding() {
        let class = Class { domain: Domain::Internal, retryable: true };
        let cases = [
            (WireReport::Position { spout: 1, round: 2, offset: 3 }, vec![0, 1, 2, 3]),
            (WireReport::Eof { spout: 1, offset: 3 }, vec![1, 1, 3]),
            (WireReport::Acked { bolt: 1, round: 2 }, vec![2, 1, 2]),
            (WireReport::Saved { bolt: 1, round: 2, crc: 3 }, vec![3, 1, 2, 3]),
            (WireReport::SinkCommitted { sink: 1, round: 2 }, vec![4, 1, 2]),
            (
                WireReport::Failed(Classified { class, message: "m".into() }),
                postcard::to_allocvec(&(5u8, &class, "m")).unwrap(),
            ),
            (WireReport::PeerLost { worker: "w".into(), message: "m".into() }, vec![6, 1, b'w', 1, b'm']),
            (WireReport::Idle { spout: 1, offset: 3 }, vec![7, 1, 3]),
            (WireReport::Busy { spout: 1 }, vec![8, 1]),
        ];
        for (report, bytes) in cases {
            assert_eq!(postcard::to_allocvec(&report).unwrap(), bytes, "{report:?}");
            assert_eq!(postcard::from_bytes::<WireReport>(&bytes).unwrap(), report);
        }
    }
}
