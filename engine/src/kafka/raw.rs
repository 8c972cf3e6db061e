//! The raw read rate of a topic, for the benchmarks: every partition read by
//! a plain consumer, no WebAssembly and no engine.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, TopicPartitionList};

use super::{
    consumer, missing, offset_of, partition_id, remaining, topic_partitions, verified_highs, watermarks, why, Ctx,
    POLL_SLICE,
};

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
