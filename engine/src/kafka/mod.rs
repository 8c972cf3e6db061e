//! Kafka topics as input: one [`KafkaSource`] reads one partition from a given
//! offset (assign + seek, never a consumer group, no offsets committed — the
//! engine's snapshots hold the positions), and [`produce`] writes the lines of
//! files into a topic.
//!
//! The record offset of a Kafka record is its Kafka offset, so a spout resumes
//! from a clock by assigning the partition at that offset.
//!
//! Written against rdkafka 0.39 (librdkafka with OpenSSL: TLS, SASL PLAIN
//! and SCRAM) and tested against Apache Kafka 4.4. It also copes with the
//! tansu 0.6 broker, which the tests once used and which has these quirks:
//! topics are never created automatically (so [`produce`] creates them with
//! the admin API); every fetch waits about half of `fetch.wait.max.ms` even
//! when data is there (so it is set low); and a fetch that starts in the
//! middle of a record batch skips the rest of that batch, which
//! [`KafkaSource::read_batch`] detects and reports instead of silently
//! losing records. librdkafka retries a dead broker forever, and a broker
//! that refuses the client (see `refusal.rs`) looks dead to it, so every
//! call here has its own deadline.
//!
//! **Architecture invariant:** `kafka/` is the only code that uses rdkafka
//! (checked by the tidy test). [`produce`] is the `hailstorm produce`
//! command; [`raw_read`] is the benchmarks' baseline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::metadata::Metadata;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

mod produce;
mod raw;
mod refusal;
mod settings;
mod sink;
mod source;

pub use produce::{produce, Batching, Produced};
pub use raw::raw_read;
pub use settings::CONFIG_ENV;
pub use sink::{check_sink, KafkaWriter};
pub use source::KafkaSource;

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
/// While a metadata request waits, how often the client's complaints are
/// read for a broker that refuses it.
const REFUSAL_CHECK_EVERY: Duration = Duration::from_millis(500);

/// The context of every client made here: librdkafka's log goes to `tracing`
/// at debug level (its complaints would otherwise repeat on every retry), the
/// last complaint is kept for error messages, and delivery reports of
/// [`produce`] are counted.
#[derive(Default)]
struct Ctx {
    /// The last few distinct warnings and errors librdkafka logged or reported, oldest first.
    complaints: Mutex<Vec<String>>,
    /// Whether the broker refuses this client, from the complaints.
    refused: Mutex<refusal::Watch>,
    acked: AtomicU64,
    failed: AtomicU64,
    /// The lowest record index whose delivery failed, and why.
    first_failure: Mutex<Option<(usize, String)>>,
    /// Per (topic, partition): the partition's end as the client's last
    /// statistics saw it (the last stable offset, records a read-committed
    /// consumer can read).
    ends: Mutex<BTreeMap<(String, i32), u64>>,
}

impl Ctx {
    /// Keeps a complaint; `connection`: it says why a connection failed.
    fn note(&self, text: &str, connection: bool) {
        // "... Connection refused (after 0ms in state CONNECT, 1 identical error(s) suppressed)": the first part.
        // Log lines start with "[thrd:...]: ", error reasons do not.
        let text = match text.strip_prefix("[thrd:").and_then(|t| t.split_once("]: ")) {
            Some((_, rest)) => rest,
            None => text,
        };
        if let Ok(mut refused) = self.refused.lock() {
            refused.saw(text, connection, Instant::now());
        }
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
        // A failed connection ("FAIL") says why, at whatever level it is logged.
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32) || fac == "FAIL" {
            self.note(log_message, fac == "FAIL");
        }
        tracing::debug!(target: "librdkafka", "{fac} {log_message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", "{error}: {reason}");
        self.note(reason, false);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let Ok(mut ends) = self.ends.lock() else { return };
        for (name, topic) in statistics.topics {
            for (p, part) in topic.partitions {
                let end = if part.ls_offset >= 0 { part.ls_offset } else { part.hi_offset };
                if let Ok(end) = u64::try_from(end) {
                    ends.insert((name.clone(), p), end);
                }
            }
        }
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
    settings::client(brokers)?
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
        .set("queued.min.messages", "1000000")
        .set("statistics.interval.ms", "1000")
        .create_with_context(Ctx::default())
        .with_context(|| format!("cannot create a Kafka consumer for {brokers}{}", settings::hint()))
}

