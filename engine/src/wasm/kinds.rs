//! The three kinds of module as the engine calls them: [`Deserializer`],
//! [`Bolt`] and [`Sink`], each a [`Guest`] with the exports of its kind.

use std::path::PathBuf;

use hailstorm_abi as abi;
use wasmtime::TypedFunc;

use super::guest::{Fault, Guest, GuestError, Ident};
use super::LoadedModule;
use crate::topology::Limits;

/// A deserializer instance.
/// The most one call may emit (a batch always fits a frame between workers).
pub const MAX_EMITTED: usize = 32 << 20;

/// The tuples a call emitted, refused past [`MAX_EMITTED`]: what a module
/// emits is copied into host memory, perhaps once per downstream instance.
fn emitted<'g>(g: &'g mut Guest, packed: i64, call: &'static str) -> Result<&'g [u8], GuestError> {
    let len = abi::unpack(packed).map_or(0, |(_, l)| l as usize);
    if len > MAX_EMITTED {
        return Err(
            g.error(call, Fault::BadOutput(format!("emitted {len} bytes in one call; the most is {MAX_EMITTED}")))
        );
    }
    g.output(packed, call)
}

pub struct Deserializer {
    g: Guest,
    f: TypedFunc<(i32, i32), i64>,
}

impl Deserializer {
    pub fn new(
        m: &LoadedModule,
        ident: Ident,
        limits: Limits,
        init: &serde_json::Value,
    ) -> Result<Deserializer, GuestError> {
        let mut g = Guest::instantiate(m, ident, limits, &[])?;
        g.init(init)?;
        let f = g.func(abi::EXPORT_DESERIALIZE)?;
        Ok(Deserializer { g, f })
    }

    /// Runs a record batch; returns the emitted batch (valid until the next call).
    pub fn deserialize(&mut self, records: &[u8]) -> Result<&[u8], GuestError> {
        let (p, l) = self.g.put_input(records)?;
        let r = self.g.call(&self.f, (p, l), abi::EXPORT_DESERIALIZE)?;
        emitted(&mut self.g, r, abi::EXPORT_DESERIALIZE)
    }

    pub fn ident(&self) -> &Ident {
        self.g.ident()
    }

    /// Counts every call into the module from now on.
    pub fn set_meter(&mut self, meter: crate::observe::CallMeter) {
        self.g.set_meter(meter);
    }
}

/// A bolt instance: keyed monoid state in numbered slots.
pub struct Bolt {
    g: Guest,
    fold: TypedFunc<(i32, i32, i32), i64>,
    merge: TypedFunc<(i32, i32), i32>,
    snapshot: TypedFunc<(i32, i32), i64>,
    restore: TypedFunc<(i32, i32, i32), i32>,
}

impl Bolt {
    pub fn new(m: &LoadedModule, ident: Ident, limits: Limits, init: &serde_json::Value) -> Result<Bolt, GuestError> {
        let mut g = Guest::instantiate(m, ident, limits, &[])?;
        g.init(init)?;
        Ok(Bolt {
            fold: g.func(abi::EXPORT_FOLD)?,
            merge: g.func(abi::EXPORT_MERGE)?,
            snapshot: g.func(abi::EXPORT_SNAPSHOT)?,
            restore: g.func(abi::EXPORT_RESTORE)?,
            g,
        })
    }

