//! Distributed mode: workers, the leader that places instances and reboots
//! the world, and the client side of `deploy`, `status` and `stop`.
//!
//! Everything shared lives in ZooKeeper under the cluster root (the schema
//! is [`state`]). The leader is the live worker with the lowest sequence
//! number. Each reboot of the world is a new *epoch*: the leader places
//! every instance on the live workers ([`crate::core::assign`]), names the
//! last complete round, and publishes the world; every worker stops what it
//! ran and starts its share from that round. The negotiator of an epoch runs
//! on the leader. The leader's decisions are pure ([`crate::core::leader`]);
//! `leader` is their shell.
//!
//! A round is complete once the leader recorded it in ZooKeeper with a write
//! that fails unless its session is alive and the epoch is current; snapshot
//! files and sink output are written only while the worker holds a lease (a
//! successful ZooKeeper exchange within a third of the session timeout) and
//! its epoch is current (`fence`).
//!
//! **Architecture invariant:** `cluster/zk.rs` is the only code that talks
//! to ZooKeeper (`zookeeper-client` and its `tokio` runtime).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::channel::Shutdown;
use crate::core::negotiator::show_round;
use crate::error::{self, classify, Domain};
use crate::net::{self, Registry};
use crate::observe::{self, Observer};
use crate::runtime::{DamagedRound, Summary};

mod client;
mod epoch;
mod fence;
mod leader;
mod modules;
mod probe;
pub mod state;
pub mod zk;

pub use client::{deploy, show_status, status, stop, ClusterStatus, TopologyStatus};

use epoch::{CannotStart, EpochJob};
use fence::Lease;
use leader::{LeaderCtx, Leading};
use state::{json, Paths, ShareFault, Spec, WorkerInfo, World};
use zk::{Changes, Mode, Zk};

/// How often workers look at the cluster's state.
const POLL: Duration = Duration::from_millis(200);

/// Options of `hailstorm worker`.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub zookeeper: String,
    pub listen: String,
    pub advertise: Option<String>,
    pub session_timeout: Duration,
    /// The module cache (None: a private temporary directory).
    pub data_dir: Option<PathBuf>,
    /// The only roots under which sinks may be granted directories here.
    pub allow_grants: Vec<PathBuf>,
    /// Mutual TLS with the other workers: the certificates' directory and this worker's name.
    pub tls: Option<(PathBuf, String)>,
    /// Serve `/metrics` and the web view on this address.
    pub metrics_addr: Option<String>,
}

/// A run of one epoch of one topology on this worker.
struct Runner {
    epoch: u64,
    shutdown: Shutdown,
    handle: JoinHandle<()>,
}

/// How a runner ended.
struct Outcome {
    topology: String,
    epoch: u64,
    negotiator: bool,
    result: Result<Summary>,
}

/// Runs a worker until `stop` asks it to drain. Returns an error (a usage
/// error: the worker's options are wrong) only when it cannot join the
/// cluster at all (ZooKeeper unreachable at start, wrong root, bad listen
/// address); later losses of the session are survived by joining again.
pub fn run_worker(o: WorkerOptions, stop: &Shutdown) -> Result<()> {
    let (listener, addr) = listen(&o).map_err(|e| error::mark(e, Domain::Usage, false))?;
    let registry = Registry::new();
    let tls = match &o.tls {
        Some((dir, name)) => Some(Arc::new(
            net::Tls::load(dir, name)
                .with_context(|| format!("cannot use TLS identity `{name}` in {}", dir.display()))
                .map_err(|e| error::mark(e, Domain::Usage, false))?,
        )),
        None => None,
    };
    let _listener = net::serve(listener, registry.clone(), tls.clone())?;
    let observer = Observer::new();
    let _endpoint = match &o.metrics_addr {
        Some(a) => {
            let e = observe::serve(a, observer.clone()).map_err(|e| error::mark(e, Domain::Usage, false))?;
            crate::observe::logs::info(format_args!(
                "hailstorm worker: metrics on http://{}/metrics, web view on http://{}/",
                e.addr(),
                e.addr()
            ));
            Some(e)
        }
        None => None,
    };
    let (data_dir, _private) = data_dir(o.data_dir.as_deref()).map_err(|e| error::mark(e, Domain::Usage, false))?;
    let allow_grants = grant_roots(&o.allow_grants).map_err(|e| error::mark(e, Domain::Usage, false))?;
    let o = WorkerOptions { data_dir: Some(data_dir), allow_grants, ..o };
    let mut first = true;
    loop {
        let zk = match Zk::connect(&o.zookeeper, o.session_timeout).and_then(|zk| zk.check_root(true).map(|()| zk)) {
            Ok(zk) => Arc::new(zk),
            Err(e) if first => return Err(error::mark(e, Domain::Usage, false)),
            Err(e) => {
                crate::observe::logs::error(format_args!("hailstorm worker: {e:#}; retrying"));
                if sleep_unless(stop, Duration::from_secs(1)) {
                    return Ok(());
                }
                continue;
            }
        };
        first = false;
        let (node, mut s) = join(&zk, &o, (&addr, &registry, &observer), tls.clone())?;
        let why = s.run(stop);
        s.shutdown();
        let _ = zk.delete(&node);
        match why {
            Ok(()) => {
                crate::observe::logs::info(format_args!("hailstorm worker {}: stopped", s.me));
                return Ok(());
            }
            Err(e) => crate::observe::logs::error(format_args!(
                "hailstorm worker {}: {e:#}; stopping its instances and joining again",
                s.me
            )),
        }
    }
}

