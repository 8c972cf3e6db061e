//! Connector sinks: the engine writes a sink's output itself, into a Kafka
//! topic (`kafka/sink.rs`) or a PostgreSQL table (`postgres/`), one
//! transaction per round that also records the round, shaped by a pure
//! serializer module ([`shape`] checks what it returns).

pub mod shape;

use hailstorm_abi::Item;

/// A connector's failure, and whether retrying can help.
#[derive(Debug)]
pub enum Failure {
    /// The broker or database is unreachable, or aborted the transaction:
    /// reopen after a pause and send the round again.
    Retry(anyhow::Error),
    /// No retry can help (the sink was fenced by a newer instance, the
    /// table does not fit): the sink stops with this error.
    Stop(anyhow::Error),
}

impl Failure {
    pub fn retry(e: impl Into<anyhow::Error>) -> Failure {
        Failure::Retry(e.into())
    }

    pub fn stop(e: impl Into<anyhow::Error>) -> Failure {
        Failure::Stop(e.into())
    }
}

/// Where a connector writes: the transactional half of a connector sink.
///
/// Each round is `begin`, any number of `write`s, `commit`; `commit` makes
/// the items and the record of the round visible together, or neither.
pub trait Writer: Send {
    /// Connects (fencing off any older writer of this sink) and says where
    /// the output stands: the newest round it holds (0: none). Called at the
    /// start and again after every failure.
    fn open(&mut self) -> Result<u64, Failure>;
    fn begin(&mut self, round: u64) -> Result<(), Failure>;
    /// Items the serializer made, already checked against its shape.
    fn write(&mut self, items: &[Item<'_>]) -> Result<(), Failure>;
    fn commit(&mut self, round: u64) -> Result<(), Failure>;
    /// Drops what the open round wrote (best effort; `open` settles it).
    fn abort(&mut self);
    /// What it writes to, for messages: "Kafka topic `t` on 127.0.0.1:9092".
    fn target(&self) -> String;
}
