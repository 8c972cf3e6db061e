//! The `hailstorm` command: parses arguments, calls the library, prints errors
//! and picks exit codes (0 success, 1 runtime failure, 2 bad topology, module,
//! configuration or usage; 70 if the WebAssembly engine cannot start at all).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use hailstorm::channel::Shutdown;
use hailstorm::error::classify;
use hailstorm::modbuild;
use hailstorm::observe::{logs, Observer};
use hailstorm::runtime::{self, human, RunOptions};
use hailstorm::topology::Topology;

#[derive(Parser)]
#[command(name = "hailstorm", version, about = "A stream processor with exactly-once state and WebAssembly user code.", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How logs are written to standard error: plain lines, or one JSON
    /// object per event with the topology, epoch, processor, instance and
    /// round it concerns.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct TopologyArgs {
    /// The topology file (TOML).
    file: PathBuf,
    /// Override a value of the file: a dotted key and a TOML value, e.g.
    /// --set snapshot.interval='"5s"' or --set bolts.counts.parallelism=4.
    /// A value that is not valid TOML is taken as a string. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Build stale modules, then run the topology. Without a [cluster] table it
    /// runs embedded: one process, files as partitions, snapshots in the store
    /// directory. Running it again resumes from the last complete snapshot.
    Deploy {
        #[command(flatten)]
        topology: TopologyArgs,
        /// Keep tailing the input files instead of stopping at their end.
        #[arg(long)]
        follow: bool,
        /// Print no progress lines (the summary and errors still print).
        #[arg(long, short)]
        quiet: bool,
        /// Seconds between progress lines.
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
        progress_every: f64,
        /// Serve Prometheus metrics at /metrics and the web view at / on
        /// this address (embedded mode; port 0 picks a free port). Off by default.
        #[arg(long, value_name = "HOST:PORT")]
        metrics_addr: Option<String>,
    },
    /// Check the topology and every module without running anything (and
    /// without building anything unless --build: build commands are shell
    /// commands from the file).
    Validate {
        #[command(flatten)]
        topology: TopologyArgs,
        /// Build stale modules first, as deploy does.
        #[arg(long)]
        build: bool,
    },
    /// Join a cluster: register in ZooKeeper and run the instances the leader places here.
    Worker {
        /// ZooKeeper servers and cluster root: HOST:PORT[,HOST:PORT...][/ROOT] (root: /hailstorm).
        #[arg(long, value_name = "HOST:PORT[/ROOT]")]
        zookeeper: String,
        /// Where to accept connections from other workers (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
        listen: String,
        /// The address other workers use to reach this one (default: the listen address).
        #[arg(long, value_name = "HOST:PORT")]
        advertise: Option<String>,
        /// ZooKeeper session timeout: a worker silent this long is considered dead.
        #[arg(long, default_value = "6s", value_parser = parse_duration)]
        session_timeout: Duration,
        /// Where the worker caches modules (default: a fresh private temporary
        /// directory, removed when the worker stops). It must not be writable by other users.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The only directories (and what lies under them) a sink running on
        /// this worker may be granted; without it, sinks may be granted none.
        #[arg(long, value_name = "DIR", num_args = 1..)]
        allow_grants: Vec<PathBuf>,
        /// Speak mutual TLS with the other workers, with the CA and this
        /// worker's certificate from this directory (see `hailstorm certs`).
        #[arg(long, value_name = "DIR", requires = "tls_name")]
        tls_dir: Option<PathBuf>,
        /// This worker's certificate: TLS_DIR/NAME.pem and TLS_DIR/NAME.key.
        #[arg(long, value_name = "NAME", requires = "tls_dir")]
        tls_name: Option<String>,
        /// Serve Prometheus metrics at /metrics and the web view at / on
        /// this address (port 0 picks a free port). Off by default.
        #[arg(long, value_name = "HOST:PORT")]
        metrics_addr: Option<String>,
    },
    /// Show a cluster's workers and topologies: state, placement, last complete round, lag.
    Status {
        /// Only this topology.
        name: Option<String>,
        #[arg(long, value_name = "HOST:PORT[/ROOT]", default_value = "127.0.0.1:2181")]
        zookeeper: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Refresh every this many seconds until interrupted (JSON: one
        /// document per line).
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<f64>,
    },
    /// Stop a topology on its cluster after a final snapshot.
    Stop {
        name: String,
        #[arg(long, value_name = "HOST:PORT[/ROOT]", default_value = "127.0.0.1:2181")]
        zookeeper: String,
    },
    /// Write every line of FILEs as one record to a Kafka topic (created if missing).
    Produce {
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long)]
        topic: String,
        /// Partitions of the topic if it is created (default 4).
        #[arg(long)]
        partitions: Option<u32>,
        /// Records per produced batch (librdkafka's batch.num.messages).
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
        /// Compression of the produced batches.
        #[arg(long, default_value = "none", value_parser = ["none", "gzip", "snappy", "lz4", "zstd"])]
        compression: String,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Make the certificates of a cluster whose workers speak mutual TLS.
    Certs {
        #[command(subcommand)]
        what: Certs,
    },
    /// Build the topology's modules (all of them with --force, else only stale ones).
    Build {
        #[command(flatten)]
        topology: TopologyArgs,
        /// Rebuild even modules that look up to date.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum Certs {
    /// Write a new cluster CA: DIR/ca.pem and DIR/ca.key (keep ca.key off the workers).
    Init { dir: PathBuf },
    /// Write DIR/NAME.pem and DIR/NAME.key, a worker certificate signed by the CA in DIR.
    Issue { dir: PathBuf, name: String },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    hailstorm::topology::parse_duration(s)
}

