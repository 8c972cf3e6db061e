//! The emitted batch a deserializer or bolt returns (ABI.md §3).

use hailstorm_abi::BatchWriter;

/// Collects the tuples a call emits.
///
/// Every tuple carries the index of the input item being processed, so the
/// host can attach that record's origin to it; the SDK sets the index before
/// it hands each item to user code, so [`Emitter::emit`] only needs the key
/// and the value. The buffer is reused from call to call.
#[derive(Debug, Clone, Default)]
pub struct Emitter {
    batch: BatchWriter,
    input: u32,
}

impl Emitter {
    /// An empty emitted batch.
    pub fn new() -> Emitter {
        Emitter { batch: BatchWriter::new(), input: 0 }
    }

    /// Emits one tuple derived from the current input item.
    #[inline]
    pub fn emit(&mut self, key: &[u8], value: &[u8]) {
        self.batch.tuple(self.input, key, value);
    }

    /// The index (from 0) of the input item being processed.
    pub fn input(&self) -> u32 {
        self.input
    }

    /// How many tuples this call has emitted so far.
    pub fn count(&self) -> u32 {
        self.batch.count()
    }

    /// The framed emitted batch so far.
    pub fn as_batch(&mut self) -> &[u8] {
        self.batch.as_bytes()
    }

    /// Starts a new call: no tuples, input index 0.
    pub(crate) fn begin(&mut self) {
        self.batch.clear();
        self.input = 0;
    }

    pub(crate) fn set_input(&mut self, input: u32) {
        self.input = input;
    }
}
