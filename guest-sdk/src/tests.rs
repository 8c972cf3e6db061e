//! Host tests of the runtimes behind the exports.

use hailstorm_abi::{read_emitted, read_pairs, write_changes, write_round_header, BatchWriter};
use serde_json::json;

use crate::testing::{check_bolt_laws, pairs_batch, records_batch, take_snapshot};
use crate::*;

fn init_doc(config: serde_json::Value) -> Vec<u8> {
    Init::new("p", config).to_document()
}

/// Counts keys; the tuple value, when 8 bytes, is the amount to add.
struct Sum;

impl Bolt for Sum {
    type Key = String;
    type Value = u64;

    fn init(_init: &Init) -> Result<Self, String> {
        Ok(Sum)
    }

    fn fold(&mut self, key: &[u8], value: &[u8], state: &mut Slot<Self>, out: &mut Emitter) -> Result<(), String> {
        let key = String::decode(key)?;
        let n = if value.is_empty() { 1 } else { u64::decode(value)? };
        if key == "echo" {
            out.emit(key.as_bytes(), value);
        }
        state.add(key, n);
        Ok(())
    }

    fn combine(acc: &mut u64, v: u64) {
        *acc = acc.wrapping_add(v);
    }
}

/// Sum plus a derived `#total` entry that restore must ignore.
struct SumWithTotal;

impl Bolt for SumWithTotal {
    type Key = Vec<u8>;
    type Value = u64;

    fn init(_init: &Init) -> Result<Self, String> {
        Ok(SumWithTotal)
    }

    fn fold(&mut self, key: &[u8], _value: &[u8], state: &mut Slot<Self>, _out: &mut Emitter) -> Result<(), String> {
        state.add_ref(key, 1);
        Ok(())
    }

    fn combine(acc: &mut u64, v: u64) {
        *acc += v;
    }

    fn on_snapshot(&self, slot: &Slot<Self>, derived: &mut Derived) {
        if !slot.is_empty() {
            derived.push_typed(&b"#total".to_vec(), &slot.iter().map(|(_, v)| *v).sum::<u64>());
        }
    }

    fn skip_on_restore(&self, key: &[u8]) -> bool {
        key == b"#total"
    }
}

/// Keeps the maximum value per key: another monoid (identity 0).
struct Max;

impl Bolt for Max {
    type Key = i64;
    type Value = i64;

    fn init(_init: &Init) -> Result<Self, String> {
        Ok(Max)
    }

    fn fold(&mut self, key: &[u8], value: &[u8], state: &mut Slot<Self>, _out: &mut Emitter) -> Result<(), String> {
        state.add(i64::decode(key)?, i64::decode(value)?);
        Ok(())
    }

    fn combine(acc: &mut i64, v: i64) {
        *acc = (*acc).max(v);
    }
}

fn words() -> Vec<(Vec<u8>, Vec<u8>)> {
    let text = "the quick brown fox jumps over the lazy dog the end fox";
    text.split(' ').map(|w| (w.as_bytes().to_vec(), Vec::new())).collect()
}

fn as_refs(v: &[(Vec<u8>, Vec<u8>)]) -> Vec<(&[u8], &[u8])> {
    v.iter().map(|(k, v)| (&k[..], &v[..])).collect()
}

#[test]
fn monoid_laws_hold_for_sample_bolts() {
    let init = Init::new("p", json!({}));
    let w = words();
    check_bolt_laws::<Sum>(&init, &as_refs(&w)).unwrap();
    check_bolt_laws::<SumWithTotal>(&init, &as_refs(&w)).unwrap();
    check_bolt_laws::<Sum>(&init, &[]).unwrap();
    let max: Vec<(Vec<u8>, Vec<u8>)> = [(1i64, 5i64), (2, -3), (1, 9), (3, 0), (2, -1), (1, 2)]
        .iter()
        .map(|(k, v)| (k.to_le_bytes().to_vec(), v.to_le_bytes().to_vec()))
        .collect();
    check_bolt_laws::<Max>(&init, &as_refs(&max)).unwrap();
}

