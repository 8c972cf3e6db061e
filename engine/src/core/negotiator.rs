//! The negotiator's state machine (DESIGN §3.3–3.4): pure and synchronous.
//!
//! It chooses snapshot clocks by briefly gating the spouts and reading their
//! positions, announces the clock to every bolt instance, lets the spouts go on
//! once every instance has the announcement (so no tuple at or above the clock
//! can reach an instance that does not know it yet), and declares the round
//! complete only when every bolt instance has durably saved its snapshot.
//!
//! The shell around it (in-process for the embedded mode) turns [`Action`]s
//! into messages and feeds back [`Event`]s; time comes in through
//! [`Event::Tick`], so the machine is tested deterministically.

use std::collections::{BTreeSet, VecDeque};

use std::time::{Duration, Instant};

/// Complete rounds kept for a sink that lags (its changes since then come
/// from them); a sink further behind gets the whole state instead, so a
/// slow sink pins a bounded amount of disk.
pub const SINK_LAG_ROUNDS: usize = 32;

use crate::core::clock::Clock;

/// While every spout is idle, a round may come this many times per
/// interval (the interval bounds the time between rounds while records
/// flow; an idle input is snapshotted at once, but not more often than this).
pub const IDLE_ROUNDS: u32 = 4;

/// The first round of a cluster epoch. Rounds are numbered
/// `epoch << 32 | n`, so a fenced-off epoch can never write into a round of
/// a later one.
pub fn first_round_of_epoch(epoch: u64) -> u64 {
    (epoch << 32) + 1
}

/// A round id as people read it: `epoch.n`.
pub fn show_round(r: u64) -> String {
    format!("{}.{}", r >> 32, r & 0xffff_ffff)
}

/// What the negotiator hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Tick(Instant),
    /// A gated spout reports the offset of the next record it will emit.
    Position {
        spout: usize,
        round: u64,
        offset: u64,
    },
    /// A spout of a bounded input reached the end of its partition at `offset`.
    Eof {
        spout: usize,
        offset: u64,
    },
    /// A bolt instance has the announcement of `round`.
    Acked {
        bolt: usize,
        round: u64,
    },
    /// A bolt instance durably saved its snapshot of `round`; `crc` identifies the file.
    Saved {
        bolt: usize,
        round: u64,
        crc: u32,
    },
    /// A sink wrote the committed state of `round`.
    SinkCommitted {
        sink: usize,
        round: u64,
    },
    /// Stop at the spouts' current positions: the input is now bounded there
    /// (the spouts report their `Eof` where they stopped).
    Drain,
    /// A spout read everything there was (for a moment): it stands at `offset`.
    Idle {
        spout: usize,
        offset: u64,
    },
    /// A spout that said it was idle reads records again.
    Busy {
        spout: usize,
    },
}

/// What the negotiator asks its shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Stop every spout and ask for its position.
    Gate { round: u64 },
    /// Tell every bolt instance the round's clock.
    Announce { round: u64, clock: Clock },
    /// Let the spouts go on.
    Ungate { round: u64 },
    /// Every instance saved `round`: record it durably as the last complete
    /// clock, then tell the sinks. `crcs` is indexed by bolt instance; `last`
    /// says it is the round at the end of a bounded input, which the sinks
    /// must make durable at once.
    Complete { round: u64, clock: Clock, crcs: Vec<u32>, last: bool },
    /// Rounds below `below` that are not in `keep` may be deleted.
    Collect { keep: Vec<u64>, below: u64 },
    /// The bounded input is fully processed, committed and written by every sink.
    Finish,
    /// Round `round` has been open longer than the round timeout: `waiting`
    /// names what it still waits for. Said once per round.
    Overdue { round: u64, waiting: Vec<Waiting> },
    /// Backpressure: the spouts stay gated at `round` (its `Ungate` waits)
    /// because `sinks` each left their bound of complete rounds unwritten.
    /// Said again when the set of sinks changes; the `Ungate` ends it.
    Hold { round: u64, sinks: Vec<usize> },
}

/// What an open round waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// A spout's position.
    Position(usize),
    /// A bolt instance's acknowledgement of the announcement.
    Ack(usize),
    /// A bolt instance's saved snapshot.
    Save(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    Gating { round: u64, positions: Vec<Option<u64>> },
    Open { round: u64, clock: Clock, acked: BTreeSet<usize>, saved: Vec<Option<u32>>, ungated: bool },
}

/// How many processor instances the negotiator coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub spouts: usize,
    pub bolts: usize,
    pub sinks: usize,
}

