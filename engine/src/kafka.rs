//! Kafka topics as input: one [`KafkaSource`] reads one partition from a given
//! offset (assign + seek, never a consumer group, no offsets committed — the
//! engine's snapshots hold the positions), and [`produce`] writes the lines of
//! files into a topic.
//!
//! The record offset of a Kafka record is its Kafka offset, so a spout resumes
//! from a clock by assigning the partition at that offset.
//!
//! Written against rdkafka 0.39 and the tansu 0.6 broker, which has these
//! quirks: topics are never created automatically (so [`produce`] creates
//! them with the admin API); every fetch waits about half of
//! `fetch.wait.max.ms` even when data is there (so it is set low); and a
//! fetch that starts in the middle of a record batch skips the rest of that
//! batch, which [`KafkaSource::read_batch`] detects and reports instead of
//! silently losing records. librdkafka retries a dead broker forever, so every
//! call here has its own deadline.

use std::fs::File;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};

use crate::spout::RecordBatch;

/// How long broker errors may last before a read gives up.
const PERSISTENT: Duration = Duration::from_secs(30);
/// How long one health probe of the broker may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// While errors occur, how often the broker is probed to see if it recovered.
const TROUBLE_PROBE_EVERY: Duration = Duration::from_secs(2);
/// How long a partition may stay silent before the broker is probed.
const IDLE_PROBE_EVERY: Duration = Duration::from_secs(10);
/// How often a persisting error is repeated in the log.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// The longest single wait inside [`KafkaSource::read_batch`].
const POLL_SLICE: Duration = Duration::from_millis(100);
/// Deadline for the metadata and admin calls of [`produce`].
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long librdkafka may try to deliver one produced record.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// Partitions of a topic created by [`produce`] when none are asked for.
const DEFAULT_PARTITIONS: u32 = 4;

/// The context of every client made here: librdkafka's log goes to `tracing`
/// at debug level (its complaints would otherwise repeat on every retry), the
/// last complaint is kept for error messages, and delivery reports of
/// [`produce`] are counted.
#[derive(Default)]
struct Ctx {
    /// The last few distinct warnings and errors librdkafka logged or reported, oldest first.
    complaints: Mutex<Vec<String>>,
    acked: AtomicU64,
    failed: AtomicU64,
    /// The lowest record index whose delivery failed, and why.
    first_failure: Mutex<Option<(usize, String)>>,
}

impl Ctx {
    fn note(&self, text: &str) {
        // "... Connection refused (after 0ms in state CONNECT, 1 identical error(s) suppressed)": the first part.
        // Log lines start with "[thrd:...]: ", error reasons do not.
        let text = match text.strip_prefix("[thrd:").and_then(|t| t.split_once("]: ")) {
            Some((_, rest)) => rest,
            None => text,
        };
        let text = text.split(" (after ").next().unwrap_or(text).trim();
        if let Ok(mut c) = self.complaints.lock() {
            c.retain(|old| old != text);
            c.push(text.to_string());
            if c.len() > 3 {
                c.remove(0);
            }
        }
    }

    /// `" (librdkafka: ...)"` with the last complaints, or nothing.
    fn complaint(&self) -> String {
        match self.complaints.lock() {
            Ok(c) if !c.is_empty() => format!(" (librdkafka: {})", c.join("; ")),
            _ => String::new(),
        }
    }
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            self.note(log_message);
        }
        tracing::debug!(target: "librdkafka", "{fac} {log_message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", "{error}: {reason}");
        self.note(reason);
    }
}

impl ConsumerContext for Ctx {}

impl ProducerContext for Ctx {
    /// The index of the record (over all files, from 0).
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        match result {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                if self.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::debug!("delivery of record {index} failed: {e}");
                }
                if let Ok(mut first) = self.first_failure.lock() {
                    if first.as_ref().is_none_or(|(i, _)| index < *i) {
                        *first = Some((index, why(e)));
                    }
                }
            }
        }
    }
}

/// The error code and its description when there is one ("BrokerTransportFailure (Local: Broker transport
/// failure)"), else rdkafka's text.
fn why(e: &KafkaError) -> String {
    match e.rdkafka_error_code() {
        Some(code) => code.to_string(),
        None => e.to_string(),
    }
}

