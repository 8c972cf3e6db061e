//! `dead-letters`: a Hailstorm bolt that keeps the dead letters of a spout
//! (`inputs = ["SPOUT.dead"]` of a spout with `on_error = "dead-letter"`).
//!
//! State: the tuple's key (`PARTITION@OFFSET`) → its value (a JSON object
//! with the record and the error), a set keyed by where the record was.
//! A record is read exactly once, so a key arrives once; `combine` keeps the
//! smaller value, which makes the state a commutative monoid all the same.
//! Sinks receive the entries like any bolt's.
//!
//! Build: `cargo build --profile wasm --target wasm32-unknown-unknown -p dead-letters`
//! → `target/wasm32-unknown-unknown/wasm/dead_letters.wasm`.

use hailstorm_guest::{Bolt, Emitter, Init, Slot};

/// The bolt. It takes no configuration.
#[derive(Debug, Default)]
pub struct DeadLetters;

impl Bolt for DeadLetters {
    type Key = Vec<u8>;
    type Value = Vec<u8>;

    fn init(_init: &Init) -> Result<Self, String> {
        Ok(DeadLetters)
    }

    fn fold(&mut self, key: &[u8], value: &[u8], state: &mut Slot<Self>, _out: &mut Emitter) -> Result<(), String> {
        state.add_ref(key, value.to_vec());
        Ok(())
    }

    fn combine(acc: &mut Vec<u8>, v: Vec<u8>) {
        if v < *acc {
            *acc = v;
        }
    }
}

hailstorm_guest::bolt!(DeadLetters);

#[cfg(test)]
mod tests {
    use super::*;
    use hailstorm_guest::serde_json::json;
    use hailstorm_guest::testing::check_bolt_laws;

    #[test]
    fn monoid_laws() {
        let init = Init::new("dead", json!({}));
        let tuples: [(&[u8], &[u8]); 4] =
            [(b"l/0@3", b"{\"e\":1}"), (b"l/0@9", b"{\"e\":2}"), (b"l/1@3", b"x"), (b"l/0@3", b"{\"a\":0}")];
        check_bolt_laws::<DeadLetters>(&init, &tuples).unwrap();
        check_bolt_laws::<DeadLetters>(&init, &[]).unwrap();
    }
}
