//! Settings passed through to librdkafka for every Kafka client the process
//! makes (consumers, the admin client, the producer): TLS, SASL and the like,
//! from the file `HAILSTORM_KAFKA_CONFIG` names — `KEY=VALUE` lines in
//! librdkafka's names (`security.protocol=SASL_SSL`, `ssl.ca.location=...`,
//! `sasl.username=...`), `#` comments. A file, not the command line, because
//! such settings hold secrets.

use std::path::Path;

use anyhow::{bail, Context, Result};
use rdkafka::ClientConfig;

/// The environment variable that names the settings file.
pub const CONFIG_ENV: &str = "HAILSTORM_KAFKA_CONFIG";

/// Settings the engine makes itself: a file may not change them.
const OURS: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "isolation.level",
];

/// Parses a settings file's text; errors name `file:line`.
fn parse(text: &str, file: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("{}:{}", file.display(), i + 1);
        // The line itself is not repeated: it may hold a secret.
        let Some((k, v)) = line.split_once('=') else { bail!("{at}: expected KEY=VALUE") };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            bail!("{at}: a setting without a name");
        }
        if OURS.contains(&k) {
            bail!("{at}: `{k}` is set by Hailstorm itself and cannot be changed here");
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// The settings of the file [`CONFIG_ENV`] names (none if it is not set).
fn from_env() -> Result<Vec<(String, String)>> {
    let Some(file) = std::env::var_os(CONFIG_ENV) else { return Ok(Vec::new()) };
    let file = Path::new(&file);
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the Kafka settings file {} ({CONFIG_ENV})", file.display()))?;
    parse(&text, file)
}

/// A client configuration for `brokers` with the settings file applied;
/// what the caller sets afterwards wins.
pub(super) fn client(brokers: &str) -> Result<ClientConfig> {
    let mut c = ClientConfig::new();
    for (k, v) in from_env()? {
        c.set(k, v);
    }
    c.set("bootstrap.servers", brokers).set("log.connection.close", "true");
    Ok(c)
}

/// A hint for an error creating a client: the settings file may be to blame.
pub(super) fn hint() -> String {
    match std::env::var_os(CONFIG_ENV) {
        Some(f) => format!(" (with the settings of {} from {CONFIG_ENV})", Path::new(&f).display()),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_comments_and_errors_with_their_place() {
        let f = Path::new("k.properties");
        let got = parse("# TLS\nsecurity.protocol = SSL\n\nssl.ca.location=/etc/ca.pem\n", f).unwrap();
        assert_eq!(got, [("security.protocol".into(), "SSL".into()), ("ssl.ca.location".into(), "/etc/ca.pem".into())]);
        let e = parse("a=1\nnonsense\n", f).unwrap_err().to_string();
        assert!(e.starts_with("k.properties:2: expected KEY=VALUE"), "{e}");
        let e = parse("group.id=x\n", f).unwrap_err().to_string();
        assert!(e.contains("k.properties:1: `group.id` is set by Hailstorm itself"), "{e}");
    }
}
