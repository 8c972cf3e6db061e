//! The WebAssembly host: loading, checking and calling user modules (wasmtime).
//!
//! One process-wide [`wasmtime::Engine`] with epoch interruption; a ticker
//! thread advances the epoch every [`TICK`], and each call into a guest gets a
//! deadline in ticks. Each instance has its own store with a memory cap. A
//! trap, a timeout or an exhausted memory becomes a [`GuestError`] that names
//! the processor, the instance, the module and what it was doing — never a
//! host panic and never a hang.
//!
//! **Architecture invariant:** deserializers and bolts are linked against the
//! `hailstorm` host functions only; a module importing anything else is refused
//! by [`load`] before it ever runs. Sinks additionally get WASI preview 1,
//! whose context holds only the directories the topology grants.
//!
//! **Architecture invariant:** `wasm/` is the only code that uses wasmtime
//! (checked by the tidy test). `guest` is one instance (store, limiter,
//! host functions, calls under a deadline, [`GuestError`]); `kinds` are the
//! exports of each kind of module.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use hailstorm_abi as abi;
use sha2::{Digest, Sha256};
use wasmtime::{Engine, ExternType, Module, TypedFunc, ValType};

use crate::topology::{Limits, ModuleKind};

mod guest;
mod kinds;

pub use guest::{Fault, Guest, GuestError, Ident};
pub use kinds::{Bolt, Deserializer, Serializer, Sink};

/// Where compiled modules are kept between runs, unless it is turned off.
pub const CACHE_ENV: &str = "HAILSTORM_CACHE_DIR";

/// The directory of compiled modules: `HAILSTORM_CACHE_DIR` (empty: no
/// cache), else `$XDG_CACHE_HOME/hailstorm/wasm` or `~/.cache/hailstorm/wasm`.
fn cache_dir() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    if let Some(d) = std::env::var_os(CACHE_ENV) {
        return (!d.is_empty()).then(|| PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("hailstorm").join("wasm"))
}

/// wasmtime's cache of compiled modules (keyed by the module's bytes, the
/// engine's version and settings), in a directory only this user may write:
/// what it holds is loaded as machine code. `None` when it cannot be had.
pub fn compile_cache() -> Option<&'static wasmtime::Cache> {
    static CACHE: OnceLock<Option<wasmtime::Cache>> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            let dir = cache_dir()?;
            let made = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir);
            let private = std::fs::metadata(&dir).is_ok_and(|m| m.permissions().mode() & 0o022 == 0);
            if made.is_err() || !private {
                tracing::warn!(
                    "not caching compiled modules: {} is not a directory only this user may write",
                    dir.display()
                );
                return None;
            }
            let mut c = wasmtime::CacheConfig::new();
            c.with_directory(&dir);
            wasmtime::Cache::new(c)
                .map_err(|e| tracing::warn!("not caching compiled modules in {}: {e:#}", dir.display()))
                .ok()
        })
        .as_ref()
}

/// Granularity of call deadlines.
pub const TICK: Duration = Duration::from_millis(10);

/// The process-wide engine, with its epoch ticker.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        // Only what the ABI needs: one linear 32-bit memory, no shared memory,
        // no garbage-collected heap, no exceptions or stack switching. A module
        // that uses more is refused at load, naming the feature.
        config
            .wasm_multi_memory(false)
            .wasm_memory64(false)
            .wasm_threads(false)
            .wasm_shared_everything_threads(false)
            .wasm_gc(false)
            .wasm_function_references(false)
            .wasm_exceptions(false)
            .wasm_stack_switching(false)
            .wasm_component_model(false);
        // For profiling guest code with `perf`: HAILSTORM_PROFILE=perfmap
        // writes /tmp/perf-PID.map, which names the JIT-compiled functions.
        if std::env::var("HAILSTORM_PROFILE").is_ok_and(|v| v == "perfmap") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        config.cache(compile_cache().cloned());
        // A failure here means wasmtime cannot run on this machine at all.
        let engine = Engine::new(&config).unwrap_or_else(|e| {
            eprintln!("error: cannot start the WebAssembly engine: {e:#}");
            std::process::exit(70)
        });
        let ticker = engine.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                ticker.increment_epoch();
            })
            .ok();
        engine
    })
}

