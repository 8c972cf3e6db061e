//! What an operator sees: `/metrics` scraped during a run, the web view
//! rendered by a real (headless) Chromium, `status --json` health and
//! `--watch`, and `--log-format json`.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::{inputs, Cluster};
use crate::common::*;
use crate::faults::Relay;

/// A plain HTTP GET of `path` from `addr`; the body.
pub(crate) fn get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics address");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the response");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body.to_string()
}

/// Prometheus samples: `name{labels}` → value.
pub(crate) fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The sum of every series of `name` whose labels contain all of `with`.
pub(crate) fn sum(s: &BTreeMap<String, f64>, name: &str, with: &[&str]) -> f64 {
    s.iter()
        .filter(|(k, _)| k.split('{').next() == Some(name) && with.iter().all(|w| k.contains(w)))
        .map(|(_, v)| v)
        .sum()
}

/// A running `deploy --follow --metrics-addr 127.0.0.1:0` and its log.
struct Embedded {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    addr: String,
}

impl Embedded {
    fn start(sb: &Sandbox, inputs: &[PathBuf], extra: &[&str]) -> Embedded {
        let mut sets = sb.sets(inputs);
        sets.push("snapshot.interval=\"200ms\"".into());
        let mut cmd = Command::new(bin());
        cmd.arg("deploy").arg(topology("topologies/wordcount.toml")).args(["--follow", "--quiet"]);
        cmd.args(["--metrics-addr", "127.0.0.1:0"]).args(extra);
        for s in &sets {
            cmd.arg("--set").arg(s);
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn deploy");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                l.lock().expect("log").push(line);
            }
        });
        let mut e = Embedded { child, log, addr: String::new() };
        let started = Instant::now();
        while e.addr.is_empty() {
            assert!(started.elapsed() < Duration::from_secs(60), "no metrics address printed:\n{}", e.text());
            e.addr = address_in(&e.text()).unwrap_or_default();
            std::thread::sleep(Duration::from_millis(50));
        }
        e
    }

    fn text(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    fn metrics(&self) -> BTreeMap<String, f64> {
        samples(&get(&self.addr, "/metrics"))
    }

    /// Ctrl-C, then the whole log once it exited.
    fn stop(mut self) -> String {
        let ok = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().expect("kill -INT");
        assert!(ok.success());
        let started = Instant::now();
        while self.child.try_wait().expect("try_wait").is_none() {
            assert!(started.elapsed() < Duration::from_secs(60), "deploy did not stop:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(200));
        self.text()
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// "metrics on http://ADDR/metrics" in a log.
pub(crate) fn address_in(log: &str) -> Option<String> {
    let at = log.find("metrics on http://")? + "metrics on http://".len();
    Some(log[at..].split('/').next()?.to_string())
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn append(inputs: &[PathBuf], more: &[PathBuf]) {
    for (i, m) in inputs.iter().zip(more) {
        let extra = std::fs::read(m).expect("read");
        std::fs::OpenOptions::new().append(true).open(i).expect("open").write_all(&extra).expect("append");
    }
}

#[test]
fn metrics_move_during_a_run_and_agree_with_its_summary() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 91, 60_000, 2);
    let run = Embedded::start(&sb, &inputs, &[]);
    let want = count_words(&inputs);
    wait_for("the first table", Duration::from_secs(60), || sb.table_path().exists() && sb.table() == want);
    let names = [
        "hailstorm_records_in_total",
        "hailstorm_records_out_total",
        "hailstorm_batch_seconds_count",
        "hailstorm_guest_call_seconds_total",
        "hailstorm_guest_traps_total",
        "hailstorm_guest_timeouts_total",
        "hailstorm_inbox_fill_ratio",
        "hailstorm_partition_position",
        "hailstorm_partition_end",
        "hailstorm_partition_lag",
        "hailstorm_partition_lwm",
        "hailstorm_round_seconds_count",
        "hailstorm_round_bytes_total",
        "hailstorm_last_complete_round",
        "hailstorm_seconds_since_complete_round",
        "hailstorm_stalled",
        "hailstorm_process_resident_bytes",
    ];
    // Some are set about once a second.
    wait_for("every metric", Duration::from_secs(10), || {
        let m = run.metrics();
        names.iter().all(|n| m.keys().any(|k| k.split('{').next() == Some(*n)))
    });
    let first = run.metrics();
    for k in first.keys() {
        assert!(k.starts_with("hailstorm_"), "a metric without the prefix: {k}");
    }
    let records = |m: &BTreeMap<String, f64>| sum(m, "hailstorm_records_in_total", &["processor=\"lines\""]);
    let lines: usize = inputs.iter().map(|f| std::fs::read_to_string(f).expect("read").lines().count()).sum();
    assert_eq!(records(&first) as usize, lines, "records read so far");
    // More input: the counters move.
    let more = corpus(&sb.path("more"), 92, 30_000, 2);
    append(&inputs, &more);
    let want = count_words(&inputs);
    wait_for("the appended lines in the table", Duration::from_secs(60), || sb.table() == want);
    let second = run.metrics();
    assert!(records(&second) > records(&first), "records did not move: {} then {}", records(&first), records(&second));
    let rounds = |m: &BTreeMap<String, f64>| sum(m, "hailstorm_rounds_complete_total", &[]);
    assert!(rounds(&second) > rounds(&first) && rounds(&first) >= 1.0);
    assert_eq!(sum(&second, "hailstorm_stalled", &[]), 0.0);
    assert!(sum(&second, "hailstorm_process_resident_bytes", &[]) > 1e6);
    // Every partition is read to its end: position = end = the file's size, no lag, LWM there too.
    for (p, f) in inputs.iter().enumerate() {
        let size = std::fs::metadata(f).expect("size").len() as f64;
        let part = format!("partition=\"lines/{p}\"");
        assert_eq!(sum(&second, "hailstorm_partition_position", &[&part]), size);
        wait_for("the partition's end and LWM", Duration::from_secs(10), || {
            let m = run.metrics();
            let at = |name: &str| sum(&m, name, &[&part]);
            at("hailstorm_partition_end") == size
                && at("hailstorm_partition_lag") == 0.0
                && at("hailstorm_partition_lwm") == size
        });
    }
    let tuples_out = sum(&second, "hailstorm_records_out_total", &["processor=\"lines\""]);
    let folded = sum(&second, "hailstorm_records_in_total", &["processor=\"counts\""]);
    assert_eq!(tuples_out, folded, "every tuple the spouts emitted was folded");
    let log = run.stop();
    // The summary: "done: R records, T tuples in ...".
    let done = log.lines().find(|l| l.contains("hailstorm: done:")).unwrap_or_else(|| panic!("no summary:\n{log}"));
    let num = |after: &str| -> f64 {
        let words: Vec<&str> = done.split_whitespace().collect();
        let i = words.iter().position(|w| w.trim_end_matches(',') == after).expect("a count in the summary");
        words[i - 1].parse().expect("a number")
    };
    assert_eq!(num("records") as usize, lines + more.iter().map(|f| count_lines(f)).sum::<usize>(), "{done}");
    assert_eq!(num("records"), records(&second), "{done}");
    assert_eq!(num("tuples"), tuples_out, "{done}");
}

fn count_lines(f: &Path) -> usize {
    std::fs::read_to_string(f).expect("read").lines().count()
}

/// Headless Chromium's DOM of `url` after its scripts ran.
pub(crate) fn rendered(url: &str, screenshot: Option<&Path>) -> String {
    let mut cmd = Command::new("chromium");
    cmd.args(["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000", "--window-size=1280,900"]);
    match screenshot {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    cmd.arg(url).stdin(Stdio::null()).stderr(Stdio::null());
    let out = run_limited(cmd, Duration::from_secs(90));
    assert!(out.status.success(), "chromium failed (is it installed? scripts/test.sh installs it): {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The texts of every element with `class="CLASS"` in a DOM dump.
fn texts_of(dom: &str, class: &str) -> Vec<String> {
    let tag = format!("class=\"{class}\">");
    dom.match_indices(&tag).map(|(i, _)| dom[i + tag.len()..].split('<').next().unwrap_or("").to_string()).collect()
}

#[test]
fn the_web_view_renders_the_graph_and_live_rates_in_a_real_browser() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 93, 20_000, 2);
    let run = Embedded::start(&sb, &inputs, &[]);
    // A writer keeps appending while the page is read.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, inputs, dir) = (stop.clone(), inputs.clone(), sb.path("more"));
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                append(&inputs, &corpus(&dir.join(n.to_string()), 100 + n, 2_000, 2));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let url = format!("http://{}/", run.addr);
    // A first read of the state starts the rate window.
    let _ = get(&run.addr, "/api/state");
    std::thread::sleep(Duration::from_millis(1500));
    let first = rendered(&url, None);
    std::thread::sleep(Duration::from_millis(2000));
    let second = rendered(&url, None);
    let artifacts = root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let shot = artifacts.join("web-view.png");
    let _ = rendered(&url, Some(&shot));
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    for dom in [&first, &second] {
        for (name, kind) in [("lines", "spout"), ("counts", "bolt"), ("table", "sink")] {
            let node = format!("class=\"node {kind}\" data-name=\"{name}\"");
            assert!(dom.contains(&node), "no {kind} node {name} in the page:\n{dom}");
        }
        assert!(dom.contains("data-from=\"lines\" data-to=\"counts\""), "no edge lines → counts:\n{dom}");
        assert!(dom.contains("id=\"health\">running<") || dom.contains("id=\"health\">starting<"), "{dom}");
        assert!(dom.contains("lines/0") && dom.contains("lines/1"), "no partitions:\n{dom}");
    }
    let (r1, r2) = (texts_of(&first, "records"), texts_of(&second, "records"));
    assert!(!r1.is_empty() && r1 != r2, "the records shown did not change: {r1:?} then {r2:?}");
    let rates: Vec<String> = texts_of(&first, "rate").into_iter().chain(texts_of(&second, "rate")).collect();
    assert!(rates.iter().any(|r| r != "0" && r != "–"), "no rate above zero: {rates:?}");
    assert!(texts_of(&first, "rate") != texts_of(&second, "rate"), "the rates did not change: {rates:?}");
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.len() > 10_000 && png.starts_with(b"\x89PNG"), "no screenshot at {}", shot.display());
    let _ = run.stop();
}

#[test]
fn json_logs_carry_the_topology_epoch_processor_instance_and_round() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 94, 20_000, 2);
    let mut cmd = Command::new(bin());
    cmd.arg("--log-format").arg("json").arg("deploy").arg(topology("topologies/wordcount.toml"));
    for s in sb.sets(&inputs).iter().chain([&"snapshot.interval=\"100ms\"".to_string()]) {
        cmd.arg("--set").arg(s);
    }
    let out = run_limited(cmd, Duration::from_secs(120));
    assert_ok(&out);
    let err = stderr(&out);
    let events: Vec<serde_json::Value> = err.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(!events.is_empty(), "no JSON events:\n{err}");
    // Every field an event's spans carry, by name.
    let fields = |e: &serde_json::Value| -> BTreeMap<String, String> {
        let mut f = BTreeMap::new();
        for span in e["spans"].as_array().into_iter().flatten() {
            for (k, v) in span.as_object().into_iter().flatten() {
                f.insert(k.clone(), v.to_string().trim_matches('"').to_string());
            }
        }
        for (k, v) in e["fields"].as_object().into_iter().flatten() {
            f.insert(k.clone(), v.to_string().trim_matches('"').to_string());
        }
        f
    };
    let all: Vec<BTreeMap<String, String>> = events.iter().map(fields).collect();
    let instance = all.iter().find(|f| f.get("processor").map(String::as_str) == Some("counts"));
    let instance = instance.unwrap_or_else(|| panic!("no event of a counts instance:\n{err}"));
    assert_eq!(instance.get("topology").map(String::as_str), Some("wordcount"), "{instance:?}");
    assert!(instance.contains_key("epoch") && instance.contains_key("instance"), "{instance:?}");
    let round = all.iter().find(|f| f.contains_key("round")).unwrap_or_else(|| panic!("no round event:\n{err}"));
    assert_eq!(round.get("topology").map(String::as_str), Some("wordcount"), "{round:?}");
    // Lines that are not JSON: none (the summary and news are events too).
    let plain: Vec<&str> = err.lines().filter(|l| serde_json::from_str::<serde_json::Value>(l).is_err()).collect();
    assert!(plain.is_empty(), "lines that are not JSON: {plain:?}");
}

/// `status --json` says a running topology whose rounds stopped completing
/// is stalled (and the negotiator's worker exports `hailstorm_stalled 1`),
/// then running again; `--watch` refreshes; the worker's metrics and web
/// view state show the placement and the Kafka lag.
#[test]
fn status_and_metrics_report_a_stalled_cluster_then_its_recovery() {
    let mut c = Cluster::new("observe", 0);
    let dir = c.sb.path("worker-0");
    c.start_worker_with(&dir, &["--metrics-addr", "127.0.0.1:0"]);
    let relay = Relay::start_worker_behind(&mut c);
    let addr = address_in(&c.log(0)).unwrap_or_else(|| panic!("no metrics address:\n{}", c.log(0)));
    let files = inputs(&c, 95, 40_000, 2);
    c.produce(&files[..1]);
    assert_ok(&c.deploy(&["snapshot.interval=\"500ms\"".into(), "snapshot.round_timeout=\"120s\"".into()]));
    c.wait_for_table(&count_words(&files[..1]), Duration::from_secs(120));
    let verdict = |c: &Cluster| c.status()["topologies"][0]["health"]["verdict"].as_str().unwrap_or("").to_string();
    c.wait_until("a running verdict", Duration::from_secs(30), || verdict(&c) == "running");
    assert_eq!(c.leader(), 0, "the first worker leads (it registered first)");
    let m = samples(&get(&addr, "/metrics"));
    assert!(sum(&m, "hailstorm_records_in_total", &["processor=\"lines\""]) > 0.0, "{m:?}");
    // The broker's ends come with the client's statistics, about once a second.
    c.wait_until("the Kafka lag in the metrics", Duration::from_secs(30), || {
        let m = samples(&get(&addr, "/metrics"));
        m.iter().any(|(k, v)| k.starts_with("hailstorm_partition_end{") && *v > 0.0)
            && m.keys().any(|k| k.starts_with("hailstorm_partition_lag{"))
    });
    let state: serde_json::Value = serde_json::from_str(&get(&addr, "/api/state")).expect("state JSON");
    let placement = &state["topologies"][0]["placement"];
    let w1 = c.worker_id(1).expect("worker 1");
    assert!(placement.as_object().is_some_and(|p| p.values().any(|w| w == w1.as_str())), "{placement}");
    // Cut the second worker off: no round can complete; sessions stay alive.
    relay.pause(true);
    c.wait_until("a stalled verdict", Duration::from_secs(30), || verdict(&c) == "stalled");
    let reason = c.status()["topologies"][0]["health"]["reason"].as_str().unwrap_or("").to_string();
    assert!(reason.contains("no round completed for"), "{reason}");
    assert_eq!(sum(&samples(&get(&addr, "/metrics")), "hailstorm_stalled", &[]), 1.0);
    relay.pause(false);
    c.produce(&files[1..]);
    c.wait_until("a running verdict again", Duration::from_secs(60), || verdict(&c) == "running");
    assert_eq!(sum(&samples(&get(&addr, "/metrics")), "hailstorm_stalled", &[]), 0.0);
    c.wait_for_table(&count_words(&files), Duration::from_secs(120));
    // --watch: a JSON document per refresh until interrupted.
    let mut watch = Command::new(bin())
        .args(["status", "--json", "--watch", "0.5", "--zookeeper", &c.zk])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("status --watch");
    let mut lines = std::io::BufReader::new(watch.stdout.take().expect("stdout")).lines();
    for _ in 0..2 {
        let line = lines.next().expect("a refresh").expect("read");
        let doc: serde_json::Value = serde_json::from_str(&line).expect("one JSON document per line");
        assert_eq!(doc["topologies"][0]["health"]["verdict"], "running", "{doc}");
    }
    let _ = Command::new("kill").args(["-INT", &watch.id().to_string()]).status();
    let started = Instant::now();
    while watch.try_wait().expect("try_wait").is_none() {
        assert!(started.elapsed() < Duration::from_secs(10), "status --watch did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
}
