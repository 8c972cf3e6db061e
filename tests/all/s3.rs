//! The snapshot store in S3-compatible object storage (`s3://`), embedded,
//! against the S3 server `scripts/services.sh` starts: exactly-once under
//! `kill -9`, what the store holds afterwards, an outage of the server, and
//! set-ups that cannot work.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hailstorm::store::FileStore;
use hailstorm::topology::Store;

use crate::common::*;
use crate::kafka_tls::service;
use crate::sinks::{follow_with, unique, Proxy};

/// The `AWS_*` settings of the test server (`endpoint` in place of its own).
fn aws_env(endpoint: Option<&str>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ALLOW_HTTP"]
        .iter()
        .map(|k| (k.to_string(), service(k)))
        .collect();
    env.push(("AWS_ENDPOINT_URL".into(), endpoint.map_or_else(|| service("HAILSTORM_TEST_S3"), str::to_string)));
    env
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A fresh prefix of the test bucket.
pub(crate) fn url(name: &str) -> String {
    format!("s3://{}/{}", service("HAILSTORM_TEST_S3_BUCKET"), unique(name))
}

/// The store at `url`, opened as the engine opens it (the test's
/// environment pointed at the test server first).
pub(crate) fn open(url: &str) -> FileStore {
    for (k, v) in aws_env(None) {
        if std::env::var(&k).is_err() {
            std::env::set_var(k, v);
        }
    }
    FileStore::open_store(&Store::S3 { url: url.to_string(), grace: Duration::ZERO }).expect("open the S3 store")
}

/// The wordcount on `sb`'s inputs with its store at `url`, collecting at once.
fn sets(sb: &Sandbox, inputs: &[PathBuf], url: &str) -> Vec<String> {
    let mut s = sb.sets(inputs);
    s.push(format!("snapshot.store={url:?}"));
    s.push("snapshot.grace=\"0s\"".into());
    s
}

/// Every object of the store, relative to its root.
fn objects(store: &FileStore) -> BTreeSet<String> {
    let root = store.root().to_path_buf();
    let remote = store.remote().expect("an object store");
    remote
        .list(&root)
        .expect("list")
        .into_iter()
        .map(|(p, _)| p.strip_prefix(&root).expect("under root").display().to_string())
        .collect()
}

/// What the design says a store holds after collection: its records, the
/// kept complete rounds (commit and deltas) and the chains they need; no
/// round without its commit, no data object nothing needs.
fn assert_only_what_the_design_names(store: &FileStore) {
    let all = objects(store);
    let rounds = store.rounds().expect("rounds");
    assert!(!rounds.is_empty() && rounds.len() <= 4, "complete rounds kept: {rounds:?}");
    let mut needed: BTreeSet<String> = BTreeSet::new();
    for r in &rounds {
        let commit = store.read_commit(*r).expect("read").expect("listed rounds are complete");
        needed.insert(format!("rounds/{r:020}/COMMIT"));
        for f in &commit.files {
            needed.insert(format!("rounds/{r:020}/{}-{}.delta", f.processor, f.instance));
        }
        for chain in store.chains(&commit).expect("intact chains").values() {
            needed
                .extend(chain.files.iter().map(|f| f.strip_prefix(store.root()).expect("root").display().to_string()));
        }
    }
    // A round a chain goes through is kept whole: its commit vouches for its deltas' CRCs.
    let round_of = |o: &str| o.strip_prefix("rounds/").and_then(|r| r.split('/').next()).map(str::to_string);
    let kept_rounds: BTreeSet<String> = needed.iter().filter_map(|n| round_of(n)).collect();
    for o in &all {
        let record = ["OWNER", "LEASE", "HEAD", "sinks/table"].contains(&o.as_str());
        let in_kept_round = round_of(o).is_some_and(|r| kept_rounds.contains(&r));
        assert!(
            record || needed.contains(o) || in_kept_round,
            "object {o} is neither a record nor needed by a kept round:\n{all:#?}"
        );
    }
    for r in &kept_rounds {
        assert!(all.contains(&format!("rounds/{r}/COMMIT")), "round {r} is on a kept chain without its commit");
    }
    assert!(needed.iter().all(|n| all.contains(n)), "missing objects: {needed:?} vs {all:?}");
}

#[test]
fn kill_9_on_an_s3_store_then_resume_gives_exact_counts_and_leaves_no_orphans() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 31, 12_000_000, 2);
    let url = url("kill");
    let env = aws_env(None);
    crate::crash::kill_at_random_then_finish(
        "topologies/wordcount.toml",
        &sb,
        &sets(&sb, &inputs, &url),
        &env_refs(&env),
        |_| {},
    );
    assert_counts(&sb.table(), &count_words(&inputs));
    assert!(!sb.path("store").exists(), "an s3:// run wrote a local store");
    // The engine keeps the rounds a sink may still need; collecting down to
    // the newest round then leaves its objects and nothing of the killed
    // runs (their unpublished deltas, their compactions, their commits).
    let store = open(&url);
    let newest = *store.rounds().expect("rounds").last().expect("a complete round");
    let before = objects(&store);
    assert!(before.iter().any(|o| o.starts_with("rounds/") && !o.contains(&format!("{newest:020}"))), "{before:#?}");
    store.collect(&[newest], newest).expect("collect");
    assert_only_what_the_design_names(&store);
    assert_eq!(store.rounds().expect("rounds"), vec![newest]);
}

