//! The Kafka connector sink: one transaction per round, holding the round's
//! records and a progress record `(sink, round)` on a compacted
//! one-partition progress topic.
//!
//! [`KafkaWriter::open`] makes a producer with the sink's stable
//! `transactional.id`, calls `init_transactions` first (the broker fences
//! any older producer with that id and aborts its open transaction), then
//! reads the progress topic `read_committed` to learn the newest round the
//! output holds. Every failure but fencing drops the producer and opens
//! again, which settles a commit whose outcome was unknown.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use hailstorm_abi::Item;
use rdkafka::admin::{AdminOptions, ResourceSpecifier};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::produce::{admin, block_on, ensure_topic_with};
use super::{consumer, metadata, settings, topic_partitions, unique_group, why, Ctx, SETUP_TIMEOUT};
use crate::connect::{Failure, Writer};
use crate::topology::KafkaOut;

/// How long `init_transactions`, a commit or the progress read may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes one sink's rounds into a topic, exactly once.
pub struct KafkaWriter {
    out: KafkaOut,
    txn_id: String,
    progress: String,
    producer: Option<BaseProducer<Ctx>>,
    sent: usize,
}

impl KafkaWriter {
    pub fn new(out: &KafkaOut, topology: &str, sink: &str) -> KafkaWriter {
        KafkaWriter {
            txn_id: out.transactional_id(topology, sink),
            progress: out.progress_topic(topology, sink),
            out: out.clone(),
            producer: None,
            sent: 0,
        }
    }

    fn producer(&self) -> Result<&BaseProducer<Ctx>, Failure> {
        self.producer.as_ref().ok_or_else(|| Failure::retry(anyhow!("internal: the producer is not open")))
    }

    fn make_producer(&self) -> Result<BaseProducer<Ctx>, Failure> {
        settings::client(&self.out.brokers)
            .map_err(Failure::Stop)?
            .set("transactional.id", &self.txn_id)
            .set("transaction.timeout.ms", self.out.transaction_timeout.as_millis().to_string())
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create_with_context(Ctx::default())
            .map_err(|e| {
                Failure::stop(anyhow!(
                    "cannot create a Kafka producer for {}: {e}{}",
                    self.out.brokers,
                    settings::hint()
                ))
            })
    }

    /// The failure for an error of a transactional call, and what it means.
    fn failed(&mut self, what: &str, e: &KafkaError) -> Failure {
        let complaint = self.producer.as_ref().map(|p| p.context().complaint()).unwrap_or_default();
        let text = format!("{what} on {} failed: {}{complaint}", self.target(), why(e));
        let code = e.rdkafka_error_code();
        if matches!(
            code,
            Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
        ) {
            return Failure::stop(anyhow!(
                "{text}: a newer instance of this sink took over (`transactional.id` {}), so this one stops",
                self.txn_id
            ));
        }
        if code == Some(RDKafkaErrorCode::InvalidTransactionTimeout) {
            return Failure::stop(anyhow!("{text}: the broker refuses transaction_timeout = {:?}; lower it, or raise the broker's transaction.max.timeout.ms", self.out.transaction_timeout));
        }
        if let Some(r) =
            self.producer.as_ref().and_then(|p| p.context().refused.lock().ok()?.refusal(Instant::now(), true))
        {
            return Failure::stop(r.error(&self.out.brokers));
        }
        // Anything else: a new producer settles the round from the progress topic.
        self.producer = None;
        Failure::retry(anyhow!(text))
    }

    /// The newest round the progress topic records for this sink (0: none).
    fn read_progress(&self) -> Result<u64, Failure> {
        let c: BaseConsumer<Ctx> = settings::client(&self.out.brokers)
            .map_err(Failure::Stop)?
            .set("group.id", unique_group("progress"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .create_with_context(Ctx::default())
            .map_err(|e| Failure::stop(anyhow!("cannot create a Kafka consumer for {}: {e}", self.out.brokers)))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.progress, 0, Offset::Beginning).map_err(|e| Failure::retry(anyhow!("{e}")))?;
        c.assign(&tpl).map_err(|e| Failure::retry(anyhow!("cannot read topic `{}`: {e}", self.progress)))?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        let mut round = 0;
        while Instant::now() < deadline {
            match c.poll(Duration::from_millis(100)) {
                Some(Ok(m)) if m.key() == Some(self.txn_id.as_bytes()) => {
                    round = parse_round(m.payload(), &self.progress)?
                }
                Some(Ok(_)) => {}
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(round),
                Some(Err(e)) => {
                    return Err(Failure::retry(anyhow!(
                        "cannot read topic `{}` on {}: {}",
                        self.progress,
                        self.out.brokers,
                        why(&e)
                    )))
                }
                None => {}
            }
        }
        Err(Failure::retry(anyhow!(
            "could not read topic `{}` on {} to its end within {CALL_TIMEOUT:?}{}",
            self.progress,
            self.out.brokers,
            c.context().complaint()
        )))
    }

    fn send(&self, record: BaseRecord<'_, [u8], [u8], usize>) -> Result<(), Failure> {
        let p = self.producer()?;
        let mut record = record;
        loop {
            match p.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    p.poll(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(Failure::retry(anyhow!("cannot send to {}: {}", self.target(), why(&e)))),
            }
        }
    }
}

/// A progress record's value: the round in decimal.
fn parse_round(value: Option<&[u8]>, topic: &str) -> Result<u64, Failure> {
    let text = value.map(String::from_utf8_lossy).unwrap_or_default();
    text.trim().parse().map_err(|_| {
        Failure::stop(anyhow!("topic `{topic}` holds a progress record `{text}` that is not a round number"))
    })
}

impl Writer for KafkaWriter {
    fn open(&mut self) -> Result<u64, Failure> {
        self.producer = None;
        ensure_progress_topic(&self.out.brokers, &self.progress).map_err(Failure::Retry)?;
        self.producer = Some(self.make_producer()?);
        if let Err(e) = self.producer()?.init_transactions(CALL_TIMEOUT) {
            return Err(self.failed("starting transactions (init_transactions)", &e));
        }
        self.read_progress()
    }

