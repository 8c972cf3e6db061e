//! Fuzzing of every decoder of outside bytes, on stable Rust: proptest
//! feeds each decoder random bytes and valid inputs with random damage
//! (bytes flipped, cut, inserted), and the decoder must answer with a value
//! or an error: never a panic, a hang or an allocation the input did not
//! pay for. `PROPTEST_CASES=N cargo test --release --lib fuzz` runs longer
//! campaigns (SECURITY.md gives the rates).

use std::path::Path;

use hailstorm_abi::BatchWriter;
use proptest::prelude::*;

use crate::channel::ToSpout;
use crate::net::wire;
use crate::store::{self, CommitRecord, DataHeader, DataKind, FileStore, Parent};
use crate::topology::Topology;

/// A change to a valid input: flip a byte, cut it short, or insert bytes.
#[derive(Debug, Clone)]
enum Damage {
    Flip(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
}

fn damage() -> impl Strategy<Value = Vec<Damage>> {
    let one = prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(i, x)| Damage::Flip(i, x)),
        any::<usize>().prop_map(Damage::Cut),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Damage::Insert(i, b)),
    ];
    prop::collection::vec(one, 1..6)
}

fn apply(mut bytes: Vec<u8>, damage: &[Damage]) -> Vec<u8> {
    for d in damage {
        let n = bytes.len().max(1);
        match d {
            Damage::Flip(i, x) => {
                if let Some(b) = bytes.get_mut(i % n) {
                    *b ^= x;
                }
            }
            Damage::Cut(i) => bytes.truncate(i % n),
            Damage::Insert(i, b) => {
                let at = (i % n).min(bytes.len());
                bytes.splice(at..at, b.iter().copied());
            }
        }
    }
    bytes
}

const TOPOLOGY: &str = include_str!("../../topologies/wordcount.toml");

fn topology(text: &str) {
    let _ = Topology::from_source(text, Path::new("/nowhere/t.toml"), &[]);
}

fn frames(bytes: &[u8]) {
    let mut d = wire::Decoder::new(1 << 16);
    d.push(bytes);
    // Each call takes a frame or fails; a stream cannot keep it busy.
    for _ in 0..=bytes.len() {
        match d.next_frame::<ToSpout>() {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
}

fn batches(bytes: &[u8]) {
    let _ = hailstorm_abi::read_pairs(bytes);
    let _ = hailstorm_abi::read_records(bytes);
    let _ = hailstorm_abi::read_emitted(bytes);
    let _ = hailstorm_abi::read_round_header(bytes);
    let _ = hailstorm_abi::read_changes(bytes);
}

/// A valid delta file's bytes.
fn data_file() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FileStore::open(dir.path()).expect("store");
    let header = DataHeader {
        kind: DataKind::Delta,
        topology: "t".into(),
        processor: "counts".into(),
        instance: 0,
        parallelism: 1,
        round: 3,
        parent: Parent::Delta(2),
        clock: vec![("lines/0".into(), 42)],
        module_hash: "abc".into(),
    };
    let mut w = store.delta_writer(&header).expect("writer");
    let mut b = BatchWriter::new();
    for k in 0..20u32 {
        b.bytes(format!("key{k:03}").as_bytes()).bytes(&k.to_le_bytes()).end_item();
    }
    w.block(&b.finish()).expect("block");
    w.finish().expect("finish");
    std::fs::read(store.delta_path(3, "counts", 0)).expect("read")
}

fn snapshot_file(bytes: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    std::fs::write(&path, bytes).expect("write");
    if let Ok(mut r) = store::DataReader::open(&path) {
        while let Ok(Some(_)) = r.next_block() {}
    }
    let _ = store::DataReader::verify(&path);
    let _ = store::decode::<CommitRecord>(2, bytes);
}

proptest! {
    #[test]
    fn topology_text(d in damage()) {
        topology(&String::from_utf8_lossy(&apply(TOPOLOGY.as_bytes().to_vec(), &d)));
    }

    #[test]
    fn topology_noise(s in "[\\[\\]a-z=\"{}., \n0-9]{0,200}") {
        topology(&s);
    }

    #[test]
    fn wire_frames(d in damage(), noise in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut valid = Vec::new();
        for m in [ToSpout::Gate(7), ToSpout::Ungate, ToSpout::Drain] {
            valid.extend(wire::encode(&m, 1 << 16).expect("encode"));
        }
        frames(&apply(valid, &d));
        frames(&noise);
    }

    #[test]
    fn abi_batches(d in damage(), noise in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut b = BatchWriter::new();
        for k in 0..5u32 {
            b.bytes(&k.to_le_bytes()).bytes(b"value").end_item();
        }
        batches(&apply(b.finish(), &d));
        batches(&noise);
    }

    #[test]
    fn snapshot_files(d in damage()) {
        thread_local!(static VALID: Vec<u8> = data_file());
        snapshot_file(&VALID.with(|v| apply(v.clone(), &d)));
    }
}
