//! The word splitter of the word-count examples.
//!
//! A word is a maximal run of ASCII letters and digits, lowercased; every
//! other byte (spaces, punctuation, UTF-8 continuation bytes, …) separates
//! words. `split-words` (the deserializer), `faulty` (the test
//! deserializer), the C version in `c-split-words` and the engine's native
//! benchmark all split text exactly this way.
//!
//! It lives in a plain library rather than in `split-words` itself because
//! a module crate's exports are `#[no_mangle]` symbols: two module crates
//! linked into one WebAssembly module would define them twice.
//!
//! ```
//! let mut seen = Vec::new();
//! words::for_each_word(b"Hello, World-42!", |w| seen.push(w.to_vec()));
//! assert_eq!(seen, [b"hello".to_vec(), b"world".to_vec(), b"42".to_vec()]);
//! ```
#![forbid(unsafe_code)]

/// Byte classes: separator, lowercase letter or digit, uppercase letter.
const SEP: u8 = 0;
const UPPER: u8 = 2;

/// The class of every byte, so the inner loop is one load per byte.
static CLASS: [u8; 256] = {
    let mut t = [SEP; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = if b.is_ascii_uppercase() {
            UPPER
        } else if b.is_ascii_lowercase() || b.is_ascii_digit() {
            1
        } else {
            SEP
        };
        i += 1;
    }
    t
};

/// Words up to this length are lowercased in a stack buffer.
const SHORT: usize = 64;

/// Calls `f` with every word of `line`, in order, lowercased.
///
/// Words that are already lowercase are passed as slices of `line`; others
/// are lowercased into a stack buffer (or, past 64 bytes, into one heap
/// buffer reused for the whole line), so the split allocates nothing per
/// word. The slice is only valid during the call to `f`.
#[inline]
pub fn for_each_word(line: &[u8], mut f: impl FnMut(&[u8])) {
    let mut short = [0u8; SHORT];
    let mut long: Vec<u8> = Vec::new();
    let mut rest = line;
    loop {
        // Skip separators; stop at the end of the line.
        let Some(start) = rest.iter().position(|&b| CLASS[usize::from(b)] != SEP) else {
            return;
        };
        let (_, tail) = rest.split_at(start);
        let mut upper = false;
        let len = tail
            .iter()
            .position(|&b| {
                let c = CLASS[usize::from(b)];
                upper |= c == UPPER;
                c == SEP
            })
            .unwrap_or(tail.len());
        let (word, after) = tail.split_at(len);
        rest = after;
        if !upper {
            f(word);
        } else if let Some(buf) = short.get_mut(..word.len()) {
            lowercase_into(buf, word);
            f(buf);
        } else {
            long.clear();
            long.extend(word.iter().map(u8::to_ascii_lowercase));
            f(&long);
        }
    }
}

fn lowercase_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_ascii_lowercase();
    }
}

/// Collects the words of `line` (convenient in tests, allocates per word).
pub fn words(line: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for_each_word(line, |w| out.push(w.to_vec()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, written the obvious way.
    fn reference(line: &[u8]) -> Vec<Vec<u8>> {
        line.split(|b| !b.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).map(|w| w.to_ascii_lowercase()).collect()
    }

    #[test]
    fn examples() {
        assert_eq!(words(b""), Vec::<Vec<u8>>::new());
        assert_eq!(words(b"  ,,, "), Vec::<Vec<u8>>::new());
        assert_eq!(words(b"a"), [b"a".to_vec()]);
        assert_eq!(words(b"Don't STOP"), [b"don".to_vec(), b"t".to_vec(), b"stop".to_vec()]);
        assert_eq!(words("naïve café".as_bytes()), [b"na".to_vec(), b"ve".to_vec(), b"caf".to_vec()]);
        assert_eq!(words(b"x\ty\0z_1"), [b"x".to_vec(), b"y".to_vec(), b"z".to_vec(), b"1".to_vec()]);
    }

    #[test]
    fn long_words() {
        let long = "Ab".repeat(100);
        let line = format!("{long} {long}x {}", "q".repeat(70));
        assert_eq!(words(line.as_bytes()), reference(line.as_bytes()));
    }

    #[test]
    fn matches_the_reference_on_pseudo_random_bytes() {
        // A xorshift generator biased towards letters, so words are common.
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let len = (s % 200) as usize;
            let line: Vec<u8> = (0..len)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    match s % 4 {
                        0 => b'A' + (s >> 8) as u8 % 26,
                        1 => b'a' + (s >> 8) as u8 % 26,
                        2 => b'0' + (s >> 8) as u8 % 10,
                        _ => (s >> 16) as u8,
                    }
                })
                .collect();
            assert_eq!(words(&line), reference(&line), "{line:?}");
        }
    }
}