/// A group id no other client uses; it is needed by `assign` but no group is ever joined.
fn unique_group(tag: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("hailstorm-{}-{tag}-{nanos}-{n}", std::process::id())
}

fn consumer(brokers: &str, tag: &str) -> Result<BaseConsumer<Ctx>> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique_group(tag))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "error")
        .set("allow.auto.create.topics", "false")
        .set("fetch.wait.max.ms", "20")
        .set("fetch.max.bytes", "16777216")
        .set("max.partition.fetch.bytes", "4194304")
        .set("queued.max.messages.kbytes", "16384")
        .set("log.connection.close", "false")
        .create_with_context(Ctx::default())
        .with_context(|| format!("cannot create a Kafka consumer for {brokers}"))
}

fn partition_id(partition: u32) -> Result<i32> {
    i32::try_from(partition).map_err(|_| anyhow!("partition {partition} is out of Kafka's range"))
}

fn offset_of(offset: u64) -> Result<Offset> {
    Ok(Offset::Offset(i64::try_from(offset).map_err(|_| anyhow!("offset {offset} is out of Kafka's range"))?))
}

fn unreachable(c: &BaseConsumer<Ctx>, brokers: &str, timeout: Duration, e: &KafkaError) -> anyhow::Error {
    // librdkafka queues its log lines and error reasons (such as "Connection refused") as events: take them.
    for _ in 0..100 {
        c.poll(Duration::ZERO);
    }
    anyhow!("cannot reach the Kafka broker at {brokers} within {timeout:?}: {}{}", why(e), c.context().complaint())
}

fn missing(brokers: &str, topic: &str) -> anyhow::Error {
    anyhow!("topic `{topic}` does not exist on {brokers}; create it with `hailstorm produce --topic {topic} ...`")
}

