//! `faulty`: a deserializer for testing how the engine contains bad modules.
//!
//! It splits lines into words exactly like `split-words`, except when a
//! record contains the substring given by one of these configuration keys:
//!
//! - `trap_on`: panics, which is a trap (`unreachable`) in WebAssembly;
//! - `reject_on`: returns an error (the record is refused, the call fails);
//! - `loop_on`: loops forever, until the host's call deadline stops it;
//! - `grow_on`: allocates and touches memory without bound, until the
//!   host's memory cap makes the allocator fail (a trap);
//! - `flood_on`: writes a log line of a megabyte, then 100,000 full of
//!   control bytes, then splits the record as usual.
//!
//! Build: `cargo build --profile wasm --target wasm32-unknown-unknown -p faulty`
//! → `target/wasm32-unknown-unknown/wasm/faulty.wasm`.

use core::hint::black_box;

use hailstorm_guest::{Deserializer, Emitter, Init};

/// The test deserializer and the substrings that trigger its faults.
#[derive(Debug, Default)]
pub struct Faulty {
    trap_on: Option<Vec<u8>>,
    reject_on: Option<Vec<u8>>,
    loop_on: Option<Vec<u8>>,
    grow_on: Option<Vec<u8>>,
    flood_on: Option<Vec<u8>>,
}

fn trigger(init: &Init, key: &str) -> Result<Option<Vec<u8>>, String> {
    match init.config_str(key)? {
        None => Ok(None),
        Some("") => Err(format!("config `{key}` is empty, which would match every record")),
        Some(s) => Ok(Some(s.as_bytes().to_vec())),
    }
}

fn contains(haystack: &[u8], needle: Option<&[u8]>) -> bool {
    match needle {
        Some(n) => haystack.windows(n.len()).any(|w| w == n),
        None => false,
    }
}

/// Spins forever. `black_box` hides the counter from the optimizer, so the
/// loop is kept (and has a loop header the host's interruption can stop).
fn spin() -> ! {
    let mut i: u64 = 0;
    loop {
        i = black_box(i.wrapping_add(1));
    }
}

/// Allocates 1 MiB blocks, writing every byte, and keeps them all, until
/// the allocator fails; then panics (a trap) saying how far it got. Under
/// a host that traps when memory cannot grow, the trap comes first.
fn grow() -> ! {
    const BLOCK: usize = 1 << 20;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block: Vec<u8> = Vec::new();
        if block.try_reserve_exact(BLOCK).is_err() || hoard.try_reserve(1).is_err() {
            panic!("faulty: grow_on: the allocator failed after {} MiB", hoard.len());
        }
        block.resize(BLOCK, 1);
        hoard.push(black_box(block));
        black_box(&mut hoard);
    }
}

/// Log lines meant to overwhelm the host's output: NULs, a terminal escape
/// that would clear the screen, a forged line break; then one huge line.
fn flood() {
    hailstorm_guest::log::warn(&"x".repeat(1 << 20));
    for i in 0..100_000 {
        hailstorm_guest::log::warn(&format!("flood\0\x1b[2J\nhailstorm: forged line {i}"));
    }
}

impl Deserializer for Faulty {
    fn init(init: &Init) -> Result<Self, String> {
        Ok(Faulty {
            trap_on: trigger(init, "trap_on")?,
            reject_on: trigger(init, "reject_on")?,
            loop_on: trigger(init, "loop_on")?,
            grow_on: trigger(init, "grow_on")?,
            flood_on: trigger(init, "flood_on")?,
        })
    }

    fn deserialize(&mut self, record: &[u8], out: &mut Emitter) -> Result<(), String> {
        if contains(record, self.trap_on.as_deref()) {
            panic!("faulty: trap_on matched record {:?}", String::from_utf8_lossy(record));
        }
        if contains(record, self.reject_on.as_deref()) {
            return Err(format!("faulty: reject_on matched record {:?}", String::from_utf8_lossy(record)));
        }
        if contains(record, self.loop_on.as_deref()) {
            spin();
        }
        if contains(record, self.grow_on.as_deref()) {
            grow();
        }
        if contains(record, self.flood_on.as_deref()) {
            flood();
        }
        words::for_each_word(record, |w| out.emit(w, b""));
        Ok(())
    }
}

hailstorm_guest::deserializer!(Faulty);

#[cfg(test)]
mod tests {
    use super::*;
    use hailstorm_guest::abi::read_emitted;
    use hailstorm_guest::serde_json::json;
    use hailstorm_guest::testing::records_batch;
    use hailstorm_guest::DeserializerRuntime;

    fn runtime(config: hailstorm_guest::serde_json::Value) -> DeserializerRuntime<Faulty> {
        let mut rt = DeserializerRuntime::new();
        rt.init(&Init::new("faulty", config).to_document()).unwrap();
        rt
    }

    #[test]
    fn behaves_like_split_words_otherwise() {
        let mut rt = runtime(json!({"trap_on": "BOOM", "loop_on": "SPIN", "grow_on": "EAT"}));
        let out = rt.deserialize(&records_batch(&["Hello boom, spin"])).unwrap();
        let keys: Vec<&[u8]> = read_emitted(out).unwrap().iter().map(|t| t.key).collect();
        assert_eq!(keys, [&b"hello"[..], b"boom", b"spin"]);
    }

    #[test]
    #[should_panic(expected = "trap_on matched")]
    fn traps_on_its_substring() {
        let mut rt = runtime(json!({"trap_on": "BOOM"}));
        let _ = rt.deserialize(&records_batch(&["fine", "a BOOM here"]));
    }

    #[test]
    fn config_is_checked() {
        for bad in [json!({"trap_on": ""}), json!({"loop_on": 1})] {
            let mut rt = DeserializerRuntime::<Faulty>::new();
            assert!(rt.init(&Init::new("faulty", bad).to_document()).is_err());
        }
    }
}
