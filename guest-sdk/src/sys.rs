//! The raw host functions of the `hailstorm` import module (ABI.md §8).
//!
//! On `wasm32` these are the real imports. Everywhere else they are stubs
//! that record what they were given in thread-local lists, so that the SDK
//! and the modules built on it can be unit-tested on the host with
//! `cargo test`: [`take_logs`] and [`take_failures`] read the lists back.

#[cfg(target_arch = "wasm32")]
mod imp {
    // The Rust names differ from the import names so that the `log` import
    // can never be confused with libm's `log` at link time: `link_name` only
    // renames the import field, the module stays `hailstorm`.
    #[link(wasm_import_module = "hailstorm")]
    unsafe extern "C" {
        #[link_name = "log"]
        fn hailstorm_log(level: i32, ptr: *const u8, len: usize);
        #[link_name = "fail"]
        fn hailstorm_fail(ptr: *const u8, len: usize);
    }

    pub fn log(level: i32, msg: &[u8]) {
        // SAFETY: the host only reads `len` bytes at `ptr`, which `msg` owns
        // for the duration of the call.
        unsafe { hailstorm_log(level, msg.as_ptr(), msg.len()) }
    }

    pub fn fail(msg: &[u8]) {
        // SAFETY: as for `log`.
        unsafe { hailstorm_fail(msg.as_ptr(), msg.len()) }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::cell::RefCell;

    thread_local! {
        pub static LOGS: RefCell<Vec<(i32, String)>> = const { RefCell::new(Vec::new()) };
        pub static FAILURES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    pub fn log(level: i32, msg: &[u8]) {
        let line = String::from_utf8_lossy(msg).into_owned();
        LOGS.with(|l| l.borrow_mut().push((level, line)));
    }

    pub fn fail(msg: &[u8]) {
        let line = String::from_utf8_lossy(msg).into_owned();
        FAILURES.with(|f| f.borrow_mut().push(line));
    }
}

/// Calls the host's `log(level, ptr, len)`: one UTF-8 log line.
/// Levels are [`hailstorm_abi::LOG_ERROR`] (0) to [`hailstorm_abi::LOG_DEBUG`] (3).
pub fn log(level: i32, msg: &str) {
    imp::log(level, msg.as_bytes());
}

/// Calls the host's `fail(ptr, len)`: the message of the error that the
/// current call is about to return.
pub fn fail(msg: &str) {
    imp::fail(msg.as_bytes());
}

/// Host builds only: takes every `(level, line)` logged so far on this thread.
#[cfg(not(target_arch = "wasm32"))]
pub fn take_logs() -> Vec<(i32, String)> {
    imp::LOGS.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

/// Host builds only: takes every failure message reported so far on this thread.
#[cfg(not(target_arch = "wasm32"))]
pub fn take_failures() -> Vec<String> {
    imp::FAILURES.with(|f| std::mem::take(&mut *f.borrow_mut()))
}
