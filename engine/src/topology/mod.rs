//! The topology file: parsing, `--set` overrides and validation.
//!
//! Two stages, as the file format promises: [`tree`] turns TOML into a tree
//! that remembers lines, then [`Topology::from_tree`] checks every key and
//! builds the typed [`Topology`], collecting *all* problems before it reports
//! them, each with the file, the line and the dotted key.

pub mod tree;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tree::{Loc, Node, Val};

mod connector;
mod graph;

pub use connector::{
    Connector, KafkaOut, PostgresOut, DEFAULT_PENDING_ROUNDS, DEFAULT_PG_URL_ENV, DEFAULT_SINK_BROKERS,
};

/// One problem found in a topology file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub loc: Loc,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.loc {
            Loc::Line(n) => write!(f, "{}:{}: ", self.file, n)?,
            other => write!(f, "{} ({}): ", self.file, other)?,
        }
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "`{}`: {}", self.key, self.message)
        }
    }
}

/// Every problem found in a topology file, reported together.
#[derive(Debug, Clone, thiserror::Error)]
pub struct TopologyError {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.diagnostics.len();
        writeln!(f, "the topology has {n} problem{}:", if n == 1 { "" } else { "s" })?;
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {d}")?;
        }
        Ok(())
    }
}

/// How tuples from an input are spread over a bolt's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// By hash of the tuple's key: one key always reaches the same instance.
    Key,
    /// Every instance receives every tuple.
    Broadcast,
    /// Every tuple goes to instance 0 (the bolt has parallelism 1).
    Global,
}

/// Per-call deadline and memory cap of a module's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub call_timeout: Duration,
    pub memory_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { call_timeout: Duration::from_secs(5), memory_bytes: 256 << 20 }
    }
}

/// How a module file is (re)built before it is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BuildSpec {
    /// A shell command (`sh -c`).
    pub command: String,
    /// Where it runs.
    pub workdir: PathBuf,
    /// Files or directories whose change makes the module stale. Empty: always run the
    /// command and let the build tool decide.
    pub watch: Vec<PathBuf>,
}

/// A WebAssembly module as one processor uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleRef {
    pub path: PathBuf,
    pub build: Option<BuildSpec>,
    /// The processor's `config` table, as JSON, handed to the module's `init`.
    pub config: serde_json::Value,
    pub limits: Limits,
    /// The dotted key that names the module in the file (for error messages).
    pub key: String,
    pub loc: Loc,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Each file is one partition; offsets are byte positions.
    Files(Vec<PathBuf>),
    /// A Kafka topic; each topic partition is one partition.
    Kafka { topic: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Spout {
    pub name: String,
    pub source: Source,
    pub module: ModuleRef,
    /// The longest record a file partition may hold (bytes up to a newline).
    pub max_record: u64,
    /// What a record the deserializer rejects or traps on does.
    pub on_error: OnError,
}

/// `spouts.NAME.on_error`: the policy for a record the deserializer rejects
/// (returns an error) or traps on (a panic, its deadline, its memory cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// The run stops, naming the record (the default).
    #[default]
    Fail,
    /// The record is left out (logged and counted).
    Skip,
    /// The record goes to the spout's dead-letter stream `NAME.dead`, which
    /// a bolt reads like any input: keyed `PARTITION@OFFSET`, its value the
    /// raw record and the error.
    DeadLetter,
}

/// The suffix that names a spout's dead-letter stream as an input.
pub const DEAD_LETTERS: &str = ".dead";

