//! [`Bytes`]: a byte-string key that keeps short keys inline.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use crate::Codec;

/// The longest key kept inline.
pub const INLINE: usize = 11;

/// A byte string stored inline when it is short (up to [`INLINE`] bytes)
/// and on the heap otherwise: on wasm32 it takes 16 bytes and no
/// allocation for a short key, where a `Vec<u8>` takes 12 bytes plus a heap
/// block. Use it as a bolt's key type for large states of short keys.
///
/// It hashes, compares and encodes exactly like the `[u8]` it holds, so it
/// can be looked up by `&[u8]` and is interchangeable with `Vec<u8>` in
/// snapshots.
#[derive(Clone)]
pub struct Bytes(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, data: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, data } => data.get(..usize::from(*len)).unwrap_or(&[]),
            Repr::Heap(b) => b,
        }
    }

    /// Whether it holds exactly `other` (cheaper than comparing slices for
    /// an inline key: one fixed-size comparison).
    #[inline]
    pub fn is(&self, other: &[u8]) -> bool {
        match &self.0 {
            Repr::Inline { len, data } => {
                if other.len() != usize::from(*len) {
                    return false;
                }
                let mut probe = [0u8; INLINE];
                if let Some(p) = probe.get_mut(..other.len()) {
                    p.copy_from_slice(other);
                }
                probe == *data
            }
            Repr::Heap(b) => **b == *other,
        }
    }
}

impl From<&[u8]> for Bytes {
    #[inline]
    fn from(b: &[u8]) -> Bytes {
        if b.len() <= INLINE {
            let mut data = [0u8; INLINE];
            if let Some(d) = data.get_mut(..b.len()) {
                d.copy_from_slice(b);
            }
            Bytes(Repr::Inline { len: b.len() as u8, data })
        } else {
            Bytes(Repr::Heap(b.into()))
        }
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Bytes {
        if v.len() <= INLINE {
            Bytes::from(v.as_slice())
        } else {
            Bytes(Repr::Heap(v.into_boxed_slice()))
        }
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Borrow<[u8]> for Bytes {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for Bytes {
    #[inline]
    fn eq(&self, other: &Bytes) -> bool {
        match (&self.0, &other.0) {
            // Unused inline bytes are zero, so whole arrays compare.
            (Repr::Inline { len: a, data: x }, Repr::Inline { len: b, data: y }) => a == b && x == y,
            _ => self.as_slice() == other.as_slice(),
        }
    }
}

impl Eq for Bytes {}

impl Hash for Bytes {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state)
    }
}

impl PartialOrd for Bytes {
    fn partial_cmp(&self, other: &Bytes) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bytes {
    fn cmp(&self, other: &Bytes) -> Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_slice()))
    }
}

impl Codec for Bytes {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_slice());
    }
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        Ok(Bytes::from(bytes))
    }
    fn cmp_encoded(&self, other: &Self) -> Ordering {
        self.cmp(other)
    }
    fn encoded_prefix(&self) -> u64 {
        crate::codec::prefix(self.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::DefaultHasher;

    fn hash_of<T: Hash + ?Sized>(t: &T) -> u64 {
        let mut h = DefaultHasher::new();
        t.hash(&mut h);
        h.finish()
    }

    #[test]
    fn bytes_behave_like_the_slice_they_hold() {
        for k in [&b""[..], b"a", b"exactly11by", b"twelve bytes", b"a much longer key than that"] {
            let b = Bytes::from(k);
            assert_eq!(b.as_slice(), k);
            assert!(b.is(k));
            assert!(!b.is(b"other"));
            assert_eq!(hash_of(&b), hash_of(k));
            assert_eq!(b, Bytes::from(k.to_vec()));
            let mut enc = Vec::new();
            b.encode(&mut enc);
            assert_eq!(Bytes::decode(&enc).unwrap(), b);
        }
        assert!(Bytes::from(&b"ab"[..]) < Bytes::from(&b"abc"[..]));
        assert!(Bytes::from(&b"b"[..]) > Bytes::from(&b"a long key over eleven bytes"[..]));
        assert!(!Bytes::from(&b"ab"[..]).is(b"ab\0"));
    }
}
