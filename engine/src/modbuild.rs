//! Building modules on demand (like `spin build`): a module entry may carry a
//! `build` table; `deploy`, `validate` and `build` run the command when the
//! module is missing or older than anything it watches.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use crate::topology::{BuildSpec, Topology};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot run the build command of {keys} (`{command}` in {}): {source}", workdir.display())]
    Spawn { keys: String, command: String, workdir: PathBuf, source: std::io::Error },
    #[error("the build command of {keys} failed ({status}): `{command}` in {}", workdir.display())]
    Failed { keys: String, command: String, workdir: PathBuf, status: String },
    #[error("the build command of {keys} succeeded but did not produce {}", path.display())]
    Missing { keys: String, path: PathBuf },
}

/// What a build pass did, for the user.
#[derive(Debug, Default)]
pub struct BuildReport {
    pub ran: Vec<String>,
    pub fresh: usize,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The newest modification time under a file or directory (skipping `target`).
fn newest(p: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(p).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    let mut best = meta.modified().ok();
    for e in std::fs::read_dir(p).ok()?.flatten() {
        if e.file_name() == "target" || e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if let Some(t) = newest(&e.path()) {
            best = Some(best.map_or(t, |b| b.max(t)));
        }
    }
    best
}

/// One build command and the (key, module path) of every module it produces.
type BuildGroup = (BuildSpec, Vec<(String, PathBuf)>);

/// Builds every stale module of the topology. `force` rebuilds all.
/// The commands' own output goes to this process's stderr.
pub fn build_modules(t: &Topology, force: bool) -> Result<BuildReport, BuildError> {
    // One run per distinct command: several modules often come from one build.
    let mut groups: BTreeMap<(String, PathBuf), BuildGroup> = BTreeMap::new();
    for (_, _, m) in t.modules() {
        if let Some(b) = &m.build {
            groups
                .entry((b.command.clone(), b.workdir.clone()))
                .or_insert_with(|| (b.clone(), Vec::new()))
                .1
                .push((m.key.clone(), m.path.clone()));
        }
    }
    let mut report = BuildReport::default();
    for (spec, modules) in groups.into_values() {
        let keys = modules.iter().map(|(k, _)| format!("`{k}`")).collect::<Vec<_>>().join(", ");
        let oldest = modules
            .iter()
            .map(|(_, p)| mtime(p))
            .try_fold(None::<SystemTime>, |acc, t| t.map(|t| Some(acc.map_or(t, |a: SystemTime| a.min(t)))));
        let stale = force
            || spec.watch.is_empty()
            || match oldest.flatten() {
                None => true,
                Some(built) => spec.watch.iter().any(|w| newest(w).is_none_or(|t| t > built)),
            };
        if !stale {
            report.fresh += modules.len();
            continue;
        }
        crate::observe::logs::info(format_args!("hailstorm: building {keys}: {}", spec.command));
        let status = Command::new("sh")
            .arg("-c")
            .arg(&spec.command)
            .current_dir(&spec.workdir)
            .stdout(std::process::Stdio::inherit())
            .stderr(std::process::Stdio::inherit())
            .status()
            .map_err(|source| BuildError::Spawn {
                keys: keys.clone(),
                command: spec.command.clone(),
                workdir: spec.workdir.clone(),
                source,
            })?;
        if !status.success() {
            return Err(BuildError::Failed {
                keys,
                command: spec.command,
                workdir: spec.workdir,
                status: status.to_string(),
            });
        }
        for (k, p) in &modules {
            if !p.exists() {
                return Err(BuildError::Missing { keys: format!("`{k}`"), path: p.clone() });
            }
            // A build that found nothing to do (a watched file it does not
            // read changed) leaves the module as old as it was: mark it
            // current, or every deploy would run the command again.
            let _ = std::fs::File::options().write(true).open(p).and_then(|f| f.set_modified(SystemTime::now()));
        }
        report.ran.push(spec.command);
    }
    Ok(report)
}
