//! One instance of a module: its store with the memory limiter, the host
//! functions it is linked against, calls under a deadline, and the typed
//! error every failure becomes.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::observe::CallMeter;
use hailstorm_abi as abi;
use wasmtime::{Caller, Extern, Linker, Memory, Store, Trap, TypedFunc};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::{engine, LoadedModule, TICK};
use crate::topology::{Limits, ModuleKind};

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

/// One memory budget for the instance: its memory and tables together.
struct Limiter {
    cap: u64,
    /// Bytes of memory and tables granted so far.
    used: u64,
    hit: bool,
}

/// Entries a table may hold (a module's function table needs a few thousand).
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// What one table entry costs the host, counted against the memory cap.
const TABLE_ELEMENT_BYTES: u64 = 16;

impl wasmtime::ResourceLimiter for Limiter {
    /// Every memory and table of the instance counts against one cap.
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.grow((desired.saturating_sub(current)) as u64)
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.grow((desired.saturating_sub(current)) as u64 * TABLE_ELEMENT_BYTES)
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }

    fn instances(&self) -> usize {
        1
    }
}

impl Limiter {
    fn grow(&mut self, more: u64) -> wasmtime::Result<bool> {
        let total = self.used.saturating_add(more);
        if total > self.cap {
            self.hit = true;
            wasmtime::bail!("memory cap of {} bytes reached", self.cap);
        }
        self.used = total;
        Ok(true)
    }
}

struct HostState {
    limiter: Limiter,
    failure: Option<String>,
    wasi: WasiP1Ctx,
    log_prefix: String,
    log_budget: LogBudget,
}

/// Log lines an instance may write per second (and at once, after a quiet spell).
const LOG_LINES_PER_SECOND: f64 = 50.0;
const LOG_BURST: f64 = 200.0;
/// The longest log line or failure message kept, in bytes.
const MAX_MESSAGE: usize = 4096;

/// A token bucket for an instance's log lines.
struct LogBudget {
    tokens: f64,
    at: std::time::Instant,
    dropped: u64,
}

impl LogBudget {
    fn new() -> LogBudget {
        LogBudget { tokens: LOG_BURST, at: std::time::Instant::now(), dropped: 0 }
    }

    /// Whether a line may be written now; when one may after some were
    /// dropped, also how many were.
    fn take(&mut self) -> (bool, u64) {
        let now = std::time::Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * LOG_LINES_PER_SECOND;
        (self.tokens, self.at) = ((self.tokens + refill).min(LOG_BURST), now);
        if self.tokens < 1.0 {
            self.dropped += 1;
            return (false, 0);
        }
        self.tokens -= 1.0;
        (true, std::mem::take(&mut self.dropped))
    }
}

/// Reads a guest string for a host function, tolerating any pointer: at most
/// [`MAX_MESSAGE`] bytes, invalid UTF-8 replaced, control characters escaped
/// (a module cannot forge log lines or write terminal escapes).
fn guest_str(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> String {
    let Some(Extern::Memory(mem)) = caller.get_export(abi::EXPORT_MEMORY) else { return String::new() };
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    let data = mem.data(&caller);
    let s = p.checked_add(l.min(MAX_MESSAGE)).and_then(|end| data.get(p..end)).unwrap_or(&[]);
    let mut out = String::with_capacity(s.len());
    for c in String::from_utf8_lossy(s).chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if l > MAX_MESSAGE {
        out.push_str(&format!("… ({} bytes more)", l - MAX_MESSAGE));
    }
    out
}

fn linker(kind: ModuleKind) -> Result<Linker<HostState>, String> {
    let mut l = Linker::new(engine());
    l.func_wrap(abi::IMPORT_MODULE, abi::IMPORT_LOG, |mut c: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| {
        let (ok, dropped) = c.data_mut().log_budget.take();
        if !ok {
            return;
        }
        let msg = guest_str(&mut c, ptr, len);
        let who = &c.data().log_prefix;
        if dropped > 0 {
            tracing::warn!("{who}: {dropped} log line(s) dropped (more than {LOG_LINES_PER_SECOND} a second)");
        }
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
        refuse_blocking(&mut l).map_err(|e| e.to_string())?;
    }
    Ok(l)
}

/// WASI's `nosys` errno.
const ERRNO_NOSYS: i32 = 52;

/// A sink gets what a file sink needs, nothing that blocks outside wasm
/// code (where the call deadline cannot stop it): sleeping and waiting
/// (`poll_oneoff`) and yielding answer "not supported".
fn refuse_blocking(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.allow_shadowing(true);
    l.func_wrap("wasi_snapshot_preview1", "poll_oneoff", |_: i32, _: i32, _: i32, _: i32| ERRNO_NOSYS)?;
    l.func_wrap("wasi_snapshot_preview1", "sched_yield", || ERRNO_NOSYS)?;
    l.allow_shadowing(false);
    Ok(())
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
    meter: Option<CallMeter>,
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
            limiter: Limiter { cap: limits.memory_bytes, used: 0, hit: false },
            failure: None,
            wasi: wasi.build_p1(),
            log_prefix: format!("{}/{}", ident.processor, ident.instance),
            log_budget: LogBudget::new(),
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
        Ok(Guest { store, instance, memory, alloc, free, input: None, ident, limits, meter: None })
    }

    pub fn ident(&self) -> &Ident {
        &self.ident
    }

    /// Counts every call from now on.
    pub fn set_meter(&mut self, meter: CallMeter) {
        self.meter = Some(meter);
    }

    /// The size of the instance's linear memory, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.memory.data_size(&self.store)
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
            .map_err(|e| self.error(name, Fault::BadOutput(format!("export `{name}`: {e:#}"))))
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
        let started = self.meter.as_ref().map(|_| std::time::Instant::now());
        let result = f.call(&mut self.store, params);
        if let (Some(m), Some(t)) = (&self.meter, started) {
            let fault = result.as_ref().err().map(|e| matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)));
            m.call(t.elapsed(), fault);
        }
        match result {
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

    /// The message the guest gave with `fail`, for error status `status`.
    pub fn failure(&mut self, call: &'static str, status: i64) -> GuestError {
        let msg = self.store.data_mut().failure.take().unwrap_or_else(|| format!("status {status}, no message"));
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
                // Close to the size asked (an eighth more, at most 1 MiB, so that slightly
                // larger batches reuse it): a record near the memory cap still fits.
                let cap = bytes.len().max(64 * 1024);
                let cap = cap.saturating_add((cap / 8).min(1 << 20)).min(i32::MAX as usize);
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
        let Some((ptr, len)) = abi::unpack(packed) else { return Err(self.failure(call, packed)) };
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
            return Err(self.failure(abi::EXPORT_INIT, status.into()));
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
        None => Fault::Trap(format!("{e:#}")),
    }
}
