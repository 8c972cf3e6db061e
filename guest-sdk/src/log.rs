//! Log lines for the host's log (the `hailstorm.log` import).
//!
//! Plain functions take a `&str`; the macros of the same names take
//! `format!` arguments:
//!
//! ```
//! use hailstorm_guest::log;
//! log::info("started");
//! log::warn!("ignoring {} bad records", 3);
//! ```

use hailstorm_abi::{LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_WARN};

/// The level of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    /// The level's number in the ABI (0 error … 3 debug).
    pub fn as_i32(self) -> i32 {
        match self {
            Level::Error => LOG_ERROR,
            Level::Warn => LOG_WARN,
            Level::Info => LOG_INFO,
            Level::Debug => LOG_DEBUG,
        }
    }
}

/// Logs one line at `level`.
pub fn log(level: Level, msg: &str) {
    crate::sys::log(level.as_i32(), msg);
}

/// Logs one line at level error.
pub fn error(msg: &str) {
    log(Level::Error, msg);
}

/// Logs one line at level warn.
pub fn warn(msg: &str) {
    log(Level::Warn, msg);
}

/// Logs one line at level info.
pub fn info(msg: &str) {
    log(Level::Info, msg);
}

/// Logs one line at level debug.
pub fn debug(msg: &str) {
    log(Level::Debug, msg);
}

// The macros are exported at the crate root under private names and
// re-exported here, so that `log::info!` (macro) and `log::info` (function)
// live side by side in the macro and value namespaces.

#[doc(hidden)]
#[macro_export]
macro_rules! __hailstorm_log_error {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Error, &::std::format!($($arg)+)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __hailstorm_log_warn {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Warn, &::std::format!($($arg)+)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __hailstorm_log_info {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Info, &::std::format!($($arg)+)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __hailstorm_log_debug {
    ($($arg:tt)+) => { $crate::log::log($crate::log::Level::Debug, &::std::format!($($arg)+)) };
}

/// `debug!("fmt", args…)`: logs a formatted line at level debug.
pub use crate::__hailstorm_log_debug as debug;
/// `error!("fmt", args…)`: logs a formatted line at level error.
pub use crate::__hailstorm_log_error as error;
/// `info!("fmt", args…)`: logs a formatted line at level info.
pub use crate::__hailstorm_log_info as info;
/// `warn!("fmt", args…)`: logs a formatted line at level warn.
pub use crate::__hailstorm_log_warn as warn;
