//! Glue between the `extern "C"` exports that the macros generate and the
//! runtimes. Not public API: the macros reach it as `$crate::__private`.

use std::cell::RefCell;
use std::thread::LocalKey;

pub use hailstorm_abi::{ABI_VERSION, SKIP_ROUND};

/// Runs `f` on the module's runtime, which lives in a thread-local so that
/// no `static mut` is needed (wasm32 modules are single-threaded: the
/// thread-local is a plain global there).
fn with<T, R>(key: &'static LocalKey<RefCell<T>>, f: impl FnOnce(&mut T) -> Result<R, String>) -> Result<R, String> {
    key.try_with(|cell| match cell.try_borrow_mut() {
        Ok(mut rt) => f(&mut rt),
        Err(_) => Err("re-entrant call into the module".to_owned()),
    })
    .unwrap_or_else(|_| Err("module state is gone".to_owned()))
}

/// Reports an error through `fail` and returns the status.
pub fn status(r: Result<(), String>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(msg) => {
            crate::sys::fail(&msg);
            1
        }
    }
}

/// Calls a runtime method returning a round number (an `i64` ≥ 0; -1 on error).
pub fn call_round<T>(key: &'static LocalKey<RefCell<T>>, f: impl FnOnce(&mut T) -> Result<u64, String>) -> i64 {
    call_i64(key, |rt| f(rt).and_then(|r| i64::try_from(r).map_err(|_| format!("round {r} is out of range"))))
}

/// Calls a runtime method returning a non-negative `i64` (-1 on error).
pub fn call_i64<T>(key: &'static LocalKey<RefCell<T>>, f: impl FnOnce(&mut T) -> Result<i64, String>) -> i64 {
    match with(key, f) {
        Ok(r) => r,
        Err(msg) => {
            crate::sys::fail(&msg);
            -1
        }
    }
}

/// Calls a runtime method returning a status.
pub fn call_status<T>(key: &'static LocalKey<RefCell<T>>, f: impl FnOnce(&mut T) -> Result<(), String>) -> i32 {
    status(with(key, f))
}

#[cfg(target_arch = "wasm32")]
pub use wasm::*;

#[cfg(target_arch = "wasm32")]
mod wasm {
    use super::*;
    use std::alloc::Layout;

    /// ABI.md §2: guest memory above 2 GiB is not supported.
    const ABI_MEMORY_LIMIT: usize = 1 << 31;

    /// `hailstorm_alloc`: `size` bytes, 8-byte aligned, or 0.
    pub fn alloc(size: i32) -> i32 {
        // A zero-byte request still gets a real, distinct block, so the
        // host can free whatever it was given.
        let size = (size as u32 as usize).max(1);
        let Ok(layout) = Layout::from_size_align(size, 8) else {
            return 0;
        };
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            return 0;
        }
        // The host reads pointers as unsigned, but ABI.md leaves memory
        // above 2 GiB unsupported; refusing such a block keeps the module
        // within the contract instead of failing later.
        if (ptr as usize).checked_add(size).is_none_or(|end| end > ABI_MEMORY_LIMIT) {
            // SAFETY: `ptr` was just allocated with `layout`.
            unsafe { std::alloc::dealloc(ptr, layout) };
            return 0;
        }
        ptr as usize as i32
    }

    /// `hailstorm_free`.
    ///
    /// # Safety
    /// `ptr` and `size` must come from one `hailstorm_alloc` call.
    pub unsafe fn free(ptr: i32, size: i32) {
        if ptr == 0 {
            return;
        }
        let size = (size as u32 as usize).max(1);
        if let Ok(layout) = Layout::from_size_align(size, 8) {
            // SAFETY: the caller guarantees the block came from `alloc`
            // with this size; the layout is rebuilt exactly as there.
            unsafe { std::alloc::dealloc(ptr as u32 as usize as *mut u8, layout) }
        }
    }

    /// Views an input buffer `(ptr, len)` the host filled.
    ///
    /// # Safety
    /// The range must lie in memory and stay unchanged during the call,
    /// which ABI.md §2 guarantees for buffers from `hailstorm_alloc`.
    pub unsafe fn input<'a>(ptr: i32, len: i32) -> Result<&'a [u8], String> {
        let len = len as u32 as usize;
        if len == 0 {
            return Ok(&[]);
        }
        if ptr == 0 {
            return Err("input buffer at address 0".to_owned());
        }
        // SAFETY: see the function's contract.
        Ok(unsafe { std::slice::from_raw_parts(ptr as u32 as usize as *const u8, len) })
    }

    /// Calls a runtime method taking an input buffer and returning a status.
    pub fn call_input_status<T>(
        key: &'static LocalKey<RefCell<T>>,
        ptr: i32,
        len: i32,
        f: impl FnOnce(&mut T, &[u8]) -> Result<(), String>,
    ) -> i32 {
        // SAFETY: the host passes a buffer it allocated and filled.
        status(unsafe { input(ptr, len) }.and_then(|buf| with(key, |rt| f(rt, buf))))
    }

    /// Calls a runtime method that takes an input buffer and returns a code
    /// (0 or another success value), or 1 after `hailstorm.fail`.
    pub fn call_input_code<T>(
        key: &'static LocalKey<RefCell<T>>,
        ptr: i32,
        len: i32,
        f: impl FnOnce(&mut T, &[u8]) -> Result<i32, String>,
    ) -> i32 {
        // SAFETY: the host passes a buffer it allocated and filled.
        match unsafe { input(ptr, len) }.and_then(|buf| with(key, |rt| f(rt, buf))) {
            Ok(code) => code,
            Err(msg) => {
                crate::sys::fail(&msg);
                1
            }
        }
    }

    /// Calls a runtime method returning a buffer, packed as ABI.md §2 says.
    pub fn call_buffer<T>(key: &'static LocalKey<RefCell<T>>, f: impl FnOnce(&mut T) -> Result<&[u8], String>) -> i64 {
        let r = with(key, |rt| {
            let out = f(rt)?;
            // A pointer at or above 2 GiB would set the sign bit of the
            // packed result, which the host reads as an error.
            let ptr = out.as_ptr() as usize;
            if ptr.checked_add(out.len()).is_none_or(|end| end > ABI_MEMORY_LIMIT) {
                return Err(format!(
                    "the output buffer ({} bytes) lies above 2 GiB of memory, which the ABI does not support",
                    out.len()
                ));
            }
            Ok(hailstorm_abi::pack(ptr as u32, out.len() as u32))
        });
        match r {
            Ok(packed) => packed,
            Err(msg) => {
                crate::sys::fail(&msg);
                -1
            }
        }
    }

    /// Calls a runtime method taking an input buffer and returning a buffer.
    pub fn call_input_buffer<T>(
        key: &'static LocalKey<RefCell<T>>,
        ptr: i32,
        len: i32,
        f: impl for<'r> FnOnce(&'r mut T, &[u8]) -> Result<&'r [u8], String>,
    ) -> i64 {
        // SAFETY: the host passes a buffer it allocated and filled.
        match unsafe { input(ptr, len) } {
            Ok(buf) => call_buffer(key, |rt| f(rt, buf)),
            Err(msg) => {
                crate::sys::fail(&msg);
                -1
            }
        }
    }

    /// Sends the message of a panic to the host through `fail` before the
    /// panic aborts (a trap), so the host can report more than "unreachable".
    pub fn install_panic_hook() {
        std::panic::set_hook(Box::new(|info| crate::sys::fail(&info.to_string())));
    }
}
