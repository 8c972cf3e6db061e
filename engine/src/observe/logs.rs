//! What the engine says as it runs: plain lines on standard error (the
//! default), or JSON events through `tracing` (`--log-format json`), whose
//! spans carry the topology, epoch, processor and instance. Warnings and
//! errors are also kept (the last few) for the web view.

use std::collections::VecDeque;
use std::fmt::Arguments;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// How many warnings and errors the web view shows.
const KEEP: usize = 20;

static JSON: AtomicBool = AtomicBool::new(false);
static RECENT: Mutex<VecDeque<Said>> = Mutex::new(VecDeque::new());

/// A warning or error, as the web view shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Said {
    pub at_ms: u64,
    pub level: &'static str,
    pub text: String,
}

/// Logs go out as JSON events from now on.
pub fn set_json(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// News: a line on standard error, or an info event.
pub fn info(msg: Arguments) {
    if json() {
        tracing::info!("{msg}");
    } else {
        eprintln!("{msg}");
    }
}

/// Something the user should look at; the run goes on.
pub fn warn(msg: Arguments) {
    keep("warn", msg);
    if json() {
        tracing::warn!("{msg}");
    } else {
        eprintln!("{msg}");
    }
}

/// Something failed.
pub fn error(msg: Arguments) {
    keep("error", msg);
    if json() {
        tracing::error!("{msg}");
    } else {
        eprintln!("{msg}");
    }
}

fn keep(level: &'static str, msg: Arguments) {
    let said = Said { at_ms: crate::store::now_ms(), level, text: msg.to_string() };
    let mut recent = RECENT.lock().unwrap_or_else(|p| p.into_inner());
    if recent.len() >= KEEP {
        recent.pop_front();
    }
    recent.push_back(said);
}

/// The last warnings and errors, oldest first.
pub fn recent() -> Vec<Said> {
    RECENT.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
}
