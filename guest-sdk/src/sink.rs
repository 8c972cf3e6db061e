//! Sinks: receive, for every complete round, the entries of their input
//! bolts whose committed value changed (ABI.md §7).

use hailstorm_abi::{read_changes, read_round_header, Changes, RoundHeader};

use crate::Init;

/// A sink. Export one with [`sink!`](crate::sink).
///
/// For every complete round the host calls [`Sink::begin`], then
/// [`Sink::changes`] once per chunk of changed entries of each input bolt
/// instance, then [`Sink::end`]. Changes carry the entries' committed
/// values, not increments, so applying a round a second time changes
/// nothing: a sink is exactly-once when it applies each round idempotently
/// and reports, from [`Sink::end`] and [`Sink::resume`], the newest round its
/// output holds durably (the host sends again whatever came after it).
///
/// Sinks are the only modules that may use WASI (build them for
/// `wasm32-wasip1`), limited to what the topology grants.
pub trait Sink: Sized {
    /// Builds the sink from its init document ([`Init::committed_round`] is
    /// the newest round the host knows the sink made durable).
    fn init(init: &Init) -> Result<Self, String>;

    /// Called once after `init`: the newest round the sink's output holds
    /// durably, or 0 when it holds nothing and needs the whole state. The
    /// default trusts the host's record, `committed_round`.
    fn resume(&mut self, committed_round: u64) -> Result<u64, String> {
        Ok(committed_round)
    }

    /// A round starts: `header.since` is the round the changes build on (0:
    /// the changes are the whole state and the output is rebuilt from them);
    /// `header.last` asks for the round to be durable when [`Sink::end`] returns.
    fn begin(&mut self, header: &RoundHeader<'_>) -> Result<(), String>;

    /// One chunk of changed entries of one instance of one input bolt, sorted by key.
    fn changes(&mut self, changes: &Changes<'_>) -> Result<(), String>;

    /// The round ends: returns the newest round the output now holds durably
    /// (0: none yet). A sink may buffer and return an older round, but must
    /// make the round durable when the header said `last`.
    fn end(&mut self) -> Result<u64, String>;
}

/// The byte-level logic behind a sink's exports, usable on the host in tests.
#[derive(Debug)]
pub struct SinkRuntime<S> {
    user: Option<S>,
    committed_round: u64,
    in_round: bool,
}

impl<S: Sink> Default for SinkRuntime<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Sink> SinkRuntime<S> {
    /// A runtime whose `init` has not been called yet.
    pub fn new() -> Self {
        SinkRuntime { user: None, committed_round: 0, in_round: false }
    }

    /// `hailstorm_init`.
    pub fn init(&mut self, doc: &[u8]) -> Result<(), String> {
        if self.user.is_some() {
            return Err(crate::ALREADY_INITIALIZED.to_owned());
        }
        let init = Init::parse(doc)?;
        self.committed_round = init.committed_round;
        self.user = Some(S::init(&init)?);
        Ok(())
    }

    /// The sink, once initialized.
    pub fn get(&self) -> Option<&S> {
        self.user.as_ref()
    }

    /// `hailstorm_resume`.
    pub fn resume(&mut self) -> Result<u64, String> {
        let committed = self.committed_round;
        self.user.as_mut().ok_or(crate::NOT_INITIALIZED)?.resume(committed)
    }

    /// `hailstorm_commit_begin`: decodes the round header and hands it over.
    pub fn begin(&mut self, doc: &[u8]) -> Result<(), String> {
        let user = self.user.as_mut().ok_or(crate::NOT_INITIALIZED)?;
        if self.in_round {
            return Err("hailstorm_commit_begin called twice without hailstorm_commit_end".into());
        }
        let header = read_round_header(doc).map_err(|e| format!("round header: {e}"))?;
        user.begin(&header)?;
        self.in_round = true;
        Ok(())
    }

    /// `hailstorm_commit_changes`: decodes one chunk of changes and hands it over.
    pub fn changes(&mut self, doc: &[u8]) -> Result<(), String> {
        let user = self.user.as_mut().ok_or(crate::NOT_INITIALIZED)?;
        if !self.in_round {
            return Err("hailstorm_commit_changes called outside a round".into());
        }
        let changes = read_changes(doc).map_err(|e| format!("changes: {e}"))?;
        user.changes(&changes)
    }

    /// `hailstorm_commit_end`: the newest round now durable.
    pub fn end(&mut self) -> Result<u64, String> {
        let user = self.user.as_mut().ok_or(crate::NOT_INITIALIZED)?;
        if !self.in_round {
            return Err("hailstorm_commit_end called outside a round".into());
        }
        self.in_round = false;
        user.end()
    }
}
