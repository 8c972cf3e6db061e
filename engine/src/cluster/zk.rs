//! The only module that talks to ZooKeeper: a small blocking wrapper over
//! the async `zookeeper-client`, with paths relative to the cluster root and
//! errors that name the server, the root and the node.
//!
//! A cluster address is `HOST:PORT[,HOST:PORT...][/ROOT]`; the root defaults
//! to `/hailstorm` and holds a marker so that a worker pointed at some other
//! application's tree refuses to start instead of scribbling in it.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use zookeeper_client as zkc;

/// Data of the root node of a Hailstorm cluster.
pub const ROOT_MARKER: &[u8] = b"hailstorm-cluster v1";
/// How long to wait for a ZooKeeper server before giving up with an error.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("zookeeper")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| anyhow!("cannot start the ZooKeeper client runtime: {e}"))
}

fn block_on<T>(f: impl Future<Output = T>) -> Result<T> {
    Ok(runtime()?.block_on(f))
}

/// `HOST:PORT[,...][/ROOT]` split into servers and root.
pub fn split_address(addr: &str) -> Result<(String, String)> {
    let (servers, root) = match addr.find('/') {
        Some(i) => (&addr[..i], &addr[i..]),
        None => (addr, "/hailstorm"),
    };
    if servers.is_empty() {
        bail!("ZooKeeper address `{addr}` names no server (expected HOST:PORT[/ROOT])");
    }
    let root = root.trim_end_matches('/');
    if root.is_empty() || root.contains("//") {
        bail!("ZooKeeper address `{addr}`: the root must be a path like /hailstorm");
    }
    Ok((servers.to_string(), root.to_string()))
}

/// How a node is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Persistent,
    Ephemeral,
    EphemeralSequential,
}

/// The environment variable with the ZooKeeper digest credentials
/// (`USER:PASSWORD`) of the cluster; never a command-line argument, so it
/// does not show in `ps`.
pub const AUTH_ENV: &str = "HAILSTORM_ZK_AUTH";

/// A session with ZooKeeper, rooted at the cluster root.
pub struct Zk {
    client: zkc::Client,
    servers: String,
    root: String,
    /// Authenticated: every node it creates is readable and writable only
    /// with the same credentials.
    secure: bool,
    /// The user of the credentials, when there are some.
    user: Option<String>,
}

/// The credentials in [`AUTH_ENV`], if set.
fn credentials() -> Result<Option<String>> {
    match std::env::var(AUTH_ENV) {
        Ok(c) if c.split_once(':').is_some_and(|(u, p)| !u.is_empty() && !p.is_empty()) => Ok(Some(c)),
        Ok(_) => Err(crate::error::mark(
            anyhow!("{AUTH_ENV} must be USER:PASSWORD (ZooKeeper digest credentials)"),
            crate::error::Domain::Usage,
            false,
        )),
        Err(_) => Ok(None),
    }
}

impl Zk {
    /// Connects within [`CONNECT_TIMEOUT`].
    pub fn connect(addr: &str, session_timeout: Duration) -> Result<Zk> {
        let (servers, root) = split_address(addr)?;
        let auth = credentials()?;
        let mut connector = zkc::Client::connector().with_session_timeout(session_timeout).with_fail_eagerly();
        if let Some(a) = &auth {
            connector = connector.with_auth("digest", a.as_bytes());
        }
        let connecting = connector.connect(&servers);
        let client = block_on(async { tokio::time::timeout(CONNECT_TIMEOUT, connecting).await })?
            .map_err(|_| anyhow!("cannot reach ZooKeeper at {servers} within {}s", CONNECT_TIMEOUT.as_secs()))?
            .map_err(|e| anyhow!("cannot reach ZooKeeper at {servers}: {e}"))?;
        let user = auth.as_deref().and_then(|a| a.split_once(':')).map(|(u, _)| u.to_string());
        Ok(Zk { client, servers, root, secure: auth.is_some(), user })
    }