/// The worker's data directory (its module cache): the one given, created
/// private if missing and refused if other users may write it, or a fresh
/// private temporary one (returned too: it is removed when dropped).
fn data_dir(given: Option<&std::path::Path>) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let Some(dir) = given else {
        let t =
            tempfile::Builder::new().prefix("hailstorm-worker-").tempdir().context("cannot create a data directory")?;
        return Ok((t.path().to_path_buf(), Some(t)));
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the worker's data directory {}", dir.display()))?;
    }
    let mode = std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?.permissions().mode();
    if mode & 0o022 != 0 {
        bail!(
            "the worker's data directory {} can be written by other users (mode {:o}): modules cached there run here",
            dir.display(),
            mode & 0o777
        );
    }
    Ok((dir.to_path_buf(), None))
}

/// The `--allow-grants` roots, absolute and clean; the whole file system
/// and home directories are refused (a sink granted them could rewrite
/// what the worker runs).
fn grant_roots(given: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut out = Vec::new();
    for g in given {
        let root = crate::topology::clean(&cwd.join(g));
        if root.parent().is_none() || home.as_deref().is_some_and(|h| h.starts_with(&root)) {
            bail!(
                "--allow-grants {}: a sink may not be granted the whole file system or a home directory",
                g.display()
            );
        }
        out.push(root);
    }
    Ok(out)
}

/// Binds the worker's port; returns it with the address others reach it at.
fn listen(o: &WorkerOptions) -> Result<(TcpListener, String)> {
    let listener = TcpListener::bind(&o.listen).with_context(|| format!("cannot listen on {}", o.listen))?;
    let local = listener.local_addr()?;
    let addr = match &o.advertise {
        Some(a) => a.clone(),
        None if local.ip().is_unspecified() => {
            bail!(
                "--listen {} accepts on every interface: say with --advertise HOST:PORT how others reach this worker",
                o.listen
            )
        }
        None => local.to_string(),
    };
    Ok((listener, addr))
}

/// Registers this worker in a new session; returns its node and the session.
fn join(
    zk: &Arc<Zk>,
    o: &WorkerOptions,
    (addr, registry, observer): (&str, &Arc<Registry>, &Arc<Observer>),
    tls: Option<Arc<net::Tls>>,
) -> Result<(String, Session)> {
    for dir in [Paths::WORKERS, Paths::TOPOLOGIES, Paths::MODULES] {
        zk.ensure(dir)?;
    }
    let info = WorkerInfo {
        addr: addr.to_string(),
        pid: std::process::id(),
        allow_grants: o.allow_grants.clone(),
        tls_name: tls.as_ref().map(|t| t.name().to_string()),
    };
    let node = zk
        .create(&Paths::new_worker(), &json(&info)?, Mode::EphemeralSequential)?
        .ok_or_else(|| anyhow!("cannot register the worker"))?;
    let me = node.trim_start_matches(&format!("{}/", Paths::WORKERS)).to_string();
    crate::observe::logs::info(format_args!("hailstorm worker {me}: listening on {addr}, cluster {}", zk.describe()));
    let (out_tx, out_rx) = unbounded();
    let session = Session {
        changes: Arc::new(zk.changes()),
        zk: zk.clone(),
        me,
        addr: addr.to_string(),
        registry: registry.clone(),
        observer: observer.clone(),
        data_dir: o.data_dir.clone().unwrap_or_default(),
        allow_grants: Arc::new(o.allow_grants.clone()),
        tls,
        lease: Arc::new(Lease::new(o.session_timeout / 3)),
        runners: BTreeMap::new(),
        done: BTreeMap::new(),
        out_tx,
        out_rx,
        leading: None,
        resign: None,
        stopping: Vec::new(),
    };
    Ok((node, session))
}

