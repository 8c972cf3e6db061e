//! The snapshot writer: writes each bolt instance's delta of a round as it
//! streams in, syncs it off the bolts' threads, and tells the negotiator
//! it is saved.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use crossbeam_channel::{Receiver, Sender};

use super::progress::Stats;
use super::shell::Coordinator;
use crate::channel::{Inbox, Polled, Report, Shutdown};
use crate::core::negotiator::Event;
use crate::store::{DataHeader, DataWriter, FileStore};

/// Chunks in flight from the bolts to the writer (each about a MiB).
pub(super) const SAVE_QUEUE: usize = 16;

/// One step of saving a delta.
pub(super) enum Step {
    Begin(Box<DataHeader>),
    /// An entries batch; keys continue the previous chunk's.
    Chunk(Vec<u8>),
    End,
}

/// A step from bolt instance `bolt_number`.
pub(super) struct SaveJob {
    pub(super) bolt_number: usize,
    pub(super) step: Step,
}

pub(super) struct Writer {
    pub(super) store: FileStore,
    pub(super) jobs: Receiver<SaveJob>,
    pub(super) report: Sender<Report>,
    pub(super) shutdown: Shutdown,
    pub(super) coord: Arc<dyn Coordinator>,
    pub(super) stats: Arc<Stats>,
    /// `hailstorm_round_bytes_total` of the topology.
    pub(super) round_bytes: crate::observe::Count,
}

impl Writer {
    pub(super) fn run(self) -> Result<()> {
        let jobs = Inbox::new(self.jobs, self.shutdown);
        let mut open: BTreeMap<usize, (DataWriter, DataHeader)> = BTreeMap::new();
        loop {
            let job = match jobs.poll() {
                Polled::Msg(job) => job,
                Polled::Idle => continue,
                Polled::Closed => return Ok(()),
            };
            let n = job.bolt_number;
            match job.step {
                Step::Begin(header) => {
                    self.coord.check_fence()?;
                    let w = self.store.delta_writer(&header).with_context(|| what(&header))?;
                    open.insert(n, (w, *header));
                }
                Step::Chunk(entries) => {
                    let (w, h) = open.get_mut(&n).ok_or_else(|| anyhow!("internal: a chunk of no delta"))?;
                    w.block(&entries).with_context(|| what(h))?;
                }
                Step::End => {
                    let (w, h) = open.remove(&n).ok_or_else(|| anyhow!("internal: the end of no delta"))?;
                    self.coord.check_fence()?;
                    let bytes = w.bytes();
                    let crc = w.finish().with_context(|| what(&h))?;
                    self.stats.saved_bytes.fetch_add(bytes, Ordering::Relaxed);
                    self.round_bytes.inc_by(bytes);
                    let saved = Event::Saved { bolt: n, round: h.round, crc };
                    let _ = self.report.send(Report::Event(saved));
                }
            }
        }
    }
}

fn what(h: &DataHeader) -> String {
    format!("cannot save the snapshot of {}/{}", h.processor, h.instance)
}
