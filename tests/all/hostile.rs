//! Hostile deserializers, written here in WebAssembly text: each breaks the
//! ABI in its own way, and each is stopped with a clear error naming the
//! module and what it did, without a panic, a hang or a flood of output.

use std::time::{Duration, Instant};

use crate::common::*;

/// A deserializer with a bump allocator; each case replaces one part.
const TEMPLATE: &str = r#"(module
  (import "hailstorm" "fail" (func $fail (param i32 i32)))
  (memory (export "memory") 1)
  ;; The empty emitted batch at 8; a message with control bytes at 64.
  (data (i32.const 8) "\00\00\00\00")
  (data (i32.const 16) "\05\00\00\00")
  ;; One emitted tuple derived from input item 16777215, at 32 (17 bytes).
  (data (i32.const 32) "\01\00\00\00\ff\ff\ff\00\01\00\00\00k\00\00\00\00")
  (data (i32.const 64) "fail\00\1b[2J\0aforged")
  (global $top (mut i32) (i32.const 1024))
  (func (export "hailstorm_abi_version") (result i32) (i32.const 1))
  (func (export "hailstorm_alloc") (param $size i32) (result i32)
    ALLOC)
  (func (export "hailstorm_free") (param i32 i32) FREE)
  (func (export "hailstorm_init") (param i32 i32) (result i32) INIT)
  (func $deserialize (export "hailstorm_deserialize") (param $p i32) (param $l i32) (result i64)
    DESERIALIZE)
)"#;

const BUMP: &str = r#"(local $p i32) (local $have i32)
    (if (i32.lt_s (local.get $size) (i32.const 0)) (then (return (i32.const 0))))
    (local.set $p (i32.and (i32.add (global.get $top) (i32.const 7)) (i32.const -8)))
    (global.set $top (i32.add (local.get $p) (local.get $size)))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (global.get $top) (local.get $have))
      (then (if (i32.eq (memory.grow (i32.shr_u (i32.add (i32.sub (global.get $top) (local.get $have))
                                                        (i32.const 65535)) (i32.const 16)))
                        (i32.const -1))
              (then (return (i32.const 0))))))
    (local.get $p)"#;

/// pack(8, 4): the empty batch.
const EMPTY: &str = "(i64.const 34359738372)";

struct Case {
    name: &'static str,
    alloc: &'static str,
    free: &'static str,
    init: &'static str,
    deserialize: &'static str,
    /// What stderr must say besides the processor and module.
    says: &'static [&'static str],
}

fn case(name: &'static str) -> Case {
    Case { name, alloc: BUMP, free: "", init: "(i32.const 0)", deserialize: EMPTY, says: &[] }
}

impl Case {
    /// The module's text: the template with this case's parts.
    fn text(&self) -> String {
        TEMPLATE
            .replace("ALLOC", self.alloc)
            .replace("FREE", self.free)
            .replace("INIT", self.init)
            .replace("DESERIALIZE", self.deserialize)
    }
}

/// Runs the wordcount with `c` as its deserializer; checks the error.
fn run(c: &Case) {
    run_module(c.name, &c.text(), "spouts.lines.deserializer", "lines", c.says);
}

/// Runs the wordcount with module `text` in place of `key`; checks that it
/// fails with an error naming `processor`, the module and `says`.
fn run_module(name: &str, text: &str, key: &str, processor: &str, says: &[&str]) {
    let sb = Sandbox::new();
    let module = sb.path(&format!("{name}.wat"));
    std::fs::write(&module, text).expect("write module");
    let input = sb.path("in.txt");
    // A first record of 100 KB: the first batch outgrows the 64 KiB input buffer.
    let text = format!("{}\n{}", "x".repeat(100_000), "some words\nand more words\n".repeat(2000));
    std::fs::write(&input, text).expect("write input");
    let mut sets = sb.sets(&[input]);
    sets.push(format!("{key}={:?}", module.display().to_string()));
    sets.push("spouts.lines.limits={ call_timeout = \"2s\" }".into());
    sets.push("snapshot.interval=\"50ms\"".into());
    let started = Instant::now();
    let out = deploy("topologies/wordcount.toml", &sets, Duration::from_secs(120));
    let (took, err) = (started.elapsed(), stderr(&out));
    assert!(matches!(out.status.code(), Some(1 | 2)), "{name}: expected exit 1 or 2, got {}:\n{err}", out.status);
    assert!(took < Duration::from_secs(60), "{name}: took {took:?}");
    assert!(!err.contains("thread '"), "{name}: the host panicked:\n{err}");
    assert!(out.stderr.len() < 64 * 1024, "{name}: {} bytes of output", out.stderr.len());
    assert!(!out.stderr.iter().any(|&b| b == 0 || b == 0x1b), "{name}: raw control bytes in the output");
    let module_name = format!("{name}.wat");
    let processor = format!("processor `{processor}`");
    for want in [processor.as_str(), module_name.as_str()].iter().chain(says) {
        assert!(err.contains(want), "{name}: expected {want:?} in:\n{err}");
    }
}