    fn begin(&mut self, _round: u64) -> Result<(), Failure> {
        self.sent = 0;
        match self.producer()?.begin_transaction() {
            Ok(()) => Ok(()),
            Err(e) => Err(self.failed("beginning a transaction", &e)),
        }
    }

    fn write(&mut self, items: &[Item<'_>]) -> Result<(), Failure> {
        for item in items {
            let mut r = BaseRecord::with_opaque_to(&self.out.topic, self.sent);
            if let Some(Some(k)) = item.fields.first() {
                r = r.key(*k);
            }
            if let Some(Some(v)) = item.fields.get(1) {
                r = r.payload(*v);
            }
            let pairs = item.fields.get(2..).unwrap_or(&[]);
            if !pairs.is_empty() {
                let mut h = OwnedHeaders::new_with_capacity(pairs.len() / 2);
                for pair in pairs.chunks(2) {
                    let name = pair.first().copied().flatten().map(String::from_utf8_lossy).unwrap_or_default();
                    h = h.insert(Header { key: &name, value: pair.get(1).copied().flatten() });
                }
                r = r.headers(h);
            }
            self.send(r)?;
            self.sent += 1;
            if self.sent.is_multiple_of(1024) {
                self.producer()?.poll(Duration::ZERO);
            }
        }
        Ok(())
    }

    fn commit(&mut self, round: u64) -> Result<(), Failure> {
        let value = round.to_string();
        let r = BaseRecord::with_opaque_to(&self.progress, usize::MAX)
            .partition(0)
            .key(self.txn_id.as_bytes())
            .payload(value.as_bytes());
        self.send(r)?;
        match self.producer()?.commit_transaction(CALL_TIMEOUT) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.failed(&format!("committing round {round}"), &e)),
        }
    }

    fn abort(&mut self) {
        if let Some(p) = &self.producer {
            if p.abort_transaction(Duration::from_secs(5)).is_err() {
                self.producer = None;
            }
        }
    }

    fn target(&self) -> String {
        format!("Kafka topic `{}` on {}", self.out.topic, self.out.brokers)
    }
}

/// Creates the progress topic (compacted, one partition) unless it exists.
fn ensure_progress_topic(brokers: &str, topic: &str) -> Result<()> {
    ensure_topic_with(brokers, topic, Some(1), -1, &[("cleanup.policy", "compact")]).map(|_| ())
}

/// What `deploy` checks of a Kafka sink: the topic exists, and the broker
/// allows transactions as long as `transaction_timeout`.
pub fn check_sink(out: &KafkaOut) -> Result<()> {
    let c = consumer(&out.brokers, "meta")?;
    if topic_partitions(&c, &out.brokers, &out.topic, SETUP_TIMEOUT)?.is_none() {
        return Err(anyhow!(
            "topic `{}` does not exist on {}; create it first (the sink does not create its output topic)",
            out.topic,
            out.brokers
        ));
    }
    let md = metadata(&c, &out.brokers, &out.topic, SETUP_TIMEOUT)?;
    let ids: Vec<i32> = md.brokers().iter().map(|b| b.id()).collect();
    let admin = admin(&out.brokers)?;
    let specs: Vec<ResourceSpecifier> = ids.iter().map(|id| ResourceSpecifier::Broker(*id)).collect();
    let opts = AdminOptions::new().request_timeout(Some(SETUP_TIMEOUT));
    let got = block_on(admin.describe_configs(&specs, &opts), Instant::now() + SETUP_TIMEOUT)
        .ok_or_else(|| {
            anyhow!("the broker at {} did not describe its configuration within {SETUP_TIMEOUT:?}", out.brokers)
        })?
        .map_err(|e| anyhow!("cannot read the configuration of the broker at {}: {}", out.brokers, why(&e)))?;
    for r in got.into_iter().flatten() {
        let max = r.get("transaction.max.timeout.ms").and_then(|e| e.value.as_deref()?.parse::<u64>().ok());
        if let Some(max) = max.filter(|m| u128::from(*m) < out.transaction_timeout.as_millis()) {
            return Err(anyhow!(
                "transaction_timeout = {:?} is longer than the broker's transaction.max.timeout.ms ({max} ms) at {}: \
                 lower it, or raise the broker's limit (a round's transaction must be able to hold a whole-state resend)",
                out.transaction_timeout, out.brokers
            ));
        }
    }
    Ok(())
}
