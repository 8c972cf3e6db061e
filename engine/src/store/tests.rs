use super::*;
use hailstorm_abi::{read_pairs, BatchWriter};
use proptest::prelude::*;
use std::collections::BTreeMap;

pub(super) type State = BTreeMap<Vec<u8>, Vec<u8>>;

pub(super) fn header(kind: DataKind, round: u64, instance: u32, parent: Parent) -> DataHeader {
    DataHeader {
        kind,
        topology: "t".into(),
        processor: "counts".into(),
        instance,
        parallelism: 1,
        round,
        parent,
        clock: vec![("lines/0".into(), round * 10)],
        module_hash: "abc".into(),
    }
}

pub(super) fn entries(state: &State) -> Vec<u8> {
    let mut w = BatchWriter::new();
    for (k, v) in state {
        w.bytes(k).bytes(v).end_item();
    }
    w.finish()
}

/// Writes instance 0's delta of `round` (in blocks of `per_block` entries) and the round's commit record.
pub(super) fn write_round(
    store: &FileStore,
    round: u64,
    parent: Parent,
    delta: &State,
    per_block: usize,
) -> CommitRecord {
    let mut w = store.delta_writer(&header(DataKind::Delta, round, 0, parent)).unwrap();
    let all: Vec<(&Vec<u8>, &Vec<u8>)> = delta.iter().collect();
    for part in all.chunks(per_block.max(1)) {
        let s: State = part.iter().map(|(k, v)| ((*k).clone(), (*v).clone())).collect();
        w.block(&entries(&s)).unwrap();
    }
    let crc = w.finish().unwrap();
    let c = CommitRecord {
        topology: "t".into(),
        round,
        clock: vec![("lines/0".into(), round * 10)],
        files: vec![FileRef { processor: "counts".into(), instance: 0, crc }],
        modules: BTreeMap::new(),
        parallelism: [("counts".to_string(), 1)].into_iter().collect(),
        sources: BTreeMap::new(),
        created_unix_ms: 0,
    };
    store.write_commit(&c).unwrap();
    c
}

/// The state a chain gives, read through a merge in small chunks.
fn read_chain(files: &[PathBuf]) -> State {
    read_merge(Merge::open(files).unwrap())
}

/// The state a merge gives, read in small chunks.
pub(super) fn read_merge(mut m: Merge) -> State {
    let mut out = State::new();
    loop {
        let mut chunk = BatchWriter::new();
        let more = m.next_chunk(&mut chunk, 64, &|_| true).unwrap();
        for (k, v) in read_pairs(chunk.as_bytes()).unwrap() {
            assert!(out.keys().next_back().is_none_or(|last| last.as_slice() < k), "merge output not sorted");
            out.insert(k.to_vec(), v.to_vec());
        }
        if !more {
            return out;
        }
    }
}

pub(super) fn key(n: u8) -> Vec<u8> {
    vec![b'k', n]
}

