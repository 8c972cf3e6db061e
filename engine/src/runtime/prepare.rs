//! Loading and checking everything a run needs before anything runs.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::core::plan::Plan;
use crate::error::{self, Domain};
use crate::topology::{ModuleKind, Topology};
use crate::wasm::{self, Ident, LoadedModule};

/// Everything a run needs, loaded and checked.
pub struct Prepared {
    pub topology: Topology,
    pub plan: Plan,
    pub spout_modules: Vec<LoadedModule>,
    pub bolt_modules: Vec<LoadedModule>,
    pub sink_modules: Vec<LoadedModule>,
}

impl Prepared {
    /// Every processor's name with its loaded module: spouts, then bolts, then sinks.
    pub fn processor_modules(&self) -> impl Iterator<Item = (&String, &LoadedModule)> {
        let t = &self.topology;
        t.spouts
            .iter()
            .map(|s| &s.name)
            .zip(&self.spout_modules)
            .chain(t.bolts.iter().map(|b| &b.name).zip(&self.bolt_modules))
            .chain(t.sinks.iter().map(|s| &s.name).zip(&self.sink_modules))
    }

    /// Who instance `i` of spout `s` is and the init document it starts with.
    pub(super) fn spout_init(&self, s: usize, i: u32) -> Option<(Ident, serde_json::Value)> {
        let (spec, module) = (self.topology.spouts.get(s)?, self.spout_modules.get(s)?);
        let instances = self.plan.partitions.iter().filter(|p| p.spout == s).count().max(1) as u32;
        let ident = Ident { processor: spec.name.clone(), instance: i, module: module.name() };
        Some((ident, wasm::init_doc(&spec.name, i, instances, &self.topology.dir, &spec.module.config)))
    }

    /// Starts instance `i` of bolt `b` with its configuration.
    pub(super) fn new_bolt(&self, b: usize, i: u32) -> Result<wasm::Bolt> {
        let (Some(spec), Some(module)) = (self.topology.bolts.get(b), self.bolt_modules.get(b)) else {
            return Err(error::error(Domain::Internal, false, format!("internal: no bolt number {b}")));
        };
        let ident = Ident { processor: spec.name.clone(), instance: i, module: module.name() };
        let init = wasm::init_doc(&spec.name, i, spec.parallelism, &self.topology.dir, &spec.module.config);
        Ok(wasm::Bolt::new(module, ident, spec.module.limits, &init)?)
    }
}

/// Loads and checks every module of a topology, reporting all failures at once.
pub fn prepare(topology: Topology) -> Result<Prepared> {
    prepare_with(topology, &BTreeMap::new())
}

/// [`prepare`] with the partition count of every Kafka spout's topic.
pub fn prepare_with(topology: Topology, kafka_partitions: &BTreeMap<String, u32>) -> Result<Prepared> {
    let mut errors = Vec::new();
    let mut load = |name: &str, kind: ModuleKind, path: &std::path::Path| match wasm::load(name, path, kind) {
        Ok(m) => Some(m),
        Err(e) => {
            errors.push(e.to_string());
            None
        }
    };
    let spout_modules: Vec<_> =
        topology.spouts.iter().map(|s| load(&s.name, ModuleKind::Deserializer, &s.module.path)).collect();
    let bolt_modules: Vec<_> = topology.bolts.iter().map(|b| load(&b.name, ModuleKind::Bolt, &b.module.path)).collect();
    let sink_modules: Vec<_> = topology.sinks.iter().map(|s| load(&s.name, s.module_kind(), &s.module.path)).collect();
    if !errors.is_empty() {
        let n = errors.len();
        let msg = format!("{n} module{} cannot be used:\n  {}", if n == 1 { "" } else { "s" }, errors.join("\n  "));
        return Err(error::error(Domain::Usage, false, msg));
    }
    let plan = Plan::with_kafka(&topology, kafka_partitions);
    Ok(Prepared {
        plan,
        spout_modules: spout_modules.into_iter().flatten().collect(),
        bolt_modules: bolt_modules.into_iter().flatten().collect(),
        sink_modules: sink_modules.into_iter().flatten().collect(),
        topology,
    })
}

/// Starts one instance of every deserializer and bolt with its configuration,
/// so a `config` the module rejects is reported before anything runs. (Sinks
/// are left out: starting one may touch the directories it is granted.)
pub fn check_configs(p: &Prepared) -> Result<()> {
    let t = &p.topology;
    let mut errors: Vec<String> = Vec::new();
    for (si, (s, m)) in t.spouts.iter().zip(&p.spout_modules).enumerate() {
        let Some((ident, init)) = p.spout_init(si, 0) else { continue };
        if let Err(e) = wasm::Deserializer::new(m, ident, s.module.limits, &init) {
            errors.push(e.to_string());
        }
    }
    for b in 0..t.bolts.len() {
        if let Err(e) = p.new_bolt(b, 0) {
            errors.push(format!("{e:#}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(error::error(Domain::Usage, false, errors.join("\n")))
    }
}
