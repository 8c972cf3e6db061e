//! `split-words`: a Hailstorm deserializer that splits each line into words.
//!
//! A word is a maximal run of ASCII letters and digits, lowercased; every
//! other byte separates words (see [`for_each_word`]). Each word becomes one
//! tuple with the word as key and an empty value.
//!
//! Build: `cargo build --profile wasm --target wasm32-unknown-unknown -p split-words`
//! → `target/wasm32-unknown-unknown/wasm/split_words.wasm`.

use hailstorm_guest::{Deserializer, Emitter, Init};

pub use words::{for_each_word, words};

/// The deserializer. It takes no configuration.
#[derive(Debug, Default)]
pub struct SplitWords;

impl Deserializer for SplitWords {
    fn init(_init: &Init) -> Result<Self, String> {
        Ok(SplitWords)
    }

    fn deserialize(&mut self, record: &[u8], out: &mut Emitter) -> Result<(), String> {
        for_each_word(record, |w| out.emit(w, b""));
        Ok(())
    }
}

hailstorm_guest::deserializer!(SplitWords);

#[cfg(test)]
mod tests {
    use super::*;
    use hailstorm_guest::abi::read_emitted;
    use hailstorm_guest::testing::records_batch;
    use hailstorm_guest::DeserializerRuntime;

    #[test]
    fn emits_one_tuple_per_word_with_its_record_index() {
        let mut rt = DeserializerRuntime::<SplitWords>::new();
        rt.init(&Init::new("lines", hailstorm_guest::serde_json::json!({})).to_document()).unwrap();
        let out = rt.deserialize(&records_batch(&["The cat", "", "--", "SAT on the Mat."])).unwrap();
        let got: Vec<(u32, &[u8], &[u8])> =
            read_emitted(out).unwrap().iter().map(|t| (t.input, t.key, t.value)).collect();
        let want: Vec<(u32, &[u8], &[u8])> = vec![
            (0, b"the", b""),
            (0, b"cat", b""),
            (3, b"sat", b""),
            (3, b"on", b""),
            (3, b"the", b""),
            (3, b"mat", b""),
        ];
        assert_eq!(got, want);
    }
}
