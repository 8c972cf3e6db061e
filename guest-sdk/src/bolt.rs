//! Bolts: a commutative-monoid fold over tuples into keyed state (ABI.md §6).
//!
//! A slot remembers which entries changed since its previous snapshot, so a
//! snapshot hands out only those (O(change), not O(state)), sorted by key and
//! in chunks of bounded size.

use std::borrow::Borrow;
use std::fmt;
use std::hash::Hash;

use crate::table::Table;
use hailstorm_abi::{BatchReader, BatchWriter, BOLT_SLOTS};

use crate::{Bytes, Codec, Emitter, Init};

/// A bolt: state is a map from [`Bolt::Key`] to [`Bolt::Value`], where values
/// form a commutative monoid under [`Bolt::combine`] (a missing key is the
/// identity). Export one with [`bolt!`](crate::bolt).
///
/// The host keeps up to four independent states per instance (*slots*),
/// folds into any of them and merges them, so the laws of ABI.md §6 must
/// hold: `combine` associative and commutative, and `fold` expressible as
/// adding values with [`Slot::add`]. [`check_bolt_laws`](crate::testing::check_bolt_laws)
/// tests them.
pub trait Bolt: Sized {
    /// The key of a state entry.
    type Key: Codec + Eq + Hash;
    /// The value of a state entry.
    type Value: Codec;

    /// Builds the bolt from its init document.
    fn init(init: &Init) -> Result<Self, String>;

    /// Folds one tuple into `state`, usually with [`Slot::add`]. Tuples may
    /// also be emitted downstream with `out`. An error fails the call; the
    /// slot is then in an unspecified state, which the host discards.
    fn fold(&mut self, key: &[u8], value: &[u8], state: &mut Slot<Self>, out: &mut Emitter) -> Result<(), String>;

    /// `acc := acc ⊕ v`. Must be associative and commutative.
    fn combine(acc: &mut Self::Value, v: Self::Value);

    /// Adds derived entries to every snapshot of `slot` (for example a total).
    ///
    /// It runs once per snapshot, so it should be cheap. Derived entries are
    /// computed from the others, so they must not be restored as state: make
    /// [`Bolt::skip_on_restore`] return true for their keys, and choose keys
    /// that no real entry can have. The default adds nothing.
    fn on_snapshot(&self, slot: &Slot<Self>, derived: &mut Derived) {
        let _ = (slot, derived);
    }

    /// Whether `hailstorm_restore` should ignore the entry with this
    /// (encoded) key, typically a derived entry added by
    /// [`Bolt::on_snapshot`]. The default keeps every entry.
    fn skip_on_restore(&self, key: &[u8]) -> bool {
        let _ = key;
        false
    }
}

/// One slot of a bolt's state: a map whose entries sit in one dense array
/// (so an entry keeps its index while the map grows), plus the indexes of
/// the entries changed since the previous snapshot.
pub struct Slot<B: Bolt> {
    table: Table<B::Key, B::Value>,
    /// Indexes of the entries changed in the current generation, while they
    /// are few; once they are over an eighth of the slot, the list is
    /// dropped and `all_changed` set: the entries' generations say it all
    /// (and a snapshot reads the table in order, which beats visiting that
    /// many entries at random).
    changed: Vec<u32>,
    /// How many entries changed in the current generation.
    changed_count: usize,
    all_changed: bool,
    /// The current generation (entries restored, or unchanged since, hold an older one).
    generation: u32,
}

impl<B: Bolt> Default for Slot<B> {
    fn default() -> Self {
        Slot { table: Table::default(), changed: Vec::new(), changed_count: 0, all_changed: false, generation: 1 }
    }
}

impl<B: Bolt> fmt::Debug for Slot<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot").field("len", &self.table.len()).field("changed", &self.changed_count).finish()
    }
}

impl<B: Bolt> Slot<B> {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks entry `i` changed in this generation.
    #[inline]
    fn touch(&mut self, i: usize) {
        let Some(e) = self.table.get_mut(i) else { return };
        if e.changed_in == self.generation {
            return;
        }
        e.changed_in = self.generation;
        self.changed_count += 1;
        if self.all_changed {
            return;
        }
        if self.changed_count > 1024 && self.changed_count > self.table.len() / 8 {
            self.changed = Vec::new();
            self.all_changed = true;
        } else {
            self.changed.push(i as u32);
        }
    }