proptest! {
    /// Any history of rounds, each changing some keys, with compactions and
    /// collections at random moments: the chain of every kept round gives
    /// exactly the state of a sequential fold of the rounds up to it, and
    /// the sink-side changes between two rounds are exactly what changed.
    #[test]
    fn chains_restore_the_sequential_fold(
        rounds in prop::collection::vec((prop::collection::vec((0u8..40, any::<u8>()), 0..12), any::<bool>(), any::<bool>()), 1..25),
        per_block in 1usize..5,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let mut folded = State::new();
        let mut history: Vec<(u64, State)> = Vec::new();
        let mut parent = Parent::None;
        for (i, (changes, compact, collect)) in rounds.iter().enumerate() {
            let round = i as u64 + 1;
            let delta: State = changes.iter().map(|(k, v)| (key(*k), vec![*v])).collect();
            folded.extend(delta.clone());
            let commit = write_round(&store, round, parent, &delta, per_block);
            parent = Parent::Delta(round);
            history.push((round, folded.clone()));
            if *compact {
                store.compact(&commit, "counts", 0).unwrap();
            }
            let keep: Vec<u64> = history.iter().rev().take(2).map(|(r, _)| *r).collect();
            if *collect {
                let below = *keep.iter().min().unwrap();
                store.collect(&keep, below).unwrap();
            }
            for (r, want) in history.iter().rev().take(2) {
                let c = store.read_commit(*r).unwrap().unwrap();
                let chain = store.chain(&c, "counts", 0).unwrap();
                prop_assert_eq!(&read_chain(&chain.files), want, "round {}", r);
            }
            if history.len() >= 2 {
                let (r0, _) = &history[history.len() - 2];
                let c = store.read_commit(round).unwrap().unwrap();
                let since = store.changes_since(&c, "counts", 0, *r0).unwrap();
                prop_assert_eq!(read_chain(&since.files), delta);
            }
        }
        let recovered = store.latest_complete().unwrap().unwrap();
        prop_assert_eq!(recovered.commit.round, rounds.len() as u64);
    }

    /// Any flipped byte or truncation of a data file is detected when it is read.
    #[test]
    fn damaged_data_files_are_detected(n in 1u8..30, pos in any::<usize>(), flip in 1u8..=255, cut in any::<usize>()) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let state: State = (0..n).map(|i| (key(i), vec![i; 3])).collect();
        write_round(&store, 1, Parent::None, &state, 4);
        let path = store.delta_path(1, "counts", 0);
        let good = std::fs::read(&path).unwrap();
        let mut bad = good.clone();
        let i = pos % bad.len();
        bad[i] ^= flip;
        std::fs::write(&path, &bad).unwrap();
        prop_assert!(DataReader::verify(&path).is_err());
        std::fs::write(&path, &good[..cut % good.len()]).unwrap();
        prop_assert!(DataReader::verify(&path).is_err());
    }

    /// Whatever junk is in a file, reading it is an error, never a panic.
    #[test]
    fn junk_never_panics(junk in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode::<CommitRecord>(KIND_COMMIT, &junk);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk.delta");
        std::fs::write(&p, &junk).unwrap();
        prop_assert!(DataReader::verify(&p).is_err());
    }
}

#[test]
fn a_damaged_round_falls_back_to_the_previous_complete_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    assert!(store.latest_complete().unwrap().is_none());
    let s1: State = [(key(1), vec![1])].into_iter().collect();
    let s2: State = [(key(2), vec![2])].into_iter().collect();
    write_round(&store, 1, Parent::None, &s1, 1);
    write_round(&store, 2, Parent::Delta(1), &s2, 1);
    // An incomplete round 3 (no COMMIT) is ignored.
    let w = store.delta_writer(&header(DataKind::Delta, 3, 0, Parent::Delta(2))).unwrap();
    w.finish().unwrap();
    assert_eq!(store.latest_complete().unwrap().unwrap().commit.round, 2);
    // Round 2's own delta damaged: round 1 is used, with a warning.
    let p = store.delta_path(2, "counts", 0);
    let mut b = fs::read(&p).unwrap();
    let n = b.len();
    b[n / 2] ^= 0x55;
    fs::write(&p, b).unwrap();
    let r = store.latest_complete().unwrap().unwrap();
    assert_eq!(r.commit.round, 1);
    assert!(r.warnings[0].contains("round 2"), "{:?}", r.warnings);
    // Damage round 1 too: nothing intact is left, and that is an error, not an empty start.
    fs::write(store.delta_path(1, "counts", 0), b"junk").unwrap();
    assert!(store.latest_complete().is_err());
}

#[test]
fn a_sink_reads_only_the_files_the_commit_records_vouch_for() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let s1: State = [(key(1), vec![1])].into_iter().collect();
    let s2: State = [(key(2), vec![2])].into_iter().collect();
    write_round(&store, 1, Parent::None, &s1, 1);
    let c2 = write_round(&store, 2, Parent::Delta(1), &s2, 1);
    let since = store.changes_since(&c2, "counts", 0, 1).unwrap();
    assert_eq!(since.expect, vec![c2.crc_of("counts", 0)]);
    // Another instance's valid delta copied over this one's: not this instance's changes.
    let mut w = store.delta_writer(&header(DataKind::Delta, 2, 1, Parent::Delta(1))).unwrap();
    w.block(&entries(&s2)).unwrap();
    w.finish().unwrap();
    fs::copy(store.delta_path(2, "counts", 1), store.delta_path(2, "counts", 0)).unwrap();
    assert!(store.changes_since(&c2, "counts", 0, 1).is_none());
    // The right instance and round, but other content: the checksum says so once read.
    let mut w = store.delta_writer(&header(DataKind::Delta, 2, 0, Parent::Delta(1))).unwrap();
    w.block(&entries(&s1)).unwrap();
    w.finish().unwrap();
    let chain = store.changes_since(&c2, "counts", 0, 1).unwrap();
    let mut m = Merge::open(&chain.files).unwrap();
    while m.next_chunk(&mut BatchWriter::new(), 64, &|_| true).unwrap() {}
    assert_ne!(m.checksums(), chain.expect);
}

