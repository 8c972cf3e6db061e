//! Several hosts, for real: three workers in three network namespaces, each
//! with its own address, its own data directory and nothing shared on disk;
//! ZooKeeper, Kafka, PostgreSQL and the S3 server reached over a virtual
//! network (a bridge, a veth pair per host). A host's worker is killed, a
//! host's link is cut for longer than the session, a worker is paused past
//! its epoch: the table is exact, and no worker opens another's directory.

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
        let n = std::process::id() % 200 + 20;
        let tag = format!("hs{n}");
        let net = format!("10.231.{n}");
        let mut me = Net { tag, net, forwarders: Vec::new() };
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
        for i in 0..HOSTS {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(i)]).status();
            let _ = Command::new("ip").args(["link", "del", &format!("{}h{i}", self.tag)]).status();
        }
        let _ = Command::new("ip").args(["link", "del", &format!("{}b", self.tag)]).status();
    }
}

/// A worker on host `i`: in its namespace, its own data directory (also its
/// temporary directory), listening on the host's address.
struct Host {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
}

fn start_host(net: &Net, i: usize, zk: &str, env: &[(String, String)], sb: &Sandbox) -> Host {
    let dir = sb.path(&format!("host-{i}"));
    std::fs::create_dir_all(&dir).expect("host dir");
    // Its log too: the worker opens nothing outside its directory.
    let log = dir.join("worker.log");
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log");
    let child = Command::new("ip")
        .args(["netns", "exec", &net.ns(i)])
        .arg(bin())
        .args(["worker", "--zookeeper", zk, "--session-timeout", "3s"])
        .arg("--listen")
        .arg(format!("{}:0", net.addr(i)))
        .arg("--data-dir")
        .arg(&dir)
        .env("TMPDIR", &dir)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("start a worker");
    Host { child, dir, log }
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
    let _one = crate::cluster::one_at_a_time();
    modules();
    let sb = Sandbox::new();
    let db = Schema::new().with_table();
    let (zk_addr, kafka, s3, pg) =
        (zookeeper(), crate::cluster::kafka(), service("HAILSTORM_TEST_S3"), service("HAILSTORM_TEST_POSTGRES"));
    let net = Net::new(&[loopback_port(&zk_addr), loopback_port(&kafka), loopback_port(&s3), loopback_port(&pg)]);
    let id = unique("hosts");
    let zk = format!("{zk_addr}/hailstorm-test-{id}");
    let topic = format!("t-{id}");
    let mut env: Vec<(String, String)> = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ALLOW_HTTP"]
        .iter()
        .map(|k| (k.to_string(), service(k)))
        .collect();
    env.push(("AWS_ENDPOINT_URL".into(), s3.clone()));
    env.push(("HAILSTORM_PG_URL".into(), db.url.clone()));
    let mut hosts: Vec<Host> = (0..HOSTS).map(|i| start_host(&net, i, &zk, &env, &sb)).collect();
    let watched = Arc::new(Mutex::new(hosts.iter().map(|h| (h.child.id(), h.dir.clone())).collect::<Vec<_>>()));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_files(watched.clone(), stop.clone());
    let logs = |hosts: &[Host]| -> String {
        hosts.iter().map(|h| std::fs::read_to_string(&h.log).unwrap_or_default()).collect::<Vec<_>>().join("\n---\n")
    };
    let files = corpus(&sb.path("data"), 951, 240_000, 8);
    produce_to(&topic, &files[..1]);
    let sets = vec![
        format!("cluster.zookeeper={zk:?}"),
        format!("cluster.kafka={kafka:?}"),
        format!("spouts.lines.source.kafka.topic={topic:?}"),
        format!("snapshot.store={:?}", format!("s3://{}/{id}", service("HAILSTORM_TEST_S3_BUCKET"))),
        "snapshot.interval=\"500ms\"".into(),
    ];
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = deploy_env("topologies/wordcount-hosts.toml", &sets, &env_refs, Duration::from_secs(300));
    assert_ok(&out);
    let wait = |what: &str, limit: Duration, hosts: &[Host], ok: &mut dyn FnMut() -> bool| {
        let t0 = Instant::now();
        while !ok() {
            assert!(t0.elapsed() < limit, "timed out waiting for {what}:\n{}", logs(hosts));
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let status = || {
        let mut cmd = Command::new(bin());
        cmd.args(["status", "--json", "--zookeeper", &zk]);
        serde_json::from_slice::<serde_json::Value>(&run_limited(cmd, Duration::from_secs(60)).stdout)
            .unwrap_or_default()
    };
    let epoch = || status()["topologies"][0]["status"]["epoch"].as_u64().unwrap_or(0);
    let first = count_words(&files[..1]);
    wait("the first counts", Duration::from_secs(180), &hosts, &mut || db.table() == first);
    let placed = status()["topologies"][0]["assignment"].as_object().map_or(0, |a| a.len());
    assert_eq!(placed, HOSTS, "not every host runs a share: {}", status());

    // 1. kill -9 of host 0's worker, then it comes back.
    let e = epoch();
    produce_to(&topic, &files[1..3]);
    hosts[0].child.kill().expect("kill -9");
    hosts[0].child.wait().ok();
    wait("a reboot without host 0", Duration::from_secs(60), &hosts, &mut || epoch() > e);
    hosts[0] = start_host(&net, 0, &zk, &env, &sb);
    watched.lock().expect("hosts")[0].0 = hosts[0].child.id();

    // 2. host 1's link cut for longer than the session.
    let e = epoch();
    net.link(1, false);
    produce_to(&topic, &files[3..5]);
    wait("a reboot without host 1", Duration::from_secs(60), &hosts, &mut || epoch() > e);
    std::thread::sleep(Duration::from_secs(4));
    net.link(1, true);

    // 3. host 2's worker paused past its epoch, then resumed.
    let e = epoch();
    let pid = hosts[2].child.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().expect("kill").success());
    wait("a reboot without host 2", Duration::from_secs(60), &hosts, &mut || epoch() > e);
    produce_to(&topic, &files[5..7]);
    std::thread::sleep(Duration::from_secs(2));
    let resumed = SystemTime::now() - Duration::from_secs(1);
    assert!(Command::new("kill").args(["-CONT", &pid]).status().expect("kill").success());
    produce_to(&topic, &files[7..]);

    let all = count_words(&files);
    wait("the whole table", Duration::from_secs(240), &hosts, &mut || db.table() == all);
    std::thread::sleep(Duration::from_secs(2));
    assert_counts(&db.table(), &all);
    let rounds = db.assert_rounds_in_order();
    assert!(!rounds.is_empty());
    // Nothing of the paused worker's old epoch written after it resumed.
    let store = crate::s3::open(&format!("s3://{}/{id}", service("HAILSTORM_TEST_S3_BUCKET")));
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
    stop.store(true, Ordering::Relaxed);
    let bad = watcher.join().expect("watcher");
    assert!(bad.is_empty(), "workers opened paths outside their own directories: {bad:#?}");
    let opened: usize = hosts.iter().map(|h| std::fs::read_dir(&h.dir).map_or(0, |d| d.count())).sum();
    assert!(opened >= HOSTS, "the hosts' directories hold nothing (no module cached?)");
    for mut h in hosts {
        let _ = h.child.kill();
        let _ = h.child.wait();
    }
}
