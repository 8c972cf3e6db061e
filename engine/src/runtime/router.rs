//! Spreads tuples over the instances of downstream bolts.

use crossbeam_channel::Sender;
use hailstorm_abi as abi;

use crate::channel::{send, Shutdown, ToBolt, Undelivered};
use crate::core::batch::TupleBatch;
use crate::core::clock::{Clock, Origin};
use crate::core::plan::{key_instance, Consumer, Plan};
use crate::topology::Grouping;

/// Tuples, or bytes of tuples, buffered for one bolt instance before they
/// are sent: a message carries at most about [`FLUSH_BYTES`] plus one
/// tuple, so an inbox of [`crate::channel::INBOX`] messages holds a bounded
/// number of bytes whatever the modules emit.
const FLUSH_TUPLES: usize = 4096;
pub(super) const FLUSH_BYTES: usize = 1 << 20;
/// The largest tuple (key and value) a module may emit.
pub const MAX_TUPLE: usize = 1 << 20;

/// Why an emitted batch could not be routed.
#[derive(Debug)]
pub(super) enum RouteError {
    /// The batch breaks the ABI.
    Abi(String),
    /// A receiver stopped.
    Stopped,
}

/// The error of an emitted batch that could not be routed, naming the module and the call.
pub(super) fn route_error(e: RouteError, ident: &crate::wasm::Ident, call: &str) -> anyhow::Error {
    match e {
        RouteError::Stopped => super::stopped(Undelivered),
        RouteError::Abi(m) => anyhow::anyhow!(
            "processor `{}` instance {} (module {}) broke the ABI in {call}: {m}",
            ident.processor,
            ident.instance,
            ident.module
        ),
    }
}

/// Spreads tuples over the instances of downstream bolts and sends them with
/// the sender's LWM. Every flush reaches every downstream instance, with tuples
/// or with a bare LWM, so no instance waits on a sender that has nothing for it.
pub(super) struct Router {
    from: usize,
    targets: Vec<Target>,
    shutdown: Shutdown,
    /// The LWM of the last flush (sending it again claims nothing new).
    last_lwm: Option<Clock>,
}