    /// Combines `value` into the entry whose key is `is` (hashing to
    /// `hash`), inserting `new()` if there is none, and marks it changed.
    #[inline]
    fn combine_into(&mut self, hash: u64, is: impl Fn(&B::Key) -> bool, value: B::Value, new: impl FnOnce() -> B::Key) {
        let mut value = Some(value);
        let (i, added) = self.table.find_or_push(hash, is, || (new(), value.take().expect("value is there")));
        if !added {
            if let (Some(e), Some(v)) = (self.table.get_mut(i), value) {
                B::combine(&mut e.value, v);
            }
        }
        self.touch(i);
    }

    /// `state[key] := state[key] ⊕ value` (just `value` if `key` is absent).
    #[inline]
    pub fn add(&mut self, key: B::Key, value: B::Value) {
        let hash = self.table.hash(&key);
        match self.table.find(hash, |k| *k == key) {
            Some(i) => {
                if let Some(e) = self.table.get_mut(i) {
                    B::combine(&mut e.value, value);
                }
                self.touch(i);
            }
            None => {
                let i = self.table.push(hash, key, value, 0);
                self.touch(i);
            }
        }
    }

    /// Like [`Slot::add`], but takes a borrowed key and only builds an owned
    /// one when the key is new (for example `&[u8]` for a `Vec<u8>` key).
    #[inline]
    pub fn add_ref<Q>(&mut self, key: &Q, value: B::Value)
    where
        B::Key: Borrow<Q> + for<'q> From<&'q Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.table.hash(key);
        self.combine_into(hash, |k| k.borrow() == key, value, || B::Key::from(key));
    }

    /// The value of `key`, if present.
    pub fn get<Q>(&self, key: &Q) -> Option<&B::Value>
    where
        B::Key: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let i = self.table.find(self.table.hash(key), |k| k.borrow() == key)?;
        self.table.get(i).map(|e| &e.value)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    /// Number of keys changed since the previous snapshot.
    pub fn changed_len(&self) -> usize {
        self.changed_count
    }

    /// Every (key, value), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&B::Key, &B::Value)> {
        self.table.iter().map(|e| (&e.key, &e.value))
    }

    /// `self := self ⊕ other`, then `other := empty` (its memory freed).
    /// Work is proportional to `other`; every key it holds counts as
    /// changed in `self`.
    pub fn merge_from(&mut self, other: &mut Slot<B>) {
        for e in other.table.take_all() {
            self.add(e.key, e.value);
        }
        other.clear();
    }

    /// `self := empty`, its memory freed.
    pub fn clear(&mut self) {
        self.table.clear();
        self.changed = Vec::new();
        self.changed_count = 0;
        self.all_changed = false;
    }

    /// Sets `key` to `value` (replacing any value) without marking it changed.
    fn set(&mut self, key: B::Key, value: B::Value) {
        let hash = self.table.hash(&key);
        match self.table.find(hash, |k| *k == key) {
            Some(i) => {
                if let Some(e) = self.table.get_mut(i) {
                    e.value = value;
                }
            }
            None => {
                self.table.push(hash, key, value, 0);
            }
        }
    }

    /// Takes the changed entries, encoded and sorted by encoded key, and
    /// starts a new generation. Each entry is read from the table once (in
    /// the table's order when many changed), so the sort and the chunks
    /// that follow touch only the compact copy.
    fn take_changed(&mut self) -> Result<Changed, String> {
        let changed = std::mem::take(&mut self.changed);
        let (count, all) = (self.changed_count, self.all_changed);
        (self.changed_count, self.all_changed) = (0, false);
        let (table, generation) = (&self.table, self.generation);
        let mut out = Changed::with_capacity(count);
        if all {
            for e in table.iter().filter(|e| e.changed_in == generation) {
                out.push(&e.key, &e.value)?;
            }
        } else {
            for e in changed.iter().filter_map(|&i| table.get(i as usize)) {
                out.push(&e.key, &e.value)?;
            }
        }
        drop(changed);
        out.sort();
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // After 2^32 snapshots: nothing may look changed in the new generation.
            for e in self.table.iter_mut() {
                e.changed_in = 0;
            }
            self.generation = 1;
        }
        Ok(out)
    }
}