/// Loads the topology and builds its stale modules.
fn load(args: &TopologyArgs) -> Result<Topology> {
    let t = Topology::load(&args.file, &args.set)?;
    modbuild::build_modules(&t, false)?;
    Ok(t)
}

/// Loads and checks every module, and starts every deserializer and bolt with its config.
fn prepare(t: Topology) -> Result<runtime::Prepared> {
    let p = runtime::prepare(t)?;
    runtime::check_configs(&p)?;
    Ok(p)
}

/// `hailstorm certs`: its errors are usage errors (exit 2).
fn certs(what: Certs) -> Result<()> {
    use hailstorm::error::{mark, Domain};
    use hailstorm::net::tls::certs;
    let (dir, made) = match what {
        Certs::Init { dir } => {
            certs::init(&dir).map_err(|e| mark(e, Domain::Usage, false))?;
            (dir, "ca".to_string())
        }
        Certs::Issue { dir, name } => {
            certs::issue(&dir, &name).map_err(|e| mark(e, Domain::Usage, false))?;
            (dir, name)
        }
    };
    let (pem, key) = (dir.join(format!("{made}.pem")), dir.join(format!("{made}.key")));
    eprintln!("hailstorm: wrote {} and {}", pem.display(), key.display());
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Validate { topology, build } => validate(&topology, build),
        Command::Worker {
            zookeeper,
            listen,
            advertise,
            session_timeout,
            data_dir,
            allow_grants,
            tls_dir,
            tls_name,
            metrics_addr,
        } => {
            let stop = stop_on_signals()?;
            let o = hailstorm::cluster::WorkerOptions {
                zookeeper,
                listen,
                advertise,
                session_timeout,
                data_dir,
                allow_grants,
                tls: tls_dir.zip(tls_name),
                metrics_addr,
            };
            hailstorm::cluster::run_worker(o, &stop)
        }
        Command::Certs { what } => certs(what),
        Command::Status { name, zookeeper, json, watch } => status(&zookeeper, name.as_deref(), json, watch),
        Command::Stop { name, zookeeper } => {
            println!("{}", hailstorm::cluster::stop(&zookeeper, &name)?);
            Ok(())
        }
        Command::Produce { brokers, topic, partitions, batch, compression, files } => {
            let batching = hailstorm::kafka::Batching { records_per_batch: batch.max(1), compression: &compression };
            let r = hailstorm::kafka::produce(&brokers, &topic, partitions, &files, batching)?;
            let secs = r.elapsed.as_secs_f64().max(1e-9);
            let rate = human(r.records as f64 / secs);
            let (n, parts) = (r.records, r.partitions);
            println!(
                "produced {n} records to topic `{topic}` ({parts} partitions) on {brokers} in {secs:.2}s ({rate}/s)"
            );
            Ok(())
        }
        Command::Build { topology, force } => {
            let t = Topology::load(&topology.file, &topology.set)?;
            let r = modbuild::build_modules(&t, force)?;
            println!("built {} command(s); {} module(s) were up to date", r.ran.len(), r.fresh);
            Ok(())
        }
        Command::Deploy { topology, follow, quiet, progress_every, metrics_addr } => {
            let p = prepare(load(&topology)?)?;
            runtime::check_connectors(&p)?;
            if p.topology.cluster.is_some() {
                println!("{}", hailstorm::cluster::deploy(&p, &topology.set)?);
                return Ok(());
            }
            let progress = (!quiet && progress_every > 0.0).then(|| Duration::from_secs_f64(progress_every));
            deploy_embedded(p, follow, progress, metrics_addr.as_deref())
        }
    }
}