/// A bolt that folds nothing in; each case replaces `merge` or `snapshot`.
const BOLT: &str = r#"(module
  (memory (export "memory") 1)
  (data (i32.const 8) "\00\00\00\00")
  (data (i32.const 16) "\05\00\00\00")
  ;; Two entries out of order at 32: "b" then "a" (26 bytes).
  (data (i32.const 32) "\02\00\00\00\01\00\00\00b\01\00\00\00x\01\00\00\00a\01\00\00\00y")
  (global $top (mut i32) (i32.const 1024))
  (global $calls (mut i32) (i32.const 0))
  (func (export "hailstorm_abi_version") (result i32) (i32.const 2))
  (func (export "hailstorm_alloc") (param $size i32) (result i32)
    BUMP)
  (func (export "hailstorm_free") (param i32 i32))
  (func (export "hailstorm_init") (param i32 i32) (result i32) (i32.const 0))
  (func (export "hailstorm_fold") (param i32 i32 i32) (result i64) FOLD)
  (func (export "hailstorm_merge") (param i32 i32) (result i32) MERGE)
  (func (export "hailstorm_snapshot") (param i32 i32) (result i64) SNAPSHOT)
  (func (export "hailstorm_restore") (param i32 i32 i32) (result i32) (i32.const 0))
)"#;

#[test]
fn hostile_bolts_are_stopped_with_a_clear_error() {
    modules();
    // (name, merge, snapshot, what the error says)
    let cases: [(&str, &str, &str, &[&str]); 3] = [
        ("merge_fails", "(i32.const 7)", EMPTY, &["hailstorm_merge", "status 7"]),
        ("truncated_snapshot", "(i32.const 0)", "(i64.const 68719476740)", &["hailstorm_snapshot", "broke the ABI"]),
        (
            "unsorted_snapshot",
            "(i32.const 0)",
            // The unsorted chunk once, then the end of the snapshot.
            "(global.set $calls (i32.add (global.get $calls) (i32.const 1))) \
             (if (result i64) (i32.eq (global.get $calls) (i32.const 1)) \
               (then (i64.const 137438953498)) (else (i64.const 34359738372)))",
            &["hailstorm_snapshot", "sorted"],
        ),
    ];
    for (name, merge, snapshot, says) in cases {
        let text =
            BOLT.replace("BUMP", BUMP).replace("FOLD", EMPTY).replace("MERGE", merge).replace("SNAPSHOT", snapshot);
        run_module(name, &text, "bolts.counts.module", "counts", says);
    }
}

#[test]
fn hostile_deserializers_are_stopped_with_a_clear_error() {
    modules();
    let cases = [
        Case { init: "(loop $l (br $l)) (i32.const 0)", says: &["hailstorm_init", "deadline"], ..case("looping_init") },
        Case { deserialize: "(i64.const 0x7FFF000000000010)", says: &["outside its memory"], ..case("far_buffer") },
        Case { deserialize: "(i64.const 0x7FFFFFF0FFFFFFFF)", says: &["broke the ABI"], ..case("wrapping_buffer") },
        Case { deserialize: "(i64.const 68719476740)", says: &["broke the ABI"], ..case("truncated_batch") },
        Case {
            deserialize: "(i64.const 137438953489)",
            says: &["broke the ABI", "input 16777215, which is not in the batch"],
            ..case("input_outside_batch")
        },
        Case { alloc: "(i32.const 0)", says: &["hailstorm_alloc"], ..case("alloc_zero") },
        // The first batch outgrows the 64 KiB input buffer, which is freed.
        Case { free: "(unreachable)", says: &["trapped", "hailstorm_free"], ..case("free_traps") },
        Case { alloc: "(i32.const -8)", says: &["outside memory"], ..case("alloc_negative") },
        Case { alloc: "(i32.const 0x7FFFFF00)", says: &["outside memory"], ..case("alloc_past_memory") },
        Case {
            deserialize: "(call $deserialize (local.get $p) (local.get $l)) (drop) (i64.const 0)",
            says: &["trapped", "call stack exhausted"],
            ..case("stack_overflow")
        },
        Case {
            deserialize: "(local.set $p (i32.const 1000)) \
                          (loop $l (call $fail (i32.const 64) (i32.const 100000)) \
                                   (local.set $p (i32.sub (local.get $p) (i32.const 1))) \
                                   (br_if $l (local.get $p))) \
                          (i64.const -1)",
            says: &["returned an error", "fail\\u{0}\\u{1b}[2J\\nforged"],
            ..case("fail_flood")
        },
        Case {
            deserialize: "(drop (memory.grow (i32.const 600))) (i64.const 0x0000000802200000)",
            says: &["emitted 35651584 bytes in one call"],
            ..case("huge_emit")
        },
    ];
    for c in &cases {
        run(c);
    }
}