    /// The size of the instance's linear memory, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.g.memory_bytes()
    }

    pub fn ident(&self) -> &Ident {
        self.g.ident()
    }

    /// Counts every call into the module from now on.
    pub fn set_meter(&mut self, meter: crate::observe::CallMeter) {
        self.g.set_meter(meter);
    }

    /// Folds a framed tuple batch into `slot`; returns the emitted batch.
    pub fn fold(&mut self, slot: i32, tuples: &[u8]) -> Result<&[u8], GuestError> {
        let (p, l) = self.g.put_input(tuples)?;
        let r = self.g.call(&self.fold, (slot, p, l), abi::EXPORT_FOLD)?;
        emitted(&mut self.g, r, abi::EXPORT_FOLD)
    }

    fn status(&mut self, status: i32, call: &'static str) -> Result<(), GuestError> {
        if status == 0 {
            Ok(())
        } else {
            Err(self.g.failure(call, status.into()))
        }
    }

    pub fn merge(&mut self, dst: i32, src: i32) -> Result<(), GuestError> {
        let s = self.g.call(&self.merge, (dst, src), abi::EXPORT_MERGE)?;
        self.status(s, abi::EXPORT_MERGE)
    }

    /// The next chunk (about `max_bytes`) of the entries of `slot` that
    /// changed since its previous snapshot, sorted by key; empty at the end.
    /// The framing is checked here; the order is the caller's to check.
    pub fn snapshot_chunk(&mut self, slot: i32, max_bytes: usize) -> Result<&[u8], GuestError> {
        let max = i32::try_from(max_bytes).unwrap_or(i32::MAX);
        let r = self.g.call(&self.snapshot, (slot, max), abi::EXPORT_SNAPSHOT)?;
        let out = self.g.output(r, abi::EXPORT_SNAPSHOT)?;
        if let Err(e) = abi::read_pairs(out) {
            return Err(self.g.error(abi::EXPORT_SNAPSHOT, Fault::BadOutput(e.to_string())));
        }
        self.g.output(r, abi::EXPORT_SNAPSHOT)
    }

    /// Sets the entries of an entries batch in `slot`.
    pub fn restore(&mut self, slot: i32, entries: &[u8]) -> Result<(), GuestError> {
        let (p, l) = self.g.put_input(entries)?;
        let s = self.g.call(&self.restore, (slot, p, l), abi::EXPORT_RESTORE)?;
        self.status(s, abi::EXPORT_RESTORE)
    }

    /// A failure of this instance's output, found by the caller.
    pub fn bad_output(&self, call: &'static str, why: String) -> GuestError {
        self.g.error(call, Fault::BadOutput(why))
    }
}

/// A sink instance.
pub struct Sink {
    g: Guest,
    resume: TypedFunc<(), i64>,
    begin: TypedFunc<(i32, i32), i32>,
    changes: TypedFunc<(i32, i32), i32>,
    end: TypedFunc<(), i64>,
    step: TypedFunc<(), i64>,
}

impl Sink {
    /// Counts every call into the module from now on.
    pub fn set_meter(&mut self, meter: crate::observe::CallMeter) {
        self.g.set_meter(meter);
    }

    pub fn new(
        m: &LoadedModule,
        ident: Ident,
        limits: Limits,
        init: &serde_json::Value,
        dirs: &[PathBuf],
    ) -> Result<Sink, GuestError> {
        let mut g = Guest::instantiate(m, ident, limits, dirs)?;
        g.init(init)?;
        Ok(Sink {
            resume: g.func(abi::EXPORT_RESUME)?,
            begin: g.func(abi::EXPORT_COMMIT_BEGIN)?,
            changes: g.func(abi::EXPORT_COMMIT_CHANGES)?,
            end: g.func(abi::EXPORT_COMMIT_END)?,
            step: g.func(abi::EXPORT_COMMIT_STEP)?,
            g,
        })
    }

    fn round(&mut self, r: i64, call: &'static str) -> Result<u64, GuestError> {
        u64::try_from(r).map_err(|_| self.g.failure(call, r))
    }

    /// The newest round the sink's output holds durably (0: none).
    pub fn resume(&mut self) -> Result<u64, GuestError> {
        let r = self.g.call(&self.resume, (), abi::EXPORT_RESUME)?;
        self.round(r, abi::EXPORT_RESUME)
    }

    /// Calls `commit_begin` or `commit_changes`; the status (0), or
    /// [`abi::SKIP_ROUND`] from `commit_begin`.
    fn input_code(&mut self, doc: &[u8], which: Which) -> Result<i32, GuestError> {
        let (f, call) = match which {
            Which::Begin => (self.begin.clone(), abi::EXPORT_COMMIT_BEGIN),
            Which::Changes => (self.changes.clone(), abi::EXPORT_COMMIT_CHANGES),
        };
        let (p, l) = self.g.put_input(doc)?;
        match self.g.call(&f, (p, l), call)? {
            0 => Ok(0),
            abi::SKIP_ROUND if matches!(which, Which::Begin) => Ok(abi::SKIP_ROUND),
            status => Err(self.g.failure(call, status.into())),
        }
    }

