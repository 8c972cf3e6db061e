//! Several hosts, for real: three workers in three network namespaces, each
//! with its own address, its own data directory and nothing shared on disk;
//! ZooKeeper, Kafka, PostgreSQL and the S3 server reached over a virtual
//! network (a bridge, a veth pair per host). A host's worker is killed, a
//! host's link is cut for longer than the session, a worker is paused past
//! its epoch: the table is exact, and no worker opens another's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::cluster::{produce_to, zookeeper};
use crate::common::*;
use crate::kafka_tls::service;
use crate::sinks::{unique, Schema};

const HOSTS: usize = 3;

fn ip(args: &str) {
    let out = Command::new("ip").args(args.split_whitespace()).output().expect("run ip");
    assert!(out.status.success(), "ip {args}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The loopback port of a service address (`127.0.0.1:PORT` or a URL with one).
fn loopback_port(addr: &str) -> u16 {
    let rest = addr.split("127.0.0.1:").nth(1).unwrap_or_else(|| panic!("{addr} is not on 127.0.0.1"));
    rest.split(|c: char| !c.is_ascii_digit()).next().and_then(|p| p.parse().ok()).expect("a port")
}

/// The virtual network: a bridge at `net.1`, host `i` at `net.(11 + i)`,
/// each namespace forwarding the services' loopback ports to the bridge,
/// where a forwarder of the test relays them to the real services.
struct Net {
    tag: String,
    net: String,
    forwarders: Vec<Child>,
}

impl Net {
    fn new(ports: &[u16]) -> Net {
        static NETS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = (std::process::id() * 7 + NETS.fetch_add(1, Ordering::Relaxed)) % 200 + 20;
        let tag = format!("hs{n}");
        let net = format!("10.231.{n}");
        let mut me = Net { tag, net, forwarders: Vec::new() };
        me.remove(); // left by a run that was killed
        ip(&format!("link add {}b type bridge", me.tag));
        ip(&format!("addr add {}.1/24 dev {}b", me.net, me.tag));
        ip(&format!("link set {}b up", me.tag));
        let script = root().join("tests/hosts/forward.py");
        let to_services: Vec<String> = ports.iter().map(|p| format!("{}.1:{p}=127.0.0.1:{p}", me.net)).collect();
        me.forwarders.push(forwarder(&[], &script, &to_services));
        for i in 0..HOSTS {
            let (ns, host_end, ns_end) = (me.ns(i), format!("{}h{i}", me.tag), format!("{}n{i}", me.tag));
            ip(&format!("netns add {ns}"));
            ip(&format!("link add {host_end} type veth peer name {ns_end}"));
            ip(&format!("link set {ns_end} netns {ns}"));
            ip(&format!("link set {host_end} master {}b", me.tag));
            ip(&format!("link set {host_end} up"));
            ip(&format!("netns exec {ns} ip addr add {}/24 dev {ns_end}", me.addr(i)));
            ip(&format!("netns exec {ns} ip link set {ns_end} up"));
            ip(&format!("netns exec {ns} ip link set lo up"));
            let to_bridge: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}={}.1:{p}", me.net)).collect();
            me.forwarders.push(forwarder(&["ip", "netns", "exec", &ns], &script, &to_bridge));
        }
        me
    }

    fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.tag)
    }

    fn addr(&self, i: usize) -> String {
        format!("{}.{}", self.net, 11 + i)
    }

    /// Takes host `i`'s link down or up.
    fn link(&self, i: usize, up: bool) {
        ip(&format!("link set {}h{i} {}", self.tag, if up { "up" } else { "down" }));
    }
}

fn forwarder(prefix: &[&str], script: &Path, maps: &[String]) -> Child {
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg("python3");
            c
        }
        None => Command::new("python3"),
    };
    let mut child = cmd.arg(script).args(maps).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("forwarder");
    let mut line = String::new();
    let out = child.stdout.take().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).expect("forwarder output");
    assert_eq!(line.trim(), "forwarding", "the forwarder did not start");
    child
}

impl Drop for Net {
    fn drop(&mut self) {
        for f in &mut self.forwarders {
            let _ = f.kill();
            let _ = f.wait();
        }
        self.remove();
    }
}

impl Net {
    /// Deletes the namespaces, links and bridge of this network, if there.
    fn remove(&self) {
        for i in 0..HOSTS {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(i)]).output();
            let _ = Command::new("ip").args(["link", "del", &format!("{}h{i}", self.tag)]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &format!("{}b", self.tag)]).output();
    }
}