/// The changed entries of a snapshot, encoded one after another (the key's
/// and the value's lengths as LEB128 varints, then the key and the value)
/// in pages of about 1 MiB (so the copy never moves as it grows), with
/// their order by encoded key.
#[derive(Debug, Default)]
struct Changed {
    /// (the key's first 8 bytes big-endian, where the entry starts: page << 20 | offset).
    order: Vec<(u64, u32)>,
    pages: Vec<Vec<u8>>,
    /// One entry being encoded.
    scratch: Vec<u8>,
}

const PAGE_BITS: u32 = 20;
const PAGE: usize = 1 << PAGE_BITS;
/// The longest LEB128 varint of a `usize` on wasm32 (and of any length under 2^35).
const MAX_VARINT: usize = 5;

impl Changed {
    fn with_capacity(entries: usize) -> Changed {
        Changed { order: Vec::with_capacity(entries), pages: Vec::new(), scratch: Vec::new() }
    }

    fn push<K: Codec, V: Codec>(&mut self, key: &K, value: &V) -> Result<(), String> {
        self.scratch.clear();
        key.encode(&mut self.scratch);
        let key_len = self.scratch.len();
        value.encode(&mut self.scratch);
        // An entry starts below 1 MiB into its page and never makes the page
        // outgrow its allocation: a new page when it would not fit.
        let need = self.scratch.len() + 2 * MAX_VARINT;
        if self.pages.last().is_none_or(|p| p.len() >= PAGE || p.len() + need > p.capacity()) {
            self.pages.push(Vec::with_capacity(PAGE.max(need)));
        }
        let page = u32::try_from(self.pages.len() - 1).ok().filter(|&p| p < 1 << (32 - PAGE_BITS));
        let (Some(page), Some(blob)) = (page, self.pages.last_mut()) else {
            return Err("a snapshot larger than 4 GiB".to_string());
        };
        let at = page << PAGE_BITS | blob.len() as u32;
        put_varint(blob, key_len);
        put_varint(blob, self.scratch.len() - key_len);
        blob.extend_from_slice(&self.scratch);
        let prefix = crate::codec::prefix(self.scratch.get(..key_len).unwrap_or_default());
        self.order.push((prefix, at));
        Ok(())
    }

    /// Sorts by the keys' 8-byte prefixes (integers, cheap), then by whole
    /// keys within runs of equal prefixes.
    fn sort(&mut self) {
        self.order.sort_unstable_by_key(|&(p, _)| p);
        let pages = &self.pages;
        let key = |at: u32| entry_at(pages, at).map_or(&[][..], |(k, _)| k);
        for run in self.order.chunk_by_mut(|a, b| a.0 == b.0) {
            if run.len() > 1 {
                run.sort_unstable_by(|a, b| key(a.1).cmp(key(b.1)));
            }
        }
    }

    /// The `n`th entry in key order: (key, value); `None` past the last.
    fn entry(&self, n: usize) -> Result<Option<Pair<'_>>, String> {
        let Some(&(_, at)) = self.order.get(n) else { return Ok(None) };
        let e = entry_at(&self.pages, at).ok_or_else(|| format!("internal: snapshot entry {n} is unreadable"))?;
        Ok(Some(e))
    }
}

/// An encoded entry: (key, value).
type Pair<'a> = (&'a [u8], &'a [u8]);

