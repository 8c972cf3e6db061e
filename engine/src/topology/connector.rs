//! `sinks.NAME.kafka` and `sinks.NAME.postgres`: sinks whose output the
//! engine writes itself (a connector), shaped by a pure serializer module.

use std::time::Duration;

use super::tree::Loc;
use super::{join, parse_duration, Cx, Table};

/// Where a connector sink writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Connector {
    Kafka(KafkaOut),
    Postgres(PostgresOut),
}

/// `sinks.NAME.kafka`: one transaction per round into `topic`.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaOut {
    pub brokers: String,
    pub topic: String,
    /// The compacted one-partition topic that records the rounds committed;
    /// `None`: [`KafkaOut::progress_topic`] names one per sink.
    pub progress_topic: Option<String>,
    pub transactional_id_prefix: String,
    /// How long one round's transaction may stay open (a whole-state resend
    /// must fit); the broker's `transaction.max.timeout.ms` must allow it.
    pub transaction_timeout: Duration,
}

/// The default of `sinks.NAME.kafka.brokers`.
pub const DEFAULT_SINK_BROKERS: &str = "127.0.0.1:9092";
/// The default of `sinks.NAME.kafka.transaction_timeout`.
pub const DEFAULT_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(300);
/// The default of `sinks.NAME.max_pending_rounds`: complete rounds a
/// connector sink may leave unwritten before the spouts wait for it. Below
/// the rounds the store keeps for a lagging sink (32), so a sink held to it
/// never needs the whole state.
pub const DEFAULT_PENDING_ROUNDS: usize = 16;
/// The default of `sinks.NAME.postgres.url_env`.
pub const DEFAULT_PG_URL_ENV: &str = "HAILSTORM_PG_URL";

impl KafkaOut {
    /// The producer's `transactional.id`: stable across workers, epochs and
    /// parallelism, unique per topology and sink (a sink has one instance).
    pub fn transactional_id(&self, topology: &str, sink: &str) -> String {
        format!("{}-{topology}-{sink}-0", self.transactional_id_prefix)
    }

    pub fn progress_topic(&self, topology: &str, sink: &str) -> String {
        match &self.progress_topic {
            Some(t) => t.clone(),
            None => format!("{}-progress-{topology}-{sink}", self.transactional_id_prefix),
        }
    }
}

/// `sinks.NAME.postgres`: one database transaction per round into `table`.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresOut {
    pub table: String,
    /// The environment variable that holds the connection URL (a secret:
    /// never in the topology).
    pub url_env: String,
}

impl Cx {
    /// The connector a sink's table names, if any (`prefix`: `sinks.NAME`).
    pub(super) fn connector(&mut self, t: &Table, prefix: &str) -> Option<Connector> {
        match (t.get("kafka"), t.get("postgres")) {
            (Some(k), Some(_)) => {
                self.err(&k.loc, prefix, "a sink writes to Kafka or to PostgreSQL, not both");
                None
            }
            (Some(k), None) => {
                let key = join(prefix, "kafka");
                let k = self.table(k, &key)?;
                self.kafka_out(k, &key).map(Connector::Kafka)
            }
            (None, Some(p)) => {
                let key = join(prefix, "postgres");
                let p = self.table(p, &key)?;
                self.known(p, &key, &["table", "url_env"]);
                let (table, loc) = self.str_at(p, &key, "table", true)?;
                self.check_name(&table, &loc, &join(&key, "table"), false);
                let url_env = self.str_at(p, &key, "url_env", false).map_or(DEFAULT_PG_URL_ENV.into(), |v| v.0);
                Some(Connector::Postgres(PostgresOut { table, url_env }))
            }
            (None, None) => None,
        }
    }

    fn kafka_out(&mut self, k: &Table, key: &str) -> Option<KafkaOut> {
        self.known(k, key, &["topic", "brokers", "progress_topic", "transactional_id_prefix", "transaction_timeout"]);
        let (topic, loc) = self.str_at(k, key, "topic", true)?;
        self.check_name(&topic, &loc, &join(key, "topic"), true);
        let brokers = self.str_at(k, key, "brokers", false).map_or(DEFAULT_SINK_BROKERS.into(), |v| v.0);
        let progress_topic = self.str_at(k, key, "progress_topic", false).map(|(t, loc)| {
            self.check_name(&t, &loc, &join(key, "progress_topic"), true);
            t
        });
        let transactional_id_prefix = match self.str_at(k, key, "transactional_id_prefix", false) {
            Some((p, loc)) => {
                self.check_name(&p, &loc, &join(key, "transactional_id_prefix"), true);
                p
            }
            None => "hailstorm".into(),
        };
        let mut transaction_timeout = DEFAULT_TRANSACTION_TIMEOUT;
        if let Some((v, loc)) = self.str_at(k, key, "transaction_timeout", false) {
            match parse_duration(&v) {
                Ok(d) if d >= Duration::from_secs(1) => transaction_timeout = d,
                Ok(_) => self.err(&loc, &join(key, "transaction_timeout"), "must be at least 1s"),
                Err(e) => self.err(&loc, &join(key, "transaction_timeout"), e),
            }
        }
        Some(KafkaOut { brokers, topic, progress_topic, transactional_id_prefix, transaction_timeout })
    }

    /// A topic (`dots`: `.` allowed) or table name: letters, digits, `_`, `-`.
    fn check_name(&mut self, name: &str, loc: &Loc, key: &str, dots: bool) {
        let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || (dots && (c == '-' || c == '.'));
        if name.is_empty() || name.len() > 200 || !name.chars().all(ok) {
            let allowed = if dots { "letters, digits, `.`, `_` and `-`" } else { "letters, digits and `_`" };
            self.err(loc, key, format!("`{name}` is not a valid name: use 1 to 200 {allowed}"));
        }
    }
}