/// A worker on host `i`: in its namespace, its own data directory (also its
/// temporary directory, and where its log goes), listening on the host's address.
struct Host {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
}

/// Three hosts on the virtual network, each running a worker of a cluster in
/// a fresh ZooKeeper root, with an `s3://` store, a topic and a PostgreSQL
/// schema of their own; every worker's open files watched.
struct Hosts {
    sb: Sandbox,
    db: Schema,
    net: Net,
    zk: String,
    topic: String,
    store: String,
    env: Vec<(String, String)>,
    session: String,
    hosts: Vec<Host>,
    watched: Arc<Mutex<Vec<(u32, PathBuf)>>>,
    stop: Arc<AtomicBool>,
    watcher: Option<std::thread::JoinHandle<Vec<String>>>,
    _one: std::sync::MutexGuard<'static, ()>,
}

impl Hosts {
    fn new(session: &str) -> Hosts {
        let one = crate::cluster::one_at_a_time();
        modules();
        let (zk, kafka, s3, pg) =
            (zookeeper(), crate::cluster::kafka(), service("HAILSTORM_TEST_S3"), service("HAILSTORM_TEST_POSTGRES"));
        let net = Net::new(&[loopback_port(&zk), loopback_port(&kafka), loopback_port(&s3), loopback_port(&pg)]);
        let db = Schema::new().with_table();
        let id = unique("hosts");
        let mut env: Vec<(String, String)> =
            ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ALLOW_HTTP"]
                .iter()
                .map(|k| (k.to_string(), service(k)))
                .collect();
        env.push(("AWS_ENDPOINT_URL".into(), s3));
        env.push(("HAILSTORM_PG_URL".into(), db.url.clone()));
        let mut h = Hosts {
            sb: Sandbox::new(),
            db,
            net,
            zk: format!("{zk}/hailstorm-test-{id}"),
            topic: format!("t-{id}"),
            store: format!("s3://{}/{id}", service("HAILSTORM_TEST_S3_BUCKET")),
            env,
            session: session.to_string(),
            hosts: Vec::new(),
            watched: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            watcher: None,
            _one: one,
        };
        for i in 0..HOSTS {
            let host = h.start(i);
            h.watched.lock().expect("hosts").push((host.child.id(), host.dir.clone()));
            h.hosts.push(host);
        }
        h.watcher = Some(watch_files(h.watched.clone(), h.stop.clone()));
        h
    }

