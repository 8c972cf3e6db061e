//! One worker's share of one epoch: the deployed topology loaded with its
//! modules from ZooKeeper, started from the round the world names, wired to
//! the other workers, and fenced by the worker's lease.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use super::fence::{ClusterCoordinator, Lease};
use super::state::{Paths, SinkWaiting, Spec, WorkerInfo, World};
use super::zk::Zk;
use crate::channel::Shutdown;
use crate::core::negotiator::first_round_of_epoch;
use crate::net::{Endpoint, Registry, Wiring};
use crate::observe::{Observer, Place};
use crate::runtime::{self, Prepared, RunOptions, Start, Summary};
use crate::store::FileStore;
use crate::topology::Topology;

/// Everything one worker needs to run its share of one epoch.
pub(super) struct EpochJob {
    pub(super) zk: Arc<Zk>,
    pub(super) me: String,
    pub(super) topology: String,
    pub(super) spec: Spec,
    pub(super) world: World,
    pub(super) world_version: i32,
    pub(super) registry: Arc<Registry>,
    pub(super) data_dir: PathBuf,
    pub(super) allow_grants: Arc<Vec<PathBuf>>,
    pub(super) tls: Option<Arc<crate::net::Tls>>,
    pub(super) lease: Arc<Lease>,
    pub(super) shutdown: Shutdown,
    pub(super) observer: Arc<Observer>,
}

/// Which worker runs each instance, by the names the web view shows
/// (`spout/0`, `bolt/1`, `sink/0`, `negotiator`).
fn placement_names(p: &Prepared, world: &World) -> BTreeMap<String, String> {
    let (plan, t) = (&p.plan, &p.topology);
    let name = |e: &Endpoint| match *e {
        Endpoint::Spout(n) => plan.partitions.get(n).map(|x| x.name.clone()),
        Endpoint::Bolt(n) => plan.bolt_of(n).and_then(|(b, i)| t.bolts.get(b).map(|b| format!("{}/{i}", b.name))),
        Endpoint::Sink(n) => t.sinks.get(n).map(|s| format!("{}/0", s.name)),
        Endpoint::Negotiator => Some("negotiator".into()),
        Endpoint::BoltControl(_) => None,
    };
    world.placement.iter().filter_map(|(e, w, _)| Some((name(e)?, w.clone()))).collect()
}

/// The context of an error that kept a worker from starting its share (as
/// opposed to one that ended a share that ran): the leader places around it.
#[derive(Debug, Clone, Copy)]
pub(super) struct CannotStart;

impl std::fmt::Display for CannotStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("this worker cannot start its share")
    }
}

impl EpochJob {
    pub(super) fn run(self) -> Result<Summary> {
        let (p, store) = self.setup().context(CannotStart)?;
        self.watch_store(&store);
        let start = Start::at_round(&p, &store, self.world.restore, first_round_of_epoch(self.world.epoch))?;
        let placement = self.world.placement.iter().map(|(e, w, a)| (*e, (w.clone(), a.clone()))).collect();
        let mut wiring = Wiring::new(&self.topology, self.world.epoch, &self.me, placement, self.registry.clone());
        if let Some(tls) = &self.tls {
            wiring = wiring.with_tls(tls.clone(), self.tls_names()?);
        }
        let coord = ClusterCoordinator {
            zk: self.zk.clone(),
            me: self.me.clone(),
            topology: self.topology.clone(),
            epoch: self.world.epoch,
            world_version: self.world_version,
            lease: self.lease.clone(),
            shutdown: self.shutdown.clone(),
        };
        let place = Place {
            worker: Some(self.me.clone()),
            epoch: self.world.epoch,
            placement: placement_names(&p, &self.world),
        };
        let opts = RunOptions { follow: true, progress: None, shutdown: self.shutdown, observer: self.observer, place };
        runtime::run(&p, &opts, &store, start, Some(&wiring), Arc::new(coord))
    }

    /// The TLS name of every worker of the placement, by worker id (a
    /// worker without one is left out: it cannot be reached over TLS).
    fn tls_names(&self) -> Result<BTreeMap<String, String>> {
        let mut names = BTreeMap::new();
        for (_, w, _) in &self.world.placement {
            if names.contains_key(w) {
                continue;
            }
            if let Some((info, _)) = self.zk.get_json::<WorkerInfo>(&Paths::worker(w))? {
                if let Some(n) = info.tls_name {
                    names.insert(w.clone(), n);
                }
            }
        }
        Ok(names)
    }