#[test]
fn a_damaged_compaction_base_is_passed_over_for_the_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let mut parent = Parent::None;
    let mut last = None;
    for r in 1..=3u64 {
        let s: State = [(key(r as u8), vec![r as u8])].into_iter().collect();
        last = Some(write_round(&store, r, parent, &s, 1));
        parent = Parent::Delta(r);
    }
    let c = last.unwrap();
    assert!(store.compact(&c, "counts", 0).unwrap());
    assert_eq!(store.chain(&c, "counts", 0).unwrap().files, vec![store.base_path(3, "counts", 0, 1)]);
    fs::write(store.base_path(3, "counts", 0, 1), b"junk").unwrap();
    let chain = store.chain(&c, "counts", 0).unwrap();
    assert_eq!(chain.deltas, 3);
    assert_eq!(read_chain(&chain.files).len(), 3);
}

#[test]
fn small_files_refuse_an_old_store() {
    let mut bytes = encode(KIND_COMMIT, &1u32);
    bytes[9..11].copy_from_slice(&1u16.to_le_bytes());
    let e = decode::<u32>(KIND_COMMIT, &bytes).unwrap_err();
    assert!(e.contains("older Hailstorm") && e.contains("new snapshot.store"), "{e}");
}

#[test]
fn a_store_belongs_to_one_topology_and_one_run_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    store.claim("a").unwrap();
    store.claim("a").unwrap();
    let e = store.claim("b").unwrap_err().to_string();
    assert!(e.contains("belongs to topology `a`, not `b`"), "{e}");
    // A store from before owner records: its snapshots say whose it is.
    let old = tempfile::tempdir().unwrap();
    let store = FileStore::open(old.path()).unwrap();
    write_round(&store, 1, Parent::None, &[(key(1), vec![1])].into_iter().collect(), 1);
    assert!(store.claim("other").is_err());
    store.claim("t").unwrap();
    assert_eq!(fs::read_to_string(old.path().join("OWNER")).unwrap(), "t\n");
    // One run at a time.
    let held = store.lock().unwrap();
    let e = FileStore::open(old.path()).unwrap().lock().unwrap_err().to_string();
    assert!(e.contains("another run is using this store"), "{e}");
    drop(held);
    store.lock().unwrap();
}

#[test]
fn sink_rounds_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    assert_eq!(store.read_sink_round("table").unwrap(), None);
    store.write_sink_round("table", 7).unwrap();
    assert_eq!(store.read_sink_round("table").unwrap(), Some(7));
    fs::write(dir.path().join("sinks/table"), b"junk").unwrap();
    assert!(store.read_sink_round("table").is_err());
}

#[test]
fn collection_leaves_a_compaction_still_writing_and_removes_a_crash_leftover() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let mut parent = Parent::None;
    for r in 1..=4u64 {
        let s: State = [(key(r as u8), vec![r as u8])].into_iter().collect();
        write_round(&store, r, parent, &s, 1);
        parent = Parent::Delta(r);
    }
    // A compaction of round 2 still writing, and one a crash left long ago.
    let writing = store.base_dir(2).join("counts-0-of-1.base.tmp-1-0");
    let left = store.base_dir(2).join("counts-0-of-1.base.tmp-2-0");
    fs::create_dir_all(store.base_dir(2)).unwrap();
    fs::write(&writing, b"half").unwrap();
    fs::write(&left, b"half").unwrap();
    let old = std::time::SystemTime::now() - 2 * WRITING_GRACE;
    fs::File::options().write(true).open(&left).unwrap().set_modified(old).unwrap();
    store.collect(&[4], 4).unwrap();
    assert!(writing.exists(), "collection removed a compaction still writing");
    assert!(!left.exists(), "collection kept a crash's leftover");
}
