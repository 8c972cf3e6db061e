//! `count-words`: a Hailstorm bolt that counts words.
//!
//! State: word bytes (kept inline when short, see `Bytes`) → `u64` count,
//! snapshotted as entries whose value is
//! the count in 8 little-endian bytes. Each tuple adds 1 to its key's count
//! (the tuple's value is ignored); the bolt emits nothing.
//!
//! Build: `cargo build --profile wasm --target wasm32-unknown-unknown -p count-words`
//! → `target/wasm32-unknown-unknown/wasm/count_words.wasm`.

use std::collections::HashMap;
use std::hash::BuildHasher;

use hailstorm_guest::{Bolt, Bytes, Emitter, Init, Slot};

/// The bolt. It takes no configuration.
#[derive(Debug, Default)]
pub struct CountWords;

/// Adds one to `word`'s count in `map`, allocating the key only the first
/// time the word is seen: the native benchmark's count (the bolt adds 1 to
/// its slot the same way, through `Slot::add_bytes`).
#[inline]
pub fn count_into<S: BuildHasher>(map: &mut HashMap<Vec<u8>, u64, S>, word: &[u8]) {
    match map.get_mut(word) {
        Some(n) => *n = n.wrapping_add(1),
        None => {
            map.insert(word.to_vec(), 1);
        }
    }
}

impl Bolt for CountWords {
    type Key = Bytes;
    type Value = u64;

    fn init(_init: &Init) -> Result<Self, String> {
        Ok(CountWords)
    }

    fn fold(&mut self, key: &[u8], _value: &[u8], state: &mut Slot<Self>, _out: &mut Emitter) -> Result<(), String> {
        state.add_bytes(key, 1);
        Ok(())
    }

    fn combine(acc: &mut u64, v: u64) {
        // Wrapping keeps ⊕ associative and total; a real count cannot reach 2^64.
        *acc = acc.wrapping_add(v);
    }
}

hailstorm_guest::bolt!(CountWords);

#[cfg(test)]
mod tests {
    use super::*;
    use hailstorm_guest::serde_json::json;
    use hailstorm_guest::testing::{check_bolt_laws, pairs_batch, take_snapshot};
    use hailstorm_guest::BoltRuntime;

    fn tuples(text: &str) -> Vec<(&[u8], &[u8])> {
        text.split(' ').map(|w| (w.as_bytes(), &b""[..])).collect()
    }

    #[test]
    fn monoid_laws() {
        let init = Init::new("counts", json!({}));
        check_bolt_laws::<CountWords>(&init, &tuples("a b a c b a the end")).unwrap();
        check_bolt_laws::<CountWords>(&init, &[]).unwrap();
    }

    #[test]
    fn counts_and_snapshots_as_u64_le() {
        let mut rt = BoltRuntime::<CountWords>::new();
        rt.init(&Init::new("counts", json!({})).to_document()).unwrap();
        let out = rt.fold(0, &pairs_batch(&tuples("b a b"))).unwrap();
        assert_eq!(out, [0, 0, 0, 0], "emits nothing");
        let snap = take_snapshot(&mut rt, 0, 1 << 20).unwrap();
        let (one, two) = (1u64.to_le_bytes().to_vec(), 2u64.to_le_bytes().to_vec());
        assert_eq!(snap, vec![(b"a".to_vec(), one), (b"b".to_vec(), two)]);
        // A count that is not 8 bytes is refused.
        assert!(rt.restore(1, &pairs_batch(&[("a", "1")])).is_err());
    }
}
