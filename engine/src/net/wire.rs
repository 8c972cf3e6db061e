//! The on-wire frame format between workers (distributed mode): versioned,
//! checksummed, length-prefixed, and decoded incrementally from a byte stream
//! without ever panicking on what the network sends.
//!
//! ```text
//! u32 length (LE)  — of everything after this field
//! u8  version      — WIRE_VERSION
//! ... payload      — a postcard-encoded `T`
//! u32 CRC-32 (LE)  — of version and payload
//! ```

use serde::{de::DeserializeOwned, Serialize};

/// Version of the frame layout and of the messages inside it (2: reports
/// of idle and busy spouts).
pub const WIRE_VERSION: u8 = 2;

/// Why bytes from a peer could not be read. Each one ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame version {0}; this build speaks version {WIRE_VERSION}")]
    Version(u8),
    #[error("frame checksum mismatch")]
    Checksum,
    #[error("frame shorter than its header")]
    Short,
    #[error("undecodable frame payload: {0}")]
    Payload(String),
    #[error("cannot encode a frame: {0}")]
    Encode(String),
}

/// Encodes one message as a frame.
pub fn encode<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, WireError> {
    let payload = postcard::to_allocvec(msg).map_err(|e| WireError::Encode(e.to_string()))?;
    let body_len = 1 + payload.len() + 4;
    if body_len > max {
        return Err(WireError::TooLarge { len: body_len, max });
    }
    let mut out = Vec::with_capacity(4 + body_len);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.push(WIRE_VERSION);
    out.extend_from_slice(&payload);
    let crc = crc32fast::hash(&out[4..]);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Reassembles frames from a byte stream that arrives in arbitrary pieces.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    max: usize,
}

impl Decoder {
    /// `max` bounds one frame, and so the memory a peer can make us hold.
    pub fn new(max: usize) -> Decoder {
        Decoder { buf: Vec::new(), max }
    }

    /// Changes the bound on one frame (a connection allows more once its
    /// peer said who it is).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Adds bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `None` if more bytes are needed.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, WireError> {
        let Some(head) = self.buf.get(..4) else { return Ok(None) };
        let mut len = [0u8; 4];
        len.copy_from_slice(head);
        let len = u32::from_le_bytes(len) as usize;
        if len > self.max {
            return Err(WireError::TooLarge { len, max: self.max });
        }
        if len < 5 {
            return Err(WireError::Short);
        }
        let Some(body) = self.buf.get(4..4 + len) else { return Ok(None) };
        let (content, crc) = body.split_at(len - 4);
        let mut c = [0u8; 4];
        c.copy_from_slice(crc);
        if crc32fast::hash(content) != u32::from_le_bytes(c) {
            return Err(WireError::Checksum);
        }
        let (version, payload) = content.split_first().ok_or(WireError::Short)?;
        if *version != WIRE_VERSION {
            return Err(WireError::Version(*version));
        }
        let msg = postcard::from_bytes(payload).map_err(|e| WireError::Payload(e.to_string()))?;
        self.buf.drain(..4 + len);
        Ok(Some(msg))
    }

    /// Bytes held that do not form a complete frame yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Hello { worker: String, epoch: u64 },
        Batch { channel: u32, tuples: Vec<u8>, lwm: Vec<u64> },
        Credit { channel: u32, grant: u32 },
    }

    fn msg() -> impl Strategy<Value = Msg> {
        prop_oneof![
            (".{0,20}", any::<u64>()).prop_map(|(worker, epoch)| Msg::Hello { worker, epoch }),
            (any::<u32>(), prop::collection::vec(any::<u8>(), 0..300), prop::collection::vec(any::<u64>(), 0..8))
                .prop_map(|(channel, tuples, lwm)| Msg::Batch { channel, tuples, lwm }),
            (any::<u32>(), any::<u32>()).prop_map(|(channel, grant)| Msg::Credit { channel, grant }),
        ]
    }

    proptest! {
        /// Any sequence of messages, cut into arbitrary pieces, decodes back in order.
        #[test]
        fn round_trip_through_any_fragmentation(msgs in prop::collection::vec(msg(), 0..20), cuts in prop::collection::vec(1usize..64, 1..50)) {
            let mut stream = Vec::new();
            for m in &msgs {
                stream.extend(encode(m, 1 << 20).unwrap());
            }
            let mut d = Decoder::new(1 << 20);
            let mut got = Vec::new();
            let mut pos = 0;
            let mut cut = cuts.iter().cycle();
            while pos < stream.len() {
                let n = (*cut.next().unwrap()).min(stream.len() - pos);
                d.push(&stream[pos..pos + n]);
                pos += n;
                while let Some(m) = d.next_frame::<Msg>().unwrap() {
                    got.push(m);
                }
            }
            prop_assert_eq!(got, msgs);
            prop_assert_eq!(d.buffered(), 0);
        }

        /// A flipped bit anywhere is an error (or, in the length field, a wait
        /// for more bytes), never a wrong message and never a panic.
        #[test]
        fn corruption_is_detected(m in msg(), pos in any::<usize>(), bit in 0u8..8) {
            let mut f = encode(&m, 1 << 20).unwrap();
            let i = pos % f.len();
            f[i] ^= 1 << bit;
            let mut d = Decoder::new(1 << 20);
            d.push(&f);
            match d.next_frame::<Msg>() {
                Ok(Some(x)) => prop_assert!(false, "corrupt frame decoded as {:?}", x),
                Ok(None) => prop_assert!(i < 4, "a body error went unnoticed"),
                Err(_) => {}
            }
        }

        /// Junk from the network never panics.
        #[test]
        fn junk_never_panics(junk in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut d = Decoder::new(1 << 16);
            d.push(&junk);
            let _ = d.next_frame::<Msg>();
        }
    }

    #[test]
    fn oversized_frames_are_refused_both_ways() {
        let m = Msg::Batch { channel: 1, tuples: vec![0; 1000], lwm: vec![] };
        assert!(matches!(encode(&m, 100), Err(WireError::TooLarge { .. })));
        let f = encode(&m, 1 << 20).unwrap();
        let mut d = Decoder::new(100);
        d.push(&f);
        assert!(matches!(d.next_frame::<Msg>(), Err(WireError::TooLarge { .. })));
    }
}