#[derive(Debug, Clone)]
pub struct Negotiator {
    shape: Shape,
    interval: Duration,
    bounded: bool,
    phase: Phase,
    next_round: u64,
    last_round_at: Option<Instant>,
    /// How long a round may stay open (`None`: forever).
    round_timeout: Option<Duration>,
    /// The open round was reported overdue.
    overdue: bool,
    /// Complete rounds, newest last, with their clocks.
    complete: Vec<(u64, Clock)>,
    eof: Vec<Option<u64>>,
    /// Where each idle spout stands (`None`: busy, or not heard from yet).
    idle: Vec<Option<u64>>,
    /// Newest round each sink made durable.
    sink_round: Vec<Option<u64>>,
    /// Per sink, the complete rounds it may leave unwritten before the
    /// spouts are held (`None`: any number).
    pending_bound: Vec<Option<usize>>,
    /// The sinks the open round's ungate waits for (said with `Hold`;
    /// empty: none).
    held: Vec<usize>,
    /// The newest complete rounds of this run, oldest first: as many as
    /// [`SINK_LAG_ROUNDS`] and the largest pending bound need.
    recent: VecDeque<u64>,
    /// A round at the end of the bounded input completed in this run (and
    /// went to the sinks as the last one).
    final_completed: bool,
    finished: bool,
}

impl Negotiator {
    /// `last_complete` is the round restored at start (if any); new rounds are
    /// numbered from `next_round`.
    pub fn new(
        shape: Shape,
        interval: Duration,
        bounded: bool,
        last_complete: Option<(u64, Clock)>,
        next_round: u64,
    ) -> Negotiator {
        Negotiator {
            shape,
            interval,
            bounded,
            phase: Phase::Idle,
            next_round,
            last_round_at: None,
            round_timeout: None,
            overdue: false,
            complete: last_complete.into_iter().collect(),
            eof: vec![None; shape.spouts],
            idle: vec![None; shape.spouts],
            sink_round: vec![None; shape.sinks],
            pending_bound: vec![None; shape.sinks],
            held: Vec::new(),
            recent: VecDeque::new(),
            final_completed: false,
            finished: false,
        }
    }

    /// Reports a round open longer than `timeout` (once) as [`Action::Overdue`].
    pub fn with_round_timeout(mut self, timeout: Duration) -> Negotiator {
        self.round_timeout = Some(timeout);
        self
    }

    /// Holds the spouts (backpressure) while sink `s` has `bounds[s]`
    /// complete rounds it has not made durable (`None`: never).
    pub fn with_pending_bounds(mut self, bounds: Vec<Option<usize>>) -> Negotiator {
        self.pending_bound = (0..self.shape.sinks).map(|s| bounds.get(s).copied().flatten()).collect();
        self
    }

    /// The complete rounds of this run newer than the round sink `s` holds.
    pub fn pending_rounds(&self, s: usize) -> usize {
        let at = self.sink_round.get(s).copied().flatten().unwrap_or(0);
        self.recent.iter().rev().take_while(|r| **r > at).count()
    }

    /// The sinks whose unwritten rounds reached their bound.
    fn holding(&self) -> Vec<usize> {
        let full = |s: usize| self.pending_bound.get(s).copied().flatten().is_some_and(|b| self.pending_rounds(s) >= b);
        (0..self.shape.sinks).filter(|s| full(*s)).collect()
    }