/// The default of `spouts.NAME.max_record`.
pub const DEFAULT_MAX_RECORD: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq)]
pub struct Bolt {
    pub name: String,
    pub inputs: Vec<String>,
    pub module: ModuleRef,
    pub parallelism: u32,
    pub grouping: Grouping,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sink {
    pub name: String,
    pub inputs: Vec<String>,
    pub module: ModuleRef,
    /// Directories the sink may read and write (WASI pre-opens).
    pub dirs: Vec<PathBuf>,
    /// Where the engine writes the sink's output itself; `module` is then
    /// its serializer. `None`: `module` is a WebAssembly sink.
    pub connector: Option<Connector>,
    /// A connector sink's bound of complete rounds it has not written,
    /// past which the spouts wait for it (`None`: a WebAssembly sink).
    pub max_pending_rounds: Option<usize>,
}

impl Sink {
    /// The kind of the sink's module: a serializer for a connector sink.
    pub fn module_kind(&self) -> ModuleKind {
        if self.connector.is_some() {
            ModuleKind::Serializer
        } else {
            ModuleKind::Sink
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Store {
    /// A directory of this machine (or a shared mount).
    File(PathBuf),
    /// `s3://BUCKET/PREFIX` in S3-compatible object storage (endpoint and
    /// credentials from the `AWS_*` environment); objects no kept round
    /// needs are deleted once older than `grace`.
    S3 { url: String, grace: Duration },
}

/// The bucket and prefix of an `s3://BUCKET/PREFIX` URL.
pub fn parse_s3_url(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("s3://").ok_or_else(|| format!("`{url}` does not start with s3://"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_matches('/');
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !bucket_ok {
        return Err(format!(
            "`{bucket}` is not a bucket name (3 to 63 lowercase letters, digits, `-` and `.`); write s3://BUCKET/PREFIX"
        ));
    }
    if prefix.split('/').any(|p| p.is_empty() || p == "." || p == "..") && !prefix.is_empty() {
        return Err(format!("the prefix `{prefix}` has an empty, `.` or `..` part"));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// How long an unreferenced object of an object store is kept before
/// collection deletes it (`snapshot.grace`).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub zookeeper: String,
    pub kafka: String,
}

/// The `[snapshot]` table.
struct Snapshot {
    interval: Duration,
    round_timeout: Option<Duration>,
    store: Store,
}

/// A validated topology. Paths are absolute.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub name: String,
    pub file: PathBuf,
    pub dir: PathBuf,
    pub interval: Duration,
    /// `snapshot.round_timeout` as given; see [`Topology::round_timeout`].
    pub round_timeout: Option<Duration>,
    pub store: Store,
    pub cluster: Option<Cluster>,
    pub spouts: Vec<Spout>,
    pub bolts: Vec<Bolt>,
    pub sinks: Vec<Sink>,
}

impl Topology {
    /// How long a round may take in the cluster before the world is
    /// rebooted: `snapshot.round_timeout`, by default 5 intervals and at
    /// least 30 s.
    pub fn round_timeout(&self) -> Duration {
        self.round_timeout.unwrap_or_else(|| (self.interval * 5).max(Duration::from_secs(30)))
    }

    /// The sink grants (sink, directory) that lie under none of `roots`:
    /// the directories a worker run with `--allow-grants ROOTS` refuses.
    pub fn grants_outside(&self, roots: &[PathBuf]) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        for s in &self.sinks {
            for g in &s.dirs {
                if !roots.iter().any(|r| g.starts_with(r)) {
                    out.push((s.name.clone(), g.clone()));
                }
            }
        }
        out
    }

    /// Reads, overrides and validates a topology file.
    pub fn load(file: &Path, overrides: &[String]) -> Result<Topology, TopologyError> {
        let shown = file.display().to_string();
        let fail = |loc: Loc, message: String| TopologyError {
            diagnostics: vec![Diagnostic { file: shown.clone(), loc, key: String::new(), message }],
        };
        let src = std::fs::read_to_string(file)
            .map_err(|e| fail(Loc::Nowhere, format!("cannot read the topology file: {e}")))?;
        Topology::from_source(&src, file, overrides)
    }

    /// Parses, overrides and validates a topology's text; relative paths start at `file`'s directory.
    pub fn from_source(src: &str, file: &Path, overrides: &[String]) -> Result<Topology, TopologyError> {
        let shown = file.display().to_string();
        let fail = |loc: Loc, message: String| TopologyError {
            diagnostics: vec![Diagnostic { file: shown.clone(), loc, key: String::new(), message }],
        };
        let mut root = tree::parse(src).map_err(|e| fail(Loc::Line(e.line), format!("invalid TOML: {}", e.message)))?;
        let mut diags = Vec::new();
        for o in overrides {
            if let Err(message) = tree::apply_override(&mut root, o) {
                diags.push(Diagnostic {
                    file: shown.clone(),
                    loc: Loc::Override(o.clone()),
                    key: String::new(),
                    message,
                });
            }
        }
        let abs = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        let abs = clean(&abs);
        let dir = abs.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        match Topology::from_tree(&root, &shown, &abs, &dir) {
            Ok(t) if diags.is_empty() => Ok(t),
            Ok(_) => Err(TopologyError { diagnostics: diags }),
            Err(mut e) => {
                diags.append(&mut e.diagnostics);
                Err(TopologyError { diagnostics: diags })
            }
        }
    }

    /// Validates a parsed tree. `dir` is where relative paths start.
    pub fn from_tree(root: &Node, shown: &str, file: &Path, dir: &Path) -> Result<Topology, TopologyError> {
        let mut cx = Cx { file: shown.to_string(), dir: dir.to_path_buf(), diags: Vec::new() };
        let t = cx.build(root);
        if cx.diags.is_empty() {
            if let Some(mut t) = t {
                t.file = file.to_path_buf();
                return Ok(t);
            }
        }
        Err(TopologyError { diagnostics: cx.diags })
    }

    /// Every module of the topology, with the processor that uses it and its kind.
    pub fn modules(&self) -> Vec<(&str, ModuleKind, &ModuleRef)> {
        let mut v: Vec<(&str, ModuleKind, &ModuleRef)> = Vec::new();
        v.extend(self.spouts.iter().map(|s| (s.name.as_str(), ModuleKind::Deserializer, &s.module)));
        v.extend(self.bolts.iter().map(|b| (b.name.as_str(), ModuleKind::Bolt, &b.module)));
        v.extend(self.sinks.iter().map(|s| (s.name.as_str(), s.module_kind(), &s.module)));
        v
    }

    pub fn bolt(&self, name: &str) -> Option<&Bolt> {
        self.bolts.iter().find(|b| b.name == name)
    }

    /// The store directory, for file stores; the URL, for object stores.
    pub fn store_dir(&self) -> &Path {
        match &self.store {
            Store::File(p) => p,
            Store::S3 { url, .. } => Path::new(url.as_str()),
        }
    }
}

/// What a module is for; decides its exports and allowed imports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModuleKind {
    Deserializer,
    Bolt,
    Sink,
    /// Shapes a connector sink's output (pure, like a deserializer).
    Serializer,
}

impl fmt::Display for ModuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModuleKind::Deserializer => "deserializer",
            ModuleKind::Bolt => "bolt",
            ModuleKind::Sink => "sink",
            ModuleKind::Serializer => "serializer",
        })
    }
}