    /// Whether the session has the cluster's credentials.
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The ACL of the nodes this session creates.
    fn acls(&self) -> zkc::Acls<'static> {
        if self.secure {
            zkc::Acls::creator_all()
        } else {
            zkc::Acls::anyone_all()
        }
    }

    /// With credentials, a root anyone may change is refused: what it holds
    /// runs on every worker.
    fn check_root_acl(&self) -> Result<()> {
        if !self.secure {
            return Ok(());
        }
        let root = self.root.clone();
        let (acls, _) = self
            .call("read the ACL of", &root, self.client.get_acl(&root))
            .map_err(|e| self.err("read the ACL of", "", e))?;
        // Only our own credentials may have rights on it (`digest` entries of our user).
        let user = self.user.as_deref().unwrap_or_default();
        if acls.iter().any(|a| a.scheme() != "digest" || a.id().split(':').next() != Some(user)) {
            bail!(
                "the cluster root {} is open to anyone, or to others than the holders of {AUTH_ENV} (its ACL grants \
                 rights to anyone, to addresses or to other users); Hailstorm joins only a root created with those \
                 credentials: choose a new root",
                self.describe()
            );
        }
        Ok(())
    }

    /// `servers/root`, for messages.
    pub fn describe(&self) -> String {
        format!("{}{}", self.servers, self.root)
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    /// Whether the session can still be used (not expired or closed).
    pub fn is_alive(&self) -> bool {
        !self.client.state().is_terminated()
    }

    /// Whether the session is connected right now.
    pub fn is_connected(&self) -> bool {
        self.client.state() == zkc::SessionState::SyncConnected
    }

    fn abs(&self, path: &str) -> String {
        if path.is_empty() {
            self.root.clone()
        } else {
            format!("{}/{}", self.root, path)
        }
    }

    fn call<T>(&self, what: &str, path: &str, f: impl Future<Output = Result<T, zkc::Error>>) -> Result<T, zkc::Error> {
        let r = block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, f).await });
        match r {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(zkc::Error::Timeout),
            Err(e) => Err(zkc::Error::UnexpectedError(format!("{what} {path}: {e}"))),
        }
    }

    fn err(&self, what: &str, path: &str, e: zkc::Error) -> anyhow::Error {
        let hint = match e {
            zkc::Error::NoAuth if self.secure => {
                " (the cluster was made with other credentials than HAILSTORM_ZK_AUTH)"
            }
            zkc::Error::NoAuth => " (the cluster needs credentials: set HAILSTORM_ZK_AUTH=USER:PASSWORD)",
            _ => "",
        };
        anyhow!("ZooKeeper {}: cannot {what} {}: {e}{hint}", self.servers, self.abs(path))
    }

    /// Makes sure the root exists and is a Hailstorm cluster root; creates it when `create`.
    pub fn check_root(&self, create: bool) -> Result<()> {
        let root = self.root.clone();
        match self.call("read", &root, self.client.get_data(&root)) {
            Ok((data, _)) if data == ROOT_MARKER => self.check_root_acl(),
            Ok((data, _)) => bail!(
                "ZooKeeper node {root} on {} exists but is not a Hailstorm cluster root (it holds {:?}); \
                 choose another root, e.g. {}/hailstorm",
                self.servers,
                String::from_utf8_lossy(data.get(..40).unwrap_or(&data)),
                self.servers
            ),
            Err(zkc::Error::NoNode) if create => {
                let opts = zkc::CreateMode::Persistent.with_acls(self.acls());
                if let Some(parent) = root.rsplit_once('/').map(|(p, _)| p).filter(|p| !p.is_empty()) {
                    match self.call("create", parent, self.client.mkdir(parent, &opts)) {
                        Ok(()) | Err(zkc::Error::NodeExists) => {}
                        Err(e) => return Err(self.err("create", "", e)),
                    }
                }
                match self.call("create", &root, self.client.create(&root, ROOT_MARKER, &opts)) {
                    Ok(_) | Err(zkc::Error::NodeExists) => self.check_root(false),
                    Err(e) => Err(self.err("create", "", e)),
                }
            }
            Err(zkc::Error::NoNode) => bail!(
                "there is no Hailstorm cluster at {}: no worker ever joined it. Start workers with \
                 `hailstorm worker --zookeeper {}`",
                self.describe(),
                self.describe()
            ),
            Err(e) => Err(self.err("read", "", e)),
        }
    }

    /// Creates every missing node on the way to `path` (persistent, empty).
    pub fn ensure(&self, path: &str) -> Result<()> {
        let abs = self.abs(path);
        let opts = zkc::CreateMode::Persistent.with_acls(self.acls());
        match self.call("create", &abs, self.client.mkdir(&abs, &opts)) {
            Ok(()) | Err(zkc::Error::NodeExists) => Ok(()),
            Err(e) => Err(self.err("create", path, e)),
        }
    }

    /// Creates a node; returns its path relative to the root (sequential nodes get a suffix),
    /// or `None` if it already exists.
    pub fn create(&self, path: &str, data: &[u8], mode: Mode) -> Result<Option<String>> {
        let abs = self.abs(path);
        let m = match mode {
            Mode::Persistent => zkc::CreateMode::Persistent,
            Mode::Ephemeral => zkc::CreateMode::Ephemeral,
            Mode::EphemeralSequential => zkc::CreateMode::EphemeralSequential,
        };
        let opts = m.with_acls(self.acls());
        match self.call("create", &abs, self.client.create(&abs, data, &opts)) {
            Ok((_, seq)) if mode == Mode::EphemeralSequential => Ok(Some(format!("{path}{seq}"))),
            Ok(_) => Ok(Some(path.to_string())),
            Err(zkc::Error::NodeExists) => Ok(None),
            Err(e) => Err(self.err("create", path, e)),
        }
    }

    /// What wakes a worker's loop: a persistent recursive watch on the
    /// cluster root (so a change is seen at once, not at the next poll;
    /// none before ZooKeeper 3.6, which then leaves polling alone), and
    /// [`Changes::wake`] from the worker's own threads.
    pub fn changes(&self) -> Changes {
        let root = self.abs("");
        let root = if root.is_empty() { "/".to_string() } else { root };
        let w = self.call("watch", &root, self.client.watch(&root, zkc::AddWatchMode::PersistentRecursive)).ok();
        Changes { watcher: tokio::sync::Mutex::new(w), wake: tokio::sync::Notify::new() }
    }

    /// Data and version of a node, `None` if it does not exist.
    pub fn get(&self, path: &str) -> Result<Option<(Vec<u8>, i32)>> {
        let abs = self.abs(path);
        match self.call("read", &abs, self.client.get_data(&abs)) {
            Ok((data, stat)) => Ok(Some((data, stat.version))),
            Err(zkc::Error::NoNode) => Ok(None),
            Err(e) => Err(self.err("read", path, e)),
        }
    }

    /// A JSON node, `None` if it does not exist.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Option<(T, i32)>> {
        match self.get(path)? {
            Some((data, v)) => {
                let t = serde_json::from_slice(&data)
                    .with_context(|| format!("ZooKeeper node {} holds unreadable data", self.abs(path)))?;
                Ok(Some((t, v)))
            }
            None => Ok(None),
        }
    }

    /// Children names, empty if the node does not exist.
    pub fn children(&self, path: &str) -> Result<Vec<String>> {
        let abs = self.abs(path);
        match self.call("list", &abs, self.client.list_children(&abs)) {
            Ok(mut v) => {
                v.sort();
                Ok(v)
            }
            Err(zkc::Error::NoNode) => Ok(Vec::new()),
            Err(e) => Err(self.err("list", path, e)),
        }
    }

    /// Sets a node's data if its version is `version` (any version when `None`).
    pub fn set(&self, path: &str, data: &[u8], version: Option<i32>) -> Result<i32> {
        let abs = self.abs(path);
        self.call("write", &abs, self.client.set_data(&abs, data, version))
            .map(|s| s.version)
            .map_err(|e| self.err("write", path, e))
    }

    /// Creates or overwrites a node.
    pub fn put(&self, path: &str, data: &[u8]) -> Result<()> {
        if self.create(path, data, Mode::Persistent)?.is_none() {
            self.set(path, data, None)?;
        }
        Ok(())
    }

    /// Deletes a node (and nothing if it is gone already).
    pub fn delete(&self, path: &str) -> Result<()> {
        let abs = self.abs(path);
        match self.call("delete", &abs, self.client.delete(&abs, None)) {
            Ok(()) | Err(zkc::Error::NoNode) => Ok(()),
            Err(e) => Err(self.err("delete", path, e)),
        }
    }

    /// Writes `path` only if `guard` still exists (this process's ephemeral
    /// node: the session is alive) and `expect` still has version `version`.
    /// Used for every write that must not come from a fenced-off process.
    pub fn fenced_put(&self, guard: &str, expect: Option<(&str, i32)>, path: &str, data: &[u8]) -> Result<()> {
        let abs = self.abs(path);
        let exists = self.get(path)?.is_some();
        let mut w = self.client.new_multi_writer();
        let build = (|| -> Result<(), zkc::Error> {
            w.add_check_version(&self.abs(guard), -1)?;
            if let Some((p, v)) = expect {
                w.add_check_version(&self.abs(p), v)?;
            }
            if exists {
                w.add_set_data(&abs, data, None)?;
            } else {
                let opts = zkc::CreateMode::Persistent.with_acls(self.acls());
                w.add_create(&abs, data, &opts)?;
            }
            Ok(())
        })();
        build.map_err(|e| self.err("write", path, e))?;
        let r = block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, w.commit()).await })?;
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(anyhow!(
                "fenced: ZooKeeper {} refused to write {abs}: {e} (this process lost its session or its epoch is over)",
                self.servers
            )),
            Err(_) => Err(anyhow!("ZooKeeper {}: writing {abs} timed out", self.servers)),
        }
    }

    /// Stores a blob in chunks under `path` (ZooKeeper nodes hold at most about 1 MB).
    pub fn put_blob(&self, path: &str, bytes: &[u8]) -> Result<()> {
        const CHUNK: usize = 512 << 10;
        self.ensure(path)?;
        let chunks: Vec<&[u8]> = bytes.chunks(CHUNK).collect();
        for (i, c) in chunks.iter().enumerate() {
            self.put(&format!("{path}/c-{i:06}"), c)?;
        }
        // The count is written last: a blob is complete once its count is there.
        self.set(path, format!("{}:{}", chunks.len(), bytes.len()).as_bytes(), None)?;
        Ok(())
    }

    /// Reads a blob written by [`Zk::put_blob`]; `None` if it is missing or incomplete.
    pub fn get_blob(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let Some((head, _)) = self.get(path)? else { return Ok(None) };
        let head = String::from_utf8_lossy(&head).to_string();
        let Some((n, len)) = head.split_once(':') else { return Ok(None) };
        let (Ok(n), Ok(len)) = (n.parse::<usize>(), len.parse::<usize>()) else { return Ok(None) };
        let mut out = Vec::with_capacity(len.min(64 << 20));
        for i in 0..n {
            match self.get(&format!("{path}/c-{i:06}"))? {
                Some((c, _)) => out.extend_from_slice(&c),
                None => return Ok(None),
            }
        }
        if out.len() != len {
            return Ok(None);
        }
        Ok(Some(out))
    }
}

