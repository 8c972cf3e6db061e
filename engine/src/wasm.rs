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

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use hailstorm_abi as abi;
use sha2::{Digest, Sha256};
use wasmtime::{Caller, Engine, Extern, ExternType, Linker, Memory, Module, Store, Trap, TypedFunc, ValType};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::topology::{Limits, ModuleKind};

/// Granularity of call deadlines.
pub const TICK: Duration = Duration::from_millis(10);

/// The process-wide engine, with its epoch ticker.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        // A failure here means wasmtime cannot run on this machine at all.
        let engine = Engine::new(&config).unwrap_or_else(|e| {
            eprintln!("error: cannot start the WebAssembly engine: {e}");
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
    let module = Module::new(engine(), &bytes).map_err(|e| err(format!("not a valid WebAssembly module: {e}")))?;
    check_imports(&module, kind).map_err(err)?;
    check_exports(&module, kind).map_err(err)?;
    let loaded = LoadedModule { kind, path: path.to_path_buf(), hash, module };
    // Ask the module its ABI version in a throwaway instance.
    let ident = Ident { processor: processor.to_string(), instance: 0, module: loaded.name() };
    let mut g = Guest::instantiate(&loaded, ident, Limits::default(), &[]).map_err(|e| err(e.fault.to_string()))?;
    let f: TypedFunc<(), i32> = g.func(abi::EXPORT_ABI_VERSION).map_err(|e| err(e.fault.to_string()))?;
    let v = g.call(&f, (), "hailstorm_abi_version").map_err(|e| err(e.fault.to_string()))?;
    if v != abi::ABI_VERSION {
        return Err(err(format!(
            "it implements Hailstorm ABI version {v}, but this engine implements version {}; rebuild it against a matching guest SDK",
            abi::ABI_VERSION
        )));
    }
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
        _ => "deserializers and bolts are pure: they may import only the `hailstorm` host functions (log, fail), and no WASI",
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

fn check_exports(module: &Module, kind: ModuleKind) -> Result<(), String> {
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
            (abi::EXPORT_SNAPSHOT, &[I32], &[I64]),
            (abi::EXPORT_RESTORE, &[I32, I32, I32], &[I32]),
            (abi::EXPORT_CLEAR, &[I32], &[I32]),
        ]),
        ModuleKind::Sink => want.push((abi::EXPORT_COMMIT, &[I32, I32], &[I32])),
    }
    let mut problems = Vec::new();
    if !matches!(module.get_export(abi::EXPORT_MEMORY), Some(ExternType::Memory(_))) {
        problems.push("no exported `memory`".to_string());
    }
    for (name, p, r) in want {
        match module.get_export(name) {
            None => problems.push(format!("no export `{name}`")),
            Some(ty) if !func_is(&ty, p, r) => problems.push(format!("export `{name}` has the wrong signature")),
            Some(_) => {}
        }
    }
    if module.get_export(abi::EXPORT_ABI_VERSION).is_none() {
        return Err(format!(
            "it is not a Hailstorm module (no `{}` export); see guest-sdk/ABI.md",
            abi::EXPORT_ABI_VERSION
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("it does not implement the Hailstorm {kind} ABI: {}", problems.join("; ")))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who a guest call belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident {
    pub processor: String,
    pub instance: u32,
    pub module: String,
}

/// What went wrong inside a guest call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access...).
    Trap(String),
    /// The call ran past its deadline.
    Timeout(Duration),
    /// The guest tried to grow its memory past the cap.
    OutOfMemory(u64),
    /// The guest returned an error status, with its message.
    Failed(String),
    /// The guest returned something that breaks the ABI.
    BadOutput(String),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Trap(m) => write!(f, "trapped: {m}"),
            Fault::Timeout(d) => write!(f, "did not return within its {:?} deadline (an endless loop?)", d),
            Fault::OutOfMemory(cap) => write!(f, "tried to use more than its memory cap of {} MiB", cap >> 20),
            Fault::Failed(m) => write!(f, "returned an error: {m}"),
            Fault::BadOutput(m) => write!(f, "broke the ABI: {m}"),
        }
    }
}