    /// The newest complete round and its clock.
    pub fn last_complete(&self) -> Option<&(u64, Clock)> {
        self.complete.last()
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The round being taken, if any.
    pub fn open_round(&self) -> Option<u64> {
        match &self.phase {
            Phase::Idle => None,
            Phase::Gating { round, .. } | Phase::Open { round, .. } => Some(*round),
        }
    }

    pub fn handle(&mut self, ev: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match ev {
            Event::Tick(now) => self.tick(now, &mut out),
            Event::Position { spout, round, offset } => {
                if let Phase::Gating { round: r, positions } = &mut self.phase {
                    if *r == round {
                        if let Some(p) = positions.get_mut(spout) {
                            *p = Some(offset);
                        }
                        self.maybe_announce(&mut out);
                    }
                }
            }
            Event::Drain => self.bounded = true,
            Event::Idle { spout, offset } => {
                if let Some(i) = self.idle.get_mut(spout) {
                    *i = Some(offset);
                }
            }
            Event::Busy { spout } => {
                if let Some(i) = self.idle.get_mut(spout) {
                    *i = None;
                }
            }
            Event::Eof { spout, offset } => {
                if let Some(e) = self.eof.get_mut(spout) {
                    *e = Some(offset);
                }
            }
            Event::Acked { bolt, round } => {
                if let Phase::Open { round: r, acked, .. } = &mut self.phase {
                    if *r == round && bolt < self.shape.bolts {
                        acked.insert(bolt);
                    }
                }
                self.progress(&mut out);
            }
            Event::Saved { bolt, round, crc } => {
                if let Phase::Open { round: r, saved, .. } = &mut self.phase {
                    if *r == round {
                        if let Some(s) = saved.get_mut(bolt) {
                            *s = Some(crc);
                        }
                    }
                }
                self.progress(&mut out);
            }
            Event::SinkCommitted { sink, round } => {
                if let Some(s) = self.sink_round.get_mut(sink) {
                    *s = Some(s.map_or(round, |old| old.max(round)));
                }
                // A held round goes on once no sink is at its bound.
                self.progress(&mut out);
                self.collect(&mut out);
                self.maybe_finish(&mut out);
            }
        }
        out
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.phase != Phase::Idle {
            self.check_overdue(now, out);
            return;
        }
        if self.finished {
            return;
        }
        let at_end = self.bounded && self.eof.iter().all(Option::is_some);
        if at_end {
            let end = Clock(self.eof.iter().map(|e| e.unwrap_or(0)).collect());
            // A round at the end clock taken in this run is the last one; once the
            // sinks have written it, the run is over. (A round restored from an
            // earlier run does not count: the sinks must write it again.)
            if self.final_completed && self.complete.last().is_some_and(|(_, c)| *c == end) {
                self.maybe_finish(out);
                return;
            }
        }
        // The interval counts from start: the first round comes one interval
        // after it (or a quarter of one, once every spout is idle with news).
        let last = *self.last_round_at.get_or_insert(now);
        let since = now.duration_since(last);
        let due = since >= self.interval || (since >= self.interval / IDLE_ROUNDS && self.idle_with_news());
        if due || at_end {
            let round = self.next_round;
            self.next_round += 1;
            self.last_round_at = Some(now);
            out.push(Action::Gate { round });
            self.phase = Phase::Gating { round, positions: vec![None; self.shape.spouts] };
            self.overdue = false;
            // With no spouts there is no position to wait for.
            self.maybe_announce(out);
        }
    }

    /// Every spout is idle and some stands past the newest complete round:
    /// a round now makes what they read durable (and visible to the sinks)
    /// without waiting for the rest of the interval.
    fn idle_with_news(&self) -> bool {
        if !self.idle.iter().all(Option::is_some) {
            return false;
        }
        let committed = |s: usize| self.complete.last().map_or(0, |(_, c)| c.get(s as u32));
        self.idle.iter().enumerate().any(|(s, at)| at.is_some_and(|at| at > committed(s)))
    }

    /// Says once that the open round is overdue, and what it waits for.
    fn check_overdue(&mut self, now: Instant, out: &mut Vec<Action>) {
        let all_saved = matches!(&self.phase, Phase::Open { saved, .. } if saved.iter().all(Option::is_some));
        if !self.held.is_empty() && all_saved {
            // A round that waits for nothing but a sink is not stuck: its time counts from the release.
            self.last_round_at = Some(now);
            return;
        }
        let (Some(timeout), Some(started)) = (self.round_timeout, self.last_round_at) else { return };
        if self.overdue || now.duration_since(started) < timeout {
            return;
        }
        self.overdue = true;
        let (round, waiting) = match &self.phase {
            Phase::Idle => return,
            Phase::Gating { round, positions } => (*round, missing(positions).map(Waiting::Position).collect()),
            Phase::Open { round, acked, saved, .. } => {
                let mut w: Vec<Waiting> =
                    (0..self.shape.bolts).filter(|b| !acked.contains(b)).map(Waiting::Ack).collect();
                w.extend(missing(saved).map(Waiting::Save));
                (*round, w)
            }
        };
        out.push(Action::Overdue { round, waiting });
    }

    /// Once every gated spout has reported its position, the positions are the
    /// round's clock: announce it and open the round.
    fn maybe_announce(&mut self, out: &mut Vec<Action>) {
        let Phase::Gating { round, positions } = &self.phase else { return };
        if !positions.iter().all(Option::is_some) {
            return;
        }
        let round = *round;
        let clock = Clock(positions.iter().map(|p| p.unwrap_or(0)).collect());
        out.push(Action::Announce { round, clock: clock.clone() });
        self.phase =
            Phase::Open { round, clock, acked: BTreeSet::new(), saved: vec![None; self.shape.bolts], ungated: false };
        self.progress(out);
    }

    fn progress(&mut self, out: &mut Vec<Action>) {
        let holding = self.holding();
        let Phase::Open { round, clock, acked, saved, ungated } = &mut self.phase else { return };
        if !*ungated && acked.len() == self.shape.bolts {
            if !holding.is_empty() {
                if holding != self.held {
                    self.held = holding.clone();
                    out.push(Action::Hold { round: *round, sinks: holding });
                }
                return;
            }
            self.held.clear();
            *ungated = true;
            out.push(Action::Ungate { round: *round });
        }
        if *ungated && saved.iter().all(Option::is_some) {
            let (round, clock) = (*round, clock.clone());
            let crcs = saved.iter().map(|c| c.unwrap_or(0)).collect();
            let last = self.end_clock().is_some_and(|end| end == clock);
            self.final_completed |= last;
            out.push(Action::Complete { round, clock: clock.clone(), crcs, last });
            self.complete.push((round, clock));
            if self.complete.len() > 2 {
                self.complete.remove(0);
            }
            self.recent.push_back(round);
            let most = self.pending_bound.iter().flatten().copied().max().unwrap_or(0).max(SINK_LAG_ROUNDS);
            while self.recent.len() > most {
                self.recent.pop_front();
            }
            self.phase = Phase::Idle;
            self.collect(out);
        }
    }

    /// Keeps the two newest complete rounds and the complete rounds since
    /// the round the slowest sink holds, back to [`SINK_LAG_ROUNDS`] rounds.
    fn collect(&mut self, out: &mut Vec<Action>) {
        let Some(&(newest, _)) = self.complete.last() else { return };
        let floor = self.recent.get(self.recent.len().saturating_sub(SINK_LAG_ROUNDS)).copied().unwrap_or(0);
        let oldest_sink = self.sink_round.iter().map(|r| r.unwrap_or(0)).min().unwrap_or(newest).max(floor);
        let mut keep: Vec<u64> = self.complete.iter().map(|(r, _)| *r).collect();
        if oldest_sink < newest {
            keep.push(newest);
        }
        keep.sort_unstable();
        keep.dedup();
        let below = oldest_sink.min(keep.first().copied().unwrap_or(newest));
        out.push(Action::Collect { keep, below });
    }

    /// The clock at the end of a bounded input, once every spout reached it.
    fn end_clock(&self) -> Option<Clock> {
        let eof: Option<Vec<u64>> = self.eof.iter().copied().collect();
        eof.filter(|_| self.bounded).map(Clock)
    }

    fn maybe_finish(&mut self, out: &mut Vec<Action>) {
        if self.finished || !self.bounded || self.phase != Phase::Idle {
            return;
        }
        if !self.eof.iter().all(Option::is_some) {
            return;
        }
        let end = Clock(self.eof.iter().map(|e| e.unwrap_or(0)).collect());
        let Some((round, clock)) = self.complete.last() else { return };
        if *clock == end && self.sink_round.iter().all(|r| r.is_some_and(|r| r >= *round)) {
            self.finished = true;
            out.push(Action::Finish);
        }
    }
}

/// The indexes of the entries not there yet.
fn missing<T>(v: &[Option<T>]) -> impl Iterator<Item = usize> + '_ {
    v.iter().enumerate().filter(|(_, x)| x.is_none()).map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shape() -> Shape {
        Shape { spouts: 2, bolts: 3, sinks: 1 }
    }