/// The partition count of `topic`, or `None` when the broker says it does not exist.
fn topic_partitions(c: &BaseConsumer<Ctx>, brokers: &str, topic: &str, timeout: Duration) -> Result<Option<u32>> {
    let md = c.fetch_metadata(Some(topic), timeout).map_err(|e| unreachable(c, brokers, timeout, &e))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else { return Ok(None) };
    if let Some(err) = t.error() {
        let code = RDKafkaErrorCode::from(err);
        if code == RDKafkaErrorCode::UnknownTopicOrPartition {
            return Ok(None);
        }
        bail!("the Kafka broker at {brokers} reports an error for topic `{topic}`: {code}");
    }
    if t.partitions().is_empty() {
        return Ok(None);
    }
    let n = u32::try_from(t.partitions().len())
        .map_err(|_| anyhow!("topic `{topic}` on {brokers} has too many partitions"))?;
    Ok(Some(n))
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Low and high watermark of one partition.
fn watermarks(
    c: &BaseConsumer<Ctx>,
    brokers: &str,
    topic: &str,
    partition: u32,
    timeout: Duration,
) -> Result<(u64, u64)> {
    let (low, high) = c.fetch_watermarks(topic, partition_id(partition)?, timeout).map_err(|e| {
        anyhow!(
            "cannot read the offsets of topic `{topic}` partition {partition} from the Kafka broker at {brokers} \
             within {timeout:?}: {}{}",
            why(&e),
            c.context().complaint()
        )
    })?;
    let low = u64::try_from(low).unwrap_or(0);
    let high = u64::try_from(high)
        .map_err(|_| anyhow!("the Kafka broker at {brokers} gave a negative high watermark {high} for topic `{topic}` partition {partition}"))?;
    Ok((low, high))
}

/// Corrects the high watermarks the broker lists (`marks[p]` is `(low, high)` of partition `p`, from
/// `fetch_watermarks`) by reading the records at `high - 1`, and returns the corrected highs.
///
/// tansu 0.6 answers ListOffsets(latest) with the base offset of the newest record batch plus one, which
/// falls short of the real high watermark when batches hold several records. `high - 1` is then the start of
/// that batch, so reading from there returns the whole batch (librdkafka queues a batch at once), and its
/// last record shows the real high watermark. On other brokers this reads a single record. A partition
/// that returns nothing within 2 s (or by `deadline`) keeps the listed value.
fn verified_highs(c: &BaseConsumer<Ctx>, topic: &str, marks: &[(u64, u64)], deadline: Instant) -> Result<Vec<u64>> {
    let mut highs: Vec<u64> = marks.iter().map(|&(_, high)| high).collect();
    let mut seen = vec![true; marks.len()];
    let mut tpl = TopicPartitionList::new();
    for (p, &(low, high)) in marks.iter().enumerate() {
        if high > low {
            tpl.add_partition_offset(topic, partition_id(u32::try_from(p)?)?, offset_of(high - 1)?)?;
            if let Some(s) = seen.get_mut(p) {
                *s = false;
            }
        }
    }
    if tpl.count() == 0 {
        return Ok(highs);
    }
    c.assign(&tpl)?;
    let note = |highs: &mut Vec<u64>, seen: &mut Vec<bool>, partition: i32, offset: i64| {
        let (Ok(p), Ok(offset)) = (usize::try_from(partition), u64::try_from(offset)) else { return };
        if let (Some(high), Some(s)) = (highs.get_mut(p), seen.get_mut(p)) {
            *high = (*high).max(offset + 1);
            *s = true;
        }
    };
    let end = Instant::now() + remaining(deadline).min(PROBE_TIMEOUT);
    while seen.contains(&false) && !remaining(end).is_zero() {
        if let Some(Ok(msg)) = c.poll(remaining(end).min(POLL_SLICE)) {
            note(&mut highs, &mut seen, msg.partition(), msg.offset());
        }
    }
    // Take the rest of the batches that came with the first records.
    while let Some(Ok(msg)) = c.poll(Duration::ZERO) {
        note(&mut highs, &mut seen, msg.partition(), msg.offset());
    }
    c.unassign()?;
    for (p, (&high, &(_, listed))) in highs.iter().zip(marks).enumerate() {
        if high != listed {
            tracing::debug!(
                "topic `{topic}` partition {p}: the broker lists high watermark {listed}, records go up to {high}"
            );
        }
    }
    Ok(highs)
}

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
        if offset > high {
            bail!(
                "cannot read topic `{topic}` partition {partition} on {brokers} from offset {offset}: the partition \
                 ends at offset {high} (was the topic deleted and created again?)"
            );
        }
        if offset < low {
            bail!(
                "cannot read topic `{topic}` partition {partition} on {brokers} from offset {offset}: the broker has \
                 deleted the records before offset {low}"
            );
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
                    if let Some(high) = self.gap_check.take() {
                        if offset > self.position {
                            // tansu 0.6 skips the rest of a record batch when a fetch starts inside it:
                            // read again from further back (records below the position are skipped),
                            // until the batch holding the position comes whole.
                            if self.fetch_from > self.low && self.rewind < MAX_REWIND {
                                self.rewind = (self.rewind * 8).clamp(1024, MAX_REWIND);
                                let from = self.position.saturating_sub(self.rewind).max(self.low);
                                tracing::debug!(
                                    "{}: reading from {} returned {offset} first; reading again from {from}",
                                    self.describe(),
                                    self.fetch_from
                                );
                                self.seek(from)?;
                                self.gap_check = Some(high);
                                continue;
                            }
                            bail!(
                                "{}: records {}..{offset} were lost: reading from offset {} (below the high \
                                 watermark {high}) returned offset {offset} first",
                                self.describe(),
                                self.position,
                                self.fetch_from
                            );
                        }
                    }
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
            Ok(_) => {
                self.heard = self.probed;
                if self.trouble.take().is_some() {
                    tracing::info!("{}: the broker answers again", self.describe());
                }
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
            KafkaError::MessageConsumptionFatal(_) => {
                bail!("{}: fatal error from the Kafka broker at {}: {text}", self.describe(), self.brokers)
            }
            KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange) => {
                bail!(
                    "{}: offset {} is no longer in the partition (was the topic deleted, or records removed?): {text}",
                    self.describe(),
                    self.position
                )
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

/// Number of partitions of `topic`. Clear errors: broker unreachable within `timeout`
/// ("cannot reach the Kafka broker at ADDR within 10s: ..."), topic missing ("topic `X` does not exist on
/// ADDR; create it with `hailstorm produce --topic X ...`").
pub fn partition_count(brokers: &str, topic: &str, timeout: Duration) -> Result<u32> {
    let c = consumer(brokers, "meta")?;
    topic_partitions(&c, brokers, topic, timeout)?.ok_or_else(|| missing(brokers, topic))
}

/// High watermark (next offset to be written) of every partition, in partition order.
///
/// Each listed high watermark is checked by reading the record before it, because tansu 0.6 lists too low
/// a value when record batches hold several records.
pub fn high_watermarks(brokers: &str, topic: &str, timeout: Duration) -> Result<Vec<u64>> {
    let deadline = Instant::now() + timeout;
    let c = consumer(brokers, "meta")?;
    let n = topic_partitions(&c, brokers, topic, timeout)?.ok_or_else(|| missing(brokers, topic))?;
    let marks = (0..n).map(|p| watermarks(&c, brokers, topic, p, remaining(deadline))).collect::<Result<Vec<_>>>()?;
    verified_highs(&c, topic, &marks, deadline).with_context(|| format!("cannot read topic `{topic}` on {brokers}"))
}

/// What [`produce`] wrote.
#[derive(Debug, Clone, Copy)]
pub struct Produced {
    /// Records written (one per line).
    pub records: u64,
    /// Partitions of the topic, which the records were spread over.
    pub partitions: u32,
    /// Time from the first record sent until the last was acknowledged (topic setup not included).
    pub elapsed: Duration,
}

/// Runs a future to completion on this thread, or gives up at `deadline`.
fn block_on<F: Future>(fut: F, deadline: Instant) -> Option<F::Output> {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = TaskContext::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
        let left = remaining(deadline);
        if left.is_zero() {
            return None;
        }
        std::thread::park_timeout(left);
    }
}

/// Returns the partition count of `topic`, creating it with `partitions` (default 4) if it is missing.
fn ensure_topic(brokers: &str, topic: &str, partitions: Option<u32>) -> Result<u32> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let c = consumer(brokers, "meta")?;
    if let Some(n) = topic_partitions(&c, brokers, topic, SETUP_TIMEOUT)? {
        if let Some(want) = partitions.filter(|&want| want != n) {
            tracing::warn!("topic `{topic}` on {brokers} already has {n} partitions, not {want}; using {n}");
        }
        return Ok(n);
    }
    let want = partitions.unwrap_or(DEFAULT_PARTITIONS);
    if want == 0 {
        bail!("cannot create topic `{topic}` with 0 partitions");
    }
    let admin: AdminClient<Ctx> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("log.connection.close", "false")
        .create_with_context(Ctx::default())
        .with_context(|| format!("cannot create a Kafka admin client for {brokers}"))?;
    let client = admin.inner();
    let count = i32::try_from(want).map_err(|_| anyhow!("{want} partitions are too many for Kafka"))?;
    let new = NewTopic::new(topic, count, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().request_timeout(Some(SETUP_TIMEOUT)).operation_timeout(Some(SETUP_TIMEOUT));
    let results = block_on(admin.create_topics(&[new], &opts), deadline)
        .ok_or_else(|| {
            anyhow!(
                "the Kafka broker at {brokers} did not create topic `{topic}` within {SETUP_TIMEOUT:?}{}",
                client.context().complaint()
            )
        })?
        .map_err(|e| {
            anyhow!("cannot create topic `{topic}` on {brokers}: {}{}", why(&e), client.context().complaint())
        })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => bail!("cannot create topic `{topic}` with {want} partitions on {brokers}: {code}"),
        }
    }
    // The topic may take a moment to show in the metadata.
    loop {
        if let Some(n) = topic_partitions(&c, brokers, topic, remaining(deadline).max(Duration::from_millis(100)))? {
            if partitions.is_none_or(|want| want == n) {
                tracing::info!("created topic `{topic}` with {n} partitions on {brokers}");
            }
            return Ok(n);
        }
        if remaining(deadline).is_zero() {
            bail!("topic `{topic}` was created on {brokers} but does not show in its metadata after {SETUP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Calls `f` with every line of `r`, without its `\n`, until it returns `false`. A last line without `\n`
/// counts and empty lines are lines too; an empty input has none. Returns the number of lines taken.
fn for_each_line(mut r: impl BufRead, mut f: impl FnMut(&[u8]) -> Result<bool>) -> Result<u64> {
    let mut line = Vec::new();
    let mut n = 0;
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(n);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if !f(&line)? {
            return Ok(n);
        }
        n += 1;
    }
}

/// Creates the topic with `partitions` partitions if missing (default 4 when None; if it exists
/// and `partitions` differs, just warn and use the existing count), then writes every line of
/// every file (without its '\n'; a last line without '\n' counts; empty lines are records too)
/// as one record with no key, spreading lines round-robin over partitions
/// (explicit partition per record). Waits until every record is acknowledged (flush), and
/// returns an error naming file and line if any delivery failed. `records_per_batch` sets
/// librdkafka's batch.num.messages (tansu 0.6 cannot resume inside a batch, so 1 lets a reader start
/// at any offset).
pub fn produce(
    brokers: &str,
    topic: &str,
    partitions: Option<u32>,
    files: &[PathBuf],
    records_per_batch: usize,
) -> Result<Produced> {
    let n = ensure_topic(brokers, topic, partitions)?;
    let producer: BaseProducer<Ctx> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("batch.num.messages", records_per_batch.clamp(1, 1_000_000).to_string())
        .set("message.timeout.ms", DELIVERY_TIMEOUT.as_millis().to_string())
        // Few records waiting at a time: with one-record batches a slow broker
        // would otherwise time out a deep queue instead of slowing the producer.
        .set("queue.buffering.max.messages", (records_per_batch.clamp(1, 1000) * 2000).to_string())
        .set("log.connection.close", "false")
        .create_with_context(Ctx::default())
        .with_context(|| format!("cannot create a Kafka producer for {brokers}"))?;
    let ctx = Arc::clone(producer.context());
    let start = Instant::now();
    // The index of each file's first record, for naming the line of a failed record.
    let mut firsts: Vec<usize> = Vec::with_capacity(files.len());
    let mut index = 0usize;
    let partitions = usize::try_from(n).map_err(|_| anyhow!("topic `{topic}` has too many partitions"))?;
    for path in files {
        firsts.push(index);
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut line_no = 0u64;
        for_each_line(BufReader::with_capacity(1 << 20, file), |line| {
            line_no += 1;
            let partition = partition_id(u32::try_from(index % partitions)?)?;
            let mut record =
                BaseRecord::<(), [u8], usize>::with_opaque_to(topic, index).payload(line).partition(partition);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        producer.poll(Duration::from_millis(5));
                        if ctx.failed.load(Ordering::Relaxed) > 0 {
                            return Ok(false); // reported below
                        }
                    }
                    Err((e, _)) => bail!("cannot send line {line_no} to topic `{topic}` on {brokers}: {}", why(&e)),
                }
            }
            index += 1;
            if index.is_multiple_of(1024) {
                producer.poll(Duration::ZERO);
            }
            Ok(true)
        })
        .with_context(|| format!("producing {} into topic `{topic}` on {brokers}", path.display()))?;
        if ctx.failed.load(Ordering::Relaxed) > 0 {
            break;
        }
    }
    let flushed = producer.flush(DELIVERY_TIMEOUT + Duration::from_secs(10));
    producer.poll(Duration::ZERO);
    let elapsed = start.elapsed();
    let failed = ctx.failed.load(Ordering::Relaxed);
    if failed > 0 {
        let (i, reason) = ctx.first_failure.lock().ok().and_then(|f| f.clone()).unwrap_or((0, String::new()));
        let f = firsts.partition_point(|&first| first <= i).saturating_sub(1);
        let first = firsts.get(f).copied().unwrap_or(0);
        let file = files.get(f).map(|p| p.display().to_string()).unwrap_or_default();
        bail!(
            "{failed} record(s) could not be written to topic `{topic}` on {brokers}; the first is {file} line {}: \
             {reason}{}",
            i - first + 1,
            ctx.complaint()
        );
    }
    if let Err(e) = flushed {
        bail!(
            "the Kafka broker at {brokers} did not acknowledge {} record(s) of topic `{topic}` within {:?}: {}{}",
            producer.in_flight_count(),
            DELIVERY_TIMEOUT + Duration::from_secs(10),
            why(&e),
            ctx.complaint()
        );
    }
    let records = index as u64;
    let acked = ctx.acked.load(Ordering::Relaxed);
    if acked != records {
        bail!("the Kafka broker at {brokers} acknowledged {acked} of {records} records of topic `{topic}`");
    }
    Ok(Produced { records, partitions: n, elapsed })
}

