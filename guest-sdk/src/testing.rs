//! Host-side checks for modules, driven through the same runtimes as the
//! exports.

use std::collections::BTreeMap;

use hailstorm_abi::{read_pairs, BatchWriter};

use crate::{Bolt, BoltRuntime, Init};

/// Frames `(key, value)` pairs as a tuple or entries batch.
pub fn pairs_batch<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut w = BatchWriter::new();
    for (k, v) in pairs {
        w.bytes(k.as_ref()).bytes(v.as_ref()).end_item();
    }
    w.finish()
}

/// Frames records as a record batch.
pub fn records_batch<R: AsRef<[u8]>>(records: &[R]) -> Vec<u8> {
    let mut w = BatchWriter::new();
    for r in records {
        w.bytes(r.as_ref()).end_item();
    }
    w.finish()
}

/// An encoded entry.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Takes a whole snapshot of `slot` as the host does, in chunks of at most
/// `max_bytes`, and returns its entries in order; checks that they are
/// sorted by key with no key twice.
pub fn take_snapshot<B: Bolt>(rt: &mut BoltRuntime<B>, slot: i32, max_bytes: i32) -> Result<Vec<Entry>, String> {
    let mut all: Vec<Entry> = Vec::new();
    loop {
        let chunk = rt.snapshot(slot, max_bytes)?;
        let pairs = read_pairs(chunk).map_err(|e| format!("snapshot chunk is not an entries batch: {e}"))?;
        if pairs.is_empty() {
            break;
        }
        for (k, v) in pairs {
            if all.last().is_some_and(|(last, _)| last.as_slice() >= k) {
                return Err(format!("snapshot entries are not sorted by key at {:?}", String::from_utf8_lossy(k)));
            }
            all.push((k.to_vec(), v.to_vec()));
        }
    }
    Ok(all)
}

fn runtime<B: Bolt>(init: &Init) -> Result<BoltRuntime<B>, String> {
    let mut rt = BoltRuntime::new();
    rt.init(&init.to_document())?;
    Ok(rt)
}

fn expect_same(what: &str, got: &[Entry], want: &[Entry]) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: the state differs from folding every tuple into one slot"))
    }
}

fn expect_empty<B: Bolt>(rt: &BoltRuntime<B>, slot: i32, what: &str) -> Result<(), String> {
    match rt.slot(slot) {
        Some(s) if s.is_empty() => Ok(()),
        _ => Err(format!("{what}: slot {slot} is not empty")),
    }
}

/// Checks the laws of ABI.md §6 for a bolt on a sample of tuples, returning
/// the first violation found:
///
/// - folding in another order, one tuple per call, gives the same state;
/// - folding split over slots then merged gives the same state, and a merge
///   empties its source;
/// - merging with an empty slot (either side) changes nothing;
/// - restoring the entries into an empty slot gives the state back, and
///   restored entries do not count as changed;
/// - restoring two halves of the entries into two slots and merging them
///   gives it back too;
/// - snapshots hand out exactly the changed entries, sorted, in chunks of
///   any size: the entries of a snapshot after folding one half of the
///   tuples, overlaid with those of a snapshot after the other half, are
///   the state (derived entries aside).
///
/// States are compared as their entries sorted by encoded key.
pub fn check_bolt_laws<B: Bolt>(init: &Init, tuples: &[(&[u8], &[u8])]) -> Result<(), String> {
    let mut rt = runtime::<B>(init)?;
    rt.fold(0, &pairs_batch(tuples))?;
    let want = rt.entries(0)?;

    // Reverse order, one tuple per call.
    let mut rt = runtime::<B>(init)?;
    for t in tuples.iter().rev() {
        rt.fold(1, &pairs_batch(&[*t]))?;
    }
    expect_same("reverse order", &rt.entries(1)?, &want)?;

    // Split over three slots, then merged in both directions.
    for dst in [0, 2] {
        let mut rt = runtime::<B>(init)?;
        for (i, t) in tuples.iter().enumerate() {
            rt.fold([0, 1, 2][i % 3], &pairs_batch(&[*t]))?;
        }
        for src in [0, 1, 2].into_iter().filter(|s| *s != dst) {
            rt.merge(dst, src)?;
            expect_empty(&rt, src, "merge")?;
        }
        expect_same("split over slots then merged", &rt.entries(dst)?, &want)?;
        // Identity: merge an empty slot in, then merge into an empty slot.
        rt.merge(dst, 3)?;
        expect_same("merge of an empty slot", &rt.entries(dst)?, &want)?;
        rt.merge(3, dst)?;
        expect_same("merge into an empty slot", &rt.entries(3)?, &want)?;
    }

    check_restore_laws::<B>(init, &want)?;
    check_snapshot_laws::<B>(init, tuples, &want)
}

fn check_restore_laws<B: Bolt>(init: &Init, want: &[Entry]) -> Result<(), String> {
    let mut rt = runtime::<B>(init)?;
    rt.restore(2, &pairs_batch(want))?;
    expect_same("restore of the entries", &rt.entries(2)?, want)?;
    let changed: Vec<Entry> = take_snapshot(&mut rt, 2, 1 << 20)?
        .into_iter()
        .filter(|(k, _)| !rt.get().is_some_and(|b| b.skip_on_restore(k)))
        .collect();
    if !changed.is_empty() {
        return Err("restore: restored entries were handed out by the next snapshot as changed".into());
    }
    let (even, odd): (Vec<_>, Vec<_>) = want.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let even: Vec<&Entry> = even.into_iter().map(|(_, p)| p).collect();
    let odd: Vec<&Entry> = odd.into_iter().map(|(_, p)| p).collect();
    let mut rt = runtime::<B>(init)?;
    rt.restore(0, &pairs_batch(&even.iter().map(|(k, v)| (k, v)).collect::<Vec<_>>()))?;
    rt.restore(1, &pairs_batch(&odd.iter().map(|(k, v)| (k, v)).collect::<Vec<_>>()))?;
    rt.merge(1, 0)?;
    expect_same("restore of a partition then merge", &rt.entries(1)?, want)
}

fn check_snapshot_laws<B: Bolt>(init: &Init, tuples: &[(&[u8], &[u8])], want: &[Entry]) -> Result<(), String> {
    for chunk in [1, 64, 1 << 20] {
        let mut rt = runtime::<B>(init)?;
        let (first, second) = tuples.split_at(tuples.len() / 2);
        rt.fold(0, &pairs_batch(first))?;
        let mut overlay: BTreeMap<Vec<u8>, Vec<u8>> = take_snapshot(&mut rt, 0, chunk)?.into_iter().collect();
        rt.fold(0, &pairs_batch(second))?;
        let later = take_snapshot(&mut rt, 0, chunk)?;
        overlay.extend(later);
        let again = take_snapshot(&mut rt, 0, chunk)?;
        let user = rt.get().ok_or("not initialized")?;
        let got: Vec<Entry> = overlay.into_iter().filter(|(k, _)| !user.skip_on_restore(k)).collect();
        expect_same(&format!("snapshots in chunks of {chunk} bytes, overlaid"), &got, want)?;
        if !again.iter().all(|(k, _)| user.skip_on_restore(k)) {
            return Err("snapshot: a snapshot right after another handed out entries again".into());
        }
    }
    Ok(())
}
