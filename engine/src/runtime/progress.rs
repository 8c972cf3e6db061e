//! What a run tells people: shared counters, progress lines, the summary.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::core::clock::{Clock, INFINITY};
use crate::core::plan::Plan;
use crate::observe::{clamp, Metrics};

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub records: u64,
    pub tuples: u64,
    pub elapsed: Duration,
    pub rounds: u64,
    pub last_round: Option<u64>,
    pub last_clock: String,
    /// Bytes of deltas this process wrote (compaction aside).
    pub saved_bytes: u64,
    /// Time to start and restore the bolt instances placed here.
    pub restore: Duration,
}

/// Counters the instances update and the progress line reads.
pub(super) struct Stats {
    pub(super) records: AtomicU64,
    pub(super) tuples: AtomicU64,
    pub(super) saved_bytes: AtomicU64,
    pub(super) restore_micros: AtomicU64,
    /// Per bolt instance, per partition: the instance's LWM.
    lwm: Vec<Vec<AtomicU64>>,
    /// Per bolt instance: it runs here and has reported an LWM.
    active: Vec<AtomicBool>,
}

impl Stats {
    pub(super) fn new(plan: &Plan, start: &Clock) -> Stats {
        Stats {
            records: AtomicU64::new(0),
            tuples: AtomicU64::new(0),
            saved_bytes: AtomicU64::new(0),
            restore_micros: AtomicU64::new(0),
            lwm: (0..plan.bolt_instances())
                .map(|_| (0..plan.spout_instances()).map(|i| AtomicU64::new(start.get(i as u32))).collect())
                .collect(),
            active: (0..plan.bolt_instances()).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Sets the LWM gauges: per partition, the minimum over the bolt
    /// instances here (-1 before any reported, or when unbounded).
    pub(super) fn publish(&self, metrics: &Metrics, topology: &str, plan: &Plan) {
        for (p, part) in plan.partitions.iter().enumerate() {
            let lwm = self
                .lwm
                .iter()
                .zip(&self.active)
                .filter(|(_, a)| a.load(Ordering::Relaxed))
                .filter_map(|(inst, _)| inst.get(p).map(|a| a.load(Ordering::Relaxed)))
                .min()
                .filter(|&v| v != INFINITY);
            metrics.lwm.with_label_values(&[topology, part.name.as_str()]).set(lwm.map_or(-1, clamp));
        }
    }

    /// Records bolt instance `n`'s new LWM.
    pub(super) fn set_lwm(&self, n: usize, lwm: &Clock) {
        if let Some(a) = self.active.get(n) {
            a.store(true, Ordering::Relaxed);
        }
        if let Some(mine) = self.lwm.get(n) {
            for (p, a) in mine.iter().enumerate() {
                a.store(lwm.get(p as u32), Ordering::Relaxed);
            }
        }
    }

    /// The pointwise minimum of every bolt instance's LWM.
    fn lwm(&self, partitions: usize) -> Clock {
        Clock(
            (0..partitions)
                .map(|p| {
                    self.lwm
                        .iter()
                        .map(|inst| inst.get(p).map_or(INFINITY, |a| a.load(Ordering::Relaxed)))
                        .min()
                        .unwrap_or(INFINITY)
                })
                .collect(),
        )
    }

    pub(super) fn summary(&self, started: Instant, plan: &Plan, rounds: u64, last: Option<&(u64, Clock)>) -> Summary {
        let (last_round, last_clock) = match last {
            Some((r, c)) => (Some(*r), plan.show_clock(c)),
            None => (None, String::new()),
        };
        Summary {
            records: self.records.load(Ordering::Relaxed),
            tuples: self.tuples.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
            rounds,
            last_round,
            last_clock,
            saved_bytes: self.saved_bytes.load(Ordering::Relaxed),
            restore: Duration::from_micros(self.restore_micros.load(Ordering::Relaxed)),
        }
    }
}

/// Prints a progress line every so often.
pub(super) struct Progress {
    every: Option<Duration>,
    started: Instant,
    last: Instant,
    last_records: u64,
}

impl Progress {
    pub(super) fn new(every: Option<Duration>, started: Instant) -> Progress {
        Progress { every, started, last: Instant::now(), last_records: 0 }
    }

    /// Prints a line if one is due.
    pub(super) fn tick(&mut self, stats: &Stats, plan: &Plan, last: Option<&(u64, Clock)>) {
        let Some(every) = self.every else { return };
        if self.last.elapsed() < every {
            return;
        }
        let records = stats.records.load(Ordering::Relaxed);
        let rate = records.saturating_sub(self.last_records) as f64 / self.last.elapsed().as_secs_f64();
        let snap = match last {
            Some((r, c)) => format!("snapshot #{r} complete at {}", plan.show_clock(c)),
            None => "no snapshot complete yet".into(),
        };
        crate::observe::logs::info(format_args!(
            "[{:>6.1}s] {} records ({}/s) · LWM {} · {}",
            self.started.elapsed().as_secs_f64(),
            human(records as f64),
            human(rate),
            plan.show_clock(&stats.lwm(plan.spout_instances())),
            snap
        ));
        self.last = Instant::now();
        self.last_records = records;
    }
}

/// 1234567 → "1.23M".
pub fn human(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2}G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}