/// Reads every record of every partition from the beginning to the high watermark as fast as
/// possible with a plain rdkafka consumer (assign, no WASM, no engine) and returns
/// (records, bytes, elapsed). Used by a benchmark as the raw read rate of a topic.
///
/// Each partition is read by its own consumer on its own thread, as the engine's spouts do (one consumer
/// for all partitions is several times slower against tansu). `timeout` bounds the setup and every wait
/// for the next record. `bytes` counts payload bytes; `elapsed` runs from the assignments to the last record.
pub fn raw_read(brokers: &str, topic: &str, timeout: Duration) -> Result<(u64, u64, Duration)> {
    let deadline = Instant::now() + timeout;
    let c = consumer(brokers, "raw")?;
    let n = topic_partitions(&c, brokers, topic, timeout)?.ok_or_else(|| missing(brokers, topic))?;
    let marks = (0..n).map(|p| watermarks(&c, brokers, topic, p, remaining(deadline))).collect::<Result<Vec<_>>>()?;
    let highs = verified_highs(&c, topic, &marks, deadline)
        .with_context(|| format!("cannot read topic `{topic}` on {brokers}"))?;
    let mut readers = Vec::new();
    for (p, (&(low, _), &high)) in marks.iter().zip(&highs).enumerate() {
        if low < high {
            readers.push((u32::try_from(p)?, low, high, consumer(brokers, &format!("raw{p}"))?));
        }
    }
    let start = Instant::now();
    let counts: Vec<Result<(u64, u64)>> = std::thread::scope(|scope| {
        let threads: Vec<_> = readers
            .iter()
            .map(|(p, low, high, c)| scope.spawn(move || drain(c, brokers, topic, *p, *low, *high, timeout)))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap_or_else(|_| Err(anyhow!("a reader thread panicked")))).collect()
    });
    let elapsed = start.elapsed();
    let (mut records, mut bytes) = (0, 0);
    for count in counts {
        let (r, b) = count?;
        records += r;
        bytes += b;
    }
    Ok((records, bytes, elapsed))
}

