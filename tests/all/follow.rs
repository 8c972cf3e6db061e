//! `deploy --follow`: tailing growing files, and a graceful stop on Ctrl-C.

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `deploy --follow --quiet` of the wordcount with `sets`.
fn follow(sets: &[String]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("deploy").arg(topology("topologies/wordcount.toml")).args(["--follow", "--quiet"]);
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    cmd
}

/// Appends the whole lines of each of `more` to the matching file of `inputs`.
fn append(inputs: &[std::path::PathBuf], more: &[std::path::PathBuf]) {
    for (i, m) in inputs.iter().zip(more) {
        let extra = std::fs::read(m).expect("read");
        std::fs::OpenOptions::new().append(true).open(i).expect("open").write_all(&extra).expect("append");
    }
}

/// Whether the sandbox's table holds exactly the count of `files` now.
fn table_is(files: &[std::path::PathBuf]) -> impl Fn(&Sandbox) -> bool {
    let want = count_words(files);
    move |sb: &Sandbox| sb.table_path().exists() && sb.table() == want
}

#[test]
fn follow_picks_up_appended_lines_and_ctrl_c_stops_with_a_final_snapshot() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 71, 50_000, 2);
    let mut sets = sb.sets(&inputs);
    sets.push("snapshot.interval=\"200ms\"".into());
    let mut child = follow(&sets).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let log =
        std::thread::spawn(move || std::io::BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>());
    let first = table_is(&inputs);
    wait_for("the first table", Duration::from_secs(60), || first(&sb));
    // Append whole lines; the running deploy must commit them.
    append(&inputs, &corpus(&sb.path("more"), 72, 20_000, 2));
    let second = table_is(&inputs);
    wait_for("the appended lines in the table", Duration::from_secs(60), || second(&sb));
    assert!(child.try_wait().expect("try_wait").is_none(), "--follow exited by itself");
    // Ctrl-C: a graceful stop.
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill -INT");
    assert!(status.success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "deploy did not stop after Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = log.join().expect("log").join("\n");
    assert!(status.success(), "exit {status} after Ctrl-C:\n{log}");
    assert!(log.contains("hailstorm: stopping") && log.contains("hailstorm: done:"), "{log}");
    assert_counts(&sb.table(), &count_words(&inputs));
}

/// A followed input that pauses is committed at once, not an interval later:
/// with 20 s rounds, the table shows the lines (and then the appended ones)
/// well before the interval is up.
#[test]
fn a_paused_input_is_committed_without_waiting_for_the_interval() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 73, 5_000, 2);
    let mut sets = sb.sets(&inputs);
    sets.push("snapshot.interval=\"20s\"".into());
    sets.push("sinks.table.config.rewrite_every=\"0s\"".into());
    let started = Instant::now();
    let mut child = follow(&sets).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
    let shown = table_is(&inputs);
    wait_for("the first table", Duration::from_secs(60), || shown(&sb));
    let first = started.elapsed();
    append(&inputs, &corpus(&sb.path("more"), 74, 2_000, 2));
    let appended = Instant::now();
    let shown = table_is(&inputs);
    wait_for("the appended lines in the table", Duration::from_secs(60), || shown(&sb));
    let second = appended.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    // Rounds of an idle input come at most four times per interval (every 5 s here).
    assert!(first < Duration::from_secs(15), "the first table took {first:?} (interval 20 s)");
    assert!(second < Duration::from_secs(15), "the appended lines took {second:?} (interval 20 s)");
}