#[test]
fn a_deserializer_that_fails_batches_but_not_records_is_reported_in_bounded_time() {
    modules();
    // A batch of several records fails at once; a single record succeeds
    // after spinning a while: the search for the failing record finds none,
    // and must give up in bounded time (2048 records, 0.1 s or more each).
    let spin = "(if (i32.gt_u (i32.load (local.get $p)) (i32.const 1)) (then (return (i64.const -1)))) \
                (local.set $l (i32.const 100000000)) \
                (loop $s (local.set $l (i32.sub (local.get $l) (i32.const 1))) (br_if $s (local.get $l))) \
                (i64.const 34359738372)";
    run(&Case { deserialize: spin, says: &["a batch of", "no single record failed"], ..case("slow_records") });
}

/// Emits 30 tuples of about 1 MiB (key `k`) for every batch of records.
const EMIT_MOST: &str = "(local $q i32) (local $i i32) \
    (i32.store (i32.const 1048576) (i32.const 30)) \
    (local.set $q (i32.const 1048580)) \
    (local.set $i (i32.const 30)) \
    (loop $t \
      (i32.store (local.get $q) (i32.const 0)) \
      (i32.store (i32.add (local.get $q) (i32.const 4)) (i32.const 1)) \
      (i32.store8 (i32.add (local.get $q) (i32.const 8)) (i32.const 107)) \
      (i32.store (i32.add (local.get $q) (i32.const 9)) (i32.const 1048000)) \
      (local.set $q (i32.add (local.get $q) (i32.const 1048013))) \
      (local.set $i (i32.sub (local.get $i) (i32.const 1))) \
      (br_if $t (local.get $i))) \
    (i64.or (i64.shl (i64.const 1048576) (i64.const 32)) \
            (i64.extend_i32_u (i32.sub (local.get $q) (i32.const 1048576))))";

/// The peak resident memory of process `pid` so far, in bytes, if it still runs.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

#[test]
fn a_module_emitting_as_much_as_it_may_stays_within_the_memory_budget() {
    modules();
    let sb = Sandbox::new();
    let module = sb.path("emit_most.wat");
    let init = "(drop (memory.grow (i32.const 540))) (i32.const 0)";
    let text = Case { init, deserialize: EMIT_MOST, ..case("emit_most") }.text();
    std::fs::write(&module, text).expect("write module");
    let input = sb.path("in.txt");
    std::fs::write(&input, "a line\n".repeat(40_000)).expect("write input");
    // A bolt slower than the spout (it reads every byte it gets four times):
    // the inboxes fill up.
    let slow = "(local $i i32) (local $sum i32) (local $r i32) (local.set $r (i32.const 4)) \
                (loop $again \
                  (local.set $i (local.get 2)) \
                  (loop $s (local.set $i (i32.sub (local.get $i) (i32.const 1))) \
                     (local.set $sum (i32.add (local.get $sum) (i32.load8_u (i32.add (local.get 1) (local.get $i))))) \
                     (br_if $s (local.get $i))) \
                  (local.set $r (i32.sub (local.get $r) (i32.const 1))) (br_if $again (local.get $r))) \
                (drop (local.get $sum)) (i64.const 34359738372)";
    let bolt = sb.path("slow_bolt.wat");
    let text =
        BOLT.replace("BUMP", BUMP).replace("FOLD", slow).replace("MERGE", "(i32.const 0)").replace("SNAPSHOT", EMPTY);
    std::fs::write(&bolt, text).expect("write bolt");
    let mut sets = sb.sets(&[input]);
    sets.extend([
        format!("spouts.lines.deserializer={:?}", module.display().to_string()),
        format!("bolts.counts.module={:?}", bolt.display().to_string()),
        "spouts.lines.limits={ memory = \"64MiB\" }".into(),
        "bolts.counts.parallelism=3".into(),
        "bolts.counts.grouping=\"broadcast\"".into(),
        "bolts.counts.limits={ memory = \"64MiB\" }".into(),
        "sinks.table.limits={ memory = \"64MiB\" }".into(),
    ]);
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("deploy").arg(topology("topologies/wordcount.toml")).arg("--quiet");
    for s in &sets {
        cmd.arg("--set").arg(s);
    }
    let mut child =
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().expect("spawn");
    let (pid, started) = (child.id(), Instant::now());
    let mut peak = 0;
    while child.try_wait().expect("try_wait").is_none() {
        assert!(started.elapsed() < Duration::from_secs(300), "the run did not end");
        peak = peak.max(peak_rss(pid).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "the run failed:\n{}", stderr(&out));
    // SECURITY.md's budget: the modules' caps (5 × 64 MiB), each bolt
    // instance's inbox (64 messages of at most 2 MiB), each sender's buffers
    // (2 MiB per downstream instance), the largest record (16 MiB), and
    // 128 MiB for the engine itself.
    let mib = 1u64 << 20;
    let budget = 5 * 64 * mib + 3 * 64 * 2 * mib + 3 * 2 * mib + 16 * mib + 128 * mib;
    eprintln!("peak RSS {} MiB, budget {} MiB", peak / mib, budget / mib);
    assert!(peak < budget, "peak RSS {} MiB over the budget of {} MiB", peak / mib, budget / mib);
}
