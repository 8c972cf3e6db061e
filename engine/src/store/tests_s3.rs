//! The store's guarantees on an object store, against the S3 server that
//! `scripts/services.sh` starts (`HAILSTORM_TEST_S3` and the `AWS_*`
//! variables of `scripts/services.sh env`).

use super::tests::{entries, header, key, read_merge, write_round, State};
use super::*;
use crate::topology::Store;
use std::collections::BTreeSet;
use std::time::Duration;

/// A fresh prefix of the test bucket, as a store (no grace: collection
/// deletes what no kept round needs at once).
fn s3_store(name: &str) -> FileStore {
    assert!(
        std::env::var("HAILSTORM_TEST_S3").is_ok(),
        "HAILSTORM_TEST_S3 is not set: run `scripts/services.sh start` and `eval \"$(scripts/services.sh env)\"`"
    );
    let bucket = std::env::var("HAILSTORM_TEST_S3_BUCKET").unwrap_or_else(|_| "hailstorm".into());
    let url = format!("s3://{bucket}/unit/{name}-{}-{}", std::process::id(), now_ms());
    FileStore::open_store(&Store::S3 { url, grace: Duration::ZERO }).unwrap()
}

fn remote(store: &FileStore) -> &Remote {
    store.remote().unwrap()
}

/// Every object of the store, as paths relative to its root.
fn objects(store: &FileStore) -> BTreeSet<String> {
    let root = store.root().to_path_buf();
    remote(store)
        .list(&root)
        .unwrap()
        .into_iter()
        .map(|(p, _)| p.strip_prefix(&root).unwrap().display().to_string())
        .collect()
}

fn overwrite(store: &FileStore, path: &Path, bytes: &[u8]) {
    remote(store).write(path, bytes, false).unwrap();
}

#[test]
fn s3_chains_compaction_and_collection_leave_exactly_the_needed_objects() {
    let store = s3_store("chains");
    let mut folded = State::new();
    let mut parent = Parent::None;
    let mut last = None;
    for r in 1..=12u64 {
        let delta: State = (0..5u8).map(|i| (key((r as u8 * 3 + i) % 20), vec![r as u8])).collect();
        folded.extend(delta.clone());
        let c = write_round(&store, r, parent, &delta, 2);
        parent = Parent::Delta(r);
        if r % 4 == 0 {
            assert!(store.compact(&c, "counts", 0).unwrap(), "round {r} was not compacted");
        }
        last = Some(c);
    }
    let c = last.unwrap();
    let chain = store.chain(&c, "counts", 0).unwrap();
    assert_eq!(read_merge(store.merge(&chain.files).unwrap()), folded);
    store.collect(&[12], 12).unwrap();
    // The kept round keeps its own delta (a sink's changes), its chain is the new base.
    let want: BTreeSet<String> =
        ["HEAD", "rounds/00000000000000000012/COMMIT", "rounds/00000000000000000012/counts-0.delta"]
            .into_iter()
            .map(String::from)
            .chain(chain.files.iter().map(|f| f.strip_prefix(store.root()).unwrap().display().to_string()))
            .collect();
    assert_eq!(objects(&store), want, "after collection: the kept round's objects and chain, nothing else");
    let recovered = store.latest_complete().unwrap().unwrap();
    assert_eq!(recovered.commit.round, 12);
    assert_eq!(read_merge(store.merge(&recovered.chains[&("counts".into(), 0)].files).unwrap()), folded);
}

#[test]
fn s3_a_damaged_object_is_skipped_with_a_warning() {
    let store = s3_store("damaged");
    write_round(&store, 1, Parent::None, &[(key(1), vec![1])].into_iter().collect(), 1);
    write_round(&store, 2, Parent::Delta(1), &[(key(2), vec![2])].into_iter().collect(), 1);
    let p = store.delta_path(2, "counts", 0);
    let mut b = remote(&store).get(&p).unwrap().unwrap();
    let n = b.len();
    b[n / 2] ^= 0x55;
    overwrite(&store, &p, &b);
    let r = store.latest_complete().unwrap().unwrap();
    assert_eq!(r.commit.round, 1);
    assert!(r.warnings[0].contains("round 2"), "{:?}", r.warnings);
    // A damaged compaction base is passed over for the deltas under it.
    let store = s3_store("damaged-base");
    let mut parent = Parent::None;
    let mut last = None;
    for r in 1..=3u64 {
        last = Some(write_round(&store, r, parent, &[(key(r as u8), vec![r as u8])].into_iter().collect(), 1));
        parent = Parent::Delta(r);
    }
    let c = last.unwrap();
    assert!(store.compact(&c, "counts", 0).unwrap());
    overwrite(&store, &store.base_path(3, "counts", 0, 1), b"junk");
    let chain = store.chain(&c, "counts", 0).unwrap();
    assert_eq!(chain.deltas, 3);
    assert_eq!(read_merge(store.merge(&chain.files).unwrap()).len(), 3);
}