/// The entry that starts at `at` (page << 20 | offset).
fn entry_at(pages: &[Vec<u8>], at: u32) -> Option<Pair<'_>> {
    let blob = pages.get((at >> PAGE_BITS) as usize)?;
    let mut at = (at as usize) & (PAGE - 1);
    let k = get_varint(blob, &mut at)?;
    let v = get_varint(blob, &mut at)?;
    let key = blob.get(at..at.checked_add(k)?)?;
    let value = blob.get(at + k..at.checked_add(k)?.checked_add(v)?)?;
    Some((key, value))
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// The varint at `*at` in `blob`, moving `*at` past it.
fn get_varint(blob: &[u8], at: &mut usize) -> Option<usize> {
    let mut n = 0usize;
    for shift in (0..35).step_by(7) {
        let b = *blob.get(*at)?;
        *at += 1;
        n |= usize::from(b & 0x7f).checked_shl(shift)?;
        if b < 0x80 {
            return Some(n);
        }
    }
    None
}

impl<B: Bolt<Key = Bytes>> Slot<B> {
    /// [`Slot::add_ref`] for [`Bytes`] keys, comparing short keys as one
    /// fixed-size block.
    #[inline]
    pub fn add_bytes(&mut self, key: &[u8], value: B::Value) {
        let hash = self.table.hash(key);
        self.combine_into(hash, |k| k.is(key), value, || Bytes::from(key));
    }
}

/// Extra entries that [`Bolt::on_snapshot`] adds to a snapshot.
#[derive(Debug, Default)]
pub struct Derived {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Derived {
    /// Adds one encoded entry to the snapshot.
    pub fn push(&mut self, key: &[u8], value: &[u8]) {
        self.entries.push((key.to_vec(), value.to_vec()));
    }

    /// Adds one entry, encoded with the codecs of its types.
    pub fn push_typed<K: Codec, V: Codec>(&mut self, key: &K, value: &V) {
        let (mut k, mut v) = (Vec::new(), Vec::new());
        key.encode(&mut k);
        value.encode(&mut v);
        self.entries.push((k, v));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

const SLOTS: usize = BOLT_SLOTS as usize;

fn slot_index(slot: i32) -> Result<usize, String> {
    usize::try_from(slot)
        .ok()
        .filter(|&s| s < SLOTS)
        .ok_or_else(|| format!("slot {slot} does not exist (slots are 0..{SLOTS})"))
}

/// Where the next entry of a snapshot comes from.
enum Source {
    Changed,
    Derived,
}

/// The next entry of a pending snapshot: changed entries and derived ones
/// are merged in key order.
fn next_entry(p: &Pending) -> Result<Option<(Source, Pair<'_>)>, String> {
    let derived = p.derived.get(p.next_derived).map(|(k, v)| (k.as_slice(), v.as_slice()));
    Ok(match (p.changed.entry(p.next)?, derived) {
        (Some((k, v)), d) if d.is_none_or(|(dk, _)| k <= dk) => Some((Source::Changed, (k, v))),
        (_, Some(kv)) => Some((Source::Derived, kv)),
        (_, None) => None,
    })
}

/// A snapshot being handed out in chunks.
struct Pending {
    slot: usize,
    /// The changed entries, sorted by encoded key.
    changed: Changed,
    next: usize,
    /// Derived entries, sorted by key.
    derived: Vec<(Vec<u8>, Vec<u8>)>,
    next_derived: usize,
}

/// The byte-level logic behind a bolt's exports, usable on the host to test
/// a bolt exactly as the engine drives it.
pub struct BoltRuntime<B: Bolt> {
    user: Option<B>,
    slots: [Slot<B>; SLOTS],
    out: Emitter,
    chunk: BatchWriter,
    pending: Option<Pending>,
}

impl<B: Bolt> fmt::Debug for BoltRuntime<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoltRuntime").field("initialized", &self.user.is_some()).field("slots", &self.slots).finish()
    }
}

impl<B: Bolt> Default for BoltRuntime<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Bolt> BoltRuntime<B> {
    /// A runtime whose `init` has not been called yet.
    pub fn new() -> Self {
        BoltRuntime {
            user: None,
            slots: std::array::from_fn(|_| Slot::new()),
            out: Emitter::new(),
            chunk: BatchWriter::new(),
            pending: None,
        }
    }

    /// `hailstorm_init`.
    pub fn init(&mut self, doc: &[u8]) -> Result<(), String> {
        if self.user.is_some() {
            return Err(crate::ALREADY_INITIALIZED.to_owned());
        }
        let init = Init::parse(doc)?;
        self.user = Some(B::init(&init)?);
        Ok(())
    }