#[test]
fn laws_catch_a_broken_bolt() {
    /// Not commutative: keeps the last value folded.
    struct Last;
    impl Bolt for Last {
        type Key = Vec<u8>;
        type Value = Vec<u8>;
        fn init(_init: &Init) -> Result<Self, String> {
            Ok(Last)
        }
        fn fold(&mut self, k: &[u8], v: &[u8], s: &mut Slot<Self>, _o: &mut Emitter) -> Result<(), String> {
            s.add(k.to_vec(), v.to_vec());
            Ok(())
        }
        fn combine(acc: &mut Vec<u8>, v: Vec<u8>) {
            *acc = v;
        }
    }
    let t: Vec<(&[u8], &[u8])> = vec![(b"k", b"1"), (b"k", b"2")];
    assert!(check_bolt_laws::<Last>(&Init::new("p", json!({})), &t).is_err());
}

#[test]
fn snapshots_hand_out_the_changed_entries_sorted_and_in_chunks() {
    let mut rt = BoltRuntime::<Sum>::new();
    rt.init(&init_doc(json!({}))).unwrap();
    let out = rt.fold(0, &pairs_batch(&[("b", &b""[..]), ("a", &5u64.to_le_bytes()[..]), ("b", b"")])).unwrap();
    assert_eq!(read_emitted(out).unwrap().len(), 0);
    let n = |v: u64| v.to_le_bytes().to_vec();
    let first = take_snapshot(&mut rt, 0, 1).unwrap();
    assert_eq!(first, vec![(b"a".to_vec(), n(5)), (b"b".to_vec(), n(2))]);
    // Nothing changed since: an empty snapshot.
    assert!(take_snapshot(&mut rt, 0, 1 << 20).unwrap().is_empty());
    rt.fold(0, &pairs_batch(&[("c", ""), ("b", "")])).unwrap();
    // One chunk holds at most what fits (one entry here), and the changed ones come with their current values.
    let one = read_pairs(rt.snapshot(0, 16).unwrap()).unwrap().len();
    assert_eq!(one, 1);
    let rest = take_snapshot(&mut rt, 0, 16).unwrap();
    assert_eq!(rest, vec![(b"c".to_vec(), n(1))]);
    // A merge marks what it brings in as changed in its destination.
    rt.fold(1, &pairs_batch(&[("a", "")])).unwrap();
    rt.merge(0, 1).unwrap();
    assert_eq!(take_snapshot(&mut rt, 0, 1 << 20).unwrap(), vec![(b"a".to_vec(), n(6))]);
    assert_eq!(rt.slot(0).unwrap().changed_len(), 0);
}

#[test]
fn a_slot_where_most_keys_changed_still_hands_out_exactly_those() {
    let mut rt = BoltRuntime::<Sum>::new();
    rt.init(&init_doc(json!({}))).unwrap();
    let keys: Vec<String> = (0..5000).map(|i| format!("k{i:05}")).collect();
    let all: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "")).collect();
    rt.fold(0, &pairs_batch(&all)).unwrap();
    assert_eq!(take_snapshot(&mut rt, 0, 4096).unwrap().len(), 5000);
    rt.fold(0, &pairs_batch(&all[10..20])).unwrap();
    let some = take_snapshot(&mut rt, 0, 4096).unwrap();
    assert_eq!(some.iter().map(|(k, _)| String::from_utf8_lossy(k).into_owned()).collect::<Vec<_>>(), keys[10..20]);
    // Most keys again (the slot stops listing them one by one), but not all.
    rt.fold(0, &pairs_batch(&all[..4000])).unwrap();
    let most = take_snapshot(&mut rt, 0, 4096).unwrap();
    assert_eq!(most.len(), 4000);
    assert!(most.iter().all(|(k, v)| k.as_slice() < b"k04000" && v.len() == 8));
    assert!(take_snapshot(&mut rt, 0, 4096).unwrap().is_empty());
}

