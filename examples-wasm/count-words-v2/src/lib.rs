//! `count-words-v2`: the next version of `count-words`, for hot-swap tests.
//!
//! Words are counted exactly as in v1 and snapshotted with the same entries
//! (word → `u64` LE count), so v2 restores v1 snapshots unchanged. In
//! addition, every non-empty snapshot carries one derived entry, [`TOTAL`],
//! whose value is the `u64` LE sum of the slot's counts. `(` separates
//! words, so no word can collide with it.
//!
//! The total is derived, so restore ignores it: restoring a v1 or a v2
//! snapshot, or merging the states of several instances, recomputes it at
//! the next snapshot and never counts anything twice.
//!
//! Build: `cargo build --profile wasm --target wasm32-unknown-unknown -p count-words-v2`
//! → `target/wasm32-unknown-unknown/wasm/count_words_v2.wasm`.

use hailstorm_guest::{Bolt, Derived, Emitter, Init, Slot};

/// The key of the derived total entry.
pub const TOTAL: &[u8] = b"(total)";

/// The bolt. It takes no configuration.
#[derive(Debug, Default)]
pub struct CountWordsV2;

impl Bolt for CountWordsV2 {
    type Key = Vec<u8>;
    type Value = u64;

    fn init(_init: &Init) -> Result<Self, String> {
        Ok(CountWordsV2)
    }

    fn fold(&mut self, key: &[u8], _value: &[u8], state: &mut Slot<Self>, _out: &mut Emitter) -> Result<(), String> {
        state.add_ref(key, 1);
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
        derived.push(TOTAL, &total.to_le_bytes());
    }

    fn skip_on_restore(&self, key: &[u8]) -> bool {
        key == TOTAL
    }
}

hailstorm_guest::bolt!(CountWordsV2);

#[cfg(test)]
mod tests {
    use super::*;
    use hailstorm_guest::abi::read_pairs;
    use hailstorm_guest::serde_json::json;
    use hailstorm_guest::testing::{check_bolt_laws, pairs_batch};
    use hailstorm_guest::BoltRuntime;

    fn tuples(text: &str) -> Vec<(&[u8], &[u8])> {
        text.split(' ').map(|w| (w.as_bytes(), &b""[..])).collect()
    }

    fn runtime() -> BoltRuntime<CountWordsV2> {
        let mut rt = BoltRuntime::new();
        rt.init(&Init::new("counts", json!({})).to_document()).unwrap();
        rt
    }

    fn entries(snap: &[u8]) -> Vec<(Vec<u8>, u64)> {
        read_pairs(snap)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.to_vec(), u64::from_le_bytes(v.try_into().unwrap())))
            .collect()
    }

    #[test]
    fn monoid_laws() {
        let init = Init::new("counts", json!({}));
        check_bolt_laws::<CountWordsV2>(&init, &tuples("a b a c b a the end")).unwrap();
        check_bolt_laws::<CountWordsV2>(&init, &[]).unwrap();
    }

    #[test]
    fn snapshot_adds_the_total() {
        let mut rt = runtime();
        assert_eq!(entries(rt.snapshot(0).unwrap()), vec![]);
        rt.fold(0, &pairs_batch(&tuples("b a b"))).unwrap();
        assert_eq!(entries(rt.snapshot(0).unwrap()), vec![(TOTAL.to_vec(), 3), (b"a".to_vec(), 1), (b"b".to_vec(), 2)]);
    }

    #[test]
    fn restores_v1_and_v2_snapshots_without_double_counting() {
        // A v1 snapshot: words only.
        let (one, two) = (1u64.to_le_bytes(), 2u64.to_le_bytes());
        let v1 = pairs_batch(&[(&b"a"[..], &one[..]), (&b"b"[..], &two[..])]);
        let mut rt = runtime();
        rt.restore(0, &v1).unwrap();
        let v2 = rt.snapshot(0).unwrap().to_vec();
        assert_eq!(entries(&v2), vec![(TOTAL.to_vec(), 3), (b"a".to_vec(), 1), (b"b".to_vec(), 2)]);

        // Two instances' v2 snapshots restored into one slot: the totals in
        // them are ignored and the new total is the sum of the words.
        let mut rt = runtime();
        rt.restore(1, &v2).unwrap();
        rt.restore(1, &v2).unwrap();
        assert_eq!(entries(rt.snapshot(1).unwrap()), vec![(TOTAL.to_vec(), 6), (b"a".to_vec(), 2), (b"b".to_vec(), 4)]);
    }
}