    #[test]
    fn a_round_open_past_its_timeout_is_overdue_once_naming_what_it_waits_for() {
        let t0 = Instant::now();
        let secs = |s| t0 + Duration::from_secs(s);
        let mut n = Negotiator::new(shape(), Duration::from_secs(1), false, None, 1)
            .with_round_timeout(Duration::from_secs(10));
        n.handle(Event::Tick(t0));
        assert_eq!(n.handle(Event::Tick(secs(1))), vec![Action::Gate { round: 1 }]);
        n.handle(Event::Position { spout: 0, round: 1, offset: 5 });
        assert!(n.handle(Event::Tick(secs(10))).is_empty(), "not yet");
        let overdue = Action::Overdue { round: 1, waiting: vec![Waiting::Position(1)] };
        assert_eq!(n.handle(Event::Tick(secs(11))), vec![overdue]);
        assert!(n.handle(Event::Tick(secs(30))).is_empty(), "said once");
        // Open, with one instance not acked and two not saved.
        let mut n = Negotiator::new(shape(), Duration::from_secs(1), false, None, 1)
            .with_round_timeout(Duration::from_secs(10));
        n.handle(Event::Tick(t0));
        n.handle(Event::Tick(secs(1)));
        n.handle(Event::Position { spout: 0, round: 1, offset: 5 });
        n.handle(Event::Position { spout: 1, round: 1, offset: 7 });
        n.handle(Event::Acked { bolt: 0, round: 1 });
        n.handle(Event::Acked { bolt: 2, round: 1 });
        n.handle(Event::Saved { bolt: 2, round: 1, crc: 9 });
        let a = n.handle(Event::Tick(secs(11)));
        let waiting = vec![Waiting::Ack(1), Waiting::Save(0), Waiting::Save(1)];
        assert_eq!(a, vec![Action::Overdue { round: 1, waiting }]);
        // Without a timeout (embedded), a round may take its time.
        let mut n = Negotiator::new(shape(), Duration::from_secs(1), false, None, 1);
        n.handle(Event::Tick(t0));
        n.handle(Event::Tick(secs(1)));
        assert!(n.handle(Event::Tick(secs(3600))).is_empty());
    }

    #[test]
    fn a_round_runs_in_order() {
        let t0 = Instant::now();
        let mut n = Negotiator::new(shape(), Duration::from_secs(1), false, None, 1);
        assert!(n.handle(Event::Tick(t0)).is_empty());
        let t0 = t0 + Duration::from_secs(1);
        assert_eq!(n.handle(Event::Tick(t0)), vec![Action::Gate { round: 1 }]);
        assert!(n.handle(Event::Position { spout: 0, round: 1, offset: 10 }).is_empty());
        let a = n.handle(Event::Position { spout: 1, round: 1, offset: 20 });
        assert_eq!(a, vec![Action::Announce { round: 1, clock: Clock(vec![10, 20]) }]);
        // A save may overtake the last acknowledgement; nothing completes before the spouts go on.
        assert!(n.handle(Event::Acked { bolt: 0, round: 1 }).is_empty());
        assert!(n.handle(Event::Saved { bolt: 0, round: 1, crc: 5 }).is_empty());
        assert!(n.handle(Event::Acked { bolt: 1, round: 1 }).is_empty());
        assert_eq!(n.handle(Event::Acked { bolt: 2, round: 1 }), vec![Action::Ungate { round: 1 }]);
        assert!(n.handle(Event::Saved { bolt: 1, round: 1, crc: 6 }).is_empty());
        // A tick during an open round does nothing.
        assert!(n.handle(Event::Tick(t0 + Duration::from_secs(5))).is_empty());
        let a = n.handle(Event::Saved { bolt: 2, round: 1, crc: 7 });
        assert_eq!(a[0], Action::Complete { round: 1, clock: Clock(vec![10, 20]), crcs: vec![5, 6, 7], last: false });
        // The next round waits for the interval.
        assert!(n.handle(Event::Tick(t0 + Duration::from_millis(500))).is_empty());
        assert_eq!(n.handle(Event::Tick(t0 + Duration::from_secs(1))), vec![Action::Gate { round: 2 }]);
    }