/// Parses durations such as `300ms`, `2s`, `1.5s`, `5m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration (try \"300ms\", \"2s\" or \"1m\")"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{s}` is not a duration (units: ms, s, m, h)")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses sizes such as `64MiB`, `1GiB`, `65536`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size (try \"64MiB\")"))?;
    let mul: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        _ => return Err(format!("`{s}` is not a size (units: KiB, MiB, GiB)")),
    };
    n.checked_mul(mul).filter(|v| *v > 0).ok_or_else(|| format!("`{s}` is out of range"))
}

/// The validation context: collects diagnostics instead of stopping at the first.
pub(crate) struct Cx {
    file: String,
    dir: PathBuf,
    diags: Vec<Diagnostic>,
}

pub(crate) type Table = BTreeMap<String, Node>;

impl Cx {
    pub(crate) fn err(&mut self, loc: &Loc, key: &str, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            file: self.file.clone(),
            loc: loc.clone(),
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn table<'a>(&mut self, node: &'a Node, key: &str) -> Option<&'a Table> {
        match &node.val {
            Val::Table(t) => Some(t),
            _ => {
                self.err(&node.loc, key, format!("expected a table, found {}", node.type_name()));
                None
            }
        }
    }

    /// Reports every key of `t` not in `allowed`.
    fn known(&mut self, t: &Table, prefix: &str, allowed: &[&str]) {
        for (k, v) in t {
            if !allowed.contains(&k.as_str()) {
                let hint = closest(k, allowed).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
                self.err(
                    &v.loc,
                    &join(prefix, k),
                    format!("unknown key{hint}; expected one of: {}", allowed.join(", ")),
                );
            }
        }
    }

    fn str_at(&mut self, t: &Table, prefix: &str, k: &str, required: bool) -> Option<(String, Loc)> {
        match t.get(k) {
            Some(Node { val: Val::Str(s), loc }) => Some((s.clone(), loc.clone())),
            Some(n) => {
                self.err(&n.loc, &join(prefix, k), format!("expected a string, found {}", n.type_name()));
                None
            }
            None => {
                if required {
                    self.err(&Loc::Nowhere, &join(prefix, k), "missing (required)");
                }
                None
            }
        }
    }

    fn str_list(&mut self, t: &Table, prefix: &str, k: &str, required: bool) -> Option<(Vec<String>, Loc)> {
        let key = join(prefix, k);
        match t.get(k) {
            Some(Node { val: Val::Array(a), loc }) => {
                let mut out = Vec::new();
                for n in a {
                    match &n.val {
                        Val::Str(s) => out.push(s.clone()),
                        _ => self.err(&n.loc, &key, format!("expected strings, found {}", n.type_name())),
                    }
                }
                Some((out, loc.clone()))
            }
            Some(n) => {
                self.err(&n.loc, &key, format!("expected an array of strings, found {}", n.type_name()));
                None
            }
            None => {
                if required {
                    self.err(&Loc::Nowhere, &key, "missing (required)");
                }
                None
            }
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            clean(p)
        } else {
            clean(&self.dir.join(p))
        }
    }

    fn build(&mut self, root: &Node) -> Option<Topology> {
        let t = self.table(root, "")?;
        self.known(t, "", &["name", "snapshot", "cluster", "spouts", "bolts", "sinks"]);
        let name = self.str_at(t, "", "name", true).map(|(s, loc)| {
            if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                self.err(&loc, "name", "must be non-empty and use only letters, digits, `-` and `_`");
            }
            s
        });

        let snap = self.snapshot(t, name.as_deref().unwrap_or("topology"));

        let cluster = t.get("cluster").and_then(|n| {
            let c = self.table(n, "cluster")?;
            self.known(c, "cluster", &["zookeeper", "kafka"]);
            let zookeeper = self.str_at(c, "cluster", "zookeeper", true)?.0;
            let kafka = self.str_at(c, "cluster", "kafka", true)?.0;
            Some(Cluster { zookeeper, kafka })
        });

        let spouts = self.section(t, "spouts", |cx, name, t| cx.spout(name, t));
        let bolts = self.section(t, "bolts", |cx, name, t| cx.bolt(name, t));
        let sinks = self.section(t, "sinks", |cx, name, t| cx.sink(name, t));
        if spouts.is_empty() && !t.contains_key("spouts") {
            self.err(&Loc::Nowhere, "spouts", "a topology needs at least one spout");
        }
        self.check_graph(t, &spouts, &bolts, &sinks);
        for s in &spouts {
            if matches!(s.source, Source::Kafka { .. }) && cluster.is_none() {
                self.err(
                    &s.module.loc,
                    &format!("spouts.{}.source.kafka", s.name),
                    "a Kafka source needs a [cluster] table (zookeeper, kafka)",
                );
            }
        }
        let table = t;
        let t = Topology {
            name: name?,
            file: PathBuf::new(),
            dir: self.dir.clone(),
            interval: snap.interval,
            round_timeout: snap.round_timeout,
            store: snap.store,
            cluster,
            spouts,
            bolts,
            sinks,
        };
        self.check_grants(&t, table);
        Some(t)
    }

    /// A sink's grants must not reach what the engine trusts: the topology
    /// file, the store, the inputs and the modules (a sink could rewrite them),
    /// nor the whole file system or a home directory.
    fn check_grants(&mut self, t: &Topology, table: &Table) {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let mut guarded: Vec<(&Path, &str)> = vec![(&t.dir, "the topology's directory")];
        if let Store::File(p) = &t.store {
            guarded.push((p, "the store"));
        }
        for s in &t.spouts {
            if let Source::Files(files) = &s.source {
                guarded.extend(files.iter().map(|f| (f.as_path(), "an input file")));
            }
        }
        guarded.extend(t.modules().into_iter().map(|(_, _, m)| (m.path.as_path(), "a module")));
        for s in &t.sinks {
            let key = format!("sinks.{}.grants.dirs", s.name);
            for g in &s.dirs {
                let why = if g.parent().is_none() {
                    Some("the whole file system".to_string())
                } else if home.as_deref().is_some_and(|h| h.starts_with(g)) {
                    Some("a home directory".to_string())
                } else {
                    guarded
                        .iter()
                        .find(|(p, what)| p.starts_with(g) || (*what == "the store" && g.starts_with(p)))
                        .map(|(p, what)| format!("{what} ({})", p.display()))
                };
                if let Some(why) = why {
                    let loc = grants_loc(table, &s.name);
                    self.err(&loc, &key, format!("`{}` would let the sink write {why}", g.display()));
                }
            }
        }
    }

    /// The `[snapshot]` table.
    fn snapshot(&mut self, t: &Table, name: &str) -> Snapshot {
        let mut snap = Snapshot {
            interval: Duration::from_secs(2),
            round_timeout: None,
            store: Store::File(self.dir.join(".hailstorm").join(name)),
        };
        let Some(s) = t.get("snapshot").and_then(|n| self.table(n, "snapshot")) else { return snap };
        self.known(s, "snapshot", &["interval", "store", "round_timeout", "grace"]);
        if let Some((v, loc)) = self.str_at(s, "snapshot", "interval", false) {
            match parse_duration(&v) {
                Ok(d) => snap.interval = d,
                Err(e) => self.err(&loc, "snapshot.interval", e),
            }
        }
        if let Some((v, loc)) = self.str_at(s, "snapshot", "round_timeout", false) {
            match parse_duration(&v) {
                Ok(d) if !d.is_zero() => snap.round_timeout = Some(d),
                Ok(_) => self.err(&loc, "snapshot.round_timeout", "must be above zero"),
                Err(e) => self.err(&loc, "snapshot.round_timeout", e),
            }
        }
        let mut grace = DEFAULT_GRACE;
        if let Some((v, loc)) = self.str_at(s, "snapshot", "grace", false) {
            // No grace at all is allowed here (tests, a store no one else writes).
            let zero = v.trim().trim_end_matches(['s', 'm', 'h']).trim_end_matches('m') == "0";
            match if zero { Ok(Duration::ZERO) } else { parse_duration(&v) } {
                Ok(d) => grace = d,
                Err(e) => self.err(&loc, "snapshot.grace", e),
            }
        }
        if let Some((v, loc)) = self.str_at(s, "snapshot", "store", false) {
            match (v.strip_prefix("file:"), v.starts_with("s3://")) {
                (Some(p), _) if !p.is_empty() => snap.store = Store::File(self.path(p)),
                (_, true) => match parse_s3_url(&v) {
                    Ok(_) => snap.store = Store::S3 { url: v.trim_end_matches('/').to_string(), grace },
                    Err(e) => self.err(&loc, "snapshot.store", e),
                },
                _ => self.err(
                    &loc,
                    "snapshot.store",
                    format!("`{v}` is not a store URL; use `file:PATH` or `s3://BUCKET/PREFIX`"),
                ),
            }
        }
        snap
    }

    fn section<T>(&mut self, t: &Table, key: &str, mut f: impl FnMut(&mut Self, &str, &Table) -> Option<T>) -> Vec<T> {
        let mut out = Vec::new();
        let Some(n) = t.get(key) else { return out };
        let Some(s) = self.table(n, key) else { return out };
        for (name, node) in s {
            let prefix = format!("{key}.{name}");
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                self.err(&node.loc, &prefix, "processor names use only letters, digits, `-` and `_`");
            }
            if let Some(pt) = self.table(node, &prefix) {
                if let Some(x) = f(self, name, pt) {
                    out.push(x);
                }
            }
        }
        out
    }

    fn module(&mut self, t: &Table, prefix: &str, field: &str) -> Option<ModuleRef> {
        let (path, loc) = self.str_at(t, prefix, field, true)?;
        let build = t.get("build").and_then(|n| {
            let key = join(prefix, "build");
            let b = self.table(n, &key)?;
            self.known(b, &key, &["command", "workdir", "watch"]);
            let command = self.str_at(b, &key, "command", true)?.0;
            let workdir =
                self.str_at(b, &key, "workdir", false).map(|(w, _)| self.path(&w)).unwrap_or_else(|| self.dir.clone());
            let watch = self
                .str_list(b, &key, "watch", false)
                .map(|(w, _)| w.iter().map(|p| self.path(p)).collect())
                .unwrap_or_default();
            Some(BuildSpec { command, workdir, watch })
        });
        let config = match t.get("config") {
            Some(n) => match &n.val {
                Val::Table(_) => n.to_json(),
                _ => {
                    self.err(&n.loc, &join(prefix, "config"), format!("expected a table, found {}", n.type_name()));
                    serde_json::Value::Null
                }
            },
            None => serde_json::json!({}),
        };
        let mut limits = Limits::default();
        if let Some(n) = t.get("limits") {
            let key = join(prefix, "limits");
            if let Some(l) = self.table(n, &key) {
                self.known(l, &key, &["call_timeout", "memory"]);
                if let Some((v, loc)) = self.str_at(l, &key, "call_timeout", false) {
                    match parse_duration(&v) {
                        Ok(d) => limits.call_timeout = d,
                        Err(e) => self.err(&loc, &join(&key, "call_timeout"), e),
                    }
                }
                if let Some((v, loc)) = self.str_at(l, &key, "memory", false) {
                    match parse_size(&v) {
                        Ok(d) if d >= 1 << 16 => limits.memory_bytes = d,
                        Ok(_) => self.err(&loc, &join(&key, "memory"), "must be at least 64KiB (one WebAssembly page)"),
                        Err(e) => self.err(&loc, &join(&key, "memory"), e),
                    }
                }
            }
        }
        Some(ModuleRef { path: self.path(&path), build, config, limits, key: join(prefix, field), loc })
    }

    fn spout(&mut self, name: &str, t: &Table) -> Option<Spout> {
        let prefix = format!("spouts.{name}");
        self.known(t, &prefix, &["source", "deserializer", "build", "config", "limits", "max_record", "on_error"]);
        let max_record = self.max_record(t, &prefix);
        let on_error = self.on_error(t, &prefix);
        let source = match t.get("source") {
            None => {
                self.err(
                    &Loc::Nowhere,
                    &join(&prefix, "source"),
                    "missing (required): `{ files = [...] }` or `{ kafka = { topic = \"...\" } }`",
                );
                None
            }
            Some(n) => {
                let key = join(&prefix, "source");
                let s = self.table(n, &key)?;
                self.known(s, &key, &["files", "kafka"]);
                match (s.contains_key("files"), s.get("kafka")) {
                    (true, None) => {
                        let (files, loc) = self.str_list(s, &key, "files", true)?;
                        if files.is_empty() {
                            self.err(&loc, &join(&key, "files"), "needs at least one file");
                        }
                        Some(Source::Files(files.iter().map(|f| self.path(f)).collect()))
                    }
                    (false, Some(k)) => {
                        let kkey = join(&key, "kafka");
                        let kt = self.table(k, &kkey)?;
                        self.known(kt, &kkey, &["topic"]);
                        Some(Source::Kafka { topic: self.str_at(kt, &kkey, "topic", true)?.0 })
                    }
                    _ => {
                        self.err(&n.loc, &key, "give exactly one of `files` or `kafka`");
                        None
                    }
                }
            }
        };
        let module = self.module(t, &prefix, "deserializer");
        Some(Spout { name: name.to_string(), source: source?, module: module?, max_record, on_error })
    }

    fn on_error(&mut self, t: &Table, prefix: &str) -> OnError {
        let Some((v, loc)) = self.str_at(t, prefix, "on_error", false) else { return OnError::Fail };
        match v.as_str() {
            "fail" => OnError::Fail,
            "skip" => OnError::Skip,
            "dead-letter" => OnError::DeadLetter,
            other => {
                let why = format!("`{other}` is not a policy; use fail, skip or dead-letter");
                self.err(&loc, &join(prefix, "on_error"), why);
                OnError::Fail
            }
        }
    }

    fn max_record(&mut self, t: &Table, prefix: &str) -> u64 {
        let Some((v, loc)) = self.str_at(t, prefix, "max_record", false) else { return DEFAULT_MAX_RECORD };
        match parse_size(&v) {
            Ok(n) if n >= 1 => n,
            Ok(_) => {
                self.err(&loc, &join(prefix, "max_record"), "must be at least 1 byte");
                DEFAULT_MAX_RECORD
            }
            Err(e) => {
                self.err(&loc, &join(prefix, "max_record"), e);
                DEFAULT_MAX_RECORD
            }
        }
    }

    fn inputs(&mut self, t: &Table, prefix: &str) -> Vec<String> {
        match self.str_list(t, prefix, "inputs", true) {
            Some((v, loc)) => {
                if v.is_empty() {
                    self.err(&loc, &join(prefix, "inputs"), "needs at least one input");
                }
                v
            }
            None => Vec::new(),
        }
    }

    fn bolt(&mut self, name: &str, t: &Table) -> Option<Bolt> {
        let prefix = format!("bolts.{name}");
        self.known(t, &prefix, &["inputs", "module", "parallelism", "grouping", "build", "config", "limits"]);
        let inputs = self.inputs(t, &prefix);
        let parallelism = self.int_at(t, &prefix, "parallelism", 1..=1024).map_or(1, |p| p as u32);
        let grouping = match self.str_at(t, &prefix, "grouping", false) {
            None => Grouping::Key,
            Some((g, loc)) => match g.as_str() {
                "key" => Grouping::Key,
                "broadcast" => Grouping::Broadcast,
                "global" => {
                    if parallelism != 1 {
                        self.err(
                            &loc,
                            &join(&prefix, "grouping"),
                            "`global` sends every tuple to one instance: use parallelism = 1",
                        );
                    }
                    Grouping::Global
                }
                other => {
                    self.err(
                        &loc,
                        &join(&prefix, "grouping"),
                        format!("`{other}` is not a grouping; use key, broadcast or global"),
                    );
                    Grouping::Key
                }
            },
        };
        let module = self.module(t, &prefix, "module")?;
        Some(Bolt { name: name.to_string(), inputs, module, parallelism, grouping })
    }

    /// The integer at `prefix.key`, if it is there and in `range` (else an error).
    fn int_at(&mut self, t: &Table, prefix: &str, key: &str, range: std::ops::RangeInclusive<i64>) -> Option<i64> {
        let n = t.get(key)?;
        let what = match &n.val {
            Val::Int(i) if range.contains(i) => return Some(*i),
            Val::Int(i) => format!("must be between {} and {}, found {i}", range.start(), range.end()),
            _ => format!("expected an integer, found {}", n.type_name()),
        };
        self.err(&n.loc, &join(prefix, key), what);
        None
    }

    fn sink(&mut self, name: &str, t: &Table) -> Option<Sink> {
        let prefix = format!("sinks.{name}");
        self.known(
            t,
            &prefix,
            &[
                "inputs",
                "module",
                "serializer",
                "kafka",
                "postgres",
                "max_pending_rounds",
                "build",
                "config",
                "grants",
                "limits",
            ],
        );
        let inputs = self.inputs(t, &prefix);
        let connector = self.connector(t, &prefix);
        let field = if t.contains_key("kafka") || t.contains_key("postgres") { "serializer" } else { "module" };
        let other = if field == "module" { "serializer" } else { "module" };
        if let Some(n) = t.get(other) {
            let why = match other {
                "serializer" => "a serializer shapes the output of a `kafka` or `postgres` sink; this sink has neither",
                _ => "a `kafka` or `postgres` sink names its `serializer`, not a sink `module`",
            };
            self.err(&n.loc, &join(&prefix, other), why);
        }
        if let (Some(g), true) = (t.get("grants"), field == "serializer") {
            self.err(&g.loc, &join(&prefix, "grants"), "a serializer is pure: it gets no grants");
        }
        let mut dirs = Vec::new();
        if let Some(n) = t.get("grants") {
            let key = join(&prefix, "grants");
            if let Some(g) = self.table(n, &key) {
                self.known(g, &key, &["dirs"]);
                if let Some((d, _)) = self.str_list(g, &key, "dirs", false) {
                    dirs = d.iter().map(|p| self.path(p)).collect();
                }
            }
        }
        let pending = self.int_at(t, &prefix, "max_pending_rounds", 1..=100_000).map(|n| n as usize);
        if let (Some(n), false) = (t.get("max_pending_rounds"), field == "serializer") {
            let why = "applies to a `kafka` or `postgres` sink (a sink module may decline rounds)";
            self.err(&n.loc, &join(&prefix, "max_pending_rounds"), why);
        }
        let max_pending_rounds = (field == "serializer").then(|| pending.unwrap_or(DEFAULT_PENDING_ROUNDS));
        let module = self.module(t, &prefix, field)?;
        Some(Sink { name: name.to_string(), inputs, module, dirs, connector, max_pending_rounds })
    }
}

