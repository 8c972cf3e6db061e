//! `hailstorm produce`: the lines of files as records of a topic, created
//! when missing.

use std::fs::File;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use super::{consumer, partition_id, remaining, topic_partitions, why, Ctx, SETUP_TIMEOUT};

/// How long librdkafka may try to deliver one produced record.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// Partitions of a topic created by [`produce`] when none are asked for.
const DEFAULT_PARTITIONS: u32 = 4;

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
pub(super) fn block_on<F: Future>(fut: F, deadline: Instant) -> Option<F::Output> {
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
    ensure_topic_with(brokers, topic, partitions, 1, &[])
}

/// A Kafka admin client for `brokers`, with the settings file applied.
pub(super) fn admin(brokers: &str) -> Result<AdminClient<Ctx>> {
    super::settings::client(brokers)?
        .create_with_context(Ctx::default())
        .with_context(|| format!("cannot create a Kafka admin client for {brokers}{}", super::settings::hint()))
}

/// [`ensure_topic`] with the replication factor (-1: the broker's default)
/// and topic settings (`cleanup.policy=compact`) of a topic it creates.
pub(super) fn ensure_topic_with(
    brokers: &str,
    topic: &str,
    partitions: Option<u32>,
    replication: i32,
    configs: &[(&str, &str)],
) -> Result<u32> {
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
    let admin = admin(brokers)?;
    let client = admin.inner();
    let count = i32::try_from(want).map_err(|_| anyhow!("{want} partitions are too many for Kafka"))?;
    let new =
        configs.iter().fold(NewTopic::new(topic, count, TopicReplication::Fixed(replication)), |t, (k, v)| t.set(k, v));
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
                let settings: String = configs.iter().map(|(k, v)| format!(", {k}={v}")).collect();
                tracing::info!("created topic `{topic}` with {n} partitions on {brokers}{settings}");
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
    batching: Batching,
) -> Result<Produced> {
    let n = ensure_topic(brokers, topic, partitions)?;
    let producer = producer(brokers, batching)?;
    let ctx = Arc::clone(producer.context());
    let start = Instant::now();
    // The index of each file's first record, for naming the line of a failed record.
    let mut firsts: Vec<usize> = Vec::with_capacity(files.len());
    let mut out = Out { producer: &producer, brokers, topic, index: 0 };
    let partitions = usize::try_from(n).map_err(|_| anyhow!("topic `{topic}` has too many partitions"))?;
    for path in files {
        firsts.push(out.index);
        out.send_file(path, partitions)
            .with_context(|| format!("producing {} into topic `{topic}` on {brokers}", path.display()))?;
        if ctx.failed.load(Ordering::Relaxed) > 0 {
            break;
        }
    }
    let records = out.index as u64;
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
    let acked = ctx.acked.load(Ordering::Relaxed);
    if acked != records {
        bail!("the Kafka broker at {brokers} acknowledged {acked} of {records} records of topic `{topic}`");
    }
    Ok(Produced { records, partitions: n, elapsed })
}

/// How [`produce`] batches records.
#[derive(Debug, Clone, Copy)]
pub struct Batching<'a> {
    /// librdkafka's batch.num.messages.
    pub records_per_batch: usize,
    /// librdkafka's compression.type: none, gzip, snappy, lz4 or zstd.
    pub compression: &'a str,
}

impl Batching<'_> {
    pub fn records(records_per_batch: usize) -> Batching<'static> {
        Batching { records_per_batch, compression: "none" }
    }
}

fn producer(brokers: &str, b: Batching) -> Result<BaseProducer<Ctx>> {
    let records_per_batch = b.records_per_batch;
    super::settings::client(brokers)?
        .set("compression.type", b.compression)
        .set("batch.num.messages", records_per_batch.clamp(1, 1_000_000).to_string())
        .set("message.timeout.ms", DELIVERY_TIMEOUT.as_millis().to_string())
        // Few records waiting at a time: with one-record batches a slow broker
        // would otherwise time out a deep queue instead of slowing the producer.
        .set("queue.buffering.max.messages", (records_per_batch.clamp(1, 1000) * 2000).to_string())
        .create_with_context(Ctx::default())
        .with_context(|| format!("cannot create a Kafka producer for {brokers}{}", super::settings::hint()))
}

/// Where [`produce`] writes, and how many records it sent so far.
struct Out<'a> {
    producer: &'a BaseProducer<Ctx>,
    brokers: &'a str,
    topic: &'a str,
    index: usize,
}

impl Out<'_> {
    /// Sends every line of a file, round-robin over `partitions`; stops early once a delivery failed.
    fn send_file(&mut self, path: &PathBuf, partitions: usize) -> Result<()> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let (producer, topic, brokers) = (self.producer, self.topic, self.brokers);
        let mut line_no = 0u64;
        for_each_line(BufReader::with_capacity(1 << 20, file), |line| {
            line_no += 1;
            let partition = partition_id(u32::try_from(self.index % partitions.max(1))?)?;
            let mut record =
                BaseRecord::<(), [u8], usize>::with_opaque_to(topic, self.index).payload(line).partition(partition);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        producer.poll(Duration::from_millis(5));
                        if producer.context().failed.load(Ordering::Relaxed) > 0 {
                            return Ok(false); // reported by `produce`
                        }
                    }
                    Err((e, _)) => bail!("cannot send line {line_no} to topic `{topic}` on {brokers}: {}", why(&e)),
                }
            }
            self.index += 1;
            if self.index.is_multiple_of(1024) {
                producer.poll(Duration::ZERO);
            }
            Ok(true)
        })?;
        Ok(())
    }
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
}