    #[test]
    fn an_idle_input_is_snapshotted_without_waiting_for_the_interval() {
        let t0 = Instant::now();
        let ms = |m| t0 + Duration::from_millis(m);
        let mut n = Negotiator::new(shape(), Duration::from_secs(1), false, None, 1);
        n.handle(Event::Tick(t0));
        n.handle(Event::Idle { spout: 0, offset: 10 });
        n.handle(Event::Idle { spout: 1, offset: 0 });
        assert!(n.handle(Event::Tick(ms(240))).is_empty(), "not sooner than a quarter of the interval");
        n.handle(Event::Busy { spout: 1 });
        assert!(n.handle(Event::Tick(ms(300))).is_empty(), "spout 1 reads again");
        n.handle(Event::Idle { spout: 1, offset: 0 });
        assert_eq!(n.handle(Event::Tick(ms(310))), vec![Action::Gate { round: 1 }]);
        n.handle(Event::Position { spout: 0, round: 1, offset: 10 });
        n.handle(Event::Position { spout: 1, round: 1, offset: 0 });
        for bolt in 0..3 {
            n.handle(Event::Acked { bolt, round: 1 });
            n.handle(Event::Saved { bolt, round: 1, crc: 1 });
        }
        assert_eq!(n.last_complete().map(|c| c.0), Some(1));
        // Still idle, with nothing new since the round: the interval rules again.
        assert!(n.handle(Event::Tick(ms(900))).is_empty());
        // Spout 1 reads, and pauses again: a round at once (a quarter after the last).
        n.handle(Event::Busy { spout: 1 });
        assert!(n.handle(Event::Tick(ms(950))).is_empty(), "spout 1 is busy");
        n.handle(Event::Idle { spout: 1, offset: 5 });
        assert_eq!(n.handle(Event::Tick(ms(960))), vec![Action::Gate { round: 2 }]);
        // Idle spouts of an empty input take no round before the interval.
        let mut n = Negotiator::new(shape(), Duration::from_secs(1), false, None, 1);
        n.handle(Event::Tick(t0));
        n.handle(Event::Idle { spout: 0, offset: 0 });
        n.handle(Event::Idle { spout: 1, offset: 0 });
        assert!(n.handle(Event::Tick(ms(900))).is_empty());
        assert_eq!(n.handle(Event::Tick(ms(1000))), vec![Action::Gate { round: 1 }]);
    }

    /// Takes round after round of `shape()`; returns every action.
    fn rounds(n: &mut Negotiator, t0: Instant, count: u64) -> Vec<Action> {
        let mut out = Vec::new();
        for i in 1..=count {
            out.extend(n.handle(Event::Tick(t0 + Duration::from_secs(i))));
            let round = n.open_round().expect("a round opens on the interval");
            for spout in 0..2 {
                out.extend(n.handle(Event::Position { spout, round, offset: i * 10 }));
            }
            for bolt in 0..3 {
                out.extend(n.handle(Event::Acked { bolt, round }));
                out.extend(n.handle(Event::Saved { bolt, round, crc: 1 }));
            }
        }
        out
    }

    #[test]
    fn a_sink_that_lags_pins_a_bounded_number_of_rounds() {
        let t0 = Instant::now();
        let mut n = Negotiator::new(shape(), Duration::from_secs(1), false, None, 1);
        n.handle(Event::Tick(t0));
        let actions = rounds(&mut n, t0, 100);
        // The sink never made a round durable: the rounds kept for it stop at the lag bound.
        let Some(Action::Collect { keep, below }) = actions.iter().rev().find(|a| matches!(a, Action::Collect { .. }))
        else {
            panic!("no collection")
        };
        assert_eq!(*below, 100 - SINK_LAG_ROUNDS as u64 + 1);
        assert_eq!(keep, &vec![99, 100]);
        // A sink that keeps up lets everything but the two newest go.
        let mut n = Negotiator::new(shape(), Duration::from_secs(1), false, None, 1);
        n.handle(Event::Tick(t0));
        rounds(&mut n, t0, 10);
        let a = n.handle(Event::SinkCommitted { sink: 0, round: 10 });
        assert_eq!(a, vec![Action::Collect { keep: vec![9, 10], below: 9 }]);
    }

