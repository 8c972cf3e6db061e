//! Credit-based flow control for a data channel between two workers
//! (distributed mode): pure and synchronous.
//!
//! The receiver owns a fixed number of buffers per channel and grants one
//! credit per free buffer; the sender sends a batch only while it holds a
//! credit and otherwise keeps it queued, up to a bound, which is what pushes
//! back on its upstream. So at most `buffers` batches are ever in flight or
//! waiting at the receiver, and at most `queue` wait at the sender: memory
//! stays bounded at any input rate, and one slow channel never blocks the
//! other channels sharing the same TCP connection.

use std::collections::VecDeque;

/// The sending side of one channel.
#[derive(Debug)]
pub struct Sender<T> {
    credits: u32,
    queue: VecDeque<T>,
    max_queue: usize,
}

/// What [`Sender::offer`] did with a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<T> {
    /// Send it now (a credit was used).
    Send(T),
    /// Queued until a credit arrives.
    Queued,
    /// The queue is full: the caller must stop pulling input (backpressure) and offer it again later.
    Full(T),
}

impl<T> Sender<T> {
    pub fn new(max_queue: usize) -> Sender<T> {
        Sender { credits: 0, queue: VecDeque::new(), max_queue }
    }

    /// Offers a batch: sent if a credit is free and nothing is queued ahead (FIFO).
    pub fn offer(&mut self, batch: T) -> Offer<T> {
        if self.queue.is_empty() && self.credits > 0 {
            self.credits -= 1;
            Offer::Send(batch)
        } else if self.queue.len() < self.max_queue {
            self.queue.push_back(batch);
            Offer::Queued
        } else {
            Offer::Full(batch)
        }
    }

    /// The receiver granted `n` credits: returns the queued batches that may now go, in order.
    pub fn grant(&mut self, n: u32) -> Vec<T> {
        self.credits = self.credits.saturating_add(n);
        let mut out = Vec::new();
        while self.credits > 0 {
            let Some(b) = self.queue.pop_front() else { break };
            self.credits -= 1;
            out.push(b);
        }
        out
    }

    /// Batches waiting for credit (reported to the receiver as backlog).
    pub fn backlog(&self) -> usize {
        self.queue.len()
    }

    pub fn credits(&self) -> u32 {
        self.credits
    }

    /// A new connection epoch: credits never carry over; queued batches are dropped
    /// (recovery replays them from the snapshot clock).
    pub fn reset(&mut self) {
        self.credits = 0;
        self.queue.clear();
    }
}

/// The receiving side of one channel.
#[derive(Debug)]
pub struct Receiver {
    buffers: u32,
    /// Buffers holding batches not yet processed.
    used: u32,
    /// Credits granted and not yet consumed by an arriving batch.
    outstanding: u32,
}

/// A protocol violation: the peer sent without credit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the peer sent a batch without credit ({used} of {buffers} buffers in use)")]
pub struct Overrun {
    pub used: u32,
    pub buffers: u32,
}

impl Receiver {
    pub fn new(buffers: u32) -> Receiver {
        Receiver { buffers, used: 0, outstanding: 0 }
    }

    /// Credits to grant now (all free buffers not yet granted).
    pub fn grantable(&mut self) -> u32 {
        let free = self.buffers - self.used - self.outstanding;
        self.outstanding += free;
        free
    }

    /// A batch arrived.
    pub fn arrived(&mut self) -> Result<(), Overrun> {
        if self.outstanding == 0 {
            return Err(Overrun { used: self.used, buffers: self.buffers });
        }
        self.outstanding -= 1;
        self.used += 1;
        Ok(())
    }

    /// A batch was processed; its buffer is free again.
    pub fn processed(&mut self) {
        self.used = self.used.saturating_sub(1);
    }

    pub fn in_use(&self) -> u32 {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    proptest! {
        /// Under any interleaving of producing, granting, delivering and
        /// processing: batches arrive in order, none is lost or duplicated, the
        /// receiver never holds more than its buffers, the sender never queues
        /// more than its bound, and a well-behaved sender never overruns.
        #[test]
        fn bounded_ordered_lossless(script in prop::collection::vec(0u8..4, 0..500), buffers in 1u32..5, max_queue in 1usize..5) {
            let mut tx: Sender<u32> = Sender::new(max_queue);
            let mut rx = Receiver::new(buffers);
            let mut wire: VecDeque<u32> = VecDeque::new();
            let mut at_receiver: VecDeque<u32> = VecDeque::new();
            let mut next = 0u32;
            let mut pending: Option<u32> = None;
            let mut delivered = Vec::new();
            for op in script {
                match op {
                    0 => {
                        let b = pending.take().unwrap_or_else(|| { next += 1; next - 1 });
                        match tx.offer(b) {
                            Offer::Send(b) => wire.push_back(b),
                            Offer::Queued => {}
                            Offer::Full(b) => pending = Some(b),
                        }
                    }
                    1 => { let n = rx.grantable(); wire.extend(tx.grant(n)); }
                    2 => if let Some(b) = wire.pop_front() {
                        prop_assert!(rx.arrived().is_ok());
                        at_receiver.push_back(b);
                    },
                    _ => if let Some(b) = at_receiver.pop_front() {
                        rx.processed();
                        delivered.push(b);
                    },
                }
                prop_assert!(rx.in_use() <= buffers);
                prop_assert!(wire.len() + at_receiver.len() <= buffers as usize);
                prop_assert!(tx.backlog() <= max_queue);
            }
            let expect: Vec<u32> = (0..delivered.len() as u32).collect();
            prop_assert_eq!(delivered, expect);
        }
    }

    #[test]
    fn sending_without_credit_is_an_overrun() {
        let mut rx = Receiver::new(1);
        assert!(rx.arrived().is_err());
        assert_eq!(rx.grantable(), 1);
        assert!(rx.arrived().is_ok());
        assert_eq!(rx.grantable(), 0);
        assert!(rx.arrived().is_err());
        rx.processed();
        assert_eq!(rx.grantable(), 1);
    }
}
