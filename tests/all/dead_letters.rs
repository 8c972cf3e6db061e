//! A spout's policy for records its deserializer fails on: `skip` leaves
//! them out, `dead-letter` sends each to a bolt through the spout's
//! dead-letter stream, exactly once across `kill -9`, while the good records
//! count exactly.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::common::*;

const FIXTURE: &str = "tests/fixtures/dead-letters.toml";

/// A corpus with bad lines among the good ones: `(inputs, good lines only,
/// the dead letters expected: key PARTITION@OFFSET -> the line)`. One line in
/// `every` is bad; bad lines trap (BOOM) or are rejected (REJECT) by turns.
fn corpus_with_bad_lines(
    sb: &Sandbox,
    seed: u64,
    words: usize,
    every: u64,
) -> (Vec<PathBuf>, Vec<PathBuf>, BTreeMap<String, String>) {
    corpus_in_files(sb, seed, words, every, 2)
}

/// [`corpus_with_bad_lines`] in `files` files.
fn corpus_in_files(
    sb: &Sandbox,
    seed: u64,
    words: usize,
    every: u64,
    files: usize,
) -> (Vec<PathBuf>, Vec<PathBuf>, BTreeMap<String, String>) {
    let clean = corpus(&sb.path("clean"), seed, words, files);
    let mut rng = Rng::new(seed + 1);
    let (mut inputs, mut dead) = (Vec::new(), BTreeMap::new());
    for (f, path) in clean.iter().enumerate() {
        let text = std::fs::read_to_string(path).expect("read corpus");
        let out_path = sb.path(&format!("input-{f}.txt"));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&out_path).expect("create"));
        let mut offset = 0u64;
        for (i, line) in text.lines().enumerate() {
            if rng.below(every) == 0 {
                let marker = if dead.len() % 2 == 0 { "BOOM" } else { "REJECT" };
                let bad = format!("bad line {f}-{i} {marker} here");
                dead.insert(format!("lines/{f}@{offset}"), bad.clone());
                writeln!(out, "{bad}").expect("write");
                offset += bad.len() as u64 + 1;
            }
            writeln!(out, "{line}").expect("write");
            offset += line.len() as u64 + 1;
        }
        out.flush().expect("flush");
        inputs.push(out_path);
    }
    (inputs, clean, dead)
}

/// `--set`s that point the fixture at the sandbox, with `policy`.
fn sets(sb: &Sandbox, inputs: &[PathBuf], policy: &str) -> Vec<String> {
    let mut sets = sb.sets(inputs);
    sets.push(format!("sinks.letters.config.path={:?}", letters_path(sb).display().to_string()));
    sets.push(format!("sinks.letters.grants.dirs=[{:?}]", sb.path("out").display().to_string()));
    sets.push(format!("spouts.lines.on_error={policy:?}"));
    if policy != "dead-letter" {
        // Without dead letters nothing reads them.
        sets.push("bolts.dead.inputs=[\"lines\"]".into());
    }
    sets
}

fn letters_path(sb: &Sandbox) -> PathBuf {
    sb.path("out/dead-letters.tsv")
}

/// The dead-letter table: key -> the JSON document its value holds.
fn read_letters(path: &Path) -> BTreeMap<String, serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let (k, v) = line.split_once('\t').unwrap_or_else(|| panic!("bad table line {line:?}"));
            let hex = v.strip_prefix("0x").unwrap_or_else(|| panic!("not a hex value: {line:?}"));
            let bytes: Vec<u8> =
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect();
            (k.to_string(), serde_json::from_slice(&bytes).expect("a dead letter is JSON"))
        })
        .collect()
}