#[test]
fn an_s3_server_down_for_30_s_makes_rounds_wait_then_complete() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 32, 20_000, 2);
    let target = service("HAILSTORM_TEST_S3");
    let proxy = Proxy::start(target.trim_start_matches("http://"));
    let env = aws_env(Some(&format!("http://{}", proxy.addr)));
    let mut s = sets(&sb, &inputs, &url("outage"));
    s.push("snapshot.interval=\"100ms\"".into());
    let log = sb.path("deploy.log");
    let mut child =
        follow_with("topologies/wordcount.toml", &s, &env_refs(&env), &log, &["--metrics-addr", "127.0.0.1:0"]);
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let wait = |what: &str, limit: Duration, ok: &mut dyn FnMut() -> bool| {
        let t0 = Instant::now();
        while !ok() {
            assert!(t0.elapsed() < limit, "timed out waiting for {what}:\n{}", text());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut addr = String::new();
    wait("the metrics address", Duration::from_secs(60), &mut || {
        addr = crate::observe::address_in(&text()).unwrap_or_default();
        !addr.is_empty()
    });
    let first = count_words(&inputs);
    let table = || if sb.table_path().exists() { sb.table() } else { Default::default() };
    wait("the first table", Duration::from_secs(120), &mut || table() == first);
    let metric =
        |name: &str| crate::observe::sum(&crate::observe::samples(&crate::observe::get(&addr, "/metrics")), name, &[]);
    let complete_before = metric("hailstorm_rounds_complete_total");
    proxy.cut(true);
    let cut_at = Instant::now();
    let more = corpus(&sb.path("more"), 33, 20_000, inputs.len());
    crate::observe::append(&inputs, &more);
    wait("the store to be reported unreachable", Duration::from_secs(30), &mut || {
        metric("hailstorm_store_unreachable") == 1.0
    });
    let state = crate::observe::get(&addr, "/api/state");
    assert!(state.contains("\"store_unreachable\":\""), "the state does not say the store is unreachable: {state}");
    assert!(text().contains("is unreachable"), "the log does not say the store is unreachable:\n{}", text());
    std::thread::sleep(Duration::from_secs(30).saturating_sub(cut_at.elapsed()));
    let during = metric("hailstorm_rounds_complete_total");
    assert!(
        during <= complete_before + 1.0,
        "rounds completed while the store was down: {complete_before} -> {during}"
    );
    assert_eq!(child.try_wait().expect("try_wait"), None, "the run stopped during the outage:\n{}", text());
    proxy.cut(false);
    let all = count_words(&inputs);
    wait("the whole table after the outage", Duration::from_secs(180), &mut || table() == all);
    wait("the store to be reported reachable", Duration::from_secs(30), &mut || {
        metric("hailstorm_store_unreachable") == 0.0
    });
    assert!(text().contains("answers again"), "{}", text());
    child.kill().ok();
    child.wait().ok();
}

#[test]
fn bad_s3_set_ups_are_clear_errors_at_deploy() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 34, 1_000, 1);
    let run = |store: &str, env: Vec<(String, String)>| {
        let t0 = Instant::now();
        let out = deploy_env(
            "topologies/wordcount.toml",
            &sets(&sb, &inputs, store),
            &env_refs(&env),
            Duration::from_secs(60),
        );
        assert!(!out.status.success(), "deploy succeeded on {store}");
        assert!(t0.elapsed() < Duration::from_secs(30), "the error took {:?}", t0.elapsed());
        stderr(&out)
    };
    let e = run("s3://no-such-bucket-here/x", aws_env(None));
    assert!(e.contains("the bucket `no-such-bucket-here` does not exist at"), "{e}");
    let mut wrong = aws_env(None);
    wrong.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
    wrong.push(("AWS_SECRET_ACCESS_KEY".into(), "not-the-secret".into()));
    let e = run(&url("creds"), wrong);
    assert!(e.contains("refuses the credentials of access key"), "{e}");
    let e = run(&url("nowhere"), aws_env(Some("http://127.0.0.1:9")));
    assert!(e.contains("cannot reach http://127.0.0.1:9 (AWS_ENDPOINT_URL"), "{e}");
    let out =
        deploy("topologies/wordcount.toml", &[format!("snapshot.store={:?}", "s3://A_B/x")], Duration::from_secs(60));
    assert!(stderr(&out).contains("is not a bucket name"), "{}", stderr(&out));
    assert!(!sb.path("out/table.tsv").exists(), "a run with a bad store wrote output");
}

