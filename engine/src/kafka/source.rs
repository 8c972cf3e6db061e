//! One partition of a topic as a spout's input: [`KafkaSource`] reads from a
//! given offset (assign + seek, no consumer group), reads back when the broker
//! skipped part of a record batch, and turns persistent broker trouble into
//! an error.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, TopicPartitionList};

use super::{
    consumer, missing, offset_of, partition_id, remaining, topic_partitions, verified_highs, watermarks, why, Ctx,
    IDLE_PROBE_EVERY, PERSISTENT, POLL_SLICE, PROBE_TIMEOUT, TROUBLE_PROBE_EVERY, WARN_EVERY,
};
use crate::core::batch::RecordBatch;

/// The furthest a source reads back to find the start of the record batch holding its position.
const MAX_REWIND: u64 = 1 << 20;

/// Errors that have not stopped since `since`.
struct Trouble {
    since: Instant,
    warned: Instant,
}

/// One partition of a topic, read from a given offset (assign + seek, no consumer group).
pub struct KafkaSource {
    /// Boxed: it is most of the size, and sources sit in enums next to small variants.
    consumer: Box<BaseConsumer<Ctx>>,
    brokers: String,
    topic: String,
    partition: u32,
    position: u64,
    /// Until the first record arrives: the high watermark seen by `open` when it was above the start offset,
    /// so a first record past the start offset means records were lost.
    gap_check: Option<u64>,
    /// Where the current assignment started reading (at or below `position`).
    fetch_from: u64,
    /// The partition's first kept offset when it was opened.
    low: u64,
    /// How far below `position` the last re-read started (0: not yet).
    rewind: u64,
    trouble: Option<Trouble>,
    /// When a record or a successful probe last showed the broker alive.
    heard: Instant,
    probed: Instant,
}

impl KafkaSource {
    /// Connects to `brokers`, checks the topic exists and has `partition` (clear error otherwise,
    /// within `timeout`), assigns the partition at `offset`.
    ///
    /// An offset past the partition's end, or below its first kept record, is an error: either would skip
    /// records.
    pub fn open(brokers: &str, topic: &str, partition: u32, offset: u64, timeout: Duration) -> Result<KafkaSource> {
        let deadline = Instant::now() + timeout;
        let consumer = consumer(brokers, &partition.to_string())?;
        let n = topic_partitions(&consumer, brokers, topic, timeout)?.ok_or_else(|| missing(brokers, topic))?;
        if partition >= n {
            bail!("topic `{topic}` on {brokers} has {n} partitions, so partition {partition} does not exist");
        }
        let (low, listed) = watermarks(&consumer, brokers, topic, partition, remaining(deadline))?;
        let mut high = listed;
        if offset >= listed && listed > low {
            // The listed high watermark may leave out the rest of tansu's last record batch (see
            // `verified_highs`).
            let mut marks = vec![(0, 0); partition as usize];
            marks.push((low, listed));
            high = verified_highs(&consumer, topic, &marks, deadline)
                .with_context(|| format!("cannot read topic `{topic}` partition {partition} on {brokers}"))?
                .pop()
                .unwrap_or(listed);
        }
        // No retry brings records back: these end the topology.
        if offset > high {
            return Err(fatal(format!(
                "cannot read topic `{topic}` partition {partition} on {brokers} from offset {offset}: the partition \
                 ends at offset {high} (was the topic deleted and created again?)"
            )));
        }
        if offset < low {
            return Err(fatal(format!(
                "cannot read topic `{topic}` partition {partition} on {brokers} from offset {offset}: the broker has \
                 deleted the records before offset {low} (its retention is shorter than the time since the last \
                 complete round)"
            )));
        }
        // Only tansu lists too low a high watermark, and then `listed - 1` starts its last record batch:
        // a fetch from inside that batch returns nothing, so start that batch instead.
        let fetch_from = if offset < high && offset >= listed { listed.saturating_sub(1).max(low) } else { offset };
        let now = Instant::now();
        let mut s = KafkaSource {
            consumer: Box::new(consumer),
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            partition,
            position: offset,
            fetch_from,
            low,
            rewind: 0,
            gap_check: (fetch_from < high).then_some(high),
            trouble: None,
            heard: now,
            probed: now,
        };
        s.seek(fetch_from)?;
        Ok(s)
    }