/// Each expected dead letter is there once, with its record and the error.
fn assert_letters(got: &BTreeMap<String, serde_json::Value>, want: &BTreeMap<String, String>) {
    let keys = |m: &BTreeMap<String, _>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(got), want.keys().cloned().collect::<Vec<_>>(), "the dead letters differ");
    for (k, line) in want {
        let doc = &got[k];
        assert_eq!(doc["record"], line.as_str(), "{k}: {doc}");
        let (partition, offset) = k.split_once('@').expect("PARTITION@OFFSET");
        assert_eq!(doc["partition"], partition, "{k}: {doc}");
        assert_eq!(doc["offset"].to_string(), offset, "{k}: {doc}");
        let error = doc["error"].as_str().unwrap_or_default();
        let why = if line.contains("BOOM") { "trap_on matched" } else { "reject_on matched" };
        assert!(error.contains(why) && error.contains(k), "{k}: {error}");
    }
}

#[test]
fn dead_letters_hold_each_bad_record_once_and_the_good_ones_count_exactly() {
    let sb = Sandbox::new();
    let (inputs, clean, dead) = corpus_with_bad_lines(&sb, 61, 200_000, 400);
    assert!(dead.len() > 20, "only {} bad lines", dead.len());
    let out = deploy(FIXTURE, &sets(&sb, &inputs, "dead-letter"), std::time::Duration::from_secs(300));
    assert_ok(&out);
    assert_counts(&sb.table(), &count_words(&clean));
    assert_letters(&read_letters(&letters_path(&sb)), &dead);
}

#[test]
fn skipped_records_are_left_out_and_the_good_ones_count_exactly() {
    let sb = Sandbox::new();
    let (inputs, clean, dead) = corpus_with_bad_lines(&sb, 62, 100_000, 300);
    let out = deploy(FIXTURE, &sets(&sb, &inputs, "skip"), std::time::Duration::from_secs(300));
    assert_ok(&out);
    assert_counts(&sb.table(), &count_words(&clean));
    let err = stderr(&out);
    assert!(err.contains("record skipped"), "no skipped record was logged:\n{err}");
    assert!(dead.len() > 10);
}

#[test]
fn the_fail_policy_stops_at_the_first_bad_record() {
    let sb = Sandbox::new();
    let (inputs, _, dead) = corpus_with_bad_lines(&sb, 63, 50_000, 300);
    let out = deploy(FIXTURE, &sets(&sb, &inputs, "fail"), std::time::Duration::from_secs(300));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let first = dead.keys().any(|k| err.contains(k.as_str()));
    assert!(first && err.contains("matched record"), "the error does not name a bad record:\n{err}");
}

#[test]
fn dead_letters_are_exactly_once_across_kill_9() {
    let sb = Sandbox::new();
    let (inputs, clean, dead) = corpus_with_bad_lines(&sb, 64, 6_000_000, 3000);
    let extra = sets(&sb, &inputs, "dead-letter").split_off(sb.sets(&inputs).len());
    crate::crash::kill_and_rerun(FIXTURE, &sb, &inputs, &count_words(&clean), &extra);
    assert_letters(&read_letters(&letters_path(&sb)), &dead);
}

