//! The snapshot writer: writes finished snapshots durably, off the bolts'
//! threads, and tells the negotiator each one is saved.

use std::sync::Arc;

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender};

use super::shell::Coordinator;
use crate::channel::{Inbox, Polled, Report, Shutdown};
use crate::core::negotiator::Event;
use crate::snapshot::{FileStore, SnapshotFile};

/// One snapshot to write, from bolt instance `bolt_number`.
pub(super) struct SaveJob {
    pub(super) bolt_number: usize,
    pub(super) file: SnapshotFile,
}

pub(super) struct Writer {
    pub(super) store: FileStore,
    pub(super) jobs: Receiver<SaveJob>,
    pub(super) report: Sender<Report>,
    pub(super) shutdown: Shutdown,
    pub(super) coord: Arc<dyn Coordinator>,
}

impl Writer {
    pub(super) fn run(self) -> Result<()> {
        let jobs = Inbox::new(self.jobs, self.shutdown);
        loop {
            let job = match jobs.poll() {
                Polled::Msg(job) => job,
                Polled::Idle => continue,
                Polled::Closed => return Ok(()),
            };
            self.coord.check_fence()?;
            let crc = self
                .store
                .write_snapshot(&job.file)
                .with_context(|| format!("cannot save the snapshot of {}/{}", job.file.processor, job.file.instance))?;
            let saved = Event::Saved { bolt: job.bolt_number, round: job.file.round, crc };
            let _ = self.report.send(Report::Event(saved));
        }
    }
}
