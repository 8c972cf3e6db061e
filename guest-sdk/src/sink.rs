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

    /// Whether to take this round now (the default: always). A sink that
    /// declines a round gets no changes and no [`Sink::end`] for it; the next
    /// round it takes carries its changes too (`header.since` stays where
    /// the sink stands). It cannot decline the last round: for that one,
    /// `header.last` is set and this is not asked. Declining is how a sink
    /// whose work per round is large (rewriting a whole file) spaces that
    /// work out without buffering anything.
    fn take(&mut self, header: &RoundHeader<'_>) -> bool {
        let _ = header;
        true
    }

    /// A round starts: `header.since` is the round the changes build on (0:
    /// the changes are the whole state and the output is rebuilt from them);
    /// `header.last` asks for the round to be durable when [`Sink::end`] returns.
    fn begin(&mut self, header: &RoundHeader<'_>) -> Result<(), String>;

    /// One chunk of changed entries of one instance of one input bolt, sorted by key.
    fn changes(&mut self, changes: &Changes<'_>) -> Result<(), String>;

    /// The round ends: returns the newest round the output now holds durably
    /// (0: none yet). A sink may buffer and return an older round, but must
    /// make the round durable when the header said `last` (directly, or by
    /// the end of the [`Sink::step`] calls it asks for). A sink with much to
    /// do (rewriting a large file, say) asks for steps instead of doing it
    /// all in one call, so every call stays within its deadline.
    fn end(&mut self) -> Result<Durable, String>;

    /// Does a bounded part of the work `end` (or the previous step) left
    /// pending. The default has none.
    fn step(&mut self) -> Result<Durable, String> {
        Err("the sink has no pending work".into())
    }
}

/// What a sink holds durably after a call, and whether it has work left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durable {
    /// The newest round the output holds durably (0: none yet).
    pub round: u64,
    /// More work is pending: the host calls [`Sink::step`] again.
    pub more: bool,
}

impl Durable {
    /// Done: `round` is durable and nothing is pending.
    pub fn done(round: u64) -> Durable {
        Durable { round, more: false }
    }

    /// The `i64` the exports return.
    pub fn encode(self) -> Result<i64, String> {
        let r = i64::try_from(self.round).ok().filter(|r| *r < hailstorm_abi::MORE_WORK);
        let r = r.ok_or_else(|| format!("round {} is out of range", self.round))?;
        Ok(if self.more { r | hailstorm_abi::MORE_WORK } else { r })
    }
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

    /// `hailstorm_commit_begin`: decodes the round header and hands it
    /// over; false when the sink declines the round ([`Sink::take`]).
    pub fn begin(&mut self, doc: &[u8]) -> Result<bool, String> {
        let user = self.user.as_mut().ok_or(crate::NOT_INITIALIZED)?;
        if self.in_round {
            return Err("hailstorm_commit_begin called twice without hailstorm_commit_end".into());
        }
        let header = read_round_header(doc).map_err(|e| format!("round header: {e}"))?;
        if !header.last && !user.take(&header) {
            return Ok(false);
        }
        user.begin(&header)?;
        self.in_round = true;
        Ok(true)
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

    /// `hailstorm_commit_end`: the newest round now durable, and whether work is pending.
    pub fn end(&mut self) -> Result<Durable, String> {
        let user = self.user.as_mut().ok_or(crate::NOT_INITIALIZED)?;
        if !self.in_round {
            return Err("hailstorm_commit_end called outside a round".into());
        }
        self.in_round = false;
        user.end()
    }

    /// `hailstorm_commit_step`: a bounded part of the pending work.
    pub fn step(&mut self) -> Result<Durable, String> {
        self.user.as_mut().ok_or(crate::NOT_INITIALIZED)?.step()
    }
}
