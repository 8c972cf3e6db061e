//! The streaming merge of data files: every key once, with its value from
//! the newest file that has it, in key order, handed out in chunks of
//! bounded size. Memory holds one block per file.

use std::path::PathBuf;

use hailstorm_abi::{BatchReader, BatchWriter};

use super::data::DataReader;
use super::StoreError;

/// One file of a merge, positioned at its next entry.
struct Cursor {
    reader: DataReader,
    block: Vec<u8>,
    /// Byte position of the next entry in `block` (after the count).
    at: usize,
    /// Entries left in `block`.
    left: u32,
}

impl Cursor {
    /// Moves to the next entry, loading blocks as needed; false at the end.
    fn fill(&mut self) -> Result<bool, StoreError> {
        while self.left == 0 {
            match self.reader.next_block()? {
                Some(b) => {
                    let r = BatchReader::new(&b)
                        .map_err(|e| StoreError::Corrupt { path: PathBuf::new(), why: format!("block: {e}") })?;
                    self.left = r.count();
                    self.at = r.position();
                    self.block = b;
                }
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// The current (key, value) and the position after it.
    fn peek(&self) -> Option<(&[u8], &[u8], usize)> {
        let field = |at: usize| -> Option<(&[u8], usize)> {
            let len = self.block.get(at..at.checked_add(4)?)?;
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let end = at.checked_add(4)?.checked_add(len)?;
            Some((self.block.get(at + 4..end)?, end))
        };
        let (key, v_at) = field(self.at)?;
        let (value, end) = field(v_at)?;
        Some((key, value, end))
    }
}

/// Merges data files (oldest first: for a key in several files, the last
/// file's value wins).
pub struct Merge {
    cursors: Vec<Cursor>,
    live: Vec<bool>,
    started: bool,
}

impl Merge {
    /// Opens every file of the merge.
    pub fn open(files: &[PathBuf]) -> Result<Merge, StoreError> {
        Merge::of(files.iter().map(|f| DataReader::open(f)).collect::<Result<Vec<_>, _>>()?)
    }

    /// Merges opened files (oldest first).
    pub fn of(readers: Vec<DataReader>) -> Result<Merge, StoreError> {
        let mut cursors = Vec::with_capacity(readers.len());
        for reader in readers {
            cursors.push(Cursor { reader, block: Vec::new(), at: 0, left: 0 });
        }
        let live = vec![true; cursors.len()];
        Ok(Merge { cursors, live, started: false })
    }

    /// Each file's checksum, once the merge is over (None for a file not read to its end).
    pub fn checksums(&self) -> Vec<Option<u32>> {
        self.cursors.iter().map(|c| c.reader.checksum()).collect()
    }

    /// Appends the next entries (those `keep` accepts) to `out` until it
    /// holds about `max_bytes`; false when the merge is over (`out` may
    /// still have received entries).
    pub fn next_chunk(
        &mut self,
        out: &mut BatchWriter,
        max_bytes: usize,
        keep: &dyn Fn(&[u8]) -> bool,
    ) -> Result<bool, StoreError> {
        if !self.started {
            for (c, live) in self.cursors.iter_mut().zip(&mut self.live) {
                *live = c.fill()?;
            }
            self.started = true;
        }
        while out.len() < max_bytes {
            // The smallest key; the newest file holding it wins.
            let mut best: Option<(usize, &[u8])> = None;
            for (i, c) in self.cursors.iter().enumerate() {
                if !self.live.get(i).copied().unwrap_or(false) {
                    continue;
                }
                let Some((k, _, _)) = c.peek() else { continue };
                if best.is_none_or(|(_, bk)| k <= bk) {
                    best = Some((i, k));
                }
            }
            let Some((winner, key)) = best else { return Ok(false) };
            let key = key.to_vec();
            if let Some((k, v, _)) = self.cursors.get(winner).and_then(Cursor::peek) {
                if keep(k) {
                    out.bytes(k).bytes(v).end_item();
                }
            }
            // Every file at this key moves on.
            for i in 0..self.cursors.len() {
                let Some(c) = self.cursors.get_mut(i) else { continue };
                if !self.live.get(i).copied().unwrap_or(false) || c.peek().is_none_or(|(k, _, _)| k != key.as_slice()) {
                    continue;
                }
                let next = c.peek().map_or(c.block.len(), |(_, _, end)| end);
                c.at = next;
                c.left = c.left.saturating_sub(1);
                let more = c.fill()?;
                if let Some(l) = self.live.get_mut(i) {
                    *l = more;
                }
            }
        }
        Ok(true)
    }
}