#[test]
fn a_snapshot_larger_than_a_page_of_its_copy_comes_out_whole_and_sorted() {
    let mut rt = BoltRuntime::<Sum>::new();
    rt.init(&init_doc(json!({}))).unwrap();
    // About 2.5 MiB of keys, in an order that is not theirs.
    let keys: Vec<String> = (0..20_000u32).map(|i| format!("{:0>120}", i.wrapping_mul(7919) % 20_000)).collect();
    let all: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "")).collect();
    rt.fold(0, &pairs_batch(&all)).unwrap();
    let snap = take_snapshot(&mut rt, 0, 1 << 16).unwrap();
    let mut want: Vec<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
    want.sort();
    assert_eq!(snap.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), want);
    assert!(snap.iter().all(|(_, v)| *v == 1u64.to_le_bytes()));
}

#[test]
fn derived_entries_are_added_and_skipped_on_restore() {
    let mut rt = BoltRuntime::<SumWithTotal>::new();
    rt.init(&init_doc(json!({}))).unwrap();
    assert_eq!(take_snapshot(&mut rt, 0, 1 << 20).unwrap(), vec![], "empty slot, no total");
    rt.fold(0, &pairs_batch(&[("x", ""), ("y", ""), ("x", "")])).unwrap();
    let snap = take_snapshot(&mut rt, 0, 1 << 20).unwrap();
    assert_eq!(snap[0], (b"#total".to_vec(), 3u64.to_le_bytes().to_vec()));
    // Restore sets values (a second restore of the same entries changes nothing) and skips the total.
    rt.restore(1, &pairs_batch(&snap)).unwrap();
    rt.restore(1, &pairs_batch(&snap)).unwrap();
    let slot = rt.slot(1).unwrap();
    assert_eq!(slot.len(), 2);
    assert_eq!(slot.get(&b"x"[..]), Some(&2));
}

#[test]
fn emitted_tuples_carry_their_input_index() {
    let mut rt = BoltRuntime::<Sum>::new();
    rt.init(&init_doc(json!({}))).unwrap();
    let out = rt.fold(2, &pairs_batch(&[("a", ""), ("echo", ""), ("b", ""), ("echo", "")])).unwrap();
    let e = read_emitted(out).unwrap();
    assert_eq!(e.iter().map(|t| t.input).collect::<Vec<_>>(), [1, 3]);
    // The next call reuses the buffer and starts from an empty batch.
    let out = rt.fold(2, &pairs_batch::<&str, &str>(&[])).unwrap();
    assert_eq!(out, [0, 0, 0, 0]);
}

#[test]
fn bad_input_is_an_error_and_leaves_state_alone() {
    let mut rt = BoltRuntime::<Sum>::new();
    rt.init(&init_doc(json!({}))).unwrap();
    rt.fold(0, &pairs_batch(&[("a", "")])).unwrap();
    let before = rt.entries(0).unwrap();

    let good = pairs_batch(&[("a", ""), ("b", "")]);
    for cut in 0..good.len() {
        assert!(rt.fold(0, &good[..cut]).is_err(), "fold of a batch cut at {cut}");
        assert!(rt.restore(0, &good[..cut]).is_err(), "restore of a batch cut at {cut}");
    }
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(rt.fold(0, &trailing).is_err());
    // A wrong-width value and a non-UTF-8 key fail to decode.
    assert!(rt.restore(0, &pairs_batch(&[(&b"c"[..], &b"123"[..])])).is_err());
    assert!(rt
        .restore(0, &pairs_batch(&[(&b"c"[..], &1u64.to_le_bytes()[..]), (&[0xff][..], &1u64.to_le_bytes()[..])]))
        .is_err());
    // A count that promises far more entries than the bytes hold.
    let mut w = BatchWriter::new();
    w.bytes(b"k").bytes(b"v").end_item();
    let mut huge = w.finish();
    huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(rt.restore(0, &huge).is_err());
    // The user's own fold error names the tuple.
    let err = rt.fold(0, &pairs_batch(&[(&b"a"[..], &b""[..]), (&b"z"[..], &b"12"[..])])).unwrap_err();
    assert!(err.contains("tuple 1"), "{err}");

    // Framing and decoding errors were caught before anything was applied;
    // the user-level error above did fold tuple 0, which the contract allows
    // (the host discards a slot whose fold failed).
    let two = 2u64.to_le_bytes().to_vec();
    assert_eq!(rt.entries(0).unwrap(), vec![(b"a".to_vec(), two)]);
    assert_eq!(before, vec![(b"a".to_vec(), 1u64.to_le_bytes().to_vec())]);
}

