//! The wordcount sample on generated data, against an independent count.

use std::process::Command;
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

/// A build command that finds nothing to do (a watched file it does not read
/// changed) marks its module current: the next deploy does not run it again.
#[test]
fn a_build_with_nothing_to_do_is_not_run_again() {
    let sb = Sandbox::new();
    let (file, runs) = (sb.path("t.toml"), sb.path("runs.txt"));
    std::fs::write(sb.path("m.wasm"), b"not built by the command").expect("write");
    std::fs::create_dir_all(sb.path("src")).expect("mkdir");
    std::thread::sleep(Duration::from_millis(50));
    std::fs::write(sb.path("src/notes.txt"), "newer than the module").expect("write");
    let build = format!("build = {{ command = \"echo ran >> {}\", watch = [\"src\"] }}", runs.display());
    let text = format!(
        "name = \"t\"\n[spouts.lines]\nsource = {{ files = [\"in.txt\"] }}\ndeserializer = \"m.wasm\"\n{build}\n\
         [bolts.counts]\ninputs = [\"lines\"]\nmodule = \"m.wasm\"\n{build}\n"
    );
    std::fs::write(&file, text).expect("write");
    let build_once = || {
        let out = Command::new(bin()).arg("build").arg(&file).output().expect("run hailstorm build");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(build_once().contains("built 1 command(s)"));
    let second = build_once();
    assert!(second.contains("built 0 command(s)"), "the build ran again: {second}");
    assert_eq!(std::fs::read_to_string(&runs).expect("runs").lines().count(), 1);
}
