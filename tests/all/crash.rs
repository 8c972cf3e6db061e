//! Exactly-once under `kill -9`: kill `deploy` at random moments, run it again
//! until it finishes, and compare with a sequential count of the input.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;

/// The newest round of the store that has its COMMIT record: in the
/// sandbox's store directory, or in the object store a `--set` names.
enum Newest {
    Dir(std::path::PathBuf),
    Objects(hailstorm::store::FileStore),
}

impl Newest {
    fn of(sb: &Sandbox, sets: &[String]) -> Newest {
        let url = sets.iter().rev().find_map(|s| s.strip_prefix("snapshot.store=\"s3://"));
        match url {
            Some(u) => Newest::Objects(crate::s3::open(&format!("s3://{}", u.trim_end_matches('"')))),
            None => Newest::Dir(sb.path("store/rounds")),
        }
    }

    fn get(&self) -> Option<u64> {
        match self {
            Newest::Dir(d) => std::fs::read_dir(d)
                .ok()?
                .flatten()
                .filter(|e| e.path().join("COMMIT").exists())
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .max(),
            Newest::Objects(store) => store.rounds().ok()?.last().copied(),
        }
    }
}

#[test]
fn kill_9_at_random_moments_then_rerun_gives_exact_counts() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 11, 24_000_000, 2);
    kill_and_rerun("topologies/wordcount.toml", &sb, &inputs, &count_words(&inputs), &[]);
}

/// The same through a chain of two bolts, where the second folds tuples the
/// first emits: origins and LWMs must survive the hop.
#[test]
fn kill_9_through_a_chain_of_bolts_gives_exact_counts() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 12, 12_000_000, 2);
    kill_and_rerun("tests/fixtures/chain.toml", &sb, &inputs, &count_first_letters(&inputs), &[]);
}

/// Kills `deploy` at random moments (every other run only after a snapshot of
/// its own completed), then runs it to the end and compares the table.
/// `extra`: more `--set`s.
pub(crate) fn kill_and_rerun(
    topology_file: &str,
    sb: &Sandbox,
    inputs: &[std::path::PathBuf],
    want: &std::collections::BTreeMap<String, u64>,
    extra: &[String],
) {
    let mut sets = sb.sets(inputs);
    sets.extend(extra.iter().cloned());
    kill_at_random_then_finish(topology_file, sb, &sets, &[], |_| {});
    assert_counts(&sb.table(), want);
}

/// Runs `deploy` with `sets` (and `env`) again and again, killing it with
/// SIGKILL at random moments (every other run only after a snapshot of its
/// own completed; `after_kill` runs after each kill), then runs it to the
/// end, which must resume from a snapshot. The store is `sb`'s.
pub(crate) fn kill_at_random_then_finish(
    topology_file: &str,
    sb: &Sandbox,
    sets: &[String],
    env: &[(&str, &str)],
    mut after_kill: impl FnMut(u32),
) {
    let mut sets = sets.to_vec();
    // Frequent snapshots, so kills land before, during and after rounds.
    sets.push("snapshot.interval=\"100ms\"".into());
    let newest = Newest::of(sb, &sets);
    let newest_complete = |_: &Sandbox| newest.get();
    let mut rng = Rng::new(0xC0FFEE);
    let mut kills = 0;
    let mut kills_after_a_snapshot = 0;
    for attempt in 0..10 {
        let mut cmd = Command::new(bin());
        cmd.envs(env.iter().copied());
        cmd.arg("deploy").arg(topology(topology_file)).args(["--progress-every", "0.05"]);
        for s in &sets {
            cmd.arg("--set").arg(s);
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
        // Wait until the engine runs (modules compiled, state restored), then
        // kill at a random moment of the processing.
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with("hailstorm: deploying") {
                    let _ = tx.send(());
                }
            }
        });
        let running = rx.recv_timeout(Duration::from_secs(60)).is_ok();
        assert!(running || child.try_wait().expect("try_wait").is_some(), "deploy did not start within 60 s");
        // Every other run waits for a snapshot of its own to complete first, so
        // kills land both early and mid-way whatever the machine's speed.
        if attempt % 2 == 1 {
            let before = newest_complete(sb);
            let t0 = Instant::now();
            while newest_complete(sb) == before
                && child.try_wait().expect("try_wait").is_none()
                && t0.elapsed() < Duration::from_secs(60)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let delay = Duration::from_millis(rng.below(250));
        let started = Instant::now();
        while started.elapsed() < delay && child.try_wait().expect("try_wait").is_none() {
            std::thread::sleep(Duration::from_millis(2));
        }
        let finished = child.try_wait().expect("try_wait").is_some();
        if !finished {
            let before = newest_complete(sb);
            // SIGKILL: no chance to clean up.
            child.kill().expect("kill -9");
            kills += 1;
            child.wait().ok();
            after_kill(kills);
            if before.is_some() {
                kills_after_a_snapshot += 1;
            }
        }
        child.wait().ok();
        reader.join().ok();
        if finished {
            eprintln!("run {attempt} finished before its kill");
            break;
        }
    }
    assert!(kills >= 3, "only {kills} runs were killed mid-way; make the corpus larger");
    assert!(kills_after_a_snapshot > 0, "no kill happened after a complete snapshot");
    // Finish the job.
    let out = deploy_env(topology_file, &sets, env, Duration::from_secs(300));
    assert_ok(&out);
    assert!(stderr(&out).contains("restoring snapshot #"), "the last run did not resume:\n{}", stderr(&out));
}