/// A module file, compiled and checked for its kind.
#[derive(Clone)]
pub struct LoadedModule {
    pub kind: ModuleKind,
    pub path: PathBuf,
    /// Hex SHA-256 of the file.
    pub hash: String,
    module: Module,
}

impl fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedModule")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("hash", &self.hash)
            .finish()
    }
}

impl LoadedModule {
    /// The file name, as shown in messages.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }

    pub fn short_hash(&self) -> &str {
        self.hash.get(..12).unwrap_or(&self.hash)
    }
}

/// Why a module cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{processor}: module {}: {message}", path.display())]
pub struct ModuleError {
    pub processor: String,
    pub path: PathBuf,
    pub message: String,
}

/// Reads, compiles and checks a module: imports allowed for its kind, exports
/// present with the right types, and the ABI version it reports.
pub fn load(processor: &str, path: &Path, kind: ModuleKind) -> Result<LoadedModule, ModuleError> {
    let err = |message: String| ModuleError { processor: processor.to_string(), path: path.to_path_buf(), message };
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let hash = hex(&Sha256::digest(&bytes));
    let hits = compile_cache().map_or(0, |c| c.cache_hits());
    let module = Module::new(engine(), &bytes).map_err(|e| err(format!("not a valid WebAssembly module: {e:#}")))?;
    let cached = compile_cache().is_some_and(|c| c.cache_hits() > hits);
    tracing::debug!(
        "{processor}: module {} {}",
        path.display(),
        if cached { "from the compile cache" } else { "compiled" }
    );
    check_imports(&module, kind).map_err(err)?;
    check_is_hailstorm(&module).map_err(err)?;
    let loaded = LoadedModule { kind, path: path.to_path_buf(), hash, module };
    // Ask the module its ABI version in a throwaway instance, then check the
    // exports of that version.
    let ident = Ident { processor: processor.to_string(), instance: 0, module: loaded.name() };
    let mut g = Guest::instantiate(&loaded, ident, Limits::default(), &[]).map_err(|e| err(e.fault.to_string()))?;
    let f: TypedFunc<(), i32> = g.func(abi::EXPORT_ABI_VERSION).map_err(|e| err(e.fault.to_string()))?;
    let v = g.call(&f, (), "hailstorm_abi_version").map_err(|e| err(e.fault.to_string()))?;
    check_version(v, kind).map_err(err)?;
    check_exports(&loaded.module, kind).map_err(err)?;
    Ok(loaded)
}