    fn start(&self, i: usize) -> Host {
        let dir = self.sb.path(&format!("host-{i}"));
        std::fs::create_dir_all(&dir).expect("host dir");
        let log = dir.join("worker.log");
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.net.ns(i)])
            .arg(bin())
            .args(["worker", "--zookeeper", &self.zk, "--session-timeout", &self.session])
            .arg("--listen")
            .arg(format!("{}:0", self.net.addr(i)))
            .arg("--data-dir")
            .arg(&dir)
            .env("TMPDIR", &dir)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start a worker");
        Host { child, dir, log }
    }

    /// Kills host `i`'s worker (`kill -9`) and starts it again.
    fn kill_and_restart(&mut self, i: usize) {
        self.hosts[i].child.kill().expect("kill -9");
        self.hosts[i].child.wait().ok();
        let e = self.epoch();
        self.wait(&format!("a reboot without host {i}"), Duration::from_secs(60), &mut || self.epoch() > e);
        self.hosts[i] = self.start(i);
        self.watched.lock().expect("hosts")[i].0 = self.hosts[i].child.id();
    }

    fn logs(&self) -> String {
        let one = |h: &Host| std::fs::read_to_string(&h.log).unwrap_or_default();
        self.hosts.iter().map(one).collect::<Vec<_>>().join("\n---\n")
    }

    fn wait(&self, what: &str, limit: Duration, ok: &mut dyn FnMut() -> bool) {
        let t0 = Instant::now();
        while !ok() {
            assert!(t0.elapsed() < limit, "timed out waiting for {what}:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn deploy(&self, extra: &[String]) {
        let mut sets = vec![
            format!("cluster.zookeeper={:?}", self.zk),
            format!("cluster.kafka={:?}", crate::cluster::kafka()),
            format!("spouts.lines.source.kafka.topic={:?}", self.topic),
            format!("snapshot.store={:?}", self.store),
            "snapshot.interval=\"500ms\"".into(),
        ];
        sets.extend(extra.iter().cloned());
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_ok(&deploy_env("topologies/wordcount-hosts.toml", &sets, &env, Duration::from_secs(300)));
    }

    fn status(&self) -> serde_json::Value {
        let mut cmd = Command::new(bin());
        cmd.args(["status", "--json", "--zookeeper", &self.zk]);
        serde_json::from_slice(&run_limited(cmd, Duration::from_secs(60)).stdout).unwrap_or_default()
    }

    fn epoch(&self) -> u64 {
        self.status()["topologies"][0]["status"]["epoch"].as_u64().unwrap_or(0)
    }

    fn wait_for_table(&self, want: &BTreeMap<String, u64>) {
        let t0 = Instant::now();
        while self.db.table() != *want && t0.elapsed() < Duration::from_secs(240) {
            std::thread::sleep(Duration::from_millis(200));
        }
        if self.db.table() != *want {
            eprintln!("{}", self.logs());
        }
        assert_counts(&self.db.table(), want);
    }

    fn assert_every_host_runs_a_share(&self) {
        let placed = self.status()["topologies"][0]["assignment"].as_object().map_or(0, |a| a.len());
        assert_eq!(placed, HOSTS, "not every host runs a share: {}", self.status());
    }

    /// Stops watching; fails if a worker opened a path outside its directory.
    fn assert_nothing_shared(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let bad = self.watcher.take().map(|w| w.join().expect("watcher")).unwrap_or_default();
        assert!(bad.is_empty(), "workers opened paths outside their own directories: {bad:#?}");
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in &mut self.hosts {
            let _ = h.child.kill();
            let _ = h.child.wait();
        }
    }
}

/// Paths a process has open (its file descriptors that name files).
fn open_paths(pid: u32) -> Vec<PathBuf> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    fds.flatten().filter_map(|fd| std::fs::read_link(fd.path()).ok()).filter(|p| p.is_absolute()).collect()
}

