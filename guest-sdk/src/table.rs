//! The map behind a slot: entries in fixed-size pages (an entry keeps its
//! index while the map grows, and growing never copies or over-reserves
//! entries), found through a hash table of indexes. Compared with a
//! general-purpose insertion-ordered map, which doubles one array, it holds
//! at most one partly filled page beyond the entries themselves; at
//! millions of keys that is most of a slot's memory.

use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

use crate::hash::FxBuildHasher;

/// Entries per page (a power of two).
const PAGE_BITS: u32 = 12;
const PAGE: usize = 1 << PAGE_BITS;

/// One entry: a key, its value, and the snapshot generation in which it last changed.
pub(crate) struct Entry<K, V> {
    pub(crate) key: K,
    pub(crate) value: V,
    pub(crate) changed_in: u32,
}

pub(crate) struct Table<K, V> {
    indexes: HashTable<u32>,
    pages: Vec<Vec<Entry<K, V>>>,
    len: usize,
    hasher: FxBuildHasher,
}

impl<K: Hash, V> Default for Table<K, V> {
    fn default() -> Self {
        Table { indexes: HashTable::new(), pages: Vec::new(), len: 0, hasher: FxBuildHasher::default() }
    }
}

/// The entry at index `i` of `pages`.
#[inline]
fn at<K, V>(pages: &[Vec<Entry<K, V>>], i: usize) -> Option<&Entry<K, V>> {
    pages.get(i >> PAGE_BITS)?.get(i & (PAGE - 1))
}

impl<K: Hash, V> Table<K, V> {
    pub(crate) fn hash<Q: Hash + ?Sized>(&self, q: &Q) -> u64 {
        self.hasher.hash_one(q)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The index of the entry whose key is `is`, its key hashing to `hash`.
    #[inline]
    pub(crate) fn find(&self, hash: u64, is: impl Fn(&K) -> bool) -> Option<usize> {
        let pages = &self.pages;
        let i = self.indexes.find(hash, |&i| at(pages, i as usize).is_some_and(|e| is(&e.key)))?;
        Some(*i as usize)
    }

    /// Adds an entry (its key must be absent) and returns its index.
    #[inline]
    pub(crate) fn push(&mut self, hash: u64, key: K, value: V, changed_in: u32) -> usize {
        let entry = Entry { key, value, changed_in };
        match self.pages.last_mut() {
            Some(page) if page.len() < PAGE => page.push(entry),
            _ => {
                // The first page starts small, so that a small state stays small.
                let mut page = Vec::with_capacity(if self.pages.is_empty() { 64 } else { PAGE });
                page.push(entry);
                self.pages.push(page);
            }
        }
        let i = self.len;
        self.len += 1;
        let (pages, hasher) = (&self.pages, &self.hasher);
        self.indexes.insert_unique(hash, i as u32, |&j| at(pages, j as usize).map_or(0, |e| hasher.hash_one(&e.key)));
        i
    }

    /// The index of the entry whose key is `is`, adding one made by `new`
    /// if there is none (then true).
    #[inline]
    pub(crate) fn find_or_push(
        &mut self,
        hash: u64,
        is: impl Fn(&K) -> bool,
        new: impl FnOnce() -> (K, V),
    ) -> (usize, bool) {
        if let Some(i) = self.find(hash, is) {
            return (i, false);
        }
        let (k, v) = new();
        (self.push(hash, k, v, 0), true)
    }

    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<&Entry<K, V>> {
        at(&self.pages, i)
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, i: usize) -> Option<&mut Entry<K, V>> {
        self.pages.get_mut(i >> PAGE_BITS)?.get_mut(i & (PAGE - 1))
    }

    /// Every entry, in index order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry<K, V>> {
        self.pages.iter().flatten()
    }

    /// Every entry, in index order.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Entry<K, V>> {
        self.pages.iter_mut().flatten()
    }

    /// Removes every entry, freeing the memory.
    pub(crate) fn clear(&mut self) {
        *self = Table::default();
    }

    /// Takes every entry out, leaving the table empty (and its memory
    /// free); each page is freed as soon as it has been consumed.
    pub(crate) fn take_all(&mut self) -> impl Iterator<Item = Entry<K, V>> {
        self.indexes = HashTable::new();
        self.len = 0;
        std::mem::take(&mut self.pages).into_iter().flatten()
    }
}