/// Reads partition `p` from `low` up to `high` with `c`; returns (records, payload bytes).
fn drain(
    c: &BaseConsumer<Ctx>,
    brokers: &str,
    topic: &str,
    p: u32,
    low: u64,
    high: u64,
    timeout: Duration,
) -> Result<(u64, u64)> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition_id(p)?, offset_of(low)?)
        .and_then(|()| c.assign(&tpl))
        .with_context(|| format!("cannot assign topic `{topic}` partition {p} on {brokers}"))?;
    let (mut records, mut bytes, mut next) = (0u64, 0u64, low);
    let mut heard = Instant::now();
    while next < high {
        match c.poll(POLL_SLICE) {
            Some(Ok(msg)) => {
                heard = Instant::now();
                let offset = u64::try_from(msg.offset()).unwrap_or(0);
                if offset < next {
                    continue;
                }
                records += 1;
                bytes += msg.payload().map_or(0, |b| b.len() as u64);
                next = offset + 1;
            }
            Some(Err(e)) => {
                if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
                    bail!("fatal error reading topic `{topic}` partition {p} on {brokers}: {}", why(&e));
                }
                tracing::warn!("reading topic `{topic}` partition {p} on {brokers}: {}; retrying", why(&e));
            }
            None => {}
        }
        if heard.elapsed() >= timeout {
            bail!(
                "reading topic `{topic}` partition {p} on {brokers}: no record for {timeout:?} at offset {next} of \
                 {high}{}",
                c.context().complaint()
            );
        }
    }
    Ok((records, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_like_the_file_spout() {
        let lines = |input: &[u8]| {
            let mut v = Vec::new();
            for_each_line(input, |l| {
                v.push(l.to_vec());
                Ok(true)
            })
            .unwrap();
            v
        };
        assert!(lines(b"").is_empty());
        assert_eq!(lines(b"a\n\nb c\ntail"), vec![b"a".to_vec(), vec![], b"b c".to_vec(), b"tail".to_vec()]);
        assert_eq!(lines(b"\n"), vec![Vec::<u8>::new()]);
        assert_eq!(lines(b"x\n"), vec![b"x".to_vec()]);
    }

    #[test]
    fn a_dead_broker_is_a_clear_error_within_the_timeout() {
        // Port 9 (discard) is closed on loopback.
        let t = Instant::now();
        let e = partition_count("127.0.0.1:9", "t", Duration::from_secs(2)).unwrap_err().to_string();
        assert!(e.starts_with("cannot reach the Kafka broker at 127.0.0.1:9 within 2s: "), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    /// Needs the broker `scripts/services.sh start` runs (as `scripts/test.sh` does);
    /// HAILSTORM_TEST_KAFKA names another one.
    #[test]
    fn round_trip_against_a_real_broker() {
        let brokers = std::env::var("HAILSTORM_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_string());
        let topic = format!("hailstorm-test-{}", unique_group("t"));
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        let b = dir.path().join("b.txt");
        let mut text = String::new();
        for i in 0..1000 {
            text.push_str(&format!("line {i}\n"));
        }
        std::fs::write(&a, &text).unwrap();
        std::fs::write(&b, b"x\n\nlast").unwrap();
        let p = produce(&brokers, &topic, Some(3), &[a, b], 1).unwrap();
        assert_eq!((p.records, p.partitions), (1003, 3));
        assert_eq!(partition_count(&brokers, &topic, Duration::from_secs(10)).unwrap(), 3);
        let highs = high_watermarks(&brokers, &topic, Duration::from_secs(10)).unwrap();
        assert_eq!(highs, vec![335, 334, 334]);
        let (records, _, _) = raw_read(&brokers, &topic, Duration::from_secs(10)).unwrap();
        assert_eq!(records, 1003);

        // Partition 1 holds lines 1, 4, 7, ... of the concatenated input; read it from the middle.
        let mut src = KafkaSource::open(&brokers, &topic, 1, 100, Duration::from_secs(10)).unwrap();
        let mut batch = RecordBatch::default();
        let mut got = Vec::new();
        while src.position() < highs[1] {
            src.read_batch(64, 1 << 20, Duration::from_secs(5), &mut batch).unwrap();
            assert!(!batch.is_empty(), "no records from {}", src.describe());
            assert_eq!(batch.end, src.position());
            got.extend(batch.offsets.iter().copied().zip(batch.records().into_iter().map(<[u8]>::to_vec)));
        }
        assert_eq!(got.len(), 234);
        assert_eq!(got[0], (100, b"line 301".to_vec()));
        assert_eq!(got[233], (333, b"x".to_vec()));
        // Caught up: an empty batch after the wait.
        src.read_batch(64, 1 << 20, Duration::from_millis(50), &mut batch).unwrap();
        assert!(batch.is_empty());
        assert_eq!(batch.end, highs[1]);

        let e = KafkaSource::open(&brokers, &topic, 3, 0, Duration::from_secs(10)).err().unwrap().to_string();
        assert!(e.contains("has 3 partitions"), "{e}");
        let e = partition_count(&brokers, "no-such-topic-here", Duration::from_secs(10)).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");

        // Many records per batch: tansu's listed high watermark and its reads from inside a batch are fixed up.
        let batched = format!("{topic}-batched");
        let p = produce(&brokers, &batched, Some(3), &[dir.path().join("a.txt"), dir.path().join("b.txt")], 10_000)
            .unwrap();
        assert_eq!(p.records, 1003);
        assert_eq!(high_watermarks(&brokers, &batched, Duration::from_secs(10)).unwrap(), highs);
        assert_eq!(raw_read(&brokers, &batched, Duration::from_secs(10)).unwrap().0, 1003);
        for start in [100, 334] {
            // 334 is the last record, inside the partition's last batch.
            let mut src = KafkaSource::open(&brokers, &batched, 0, start, Duration::from_secs(10)).unwrap();
            let mut offsets = Vec::new();
            let mut first = None;
            while src.position() < highs[0] {
                src.read_batch(64, 1 << 20, Duration::from_secs(5), &mut batch).unwrap();
                assert!(!batch.is_empty(), "no records from {}", src.describe());
                first = first.or_else(|| batch.records().first().map(|r| r.to_vec()));
                offsets.extend_from_slice(&batch.offsets);
            }
            assert_eq!(offsets, (start..highs[0]).collect::<Vec<_>>());
            // Partition 0 holds records 0, 3, 6, ... of the input; record 1002 is "last" from b.txt.
            let want: &[u8] = if start == 334 { b"last" } else { b"line 300" };
            assert_eq!(first.as_deref(), Some(want));
        }
    }
}