/// The metrics and the web view's state count the dead letters of the spout.
#[test]
fn dead_letters_are_counted_in_the_metrics_and_the_web_view() {
    use crate::observe::{address_in, get, samples};
    let sb = Sandbox::new();
    let (inputs, _, dead) = corpus_with_bad_lines(&sb, 65, 50_000, 300);
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("deploy").arg(topology(FIXTURE)).args(["--follow", "--metrics-addr", "127.0.0.1:0"]);
    for s in sets(&sb, &inputs, "dead-letter") {
        cmd.arg("--set").arg(s);
    }
    let log = sb.path("deploy.log");
    let file = std::fs::File::create(&log).expect("log");
    let mut child = cmd.stdout(std::process::Stdio::null()).stderr(file).spawn().expect("spawn deploy");
    let started = std::time::Instant::now();
    let want = dead.len() as f64;
    let series = "hailstorm_dead_letters_total{processor=\"lines\",topology=\"dead-letters\"}";
    let outcome = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(addr) = address_in(&text) {
            let counted = samples(&get(&addr, "/metrics")).get(series).copied();
            if counted == Some(want) {
                let state: serde_json::Value = serde_json::from_str(&get(&addr, "/api/state")).expect("state JSON");
                break Ok(state["topologies"][0]["bad_records"]["lines"]["dead_letters"].clone());
            }
        }
        if started.elapsed() > std::time::Duration::from_secs(120) {
            break Err(text);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    match outcome {
        Ok(in_state) => assert_eq!(in_state.as_f64(), Some(want), "the web view's state"),
        Err(text) => panic!("the metrics never counted {want} dead letters:\n{text}"),
    }
}

/// In a cluster reading Kafka, with a worker killed mid-stream: the good
/// records count exactly and every bad one is a dead letter once. (Offsets
/// are Kafka's here, so the letters are checked by their records.)
#[test]
fn dead_letters_in_a_cluster_are_exactly_once_with_a_worker_killed() {
    use crate::cluster::Cluster;
    let mut c = Cluster::new("dead-letters", 3);
    let (inputs, clean, dead) = corpus_in_files(&c.sb, 66, 240_000, 500, 4);
    c.produce(&inputs[..1]);
    let letters = c.sb.path("out/letters.tsv");
    let out = c.sb.path("out").display().to_string();
    let sets = [
        "spouts.lines.on_error=\"dead-letter\"".to_string(),
        format!("spouts.lines.deserializer={:?}", wasm("faulty.wasm")),
        "spouts.lines.config={ trap_on = \"BOOM\", reject_on = \"REJECT\" }".into(),
        "bolts.dead.inputs=[\"lines.dead\"]".into(),
        format!("bolts.dead.module={:?}", wasm("dead_letters.wasm")),
        "bolts.dead.parallelism=2".into(),
        "sinks.letters.inputs=[\"dead\"]".into(),
        format!(
            "sinks.letters.module={:?}",
            root().join("target/wasm32-wasip1/wasm/write_table.wasm").display().to_string()
        ),
        format!("sinks.letters.config.path={:?}", letters.display().to_string()),
        format!("sinks.letters.grants.dirs=[{out:?}]"),
    ];
    assert_ok(&c.deploy(&sets));
    c.wait_for_a_complete_round();
    let epoch = c.epoch();
    let victim = (c.leader() + 1) % 3;
    let producer = c.produce_in_background(&inputs[1..], std::time::Duration::from_millis(500));
    std::thread::sleep(std::time::Duration::from_millis(800));
    c.kill(victim);
    producer.join().expect("producer");
    c.wait_until("a reboot without the killed worker", std::time::Duration::from_secs(60), || c.epoch() > epoch);
    c.wait_for_table(&count_words(&clean), std::time::Duration::from_secs(180));
    let mut want: Vec<&str> = dead.values().map(String::as_str).collect();
    want.sort_unstable();
    c.wait_until("every dead letter", std::time::Duration::from_secs(60), || {
        letters.exists() && read_letters(&letters).len() >= want.len()
    });
    let got = read_letters(&letters);
    let mut records: Vec<&str> = got.values().map(|d| d["record"].as_str().unwrap_or_default()).collect();
    records.sort_unstable();
    assert_eq!(records, want, "the dead letters differ");
    for (k, d) in &got {
        assert_eq!(format!("{}@{}", d["partition"].as_str().unwrap_or_default(), d["offset"]), *k, "{d}");
    }
}

/// A module that runs out its deadline on every record cannot hold a spout
/// for ever under `skip`: taking a batch's records one at a time is bounded
/// as a whole, and then the run stops saying so.
#[test]
fn a_deserializer_that_times_out_on_every_record_is_stopped_in_bounded_time() {
    let sb = Sandbox::new();
    let (inputs, _, _) = corpus_with_bad_lines(&sb, 67, 20_000, 300);
    let mut sets = sets(&sb, &inputs, "skip");
    sets.push("spouts.lines.config.loop_on=\" \"".into());
    sets.push("spouts.lines.limits.call_timeout=\"100ms\"".into());
    let started = std::time::Instant::now();
    let out = deploy(FIXTURE, &sets, std::time::Duration::from_secs(120));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("taking its records one at a time"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "took {:?}", started.elapsed());
}
