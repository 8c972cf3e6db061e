//! A batch the deserializer failed on, under `on_error = "skip"` or
//! `"dead-letter"`: its records go through a fresh instance one at a time;
//! the tuples of the good ones are routed as usual, and each bad one is left
//! out or sent to the spout's dead-letter stream, keyed `PARTITION@OFFSET`.
//! A dead letter has the origin of its record, so it is folded, snapshotted
//! and handed to sinks exactly once, like any tuple.

use std::time::{Duration, Instant};

use anyhow::Result;
use hailstorm_abi as abi;

use super::SpoutTask;
use crate::core::batch::RecordBatch;
use crate::core::clock::Origin;
use crate::runtime::router::{route_error, MAX_TUPLE};
use crate::runtime::stopped;
use crate::topology::OnError;
use crate::wasm::{self, Fault, GuestError};

/// How many bad records a spout instance logs one by one before it logs
/// only every thousandth (the metrics count them all).
const LOG_FIRST: u64 = 10;

impl SpoutTask {
    /// Routes what the records of `batch` give one at a time, under the
    /// spout's policy for the records that fail; returns the tuples routed.
    /// `failed` is the error of the whole batch, returned when the policy is
    /// to fail or when the module itself is broken.
    pub(super) fn salvage(&mut self, batch: &RecordBatch, failed: GuestError) -> Result<u32> {
        if self.on_error == OnError::Fail || matches!(*failed.fault, Fault::BadOutput(_)) {
            return Err(super::pinpoint(self, batch, failed).into());
        }
        let mut fresh = match self.fresh() {
            Ok(f) => f,
            Err(_) => return Err(failed.into()),
        };
        let partition = self.number as u32;
        let mut tuples = 0u32;
        // Each record may take up to its deadline: the whole is bounded, as the search of `pinpoint` is.
        let budget = (self.limits.call_timeout * 10).clamp(Duration::from_secs(5), Duration::from_secs(60));
        let started = Instant::now();
        for (i, record) in batch.records().into_iter().enumerate() {
            let offset = batch.offsets.get(i).copied().unwrap_or(0);
            if started.elapsed() > budget {
                let first = batch.offsets.first().copied().unwrap_or(0);
                let what = format!("a batch of {} records from {}@{first}", batch.len(), self.partition_name);
                let why = format!("{what}: taking its records one at a time, the first {i} took over {budget:?}");
                return Err(failed.with_origin(why).into());
            }
            let mut w = abi::BatchWriter::new();
            w.bytes(record).end_item();
            match fresh.deserialize(&w.finish()) {
                Ok(emitted) => {
                    tuples += abi::BatchReader::new(emitted).map(|r| r.count()).unwrap_or(0);
                    self.router
                        .route_emitted(emitted, |ix| (ix == 0).then_some(Origin { partition, offset }))
                        .map_err(|e| route_error(e, &self.ident, "hailstorm_deserialize"))?;
                }
                Err(e) if matches!(*e.fault, Fault::BadOutput(_)) => return Err(e.into()),
                Err(e) => {
                    let renew = !matches!(*e.fault, Fault::Failed(_));
                    let e = e.with_origin(format!("record {}@{offset}", self.partition_name));
                    self.bad_record(record, offset, &e)?;
                    if renew {
                        // A trap leaves the instance in no known state.
                        fresh = self.fresh()?;
                    }
                }
            }
        }
        self.guest = fresh;
        Ok(tuples)
    }

    /// A new instance of the spout's deserializer.
    fn fresh(&self) -> Result<wasm::Deserializer, GuestError> {
        wasm::Deserializer::new(&self.module, self.ident.clone(), self.limits, &self.init)
    }

    /// Leaves out, or sends as a dead letter, the record at `offset` that failed with `e`.
    fn bad_record(&mut self, record: &[u8], offset: u64, e: &GuestError) -> Result<()> {
        self.bad += 1;
        let (what, counter) = match self.on_error {
            OnError::DeadLetter => ("sent to the dead letters", &self.meter.dead_letters),
            _ => ("skipped", &self.meter.skipped),
        };
        counter.inc();
        if self.bad <= LOG_FIRST || self.bad.is_multiple_of(1000) {
            tracing::warn!("{e}: record {what} ({} so far on {})", self.bad, self.partition_name);
        }
        if self.on_error == OnError::DeadLetter {
            let key = format!("{}@{offset}", self.partition_name);
            let value = dead_letter(&self.partition_name, offset, record, &e.to_string());
            let origin = Origin { partition: self.number as u32, offset };
            self.router.route_dead_letter(key.as_bytes(), &value, origin).map_err(stopped)?;
        }
        Ok(())
    }
}

/// The most of a record a dead letter carries (a tuple is at most
/// [`MAX_TUPLE`] bytes, and the error text and the framing need room too).
const DEAD_RECORD_MAX: usize = MAX_TUPLE - (64 << 10);

/// A dead letter's value: a JSON object with the partition, the offset, the
/// record (`record` when it is UTF-8, else `record_hex`; cut at about 960 KiB,
/// with `record_bytes` giving its length then) and the error.
pub fn dead_letter(partition: &str, offset: u64, record: &[u8], error: &str) -> Vec<u8> {
    let kept = record.get(..DEAD_RECORD_MAX).unwrap_or(record);
    let mut doc = serde_json::json!({ "partition": partition, "offset": offset, "error": error });
    match std::str::from_utf8(kept) {
        Ok(text) => doc["record"] = text.into(),
        Err(_) => doc["record_hex"] = kept.iter().map(|b| format!("{b:02x}")).collect::<String>().into(),
    }
    if kept.len() < record.len() {
        doc["record_bytes"] = record.len().into();
    }
    doc.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_carries_the_record_and_the_error() {
        let v: serde_json::Value =
            serde_json::from_slice(&dead_letter("lines/0", 25, b"bad \"line\"", "oops")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"partition": "lines/0", "offset": 25, "record": "bad \"line\"", "error": "oops"})
        );
        let v: serde_json::Value = serde_json::from_slice(&dead_letter("p/1", 7, &[0xff, 0x00], "e")).unwrap();
        assert_eq!(v["record_hex"], "ff00");
        let big = vec![b'x'; MAX_TUPLE * 2];
        let d = dead_letter("p/1", 7, &big, "e");
        assert!(d.len() < MAX_TUPLE, "{} bytes", d.len());
        let v: serde_json::Value = serde_json::from_slice(&d).unwrap();
        assert_eq!(v["record_bytes"], MAX_TUPLE * 2);
    }
}
