//! Tidy: architecture rules of ARCHITECTURE.md, checked by reading the
//! engine's source, so they cannot rot unnoticed.
//!
//! - `core/` is pure: it names no module of the crate but `core` and
//!   `topology`, and no file system, network, threads, channels or clock.
//! - Only `wasm/` uses wasmtime, only `kafka/` uses rdkafka, only
//!   `postgres/` uses the postgres crate, only
//!   `cluster/zk.rs` uses zookeeper-client and tokio.
//! - `net/` never imports `runtime` or `cluster` (the transport sits below
//!   the engine that uses it).
//! - The top-level modules of the crate form no import cycle.
//! - No function outside test code is longer than 80 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::common::root;

/// Every `.rs` file under `engine/src`, as (path relative to it, source without test modules).
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read engine/src") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = root().join("engine/src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&src).expect("under src").to_string_lossy().replace('\\', "/");
            let text = std::fs::read_to_string(&p).expect("read source");
            (rel, without_tests(&text))
        })
        .collect()
}

/// The source with every `#[cfg(test)]` item and every comment line
/// blanked (so line numbers stay).
fn without_tests(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < lines.len() {
        let skip_to = lines[i].trim_start().starts_with("#[cfg(test)]").then(|| item_end(&lines, i + 1));
        let last = skip_to.unwrap_or(i).min(lines.len().saturating_sub(1));
        for line in &lines[i..=last] {
            if skip_to.is_none() && !line.trim_start().starts_with("//") {
                out.push_str(line);
            }
            out.push('\n');
        }
        i = last + 1;
    }
    out
}

/// The index of the line that closes the item starting at line `from`.
fn item_end(lines: &[&str], from: usize) -> usize {
    let mut depth = 0i64;
    let mut opened = false;
    for (k, line) in lines.iter().enumerate().skip(from) {
        depth += line.matches('{').count() as i64 - line.matches('}').count() as i64;
        opened |= line.contains('{');
        if (opened && depth <= 0) || (!opened && line.trim_end().ends_with(';')) {
            return k;
        }
    }
    lines.len()
}

/// The top-level module a file belongs to (`runtime/bolt.rs` → `runtime`).
fn top(rel: &str) -> &str {
    rel.split('/').next().unwrap_or(rel).trim_end_matches(".rs")
}

/// The crate modules a source names through `crate::X`.
fn crate_refs(src: &str) -> BTreeSet<String> {
    src.match_indices("crate::")
        .filter(|(i, _)| !src[..*i].ends_with('$'))
        .map(|(i, m)| src[i + m.len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect())
        .filter(|s: &String| !s.is_empty())
        .collect()
}

/// Whether the source uses an external crate (`name::` not preceded by a path).
fn uses_crate(src: &str, name: &str) -> bool {
    let pat = format!("{name}::");
    src.match_indices(&pat).any(|(i, _)| {
        let before = src[..i].chars().last();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
    })
}

#[test]
fn core_is_pure() {
    let mut bad = Vec::new();
    for (rel, src) in sources().iter().filter(|(rel, _)| rel.starts_with("core/")) {
        for r in crate_refs(src) {
            if r != "core" && r != "topology" {
                bad.push(format!("{rel} imports crate::{r}"));
            }
        }
        for io in ["std::fs", "std::net", "std::thread", "std::sync::mpsc", "crossbeam", "Instant::now", "SystemTime"] {
            if src.contains(io) {
                bad.push(format!("{rel} uses {io}"));
            }
        }
        for c in ["wasmtime", "rdkafka", "zookeeper_client", "tokio"] {
            if uses_crate(src, c) {
                bad.push(format!("{rel} uses {c}"));
            }
        }
    }
    assert!(bad.is_empty(), "core/ must be pure:\n  {}", bad.join("\n  "));
}

#[test]
fn each_outside_library_has_one_home() {
    type Home = fn(&str) -> bool;
    let homes: [(&str, Home); 13] = [
        // The object store's HTTP client takes the process's TLS provider from there too.
        ("rustls", |rel| rel == "net/tls/mod.rs" || rel == "store/remote/mod.rs"),
        ("webpki", |rel| rel == "net/tls/mod.rs"),
        ("rcgen", |rel| rel == "net/tls/certs.rs"),
        ("prometheus", |rel| rel == "observe/metrics.rs"),
        ("tiny_http", |rel| rel == "observe/http.rs"),
        ("wasmtime", |rel| rel.starts_with("wasm/")),
        ("wasmtime_wasi", |rel| rel.starts_with("wasm/")),
        ("rdkafka", |rel| rel.starts_with("kafka/")),
        ("postgres", |rel| rel.starts_with("postgres/")),
        ("zookeeper_client", |rel| rel == "cluster/zk.rs"),
        // Two clients with a runtime of their own: ZooKeeper's and the object store's.
        ("tokio", |rel| rel == "cluster/zk.rs" || rel == "store/remote/mod.rs"),
        ("object_store", |rel| rel.starts_with("store/remote/")),
        ("reqwest", |_| false),
    ];
    let mut bad = Vec::new();
    for (rel, src) in sources() {
        for (lib, home) in homes {
            if uses_crate(&src, lib) && !home(&rel) {
                bad.push(format!("{rel} uses {lib}"));
            }
        }
    }
    assert!(bad.is_empty(), "outside libraries used outside their module:\n  {}", bad.join("\n  "));
}

#[test]
fn the_transport_sits_below_the_engine() {
    let mut bad = Vec::new();
    for (rel, src) in sources().iter().filter(|(rel, _)| rel.starts_with("net/")) {
        for r in crate_refs(src) {
            if r == "runtime" || r == "cluster" {
                bad.push(format!("{rel} imports crate::{r}"));
            }
        }
    }
    assert!(bad.is_empty(), "net/ must not import the engine:\n  {}", bad.join("\n  "));
}

#[test]
fn top_level_modules_form_no_cycle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, src) in sources() {
        let from = top(&rel).to_string();
        if from == "main" || from == "lib" {
            continue;
        }
        let refs: Vec<String> = crate_refs(&src).into_iter().filter(|r| *r != from).collect();
        graph.entry(from).or_default().extend(refs);
    }
    // Depth-first search for a back edge.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let at = path.iter().position(|p| p == n).unwrap_or(0);
                let mut cycle = path[at..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if let Some(cycle) = visit(n, &graph, &mut state, &mut Vec::new()) {
            panic!("the crate's top-level modules import each other in a cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn no_function_is_longer_than_80_lines() {
    let mut long = Vec::new();
    for (rel, src) in sources() {
        let lines: Vec<&str> = src.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            let is_fn = t.starts_with("fn ") || (t.starts_with("pub") && t.contains(" fn ") && !t.contains('='));
            let body = lines.iter().skip(i).position(|l| l.contains('{') || l.trim_end().ends_with(';'));
            if !is_fn || body.is_some_and(|b| lines[i + b].trim_end().ends_with(';')) {
                continue;
            }
            let n = item_end(&lines, i) + 1 - i;
            if n > 80 {
                long.push(format!("{rel}:{} ({n} lines)", i + 1));
            }
        }
    }
    assert!(long.is_empty(), "functions over 80 lines (split them):\n  {}", long.join("\n  "));
}