/// Removes `.` and `name/..` from a path, so messages show `/repo/out` rather
/// than `/repo/topologies/../out` (and sinks' grants match their paths).
/// Where sink `name`'s `grants` are written.
fn grants_loc(root: &Table, name: &str) -> Loc {
    let sink = match root.get("sinks").map(|n| &n.val) {
        Some(Val::Table(sinks)) => sinks.get(name),
        _ => None,
    };
    match sink.map(|n| &n.val) {
        Some(Val::Table(t)) => match t.get("grants") {
            Some(Node { val: Val::Table(g), loc }) => g.get("dirs").map_or(loc.clone(), |d| d.loc.clone()),
            Some(g) => g.loc.clone(),
            None => Loc::Nowhere,
        },
        _ => Loc::Nowhere,
    }
}

pub fn clean(p: &Path) -> PathBuf {
    hailstorm_abi::normalize_path(p)
}

fn join(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

/// The allowed word closest to `word`, if it is close enough to be a likely typo.
pub(crate) fn closest<'a>(word: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed.iter().map(|a| (edit_distance(word, a), *a)).filter(|(d, a)| *d <= 2.max(a.len() / 3)).min().map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(src: &str) -> Result<Topology, TopologyError> {
        let root = tree::parse(src).map_err(|e| TopologyError {
            diagnostics: vec![Diagnostic {
                file: "t.toml".into(),
                loc: Loc::Line(e.line),
                key: String::new(),
                message: e.message,
            }],
        })?;
        Topology::from_tree(&root, "t.toml", Path::new("/x/t.toml"), Path::new("/x"))
    }

    const GOOD: &str = r#"
