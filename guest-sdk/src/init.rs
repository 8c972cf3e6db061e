//! The init document (ABI.md §4), handed to every module once before
//! anything else.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The parsed init document.
#[derive(Debug, Clone, PartialEq)]
pub struct Init {
    /// The name of the processor (spout, bolt or sink) in the topology.
    pub processor: String,
    /// This instance's index, `0..parallelism`.
    pub instance: u32,
    /// How many instances of the processor run.
    pub parallelism: u32,
    /// The absolute directory of the topology file; relative paths in the
    /// configuration are meant relative to it (see [`Init::resolve_path`]).
    pub topology_dir: PathBuf,
    /// The processor's `config` table, as a JSON object (`{}` when absent).
    pub config: Value,
    /// Sinks only: the newest round the host knows this sink made durable
    /// (0: none). Absent for other kinds.
    pub committed_round: u64,
}

impl Init {
    /// An init document for tests: instance 0 of 1, topology directory `.`.
    pub fn new(processor: &str, config: Value) -> Init {
        Init {
            processor: processor.to_owned(),
            instance: 0,
            parallelism: 1,
            topology_dir: PathBuf::from("."),
            config,
            committed_round: 0,
        }
    }

    /// Parses the UTF-8 JSON init document. `config` may be absent or
    /// `null` (taken as `{}`); every other field is required.
    pub fn parse(doc: &[u8]) -> Result<Init, String> {
        let value: Value = serde_json::from_slice(doc).map_err(|e| format!("init document is not valid JSON: {e}"))?;
        let Value::Object(obj) = value else {
            return Err("init document is not a JSON object".to_owned());
        };
        let processor =
            field(&obj, "processor")?.as_str().ok_or("init document: `processor` is not a string")?.to_owned();
        let instance = u32_field(&obj, "instance")?;
        let parallelism = u32_field(&obj, "parallelism")?;
        let topology_dir = PathBuf::from(
            field(&obj, "topology_dir")?.as_str().ok_or("init document: `topology_dir` is not a string")?,
        );
        let config = match obj.get("config") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => return Err("init document: `config` is not an object".to_owned()),
        };
        let committed_round = match obj.get("committed_round") {
            None | Some(Value::Null) => 0,
            Some(v) => v.as_u64().ok_or("init document: `committed_round` is not a round number")?,
        };
        Ok(Init { processor, instance, parallelism, topology_dir, config, committed_round })
    }

    /// Encodes this document as the host would send it (for tests).
    pub fn to_document(&self) -> Vec<u8> {
        let v = serde_json::json!({
            "processor": self.processor,
            "instance": self.instance,
            "parallelism": self.parallelism,
            "topology_dir": self.topology_dir.to_string_lossy(),
            "config": self.config,
            "committed_round": self.committed_round,
        });
        v.to_string().into_bytes()
    }

    /// The raw value of a configuration key, if present.
    pub fn config(&self, key: &str) -> Option<&Value> {
        self.config.get(key)
    }

    /// A string configuration key: `Ok(None)` when absent, an error when it
    /// is present but not a string.
    pub fn config_str(&self, key: &str) -> Result<Option<&str>, String> {
        match self.config(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!("config `{key}` must be a string, not {other}")),
        }
    }

    /// A string configuration key that must be present.
    pub fn require_str(&self, key: &str) -> Result<&str, String> {
        self.config_str(key)?.ok_or_else(|| format!("config `{key}` is required"))
    }

    /// A non-negative integer configuration key: `Ok(None)` when absent.
    pub fn config_u64(&self, key: &str) -> Result<Option<u64>, String> {
        match self.config(key) {
            None => Ok(None),
            Some(v) => {
                v.as_u64().map(Some).ok_or_else(|| format!("config `{key}` must be a non-negative integer, not {v}"))
            }
        }
    }

    /// A boolean configuration key: `Ok(None)` when absent.
    pub fn config_bool(&self, key: &str) -> Result<Option<bool>, String> {
        match self.config(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(format!("config `{key}` must be a boolean, not {other}")),
        }
    }

    /// Resolves a path from the configuration: an absolute path is kept,
    /// a relative one is joined onto [`Init::topology_dir`]. `.` and `name/..`
    /// are removed lexically, because WASI finds a granted directory by the
    /// path's prefix: `/t/../out/x` would not match a grant of `/out`.
    pub fn resolve_path(&self, path: impl AsRef<Path>) -> PathBuf {
        // `join` replaces the base when `path` is rooted. Testing `has_root`
        // rather than `is_absolute` matters on wasm32-unknown-unknown, where
        // std reports no path as absolute.
        let path = path.as_ref();
        let joined = if path.has_root() { path.to_path_buf() } else { self.topology_dir.join(path) };
        hailstorm_abi::normalize_path(&joined)
    }
}

fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a Value, String> {
    obj.get(name).ok_or_else(|| format!("init document: `{name}` is missing"))
}

fn u32_field(obj: &Map<String, Value>, name: &str) -> Result<u32, String> {
    field(obj, name)?
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("init document: `{name}` is not a 32-bit unsigned integer"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_host_document() {
        let doc = br#"{"processor":"counts","instance":1,"parallelism":2,
            "topology_dir":"/topo","config":{"path":"out/x.tsv","n":3,"on":true}}"#;
        let init = Init::parse(doc).unwrap();
        assert_eq!(init.processor, "counts");
        assert_eq!((init.instance, init.parallelism), (1, 2));
        assert_eq!(init.config_str("path").unwrap(), Some("out/x.tsv"));
        assert_eq!(init.config_str("missing").unwrap(), None);
        assert!(init.config_str("n").is_err());
        assert_eq!(init.config_u64("n").unwrap(), Some(3));
        assert_eq!(init.config_bool("on").unwrap(), Some(true));
        assert!(init.require_str("missing").unwrap_err().contains("missing"));
        assert_eq!(init.resolve_path("out/x.tsv"), PathBuf::from("/topo/out/x.tsv"));
        assert_eq!(init.resolve_path("/abs/y"), PathBuf::from("/abs/y"));
    }

    #[test]
    fn config_defaults_to_an_empty_object() {
        let init = Init::parse(br#"{"processor":"p","instance":0,"parallelism":1,"topology_dir":"/"}"#).unwrap();
        assert_eq!(init.config, json!({}));
    }

    #[test]
    fn rejects_bad_documents() {
        for doc in [
            &b"not json"[..],
            b"[]",
            br#"{"instance":0,"parallelism":1,"topology_dir":"/"}"#,
            br#"{"processor":"p","instance":-1,"parallelism":1,"topology_dir":"/"}"#,
            br#"{"processor":"p","instance":0,"parallelism":1,"topology_dir":"/","config":[]}"#,
        ] {
            assert!(Init::parse(doc).is_err(), "{}", String::from_utf8_lossy(doc));
        }
    }

    #[test]
    fn document_round_trip() {
        let mut init = Init::new("p", json!({"a": "b"}));
        init.topology_dir = PathBuf::from("/t");
        assert_eq!(Init::parse(&init.to_document()).unwrap(), init);
    }
}
