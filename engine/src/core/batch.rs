//! Batches as the host moves them. A [`RecordBatch`] is what a spout read:
//! framed records with their offsets. A [`TupleBatch`] is what a bolt
//! instance gets: one framed (key, value) buffer in the ABI's tuple-batch
//! layout, ready to copy into a guest, plus the origin of every tuple.

use crate::core::clock::{Clock, Origin};
use hailstorm_abi::{BatchReader, FrameError};

/// Tuples bound for one bolt instance, framed as an ABI tuple batch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Parts")]
pub struct TupleBatch {
    /// `u32 count` (filled in by [`TupleBatch::frame`]) then (key, value) items.
    /// Encoded as bytes, not as a sequence of `u8` (the same bytes in
    /// postcard, copied whole instead of one by one).
    #[serde(with = "serde_bytes")]
    buf: Vec<u8>,
    origins: Vec<Origin>,
}

/// A batch as it arrives from the network, checked before it becomes a [`TupleBatch`].
#[derive(serde::Deserialize)]
struct Parts {
    #[serde(with = "serde_bytes")]
    buf: Vec<u8>,
    origins: Vec<Origin>,
}

impl TryFrom<Parts> for TupleBatch {
    type Error = String;
    fn try_from(p: Parts) -> Result<TupleBatch, String> {
        // The sender's count field may not be filled in yet: it is the number of origins.
        let mut buf = p.buf;
        let n = u32::try_from(p.origins.len()).map_err(|_| "tuple batch too large".to_string())?;
        match buf.get_mut(..4) {
            Some(head) => head.copy_from_slice(&n.to_le_bytes()),
            None => return Err("malformed tuple batch: no count".into()),
        }
        TupleBatch::from_parts(buf, p.origins).map_err(|e| format!("malformed tuple batch: {e}"))
    }
}

impl Default for TupleBatch {
    fn default() -> Self {
        TupleBatch::new()
    }
}

impl TupleBatch {
    pub fn new() -> TupleBatch {
        TupleBatch { buf: vec![0; 4], origins: Vec::new() }
    }

    #[inline]
    pub fn push(&mut self, key: &[u8], value: &[u8], origin: Origin) {
        self.buf.reserve(8 + key.len() + value.len());
        push_bytes(&mut self.buf, key);
        push_bytes(&mut self.buf, value);
        self.origins.push(origin);
    }

    /// One (key, value) framed as an item of a batch, for [`TupleBatch::push_framed`].
    pub fn framed_item(key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut item = Vec::with_capacity(8 + key.len() + value.len());
        push_bytes(&mut item, key);
        push_bytes(&mut item, value);
        item
    }

    /// Appends one item already framed as (key, value), as read from a
    /// checked batch (the router copies emitted tuples this way, whole).
    #[inline]
    pub fn push_framed(&mut self, item: &[u8], origin: Origin) {
        self.buf.extend_from_slice(item);
        self.origins.push(origin);
    }

    pub fn len(&self) -> usize {
        self.origins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }

    /// Bytes of the framed buffer.
    pub fn byte_len(&self) -> usize {
        self.buf.len()
    }

    pub fn origins(&self) -> &[Origin] {
        &self.origins
    }

    /// The framed tuple batch, count included.
    pub fn frame(&mut self) -> &[u8] {
        let n = u32::try_from(self.origins.len()).unwrap_or(u32::MAX).to_le_bytes();
        if let Some(head) = self.buf.get_mut(..4) {
            head.copy_from_slice(&n);
        }
        &self.buf
    }

    /// Rebuilds a batch from its parts (e.g. received from the network), checking
    /// that the frame holds exactly one (key, value) per origin.
    pub fn from_parts(buf: Vec<u8>, origins: Vec<Origin>) -> Result<TupleBatch, FrameError> {
        let mut r = BatchReader::new(&buf)?;
        if r.count() as usize != origins.len() {
            return Err(FrameError::Trailing { at: 0 });
        }
        for _ in 0..r.count() {
            r.bytes()?;
            r.bytes()?;
        }
        r.expect_end()?;
        Ok(TupleBatch { buf, origins })
    }

    /// Splits by a snapshot clock: tuples the clock includes (origin below it)
    /// and the rest, each in arrival order.
    pub fn split(mut self, clock: &Clock) -> (TupleBatch, TupleBatch) {
        let below = self.origins.iter().filter(|o| clock.includes(**o)).count();
        if below == self.len() {
            return (self, TupleBatch::new());
        }
        if below == 0 {
            return (TupleBatch::new(), self);
        }
        let (mut a, mut b) = (TupleBatch::new(), TupleBatch::new());
        let buf = std::mem::take(&mut self.buf);
        // The buffer was built by `push`, so it is well formed; a malformed one
        // (impossible here) would stop the split early rather than panic.
        let Ok(mut r) = BatchReader::new(&buf) else { return (a, b) };
        for o in &self.origins {
            let start = r.position();
            if r.bytes().and_then(|_| r.bytes()).is_err() {
                break;
            }
            let item = r.slice(start, r.position());
            if clock.includes(*o) {
                a.push_framed(item, *o);
            } else {
                b.push_framed(item, *o);
            }
        }
        (a, b)
    }