    /// A round starts (a round header): false when the sink declines it.
    pub fn begin(&mut self, header: &[u8]) -> Result<bool, GuestError> {
        Ok(self.input_code(header, Which::Begin)? == 0)
    }

    /// One chunk of changes.
    pub fn changes(&mut self, changes: &[u8]) -> Result<(), GuestError> {
        self.input_code(changes, Which::Changes).map(|_| ())
    }

    /// The error for a sink that declined the last round.
    pub fn declined_last(&self) -> GuestError {
        let why = "it declined the last round, which must be made durable".to_owned();
        self.g.error(abi::EXPORT_COMMIT_BEGIN, Fault::BadOutput(why))
    }

    /// The round ends: the newest round now durable (0: none yet), and
    /// whether the sink has work pending ([`Sink::step`] until it has none).
    pub fn end(&mut self) -> Result<(u64, bool), GuestError> {
        let r = self.g.call(&self.end, (), abi::EXPORT_COMMIT_END)?;
        self.durable(r, abi::EXPORT_COMMIT_END)
    }

    /// One bounded part of the work the sink left pending; as [`Sink::end`].
    pub fn step(&mut self) -> Result<(u64, bool), GuestError> {
        let step = self.step.clone();
        let r = self.g.call(&step, (), abi::EXPORT_COMMIT_STEP)?;
        self.durable(r, abi::EXPORT_COMMIT_STEP)
    }

    fn durable(&mut self, r: i64, call: &'static str) -> Result<(u64, bool), GuestError> {
        let more = r >= 0 && r & abi::MORE_WORK != 0;
        Ok((self.round(r & !abi::MORE_WORK, call)?, more))
    }
}

enum Which {
    Begin,
    Changes,
}

/// A serializer instance: shapes a connector sink's changed entries into
/// Kafka records or table rows.
pub struct Serializer {
    g: Guest,
    describe: TypedFunc<(), i64>,
    serialize: TypedFunc<(i32, i32), i64>,
}

impl Serializer {
    pub fn new(
        m: &LoadedModule,
        ident: Ident,
        limits: Limits,
        init: &serde_json::Value,
    ) -> Result<Serializer, GuestError> {
        let mut g = Guest::instantiate(m, ident, limits, &[])?;
        g.init(init)?;
        Ok(Serializer { describe: g.func(abi::EXPORT_DESCRIBE)?, serialize: g.func(abi::EXPORT_SERIALIZE)?, g })
    }

    /// Counts every call into the module from now on.
    pub fn set_meter(&mut self, meter: crate::observe::CallMeter) {
        self.g.set_meter(meter);
    }

    /// The describe document (what its items are), as text.
    pub fn describe(&mut self) -> Result<String, GuestError> {
        let r = self.g.call(&self.describe, (), abi::EXPORT_DESCRIBE)?;
        let doc = self.g.output(r, abi::EXPORT_DESCRIBE)?;
        match std::str::from_utf8(doc) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(self.bad_output(abi::EXPORT_DESCRIBE, "its document is not UTF-8".into())),
        }
    }

    /// Serializes a round's changes of one bolt instance; returns the output
    /// batch (valid until the next call), refused past [`MAX_EMITTED`].
    pub fn serialize(&mut self, input: &[u8]) -> Result<&[u8], GuestError> {
        let (p, l) = self.g.put_input(input)?;
        let r = self.g.call(&self.serialize, (p, l), abi::EXPORT_SERIALIZE)?;
        emitted(&mut self.g, r, abi::EXPORT_SERIALIZE)
    }

    /// A failure of this instance's output, found by the caller.
    pub fn bad_output(&self, call: &'static str, why: String) -> GuestError {
        self.g.error(call, Fault::BadOutput(why))
    }
}
