//! Misbehaving modules and bad options: a clear error naming who and where,
//! exit code 1 or 2, never a panic or a hang.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

/// Runs the faulty topology on one input file where the marker line sits at
/// a known offset; returns stderr and that offset.
fn run_faulty(config: &str, limits: Option<&str>) -> (std::process::Output, u64, Duration) {
    let sb = Sandbox::new();
    let path = sb.path("in.txt");
    let mut text = String::new();
    for i in 0..5000 {
        text.push_str(&format!("line {i} of harmless words\n"));
    }
    let offset = text.len() as u64;
    text.push_str("here comes the BOOM marker\n");
    for i in 0..100 {
        text.push_str(&format!("after {i}\n"));
    }
    std::fs::write(&path, text).expect("write");
    let mut sets = vec![
        format!("spouts.lines.source.files=[{:?}]", path.display().to_string()),
        format!("spouts.lines.config={{ {config} = \"BOOM\" }}"),
        format!("sinks.table.config.path={:?}", sb.path("out/t.tsv").display().to_string()),
        format!("sinks.table.grants.dirs=[{:?}]", sb.path("out").display().to_string()),
        format!("snapshot.store={:?}", format!("file:{}", sb.path("store").display())),
    ];
    if let Some(l) = limits {
        sets.push(format!("spouts.lines.limits={{ {l} }}"));
    }
    let started = Instant::now();
    let out = deploy("tests/fixtures/faulty.toml", &sets, Duration::from_secs(120));
    (out, offset, started.elapsed())
}

fn assert_guest_error(out: &std::process::Output, offset: u64, fault: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "expected exit 1:\n{err}");
    for want in
        ["processor `lines` instance 0", "module faulty.wasm", fault, &format!("record lines/0@{offset}"), "BOOM"]
    {
        assert!(err.contains(want), "expected {want:?} in:\n{err}");
    }
    assert!(!err.contains("thread '"), "the host panicked:\n{err}");
}

#[test]
fn a_trapping_module_is_an_error_naming_the_record() {
    let (out, offset, _) = run_faulty("trap_on", None);
    assert_guest_error(&out, offset, "trapped");
    // The guest's panic message reaches the user.
    assert!(stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn a_module_that_loops_forever_is_stopped_by_its_deadline() {
    let (out, offset, took) = run_faulty("loop_on", Some("call_timeout = \"300ms\""));
    assert_guest_error(&out, offset, "did not return within its 300ms deadline");
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

#[test]
fn a_module_that_grows_memory_without_bound_hits_its_cap() {
    let (out, offset, _) = run_faulty("grow_on", Some("memory = \"32MiB\""));
    assert_guest_error(&out, offset, "memory cap of 32 MiB");
}

#[test]
fn a_module_config_the_module_rejects_is_reported() {
    let (out, _, _) = run_faulty("trap_on = \"\", other", None);
    // `trap_on = ""` is refused by the module's init.
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("hailstorm_init") && err.contains("trap_on"), "{err}");
}

#[test]
fn bad_set_options_are_reported() {
    let out = Command::new(bin())
        .arg("validate")
        .arg(topology("topologies/wordcount.toml"))
        .args(["--set", "no-equals-sign", "--set", "snapshot.interval.x=1"])
        .output()
        .expect("run");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--set no-equals-sign: expected KEY=VALUE"), "{err}");
    assert!(err.contains("--set snapshot.interval.x=1"), "{err}");
}

#[test]
fn a_missing_input_file_is_reported() {
    let sb = Sandbox::new();
    let out = deploy("topologies/wordcount.toml", &sb.sets(&[sb.path("nope.txt")]), Duration::from_secs(60));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("nope.txt") && err.contains("No such file"), "{err}");
}

#[test]
fn a_sink_cannot_write_outside_its_granted_directories() {
    let sb = Sandbox::new();
    let inputs = corpus(&sb.path("data"), 81, 1_000, 1);
    let mut sets = sb.sets(&inputs);
    // The table path lies outside the only granted directory (out/).
    let outside = sb.path("elsewhere/table.tsv");
    sets.push(format!("sinks.table.config.path={:?}", outside.display().to_string()));
    let out = deploy("topologies/wordcount.toml", &sets, Duration::from_secs(60));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("processor `table`") && err.contains("elsewhere"), "{err}");
    assert!(!outside.exists() && !sb.path("elsewhere").exists(), "the sink wrote outside its grants");
}

#[test]
fn a_module_flooding_its_log_with_control_bytes_is_held_to_a_few_escaped_lines() {
    let (out, _, _) = run_faulty("flood_on", None);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "the run failed:\n{err}");
    // 100,000 lines and one of a megabyte came in; a few hundred short ones went out.
    assert!(out.stderr.len() < 256 * 1024, "{} bytes of log", out.stderr.len());
    assert!(!out.stderr.iter().any(|&b| b == 0 || b == 0x1b), "raw control bytes reached the log");
    assert!(err.contains("flood\\u{0}\\u{1b}[2J\\nhailstorm: forged line 0"), "{}", &err[..err.len().min(2000)]);
    assert!(!err.lines().any(|l| l.starts_with("hailstorm: forged")), "a module forged a log line");
    assert!(err.contains("bytes more)"), "the megabyte line was not cut");
}
