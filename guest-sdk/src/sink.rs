//! Sinks: receive the committed state of their input bolts (ABI.md §7).

use hailstorm_abi::{read_commit, Commit};

use crate::Init;

/// A sink. Export one with [`sink!`](crate::sink).
///
/// Sinks are the only modules that may use WASI (build them for
/// `wasm32-wasip1`), limited to what the topology grants.
pub trait Sink: Sized {
    /// Builds the sink from its init document.
    fn init(init: &Init) -> Result<Self, String>;

    /// Receives one commit: the whole committed state of every input bolt at
    /// a complete snapshot clock. Writing it idempotently (for example by
    /// atomically replacing a file) gives exactly-once output, because the
    /// host may deliver the same round again after a failure.
    fn commit(&mut self, commit: &Commit<'_>) -> Result<(), String>;
}

/// The byte-level logic behind a sink's exports, usable on the host in tests.
#[derive(Debug)]
pub struct SinkRuntime<S> {
    user: Option<S>,
}

impl<S: Sink> Default for SinkRuntime<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Sink> SinkRuntime<S> {
    /// A runtime whose `init` has not been called yet.
    pub fn new() -> Self {
        SinkRuntime { user: None }
    }

    /// `hailstorm_init`.
    pub fn init(&mut self, doc: &[u8]) -> Result<(), String> {
        if self.user.is_some() {
            return Err(crate::ALREADY_INITIALIZED.to_owned());
        }
        let init = Init::parse(doc)?;
        self.user = Some(S::init(&init)?);
        Ok(())
    }

    /// The sink, once initialized.
    pub fn get(&self) -> Option<&S> {
        self.user.as_ref()
    }

    /// `hailstorm_commit`: decodes the commit document and hands it over.
    pub fn commit(&mut self, doc: &[u8]) -> Result<(), String> {
        let user = self.user.as_mut().ok_or(crate::NOT_INITIALIZED)?;
        let commit = read_commit(doc).map_err(|e| format!("commit document: {e}"))?;
        user.commit(&commit)
    }
}
