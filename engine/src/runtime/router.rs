//! Spreads tuples over the instances of downstream bolts.

use crossbeam_channel::Sender;
use hailstorm_abi as abi;

use crate::channel::{send, Shutdown, ToBolt, Undelivered};
use crate::core::batch::TupleBatch;
use crate::core::clock::{Clock, Origin};
use crate::core::plan::{key_instance, Consumer, Plan};
use crate::topology::Grouping;

/// Tuples buffered for one bolt instance before they are sent.
const FLUSH_TUPLES: usize = 4096;

/// Spreads tuples over the instances of downstream bolts and sends them with
/// the sender's LWM. Every flush reaches every downstream instance, with tuples
/// or with a bare LWM, so no instance waits on a sender that has nothing for it.
pub(super) struct Router {
    from: usize,
    targets: Vec<Target>,
    shutdown: Shutdown,
}

struct Target {
    grouping: Grouping,
    inboxes: Vec<Sender<ToBolt>>,
    buffers: Vec<TupleBatch>,
}

impl Router {
    /// The router of sender `from` (a spout or bolt instance number) to `consumers`.
    pub(super) fn new(
        from: usize,
        consumers: &[Consumer],
        plan: &Plan,
        inboxes: &[Sender<ToBolt>],
        shutdown: Shutdown,
    ) -> Router {
        let targets = consumers
            .iter()
            .map(|c| {
                let first = plan.bolt_instance_number(c.bolt, 0);
                let n = plan.bolt_parallelism[c.bolt] as usize;
                Target {
                    grouping: c.grouping,
                    inboxes: inboxes.get(first..first + n).map(<[_]>::to_vec).unwrap_or_default(),
                    buffers: (0..n).map(|_| TupleBatch::new()).collect(),
                }
            })
            .collect();
        Router { from, targets, shutdown }
    }

    pub(super) fn has_targets(&self) -> bool {
        !self.targets.is_empty()
    }

    /// Buffers one tuple; returns true when a buffer is full enough to flush.
    fn push(&mut self, key: &[u8], value: &[u8], origin: Origin) -> bool {
        let mut full = false;
        for t in &mut self.targets {
            let n = t.buffers.len() as u32;
            let chosen = match t.grouping {
                Grouping::Key => t.buffers.get_mut(key_instance(key, n) as usize),
                Grouping::Global => t.buffers.first_mut(),
                Grouping::Broadcast => {
                    for b in &mut t.buffers {
                        b.push(key, value, origin);
                        full |= b.len() >= FLUSH_TUPLES;
                    }
                    None
                }
            };
            if let Some(b) = chosen {
                b.push(key, value, origin);
                full |= b.len() >= FLUSH_TUPLES;
            }
        }
        full
    }

    /// Routes every tuple of an emitted batch; `origin_of(i)` maps input indexes to origins.
    pub(super) fn route_emitted(
        &mut self,
        emitted: &[u8],
        origin_of: impl Fn(u32) -> Option<Origin>,
    ) -> Result<bool, String> {
        let mut r = abi::BatchReader::new(emitted).map_err(|e| e.to_string())?;
        let mut full = false;
        for _ in 0..r.count() {
            let input = r.u32().map_err(|e| e.to_string())?;
            let key = r.bytes().map_err(|e| e.to_string())?;
            let value = r.bytes().map_err(|e| e.to_string())?;
            let origin = origin_of(input)
                .ok_or_else(|| format!("emitted a tuple for input {input}, which is not in the batch"))?;
            full |= self.push(key, value, origin);
        }
        r.expect_end().map_err(|e| e.to_string())?;
        Ok(full)
    }

    /// Sends every buffer (or a bare LWM where a buffer is empty).
    pub(super) fn flush(&mut self, lwm: &Clock) -> Result<(), Undelivered> {
        for t in &mut self.targets {
            for (b, tx) in t.buffers.iter_mut().zip(&t.inboxes) {
                let msg = if b.is_empty() {
                    ToBolt::Lwm { from: self.from, lwm: lwm.clone() }
                } else {
                    ToBolt::Batch { from: self.from, batch: std::mem::take(b), lwm: lwm.clone() }
                };
                send(tx, msg, &self.shutdown)?;
            }
        }
        Ok(())
    }
}