#[test]
fn s3_a_crash_mid_write_leaves_no_object_and_loses_nothing() {
    let store = s3_store("crash");
    let s1: State = (0..10u8).map(|i| (key(i), vec![i])).collect();
    let c = write_round(&store, 1, Parent::None, &s1, 3);
    write_round(&store, 2, Parent::Delta(1), &[(key(1), vec![9])].into_iter().collect(), 1);
    // A compaction (and a delta) that die before their end publish nothing.
    let mut w = store.base_writer(&header(DataKind::Base, 2, 0, Parent::None)).unwrap();
    w.block(&entries(&s1)).unwrap();
    drop(w);
    let w = store.delta_writer(&header(DataKind::Delta, 3, 0, Parent::Delta(2))).unwrap();
    drop(w);
    let all = objects(&store);
    assert!(!all.iter().any(|o| o.starts_with("bases/") || o.contains("00000000000000000003")), "{all:?}");
    let r = store.latest_complete().unwrap().unwrap();
    assert_eq!(r.commit.round, 2);
    let mut want = s1.clone();
    want.insert(key(1), vec![9]);
    assert_eq!(read_merge(store.merge(&r.chains[&("counts".into(), 0)].files).unwrap()), want);
    // The newest round is found without the HEAD record (a crash right after a commit).
    remote(&store).delete(&store.root().join("HEAD")).unwrap();
    assert_eq!(store.rounds().unwrap(), vec![1, 2]);
    assert_eq!(c.round, 1);
}

#[test]
fn s3_a_large_file_goes_up_in_parts_and_reads_back() {
    let store = s3_store("large");
    // About 48 MiB of entries: over the single-request limit.
    let mut w = store.delta_writer(&header(DataKind::Delta, 1, 0, Parent::None)).unwrap();
    let value = vec![7u8; 4096];
    let mut n = 0u32;
    while w.bytes() < 48 << 20 {
        let block: State = (0..256u32).map(|i| ((n * 256 + i).to_be_bytes().to_vec(), value.clone())).collect();
        w.block(&entries(&block)).unwrap();
        n += 1;
    }
    let crc = w.finish().unwrap();
    let (head, got, count) = store.reader(&store.delta_path(1, "counts", 0)).unwrap().verify_all().unwrap();
    assert_eq!((head.round, got, count), (1, crc, u64::from(n) * 256));
}

#[test]
fn s3_commits_are_create_only_and_a_landed_retry_is_accepted() {
    let store = s3_store("create-only");
    let c = write_round(&store, 1, Parent::None, &[(key(1), vec![1])].into_iter().collect(), 1);
    // The same record again (a retry whose first attempt landed): accepted.
    store.write_commit(&c).unwrap();
    // Another record for the same round: refused, the first stays.
    let other = CommitRecord { created_unix_ms: 42, ..c.clone() };
    let e = store.write_commit(&other).unwrap_err().to_string();
    assert!(e.contains("exists already, with other content"), "{e}");
    assert_eq!(store.read_commit(1).unwrap().unwrap(), c);
    // The owner record too.
    store.claim("t").unwrap();
    let e = store.claim("u").unwrap_err().to_string();
    assert!(e.contains("belongs to topology `t`, not `u`"), "{e}");
}

#[test]
fn s3_a_run_that_lost_its_lease_cannot_publish() {
    let store = s3_store("lease");
    let r = store.remote().unwrap().clone();
    let first = Lease::take_for(r.clone(), Duration::from_secs(2)).unwrap();
    assert_eq!(first.run, 1);
    assert!(first.held());
    // Another run takes the store over (as after the first one's lease ran out
    // while it was paused): it overwrites the lease with its own.
    let path = store.root().join("LEASE");
    let (bytes, _) = r.get_meta(&path).unwrap().unwrap();
    overwrite(&store, &path, &bytes[..bytes.len() - 1]);
    // The first run's next renewal finds the lease changed.
    let t0 = std::time::Instant::now();
    while first.held() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!first.held(), "the lease was not noticed lost");
    let c = CommitRecord {
        topology: "t".into(),
        round: 5,
        clock: Vec::new(),
        files: Vec::new(),
        modules: BTreeMap::new(),
        parallelism: BTreeMap::new(),
        sources: BTreeMap::new(),
        created_unix_ms: 0,
    };
    let e = store.write_commit(&c).unwrap_err().to_string();
    assert!(e.contains("lost the store's lease"), "{e}");
    assert!(store.read_commit(5).unwrap().is_none());
}

#[test]
fn s3_runs_number_their_rounds_apart() {
    let store = s3_store("runs");
    let r = store.remote().unwrap().clone();
    let a = Lease::take_for(r.clone(), Duration::from_secs(2)).unwrap();
    assert_eq!(a.run, 1);
    drop(a);
    let b = Lease::take_for(r, Duration::from_secs(2)).unwrap();
    assert_eq!(b.run, 2);
    assert_eq!(StoreLock::Lease(b).first_round(), crate::core::negotiator::first_round_of_epoch(2));
}

#[test]
fn s3_a_second_run_is_refused_while_the_first_renews_its_lease() {
    let store = s3_store("busy");
    let r = store.remote().unwrap().clone();
    let _first = Lease::take_for(r.clone(), Duration::from_millis(1600)).unwrap();
    // Same host, but this process lives: the second waits, sees a renewal, gives up.
    let e = Lease::take_for(r, Duration::from_millis(1600)).unwrap_err().to_string();
    assert!(e.contains("another run is using this store"), "{e}");
}
