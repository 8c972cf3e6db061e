//! `counts-to-rows`: a Hailstorm serializer for a PostgreSQL sink that writes
//! the entries of a counting bolt (key = the word, value = a `u64` count, 8
//! bytes little-endian) as rows `(word text primary key, count bigint)`.
//!
//! Configuration (for tests of the host's checks): `count_as = "integer"`
//! writes the count as a 4-byte integer into its `bigint` column, output the
//! host refuses.
//!
//! Build: `cargo build --profile wasm --target wasm32-unknown-unknown -p counts-to-rows`
//! → `target/wasm32-unknown-unknown/wasm/counts_to_rows.wasm`.

use hailstorm_guest::{Column, ColumnType, Entry, Init, Items, Output, Serializer, Value};

/// The serializer.
#[derive(Debug, Default)]
pub struct CountsToRows {
    /// Writes counts as 4-byte integers (malformed on purpose).
    narrow: bool,
}

impl Serializer for CountsToRows {
    fn init(init: &Init) -> Result<Self, String> {
        let narrow = match init.config.get("count_as").and_then(|v| v.as_str()) {
            None | Some("bigint") => false,
            Some("integer") => true,
            Some(other) => return Err(format!("config.count_as: `{other}` is neither bigint nor integer")),
        };
        Ok(CountsToRows { narrow })
    }

    fn output(&self) -> Output {
        Output::Rows(vec![Column::new("word", ColumnType::Text, true), Column::new("count", ColumnType::Bigint, false)])
    }

    fn serialize(&mut self, entry: &Entry<'_>, out: &mut Items) -> Result<(), String> {
        let word = std::str::from_utf8(entry.key).map_err(|_| "the word is not UTF-8".to_string())?;
        let bytes: [u8; 8] = entry
            .value
            .try_into()
            .map_err(|_| format!("the value of `{word}` is {} bytes, not a count (8 bytes)", entry.value.len()))?;
        let n = u64::from_le_bytes(bytes);
        let count = i64::try_from(n).map_err(|_| format!("the count of `{word}` ({n}) is too large for a bigint"))?;
        let count = if self.narrow { Value::Integer(count as i32) } else { Value::Bigint(count) };
        out.row(&[Value::Text(word), count]);
        Ok(())
    }
}

hailstorm_guest::serializer!(CountsToRows);

#[cfg(test)]
mod tests {
    use super::*;
    use hailstorm_guest::abi::{read_items, write_serialize_input, BatchWriter};
    use hailstorm_guest::SerializerRuntime;

    #[test]
    fn a_row_per_entry_with_a_bigint_count() {
        let mut rt = SerializerRuntime::<CountsToRows>::new();
        rt.init(&Init::new("out", hailstorm_guest::serde_json::json!({})).to_document()).unwrap();
        let doc = String::from_utf8(rt.describe().unwrap().to_vec()).unwrap();
        assert!(doc.contains(r#"{"key":true,"name":"word","type":"text"}"#), "{doc}");
        let mut w = BatchWriter::new();
        w.bytes(b"the").bytes(&42u64.to_le_bytes()).end_item();
        let out = rt.serialize(&write_serialize_input(7, "counts", 1, &w.finish())).unwrap();
        let items = read_items(out).unwrap();
        assert_eq!(items[0].fields, vec![Some(&b"the"[..]), Some(&42i64.to_be_bytes()[..])]);
    }
}
