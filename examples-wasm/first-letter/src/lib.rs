//! `first-letter`: a bolt that both keeps state and emits tuples downstream.
//!
//! It counts words (the same state as `count-words`) and, for every word it
//! folds, emits one tuple keyed by the word's first byte. A downstream
//! `count-words` bolt then counts words by first letter. The pair exercises a
//! chain of bolts: emitted tuples keep the origin of the input record, so the
//! downstream bolt's snapshots stay exactly-once.
//!
//! Build: `cargo build --profile wasm --target wasm32-unknown-unknown -p first-letter`
//! → `target/wasm32-unknown-unknown/wasm/first_letter.wasm`.

use hailstorm_guest::{Bolt, Bytes, Emitter, Init, Slot};

/// The bolt; it has no configuration.
#[derive(Debug, Default)]
pub struct FirstLetter;

impl Bolt for FirstLetter {
    type Key = Bytes;
    type Value = u64;

    fn init(_init: &Init) -> Result<Self, String> {
        Ok(FirstLetter)
    }

    fn fold(&mut self, key: &[u8], _value: &[u8], state: &mut Slot<Self>, out: &mut Emitter) -> Result<(), String> {
        state.add_bytes(key, 1);
        if let Some(first) = key.first() {
            out.emit(&[*first], b"");
        }
        Ok(())
    }

    fn combine(acc: &mut u64, v: u64) {
        *acc = acc.wrapping_add(v);
    }
}

hailstorm_guest::bolt!(FirstLetter);
