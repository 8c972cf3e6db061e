//! State at scale: millions of keys with default limits, incremental rounds
//! (small changes write small files), `kill -9` during compaction, a change
//! of parallelism with a large state, and a changelog sink whose replay is
//! the table, across `kill -9`.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// Words over exactly `keys` distinct ones: every key once, in random order,
/// then `repeats` more drawn at random; `files` files of lines of ten words.
fn high_cardinality(dir: &Path, seed: u64, keys: u64, repeats: u64, files: usize) -> Vec<PathBuf> {
    let mut rng = Rng::new(seed);
    let mut ids: Vec<u64> = (0..keys).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.below(i as u64 + 1) as usize);
    }
    ids.extend((0..repeats).map(|_| rng.below(keys)));
    std::fs::create_dir_all(dir).expect("mkdir");
    let per_file = ids.len().div_ceil(files);
    ids.chunks(per_file.max(1))
        .enumerate()
        .map(|(f, part)| {
            let path = dir.join(format!("keys-{f}.txt"));
            let mut out = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
            for line in part.chunks(10) {
                let words: Vec<String> = line.iter().map(|id| format!("k{id:x}")).collect();
                writeln!(out, "{}", words.join(" ")).expect("write");
            }
            out.flush().expect("flush");
            path
        })
        .collect()
}

fn spawn_deploy(topology_file: &str, sets: &[String]) -> Child {
    let mut cmd = Command::new(bin());
    cmd.arg("deploy").arg(topology(topology_file)).arg("--quiet");
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn deploy")
}

/// Whether process `pid` is writing a file of the store's `bases` folder (a
/// compaction in progress); files an earlier run left do not count.
fn compaction_in_progress(store: &Path, pid: u32) -> bool {
    let Ok(rounds) = std::fs::read_dir(store.join("bases")) else { return false };
    let mark = format!(".tmp-{pid}-");
    rounds.flatten().any(|r| {
        std::fs::read_dir(r.path())
            .is_ok_and(|files| files.flatten().any(|f| f.file_name().to_string_lossy().contains(&mark)))
    })
}

#[test]
fn a_count_over_two_million_keys_is_exact_with_default_limits() {
    let sb = Sandbox::new();
    let inputs = high_cardinality(&sb.path("data"), 71, 2_100_000, 900_000, 2);
    let mut sets = sb.sets(&inputs);
    sets.push("snapshot.interval=\"500ms\"".into());
    let out = deploy("topologies/wordcount.toml", &sets, Duration::from_secs(600));
    assert_ok(&out);
    let want = count_words(&inputs);
    assert!(want.len() >= 2_000_000, "the corpus has only {} keys", want.len());
    assert_counts(&sb.table(), &want);
}

#[test]
fn a_round_after_a_few_new_records_writes_a_small_delta() {
    let sb = Sandbox::new();
    let mut inputs = high_cardinality(&sb.path("data"), 72, 300_000, 0, 1);
    assert_ok(&deploy("topologies/wordcount.toml", &sb.sets(&inputs), Duration::from_secs(300)));
    let size_of_round = |dir: &Path| -> u64 {
        std::fs::read_dir(dir).expect("round").flatten().map(|f| f.metadata().map(|m| m.len()).unwrap_or(0)).sum()
    };
    let rounds = |sb: &Sandbox| -> Vec<PathBuf> {
        let mut r: Vec<PathBuf> =
            std::fs::read_dir(sb.path("store/rounds")).expect("rounds").flatten().map(|e| e.path()).collect();
        r.sort();
        r
    };
    let big = rounds(&sb).iter().map(|r| size_of_round(r)).max().unwrap_or(0);
    assert!(big > 2_000_000, "the first run's rounds hold only {big} bytes");
    // Three new words in a new file.
    let extra = sb.path("data/extra.txt");
    std::fs::write(&extra, "three new words\n").expect("write");
    inputs.push(extra);
    assert_ok(&deploy("topologies/wordcount.toml", &sb.sets(&inputs), Duration::from_secs(300)));
    let newest = rounds(&sb).last().cloned().expect("a round");
    let small = size_of_round(&newest);
    assert!(small < 4096, "the round after three new words wrote {small} bytes in {}", newest.display());
    assert_counts(&sb.table(), &count_words(&inputs));
}

