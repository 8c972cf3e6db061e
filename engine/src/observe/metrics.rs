//! The metrics of one process, in a registry of their own (the only home of
//! the `prometheus` crate). Every name starts with `hailstorm_`; every series
//! carries the topology's name.

use std::time::Duration;

use prometheus::{
    Counter, CounterVec, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

const INSTANCE: &[&str] = &["topology", "processor", "instance"];
const PARTITION: &[&str] = &["topology", "partition"];
const TOPOLOGY: &[&str] = &["topology"];
const PROCESSOR: &[&str] = &["topology", "processor"];

/// Batch and round durations, in seconds: 100 µs to about a minute.
const BUCKETS: &[f64] = &[1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Every metric this process exports.
pub struct Metrics {
    registry: Registry,
    pub records_in: IntCounterVec,
    pub records_out: IntCounterVec,
    pub batch_seconds: HistogramVec,
    pub guest_calls: IntCounterVec,
    pub guest_seconds: CounterVec,
    pub guest_traps: IntCounterVec,
    pub guest_timeouts: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub skipped: IntCounterVec,
    pub sink_waiting: IntGaugeVec,
    pub sink_retries: IntCounterVec,
    pub sink_holding: IntGaugeVec,
    pub store_unreachable: IntGaugeVec,
    pub inbox_fill: GaugeVec,
    pub position: IntGaugeVec,
    pub partition_end: IntGaugeVec,
    pub lag: IntGaugeVec,
    pub lwm: IntGaugeVec,
    pub rounds_complete: IntCounterVec,
    pub last_round: IntGaugeVec,
    pub round_seconds: HistogramVec,
    pub round_bytes: IntCounterVec,
    pub since_round: GaugeVec,
    pub stalled: IntGaugeVec,
    pub epochs: IntCounterVec,
    pub rss: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// A metric that cannot be made is a bug in this file (a bad name or a
/// duplicate), found by the first test that builds one.
fn made<T>(r: prometheus::Result<T>) -> T {
    match r {
        Ok(t) => t,
        Err(e) => panic!("internal: bad metric definition: {e}"),
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = made(Registry::new_custom(Some("hailstorm".into()), None));
        let r = &registry;
        Metrics {
            records_in: counter(r, "records_in_total", "Records into a processor instance: records read by a spout, tuples folded by a bolt, state entries handed to a sink.", INSTANCE),
            records_out: counter(r, "records_out_total", "Records out of a processor instance: tuples a spout's deserializer or a bolt emitted.", INSTANCE),
            batch_seconds: histogram(r, "batch_seconds", "Time to process one batch (guest call and routing).", INSTANCE),
            guest_calls: counter(r, "guest_calls_total", "Calls into the instance's WebAssembly module.", INSTANCE),
            guest_seconds: fcounter(r, "guest_call_seconds_total", "Time spent inside the instance's WebAssembly module.", INSTANCE),
            guest_traps: counter(r, "guest_traps_total", "Guest calls that trapped or failed.", INSTANCE),
            guest_timeouts: counter(r, "guest_timeouts_total", "Guest calls stopped at their deadline.", INSTANCE),
            dead_letters: counter(r, "dead_letters_total", "Records a spout's deserializer rejected or trapped on, sent to its dead letters (on_error = \"dead-letter\").", PROCESSOR),
            skipped: counter(r, "records_skipped_total", "Records a spout's deserializer rejected or trapped on, left out (on_error = \"skip\").", PROCESSOR),
            sink_waiting: igauge(r, "sink_waiting", "1 while a connector sink cannot write (its broker or database is down) and retries; the log and the web view say why.", PROCESSOR),
            sink_retries: counter(r, "sink_retries_total", "Times a connector sink failed to write and paused before trying again.", PROCESSOR),
            sink_holding: igauge(r, "sink_holding", "1 while a connector sink has sinks.NAME.max_pending_rounds complete rounds it has not written and the spouts wait for it (backpressure).", PROCESSOR),
            store_unreachable: igauge(r, "store_unreachable", "1 while the snapshot store (an object store) cannot be reached and its requests are retried; the log and the web view say why.", TOPOLOGY),
            inbox_fill: gauge(r, "inbox_fill_ratio", "How full the instance's inbox is (0 to 1): near 1 means backpressure.", INSTANCE),
            position: igauge(r, "partition_position", "The spout's position in its partition (Kafka offset or file byte offset).", PARTITION),
            partition_end: igauge(r, "partition_end", "The partition's end: the broker's high watermark, or the file's size.", PARTITION),
            lag: igauge(r, "partition_lag", "The partition's end minus the spout's position (records for Kafka, bytes for files).", PARTITION),
            lwm: igauge(r, "partition_lwm", "The low water mark of the bolt instances here, per partition (-1: none yet).", PARTITION),
            rounds_complete: counter(r, "rounds_complete_total", "Snapshot rounds completed by the negotiator in this process.", TOPOLOGY),
            last_round: igauge(r, "last_complete_round", "The last complete snapshot round (-1: none).", TOPOLOGY),
            round_seconds: histogram(r, "round_seconds", "Time from a round's gate to its commit.", TOPOLOGY),
            round_bytes: counter(r, "round_bytes_total", "Bytes of snapshot deltas this process wrote.", TOPOLOGY),
            since_round: gauge(r, "seconds_since_complete_round", "Seconds since the last complete round (or since the run started).", TOPOLOGY),
            stalled: igauge(r, "stalled", "1 when no round completed for 10 snapshot intervals (at least 5 s) while the topology runs.", TOPOLOGY),
            epochs: counter(r, "epochs_total", "Runs started in this process (a cluster worker starts one per epoch).", TOPOLOGY),
            rss: {
                let g = made(IntGauge::new("process_resident_bytes", "Resident memory of this process."));
                made(r.register(Box::new(g.clone())));
                g
            },
            registry,
        }
    }

    /// The Prometheus text format of every metric.
    pub fn render(&self) -> String {
        self.refresh();
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# cannot encode: {e}\n"))
    }

    /// Brings the gauges read at scrape time up to date.
    fn refresh(&self) {
        if let Some(rss) = resident_bytes() {
            self.rss.set(rss);
        }
    }

    /// The handles one processor instance updates.
    pub fn instance(&self, topology: &str, processor: &str, instance: u32) -> InstanceMeter {
        let i = instance.to_string();
        let l = [topology, processor, i.as_str()];
        InstanceMeter {
            records_in: self.records_in.with_label_values(&l),
            records_out: self.records_out.with_label_values(&l),
            batch: self.batch_seconds.with_label_values(&l),
            inbox: self.inbox_fill.with_label_values(&l),
            dead_letters: self.dead_letters.with_label_values(&[topology, processor]),
            skipped: self.skipped.with_label_values(&[topology, processor]),
            calls: CallMeter {
                calls: self.guest_calls.with_label_values(&l),
                seconds: self.guest_seconds.with_label_values(&l),
                traps: self.guest_traps.with_label_values(&l),
                timeouts: self.guest_timeouts.with_label_values(&l),
            },
        }
    }

    /// The handles a spout updates for its partition.
    pub fn partition(&self, topology: &str, partition: &str) -> PartitionMeter {
        let l = [topology, partition];
        PartitionMeter {
            position: self.position.with_label_values(&l),
            // Made once the end is known (a 0 would be a wrong answer).
            ends: Some((self.partition_end.clone(), self.lag.clone(), [topology.to_string(), partition.to_string()])),
            end: None,
            last_end: 0,
        }
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = made(IntCounterVec::new(Opts::new(name, help), labels));
    made(r.register(Box::new(c.clone())));
    c
}

fn fcounter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> CounterVec {
    let c = made(CounterVec::new(Opts::new(name, help), labels));
    made(r.register(Box::new(c.clone())));
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = made(GaugeVec::new(Opts::new(name, help), labels));
    made(r.register(Box::new(g.clone())));
    g
}

fn igauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = made(IntGaugeVec::new(Opts::new(name, help), labels));
    made(r.register(Box::new(g.clone())));
    g
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = made(HistogramVec::new(HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()), labels));
    made(r.register(Box::new(h.clone())));
    h
}

/// A counter (of the `prometheus` crate, which lives here only).
pub type Count = IntCounter;

/// What one processor instance counts.
#[derive(Clone)]
pub struct InstanceMeter {
    pub records_in: IntCounter,
    pub records_out: IntCounter,
    pub batch: Histogram,
    pub inbox: Gauge,
    /// Records of a spout left out or sent to its dead letters (per spout, not per instance).
    pub dead_letters: IntCounter,
    pub skipped: IntCounter,
    pub calls: CallMeter,
}

impl InstanceMeter {
    /// Sets the inbox gauge from a channel's length and capacity.
    pub fn inbox_fill(&self, len: usize, capacity: Option<usize>) {
        if let Some(cap) = capacity.filter(|&c| c > 0) {
            self.inbox.set(len as f64 / cap as f64);
        }
    }
}

/// What a guest's calls count.
#[derive(Clone)]
pub struct CallMeter {
    calls: IntCounter,
    seconds: Counter,
    traps: IntCounter,
    timeouts: IntCounter,
}

impl CallMeter {
    /// One call that took `took`; `fault`: it trapped (false) or timed out (true).
    pub fn call(&self, took: Duration, fault: Option<bool>) {
        self.calls.inc();
        self.seconds.inc_by(took.as_secs_f64());
        match fault {
            Some(true) => self.timeouts.inc(),
            Some(false) => self.traps.inc(),
            None => {}
        }
    }
}

/// What a spout's partition shows.
#[derive(Clone)]
pub struct PartitionMeter {
    position: IntGauge,
    ends: Option<(IntGaugeVec, IntGaugeVec, [String; 2])>,
    end: Option<(IntGauge, IntGauge)>,
    last_end: u64,
}

impl PartitionMeter {
    pub fn position(&mut self, position: u64) {
        self.position.set(clamp(position));
        if self.end.is_some() {
            // The end was looked up earlier: the position may have passed it since.
            self.end(self.last_end.max(position), position);
        }
    }

    /// The partition's end, when known.
    pub fn end(&mut self, end: u64, position: u64) {
        if let Some((ends, lags, [t, p])) = self.ends.take() {
            let l = [t.as_str(), p.as_str()];
            self.end = Some((ends.with_label_values(&l), lags.with_label_values(&l)));
        }
        self.last_end = end;
        if let Some((e, lag)) = &self.end {
            e.set(clamp(end));
            lag.set(clamp(end.saturating_sub(position)));
        }
    }
}

/// A u64 as a gauge's i64 (infinity and beyond become i64::MAX).
pub fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// This process's resident memory, from /proc (Linux).
fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// One series' value: a counter's or gauge's value, a histogram's count.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Without the `hailstorm_` prefix.
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

impl Metrics {
    /// The value of every series that exists.
    pub fn samples(&self) -> Vec<Sample> {
        use prometheus::proto::MetricType;
        self.refresh();
        let mut out = Vec::new();
        for family in self.registry.gather() {
            let name = family.name().strip_prefix("hailstorm_").unwrap_or(family.name()).to_string();
            for m in family.get_metric() {
                let value = match family.get_field_type() {
                    MetricType::COUNTER => m.get_counter().get_value(),
                    MetricType::GAUGE => m.get_gauge().get_value(),
                    MetricType::HISTOGRAM => m.get_histogram().get_sample_count() as f64,
                    _ => continue,
                };
                let labels = m.get_label().iter().map(|l| (l.name().to_string(), l.value().to_string())).collect();
                out.push(Sample { name: name.clone(), labels, value });
            }
        }
        out
    }
}