#[test]
fn slots_are_checked() {
    let mut rt = BoltRuntime::<Sum>::new();
    assert!(rt.fold(0, &pairs_batch::<&str, &str>(&[])).unwrap_err().contains("hailstorm_init"));
    rt.init(&init_doc(json!({}))).unwrap();
    assert!(rt.init(&init_doc(json!({}))).is_err());
    for bad in [-1, 4, i32::MAX, i32::MIN] {
        assert!(rt.fold(bad, &pairs_batch::<&str, &str>(&[])).is_err());
        assert!(rt.snapshot(bad, 1 << 20).is_err());
        assert!(rt.restore(bad, &pairs_batch::<&str, &str>(&[])).is_err());
        assert!(rt.merge(0, bad).is_err());
        assert!(rt.merge(bad, 0).is_err());
    }
    assert!(rt.merge(1, 1).is_err());
    for s in 0..4 {
        rt.fold(s, &pairs_batch(&[("k", "")])).unwrap();
    }
    rt.merge(0, 1).unwrap();
    rt.merge(2, 0).unwrap();
    rt.merge(3, 2).unwrap();
    assert_eq!(rt.slot(3).unwrap().get("k"), Some(&4));
    for s in 0..3 {
        assert!(rt.slot(s).unwrap().is_empty());
    }
}

/// Emits every record twice, and fails on "bad".
struct Twice {
    suffix: String,
}

impl Deserializer for Twice {
    fn init(init: &Init) -> Result<Self, String> {
        let suffix = init.config_str("suffix")?.unwrap_or("").to_owned();
        if suffix == "reject" {
            return Err("suffix `reject` is not allowed".to_owned());
        }
        crate::log::info!("suffix {suffix:?}");
        Ok(Twice { suffix })
    }

    fn deserialize(&mut self, record: &[u8], out: &mut Emitter) -> Result<(), String> {
        if record == b"bad" {
            return Err("bad record".to_owned());
        }
        out.emit(record, self.suffix.as_bytes());
        out.emit(record, b"");
        Ok(())
    }
}

#[test]
fn deserializer_runtime() {
    let mut rt = DeserializerRuntime::<Twice>::new();
    assert!(rt.deserialize(&records_batch(&["a"])).is_err());
    assert!(rt.init(b"{").is_err());
    assert!(rt.init(&init_doc(json!({"suffix": "reject"}))).unwrap_err().contains("reject"));
    rt.init(&init_doc(json!({"suffix": "!"}))).unwrap();
    assert_eq!(sys::take_logs(), vec![(2, "suffix \"!\"".to_owned())]);

    let out = rt.deserialize(&records_batch(&["x", "", "yz"])).unwrap();
    let e = read_emitted(out).unwrap();
    let got: Vec<(u32, &[u8], &[u8])> = e.iter().map(|t| (t.input, t.key, t.value)).collect();
    let want: Vec<(u32, &[u8], &[u8])> =
        vec![(0, b"x", b"!"), (0, b"x", b""), (1, b"", b"!"), (1, b"", b""), (2, b"yz", b"!"), (2, b"yz", b"")];
    assert_eq!(got, want);

    let err = rt.deserialize(&records_batch(&["ok", "bad"])).unwrap_err();
    assert!(err.contains("record 1") && err.contains("bad record"), "{err}");
    let good = records_batch(&["a", "b"]);
    for cut in 0..good.len() {
        assert!(rt.deserialize(&good[..cut]).is_err());
    }
    assert_eq!(rt.deserialize(&records_batch::<&str>(&[])).unwrap(), [0, 0, 0, 0]);
}

/// Counts what it receives; makes rounds durable only when told `last`.
struct Collect {
    seen: Vec<(u64, u64, usize)>,
    durable: u64,
    round: u64,
    last: bool,
}

impl Sink for Collect {
    fn init(init: &Init) -> Result<Self, String> {
        Ok(Collect { seen: Vec::new(), durable: init.committed_round, round: 0, last: false })
    }