    fn seek(&mut self, from: u64) -> Result<()> {
        let (topic, partition, brokers) = (self.topic.clone(), self.partition, self.brokers.clone());
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition_id(partition)?, offset_of(from)?)
            .and_then(|()| self.consumer.assign(&tpl))
            .with_context(|| format!("cannot assign topic `{topic}` partition {partition} on {brokers}"))?;
        self.fetch_from = from;
        Ok(())
    }

    /// The partition's end (its last stable offset) as the client's
    /// statistics last reported it, about once a second (no request).
    pub fn high_watermark(&self) -> Option<u64> {
        let key = (self.topic.clone(), partition_id(self.partition).ok()?);
        self.consumer.context().ends.lock().ok()?.get(&key).copied()
    }

    /// The offset of the next record it will hand out.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// e.g. "topic `lines` partition 3 on 127.0.0.1:9092"
    pub fn describe(&self) -> String {
        format!("topic `{}` partition {} on {}", self.topic, self.partition, self.brokers)
    }

    /// Clears `out` then fills it with up to `max_records` records / about `max_bytes` bytes,
    /// waiting at most `wait` for the first record (returns an empty batch if none came).
    /// Records with offset < position() are skipped (never handed out twice). If the FIRST record
    /// after open() has an offset > the requested start offset while the start offset was below
    /// the partition's high watermark, that is records lost by the broker (tansu's mid-batch
    /// fetch bug): return an error naming topic/partition and the missing offset range.
    /// Broker errors that persist longer than ~30 s become an error naming the broker; transient
    /// ones are retried (a tracing::warn! line is fine).
    ///
    /// While the broker is failing, or after 10 s without a record, a call may probe the broker and so
    /// take up to 2 s longer than `wait`. After an error the source is unusable: open a new one at
    /// [`position`](Self::position).
    pub fn read_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
        wait: Duration,
        out: &mut RecordBatch,
    ) -> Result<()> {
        out.framed.clear();
        out.framed.extend_from_slice(&[0; 4]);
        out.offsets.clear();
        out.end = self.position;
        let deadline = Instant::now() + wait;
        let mut bytes = 0usize;
        while out.offsets.len() < max_records && bytes < max_bytes {
            let timeout = if out.offsets.is_empty() { remaining(deadline).min(POLL_SLICE) } else { Duration::ZERO };
            match self.consumer.poll(timeout) {
                Some(Ok(msg)) => {
                    let offset = u64::try_from(msg.offset()).map_err(|_| {
                        anyhow!("{}: the broker sent a record with offset {}", self.describe(), msg.offset())
                    })?;
                    self.heard = Instant::now();
                    if self.trouble.take().is_some() {
                        tracing::info!("{}: the broker answers again", self.describe());
                    }
                    if self.gap_check.is_some() && offset > self.position {
                        self.reread_for_gap(offset)?;
                        continue;
                    }
                    self.gap_check = None;
                    if offset < self.position {
                        continue;
                    }
                    let payload = msg.payload().unwrap_or_default();
                    let len = u32::try_from(payload.len())
                        .map_err(|_| anyhow!("{}: record {offset} is larger than 4 GiB", self.describe()))?;
                    out.framed.extend_from_slice(&len.to_le_bytes());
                    out.framed.extend_from_slice(payload);
                    out.offsets.push(offset);
                    bytes = bytes.saturating_add(payload.len() + 4);
                    self.position = offset + 1;
                }
                Some(Err(e)) => self.failed(&e)?,
                None => {
                    if !out.offsets.is_empty() {
                        break;
                    }
                    self.check_health()?;
                    if Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
        let n = u32::try_from(out.offsets.len()).map_err(|_| anyhow!("too many records for one batch"))?;
        out.framed[..4].copy_from_slice(&n.to_le_bytes());
        out.end = self.position;
        Ok(())
    }

    /// The first record after a seek lies above the position. tansu 0.6
    /// skips the rest of a record batch when a fetch starts inside it: read
    /// again from further back (records below the position are skipped)
    /// until the batch holding the position comes whole, or fail when
    /// records were lost for good.
    fn reread_for_gap(&mut self, offset: u64) -> Result<()> {
        let high = self.gap_check.take().unwrap_or(offset);
        if self.fetch_from > self.low && self.rewind < MAX_REWIND {
            self.rewind = (self.rewind * 8).clamp(1024, MAX_REWIND);
            let from = self.position.saturating_sub(self.rewind).max(self.low);
            let (what, fetched) = (self.describe(), self.fetch_from);
            tracing::debug!("{what}: reading from {fetched} returned {offset} first; reading again from {from}");
            self.seek(from)?;
            self.gap_check = Some(high);
            return Ok(());
        }
        bail!(
            "{}: records {}..{offset} were lost: reading from offset {} (below the high watermark {high}) \
             returned offset {offset} first",
            self.describe(),
            self.position,
            self.fetch_from
        );
    }

    /// Probes the broker when it has been failing (to see whether it recovered), silent for long (to
    /// notice a dead broker librdkafka says nothing about).
    fn check_health(&mut self) -> Result<()> {
        let due = match self.trouble {
            Some(_) => self.probed.elapsed() >= TROUBLE_PROBE_EVERY,
            None => self.heard.elapsed() >= IDLE_PROBE_EVERY && self.probed.elapsed() >= IDLE_PROBE_EVERY,
        };
        if !due {
            return Ok(());
        }
        let probe = self.consumer.fetch_watermarks(&self.topic, partition_id(self.partition)?, PROBE_TIMEOUT);
        self.probed = Instant::now();
        match probe {
            // The broker answers, but the trouble lasts until a record arrives:
            // records that fail to decode must not look like a recovery.
            Ok(_) => {
                self.heard = self.probed;
                Ok(())
            }
            Err(e) => self.failed(&e),
        }
    }

    /// Handles an error from the broker: fatal ones and ones that have lasted [`PERSISTENT`] end the read.
    fn failed(&mut self, e: &KafkaError) -> Result<()> {
        let text = format!("{}{}", why(e), self.consumer.context().complaint());
        match e {
            KafkaError::PartitionEOF(_) => return Ok(()),
            KafkaError::MessageConsumption(
                RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed,
            ) => {
                return Err(fatal(format!(
                    "{}: the Kafka broker at {} refused this client's credentials: {text}",
                    self.describe(),
                    self.brokers
                )));
            }
            KafkaError::MessageConsumptionFatal(_) => {
                return Err(fatal(format!(
                    "{}: fatal error from the Kafka broker at {}: {text}",
                    self.describe(),
                    self.brokers
                )));
            }
            KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange) => {
                return Err(fatal(format!(
                    "{}: offset {} is no longer in the partition (was the topic deleted, or records removed?): {text}",
                    self.describe(),
                    self.position
                )));
            }
            KafkaError::MessageConsumption(code) if undecodable(*code) => {
                return Err(fatal(format!(
                    "{}: cannot decode the records at offset {}: {text} (a compression codec this build does not \
                     support, or damaged records)",
                    self.describe(),
                    self.position
                )));
            }
            _ => {}
        }
        let now = Instant::now();
        let what = self.describe();
        match &mut self.trouble {
            None => {
                tracing::warn!("{what}: {text}; retrying");
                self.trouble = Some(Trouble { since: now, warned: now });
            }
            Some(t) => {
                let lasted = now.duration_since(t.since);
                if lasted >= PERSISTENT {
                    bail!(
                        "the Kafka broker at {} has been failing for {}s while reading {}: {text}",
                        self.brokers,
                        lasted.as_secs(),
                        what
                    );
                }
                if now.duration_since(t.warned) >= WARN_EVERY {
                    tracing::warn!("{what}: still failing after {}s: {text}", lasted.as_secs());
                    t.warned = now;
                }
            }
        }
        Ok(())
    }
}

/// An error no retry can fix: the topology stops with it.
fn fatal(message: String) -> anyhow::Error {
    crate::error::error(crate::error::Domain::External, false, message)
}

/// Error codes of records that will never decode, however often they are fetched.
fn undecodable(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::NotImplemented
            | RDKafkaErrorCode::BadCompression
            | RDKafkaErrorCode::UnsupportedCompressionType
            | RDKafkaErrorCode::InvalidRecord
    )
}