fn partition_id(partition: u32) -> Result<i32> {
    i32::try_from(partition).map_err(|_| anyhow!("partition {partition} is out of Kafka's range"))
}

fn offset_of(offset: u64) -> Result<Offset> {
    Ok(Offset::Offset(i64::try_from(offset).map_err(|_| anyhow!("offset {offset} is out of Kafka's range"))?))
}

/// Takes the events librdkafka queued: its log lines and error reasons (such as "Connection refused").
fn take_events(c: &BaseConsumer<Ctx>) {
    for _ in 0..100 {
        c.poll(Duration::ZERO);
    }
}

fn unreachable(c: &BaseConsumer<Ctx>, brokers: &str, timeout: Duration, e: &KafkaError) -> anyhow::Error {
    take_events(c);
    if let Some(r) = refused(c, true) {
        return r.error(brokers);
    }
    anyhow!("cannot reach the Kafka broker at {brokers} within {timeout:?}: {}{}", why(e), c.context().complaint())
}

/// How the broker refused this client, if it did (`ending`: the call's time is up).
fn refused(c: &BaseConsumer<Ctx>, ending: bool) -> Option<refusal::Refusal> {
    c.context().refused.lock().ok()?.refusal(Instant::now(), ending)
}

/// The metadata of `topic`, asked for in slices so that a broker that
/// refuses this client fails the call at once.
fn metadata(c: &BaseConsumer<Ctx>, brokers: &str, topic: &str, timeout: Duration) -> Result<Metadata> {
    let deadline = Instant::now() + timeout;
    loop {
        match c.fetch_metadata(Some(topic), remaining(deadline).min(REFUSAL_CHECK_EVERY)) {
            Ok(md) => return Ok(md),
            Err(e) => {
                take_events(c);
                if let Some(r) = refused(c, false) {
                    return Err(r.error(brokers));
                }
                if remaining(deadline).is_zero() {
                    return Err(unreachable(c, brokers, timeout, &e));
                }
            }
        }
    }
}

fn missing(brokers: &str, topic: &str) -> anyhow::Error {
    anyhow!("topic `{topic}` does not exist on {brokers}; create it with `hailstorm produce --topic {topic} ...`")
}

/// The partition count of `topic`, or `None` when the broker says it does not exist.
fn topic_partitions(c: &BaseConsumer<Ctx>, brokers: &str, topic: &str, timeout: Duration) -> Result<Option<u32>> {
    let md = metadata(c, brokers, topic, timeout)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::batch::RecordBatch;

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
        let p = produce(&brokers, &topic, Some(3), &[a, b], Batching::records(1)).unwrap();
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
        let both = [dir.path().join("a.txt"), dir.path().join("b.txt")];
        let p = produce(&brokers, &batched, Some(3), &both, Batching::records(10_000)).unwrap();
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

    /// Records compressed with each codec Kafka clients use read back exactly.
    #[test]
    fn every_compression_codec_reads_back() {
        let brokers = std::env::var("HAILSTORM_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_string());
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        let text: String = (0..2000).map(|i| format!("compressible line {i} {}\n", "x".repeat(i % 50))).collect();
        std::fs::write(&a, &text).unwrap();
        for codec in ["gzip", "snappy", "lz4", "zstd"] {
            let topic = format!("hailstorm-test-{}-{codec}", unique_group("c"));
            let batching = Batching { records_per_batch: 10_000, compression: codec };
            let p = produce(&brokers, &topic, Some(1), std::slice::from_ref(&a), batching).unwrap();
            assert_eq!(p.records, 2000, "{codec}");
            let mut src = KafkaSource::open(&brokers, &topic, 0, 0, Duration::from_secs(10)).unwrap();
            let mut batch = RecordBatch::default();
            let mut got = Vec::new();
            while got.len() < 2000 {
                src.read_batch(512, 1 << 20, Duration::from_secs(5), &mut batch).unwrap();
                assert!(!batch.is_empty(), "{codec}: no records from {}", src.describe());
                got.extend(batch.records().into_iter().map(|r| String::from_utf8_lossy(r).into_owned()));
            }
            let want: Vec<String> = text.lines().map(str::to_string).collect();
            assert_eq!(got, want, "{codec}");
        }
    }
}
