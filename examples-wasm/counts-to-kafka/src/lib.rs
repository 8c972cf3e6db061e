//! `counts-to-kafka`: a Hailstorm serializer for a Kafka sink that writes the
//! entries of a counting bolt (key = the word, value = a `u64` count, 8 bytes
//! little-endian) as Kafka records: key = the word's bytes, value = the count
//! in decimal ASCII, no headers.
//!
//! Build: `cargo build --profile wasm --target wasm32-unknown-unknown -p counts-to-kafka`
//! → `target/wasm32-unknown-unknown/wasm/counts_to_kafka.wasm`.

use hailstorm_guest::{Entry, Init, Items, Output, Serializer};

/// The serializer. It takes no configuration.
#[derive(Debug, Default)]
pub struct CountsToKafka;

/// The count an entry holds.
pub fn count(entry: &Entry<'_>) -> Result<u64, String> {
    let bytes: [u8; 8] = entry.value.try_into().map_err(|_| {
        format!(
            "the value of `{}` is {} bytes, not a count (8 bytes)",
            String::from_utf8_lossy(entry.key),
            entry.value.len()
        )
    })?;
    Ok(u64::from_le_bytes(bytes))
}

impl Serializer for CountsToKafka {
    fn init(_init: &Init) -> Result<Self, String> {
        Ok(CountsToKafka)
    }

    fn output(&self) -> Output {
        Output::Kafka
    }

    fn serialize(&mut self, entry: &Entry<'_>, out: &mut Items) -> Result<(), String> {
        let n = count(entry)?;
        out.record(Some(entry.key), Some(n.to_string().as_bytes()), &[]);
        Ok(())
    }
}

hailstorm_guest::serializer!(CountsToKafka);

#[cfg(test)]
mod tests {
    use super::*;
    use hailstorm_guest::abi::{read_items, write_serialize_input, BatchWriter};
    use hailstorm_guest::SerializerRuntime;

    #[test]
    fn a_record_per_entry_with_the_count_in_decimal() {
        let mut rt = SerializerRuntime::<CountsToKafka>::new();
        rt.init(&Init::new("out", hailstorm_guest::serde_json::json!({})).to_document()).unwrap();
        assert_eq!(rt.describe().unwrap(), br#"{"output":"kafka"}"#);
        let mut w = BatchWriter::new();
        w.bytes(b"the").bytes(&42u64.to_le_bytes()).end_item();
        let out = rt.serialize(&write_serialize_input(7, "counts", 1, &w.finish())).unwrap();
        let items = read_items(out).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].fields, vec![Some(&b"the"[..]), Some(&b"42"[..])]);
        let mut w = BatchWriter::new();
        w.bytes(b"odd").bytes(b"x").end_item();
        let e = rt.serialize(&write_serialize_input(7, "counts", 1, &w.finish())).unwrap_err();
        assert!(e.contains("entry 0 of the batch: the value of `odd` is 1 bytes"), "{e}");
    }
}