    /// The bolt, once initialized.
    pub fn get(&self) -> Option<&B> {
        self.user.as_ref()
    }

    /// A slot's state, for inspection in tests.
    pub fn slot(&self, slot: i32) -> Option<&Slot<B>> {
        slot_index(slot).ok().and_then(|s| self.slots.get(s))
    }

    /// Every entry of a slot, encoded and sorted by key (derived entries
    /// left out): the whole state, for tests.
    pub fn entries(&self, slot: i32) -> Result<Vec<crate::testing::Entry>, String> {
        let state = self.slots.get(slot_index(slot)?).ok_or("no such slot")?;
        let mut all: Vec<(Vec<u8>, Vec<u8>)> = state
            .iter()
            .map(|(k, v)| {
                let (mut kb, mut vb) = (Vec::new(), Vec::new());
                k.encode(&mut kb);
                v.encode(&mut vb);
                (kb, vb)
            })
            .collect();
        all.sort();
        Ok(all)
    }

    /// `hailstorm_fold`: folds a tuple batch into `slot`, returns the
    /// emitted batch (reused by the next call).
    pub fn fold(&mut self, slot: i32, batch: &[u8]) -> Result<&[u8], String> {
        let user = self.user.as_mut().ok_or(crate::NOT_INITIALIZED)?;
        let state = self.slots.get_mut(slot_index(slot)?).ok_or("no such slot")?;
        // Check the framing of the whole batch before folding anything, so
        // a malformed batch leaves the slot untouched.
        let frame_err = |e| format!("tuple batch: {e}");
        let mut reader = BatchReader::new(batch).map_err(frame_err)?;
        for _ in 0..reader.count() {
            reader.bytes().map_err(frame_err)?;
            reader.bytes().map_err(frame_err)?;
        }
        reader.expect_end().map_err(frame_err)?;

        let mut reader = BatchReader::new(batch).map_err(frame_err)?;
        self.out.begin();
        for index in 0..reader.count() {
            let key = reader.bytes().map_err(frame_err)?;
            let value = reader.bytes().map_err(frame_err)?;
            self.out.set_input(index);
            user.fold(key, value, state, &mut self.out).map_err(|e| format!("tuple {index} of the batch: {e}"))?;
        }
        Ok(self.out.as_batch())
    }

    /// `hailstorm_merge`: `dst := dst ⊕ src`, then `src := empty`.
    pub fn merge(&mut self, dst: i32, src: i32) -> Result<(), String> {
        if self.user.is_none() {
            return Err(crate::NOT_INITIALIZED.to_owned());
        }
        let (d, s) = (slot_index(dst)?, slot_index(src)?);
        if d == s {
            return Err(format!("cannot merge slot {dst} into itself"));
        }
        let [d, s] = self.slots.get_disjoint_mut([d, s]).map_err(|e| format!("merge: {e}"))?;
        d.merge_from(s);
        Ok(())
    }

    /// `hailstorm_snapshot`: the next chunk (at most `max_bytes`, or one
    /// entry if it is larger) of the entries of `slot` that changed since its
    /// previous snapshot, with their current values and the bolt's derived
    /// entries, sorted by key. An empty chunk ends the snapshot; the next
    /// call starts a new one.
    pub fn snapshot(&mut self, slot: i32, max_bytes: i32) -> Result<&[u8], String> {
        let user = self.user.as_ref().ok_or(crate::NOT_INITIALIZED)?;
        let index = slot_index(slot)?;
        if self.pending.as_ref().is_none_or(|p| p.slot != index) {
            let state = self.slots.get_mut(index).ok_or("no such slot")?;
            let mut derived = Derived::default();
            user.on_snapshot(state, &mut derived);
            derived.entries.sort();
            let changed = state.take_changed()?;
            self.pending = Some(Pending { slot: index, changed, next: 0, derived: derived.entries, next_derived: 0 });
        }
        let max = usize::try_from(max_bytes).unwrap_or(0).max(1);
        let Some(p) = self.pending.as_mut() else {
            return Err("no snapshot in progress".into());
        };
        self.chunk.clear();
        while let Some((from, (k, v))) = next_entry(p)? {
            if !self.chunk.is_empty() && self.chunk.len() + k.len() + v.len() + 8 > max {
                break; // the next call starts with it
            }
            self.chunk.bytes(k).bytes(v).end_item();
            match from {
                Source::Changed => p.next += 1,
                Source::Derived => p.next_derived += 1,
            }
        }
        if self.chunk.is_empty() {
            self.pending = None;
        }
        Ok(self.chunk.as_bytes())
    }