    #[test]
    fn a_sink_at_its_pending_bound_holds_the_spouts_until_it_writes() {
        let t0 = Instant::now();
        let mut n = Negotiator::new(shape(), Duration::from_secs(1), false, None, 1)
            .with_round_timeout(Duration::from_secs(10))
            .with_pending_bounds(vec![Some(3)]);
        n.handle(Event::Tick(t0));
        let a = rounds(&mut n, t0, 3);
        assert_eq!(a.iter().filter(|a| matches!(a, Action::Complete { .. })).count(), 3);
        assert_eq!(n.pending_rounds(0), 3);
        // Round 4 is taken, but its spouts stay gated: the sink has 3 rounds it did not write.
        assert_eq!(n.handle(Event::Tick(t0 + Duration::from_secs(4))), vec![Action::Gate { round: 4 }]);
        for spout in 0..2 {
            n.handle(Event::Position { spout, round: 4, offset: 40 });
        }
        let mut held = Vec::new();
        for bolt in 0..3 {
            held.extend(n.handle(Event::Acked { bolt, round: 4 }));
            held.extend(n.handle(Event::Saved { bolt, round: 4, crc: 1 }));
        }
        assert_eq!(held, vec![Action::Hold { round: 4, sinks: vec![0] }]);
        // Waiting for a sink is not an overdue round, however long it takes.
        assert!(n.handle(Event::Tick(t0 + Duration::from_secs(100))).is_empty());
        // The sink writes round 1: two rounds pending, under the bound, so the round goes on.
        let a = n.handle(Event::SinkCommitted { sink: 0, round: 1 });
        assert_eq!(a.first(), Some(&Action::Ungate { round: 4 }));
        assert!(matches!(a.get(1), Some(Action::Complete { round: 4, .. })));
        assert_eq!(n.pending_rounds(0), 3);
        // A held round whose bolt has not saved is overdue all the same, naming the bolt.
        let mut n = Negotiator::new(shape(), Duration::from_secs(1), false, None, 1)
            .with_round_timeout(Duration::from_secs(10))
            .with_pending_bounds(vec![Some(3)]);
        n.handle(Event::Tick(t0));
        rounds(&mut n, t0, 3);
        n.handle(Event::Tick(t0 + Duration::from_secs(4)));
        for spout in 0..2 {
            n.handle(Event::Position { spout, round: 4, offset: 40 });
        }
        for bolt in 0..3 {
            n.handle(Event::Acked { bolt, round: 4 });
        }
        n.handle(Event::Saved { bolt: 0, round: 4, crc: 1 });
        n.handle(Event::Saved { bolt: 1, round: 4, crc: 1 });
        let a = n.handle(Event::Tick(t0 + Duration::from_secs(15)));
        assert_eq!(a, vec![Action::Overdue { round: 4, waiting: vec![Waiting::Save(2)] }]);
        // Without a bound (a WebAssembly sink), a sink that writes nothing holds nothing.
        let mut n = Negotiator::new(shape(), Duration::from_secs(1), false, None, 1);
        n.handle(Event::Tick(t0));
        let a = rounds(&mut n, t0, 50);
        assert_eq!(a.iter().filter(|a| matches!(a, Action::Complete { .. })).count(), 50);
    }

    #[test]
    fn a_pending_bound_over_the_lag_rounds_still_collects_at_the_lag() {
        let t0 = Instant::now();
        let mut n =
            Negotiator::new(shape(), Duration::from_secs(1), false, None, 1).with_pending_bounds(vec![Some(60)]);
        n.handle(Event::Tick(t0));
        let actions = rounds(&mut n, t0, 50);
        assert_eq!(n.pending_rounds(0), 50);
        let Some(Action::Collect { below, .. }) = actions.iter().rev().find(|a| matches!(a, Action::Collect { .. }))
        else {
            panic!("no collection")
        };
        assert_eq!(*below, 50 - SINK_LAG_ROUNDS as u64 + 1);
    }

    #[test]
    fn bounded_input_finishes_after_the_sinks_commit_the_end() {
        let t0 = Instant::now();
        let mut n = Negotiator::new(
            Shape { spouts: 1, bolts: 1, sinks: 1 },
            Duration::from_secs(100),
            true,
            Some((4, Clock(vec![3]))),
            5,
        );
        n.handle(Event::Eof { spout: 0, offset: 9 });
        // At the end of input a round starts at once, whatever the interval.
        assert_eq!(n.handle(Event::Tick(t0)), vec![Action::Gate { round: 5 }]);
        n.handle(Event::Position { spout: 0, round: 5, offset: 9 });
        n.handle(Event::Acked { bolt: 0, round: 5 });
        let a = n.handle(Event::Saved { bolt: 0, round: 5, crc: 1 });
        assert!(matches!(a[0], Action::Complete { round: 5, last: true, .. }));
        assert!(!n.is_finished());
        assert!(n.handle(Event::Tick(t0)).is_empty());
        let a = n.handle(Event::SinkCommitted { sink: 0, round: 5 });
        assert_eq!(a.last(), Some(&Action::Finish));
        assert!(n.is_finished());
    }