/// Changes under the cluster root, as a persistent recursive watch reports
/// them, and wake-ups from the worker itself.
pub struct Changes {
    watcher: tokio::sync::Mutex<Option<zkc::PersistentWatcher>>,
    wake: tokio::sync::Notify,
}

impl Changes {
    /// Waits until something under the root changed, [`Changes::wake`] was
    /// called, or `limit` passed; then takes every change already reported
    /// (one look covers them all).
    pub fn wait(&self, limit: Duration) {
        let waited = block_on(async {
            let mut w = self.watcher.lock().await;
            let change = async {
                match w.as_mut() {
                    Some(w) => Some(w.changed().await),
                    None => std::future::pending().await,
                }
            };
            let woke = tokio::select! {
                event = change => Some(event),
                () = self.wake.notified() => Some(None),
                () = tokio::time::sleep(limit) => None,
            };
            let Some(event) = woke else { return };
            // After the session's last event the watch has no sender left:
            // waiting on it again would panic inside the client.
            if event.is_some_and(|e| e.session_state.is_terminated()) {
                *w = None;
                return;
            }
            // A burst (a deploy writes many nodes) is one wake-up.
            tokio::time::sleep(Duration::from_millis(5)).await;
            while let Some(watch) = w.as_mut() {
                match tokio::time::timeout(Duration::ZERO, watch.changed()).await {
                    Ok(e) if e.session_state.is_terminated() => *w = None,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        if waited.is_err() {
            std::thread::sleep(limit);
        }
    }

    /// Wakes the loop waiting in [`Changes::wait`] (or the next one to wait).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_into_servers_and_root() {
        assert_eq!(split_address("127.0.0.1:2181").unwrap(), ("127.0.0.1:2181".into(), "/hailstorm".into()));
        assert_eq!(split_address("a:1,b:2/x/y/").unwrap(), ("a:1,b:2".into(), "/x/y".into()));
        assert!(split_address("/x").is_err());
        assert!(split_address("a:1/").is_err());
    }
}
