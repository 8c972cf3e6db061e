//! How a bolt's keys and values become the bytes of an entries batch.

/// A type that can be stored in a bolt's state and written to snapshots.
///
/// `decode` reads bytes that came from outside the module (a snapshot of a
/// previous version, another instance's entries), so it must return an
/// error on malformed input rather than panic.
pub trait Codec: Sized {
    /// Appends the encoding of `self` to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Decodes one value from exactly `bytes`.
    fn decode(bytes: &[u8]) -> Result<Self, String>;

    /// Compares the encodings of `self` and `other` byte by byte (snapshots
    /// are sorted by encoded key). The default encodes both; byte-string and
    /// integer keys compare without allocating.
    fn cmp_encoded(&self, other: &Self) -> std::cmp::Ordering {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        self.encode(&mut a);
        other.encode(&mut b);
        a.cmp(&b)
    }

    /// The first 8 bytes of the encoding, big-endian, zero-padded: ordering
    /// by it never contradicts [`Codec::cmp_encoded`], so a sort can compare
    /// integers first and whole encodings only where these are equal.
    fn encoded_prefix(&self) -> u64 {
        let mut a = Vec::new();
        self.encode(&mut a);
        prefix(&a)
    }
}

/// The first 8 bytes of `bytes`, big-endian, zero-padded.
pub fn prefix(bytes: &[u8]) -> u64 {
    let mut p = [0u8; 8];
    let n = bytes.len().min(8);
    p[..n].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(p)
}

impl Codec for Vec<u8> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        Ok(bytes.to_vec())
    }
    fn cmp_encoded(&self, other: &Self) -> std::cmp::Ordering {
        self.as_slice().cmp(other.as_slice())
    }
    fn encoded_prefix(&self) -> u64 {
        prefix(self)
    }
}

impl Codec for Box<[u8]> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        Ok(bytes.into())
    }
    fn cmp_encoded(&self, other: &Self) -> std::cmp::Ordering {
        self[..].cmp(&other[..])
    }
    fn encoded_prefix(&self) -> u64 {
        prefix(self)
    }
}

impl Codec for String {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|e| format!("not UTF-8: {e}"))
    }
    fn cmp_encoded(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
    fn encoded_prefix(&self) -> u64 {
        prefix(self.as_bytes())
    }
}

/// Fixed-width little-endian integers: decoding demands exactly the width.
macro_rules! int_codec {
    ($($t:ty),*) => {$(
        impl Codec for $t {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn cmp_encoded(&self, other: &Self) -> std::cmp::Ordering {
                self.to_le_bytes().cmp(&other.to_le_bytes())
            }
            fn encoded_prefix(&self) -> u64 {
                prefix(&self.to_le_bytes())
            }
            fn decode(bytes: &[u8]) -> Result<Self, String> {
                <[u8; core::mem::size_of::<$t>()]>::try_from(bytes)
                    .map(<$t>::from_le_bytes)
                    .map_err(|_| format!(
                        "expected {} bytes for a {}, got {}",
                        core::mem::size_of::<$t>(),
                        stringify!($t),
                        bytes.len()
                    ))
            }
        }
    )*};
}

int_codec!(u64, i64, u32, i32);

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Codec + PartialEq + std::fmt::Debug>(v: T) {
        let mut buf = Vec::new();
        v.encode(&mut buf);
        assert_eq!(T::decode(&buf).unwrap(), v);
    }

    #[test]
    fn round_trips() {
        round_trip(b"abc".to_vec());
        round_trip(String::from("héllo"));
        round_trip(u64::MAX);
        round_trip(-5i64);
        round_trip(7u32);
        round_trip(-7i32);
        let mut buf = Vec::new();
        258u64.encode(&mut buf);
        assert_eq!(buf, [2, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn encoded_order_is_byte_order() {
        let mut pairs: Vec<(u64, u64)> = vec![(1, 256), (255, 2), (0, u64::MAX), (7, 7)];
        for (a, b) in pairs.drain(..) {
            let (mut ea, mut eb) = (Vec::new(), Vec::new());
            a.encode(&mut ea);
            b.encode(&mut eb);
            assert_eq!(a.cmp_encoded(&b), ea.cmp(&eb), "{a} vs {b}");
        }
        assert_eq!(b"ab".to_vec().cmp_encoded(&b"b".to_vec()), std::cmp::Ordering::Less);
        // Prefixes never contradict the order of the whole encodings.
        let keys: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"abcdefgh".to_vec(),
            b"abcdefghz".to_vec(),
            vec![0xff; 3],
        ];
        for a in &keys {
            for b in &keys {
                if a.encoded_prefix() < b.encoded_prefix() {
                    assert_eq!(a.cmp_encoded(b), std::cmp::Ordering::Less, "{a:?} {b:?}");
                }
            }
        }
        assert_eq!(String::from("é").cmp_encoded(&String::from("z")), std::cmp::Ordering::Greater);
    }

    #[test]
    fn bad_bytes_are_errors() {
        assert!(u64::decode(&[1, 2, 3]).is_err());
        assert!(u64::decode(&[0; 9]).is_err());
        assert!(i64::decode(&[]).is_err());
        assert!(String::decode(&[0xff, 0xfe]).is_err());
    }
}
