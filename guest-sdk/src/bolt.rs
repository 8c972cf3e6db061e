//! Bolts: a commutative-monoid fold over tuples into keyed state (ABI.md §6).

use std::borrow::Borrow;
use std::collections::hash_map::Entry;
use std::fmt;
use std::hash::Hash;

use hailstorm_abi::{BatchReader, BatchWriter, BOLT_SLOTS};

use crate::hash::FxHashMap;
use crate::{Codec, Emitter, Init};

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

    /// Adds derived entries to a snapshot of `slot` (for example a total).
    ///
    /// Derived entries are computed from the others, so they must not be
    /// restored as state: make [`Bolt::skip_on_restore`] return true for
    /// their keys, and choose keys that no real entry can have. The default
    /// adds nothing.
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

/// One slot of a bolt's state.
pub struct Slot<B: Bolt> {
    map: FxHashMap<B::Key, B::Value>,
}

impl<B: Bolt> Default for Slot<B> {
    fn default() -> Self {
        Slot { map: FxHashMap::default() }
    }
}

impl<B: Bolt> fmt::Debug for Slot<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot").field("len", &self.map.len()).finish()
    }
}

impl<B: Bolt> Slot<B> {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// `state[key] := state[key] ⊕ value` (just `value` if `key` is absent).
    #[inline]
    pub fn add(&mut self, key: B::Key, value: B::Value) {
        match self.map.entry(key) {
            Entry::Occupied(mut e) => B::combine(e.get_mut(), value),
            Entry::Vacant(e) => {
                e.insert(value);
            }
        }
    }

    /// Like [`Slot::add`], but takes a borrowed key and only builds an owned
    /// one when the key is new (for example `&[u8]` for a `Vec<u8>` key).
    #[inline]
    pub fn add_ref<Q>(&mut self, key: &Q, value: B::Value)
    where
        B::Key: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = B::Key> + ?Sized,
    {
        match self.map.get_mut(key) {
            Some(acc) => B::combine(acc, value),
            None => {
                self.map.insert(key.to_owned(), value);
            }
        }
    }

    /// The value of `key`, if present.
    pub fn get<Q>(&self, key: &Q) -> Option<&B::Value>
    where
        B::Key: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every (key, value), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&B::Key, &B::Value)> {
        self.map.iter()
    }

    /// The underlying map.
    pub fn map(&self) -> &FxHashMap<B::Key, B::Value> {
        &self.map
    }

    /// The underlying map, for folds that manage it directly. Whatever is
    /// done to it must keep the monoid laws.
    pub fn map_mut(&mut self) -> &mut FxHashMap<B::Key, B::Value> {
        &mut self.map
    }

    /// `self := self ⊕ other`, then `other := empty`.
    pub fn merge_from(&mut self, other: &mut Slot<B>) {
        // ⊕ is commutative, so the smaller map can always be folded into
        // the larger one, whichever side of the merge it is on.
        if other.map.len() > self.map.len() {
            std::mem::swap(&mut self.map, &mut other.map);
        }
        for (k, v) in other.map.drain() {
            self.add(k, v);
        }
    }

    /// `self := empty`, keeping the allocation for reuse.
    pub fn clear(&mut self) {
        self.map.clear();
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

/// Where one snapshot entry lies in the runtime's scratch buffer:
/// key at `start..mid`, value at `mid..end`.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    mid: usize,
    end: usize,
}

fn span_key(scratch: &[u8], s: Span) -> &[u8] {
    scratch.get(s.start..s.mid).unwrap_or(&[])
}

fn span_value(scratch: &[u8], s: Span) -> &[u8] {
    scratch.get(s.mid..s.end).unwrap_or(&[])
}

const SLOTS: usize = BOLT_SLOTS as usize;

fn slot_index(slot: i32) -> Result<usize, String> {
    usize::try_from(slot)
        .ok()
        .filter(|&s| s < SLOTS)
        .ok_or_else(|| format!("slot {slot} does not exist (slots are 0..{SLOTS})"))
}

/// The byte-level logic behind a bolt's exports, usable on the host to test
/// a bolt exactly as the engine drives it.
pub struct BoltRuntime<B: Bolt> {
    user: Option<B>,
    slots: [Slot<B>; SLOTS],
    out: Emitter,
    snapshot: BatchWriter,
    scratch: Vec<u8>,
    spans: Vec<Span>,
    derived: Derived,
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
            snapshot: BatchWriter::new(),
            scratch: Vec::new(),
            spans: Vec::new(),
            derived: Derived::default(),
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

    /// `hailstorm_snapshot`: the entries of `slot`, sorted by key bytes (so
    /// equal states give equal bytes), plus the bolt's derived entries.
    pub fn snapshot(&mut self, slot: i32) -> Result<&[u8], String> {
        let user = self.user.as_ref().ok_or(crate::NOT_INITIALIZED)?;
        let state = self.slots.get(slot_index(slot)?).ok_or("no such slot")?;
        let (scratch, spans) = (&mut self.scratch, &mut self.spans);
        scratch.clear();
        spans.clear();
        spans.reserve(state.len());
        for (k, v) in state.iter() {
            let start = scratch.len();
            k.encode(scratch);
            let mid = scratch.len();
            v.encode(scratch);
            spans.push(Span { start, mid, end: scratch.len() });
        }
        self.derived.entries.clear();
        user.on_snapshot(state, &mut self.derived);
        for (k, v) in &self.derived.entries {
            let start = scratch.len();
            scratch.extend_from_slice(k);
            let mid = scratch.len();
            scratch.extend_from_slice(v);
            spans.push(Span { start, mid, end: scratch.len() });
        }
        spans.sort_unstable_by(|a, b| span_key(scratch, *a).cmp(span_key(scratch, *b)));

        self.snapshot.clear();
        for s in spans.iter() {
            self.snapshot.bytes(span_key(scratch, *s)).bytes(span_value(scratch, *s)).end_item();
        }
        // The scratch copy is only needed while sorting; a large one is
        // released so that an idle instance does not hold two copies of its
        // state between snapshots.
        if scratch.capacity() > 1 << 20 {
            *scratch = Vec::new();
            *spans = Vec::new();
        }
        Ok(self.snapshot.as_bytes())
    }

    /// `hailstorm_restore`: combines every entry of an entries batch into
    /// `slot`. Entries are decoded before any is added, so bad input leaves
    /// the slot untouched.
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
        state.map.reserve(decoded.len());
        for (k, v) in decoded {
            state.add(k, v);
        }
        Ok(())
    }

    /// `hailstorm_clear`: `slot := empty`.
    pub fn clear(&mut self, slot: i32) -> Result<(), String> {
        if self.user.is_none() {
            return Err(crate::NOT_INITIALIZED.to_owned());
        }
        let state = self.slots.get_mut(slot_index(slot)?).ok_or("no such slot")?;
        state.clear();
        Ok(())
    }
}