    fn begin(&mut self, header: &RoundHeader<'_>) -> Result<(), String> {
        self.seen.push((header.round, header.since, 0));
        (self.round, self.last) = (header.round, header.last);
        Ok(())
    }

    fn changes(&mut self, changes: &Changes<'_>) -> Result<(), String> {
        if let Some(s) = self.seen.last_mut() {
            s.2 += changes.entries.len();
        }
        Ok(())
    }

    fn end(&mut self) -> Result<Durable, String> {
        if self.last {
            self.durable = self.round;
        }
        Ok(Durable::done(self.durable))
    }
}

#[test]
fn sink_runtime() {
    let mut rt = SinkRuntime::<Collect>::new();
    let mut init = Init::new("p", json!({}));
    init.committed_round = 4;
    rt.init(&init.to_document()).unwrap();
    assert_eq!(rt.resume().unwrap(), 4);
    let changes = write_changes("counts", 1, &pairs_batch(&[("a", "b")]));
    assert!(rt.changes(&changes).is_err(), "changes outside a round");
    let head = write_round_header(7, 4, false, &[("lines/0".into(), 3)]);
    rt.begin(&head).unwrap();
    assert!(rt.begin(&head).is_err(), "two begins");
    rt.changes(&changes).unwrap();
    assert!(rt.changes(&changes[..changes.len() - 1]).is_err());
    assert_eq!(rt.end().unwrap(), Durable::done(4), "buffered, not yet durable");
    rt.begin(&write_round_header(8, 7, true, &[])).unwrap();
    assert_eq!(rt.end().unwrap(), Durable::done(8));
    assert!(rt.step().is_err(), "no work pending");
    assert_eq!(Durable { round: 8, more: true }.encode().unwrap(), 8 | hailstorm_abi::MORE_WORK);
    assert_eq!(rt.get().unwrap().seen, vec![(7, 4, 1), (8, 7, 0)]);
    assert!(rt.end().is_err(), "end outside a round");
}

#[test]
fn export_status_reports_through_fail() {
    sys::take_failures();
    assert_eq!(export::status(Ok(())), 0);
    assert_ne!(export::status(Err("boom".to_owned())), 0);
    assert_eq!(sys::take_failures(), vec!["boom".to_owned()]);
}

proptest::proptest! {
    /// Whatever keys change between snapshots (a few, listed one by one, or
    /// most, found by scanning the slot), and however long their common
    /// prefixes: a snapshot hands out exactly the keys changed since the
    /// previous one, with their current values, sorted by encoded key.
    #[test]
    fn snapshots_hold_exactly_the_changed_keys_sorted(
        rounds in proptest::collection::vec(proptest::collection::vec((0u16..3000, 0u8..4), 0..3000), 1..6),
        chunk in 16i32..4096,
    ) {
        let mut rt = BoltRuntime::<Sum>::new();
        rt.init(&init_doc(json!({}))).unwrap();
        let mut model = std::collections::BTreeMap::<Vec<u8>, u64>::new();
        for keys in rounds {
            // Key shapes: short, sharing an 8-byte prefix, longer than 11 bytes, longer than 127.
            let names: Vec<String> = keys.iter().map(|&(k, shape)| match shape {
                0 => format!("k{k}"),
                1 => format!("prefix__{k}"),
                2 => format!("a-long-common-start-{k:04}"),
                _ => format!("{}-{k}", "x".repeat(150)),
            }).collect();
            let batch: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "")).collect();
            rt.fold(0, &pairs_batch(&batch)).unwrap();
            let mut changed = std::collections::BTreeMap::new();
            for n in &names {
                let v = model.entry(n.as_bytes().to_vec()).or_insert(0);
                *v += 1;
                changed.insert(n.as_bytes().to_vec(), v.to_le_bytes().to_vec());
            }
            let want: Vec<(Vec<u8>, Vec<u8>)> = changed.into_iter().collect();
            proptest::prop_assert_eq!(take_snapshot(&mut rt, 0, chunk).unwrap(), want);
        }
    }
}