fn validate(topology: &TopologyArgs, build: bool) -> Result<()> {
    let t = if build { load(topology)? } else { Topology::load(&topology.file, &topology.set)? };
    let unbuilt: Vec<String> = t
        .modules()
        .iter()
        .filter(|(_, _, m)| m.build.is_some() && !m.path.exists())
        .map(|(_, _, m)| m.key.clone())
        .collect();
    let p = prepare(t).map_err(|e| {
        if unbuilt.is_empty() {
            return e;
        }
        let hint = format!(
            "{} not built, and validate builds nothing unless asked: run `hailstorm validate --build` or `hailstorm build`",
            unbuilt.join(", ")
        );
        e.context(hint)
    })?;
    let t = &p.topology;
    println!(
        "{}: ok — {} spout(s), {} bolt(s), {} sink(s), {} partition(s), {} module(s) checked",
        topology.file.display(),
        t.spouts.len(),
        t.bolts.len(),
        t.sinks.len(),
        p.plan.partitions.len(),
        t.modules().len()
    );
    Ok(())
}

/// `status`: once, or every `watch` seconds until interrupted.
fn status(zookeeper: &str, name: Option<&str>, json: bool, watch: Option<f64>) -> Result<()> {
    let every = watch.map(|s| Duration::from_secs_f64(s.clamp(0.1, 3600.0)));
    let stop = if every.is_some() { Some(stop_on_signals()?) } else { None };
    loop {
        let s = hailstorm::cluster::status(zookeeper, name)?;
        match (json, every) {
            (true, None) => println!("{}", serde_json::to_string_pretty(&s)?),
            (true, Some(_)) => println!("{}", serde_json::to_string(&s)?),
            (false, None) => print!("{}", hailstorm::cluster::show_status(&s)),
            // Clear the screen, then the status and when it was read.
            (false, Some(_)) => print!(
                "\x1b[2J\x1b[H{}\n(every {:.1}s; Ctrl-C stops)\n",
                hailstorm::cluster::show_status(&s),
                watch.unwrap_or(0.0)
            ),
        }
        let (Some(every), Some(stop)) = (every, &stop) else { return Ok(()) };
        let until = std::time::Instant::now() + every;
        while std::time::Instant::now() < until {
            if stop.is_draining() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn deploy_embedded(
    p: runtime::Prepared,
    follow: bool,
    progress: Option<Duration>,
    metrics_addr: Option<&str>,
) -> Result<()> {
    let t = &p.topology;
    let shape: Vec<String> = t
        .bolts
        .iter()
        .map(|b| format!("bolt {}×{}", b.name, b.parallelism))
        .chain(t.sinks.iter().map(|s| format!("sink {}", s.name)))
        .collect();
    logs::info(format_args!(
        "hailstorm: deploying `{}` embedded: {} partition(s), {}, store {}",
        t.name,
        p.plan.partitions.len(),
        shape.join(", "),
        t.store_dir().display()
    ));
    let shutdown = stop_on_signals()?;
    let observer = Observer::new();
    let _endpoint = match metrics_addr {
        Some(a) => {
            let e = hailstorm::observe::serve(a, observer.clone())
                .map_err(|e| hailstorm::error::mark(e, hailstorm::error::Domain::Usage, false))?;
            logs::info(format_args!(
                "hailstorm: metrics on http://{}/metrics, web view on http://{}/",
                e.addr(),
                e.addr()
            ));
            Some(e)
        }
        None => None,
    };
    let opts = RunOptions { follow, progress, shutdown, observer, place: Default::default() };
    let s = runtime::run_embedded(p, opts)?;
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    logs::info(format_args!(
        "hailstorm: done: {} records, {} tuples in {:.2}s ({} records/s, {} tuples/s); {} snapshot(s) taken; last complete snapshot #{} at {}",
        s.records,
        s.tuples,
        secs,
        human(s.records as f64 / secs),
        human(s.tuples as f64 / secs),
        s.rounds,
        s.last_round.map_or("-".into(), |r| r.to_string()),
        s.last_clock
    ));
    Ok(())
}

/// Logs to standard error, filtered by `HAILSTORM_LOG`.
fn logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HAILSTORM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,zookeeper_client=warn,rdkafka=warn"));
    let base = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == LogFormat::Json {
        hailstorm::observe::logs::set_json(true);
        base.json().with_current_span(true).with_span_list(true).init();
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        base.with_target(false).with_ansi(ansi).init();
    }
}

/// The first Ctrl-C (or SIGTERM) asks for a graceful stop: a final snapshot
/// that the sinks write. A second one exits at once (the last complete
/// snapshot is safe either way).
fn stop_on_signals() -> Result<Shutdown> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let shutdown = Shutdown::new();
    let flag = shutdown.drain_flag();
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone())?;
        signal_hook::flag::register(sig, flag.clone())?;
    }
    Ok(shutdown)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logs(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logs::error(format_args!("error: {e:#}"));
            ExitCode::from(classify(&e).domain.exit_code())
        }
    }
}
