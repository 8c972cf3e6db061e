//! The wordcount sample on generated data, against an independent count.

use std::time::Duration;

use crate::common::*;

#[test]
fn wordcount_of_a_million_words_equals_an_independent_count() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 1, 1_000_000, 2);
    let want = count_words(&inputs);
    assert!(want.values().sum::<u64>() >= 1_000_000);
    let mut sets = sb.sets(&inputs);
    sets.push("snapshot.interval=\"200ms\"".into());
    let out = deploy("topologies/wordcount.toml", &sets, Duration::from_secs(300));
    assert_ok(&out);
    assert_counts(&sb.table(), &want);
    let err = stderr(&out);
    assert!(err.contains("hailstorm: done:"), "no summary:\n{err}");
}

#[test]
fn the_c_deserializer_gives_the_same_counts() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 2, 200_000, 2);
    let out = deploy("topologies/wordcount-c.toml", &sb.sets(&inputs), Duration::from_secs(300));
    assert_ok(&out);
    assert_counts(&sb.table(), &count_words(&inputs));
}

#[test]
fn the_sample_topology_runs_as_shipped_on_its_own_data() {
    let sb = Sandbox::new();
    let data = root().join("topologies/data");
    let inputs = vec![data.join("sample-1.txt"), data.join("sample-2.txt")];
    // Only the output and the store move to the sandbox; the inputs are the shipped ones.
    let sets: Vec<String> = sb.sets(&inputs).into_iter().skip(1).collect();
    let out = deploy("topologies/wordcount.toml", &sets, Duration::from_secs(300));
    assert_ok(&out);
    assert_counts(&sb.table(), &count_words(&inputs));
}

#[test]
fn a_bolt_can_change_parallelism_between_runs() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 3, 100_000, 2);
    let first = vec![inputs[0].clone()];
    assert_ok(&deploy("topologies/wordcount.toml", &sb.sets(&first), Duration::from_secs(300)));
    // Same store, more instances, one more input: state is re-partitioned by key hash.
    let mut sets = sb.sets(&inputs);
    sets.push("bolts.counts.parallelism=3".into());
    assert_ok(&deploy("topologies/wordcount.toml", &sets, Duration::from_secs(300)));
    assert_counts(&sb.table(), &count_words(&inputs));
}

#[test]
fn a_chain_of_bolts_counts_what_the_first_bolt_emits() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 4, 1_000_000, 2);
    let out = deploy("tests/fixtures/chain.toml", &sb.sets(&inputs), Duration::from_secs(300));
    assert_ok(&out);
    assert_counts(&sb.table(), &count_first_letters(&inputs));
}
