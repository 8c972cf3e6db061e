//! The three kinds of module as the engine calls them: [`Deserializer`],
//! [`Bolt`] and [`Sink`], each a [`Guest`] with the exports of its kind.

use std::path::PathBuf;

use hailstorm_abi as abi;
use wasmtime::TypedFunc;

use super::guest::{Fault, Guest, GuestError, Ident};
use super::LoadedModule;
use crate::topology::Limits;

/// A deserializer instance.
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
        self.g.output(r, abi::EXPORT_DESERIALIZE)
    }

    pub fn ident(&self) -> &Ident {
        self.g.ident()
    }
}

/// A bolt instance: keyed monoid state in numbered slots.
pub struct Bolt {
    g: Guest,
    fold: TypedFunc<(i32, i32, i32), i64>,
    merge: TypedFunc<(i32, i32), i32>,
    snapshot: TypedFunc<i32, i64>,
    restore: TypedFunc<(i32, i32, i32), i32>,
    clear: TypedFunc<i32, i32>,
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
            clear: g.func(abi::EXPORT_CLEAR)?,
            g,
        })
    }

    pub fn ident(&self) -> &Ident {
        self.g.ident()
    }

    /// Folds a framed tuple batch into `slot`; returns the emitted batch.
    pub fn fold(&mut self, slot: i32, tuples: &[u8]) -> Result<&[u8], GuestError> {
        let (p, l) = self.g.put_input(tuples)?;
        let r = self.g.call(&self.fold, (slot, p, l), abi::EXPORT_FOLD)?;
        self.g.output(r, abi::EXPORT_FOLD)
    }

    fn status(&mut self, status: i32, call: &'static str) -> Result<(), GuestError> {
        if status == 0 {
            Ok(())
        } else {
            Err(self.g.failure(call))
        }
    }

    pub fn merge(&mut self, dst: i32, src: i32) -> Result<(), GuestError> {
        let s = self.g.call(&self.merge, (dst, src), abi::EXPORT_MERGE)?;
        self.status(s, abi::EXPORT_MERGE)
    }

    pub fn snapshot(&mut self, slot: i32) -> Result<Vec<u8>, GuestError> {
        let r = self.g.call(&self.snapshot, slot, abi::EXPORT_SNAPSHOT)?;
        let out = self.g.output(r, abi::EXPORT_SNAPSHOT)?.to_vec();
        // Entries go to disk and to other modules: check the framing here.
        abi::read_pairs(&out).map_err(|e| self.g.error(abi::EXPORT_SNAPSHOT, Fault::BadOutput(e.to_string())))?;
        Ok(out)
    }

    pub fn restore(&mut self, slot: i32, entries: &[u8]) -> Result<(), GuestError> {
        let (p, l) = self.g.put_input(entries)?;
        let s = self.g.call(&self.restore, (slot, p, l), abi::EXPORT_RESTORE)?;
        self.status(s, abi::EXPORT_RESTORE)
    }

    pub fn clear(&mut self, slot: i32) -> Result<(), GuestError> {
        let s = self.g.call(&self.clear, slot, abi::EXPORT_CLEAR)?;
        self.status(s, abi::EXPORT_CLEAR)
    }
}

/// A sink instance.
pub struct Sink {
    g: Guest,
    commit: TypedFunc<(i32, i32), i32>,
}

impl Sink {
    pub fn new(
        m: &LoadedModule,
        ident: Ident,
        limits: Limits,
        init: &serde_json::Value,
        dirs: &[PathBuf],
    ) -> Result<Sink, GuestError> {
        let mut g = Guest::instantiate(m, ident, limits, dirs)?;
        g.init(init)?;
        let commit = g.func(abi::EXPORT_COMMIT)?;
        Ok(Sink { g, commit })
    }

    pub fn commit(&mut self, doc: &[u8]) -> Result<(), GuestError> {
        let (p, l) = self.g.put_input(doc)?;
        let s = self.g.call(&self.commit, (p, l), abi::EXPORT_COMMIT)?;
        if s == 0 {
            Ok(())
        } else {
            Err(self.g.failure(abi::EXPORT_COMMIT))
        }
    }
}