// ---- a cluster on an S3 store ----

use crate::cluster::{kill_mid_stream_of, paused_zombie_of, Cluster};

/// A cluster of `workers` whose store is a fresh prefix of the test bucket.
fn s3_cluster(name: &str, workers: usize) -> Cluster {
    let env = aws_env(None);
    let mut c = Cluster::with_worker_env(name, workers, &env_refs(&env));
    c.store = Some(url(name));
    c
}

#[test]
fn kill_9_of_a_worker_of_a_cluster_on_s3_loses_and_repeats_nothing() {
    kill_mid_stream_of(&mut s3_cluster("s3-kill", 3), 911, true);
}

#[test]
fn a_paused_worker_of_a_cluster_on_s3_is_fenced_and_its_writes_never_show() {
    paused_zombie_of(&s3_cluster("s3-fence", 3));
}

/// The workers reach the store through a proxy that is cut for a while:
/// `status` names the workers that cannot reach it, then none, and the
/// count is exact.
#[test]
fn status_says_which_workers_cannot_reach_the_store_of_a_cluster() {
    let target = service("HAILSTORM_TEST_S3");
    let proxy = Proxy::start(target.trim_start_matches("http://"));
    let env = aws_env(Some(&format!("http://{}", proxy.addr)));
    let mut c = Cluster::with_worker_env("s3-down", 2, &env_refs(&env));
    c.store = Some(url("s3-down"));
    let files = crate::cluster::inputs(&c, 931, 40_000, 4);
    c.produce(&files[..1]);
    assert_ok(&c.deploy(&[]));
    c.wait_for_table(&count_words(&files[..1]), Duration::from_secs(120));
    proxy.cut(true);
    c.produce(&files[1..3]);
    let unreachable = |c: &Cluster| c.status()["topologies"][0]["store_unreachable"].as_object().map_or(0, |o| o.len());
    c.wait_until("status to say the store is unreachable", Duration::from_secs(60), || unreachable(&c) > 0);
    let shown = std::process::Command::new(bin()).args(["status", "--zookeeper", &c.zk]).output().expect("status");
    let shown = String::from_utf8_lossy(&shown.stdout).to_string();
    assert!(shown.contains("the snapshot store is unreachable from worker"), "{shown}");
    std::thread::sleep(Duration::from_secs(10));
    proxy.cut(false);
    c.produce(&files[3..]);
    c.wait_for_table(&count_words(&files), Duration::from_secs(180));
    c.wait_until("status to say the store answers again", Duration::from_secs(60), || unreachable(&c) == 0);
}
