//! Exactly-once under `kill -9`: kill `deploy` at random moments, run it again
//! until it finishes, and compare with a sequential count of the input.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn kill_9_at_random_moments_then_rerun_gives_exact_counts() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 11, 8_000_000, 2);
    let want = count_words(&inputs);
    let mut sets = sb.sets(&inputs);
    // Frequent snapshots, so kills land before, during and after rounds.
    sets.push("snapshot.interval=\"100ms\"".into());
    let mut rng = Rng::new(0xC0FFEE);
    let mut kills = 0;
    let mut completed_between_kills = 0;
    for attempt in 0..8 {
        let mut cmd = Command::new(bin());
        cmd.arg("deploy").arg(topology("topologies/wordcount.toml")).arg("--quiet");
        for s in &sets {
            cmd.arg("--set").arg(s);
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
        let delay = Duration::from_millis(30 + rng.below(470));
        let started = Instant::now();
        while started.elapsed() < delay {
            if child.try_wait().expect("try_wait").is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().expect("try_wait").is_none() {
            // SIGKILL: no chance to clean up.
            child.kill().expect("kill -9");
            child.wait().ok();
            kills += 1;
            if sb.path("store/rounds").exists() {
                completed_between_kills += 1;
            }
        } else {
            child.wait().ok();
            eprintln!("run {attempt} finished before its kill");
            break;
        }
    }
    assert!(kills >= 3, "only {kills} runs were killed mid-way; make the corpus larger");
    assert!(completed_between_kills > 0, "no snapshot was ever written between kills");
    // Finish the job.
    let out = deploy("topologies/wordcount.toml", &sets, Duration::from_secs(300));
    assert_ok(&out);
    assert_counts(&sb.table(), &want);
}
