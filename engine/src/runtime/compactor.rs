//! The compactor: after a round completes, folds each bolt instance's chain
//! into a new base when it has grown long, in the background, where the
//! negotiator runs. A failed compaction only costs restore time: the chain
//! it would have replaced stays, so it is reported and passed over.

use std::sync::Arc;

use anyhow::Result;
use crossbeam_channel::Receiver;

use super::shell::Coordinator;
use crate::channel::{Inbox, Polled, Shutdown};
use crate::store::{CommitRecord, FileStore};

pub(super) struct Compactor {
    pub(super) store: FileStore,
    pub(super) jobs: Receiver<CommitRecord>,
    pub(super) shutdown: Shutdown,
    pub(super) coord: Arc<dyn Coordinator>,
}

impl Compactor {
    pub(super) fn run(self) -> Result<()> {
        let jobs = Inbox::new(self.jobs, self.shutdown);
        loop {
            let mut commit = match jobs.poll() {
                Polled::Msg(c) => c,
                Polled::Idle => continue,
                Polled::Closed => return Ok(()),
            };
            // Only the newest complete round is worth compacting.
            while let Some(newer) = jobs.try_next() {
                commit = newer;
            }
            for f in &commit.files {
                if jobs.shutdown().is_aborted() || self.coord.check_fence().is_err() {
                    return Ok(());
                }
                let started = std::time::Instant::now();
                match self.store.compact(&commit, &f.processor, f.instance) {
                    Ok(true) => tracing::debug!(
                        "compacted {}/{} at round {} in {:?}",
                        f.processor,
                        f.instance,
                        commit.round,
                        started.elapsed()
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(
                        "compaction of {}/{} at round {} failed: {e}",
                        f.processor,
                        f.instance,
                        commit.round
                    ),
                }
            }
        }
    }
}
