//! Fencing: a worker writes to shared storage (snapshots, commit records,
//! sink output) only while it holds a lease on its ZooKeeper session and its
//! epoch is current; a round becomes complete only through a ZooKeeper write
//! that fails once the leader's session or epoch is gone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::state::{json, Complete, Paths, SinkWaiting};
use super::zk::Zk;
use crate::channel::Shutdown;
use crate::runtime::Coordinator;
use crate::store::{CommitRecord, FileStore};

/// The lease that lets a worker write to shared storage: held while the
/// last successful ZooKeeper exchange is younger than `limit`.
pub(super) struct Lease {
    base: Instant,
    last_ok_ms: AtomicU64,
    limit: Duration,
}

impl Lease {
    /// A lease renewed now, lasting `limit` after each renewal.
    pub(super) fn new(limit: Duration) -> Lease {
        let l = Lease { base: Instant::now(), last_ok_ms: AtomicU64::new(0), limit };
        l.renew();
        l
    }

    pub(super) fn renew(&self) {
        self.last_ok_ms.store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn held(&self) -> bool {
        let age = (self.base.elapsed().as_millis() as u64).saturating_sub(self.last_ok_ms.load(Ordering::Relaxed));
        Duration::from_millis(age) < self.limit
    }
}

/// The distributed [`Coordinator`] of one epoch on one worker.
pub(super) struct ClusterCoordinator {
    pub(super) zk: Arc<Zk>,
    pub(super) me: String,
    pub(super) topology: String,
    pub(super) epoch: u64,
    pub(super) world_version: i32,
    pub(super) lease: Arc<Lease>,
    /// Aborted once the epoch is over on this worker.
    pub(super) shutdown: Shutdown,
}

impl Coordinator for ClusterCoordinator {
    fn check_fence(&self) -> Result<()> {
        if self.shutdown.is_aborted() {
            bail!("fenced: epoch {} of `{}` is over", self.epoch, self.topology);
        }
        if !self.lease.held() {
            bail!(
                "fenced: worker {} has not heard from ZooKeeper for longer than its lease; it writes nothing more for epoch {}",
                self.me,
                self.epoch
            );
        }
        Ok(())
    }

    fn sink_waits(&self, sink: &str, why: Option<&str>) {
        let path = Paths::sink_waiting(&self.topology, sink);
        let done = match why {
            Some(why) => {
                let note = SinkWaiting { epoch: self.epoch, why: why.to_string(), since_ms: crate::store::now_ms() };
                self.zk.ensure(&Paths::sinks_waiting(&self.topology)).and_then(|()| self.zk.put(&path, &json(&note)?))
            }
            None => self.zk.delete(&path),
        };
        if let Err(e) = done {
            tracing::debug!("cannot note in ZooKeeper that sink `{sink}` waits: {e:#}");
        }
    }

    fn record_complete(&self, store: &FileStore, record: &CommitRecord) -> Result<()> {
        self.check_fence()?;
        store.write_commit(record).context("cannot record a complete snapshot")?;
        let before = self.zk.get_json::<Complete>(&Paths::complete(&self.topology))?.map(|(c, _)| c.round);
        let c = Complete {
            round: record.round,
            previous: before.filter(|r| *r != record.round),
            epoch: self.epoch,
            clock: record.clock.clone(),
            at_ms: crate::store::now_ms(),
        };
        let world = Paths::world(&self.topology);
        let guard = Paths::worker(&self.me);
        self.zk.fenced_put(&guard, Some((&world, self.world_version)), &Paths::complete(&self.topology), &json(&c)?)
    }
}