fn check_imports(module: &Module, kind: ModuleKind) -> Result<(), String> {
    let mut bad = Vec::new();
    for imp in module.imports() {
        let ok = match (imp.module(), imp.name()) {
            (abi::IMPORT_MODULE, abi::IMPORT_LOG) => func_is(&imp.ty(), &[I32, I32, I32], &[]),
            (abi::IMPORT_MODULE, abi::IMPORT_FAIL) => func_is(&imp.ty(), &[I32, I32], &[]),
            ("wasi_snapshot_preview1", _) if kind == ModuleKind::Sink => true,
            _ => false,
        };
        if !ok {
            bad.push(format!("{}::{}", imp.module(), imp.name()));
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    let allowed = match kind {
        ModuleKind::Sink => "a sink may import only `hailstorm` host functions and WASI preview 1 (`wasi_snapshot_preview1`)",
        _ => "deserializers, bolts and serializers are pure: they may import only the `hailstorm` host functions (log, fail), and no WASI",
    };
    Err(format!("it imports {} — refused: {allowed}", bad.join(", ")))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum T {
    I32,
    I64,
}
use T::{I32, I64};

fn val_is(v: &ValType, t: T) -> bool {
    match t {
        I32 => v.is_i32(),
        I64 => v.is_i64(),
    }
}

fn func_is(ty: &ExternType, params: &[T], results: &[T]) -> bool {
    let ExternType::Func(f) = ty else { return false };
    let p: Vec<ValType> = f.params().collect();
    let r: Vec<ValType> = f.results().collect();
    p.len() == params.len()
        && r.len() == results.len()
        && p.iter().zip(params).all(|(v, t)| val_is(v, *t))
        && r.iter().zip(results).all(|(v, t)| val_is(v, *t))
}

/// The exports (name, parameters, results) a module of `kind` must have.
fn wanted_exports(kind: ModuleKind) -> Vec<(&'static str, &'static [T], &'static [T])> {
    let mut want: Vec<(&str, &[T], &[T])> = vec![
        (abi::EXPORT_ABI_VERSION, &[], &[I32]),
        (abi::EXPORT_ALLOC, &[I32], &[I32]),
        (abi::EXPORT_FREE, &[I32, I32], &[]),
        (abi::EXPORT_INIT, &[I32, I32], &[I32]),
    ];
    match kind {
        ModuleKind::Deserializer => want.push((abi::EXPORT_DESERIALIZE, &[I32, I32], &[I64])),
        ModuleKind::Bolt => want.extend([
            (abi::EXPORT_FOLD, &[I32, I32, I32][..], &[I64][..]),
            (abi::EXPORT_MERGE, &[I32, I32], &[I32]),
            (abi::EXPORT_SNAPSHOT, &[I32, I32], &[I64]),
            (abi::EXPORT_RESTORE, &[I32, I32, I32], &[I32]),
        ]),
        ModuleKind::Serializer => {
            want.extend([(abi::EXPORT_DESCRIBE, &[][..], &[I64][..]), (abi::EXPORT_SERIALIZE, &[I32, I32], &[I64])])
        }
        ModuleKind::Sink => want.extend([
            (abi::EXPORT_RESUME, &[][..], &[I64][..]),
            (abi::EXPORT_COMMIT_BEGIN, &[I32, I32], &[I32]),
            (abi::EXPORT_COMMIT_CHANGES, &[I32, I32], &[I32]),
            (abi::EXPORT_COMMIT_END, &[], &[I64]),
            (abi::EXPORT_COMMIT_STEP, &[], &[I64]),
        ]),
    }
    want
}

/// Refuses a module without `hailstorm_abi_version`, naming what it exports instead.
fn check_is_hailstorm(module: &Module) -> Result<(), String> {
    if module.get_export(abi::EXPORT_ABI_VERSION).is_some() {
        return Ok(());
    }
    let names: Vec<&str> = module.exports().map(|e| e.name()).collect();
    let has = if names.is_empty() { "nothing".to_string() } else { names.join(", ") };
    Err(format!(
        "it is not a Hailstorm module (no `{}` export; it exports {has}); see guest-sdk/ABI.md",
        abi::EXPORT_ABI_VERSION
    ))
}

fn check_exports(module: &Module, kind: ModuleKind) -> Result<(), String> {
    let mut problems = Vec::new();
    if !matches!(module.get_export(abi::EXPORT_MEMORY), Some(ExternType::Memory(_))) {
        problems.push("no exported `memory`".to_string());
    }
    for (name, p, r) in wanted_exports(kind) {
        match module.get_export(name) {
            None => problems.push(format!("no export `{name}`")),
            Some(ty) if !func_is(&ty, p, r) => problems.push(format!("export `{name}` has the wrong signature")),
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("it does not implement the Hailstorm {kind} ABI: {}", problems.join("; ")))
    }
}

/// Refuses an ABI version this engine does not run for `kind`.
fn check_version(v: i32, kind: ModuleKind) -> Result<(), String> {
    let oldest = if kind == ModuleKind::Deserializer { abi::OLDEST_DESERIALIZER_VERSION } else { abi::ABI_VERSION };
    if (oldest..=abi::ABI_VERSION).contains(&v) {
        return Ok(());
    }
    if v == 1 {
        return Err(format!(
            "it implements Hailstorm ABI version 1, but a {kind} needs version {} (incremental snapshots; sinks \
             receive changes): rebuild it against the current guest SDK (hailstorm-guest), or update its exports \
             as guest-sdk/ABI.md §11 describes",
            abi::ABI_VERSION
        ));
    }
    Err(format!(
        "it implements Hailstorm ABI version {v}, but this engine implements version {}; rebuild it against a matching guest SDK",
        abi::ABI_VERSION
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds the init document of ABI.md §4.
pub fn init_doc(
    processor: &str,
    instance: u32,
    parallelism: u32,
    topology_dir: &Path,
    config: &serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "processor": processor,
        "instance": instance,
        "parallelism": parallelism,
        "topology_dir": topology_dir.to_string_lossy(),
        "config": config,
    })
}