#[test]
fn kill_9_during_a_compaction_then_resume_gives_exact_counts() {
    let sb = Sandbox::new();
    let inputs = high_cardinality(&sb.path("data"), 73, 300_000, 10_000_000, 2);
    let mut sets = sb.sets(&inputs);
    sets.push("snapshot.interval=\"100ms\"".into());
    let store = sb.path("store");
    let mut caught = 0;
    for _ in 0..6 {
        let mut child = spawn_deploy("topologies/wordcount.toml", &sets);
        let started = Instant::now();
        let mut killed = false;
        while child.try_wait().expect("try_wait").is_none() && started.elapsed() < Duration::from_secs(120) {
            if compaction_in_progress(&store, child.id()) {
                child.kill().expect("kill -9");
                killed = true;
                break;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        let _ = child.kill();
        child.wait().ok();
        if killed {
            caught += 1;
        } else {
            break; // the run finished before any compaction was caught
        }
        if caught >= 2 {
            break;
        }
    }
    assert!(caught >= 1, "no run was killed while a compaction was writing a base");
    let out = deploy("topologies/wordcount.toml", &sets, Duration::from_secs(600));
    assert_ok(&out);
    assert_counts(&sb.table(), &count_words(&inputs));
}

#[test]
fn a_large_state_is_rescaled_from_two_instances_to_three() {
    let sb = Sandbox::new();
    let inputs = high_cardinality(&sb.path("data"), 74, 800_000, 400_000, 2);
    assert_ok(&deploy("topologies/wordcount.toml", &sb.sets(&inputs[..1]), Duration::from_secs(300)));
    let mut sets = sb.sets(&inputs);
    sets.push("bolts.counts.parallelism=3".into());
    let out = deploy("topologies/wordcount.toml", &sets, Duration::from_secs(300));
    assert_ok(&out);
    assert_counts(&sb.table(), &count_words(&inputs));
    // Each new instance's state went into a base of its own.
    let bases = walk(&sb.path("store/bases"));
    assert!(bases.iter().any(|p| p.ends_with("counts-2-of-3.base")), "no base of the third instance: {bases:?}");
}

/// Replays a changelog: each line sets its key's value; a reset starts over.
/// Checks that rounds never go back and that no round appears in two
/// separate stretches (applied twice).
fn replay(path: &Path) -> BTreeMap<String, u64> {
    let mut state = BTreeMap::new();
    let mut seen: Vec<u64> = Vec::new();
    for line in std::io::BufReader::new(std::fs::File::open(path).expect("open changelog")).lines() {
        let line = line.expect("read");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"));
        let round = v["round"].as_u64().expect("round");
        if seen.last() != Some(&round) {
            assert!(seen.last().is_none_or(|l| *l < round), "round {round} after round {:?}", seen.last());
            seen.push(round);
        }
        if v["reset"].as_bool() == Some(true) {
            state.clear();
            continue;
        }
        let key = v["key"].as_str().expect("key").to_string();
        state.insert(key, v["value"].as_u64().expect("value"));
    }
    state
}

#[test]
fn the_changelog_replayed_is_the_table_across_kill_9() {
    let sb = Sandbox::new();
    let inputs = high_cardinality(&sb.path("data"), 75, 400_000, 4_000_000, 2);
    let mut sets = sb.sets(&inputs);
    sets.retain(|s| !s.starts_with("sinks.table"));
    let (table, log) = (sb.path("out/table.tsv"), sb.path("out/changelog.jsonl"));
    sets.push(format!("sinks.table.config.path={:?}", table.display().to_string()));
    sets.push(format!("sinks.log.config.path={:?}", log.display().to_string()));
    sets.push(format!("sinks.table.grants.dirs=[{:?}]", sb.path("out").display().to_string()));
    sets.push(format!("sinks.log.grants.dirs=[{:?}]", sb.path("out").display().to_string()));
    sets.push("snapshot.interval=\"200ms\"".into());
    let mut rng = Rng::new(7);
    for _ in 0..3 {
        let mut child = spawn_deploy("tests/fixtures/changelog.toml", &sets);
        // Let some rounds reach the log, then kill at a random moment.
        let started = Instant::now();
        while !log.exists() && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100 + rng.below(400)));
        let _ = child.kill();
        child.wait().ok();
    }
    let out = deploy("tests/fixtures/changelog.toml", &sets, Duration::from_secs(600));
    assert_ok(&out);
    let want = count_words(&inputs);
    assert_counts(&read_table(&table), &want);
    assert_counts(&replay(&log), &want);
}