    #[test]
    fn draining_a_followed_input_ends_with_a_final_round() {
        let t0 = Instant::now();
        let mut n = Negotiator::new(Shape { spouts: 1, bolts: 1, sinks: 1 }, Duration::from_secs(100), false, None, 1);
        // Following: the spout's end of file means nothing.
        n.handle(Event::Eof { spout: 0, offset: 3 });
        assert!(n.handle(Event::Tick(t0)).is_empty());
        n.handle(Event::Drain);
        n.handle(Event::Eof { spout: 0, offset: 7 });
        assert_eq!(n.handle(Event::Tick(t0)), vec![Action::Gate { round: 1 }]);
        n.handle(Event::Position { spout: 0, round: 1, offset: 7 });
        n.handle(Event::Acked { bolt: 0, round: 1 });
        n.handle(Event::Saved { bolt: 0, round: 1, crc: 1 });
        assert_eq!(n.handle(Event::SinkCommitted { sink: 0, round: 1 }).last(), Some(&Action::Finish));
    }

    #[test]
    fn a_rerun_with_nothing_new_still_commits_to_the_sinks_then_finishes() {
        let t0 = Instant::now();
        let mut n = Negotiator::new(
            Shape { spouts: 1, bolts: 1, sinks: 1 },
            Duration::from_secs(100),
            true,
            Some((4, Clock(vec![9]))),
            5,
        );
        n.handle(Event::Eof { spout: 0, offset: 9 });
        assert_eq!(n.handle(Event::Tick(t0)), vec![Action::Gate { round: 5 }]);
        n.handle(Event::Position { spout: 0, round: 5, offset: 9 });
        n.handle(Event::Acked { bolt: 0, round: 5 });
        n.handle(Event::Saved { bolt: 0, round: 5, crc: 1 });
        assert!(n.handle(Event::Tick(t0)).is_empty());
        assert_eq!(n.handle(Event::SinkCommitted { sink: 0, round: 5 }).last(), Some(&Action::Finish));
    }

    proptest! {
        /// Whole rounds, sink reports of any complete round and long waits in
        /// any order: a sink never has more complete rounds unwritten than its
        /// bound, a held round is never overdue, and once the sink reports the
        /// newest complete round the held round goes on and completes.
        #[test]
        fn backpressure_keeps_the_bound_and_lets_go(script in prop::collection::vec((0u8..3, 0usize..40), 0..300), bound in 1usize..6) {
            let t0 = Instant::now();
            let sh = Shape { spouts: 1, bolts: 1, sinks: 1 };
            let mut n = Negotiator::new(sh, Duration::from_secs(1), false, None, 1)
                .with_round_timeout(Duration::from_secs(5))
                .with_pending_bounds(vec![Some(bound)]);
            let (mut now, mut completed, mut sink_at, mut holds) = (t0, Vec::<u64>::new(), 0u64, 0);
            let mut held = false;
            let mut check = |actions: Vec<Action>, completed: &mut Vec<u64>, sink_at: u64| -> Result<(), TestCaseError> {
                for a in actions {
                    match a {
                        Action::Complete { round, .. } => completed.push(round),
                        Action::Overdue { .. } => prop_assert!(!held, "a held round was overdue"),
                        Action::Hold { .. } => {
                            holds += 1;
                            held = true;
                        }
                        Action::Ungate { .. } => held = false,
                        _ => {}
                    }
                    prop_assert!(completed.iter().filter(|r| **r > sink_at).count() <= bound);
                }
                Ok(())
            };
            for (op, k) in script {
                let actions = match op {
                    0 => {
                        // One whole round, as far as the negotiator lets it go.
                        now += Duration::from_secs(1);
                        let mut a = n.handle(Event::Tick(now));
                        if let Some(round) = n.open_round() {
                            a.extend(n.handle(Event::Position { spout: 0, round, offset: round }));
                            a.extend(n.handle(Event::Acked { bolt: 0, round }));
                            a.extend(n.handle(Event::Saved { bolt: 0, round, crc: 0 }));
                        }
                        a
                    }
                    1 => {
                        let r = completed.iter().rev().nth(k).copied().unwrap_or(0);
                        sink_at = sink_at.max(r);
                        n.handle(Event::SinkCommitted { sink: 0, round: r })
                    }
                    _ => {
                        now += Duration::from_secs(k as u64);
                        n.handle(Event::Tick(now))
                    }
                };
                check(actions, &mut completed, sink_at)?;
            }
            // The sink catches up: whatever was held completes.
            if let Some(&newest) = completed.last() {
                sink_at = newest;
                let a = n.handle(Event::SinkCommitted { sink: 0, round: newest });
                let open = n.open_round();
                check(a, &mut completed, sink_at)?;
                if let Some(open) = open.filter(|_| holds > 0) {
                    prop_assert!(completed.contains(&open) || n.open_round() == Some(open));
                }
            }
        }
    }

