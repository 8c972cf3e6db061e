//! The threads of one run: started with a name, reporting their failure to
//! the negotiator, and all joined when the run ends.

use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};
use crossbeam_channel::Sender;

use crate::channel::{Report, Shutdown};

/// Every thread a run started.
pub(super) struct Threads {
    started: Vec<(String, JoinHandle<()>)>,
    shutdown: Shutdown,
    /// Distributed: failures are also logged where they happen (the
    /// negotiator may hear of them second, or not at all).
    log_failures: bool,
}

impl Threads {
    pub(super) fn new(shutdown: Shutdown, log_failures: bool) -> Threads {
        Threads { started: Vec::new(), shutdown, log_failures }
    }

    /// Starts `f` on a thread called `name`; if it fails while the run is
    /// live, the failure goes to `report`.
    pub(super) fn spawn(
        &mut self,
        name: String,
        report: Sender<Report>,
        f: impl FnOnce() -> Result<()> + Send + 'static,
    ) -> Result<()> {
        let span = tracing::info_span!("thread", name = %name);
        self.spawn_in(name, span, report, f)
    }

    /// Starts a processor instance's thread: its logs carry the processor
    /// and the instance, within the run's topology and epoch.
    pub(super) fn spawn_instance(
        &mut self,
        processor: &str,
        instance: u32,
        kind: &str,
        report: Sender<Report>,
        f: impl FnOnce() -> Result<()> + Send + 'static,
    ) -> Result<()> {
        let name = format!("{kind} {processor}/{instance}");
        let span = tracing::info_span!("instance", processor = %processor, instance = instance);
        self.spawn_in(name, span, report, move || {
            if crate::observe::logs::json() {
                tracing::info!("instance started");
            }
            f()
        })
    }

    fn spawn_in(
        &mut self,
        name: String,
        span: tracing::Span,
        report: Sender<Report>,
        f: impl FnOnce() -> Result<()> + Send + 'static,
    ) -> Result<()> {
        let (shutdown, log, label) = (self.shutdown.clone(), self.log_failures, name.clone());
        let h = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let _entered = span.enter();
                if let Err(e) = f() {
                    // Errors after the run was torn down are its echo, not news.
                    if !shutdown.is_aborted() {
                        if log {
                            crate::observe::logs::error(format_args!("hailstorm: {label}: {e:#}"));
                        }
                        let _ = report.send(Report::Failed(e));
                    }
                }
            })
            .with_context(|| format!("cannot start thread {name}"))?;
        self.started.push((name, h));
        Ok(())
    }

    /// Aborts the run, waits for every thread, and returns `result` (or an
    /// error if a thread panicked).
    pub(super) fn join_all<T>(self, mut result: Result<T>) -> Result<T> {
        self.shutdown.abort();
        for (name, h) in self.started {
            if h.join().is_err() {
                crate::observe::logs::error(format_args!("hailstorm: internal error: thread {name} panicked"));
                if result.is_ok() {
                    result = Err(anyhow!("internal error: thread {name} panicked"));
                }
            }
        }
        result
    }
}
