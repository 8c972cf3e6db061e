use super::*;
use hailstorm_guest::abi::{write_changes, write_round_header};
use hailstorm_guest::serde_json::json;
use hailstorm_guest::testing::pairs_batch;
use hailstorm_guest::SinkRuntime;

fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("write-table-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn sink(dir: &Path, config: hailstorm_guest::serde_json::Value, committed: u64) -> SinkRuntime<WriteTable> {
    let mut init = Init::new("table", config);
    init.topology_dir = dir.to_path_buf();
    init.committed_round = committed;
    let mut rt = SinkRuntime::<WriteTable>::new();
    rt.init(&init.to_document()).unwrap();
    rt
}

/// Changes of one bolt instance: (input, instance, entries).
type InstanceChanges<'a> = (&'a str, u32, Vec<hailstorm_guest::testing::Entry>);

fn n(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// One round: changes per (input, instance), then the durable round (None:
/// the sink declined the round).
fn offer(rt: &mut SinkRuntime<WriteTable>, r: u64, since: u64, last: bool, changes: &[InstanceChanges]) -> Option<u64> {
    if !rt.begin(&write_round_header(r, since, last, &[("lines/0".into(), r * 10)])).unwrap() {
        return None;
    }
    for (input, instance, entries) in changes {
        rt.changes(&write_changes(input, *instance, &pairs_batch(entries))).unwrap();
    }
    // As the host does: steps until no work is pending.
    let mut d = rt.end().unwrap();
    while d.more {
        d = rt.step().unwrap();
    }
    Some(d.round)
}

/// A round the sink must take.
fn round(rt: &mut SinkRuntime<WriteTable>, r: u64, since: u64, last: bool, changes: &[InstanceChanges]) -> u64 {
    offer(rt, r, since, last, changes).expect("the sink took the round")
}

#[test]
fn lines_escape_keys_and_parse_back() {
    let mut out = Vec::new();
    assert!(!format_line(&mut out, b"word", &42u64.to_le_bytes()));
    assert!(format_line(&mut out, b"odd\tkey\\\n", &[0xab, 0x01, 0xff]));
    assert!(format_line(&mut out, b"", b""));
    assert_eq!(out, b"word\t42\nodd\\tkey\\\\\\n\t0xab01ff\n\t0x\n");
    let lines: Vec<&[u8]> = out.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(parse_line(lines[1]).unwrap(), (b"odd\tkey\\\n".to_vec(), &b"0xab01ff"[..]));
}

#[test]
fn rounds_of_changes_keep_the_table_up_to_date() {
    let dir = scratch_dir("rounds");
    let mut rt = sink(&dir, json!({"path": "out/counts.tsv", "rewrite_every": "0s", "rewrite_percent": 100}), 0);
    assert_eq!(rt.resume().unwrap(), 0, "no table yet: it needs the whole state");
    let path = dir.join("out/counts.tsv");
    let r1 =
        vec![("a", 0, vec![(b"the".to_vec(), n(3)), (b"zoo".to_vec(), n(1))]), ("a", 1, vec![(b"cat".to_vec(), n(1))])];
    assert_eq!(round(&mut rt, 1, 0, false, &r1), 1);
    assert_eq!(fs::read_to_string(&path).unwrap(), "cat\t1\nthe\t3\nzoo\t1\n");
    // Round 2 changes two keys and adds one; the others keep their lines.
    let r2 =
        vec![("a", 0, vec![(b"ant".to_vec(), n(7)), (b"the".to_vec(), n(4))]), ("a", 1, vec![(b"cat".to_vec(), n(2))])];
    assert_eq!(round(&mut rt, 2, 1, false, &r2), 2);
    assert_eq!(fs::read_to_string(&path).unwrap(), "ant\t7\ncat\t2\nthe\t4\nzoo\t1\n");
    assert_eq!(fs::read_to_string(dir.join("out/counts.tsv.round")).unwrap(), "2");
    assert!(fs::read_dir(dir.join("out/counts.tsv.work-e0")).unwrap().next().is_none(), "runs are removed");
    // Applying round 2 again changes nothing; a whole state (since 0) replaces the table.
    assert_eq!(round(&mut rt, 2, 1, false, &r2), 2);
    assert_eq!(fs::read_to_string(&path).unwrap(), "ant\t7\ncat\t2\nthe\t4\nzoo\t1\n");
    let whole = vec![("a", 0, vec![(b"bee".to_vec(), n(1))])];
    assert_eq!(round(&mut rt, 3, 0, false, &whole), 3);
    assert_eq!(fs::read_to_string(&path).unwrap(), "bee\t1\n");
    // A new sink on the same files resumes from the table's round.
    let mut again = sink(&dir, json!({"path": "out/counts.tsv"}), 1);
    assert_eq!(again.resume().unwrap(), 3);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rewrites_wait_for_their_interval_except_the_last_round() {
    let dir = scratch_dir("interval");
    let mut rt = sink(&dir, json!({"path": "t.tsv", "rewrite_every": "1m"}), 0);
    rt.resume().unwrap();
    let c = |kv: &[(&str, u64)]| vec![("a", 0u32, kv.iter().map(|(k, v)| (k.as_bytes().to_vec(), n(*v))).collect())];
    assert_eq!(offer(&mut rt, 1, 0, false, &c(&[("x", 1)])), Some(1), "the first round is due at once");
    assert_eq!(fs::read_to_string(dir.join("t.tsv")).unwrap(), "x\t1\n");
    assert_eq!(offer(&mut rt, 2, 1, false, &c(&[("y", 1)])), None, "declined: not due");
    assert_eq!(fs::read_to_string(dir.join("t.tsv")).unwrap(), "x\t1\n");
    // The engine sends round 2's changes with round 3, since round 1.
    let r3 = c(&[("x", 5), ("y", 1)]);
    assert_eq!(offer(&mut rt, 3, 1, true, &r3), Some(3), "the last round is written at once");
    assert_eq!(fs::read_to_string(dir.join("t.tsv")).unwrap(), "x\t5\ny\t1\n");
    fs::remove_dir_all(&dir).unwrap();
}

/// A sink of epoch 1, paused in the middle of a rewrite past its session,
/// resumes after the sink of epoch 2 took over: it must not publish.
#[test]
fn a_sink_of_an_older_epoch_cannot_publish_over_the_live_one() {
    let dir = scratch_dir("zombie");
    let config = json!({"path": "t.tsv", "rewrite_every": "0s", "rewrite_percent": 100});
    let e1 = |n: u64| (1u64 << 32) + n;
    let e2 = |n: u64| (2u64 << 32) + n;
    let mut zombie = sink(&dir, config.clone(), 0);
    zombie.resume().unwrap();
    assert_eq!(round(&mut zombie, e1(1), 0, false, &[("a", 0, vec![(b"k".to_vec(), n(1))])]), e1(1));
    // Epoch 1 starts a rewrite big enough to take steps, and stops mid-way.
    let many: Vec<_> = (0..600_000u64).map(|i| (format!("k{i:07}").into_bytes(), n(i))).collect();
    zombie.begin(&write_round_header(e1(2), e1(1), false, &[])).unwrap();
    zombie.changes(&write_changes("a", 0, &pairs_batch(&many))).unwrap();
    assert!(zombie.end().unwrap().more, "the rewrite goes on in steps");
    // Epoch 2 resumes from the table and takes a round.
    let mut live = sink(&dir, config, e1(1));
    assert_eq!(live.resume().unwrap(), e1(1));
    assert_eq!(round(&mut live, e2(1), e1(1), false, &[("a", 0, vec![(b"k".to_vec(), n(7))])]), e2(1));
    let table = fs::read_to_string(dir.join("t.tsv")).unwrap();
    // The zombie wakes up: its steps fail, and the live table stays.
    let mut failed = false;
    for _ in 0..10 {
        match zombie.step() {
            Err(_) => {
                failed = true;
                break;
            }
            Ok(d) if !d.more => break,
            Ok(_) => {}
        }
    }
    assert!(failed, "the older epoch's rewrite went through");
    assert_eq!(fs::read_to_string(dir.join("t.tsv")).unwrap(), table);
    assert_eq!(fs::read_to_string(dir.join("t.tsv.round")).unwrap(), e2(1).to_string());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_is_checked() {
    let mut rt = SinkRuntime::<WriteTable>::new();
    let err = rt.init(&Init::new("table", json!({})).to_document()).unwrap_err();
    assert!(err.contains("path"), "{err}");
    let mut rt = SinkRuntime::<WriteTable>::new();
    assert!(rt.init(&Init::new("table", json!({"path": 3})).to_document()).is_err());
    let mut rt = SinkRuntime::<WriteTable>::new();
    let err = rt.init(&Init::new("table", json!({"path": "x", "rewrite_every": "soon"})).to_document()).unwrap_err();
    assert!(err.contains("rewrite_every"), "{err}");
    let mut rt = SinkRuntime::<WriteTable>::new();
    let err = rt.init(&Init::new("table", json!({"path": "x", "rewrite_percent": 0})).to_document()).unwrap_err();
    assert!(err.contains("rewrite_percent"), "{err}");
}