name = "wc"
[snapshot]
interval = "300ms"
store = "file:state"
[spouts.lines]
source = { files = ["a.txt", "/abs/b.txt"] }
deserializer = "split.wasm"
[bolts.counts]
inputs = ["lines"]
module = "count.wasm"
parallelism = 2
config = { x = 1 }
[sinks.table]
inputs = ["counts"]
module = "table.wasm"
grants = { dirs = ["out"] }
"#;

    #[test]
    fn an_s3_store_is_a_bucket_and_prefix_with_a_grace() {
        let with = |store: &str, grace: Option<&str>| {
            let mut o = vec![format!("snapshot.store={store:?}")];
            o.extend(grace.map(|g| format!("snapshot.grace={g:?}")));
            Topology::from_source(GOOD, Path::new("/x/t.toml"), &o)
        };
        let t = with("s3://my-bucket/some/prefix/", Some("0s")).unwrap();
        assert_eq!(t.store, Store::S3 { url: "s3://my-bucket/some/prefix".into(), grace: Duration::ZERO });
        let t = with("s3://my-bucket", None).unwrap();
        assert_eq!(t.store, Store::S3 { url: "s3://my-bucket".into(), grace: DEFAULT_GRACE });
        assert_eq!(parse_s3_url("s3://b.c-d/x/y"), Ok(("b.c-d".into(), "x/y".into())));
        for (bad, says) in [
            ("s3://A_B/x", "is not a bucket name"),
            ("s3://ab/x", "is not a bucket name"),
            ("s3://bucket/x//y", "an empty, `.` or `..` part"),
            ("s3://bucket/../y", "an empty, `.` or `..` part"),
            ("gs://bucket/x", "is not a store URL"),
        ] {
            let e = with(bad, None).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let e = with("s3://bucket/x", Some("soon")).unwrap_err().to_string();
        assert!(e.contains("`snapshot.grace`"), "{e}");
    }

    #[test]
    fn good_topology() {
        let t = load(GOOD).unwrap();
        assert_eq!(t.interval, Duration::from_millis(300));
        assert_eq!(t.store, Store::File(PathBuf::from("/x/state")));
        assert_eq!(t.spouts[0].source, Source::Files(vec!["/x/a.txt".into(), "/abs/b.txt".into()]));
        assert_eq!(t.bolts[0].parallelism, 2);
        assert_eq!(t.bolts[0].module.config["x"], 1);
        assert_eq!(t.sinks[0].dirs, vec![PathBuf::from("/x/out")]);
    }

    #[test]
    fn every_error_is_reported_with_its_line() {
        let src = GOOD
            .replace("parallelism = 2", "parallelism = 2\nparalelism = 3")
            .replace("inputs = [\"counts\"]", "inputs = [\"cuonts\"]")
            .replace("\"300ms\"", "\"soon\"");
        let e = load(&src).unwrap_err();
        let text = e.to_string();
        assert_eq!(e.diagnostics.len(), 3, "{text}");
        assert!(text.contains("t.toml:4: `snapshot.interval`"), "{text}");
        assert!(text.contains("`bolts.counts.paralelism`: unknown key (did you mean `parallelism`?)"), "{text}");
        assert!(text.contains("unknown input `cuonts` (did you mean `counts`?)"), "{text}");
    }

    #[test]
    fn cycles_are_errors() {
        let src = format!("{GOOD}\n[bolts.a]\ninputs = [\"b\"]\nmodule = \"m.wasm\"\n[bolts.b]\ninputs = [\"a\", \"lines\"]\nmodule = \"m.wasm\"\n");
        let e = load(&src).unwrap_err();
        assert!(e.to_string().contains("cycle"), "{e}");
        assert_eq!(e.diagnostics.len(), 1, "{e}");
    }

    #[test]
    fn a_connector_sink_has_a_pending_bound_and_a_sink_module_none() {
        let pg = GOOD.replace(
            "module = \"table.wasm\"\ngrants = { dirs = [\"out\"] }",
            "serializer = \"rows.wasm\"\npostgres = { table = \"t\" }",
        );
        assert_eq!(load(&pg).unwrap().sinks[0].max_pending_rounds, Some(DEFAULT_PENDING_ROUNDS));
        assert_eq!(load(GOOD).unwrap().sinks[0].max_pending_rounds, None);
        let set = pg.replace("postgres = {", "max_pending_rounds = 4\npostgres = {");
        assert_eq!(load(&set).unwrap().sinks[0].max_pending_rounds, Some(4));
        for (src, want) in [
            (
                pg.replace("postgres = {", "max_pending_rounds = 0\npostgres = {"),
                "must be between 1 and 100000, found 0",
            ),
            (pg.replace("postgres = {", "max_pending_rounds = \"many\"\npostgres = {"), "expected an integer"),
            (GOOD.replace("grants =", "max_pending_rounds = 3\ngrants ="), "applies to a `kafka` or `postgres` sink"),
        ] {
            let e = load(&src).unwrap_err().to_string();
            assert!(e.contains("`sinks.table.max_pending_rounds`") && e.contains(want), "{e}");
        }
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("2 parsecs").is_err());
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(clean(Path::new("/a/b/../c/./d")), PathBuf::from("/a/c/d"));
        assert_eq!(clean(Path::new("../x")), PathBuf::from("../x"));
        assert!(parse_size("lots").is_err());
    }
}