    proptest! {
        /// Whatever order acknowledgements, saves, positions and ticks arrive in,
        /// and whatever stale or duplicate events are mixed in: the spouts are
        /// let go only after every bolt has the announcement, a round completes
        /// only after every instance saved it, rounds complete in increasing
        /// order with clocks that never go back, and collection never deletes
        /// the newest complete round; a sink with a pending bound never has
        /// more complete rounds unwritten than its bound (the spouts are held
        /// once it has that many, and let go once it writes).
        #[test]
        fn safety_under_any_event_order(script in prop::collection::vec((0u8..8, 0usize..4, 0u64..4), 0..400)) {
            let t0 = Instant::now();
            let sh = shape();
            const BOUND: usize = 2;
            let mut n = Negotiator::new(sh, Duration::from_millis(10), false, None, 1)
                .with_pending_bounds(vec![Some(BOUND)]);
            let mut completed: Vec<u64> = Vec::new();
            let mut sink_at = 0u64;
            let mut held: Option<u64> = None;
            let mut positions = vec![0u64; sh.spouts];
            let mut now = t0;
            let mut acked: BTreeSet<(u64, usize)> = BTreeSet::new();
            let mut saved: BTreeSet<(u64, usize)> = BTreeSet::new();
            let mut announced: Option<(u64, Clock)> = None;
            let mut last_complete: Option<(u64, Clock)> = None;
            let mut last_gate: Option<Instant> = None;
            let mut idle: Vec<Option<u64>> = vec![None; sh.spouts];
            for (op, who, delta) in script {
                let round = n.open_round().unwrap_or(0);
                let ev = match op {
                    0 => { now += Duration::from_millis(1 + delta); Event::Tick(now) }
                    1 => {
                        let s = who % sh.spouts;
                        positions[s] += delta;
                        Event::Position { spout: s, round, offset: positions[s] }
                    }
                    2 => { acked.insert((round, who % sh.bolts)); Event::Acked { bolt: who % sh.bolts, round } }
                    3 => {
                        // Only an instance that has the announcement can save.
                        if !acked.contains(&(round, who % sh.bolts)) { continue; }
                        saved.insert((round, who % sh.bolts));
                        Event::Saved { bolt: who % sh.bolts, round, crc: 0 }
                    }
                    4 => Event::Acked { bolt: who % sh.bolts, round: round.saturating_sub(1) },
                    5 => {
                        // The sink writes a complete round (or reports a stale one).
                        let r = completed.iter().rev().nth(delta as usize).copied().unwrap_or(delta);
                        sink_at = sink_at.max(r);
                        Event::SinkCommitted { sink: 0, round: r }
                    }
                    6 => {
                        let s = who % sh.spouts;
                        positions[s] += delta;
                        idle[s] = Some(positions[s]);
                        Event::Idle { spout: s, offset: positions[s] }
                    }
                    _ => { idle[who % sh.spouts] = None; Event::Busy { spout: who % sh.spouts } }
                };
                // A round comes after the interval, or (idle rounds) after a
                // quarter of it when every spout is idle past the last complete round.
                let since = now.duration_since(last_gate.unwrap_or(t0));
                let committed = |s: usize| last_complete.as_ref().map_or(0, |(_, c)| c.get(s as u32));
                let idle_news = idle.iter().all(Option::is_some)
                    && idle.iter().enumerate().any(|(s, at)| at.is_some_and(|at| at > committed(s)));
                let gate_allowed = since >= Duration::from_millis(10)
                    || (since >= Duration::from_millis(10) / IDLE_ROUNDS && idle_news);
                for a in n.handle(ev) {
                    match a {
                        Action::Announce { round, clock } => announced = Some((round, clock)),
                        Action::Ungate { round } => {
                            for b in 0..sh.bolts { prop_assert!(acked.contains(&(round, b))); }
                            prop_assert!(completed.iter().filter(|r| **r > sink_at).count() < BOUND);
                            prop_assert!(held.is_none_or(|h| h == round));
                            held = None;
                        }
                        Action::Hold { round, sinks } => {
                            prop_assert_eq!(sinks, vec![0]);
                            prop_assert!(completed.iter().filter(|r| **r > sink_at).count() >= BOUND);
                            prop_assert!(held.is_none(), "a hold is said once");
                            held = Some(round);
                        }
                        Action::Complete { round, clock, .. } => {
                            for b in 0..sh.bolts { prop_assert!(saved.contains(&(round, b))); }
                            prop_assert_eq!(announced.as_ref().map(|a| a.0), Some(round));
                            if let Some((r, c)) = &last_complete {
                                prop_assert!(round > *r);
                                prop_assert!(clock.dominates(c));
                            }
                            last_complete = Some((round, clock));
                            completed.push(round);
                            // Backpressure: a sink never has more than its bound of complete rounds unwritten.
                            prop_assert!(completed.iter().filter(|r| **r > sink_at).count() <= BOUND);
                        }
                        Action::Collect { keep, below } => {
                            if let Some((r, _)) = &last_complete {
                                prop_assert!(keep.contains(r) || *r >= below);
                            }
                        }
                        Action::Gate { .. } => {
                            // Idle or not, rounds are never closer than a fraction of the interval.
                            prop_assert!(gate_allowed);
                            last_gate = Some(now);
                        }
                        Action::Finish => {}
                        Action::Overdue { .. } => prop_assert!(false, "no round timeout was set"),
                    }
                }
            }
        }
    }
}