    /// `hailstorm_restore`: sets every entry of an entries batch in `slot`
    /// (replacing the value a key has), without marking it changed. Entries
    /// are decoded before any is set, so bad input leaves the slot untouched.
    pub fn restore(&mut self, slot: i32, batch: &[u8]) -> Result<(), String> {
        let user = self.user.as_ref().ok_or(crate::NOT_INITIALIZED)?;
        let state = self.slots.get_mut(slot_index(slot)?).ok_or("no such slot")?;
        let frame_err = |e| format!("entries batch: {e}");
        let mut reader = BatchReader::new(batch).map_err(frame_err)?;
        // Every entry takes at least 8 bytes, which bounds a hostile count.
        let mut decoded = Vec::with_capacity((reader.count() as usize).min(batch.len() / 8));
        for index in 0..reader.count() {
            let key = reader.bytes().map_err(frame_err)?;
            let value = reader.bytes().map_err(frame_err)?;
            if user.skip_on_restore(key) {
                continue;
            }
            let k = B::Key::decode(key).map_err(|e| format!("entry {index}: bad key: {e}"))?;
            let v = B::Value::decode(value).map_err(|e| format!("entry {index}: bad value: {e}"))?;
            decoded.push((k, v));
        }
        reader.expect_end().map_err(frame_err)?;
        for (k, v) in decoded {
            state.set(k, v);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_their_boundaries() {
        for n in
            [0usize, 1, 127, 128, 16_383, 16_384, (1 << 21) - 1, 1 << 21, (1 << 28) - 1, 1 << 28, u32::MAX as usize]
        {
            let mut buf = vec![0xaa];
            put_varint(&mut buf, n);
            assert!(buf.len() <= 1 + MAX_VARINT);
            let mut at = 1;
            assert_eq!(get_varint(&buf, &mut at), Some(n), "{n}");
            assert_eq!(at, buf.len());
        }
        // Cut short, or never ending: no value.
        assert_eq!(get_varint(&[0x80], &mut 0), None);
        assert_eq!(get_varint(&[0xff; 9], &mut 0), None);
    }

    #[test]
    fn an_entry_larger_than_a_page_gets_a_page_of_its_own_and_pages_never_grow() {
        let mut c = Changed::with_capacity(0);
        let big = vec![7u8; 3 * PAGE];
        c.push(&b"m".to_vec(), &b"small".to_vec()).unwrap();
        c.push(&b"b".to_vec(), &big).unwrap();
        for i in 0..40_000u32 {
            c.push(&format!("k{i:06}").into_bytes(), &i.to_le_bytes().to_vec()).unwrap();
        }
        c.push(&b"a".to_vec(), &big).unwrap();
        c.sort();
        let e = |n| c.entry(n).unwrap().unwrap();
        assert_eq!(e(0), (&b"a"[..], &big[..]));
        assert_eq!(e(1), (&b"b"[..], &big[..]));
        assert_eq!(e(2), (&b"k000000"[..], &0u32.to_le_bytes()[..]));
        assert_eq!(e(40_001), (&b"k039999"[..], &39_999u32.to_le_bytes()[..]));
        assert_eq!(e(40_002), (&b"m"[..], &b"small"[..]));
        assert!(c.entry(40_003).unwrap().is_none());
        // Every page holds what it was made for: none outgrew its allocation.
        assert!(c.pages.iter().all(|p| p.capacity() <= PAGE.max(p.len() + 2 * MAX_VARINT)));
        assert!(c.pages.len() >= 3);
    }
}