    /// Reports the store's reachability on this worker's metrics and in a
    /// ZooKeeper note that `hailstorm status` shows.
    fn watch_store(&self, store: &FileStore) {
        runtime::watch_store(store, &self.observer, &self.topology);
        let Some(r) = store.remote() else { return };
        let (o, zk, t, me, epoch) =
            (self.observer.clone(), self.zk.clone(), self.topology.clone(), self.me.clone(), self.world.epoch);
        r.set_health_hook(Arc::new(move |why| {
            o.store_unreachable(&t, why);
            let path = Paths::store_unreachable(&t, &me);
            let done = match why {
                Some(why) => {
                    let note = SinkWaiting { epoch, why: why.to_string(), since_ms: crate::store::now_ms() };
                    zk.ensure(&Paths::stores_unreachable(&t)).and_then(|()| zk.put(&path, &super::state::json(&note)?))
                }
                None => zk.delete(&path),
            };
            if let Err(e) = done {
                tracing::debug!("cannot note in ZooKeeper that the store is unreachable: {e:#}");
            }
        }));
    }

    /// What this worker needs before it can run anything: the topology with
    /// its modules (from its cache) and the store.
    fn setup(&self) -> Result<(Prepared, FileStore)> {
        let grants = Grants { roots: &self.allow_grants, worker: &self.me };
        let (p, store) = load_spec(&self.zk, &self.spec, &self.data_dir, &self.world.kafka_partitions, grants)?;
        let t = &p.topology;
        // Another topology's store: no worker can fix that.
        store.claim(&t.name).map_err(|e| crate::error::mark(e.into(), crate::error::Domain::Usage, false))?;
        Ok((p, store))
    }
}

/// The roots under which a worker lets sinks be granted directories.
#[derive(Clone, Copy)]
struct Grants<'a> {
    roots: &'a [PathBuf],
    worker: &'a str,
}

impl Grants<'_> {
    /// Checks every sink grant against the roots, as written and once links
    /// are followed (a sink may have made a link in a directory granted to
    /// it before).
    fn check(self, t: &Topology) -> Result<()> {
        if let Some((sink, dir)) = t.grants_outside(self.roots).into_iter().next() {
            bail!("{}", refused_grant(&sink, &dir, self.worker, self.roots));
        }
        let real = |p: &Path| std::fs::canonicalize(p).with_context(|| format!("cannot resolve {}", p.display()));
        for d in t.sinks.iter().flat_map(|s| &s.dirs) {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create granted directory {}", d.display()))?;
        }
        let roots: Vec<PathBuf> = self.roots.iter().filter_map(|r| real(r).ok()).collect();
        for s in &t.sinks {
            for d in &s.dirs {
                let resolved = real(d)?;
                if !roots.iter().any(|r| resolved.starts_with(r)) {
                    bail!(
                        "{} (it leads to {})",
                        refused_grant(&s.name, d, self.worker, self.roots),
                        resolved.display()
                    );
                }
            }
        }
        Ok(())
    }
}

/// Why a worker refuses to let sink `sink` be granted `dir`.
pub(super) fn refused_grant(sink: &str, dir: &Path, worker: &str, roots: &[PathBuf]) -> String {
    let allowed = if roots.is_empty() {
        "no directories (it was started without --allow-grants)".to_string()
    } else {
        let shown: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        format!("only directories under {}", shown.join(", "))
    };
    format!(
        "sink `{sink}` is granted {}, but worker {worker} allows {allowed}; start the workers with `--allow-grants DIR` for a directory that holds it",
        dir.display()
    )
}

