//! `count-words-v2`: the next version of `count-words`, for hot-swap tests.
//!
//! Words are counted exactly as in v1 and snapshotted with the same entries
//! (word → `u64` LE count), so v2 restores v1 snapshots unchanged. In
//! addition, every snapshot of a non-empty instance carries one derived
//! entry, `(total)@I` for instance `I`, whose value is the `u64` LE sum of
//! the instance's counts; the totals of all instances add up to the number
//! of words. `(` separates words, so no word can collide with it.
//!
//! The totals are derived, so restore ignores them: restoring a v1 or a v2
//! snapshot, on any number of instances, recomputes them at the next
//! snapshot and never counts anything twice. Computing a total visits the
//! whole state, once per snapshot: fine for a sample, but a bolt with a large
//! state would keep such a figure up to date as it folds.
//!
//! Build: `cargo build --profile wasm --target wasm32-unknown-unknown -p count-words-v2`
//! → `target/wasm32-unknown-unknown/wasm/count_words_v2.wasm`.

use hailstorm_guest::{Bolt, Bytes, Derived, Emitter, Init, Slot};

/// The prefix of the derived total entries.
pub const TOTAL: &[u8] = b"(total)";

/// The bolt. It takes no configuration.
#[derive(Debug, Default)]
pub struct CountWordsV2 {
    /// `(total)@I`.
    total_key: Vec<u8>,
}

impl Bolt for CountWordsV2 {
    type Key = Bytes;
    type Value = u64;

    fn init(init: &Init) -> Result<Self, String> {
        Ok(CountWordsV2 { total_key: format!("(total)@{}", init.instance).into_bytes() })
    }

    fn fold(&mut self, key: &[u8], _value: &[u8], state: &mut Slot<Self>, _out: &mut Emitter) -> Result<(), String> {
        state.add_bytes(key, 1);
        Ok(())
    }

    fn combine(acc: &mut u64, v: u64) {
        *acc = acc.wrapping_add(v);
    }

    fn on_snapshot(&self, slot: &Slot<Self>, derived: &mut Derived) {
        // An empty state snapshots as no entries at all, so that "empty"
        // stays the identity of ⊕ in snapshot form too.
        if slot.is_empty() {
            return;
        }
        let total = slot.iter().fold(0u64, |sum, (_, n)| sum.wrapping_add(*n));
        derived.push(&self.total_key, &total.to_le_bytes());
    }

    fn skip_on_restore(&self, key: &[u8]) -> bool {
        key.starts_with(TOTAL)
    }
}

hailstorm_guest::bolt!(CountWordsV2);

#[cfg(test)]
mod tests {
    use super::*;
    use hailstorm_guest::serde_json::json;
    use hailstorm_guest::testing::{check_bolt_laws, pairs_batch, take_snapshot};
    use hailstorm_guest::BoltRuntime;

    fn tuples(text: &str) -> Vec<(&[u8], &[u8])> {
        text.split(' ').map(|w| (w.as_bytes(), &b""[..])).collect()
    }

    fn runtime(instance: u32) -> BoltRuntime<CountWordsV2> {
        let mut init = Init::new("counts", json!({}));
        init.instance = instance;
        let mut rt = BoltRuntime::new();
        rt.init(&init.to_document()).unwrap();
        rt
    }

    fn snapshot(rt: &mut BoltRuntime<CountWordsV2>) -> Vec<(Vec<u8>, u64)> {
        let snap = take_snapshot(rt, 0, 1 << 20).unwrap();
        snap.into_iter().map(|(k, v)| (k, u64::from_le_bytes(v.try_into().unwrap()))).collect()
    }

    #[test]
    fn monoid_laws() {
        let init = Init::new("counts", json!({}));
        check_bolt_laws::<CountWordsV2>(&init, &tuples("a b a c b a the end")).unwrap();
        check_bolt_laws::<CountWordsV2>(&init, &[]).unwrap();
    }

    #[test]
    fn snapshots_add_the_instance_total() {
        let mut rt = runtime(1);
        assert_eq!(snapshot(&mut rt), vec![]);
        rt.fold(0, &pairs_batch(&tuples("b a b"))).unwrap();
        assert_eq!(snapshot(&mut rt), vec![(b"(total)@1".to_vec(), 3), (b"a".to_vec(), 1), (b"b".to_vec(), 2)]);
        // The next snapshot has the changed words and the new total.
        rt.fold(0, &pairs_batch(&tuples("a"))).unwrap();
        assert_eq!(snapshot(&mut rt), vec![(b"(total)@1".to_vec(), 4), (b"a".to_vec(), 2)]);
    }

    #[test]
    fn restores_v1_and_v2_snapshots_without_double_counting() {
        // A v1 snapshot: words only.
        let (one, two) = (1u64.to_le_bytes(), 2u64.to_le_bytes());
        let v1 = pairs_batch(&[(&b"a"[..], &one[..]), (&b"b"[..], &two[..])]);
        let mut rt = runtime(0);
        rt.restore(0, &v1).unwrap();
        rt.fold(0, &pairs_batch(&tuples("c"))).unwrap();
        let v2 = take_snapshot(&mut rt, 0, 1 << 20).unwrap();
        let want: Vec<(Vec<u8>, Vec<u8>)> =
            vec![(b"(total)@0".to_vec(), 4u64.to_le_bytes().to_vec()), (b"c".to_vec(), 1u64.to_le_bytes().to_vec())];
        assert_eq!(v2, want);
        // Restoring a v2 snapshot ignores its total.
        let mut rt = runtime(0);
        rt.restore(0, &pairs_batch(&v2)).unwrap();
        assert_eq!(rt.entries(0).unwrap(), vec![(b"c".to_vec(), 1u64.to_le_bytes().to_vec())]);
    }
}
