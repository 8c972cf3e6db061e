//! Where a sink's rounds go: a WebAssembly sink module, or a connector
//! (Kafka, PostgreSQL) whose items a pure serializer module shapes.

use anyhow::{anyhow, Result};
use hailstorm_abi::{self as abi, Item};

use crate::connect::shape::{check_item, Shape};
use crate::connect::{Failure, Writer};
use crate::wasm;

/// A connector failed in a way a retry may fix (the broker or database is
/// down, a transaction was aborted): the sink reopens after a pause.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub(super) struct Retry(pub anyhow::Error);

/// A sink's output.
pub(super) enum Out {
    Wasm(Box<wasm::Sink>),
    Connector(Box<Connected>),
}

/// A connector sink: a serializer and a transactional writer.
pub(super) struct Connected {
    pub sink: String,
    pub serializer: wasm::Serializer,
    pub shape: Shape,
    pub writer: Box<dyn Writer>,
    /// The newest round the output holds.
    pub durable: u64,
    /// The newest complete round this run knows of: the store's last one
    /// when the run started (0: none), then each round handed to the sink.
    /// The output cannot hold a newer one unless another deployment wrote it.
    pub newest_complete: u64,
    /// The round being written, and whether the output holds it already.
    round: u64,
    skip: bool,
}

fn failure(sink: &str, f: Failure) -> anyhow::Error {
    match f {
        Failure::Retry(e) => anyhow::Error::new(Retry(e.context(format!("sink `{sink}`")))),
        Failure::Stop(e) => e.context(format!("sink `{sink}`")),
    }
}

impl Connected {
    pub fn new(sink: &str, serializer: wasm::Serializer, shape: Shape, writer: Box<dyn Writer>) -> Connected {
        Connected {
            sink: sink.to_string(),
            serializer,
            shape,
            writer,
            durable: 0,
            newest_complete: 0,
            round: 0,
            skip: false,
        }
    }

    fn open(&mut self) -> Result<u64> {
        let held = self.writer.open().map_err(|f| failure(&self.sink, f))?;
        self.durable = if held > self.newest_complete {
            tracing::warn!(
                "sink `{}`: {} records round {}, newer than the last complete round of this store ({}): another \
                 deployment wrote it (another store, or a topology of the same name); the sink starts over from the \
                 whole state",
                self.sink,
                self.writer.target(),
                crate::core::negotiator::show_round(held),
                crate::core::negotiator::show_round(self.newest_complete)
            );
            0
        } else {
            held
        };
        Ok(self.durable)
    }

    fn begin(&mut self, round: u64) -> Result<bool> {
        self.round = round;
        // A round the output holds already (a commit whose answer was lost) is not written twice.
        self.skip = round <= self.durable;
        if !self.skip {
            self.writer.begin(round).map_err(|f| failure(&self.sink, f))?;
        }
        Ok(true)
    }

    fn changes(&mut self, input: &str, instance: u32, entries: &[u8]) -> Result<()> {
        if self.skip {
            return Ok(());
        }
        let doc = abi::write_serialize_input(self.round, input, instance, entries);
        let out = self.serializer.serialize(&doc)?;
        let items = match abi::read_items(out) {
            Ok(items) => items,
            Err(e) => return Err(self.serializer.bad_output(abi::EXPORT_SERIALIZE, e.to_string()).into()),
        };
        for item in &items {
            if let Err(why) = check_item(&self.shape, item) {
                return Err(bad_item(&self.sink, self.round, item, (input, instance, entries), &why));
            }
        }
        let (sink, writer) = (&self.sink, &mut self.writer);
        writer.write(&items).map_err(|f| failure(sink, f))
    }

    fn end(&mut self) -> Result<(u64, bool)> {
        if !self.skip {
            self.writer.commit(self.round).map_err(|f| failure(&self.sink, f))?;
            self.durable = self.round;
        }
        Ok((self.durable, false))
    }
}

/// The error for an item that does not fit the shape: names the sink, the
/// entry and the round.
fn bad_item(sink: &str, round: u64, item: &Item<'_>, from: (&str, u32, &[u8]), why: &str) -> anyhow::Error {
    let (input, instance, entries) = from;
    let key = abi::read_pairs(entries).ok().and_then(|p| {
        p.get(item.entry as usize).map(|(k, _)| String::from_utf8_lossy(k).chars().take(64).collect::<String>())
    });
    let entry = match key {
        Some(k) => format!("entry `{k}` of {input}/{instance}"),
        None => format!("entry {} (out of range) of {input}/{instance}", item.entry),
    };
    anyhow!("sink `{sink}`: the serializer's output for {entry} in round {round} is malformed: {why}")
}

impl Out {
    /// Where the output stands: the newest round it holds (0: nothing).
    pub fn resume(&mut self) -> Result<u64> {
        match self {
            Out::Wasm(g) => Ok(g.resume()?),
            Out::Connector(c) => c.open(),
        }
    }

    /// A round starts: false when the sink declines it.
    pub fn begin(&mut self, round: u64, since: u64, last: bool, clock: &[(String, u64)]) -> Result<bool> {
        match self {
            Out::Wasm(g) => Ok(g.begin(&abi::write_round_header(round, since, last, clock))?),
            Out::Connector(c) => c.begin(round),
        }
    }

    pub fn changes(&mut self, input: &str, instance: u32, entries: &[u8]) -> Result<()> {
        match self {
            Out::Wasm(g) => Ok(g.changes(&abi::write_changes(input, instance, entries))?),
            Out::Connector(c) => c.changes(input, instance, entries),
        }
    }

    /// The round ends: the newest durable round, and whether work is pending.
    pub fn end(&mut self) -> Result<(u64, bool)> {
        match self {
            Out::Wasm(g) => Ok(g.end()?),
            Out::Connector(c) => c.end(),
        }
    }

    pub fn step(&mut self) -> Result<(u64, bool)> {
        match self {
            Out::Wasm(g) => Ok(g.step()?),
            Out::Connector(c) => Ok((c.durable, false)),
        }
    }

    pub fn declined_last(&self) -> anyhow::Error {
        match self {
            Out::Wasm(g) => g.declined_last().into(),
            Out::Connector(c) => anyhow!("internal: connector sink `{}` declined the last round", c.sink),
        }
    }

    /// Round `round` is complete (it was handed to the sink).
    pub fn complete(&mut self, round: u64) {
        if let Out::Connector(c) = self {
            c.newest_complete = c.newest_complete.max(round);
        }
    }

    /// Counts every call into the module from now on.
    pub fn set_meter(&mut self, meter: crate::observe::CallMeter) {
        match self {
            Out::Wasm(g) => g.set_meter(meter),
            Out::Connector(c) => c.serializer.set_meter(meter),
        }
    }

    /// Drops what an unfinished round wrote (a connector's open transaction).
    pub fn abort(&mut self) {
        if let Out::Connector(c) = self {
            c.writer.abort();
        }
    }
}