/// Loads a deployed topology on a worker: its text as deployed, its modules
/// from ZooKeeper (cached by hash in the worker's data directory).
/// The deployed topology with its modules, and its store.
fn load_spec(
    zk: &Zk,
    spec: &Spec,
    data_dir: &Path,
    kafka: &BTreeMap<String, u32>,
    grants: Grants,
) -> Result<(Prepared, FileStore)> {
    let mut t = Topology::from_source(&spec.source, &spec.file, &spec.overrides).map_err(|e| anyhow!("{e}"))?;
    grants.check(&t)?;
    let store = FileStore::open_store(&t.store)
        .with_context(|| format!("cannot open the snapshot store {}", t.store_dir().display()))?;
    let fix = |name: &str, m: &mut crate::topology::ModuleRef| -> Result<()> {
        let hash = spec.modules.get(name).ok_or_else(|| anyhow!("the deployed topology has no module for `{name}`"))?;
        m.path = fetch_module(zk, &store, hash, data_dir)?;
        m.build = None;
        Ok(())
    };
    for s in &mut t.spouts {
        fix(&s.name.clone(), &mut s.module)?;
    }
    for b in &mut t.bolts {
        fix(&b.name.clone(), &mut b.module)?;
    }
    for s in &mut t.sinks {
        fix(&s.name.clone(), &mut s.module)?;
    }
    Ok((runtime::prepare_with(t, kafka)?, store))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The path of module `hash` in the worker's cache, fetched when it is not
/// there yet (from the object store when ZooKeeper notes it is there, else
/// from ZooKeeper); its hash is checked on every load (the cache is a
/// directory on disk, and what it holds runs here).
fn fetch_module(zk: &Zk, store: &FileStore, hash: &str, data_dir: &Path) -> Result<PathBuf> {
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("bad module hash {hash:?} in the deployed topology");
    }
    let path = data_dir.join(format!("{hash}.wasm"));
    match std::fs::read(&path) {
        Ok(bytes) if hex(&Sha256::digest(&bytes)) == hash => return Ok(path),
        Ok(_) => crate::observe::logs::warn(format_args!(
            "hailstorm worker: cached module {} does not match its hash; fetching it again",
            path.display()
        )),
        Err(_) => {}
    }
    let bytes = match super::modules::in_store(zk, hash)? {
        Some(size) => super::modules::fetch(store, hash, size)?,
        None => zk
            .get_blob(&Paths::module(hash))?
            .ok_or_else(|| anyhow!("module {hash} is missing from ZooKeeper {}", zk.describe()))?,
    };
    if hex(&Sha256::digest(&bytes)) != hash {
        bail!("module {hash} from ZooKeeper {} or the store is damaged (its hash does not match)", zk.describe());
    }
    // A fresh file of our own (never one a link points to), then renamed into place.
    let mut tmp = tempfile::NamedTempFile::new_in(data_dir)
        .with_context(|| format!("cannot write a module into {}", data_dir.display()))?;
    std::io::Write::write_all(&mut tmp, &bytes).with_context(|| format!("cannot write {}", tmp.path().display()))?;
    tmp.persist(&path).map_err(|e| anyhow!("cannot write {}: {}", path.display(), e.error))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(dir: &Path, grant: &Path) -> Topology {
        let text = format!(
            "name = \"t\"\n[spouts.lines]\nsource = {{ files = [\"in.txt\"] }}\ndeserializer = \"d.wasm\"\n\
             [bolts.counts]\ninputs = [\"lines\"]\nmodule = \"b.wasm\"\n\
             [sinks.table]\ninputs = [\"counts\"]\nmodule = \"s.wasm\"\ngrants = {{ dirs = [{:?}] }}\n",
            grant.display().to_string()
        );
        Topology::from_source(&text, &dir.join("t.toml"), &[]).unwrap()
    }

    #[test]
    fn a_grant_that_leads_outside_the_roots_through_a_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (out, elsewhere) = (dir.path().join("out"), dir.path().join("elsewhere"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, out.join("link")).unwrap();
        let roots = [out.clone()];
        let grants = Grants { roots: &roots, worker: "w-1" };
        grants.check(&topology(dir.path(), &out.join("fine"))).unwrap();
        let e = grants.check(&topology(dir.path(), &out.join("link"))).unwrap_err().to_string();
        assert!(e.contains("sink `table` is granted") && e.contains("it leads to"), "{e}");
        let e = grants.check(&topology(dir.path(), &elsewhere)).unwrap_err().to_string();
        assert!(e.contains("worker w-1 allows only directories under"), "{e}");
    }
}