/// Sleeps; true if `stop` asked the worker to stop meanwhile.
fn sleep_unless(stop: &Shutdown, d: Duration) -> bool {
    let until = std::time::Instant::now() + d;
    while std::time::Instant::now() < until {
        if stop.is_draining() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.is_draining()
}

/// One ZooKeeper session of a worker.
struct Session {
    zk: Arc<Zk>,
    /// Wakes the loop when something changes (instead of at the next poll).
    changes: Arc<Changes>,
    me: String,
    addr: String,
    registry: Arc<Registry>,
    observer: Arc<Observer>,
    data_dir: PathBuf,
    allow_grants: Arc<Vec<PathBuf>>,
    tls: Option<Arc<net::Tls>>,
    lease: Arc<Lease>,
    runners: BTreeMap<String, Runner>,
    /// Epochs whose run ended here (not to be started again).
    done: BTreeMap<String, u64>,
    out_tx: Sender<Outcome>,
    out_rx: Receiver<Outcome>,
    leading: Option<Leading>,
    /// Set when this worker must give up leading (its session ends and it joins again).
    resign: Option<String>,
    /// Runners stopped but perhaps not ended yet.
    stopping: Vec<JoinHandle<()>>,
}

/// The error of a run that could not start on this worker, if that is how it ended.
fn cannot_start(o: &Outcome) -> Option<&anyhow::Error> {
    o.result.as_ref().err().filter(|e| e.downcast_ref::<CannotStart>().is_some())
}

impl Session {
    /// Until `stop` (Ok) or the session is lost (Err).
    fn run(&mut self, stop: &Shutdown) -> Result<()> {
        loop {
            if stop.is_draining() {
                return Ok(());
            }
            if !self.zk.is_alive() {
                bail!("the ZooKeeper session expired");
            }
            let workers = match self.zk.children(Paths::WORKERS) {
                Ok(w) => w,
                Err(e) if self.zk.is_alive() => {
                    tracing::warn!("{e:#}");
                    std::thread::sleep(POLL);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if !workers.contains(&self.me) {
                bail!("this worker's registration is gone (its session expired)");
            }
            self.lease.renew();
            if let Err(e) = self.step(&workers) {
                if !self.zk.is_alive() {
                    return Err(e);
                }
                crate::observe::logs::error(format_args!("hailstorm worker {}: {e:#}", self.me));
            }
            if let Some(why) = self.resign.take() {
                bail!("{why}");
            }
            self.changes.wait(POLL);
        }
    }

    fn step(&mut self, workers: &[String]) -> Result<()> {
        self.reap();
        let topologies = self.zk.children(Paths::TOPOLOGIES)?;
        self.follow(&topologies)?;
        let outcomes = self.outcomes();
        for o in &outcomes {
            self.report_fault(o)?;
        }
        // Leadership: the live worker with the lowest number.
        if workers.first() != Some(&self.me) {
            self.leading = None;
            return Ok(());
        }
        // A leader that cannot start the negotiator hands leadership on.
        if let Some(o) = outcomes.iter().find(|o| o.negotiator && cannot_start(o).is_some()) {
            if workers.len() > 1 {
                let why = o.result.as_ref().err().map(|e| format!("{e:#}")).unwrap_or_default();
                self.resign = Some(format!("resigning as leader: {why}"));
                return Ok(());
            }
        }
        let changes = self.changes.clone();
        let leading = self.leading.get_or_insert_with(|| Leading::new(&self.me, Arc::new(move || changes.wake())));
        let ctx = LeaderCtx { zk: &self.zk, me: &self.me, addr: &self.addr, workers };
        for o in outcomes.into_iter().filter(|o| o.negotiator) {
            leading.ended(&ctx, &o.topology, o.epoch, o.result)?;
        }
        for name in &topologies {
            leading.tick(&ctx, name, self.runners.get(name).map(|r| &r.shutdown))?;
        }
        Ok(())
    }

    /// Tells the leader (through ZooKeeper) that this worker could not
    /// start its share of an epoch, so it places around it, or that it found
    /// the round to start from damaged, so it starts from an older one.
    fn report_fault(&self, o: &Outcome) -> Result<()> {
        let Err(e) = &o.result else { return Ok(()) };
        let damaged_round = e.downcast_ref::<DamagedRound>().map(|d| d.round);
        if damaged_round.is_none() && cannot_start(o).is_none() {
            return Ok(());
        }
        let why = format!("{e:#}");
        let fault = ShareFault { epoch: o.epoch, why, retryable: classify(e).retryable, damaged_round };
        self.zk.ensure(&Paths::faults(&o.topology))?;
        self.zk.put(&Paths::fault(&o.topology, &self.me), &json(&fault)?)
    }

    /// Starts and stops runners so that this worker runs its share of every
    /// topology's current world.
    fn follow(&mut self, topologies: &[String]) -> Result<()> {
        for name in topologies {
            let world = self.zk.get_json::<World>(&Paths::world(name))?;
            let current = self.runners.get(name).map(|r| r.epoch);
            let wanted = world.as_ref().map(|(w, _)| w.epoch);
            if current.is_some() && current != wanted {
                self.stop_runner(name);
            }
            if let Some((w, version)) = world {
                let mine = w.leader == self.me || w.placement.iter().any(|(_, wk, _)| *wk == self.me);
                if mine && !self.runners.contains_key(name) && self.done.get(name) != Some(&w.epoch) {
                    self.start_runner(name, w, version)?;
                }
            }
        }
        for name in self.runners.keys().cloned().collect::<Vec<_>>() {
            if !topologies.contains(&name) {
                self.stop_runner(&name);
            }
        }
        Ok(())
    }

    /// Outcomes of runs that ended by themselves (their runners are joined).
    fn outcomes(&mut self) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        while let Ok(o) = self.out_rx.try_recv() {
            if self.runners.get(&o.topology).is_some_and(|r| r.epoch == o.epoch) {
                if let Some(r) = self.runners.remove(&o.topology) {
                    let _ = r.handle.join();
                }
                self.done.insert(o.topology.clone(), o.epoch);
            }
            let (me, name, epoch) = (&self.me, &o.topology, o.epoch);
            match &o.result {
                Ok(s) => crate::observe::logs::info(format_args!(
                    "hailstorm worker {me}: `{name}` epoch {epoch} ended: {} records, last complete round {}",
                    s.records,
                    s.last_round.map(show_round).unwrap_or_else(|| "none".into())
                )),
                Err(e) => crate::observe::logs::error(format_args!(
                    "hailstorm worker {me}: `{name}` epoch {epoch} failed: {e:#}"
                )),
            }
            outcomes.push(o);
        }
        outcomes
    }

    /// Stops a runner without waiting for it: a run stuck in a call that
    /// times out late (a broker that hangs) must not hold up this thread,
    /// which renews the lease. Its thread is joined once it has ended.
    fn stop_runner(&mut self, name: &str) {
        if let Some(r) = self.runners.remove(name) {
            r.shutdown.abort();
            self.done.insert(name.to_string(), r.epoch);
            self.stopping.push(r.handle);
        }
        self.reap();
    }

    /// Joins the stopped runners that have ended.
    fn reap(&mut self) {
        let (ended, running): (Vec<_>, Vec<_>) = self.stopping.drain(..).partition(|h| h.is_finished());
        self.stopping = running;
        for h in ended {
            let _ = h.join();
        }
    }

    /// Stops every runner and waits for them (the session is over).
    fn shutdown(&mut self) {
        for name in self.runners.keys().cloned().collect::<Vec<_>>() {
            self.stop_runner(&name);
        }
        for h in self.stopping.drain(..) {
            let _ = h.join();
        }
    }

    fn start_runner(&mut self, name: &str, world: World, version: i32) -> Result<()> {
        let Some((spec, _)) = self.zk.get_json::<Spec>(&Paths::topology(name))? else { return Ok(()) };
        let shutdown = Shutdown::new();
        let (epoch, negotiator) = (world.epoch, world.leader == self.me);
        let job = EpochJob {
            zk: self.zk.clone(),
            me: self.me.clone(),
            topology: name.to_string(),
            spec,
            world,
            world_version: version,
            registry: self.registry.clone(),
            data_dir: self.data_dir.clone(),
            allow_grants: self.allow_grants.clone(),
            tls: self.tls.clone(),
            lease: self.lease.clone(),
            shutdown: shutdown.clone(),
            observer: self.observer.clone(),
        };
        let (out, topology, changes) = (self.out_tx.clone(), name.to_string(), self.changes.clone());
        crate::observe::logs::info(format_args!(
            "hailstorm worker {}: starting its share of `{name}` epoch {epoch}",
            self.me
        ));
        let handle = std::thread::Builder::new().name(format!("epoch {epoch}")).spawn(move || {
            let result = job.run();
            let _ = out.send(Outcome { topology, epoch, negotiator, result });
            // The session loop hears of it now, not at its next poll.
            changes.wake();
        })?;
        self.runners.insert(name.to_string(), Runner { epoch, shutdown, handle });
        Ok(())
    }
}
