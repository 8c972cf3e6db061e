//! The lock of an object store for one embedded run: a lease object that
//! names its holder, the run's number and when the lease ends. It is taken
//! by a create-only put (or, once the old lease ended, a put conditional on
//! the version read), renewed the same way, and given back by ending it.
//! Each holder numbers its rounds from its run number, so no two runs ever
//! write objects of the same name.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use object_store::{PutMode, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::Remote;
use crate::store::{decode, encode, now_ms, StoreError};

const KIND_LEASE: u8 = 6;
/// A lease lasts this long after its last renewal.
const LEASE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecord {
    run: u64,
    host: String,
    pid: u32,
    expires_ms: u64,
}

/// A held lease; renewed in the background until dropped.
#[derive(Debug)]
pub struct Lease {
    pub run: u64,
    fence: Arc<Fence>,
    stop: Arc<AtomicBool>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn version(meta: &object_store::ObjectMeta) -> UpdateVersion {
    UpdateVersion { e_tag: meta.e_tag.clone(), version: meta.version.clone() }
}

impl Lease {
    /// Takes the lease of the store, waiting for one a crashed holder left
    /// to end (one of a process of this host that is gone ends at once); a
    /// lease its holder renews meanwhile is an error (another run is on).
    pub fn take(remote: Arc<Remote>) -> Result<Lease, StoreError> {
        Lease::take_for(remote, LEASE)
    }

    /// `take`, for a lease of `lease` (renewed every quarter of it).
    pub fn take_for(remote: Arc<Remote>, lease: Duration) -> Result<Lease, StoreError> {
        let path = remote.root().join("LEASE");
        let mut told = false;
        // The end of the lease seen first: a holder that renews it is alive.
        let mut seen = None;
        loop {
            let (run, mode) = match remote.get_meta(&path)? {
                None => (1, PutMode::Create),
                Some((bytes, meta)) => {
                    let (old, _): (LeaseRecord, u32) =
                        decode(KIND_LEASE, &bytes).map_err(|why| StoreError::Corrupt { path: path.clone(), why })?;
                    let gone = old.host == host() && !std::path::Path::new(&format!("/proc/{}", old.pid)).exists();
                    if old.expires_ms > now_ms() && !gone {
                        if seen.is_some_and(|t| t != old.expires_ms) {
                            let why = format!(
                                "another run is using this store (process {} on {} renews its lease); wait for it to end, \
                                 or give this run its own snapshot.store",
                                old.pid, old.host
                            );
                            return Err(StoreError::Setup { path: remote.root().to_path_buf(), why });
                        }
                        seen = Some(old.expires_ms);
                        if !told {
                            tracing::info!(
                                "the snapshot store is leased by process {} on {} for {} ms more; waiting",
                                old.pid,
                                old.host,
                                old.expires_ms - now_ms()
                            );
                            told = true;
                        }
                        std::thread::sleep(Duration::from_millis(500));
                        continue;
                    }
                    (old.run + 1, PutMode::Update(version(&meta)))
                }
            };
            let rec = LeaseRecord {
                run,
                host: host(),
                pid: std::process::id(),
                expires_ms: now_ms() + lease.as_millis() as u64,
            };
            match remote.put(&path, &encode(KIND_LEASE, &rec), mode) {
                Ok(meta) => return Ok(Lease::hold(remote, path, rec, meta, lease)),
                Err(e) if super::already_there(&e) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn hold(
        remote: Arc<Remote>,
        path: PathBuf,
        mut rec: LeaseRecord,
        meta: object_store::ObjectMeta,
        lease: Duration,
    ) -> Lease {
        let (lease_ms, renew_ms) = (lease.as_millis() as u64, lease.as_millis() as u64 / 4);
        let fence = Arc::new(Fence {
            lost: AtomicBool::new(false),
            valid_until_ms: AtomicU64::new(rec.expires_ms),
            margin_ms: renew_ms,
        });
        let stop = Arc::new(AtomicBool::new(false));
        remote.set_fence(fence.clone());
        let (f, s) = (fence.clone(), stop.clone());
        let run = rec.run;
        let renewer = std::thread::Builder::new().name("store-lease".into()).spawn(move || {
            let mut current = version(&meta);
            let mut last_renewal = now_ms();
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let ending = s.load(Ordering::Relaxed);
                if !ending && now_ms() < last_renewal + renew_ms {
                    continue;
                }
                // The put may wait out an outage: the record's end counts from now.
                let at = now_ms();
                rec.expires_ms = if ending { 0 } else { at + lease_ms };
                match remote.put(&path, &encode(KIND_LEASE, &rec), PutMode::Update(current.clone())) {
                    _ if ending => return,
                    Ok(m) => {
                        current = version(&m);
                        last_renewal = at;
                        f.valid_until_ms.store(rec.expires_ms, Ordering::Relaxed);
                    }
                    // Someone else's lease now (ours ran out and was taken).
                    Err(e) if super::already_there(&e) => {
                        tracing::error!(
"lost the lease of the snapshot store to another run: this run publishes nothing more ({e})"
                        );
                        f.lost.store(true, Ordering::Relaxed);
                        return;
                    }
                    // Unreachable past the retries: try again; publishing waits meanwhile.
                    Err(_) => {}
                }
            }
        });
        Lease { run, fence, stop, renewer: renewer.ok() }
    }

    /// Whether the lease is still this run's.
    pub fn held(&self) -> bool {
        !self.fence.lost.load(Ordering::Relaxed) && self.renewer.as_ref().is_some_and(|r| !r.is_finished())
    }
}

/// What a store's writes check: whether its run's lease is lost for good,
/// and until when it is surely still valid.
#[derive(Debug)]
pub(super) struct Fence {
    lost: AtomicBool,
    valid_until_ms: AtomicU64,
    margin_ms: u64,
}

impl Fence {
    /// Whether the run may publish: waits while the lease could not be
    /// renewed of late (the store unreachable) but is not known lost.
    pub(super) fn may_publish(&self, patience: Duration) -> bool {
        let t0 = std::time::Instant::now();
        loop {
            if self.lost.load(Ordering::Relaxed) {
                return false;
            }
            if now_ms() + self.margin_ms < self.valid_until_ms.load(Ordering::Relaxed) {
                return true;
            }
            if t0.elapsed() > patience {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.renewer.take() {
            let _ = r.join();
        }
    }
}
