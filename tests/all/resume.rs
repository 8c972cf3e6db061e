//! Resuming from the last complete snapshot: appended input, hot swap of a
//! module, and a damaged snapshot.

use std::io::Write;
use std::time::Duration;

use crate::common::*;

#[test]
fn appended_input_is_counted_exactly_once() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 21, 200_000, 2);
    assert_ok(&deploy("topologies/wordcount.toml", &sb.sets(&inputs), Duration::from_secs(300)));
    assert_counts(&sb.table(), &count_words(&inputs));
    // Append to both files, then run again on the same store.
    let more = corpus(&sb.path("more"), 22, 50_000, 2);
    for (i, m) in inputs.iter().zip(&more) {
        let extra = std::fs::read(m).expect("read");
        std::fs::OpenOptions::new().append(true).open(i).expect("open").write_all(&extra).expect("append");
    }
    let out = deploy("topologies/wordcount.toml", &sb.sets(&inputs), Duration::from_secs(300));
    assert_ok(&out);
    assert!(stderr(&out).contains("restoring snapshot #"), "{}", stderr(&out));
    assert_counts(&sb.table(), &count_words(&inputs));
    // A third run with nothing new changes nothing.
    assert_ok(&deploy("topologies/wordcount.toml", &sb.sets(&inputs), Duration::from_secs(300)));
    assert_counts(&sb.table(), &count_words(&inputs));
}

#[test]
fn hot_swap_of_the_count_module_continues_from_the_old_state() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 31, 200_000, 2);
    let half = vec![inputs[0].clone()];
    assert_ok(&deploy("topologies/wordcount.toml", &sb.sets(&half), Duration::from_secs(300)));
    assert_counts(&sb.table(), &count_words(&half));
    // Version 2 of the count bolt also keeps a total of all words.
    let mut sets = sb.sets(&inputs);
    sets.push(format!("bolts.counts.module={:?}", wasm("count_words_v2.wasm")));
    sets.push("bolts.counts.build.command=\"cargo build --quiet --profile wasm --target wasm32-unknown-unknown -p count-words-v2\"".into());
    let out = deploy("topologies/wordcount.toml", &sets, Duration::from_secs(300));
    assert_ok(&out);
    let err = stderr(&out);
    assert!(err.contains("module of `counts` changed since snapshot #"), "the swap was not reported:\n{err}");
    let mut want = count_words(&inputs);
    let total: u64 = want.values().sum();
    want.insert("(total)".into(), total);
    assert_counts(&sb.table(), &want);
}

#[test]
fn a_corrupt_snapshot_falls_back_to_the_previous_complete_one() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 41, 100_000, 2);
    let first = vec![inputs[0].clone()];
    assert_ok(&deploy("topologies/wordcount.toml", &sb.sets(&first), Duration::from_secs(300)));
    assert_ok(&deploy("topologies/wordcount.toml", &sb.sets(&inputs), Duration::from_secs(300)));
    // Damage one snapshot file of the newest complete round.
    let rounds_dir = sb.path("store/rounds");
    let mut rounds: Vec<_> = std::fs::read_dir(&rounds_dir).expect("rounds").flatten().map(|e| e.path()).collect();
    rounds.sort();
    assert!(rounds.len() >= 2, "expected the two newest complete rounds to be kept, found {rounds:?}");
    let newest = rounds.last().expect("a round");
    let mut victims = vec![newest.join("counts-1.delta")];
    // A base compaction wrote at that round holds the same state: damage it too.
    let base = sb.path("store/bases").join(newest.file_name().expect("name")).join("counts-1-of-2.base");
    if base.exists() {
        victims.push(base);
    }
    for victim in victims {
        let mut bytes = std::fs::read(&victim).expect("read snapshot");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xFF;
        std::fs::write(&victim, bytes).expect("corrupt");
    }
    // Append more input so the rerun has work to do, then rerun.
    let more = corpus(&sb.path("more"), 42, 20_000, 1);
    let extra = std::fs::read(&more[0]).expect("read");
    std::fs::OpenOptions::new().append(true).open(&inputs[1]).expect("open").write_all(&extra).expect("append");
    let out = deploy("topologies/wordcount.toml", &sb.sets(&inputs), Duration::from_secs(300));
    assert_ok(&out);
    let err = stderr(&out);
    assert!(err.contains("skipping snapshot round") && err.contains("checksum"), "corruption not reported:\n{err}");
    assert_counts(&sb.table(), &count_words(&inputs));
}

#[test]
fn a_store_with_no_intact_snapshot_is_an_error_not_a_fresh_start() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 51, 20_000, 1);
    assert_ok(&deploy("topologies/wordcount.toml", &sb.sets(&inputs), Duration::from_secs(300)));
    for round in std::fs::read_dir(sb.path("store/rounds")).expect("rounds").flatten() {
        std::fs::write(round.path().join("COMMIT"), b"garbage").expect("corrupt");
    }
    let out = deploy("topologies/wordcount.toml", &sb.sets(&inputs), Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("no intact complete snapshot is left"), "{err}");
    assert!(!err.contains("thread '"), "the host panicked:\n{err}");
}

#[test]
fn a_store_resumed_on_other_input_is_refused() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 61, 20_000, 2);
    assert_ok(&deploy("topologies/wordcount.toml", &sb.sets(&inputs[..1]), Duration::from_secs(300)));
    // The same partition now names another file: its offsets would apply to other data.
    let out = deploy("topologies/wordcount.toml", &sb.sets(&inputs[1..]), Duration::from_secs(60));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "a usage error: {err}");
    assert!(
        err.contains("partition lines/0 read") && err.contains("input-0.txt") && err.contains("input-1.txt"),
        "{err}"
    );
    // Another topology's store.
    let mut sets = sb.sets(&inputs[..1]);
    sets.push("name=other".into());
    let out = deploy("topologies/wordcount.toml", &sets, Duration::from_secs(60));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "a usage error: {err}");
    assert!(err.contains("belongs to topology `wordcount`, not `other`"), "{err}");
}
