//! Deserializers: one input record in, zero or more tuples out (ABI.md §5).

use hailstorm_abi::BatchReader;

use crate::{Emitter, Init};

/// A spout's deserializer. Export one with [`deserializer!`](crate::deserializer).
///
/// Deserializers must be pure: the same record always gives the same tuples,
/// because the host replays records after a failure.
pub trait Deserializer: Sized {
    /// Builds the deserializer from its init document; an error rejects the
    /// configuration and stops the deployment with the message.
    fn init(init: &Init) -> Result<Self, String>;

    /// Emits the tuples of one record with [`Emitter::emit`]. An error fails
    /// the whole call (the batch the record came in).
    fn deserialize(&mut self, record: &[u8], out: &mut Emitter) -> Result<(), String>;
}

/// The byte-level logic behind a deserializer's exports, usable on the host
/// to test a deserializer exactly as the engine drives it.
#[derive(Debug)]
pub struct DeserializerRuntime<D> {
    user: Option<D>,
    out: Emitter,
}

impl<D: Deserializer> Default for DeserializerRuntime<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D: Deserializer> DeserializerRuntime<D> {
    /// A runtime whose `init` has not been called yet.
    pub fn new() -> Self {
        DeserializerRuntime { user: None, out: Emitter::new() }
    }

    /// `hailstorm_init`: parses the init document and builds the deserializer.
    pub fn init(&mut self, doc: &[u8]) -> Result<(), String> {
        if self.user.is_some() {
            return Err(crate::ALREADY_INITIALIZED.to_owned());
        }
        let init = Init::parse(doc)?;
        self.user = Some(D::init(&init)?);
        Ok(())
    }

    /// The deserializer, once initialized.
    pub fn get(&self) -> Option<&D> {
        self.user.as_ref()
    }

    /// `hailstorm_deserialize`: a record batch in, an emitted batch out. The
    /// returned buffer is reused by the next call.
    pub fn deserialize(&mut self, batch: &[u8]) -> Result<&[u8], String> {
        let user = self.user.as_mut().ok_or(crate::NOT_INITIALIZED)?;
        let mut reader = BatchReader::new(batch).map_err(|e| format!("record batch: {e}"))?;
        self.out.begin();
        for index in 0..reader.count() {
            let record = reader.bytes().map_err(|e| format!("record batch: {e}"))?;
            self.out.set_input(index);
            user.deserialize(record, &mut self.out).map_err(|e| format!("record {index} of the batch: {e}"))?;
        }
        reader.expect_end().map_err(|e| format!("record batch: {e}"))?;
        Ok(self.out.as_batch())
    }
}