/// Watches the workers' open files until stopped; returns every path one
/// had open outside its own directory and the system's.
fn watch_files(hosts: Arc<Mutex<Vec<(u32, PathBuf)>>>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut bad = Vec::new();
        // memfd: anonymous memory (wasmtime's memory images), not a file.
        let system = ["/dev/", "/proc/", "/sys/", "/usr/", "/lib", "/etc/", "/run/netns/", "/memfd:"];
        while !stop.load(Ordering::Relaxed) {
            for (pid, dir) in hosts.lock().expect("hosts").iter() {
                for p in open_paths(*pid) {
                    let s = p.display().to_string();
                    let ok = p.starts_with(dir) || system.iter().any(|d| s.starts_with(d)) || p == Path::new(bin());
                    let what = format!("{s} (worker {pid}, whose directory is {})", dir.display());
                    if !ok && !bad.contains(&what) {
                        bad.push(what);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bad
    })
}

#[test]
fn three_hosts_on_s3_survive_a_kill_a_cut_link_and_a_zombie_exactly() {
    let mut h = Hosts::new("3s");
    let files = corpus(&h.sb.path("data"), 951, 240_000, 8);
    produce_to(&h.topic, &files[..1]);
    h.deploy(&[]);
    let first = count_words(&files[..1]);
    h.wait("the first counts", Duration::from_secs(180), &mut || h.db.table() == first);
    h.assert_every_host_runs_a_share();
    // 1. kill -9 of host 0's worker, then it comes back.
    produce_to(&h.topic, &files[1..3]);
    h.kill_and_restart(0);
    // 2. host 1's link cut for longer than the session.
    let e = h.epoch();
    h.net.link(1, false);
    produce_to(&h.topic, &files[3..5]);
    h.wait("a reboot without host 1", Duration::from_secs(60), &mut || h.epoch() > e);
    std::thread::sleep(Duration::from_secs(4));
    h.net.link(1, true);
    // 3. host 2's worker paused past its epoch, then resumed.
    let e = h.epoch();
    let pid = h.hosts[2].child.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().expect("kill").success());
    h.wait("a reboot without host 2", Duration::from_secs(60), &mut || h.epoch() > e);
    produce_to(&h.topic, &files[5..7]);
    std::thread::sleep(Duration::from_secs(2));
    let resumed = SystemTime::now() - Duration::from_secs(1);
    assert!(Command::new("kill").args(["-CONT", &pid]).status().expect("kill").success());
    produce_to(&h.topic, &files[7..]);
    h.wait_for_table(&count_words(&files));
    std::thread::sleep(Duration::from_secs(2));
    assert_counts(&h.db.table(), &count_words(&files));
    assert!(!h.db.assert_rounds_in_order().is_empty());
    // Nothing of the paused worker's old epoch written after it resumed.
    let store = crate::s3::open(&h.store);
    let root = store.root().join("rounds");
    for (path, meta) in store.remote().expect("object store").list(&root).expect("list") {
        let round: u64 =
            path.strip_prefix(&root).ok().and_then(|p| p.iter().next()?.to_str()?.parse().ok()).unwrap_or(0);
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(meta.modified_ms);
        assert!(
            round >> 32 > e || at < resumed,
            "{} (epoch {}) was written after the zombie resumed",
            path.display(),
            round >> 32
        );
    }
    h.assert_nothing_shared();
}

/// `module` with `mib` MiB of random bytes appended as a custom section
/// (which the engine ignores), written to `to`.
fn padded(module: &str, to: &Path, mib: usize, seed: u64) -> String {
    let mut bytes = std::fs::read(module).expect("read module");
    let name = b"hailstorm-test-padding";
    let mut rng = Rng::new(seed);
    let payload: Vec<u8> = (0..mib << 20).map(|_| rng.next() as u8).collect();
    let mut size = (name.len() + 1 + payload.len()) as u64;
    bytes.push(0);
    loop {
        let b = (size & 0x7f) as u8;
        size >>= 7;
        bytes.push(if size == 0 { b } else { b | 0x80 });
        if size == 0 {
            break;
        }
    }
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(&payload);
    std::fs::write(to, &bytes).expect("write padded module");
    to.display().to_string()
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_40_mb_module_reaches_the_three_hosts_through_the_store_and_swaps_with_its_state() {
    let mut h = Hosts::new("6s");
    let big = padded(&wasm("count_words.wasm"), &h.sb.path("big-1.wasm"), 40, 1);
    let files = corpus(&h.sb.path("data"), 921, 60_000, 3);
    produce_to(&h.topic, &files[..1]);
    h.deploy(&[format!("bolts.counts.module={big:?}")]);
    h.wait_for_table(&count_words(&files[..1]));
    h.assert_every_host_runs_a_share();
    let hash = hex_sha256(&std::fs::read(&big).expect("read"));
    for host in &h.hosts {
        let cached = host.dir.join(format!("{hash}.wasm"));
        let size = std::fs::metadata(&cached).map(|m| m.len()).unwrap_or(0);
        assert!(size > 40 << 20, "{} has no copy of the 40 MB module:\n{}", host.dir.display(), h.logs());
    }
    // ZooKeeper holds the module's size, not its bytes.
    let zk = hailstorm::cluster::zk::Zk::connect(&h.zk, Duration::from_secs(10)).expect("ZooKeeper");
    let node = hailstorm::cluster::state::Paths::module(&hash);
    let (data, _) = zk.get(&node).expect("get").expect("the module's node");
    assert!(data.starts_with(b"store:") && data.len() < 64, "ZooKeeper holds {} bytes for the module", data.len());
    assert!(zk.children(&node).expect("children").is_empty(), "the module is in ZooKeeper chunks");
    // Hot swap to another 40 MB module (the same code, other padding, so
    // another hash): the counts go on from the old state, so the words
    // counted before the swap are there after it.
    let big2 = padded(&wasm("count_words.wasm"), &h.sb.path("big-2.wasm"), 40, 2);
    let e = h.epoch();
    h.deploy(&[format!("bolts.counts.module={big2:?}")]);
    let hash2 = hex_sha256(&std::fs::read(&big2).expect("read"));
    h.wait("every host running the new module", Duration::from_secs(120), &mut || {
        h.epoch() > e && h.hosts.iter().all(|host| host.dir.join(format!("{hash2}.wasm")).exists())
    });
    produce_to(&h.topic, &files[1..]);
    h.wait_for_table(&count_words(&files));
    h.assert_every_host_runs_a_share();
    let logs = h.logs();
    for lost in ["session expired", "joining again", "Expired"] {
        assert!(!logs.contains(lost), "a ZooKeeper session was lost ({lost}):\n{logs}");
    }
    h.assert_nothing_shared();
}
