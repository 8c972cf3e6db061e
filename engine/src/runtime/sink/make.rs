//! Makes a sink's output from its spec, and checks connector sinks at deploy.

use anyhow::{anyhow, bail, Result};

use super::out::{Connected, Out};
use crate::connect::shape::{parse_describe, Shape};
use crate::connect::Writer;
use crate::runtime::Prepared;
use crate::topology::{Connector, Sink};
use crate::wasm::{self, Ident};

/// A fresh serializer of connector sink `si`, and what its items are; an
/// error when they do not fit the connector.
pub(crate) fn serializer(p: &Prepared, si: usize) -> Result<(wasm::Serializer, Shape)> {
    let (spec, module) = sink_of(p, si)?;
    let ident = Ident { processor: spec.name.clone(), instance: 0, module: module.name() };
    let init = wasm::init_doc(&spec.name, 0, 1, &p.topology.dir, &spec.module.config);
    let mut s = wasm::Serializer::new(module, ident, spec.module.limits, &init)?;
    let doc = s.describe()?;
    let shape = parse_describe(&doc).map_err(|e| anyhow!("sink `{}`: serializer {}: {e}", spec.name, module.name()))?;
    match (&spec.connector, &shape) {
        (Some(Connector::Kafka(_)), Shape::Kafka) | (Some(Connector::Postgres(_)), Shape::Rows(_)) => Ok((s, shape)),
        (Some(Connector::Kafka(_)), Shape::Rows(_)) => {
            bail!("sink `{}`: serializer {} writes table rows, but the sink writes to Kafka", spec.name, module.name())
        }
        _ => bail!(
            "sink `{}`: serializer {} writes Kafka records, but the sink writes to PostgreSQL",
            spec.name,
            module.name()
        ),
    }
}

fn sink_of(p: &Prepared, si: usize) -> Result<(&Sink, &crate::wasm::LoadedModule)> {
    let spec = p.topology.sinks.get(si).ok_or_else(|| anyhow!("internal: no sink number {si}"))?;
    let module = p.sink_modules.get(si).ok_or_else(|| anyhow!("internal: no module of sink {si}"))?;
    Ok((spec, module))
}

/// The output of sink `si`: its WebAssembly module, or its connector.
pub(super) fn output(p: &Prepared, si: usize, init: &serde_json::Value, restored: u64) -> Result<Out> {
    let (spec, module) = sink_of(p, si)?;
    let Some(connector) = &spec.connector else {
        let ident = Ident { processor: spec.name.clone(), instance: 0, module: module.name() };
        return Ok(Out::Wasm(Box::new(wasm::Sink::new(module, ident, spec.module.limits, init, &spec.dirs)?)));
    };
    let (serializer, shape) = serializer(p, si)?;
    let t = &p.topology.name;
    let writer: Box<dyn Writer> = match (connector, &shape) {
        (Connector::Kafka(k), _) => Box::new(crate::kafka::KafkaWriter::new(k, t, &spec.name)),
        (Connector::Postgres(pg), Shape::Rows(cols)) => {
            Box::new(crate::postgres::PgWriter::new(pg, t, &spec.name, cols.clone()))
        }
        (Connector::Postgres(_), Shape::Kafka) => bail!("internal: shape checked above"),
    };
    let mut c = Connected::new(&spec.name, serializer, shape, writer);
    c.newest_complete = restored;
    Ok(Out::Connector(Box::new(c)))
}

/// What deploy checks of every connector sink: its serializer fits the
/// connector, and the topic or table is there and fits.
pub fn check_connectors(p: &Prepared) -> Result<()> {
    for (si, spec) in p.topology.sinks.iter().enumerate() {
        let Some(connector) = &spec.connector else { continue };
        let (_, shape) = serializer(p, si)?;
        let checked = match (connector, &shape) {
            (Connector::Kafka(k), _) => crate::kafka::check_sink(k),
            (Connector::Postgres(pg), Shape::Rows(cols)) => crate::postgres::check_sink(pg, cols),
            (Connector::Postgres(_), Shape::Kafka) => Ok(()),
        };
        checked.map_err(|e| e.context(format!("sink `{}`", spec.name)))?;
    }
    Ok(())
}
