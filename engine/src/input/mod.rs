//! What a spout reads: one partition, a file ([`FileReader`]) or a Kafka
//! partition ([`crate::kafka::KafkaSource`]), seen through one [`Input`].

use std::time::Duration;

use anyhow::Result;

use crate::core::batch::RecordBatch;
use crate::kafka::KafkaSource;

mod file;

pub use file::{FileReader, ReadOptions};

/// How long a Kafka spout waits for the broker when it opens its partition.
const KAFKA_OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// What a spout instance reads: a file, or a Kafka partition (opened on the
/// first read, in the spout's own thread).
pub enum Input {
    File(FileReader),
    Kafka { brokers: String, topic: String, partition: u32, offset: u64, source: Option<KafkaSource> },
}

impl Input {
    /// Clears `out` and fills it with up to `max_records` records or about
    /// `max_bytes` bytes. `complete`: a file will not grow, so a last line
    /// without `\n` is a record. A Kafka partition waits at most `wait`.
    pub fn read_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
        complete: bool,
        wait: Duration,
        out: &mut RecordBatch,
    ) -> Result<()> {
        match self {
            Input::File(r) => Ok(r.read_batch(max_records, max_bytes, complete, out)?),
            Input::Kafka { brokers, topic, partition, offset, source } => {
                let src = match source {
                    Some(s) => s,
                    None => source.insert(KafkaSource::open(brokers, topic, *partition, *offset, KAFKA_OPEN_TIMEOUT)?),
                };
                src.read_batch(max_records, max_bytes, wait, out)
            }
        }
    }

    /// The offset of the next record.
    pub fn position(&self) -> u64 {
        match self {
            Input::File(r) => r.position(),
            Input::Kafka { source: Some(s), .. } => s.position(),
            Input::Kafka { offset, .. } => *offset,
        }
    }

    /// The partition's end, if known: a file's size, or the high watermark
    /// the broker last reported (no request is made for it).
    pub fn end(&self) -> Option<u64> {
        match self {
            Input::File(r) => std::fs::metadata(r.path()).ok().map(|m| m.len()),
            Input::Kafka { source: Some(s), .. } => s.high_watermark(),
            Input::Kafka { .. } => None,
        }
    }

    /// What it reads, for messages.
    pub fn describe(&self) -> String {
        match self {
            Input::File(r) => r.path().display().to_string(),
            Input::Kafka { source: Some(s), .. } => s.describe(),
            Input::Kafka { brokers, topic, partition, .. } => {
                format!("topic `{topic}` partition {partition} on {brokers}")
            }
        }
    }
}