    /// Iterates (key, value, origin).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8], Origin)> + '_ {
        let mut r = BatchReader::new(&self.buf).ok();
        self.origins.iter().map_while(move |o| {
            let r = r.as_mut()?;
            let k = r.bytes().ok()?;
            let v = r.bytes().ok()?;
            Some((k, v, *o))
        })
    }

    pub fn into_parts(mut self) -> (Vec<u8>, Vec<Origin>) {
        self.frame();
        (self.buf, self.origins)
    }
}

/// One batch of input records, as a spout reads them: the ABI record batch
/// and the offset of each record in its partition.
#[derive(Debug, Default)]
pub struct RecordBatch {
    pub framed: Vec<u8>,
    pub offsets: Vec<u64>,
    /// The offset just past the last record.
    pub end: u64,
}

impl RecordBatch {
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// The records of the batch (for re-running them one by one).
    pub fn records(&self) -> Vec<&[u8]> {
        hailstorm_abi::read_records(&self.framed).unwrap_or_default()
    }
}

fn push_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
    buf.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes as bytes leave the wire format as it was (a length, then the
    /// bytes), so workers of either kind read each other's batches.
    #[test]
    fn the_wire_encoding_of_a_batch_did_not_change() {
        #[derive(serde::Serialize)]
        struct AsSequence {
            buf: Vec<u8>,
            origins: Vec<Origin>,
        }
        let mut b = TupleBatch::new();
        b.push(b"key", &[0, 1, 200, 255], Origin { partition: 3, offset: 300 });
        b.push(b"", b"v", Origin { partition: 0, offset: 1 << 40 });
        let old = AsSequence { buf: b.buf.clone(), origins: b.origins.clone() };
        let bytes = postcard::to_allocvec(&b).expect("encode");
        assert_eq!(bytes, postcard::to_allocvec(&old).expect("encode"));
        let mut back: TupleBatch = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back.frame(), b.frame());
        assert_eq!(back.origins(), b.origins());
    }

    /// A batch crosses the network before its count field is filled in, and
    /// whatever arrives is checked: junk is an error, never a malformed batch.
    #[test]
    fn batches_survive_the_wire_and_junk_is_refused() {
        let mut b = TupleBatch::new();
        for i in 0..5u64 {
            b.push(format!("k{i}").as_bytes(), b"v", Origin { partition: 0, offset: i });
        }
        let bytes = postcard::to_allocvec(&b).unwrap();
        let mut back: TupleBatch = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.frame(), b.clone().frame());
        assert_eq!(back.origins(), b.origins());
        for cut in 0..bytes.len() {
            let _ = postcard::from_bytes::<TupleBatch>(&bytes[..cut]);
        }
        // One origin too many for the tuples in the buffer.
        let mut parts = b.clone();
        parts.origins.push(Origin { partition: 0, offset: 9 });
        let bytes = postcard::to_allocvec(&parts).unwrap();
        assert!(postcard::from_bytes::<TupleBatch>(&bytes).is_err());
    }

    #[test]
    fn split_keeps_order_and_origins() {
        let mut b = TupleBatch::new();
        for i in 0..10u64 {
            b.push(format!("k{i}").as_bytes(), b"", Origin { partition: (i % 2) as u32, offset: i });
        }
        let (a, rest) = b.clone().split(&Clock(vec![5, 8]));
        let a_off: Vec<u64> = a.origins().iter().map(|o| o.offset).collect();
        let b_off: Vec<u64> = rest.origins().iter().map(|o| o.offset).collect();
        assert_eq!(a_off, vec![0, 1, 2, 3, 4, 5, 7]);
        assert_eq!(b_off, vec![6, 8, 9]);
        let keys: Vec<Vec<u8>> = rest.iter().map(|(k, _, _)| k.to_vec()).collect();
        assert_eq!(keys, vec![b"k6".to_vec(), b"k8".to_vec(), b"k9".to_vec()]);
        let mut a = a;
        let (buf, origins) = (a.frame().to_vec(), a.origins().to_vec());
        assert_eq!(TupleBatch::from_parts(buf, origins).unwrap().len(), 7);
    }
}