/// A failed guest call, with everything needed to find the culprit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct GuestError {
    pub ident: Ident,
    pub call: &'static str,
    pub fault: Box<Fault>,
    /// The input record being processed, as `partition@offset` (or a range for a batch).
    pub origin: Option<String>,
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "processor `{}` instance {} (module {}) {} in {}",
            self.ident.processor, self.ident.instance, self.ident.module, self.fault, self.call
        )?;
        if let Some(o) = &self.origin {
            write!(f, " while processing {o}")?;
        }
        Ok(())
    }
}

impl GuestError {
    pub fn with_origin(mut self, origin: impl Into<String>) -> GuestError {
        self.origin = Some(origin.into());
        self
    }
}

struct Limiter {
    cap: u64,
    hit: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired as u64 > self.cap {
            self.hit = true;
            wasmtime::bail!("memory cap of {} bytes reached", self.cap);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

struct HostState {
    limiter: Limiter,
    failure: Option<String>,
    wasi: WasiP1Ctx,
    log_prefix: String,
}

/// Reads a guest string for a host function, tolerating any pointer.
fn guest_str(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> String {
    let Some(Extern::Memory(mem)) = caller.get_export(abi::EXPORT_MEMORY) else { return String::new() };
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    let data = mem.data(&caller);
    let s = p.checked_add(l.min(64 * 1024)).and_then(|end| data.get(p..end)).unwrap_or(&[]);
    String::from_utf8_lossy(s).into_owned()
}

fn linker(kind: ModuleKind) -> Result<Linker<HostState>, String> {
    let mut l = Linker::new(engine());
    l.func_wrap(abi::IMPORT_MODULE, abi::IMPORT_LOG, |mut c: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| {
        let msg = guest_str(&mut c, ptr, len);
        let who = &c.data().log_prefix;
        match level {
            abi::LOG_ERROR => tracing::error!("{who}: {msg}"),
            abi::LOG_WARN => tracing::warn!("{who}: {msg}"),
            abi::LOG_INFO => tracing::info!("{who}: {msg}"),
            _ => tracing::debug!("{who}: {msg}"),
        }
    })
    .map_err(|e| e.to_string())?;
    l.func_wrap(abi::IMPORT_MODULE, abi::IMPORT_FAIL, |mut c: Caller<'_, HostState>, ptr: i32, len: i32| {
        let msg = guest_str(&mut c, ptr, len);
        c.data_mut().failure = Some(msg);
    })
    .map_err(|e| e.to_string())?;
    if kind == ModuleKind::Sink {
        wasmtime_wasi::p1::add_to_linker_sync(&mut l, |s: &mut HostState| &mut s.wasi).map_err(|e| e.to_string())?;
    }
    Ok(l)
}

/// One instance of a module, with its store, memory and input buffer.
pub struct Guest {
    store: Store<HostState>,
    instance: wasmtime::Instance,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    free: TypedFunc<(i32, i32), ()>,
    input: Option<(i32, usize)>,
    ident: Ident,
    limits: Limits,
}

impl Guest {
    /// Instantiates a module. `dirs` are the directories a sink may use.
    pub fn instantiate(m: &LoadedModule, ident: Ident, limits: Limits, dirs: &[PathBuf]) -> Result<Guest, GuestError> {
        let fail = |fault: Fault| GuestError {
            ident: ident.clone(),
            call: "instantiation",
            fault: Box::new(fault),
            origin: None,
        };
        let mut wasi = WasiCtxBuilder::new();
        for d in dirs {
            std::fs::create_dir_all(d)
                .map_err(|e| fail(Fault::Failed(format!("cannot create granted directory {}: {e}", d.display()))))?;
            let guest_path = d.to_string_lossy().into_owned();
            wasi.preopened_dir(d, &guest_path, FsPerms::ReadWrite)
                .map_err(|e| fail(Fault::Failed(format!("cannot grant directory {}: {e}", d.display()))))?;
        }
        let state = HostState {
            limiter: Limiter { cap: limits.memory_bytes, hit: false },
            failure: None,
            wasi: wasi.build_p1(),
            log_prefix: format!("{}/{}", ident.processor, ident.instance),
        };
        let mut store = Store::new(engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(ticks(limits.call_timeout));
        let linker = linker(m.kind).map_err(|e| fail(Fault::Failed(e)))?;
        let instance = linker.instantiate(&mut store, &m.module).map_err(|e| {
            let oom = store.data().limiter.hit;
            fail(classify(&e, oom, limits))
        })?;
        let memory = instance
            .get_memory(&mut store, abi::EXPORT_MEMORY)
            .ok_or_else(|| fail(Fault::BadOutput("no exported memory".into())))?;
        let alloc = instance
            .get_typed_func(&mut store, abi::EXPORT_ALLOC)
            .map_err(|e| fail(Fault::BadOutput(e.to_string())))?;
        let free =
            instance.get_typed_func(&mut store, abi::EXPORT_FREE).map_err(|e| fail(Fault::BadOutput(e.to_string())))?;
        Ok(Guest { store, instance, memory, alloc, free, input: None, ident, limits })
    }

    pub fn ident(&self) -> &Ident {
        &self.ident
    }

    pub fn error(&self, call: &'static str, fault: Fault) -> GuestError {
        GuestError { ident: self.ident.clone(), call, fault: Box::new(fault), origin: None }
    }

    /// A typed export.
    pub fn func<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        &mut self,
        name: &'static str,
    ) -> Result<TypedFunc<P, R>, GuestError> {
        self.instance
            .get_typed_func::<P, R>(&mut self.store, name)
            .map_err(|e| self.error(name, Fault::BadOutput(format!("export `{name}`: {e}"))))
    }

    /// Calls an export under the deadline, turning every failure into a [`GuestError`].
    pub fn call<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        &mut self,
        f: &TypedFunc<P, R>,
        params: P,
        name: &'static str,
    ) -> Result<R, GuestError> {
        self.store.set_epoch_deadline(ticks(self.limits.call_timeout));
        self.store.data_mut().failure = None;
        match f.call(&mut self.store, params) {
            Ok(r) => Ok(r),
            Err(e) => {
                let oom = self.store.data().limiter.hit;
                // A guest may say why it is about to trap (the Rust SDK's panic hook does).
                let said = self.store.data_mut().failure.take();
                let fault = match (classify(&e, oom, self.limits), said) {
                    (Fault::Trap(t), Some(msg)) => Fault::Trap(format!("{t} ({msg})")),
                    (f, _) => f,
                };
                Err(self.error(name, fault))
            }
        }
    }

    /// The message the guest gave with `fail`, for an error status.
    pub fn failure(&mut self, call: &'static str) -> GuestError {
        let msg = self.store.data_mut().failure.take().unwrap_or_else(|| "(no message)".into());
        self.error(call, Fault::Failed(msg))
    }

    /// Copies `bytes` into the guest's input buffer (growing it through the
    /// guest allocator) and returns (ptr, len).
    pub fn put_input(&mut self, bytes: &[u8]) -> Result<(i32, i32), GuestError> {
        let len = i32::try_from(bytes.len())
            .map_err(|_| self.error("input", Fault::BadOutput("input batch over 2 GiB".into())))?;
        let ptr = match self.input {
            Some((ptr, cap)) if cap >= bytes.len() => ptr,
            old => {
                if let Some((ptr, cap)) = old {
                    let free = self.free.clone();
                    self.call(&free, (ptr, cap as i32), abi::EXPORT_FREE)?;
                    self.input = None;
                }
                let cap = bytes.len().max(64 * 1024).next_power_of_two();
                let alloc = self.alloc.clone();
                let ptr = self.call(&alloc, cap as i32, abi::EXPORT_ALLOC)?;
                if ptr == 0 {
                    return Err(self.error(abi::EXPORT_ALLOC, Fault::OutOfMemory(self.limits.memory_bytes)));
                }
                self.input = Some((ptr, cap));
                ptr
            }
        };
        let start = ptr as u32 as usize;
        let dst =
            self.memory.data_mut(&mut self.store).get_mut(start..start + bytes.len()).ok_or_else(|| GuestError {
                ident: self.ident.clone(),
                call: abi::EXPORT_ALLOC,
                fault: Box::new(Fault::BadOutput(format!("allocated buffer at {start} lies outside memory"))),
                origin: None,
            })?;
        dst.copy_from_slice(bytes);
        Ok((ptr, len))
    }

    /// The guest buffer an export returned as a packed (ptr, len), or its failure.
    pub fn output(&mut self, packed: i64, call: &'static str) -> Result<&[u8], GuestError> {
        let Some((ptr, len)) = abi::unpack(packed) else { return Err(self.failure(call)) };
        let (p, l) = (ptr as usize, len as usize);
        let data = self.memory.data(&self.store);
        match p.checked_add(l).and_then(|end| data.get(p..end)) {
            Some(s) => Ok(s),
            None => Err(GuestError {
                ident: self.ident.clone(),
                call,
                fault: Box::new(Fault::BadOutput(format!("returned a buffer at {p}+{l} outside its memory"))),
                origin: None,
            }),
        }
    }

    /// Calls `hailstorm_init` with the init document.
    pub fn init(&mut self, doc: &serde_json::Value) -> Result<(), GuestError> {
        let bytes = doc.to_string().into_bytes();
        let (p, l) = self.put_input(&bytes)?;
        let f: TypedFunc<(i32, i32), i32> = self.func(abi::EXPORT_INIT)?;
        let status = self.call(&f, (p, l), abi::EXPORT_INIT)?;
        if status != 0 {
            return Err(self.failure(abi::EXPORT_INIT));
        }
        Ok(())
    }
}

fn ticks(d: Duration) -> u64 {
    (d.as_millis() / TICK.as_millis()).max(1) as u64 + 1
}

fn classify(e: &wasmtime::Error, oom: bool, limits: Limits) -> Fault {
    if oom {
        return Fault::OutOfMemory(limits.memory_bytes);
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Fault::Timeout(limits.call_timeout),
        Some(t) => Fault::Trap(t.to_string()),
        None => Fault::Trap(format!("{e}")),
    }
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

/// A deserializer instance.
pub struct Deserializer {
    g: Guest,
    f: TypedFunc<(i32, i32), i64>,
}

impl Deserializer {
    pub fn new(
        m: &LoadedModule,
        ident: Ident,
        limits: Limits,
        init: &serde_json::Value,
    ) -> Result<Deserializer, GuestError> {
        let mut g = Guest::instantiate(m, ident, limits, &[])?;
        g.init(init)?;
        let f = g.func(abi::EXPORT_DESERIALIZE)?;
        Ok(Deserializer { g, f })
    }

    /// Runs a record batch; returns the emitted batch (valid until the next call).
    pub fn deserialize(&mut self, records: &[u8]) -> Result<&[u8], GuestError> {
        let (p, l) = self.g.put_input(records)?;
        let r = self.g.call(&self.f, (p, l), abi::EXPORT_DESERIALIZE)?;
        self.g.output(r, abi::EXPORT_DESERIALIZE)
    }

    pub fn ident(&self) -> &Ident {
        self.g.ident()
    }
}

/// A bolt instance: keyed monoid state in numbered slots.
pub struct Bolt {
    g: Guest,
    fold: TypedFunc<(i32, i32, i32), i64>,
    merge: TypedFunc<(i32, i32), i32>,
    snapshot: TypedFunc<i32, i64>,
    restore: TypedFunc<(i32, i32, i32), i32>,
    clear: TypedFunc<i32, i32>,
}

impl Bolt {
    pub fn new(m: &LoadedModule, ident: Ident, limits: Limits, init: &serde_json::Value) -> Result<Bolt, GuestError> {
        let mut g = Guest::instantiate(m, ident, limits, &[])?;
        g.init(init)?;
        Ok(Bolt {
            fold: g.func(abi::EXPORT_FOLD)?,
            merge: g.func(abi::EXPORT_MERGE)?,
            snapshot: g.func(abi::EXPORT_SNAPSHOT)?,
            restore: g.func(abi::EXPORT_RESTORE)?,
            clear: g.func(abi::EXPORT_CLEAR)?,
            g,
        })
    }

    pub fn ident(&self) -> &Ident {
        self.g.ident()
    }

    /// Folds a framed tuple batch into `slot`; returns the emitted batch.
    pub fn fold(&mut self, slot: i32, tuples: &[u8]) -> Result<&[u8], GuestError> {
        let (p, l) = self.g.put_input(tuples)?;
        let r = self.g.call(&self.fold, (slot, p, l), abi::EXPORT_FOLD)?;
        self.g.output(r, abi::EXPORT_FOLD)
    }

    fn status(&mut self, status: i32, call: &'static str) -> Result<(), GuestError> {
        if status == 0 {
            Ok(())
        } else {
            Err(self.g.failure(call))
        }
    }

    pub fn merge(&mut self, dst: i32, src: i32) -> Result<(), GuestError> {
        let s = self.g.call(&self.merge, (dst, src), abi::EXPORT_MERGE)?;
        self.status(s, abi::EXPORT_MERGE)
    }

    pub fn snapshot(&mut self, slot: i32) -> Result<Vec<u8>, GuestError> {
        let r = self.g.call(&self.snapshot, slot, abi::EXPORT_SNAPSHOT)?;
        let out = self.g.output(r, abi::EXPORT_SNAPSHOT)?.to_vec();
        // Entries go to disk and to other modules: check the framing here.
        abi::read_pairs(&out).map_err(|e| self.g.error(abi::EXPORT_SNAPSHOT, Fault::BadOutput(e.to_string())))?;
        Ok(out)
    }

    pub fn restore(&mut self, slot: i32, entries: &[u8]) -> Result<(), GuestError> {
        let (p, l) = self.g.put_input(entries)?;
        let s = self.g.call(&self.restore, (slot, p, l), abi::EXPORT_RESTORE)?;
        self.status(s, abi::EXPORT_RESTORE)
    }

    pub fn clear(&mut self, slot: i32) -> Result<(), GuestError> {
        let s = self.g.call(&self.clear, slot, abi::EXPORT_CLEAR)?;
        self.status(s, abi::EXPORT_CLEAR)
    }
}

/// A sink instance.
pub struct Sink {
    g: Guest,
    commit: TypedFunc<(i32, i32), i32>,
}

impl Sink {
    pub fn new(
        m: &LoadedModule,
        ident: Ident,
        limits: Limits,
        init: &serde_json::Value,
        dirs: &[PathBuf],
    ) -> Result<Sink, GuestError> {
        let mut g = Guest::instantiate(m, ident, limits, dirs)?;
        g.init(init)?;
        let commit = g.func(abi::EXPORT_COMMIT)?;
        Ok(Sink { g, commit })
    }

    pub fn commit(&mut self, doc: &[u8]) -> Result<(), GuestError> {
        let (p, l) = self.g.put_input(doc)?;
        let s = self.g.call(&self.commit, (p, l), abi::EXPORT_COMMIT)?;
        if s == 0 {
            Ok(())
        } else {
            Err(self.g.failure(abi::EXPORT_COMMIT))
        }
    }
}