struct Target {
    grouping: Grouping,
    /// It takes the spout's dead letters, not its tuples.
    dead_letters: bool,
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
                    dead_letters: c.dead_letters,
                    inboxes: inboxes.get(first..first + n).map(<[_]>::to_vec).unwrap_or_default(),
                    buffers: (0..n).map(|_| TupleBatch::new()).collect(),
                }
            })
            .collect();
        Router { from, targets, shutdown, last_lwm: None }
    }

    pub(super) fn has_targets(&self) -> bool {
        !self.targets.is_empty()
    }

    /// Buffers one tuple (`item`: its key and value as framed, `key` read
    /// from it); returns true when a buffer is full enough to flush.
    fn push(&mut self, key: &[u8], item: &[u8], origin: Origin, dead_letter: bool) -> bool {
        let mut full = false;
        for t in self.targets.iter_mut().filter(|t| t.dead_letters == dead_letter) {
            let n = t.buffers.len() as u32;
            let chosen = match t.grouping {
                Grouping::Key => t.buffers.get_mut(key_instance(key, n) as usize),
                Grouping::Global => t.buffers.first_mut(),
                Grouping::Broadcast => {
                    for b in &mut t.buffers {
                        b.push_framed(item, origin);
                        full |= b.len() >= FLUSH_TUPLES || b.byte_len() >= FLUSH_BYTES;
                    }
                    None
                }
            };
            if let Some(b) = chosen {
                b.push_framed(item, origin);
                full |= b.len() >= FLUSH_TUPLES || b.byte_len() >= FLUSH_BYTES;
            }
        }
        full
    }

    /// Routes every tuple of an emitted batch; `origin_of(i)` maps input
    /// indexes to origins. Full buffers are sent on the way, with the LWM
    /// last sent, so a large batch never sits whole in the buffers.
    pub(super) fn route_emitted(
        &mut self,
        emitted: &[u8],
        origin_of: impl Fn(u32) -> Option<Origin>,
    ) -> Result<(), RouteError> {
        let abi = |e: abi::FrameError| RouteError::Abi(e.to_string());
        let mut r = abi::BatchReader::new(emitted).map_err(abi)?;
        for _ in 0..r.count() {
            let input = r.u32().map_err(abi)?;
            let start = r.position();
            let key = r.bytes().map_err(abi)?;
            let value = r.bytes().map_err(abi)?;
            // The emitted (key, value) framing is the tuple batch's: copied whole.
            let item = r.slice(start, r.position());
            let origin = origin_of(input).ok_or_else(|| {
                RouteError::Abi(format!("emitted a tuple for input {input}, which is not in the batch"))
            })?;
            if key.len() + value.len() > MAX_TUPLE {
                let n = key.len() + value.len();
                return Err(RouteError::Abi(format!("emitted a tuple of {n} bytes; the most is {MAX_TUPLE}")));
            }
            if self.push(key, item, origin, false) {
                self.flush_if_full().map_err(|_| RouteError::Stopped)?;
            }
        }
        r.expect_end().map_err(abi)
    }

    /// Routes one dead letter (a record the deserializer could not take) to
    /// the bolts that read the spout's dead letters.
    pub(super) fn route_dead_letter(&mut self, key: &[u8], value: &[u8], origin: Origin) -> Result<(), Undelivered> {
        let item = TupleBatch::framed_item(key, value);
        if self.push(key, &item, origin, true) {
            self.flush_if_full()?;
        }
        Ok(())
    }

    /// Sends the buffers now if one is full, with the LWM last sent: a
    /// sender whose LWM stays put (one of its inputs is slow) does not
    /// buffer without bound. Before any flush, nothing is sent.
    pub(super) fn flush_if_full(&mut self) -> Result<(), Undelivered> {
        let full = self
            .targets
            .iter()
            .any(|t| t.buffers.iter().any(|b| b.len() >= FLUSH_TUPLES || b.byte_len() >= FLUSH_BYTES));
        match self.last_lwm.clone() {
            Some(lwm) if full => self.flush(&lwm),
            _ => Ok(()),
        }
    }

    /// Sends every buffer, and a bare LWM where a buffer is empty unless
    /// that instance has this LWM already: control messages go out when
    /// the LWM moves, not on every heartbeat, so an idle topology is quiet.
    pub(super) fn flush(&mut self, lwm: &Clock) -> Result<(), Undelivered> {
        let news = self.last_lwm.as_ref() != Some(lwm);
        if news {
            self.last_lwm = Some(lwm.clone());
        }
        for t in &mut self.targets {
            for (b, tx) in t.buffers.iter_mut().zip(&t.inboxes) {
                let msg = if b.is_empty() {
                    if !news {
                        continue;
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::plan::Consumer;

    #[test]
    fn full_buffers_go_out_without_waiting_for_a_new_lwm() {
        let plan = Plan {
            partitions: Vec::new(),
            bolt_base: vec![0],
            bolt_parallelism: vec![2],
            spout_consumers: Vec::new(),
            bolt_consumers: Vec::new(),
            bolt_inputs: Vec::new(),
            bolt_reach: Vec::new(),
        };
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..2).map(|_| crossbeam_channel::unbounded()).unzip();
        let consumers = [Consumer { bolt: 0, grouping: Grouping::Key, dead_letters: false }];
        let mut r = Router::new(7, &consumers, &plan, &txs, Shutdown::new());
        r.flush(&Clock(vec![5])).unwrap();
        let origin = |_| Some(Origin { partition: 0, offset: 9 });
        let mut sent = 0;
        for round in 0..100 {
            let mut w = abi::BatchWriter::new();
            for i in 0..200 {
                w.u32(0).bytes(format!("key{round}-{i}").as_bytes()).bytes(b"").end_item();
            }
            sent += 200;
            r.route_emitted(&w.finish(), origin).unwrap();
        }
        let mut received = 0;
        for rx in &rxs {
            while let Ok(m) = rx.try_recv() {
                if let ToBolt::Batch { batch, lwm, .. } = m {
                    assert!(batch.len() <= FLUSH_TUPLES + 200, "a buffer of {} tuples", batch.len());
                    assert_eq!(lwm, Clock(vec![5]), "no new LWM is claimed");
                    received += batch.len();
                }
            }
        }
        let buffered: usize = r.targets.iter().flat_map(|t| &t.buffers).map(TupleBatch::len).sum();
        assert_eq!(received + buffered, sent);
        assert!(buffered <= 2 * FLUSH_TUPLES);
    }
}
