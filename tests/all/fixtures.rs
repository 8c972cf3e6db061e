//! Every topology file is a fixture: the shipped ones validate, and each bad
//! one fails with the errors its `# expect:` lines state.

use std::process::Command;

use crate::common::*;

#[test]
fn every_shipped_topology_validates() {
    modules();
    let mut n = 0;
    for e in std::fs::read_dir(root().join("topologies")).expect("topologies/").flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "toml") {
            let out = Command::new(bin()).arg("validate").arg(&p).output().expect("run");
            assert!(out.status.success(), "{} does not validate:\n{}", p.display(), stderr(&out));
            n += 1;
        }
    }
    assert!(n >= 2, "expected the shipped topologies, found {n}");
}

#[test]
fn every_bad_fixture_fails_with_its_expected_errors() {
    modules();
    let dir = root().join("tests/fixtures/bad");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("fixtures").flatten() {
        let p = e.path();
        let text = std::fs::read_to_string(&p).expect("read");
        let expects: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# expect: ")).collect();
        assert!(!expects.is_empty(), "{} states no `# expect:`", p.display());
        for cmd in ["validate", "deploy"] {
            let out = Command::new(bin()).arg(cmd).arg(&p).output().expect("run");
            let err = stderr(&out);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{cmd} {}: expected exit 2, got {}:\n{err}",
                p.display(),
                out.status
            );
            for x in &expects {
                assert!(err.contains(x), "{cmd} {}: expected {x:?} in:\n{err}", p.display());
            }
            assert!(!err.contains("thread '"), "the host panicked:\n{err}");
        }
        n += 1;
    }
    assert!(n >= 8, "found only {n} bad fixtures");
}
