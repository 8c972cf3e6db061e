//! A TOML value tree that remembers where every value came from.
//!
//! The topology file is parsed with `toml_edit` (which keeps byte spans) and
//! turned into this small tree, then `--set KEY=VALUE` overrides are applied on
//! top. Validation walks the tree and can report each problem with its line,
//! or with the `--set` that introduced it.

use std::collections::BTreeMap;
use std::fmt;

/// Where a value was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loc {
    /// A 1-based line of the topology file.
    Line(usize),
    /// A `--set` option from the command line.
    Override(String),
    /// Not written anywhere: a default or a table created implicitly.
    Nowhere,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Line(n) => write!(f, "line {n}"),
            Loc::Override(s) => write!(f, "--set {s}"),
            Loc::Nowhere => write!(f, "(default)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Dates and times are kept as written; no topology key takes one.
    Datetime(String),
    Array(Vec<Node>),
    Table(BTreeMap<String, Node>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub val: Val,
    pub loc: Loc,
}

impl Node {
    pub fn table(loc: Loc) -> Node {
        Node { val: Val::Table(BTreeMap::new()), loc }
    }

    pub fn type_name(&self) -> &'static str {
        match self.val {
            Val::Str(_) => "a string",
            Val::Int(_) => "an integer",
            Val::Float(_) => "a float",
            Val::Bool(_) => "a boolean",
            Val::Datetime(_) => "a date-time",
            Val::Array(_) => "an array",
            Val::Table(_) => "a table",
        }
    }

    /// Converts to JSON, for the `config` table handed to modules.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.val {
            Val::Str(s) | Val::Datetime(s) => J::String(s.clone()),
            Val::Int(i) => J::from(*i),
            Val::Float(f) => serde_json::Number::from_f64(*f).map(J::Number).unwrap_or(J::Null),
            Val::Bool(b) => J::Bool(*b),
            Val::Array(a) => J::Array(a.iter().map(Node::to_json).collect()),
            Val::Table(t) => J::Object(t.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }
}

/// Maps byte offsets of the source to 1-based line numbers.
struct Lines {
    starts: Vec<usize>,
}

impl Lines {
    fn new(src: &str) -> Lines {
        let mut starts = vec![0];
        starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        Lines { starts }
    }

    fn line(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    fn loc(&self, span: Option<std::ops::Range<usize>>) -> Loc {
        span.map(|s| Loc::Line(self.line(s.start))).unwrap_or(Loc::Nowhere)
    }
}

/// A syntax error of the file, with its line.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

/// Parses TOML source into a tree. On a syntax error, returns its line and message.
pub fn parse(src: &str) -> Result<Node, SyntaxError> {
    let doc = toml_edit::Document::parse(src).map_err(|e| {
        let lines = Lines::new(src);
        SyntaxError {
            line: e.span().map(|s| lines.line(s.start)).unwrap_or(1),
            message: e.message().trim().to_string(),
        }
    })?;
    let lines = Lines::new(src);
    Ok(convert_item(doc.as_item(), Loc::Line(1), &lines))
}

fn convert_item(item: &toml_edit::Item, loc: Loc, lines: &Lines) -> Node {
    match item {
        toml_edit::Item::None => Node::table(loc),
        toml_edit::Item::Value(v) => convert_value(v, loc, lines),
        toml_edit::Item::Table(t) => {
            let mut map = BTreeMap::new();
            for (k, v) in t.iter() {
                let kloc = t.key(k).map(|key| lines.loc(key.span())).unwrap_or(Loc::Nowhere);
                map.insert(k.to_string(), convert_item(v, kloc, lines));
            }
            Node { val: Val::Table(map), loc }
        }
        toml_edit::Item::ArrayOfTables(a) => {
            let items = a
                .iter()
                .map(|t| convert_item(&toml_edit::Item::Table(t.clone()), lines.loc(t.span()), lines))
                .collect();
            Node { val: Val::Array(items), loc }
        }
    }
}

fn convert_value(v: &toml_edit::Value, loc: Loc, lines: &Lines) -> Node {
    use toml_edit::Value as V;
    let val = match v {
        V::String(s) => Val::Str(s.value().clone()),
        V::Integer(i) => Val::Int(*i.value()),
        V::Float(f) => Val::Float(*f.value()),
        V::Boolean(b) => Val::Bool(*b.value()),
        V::Datetime(d) => Val::Datetime(d.value().to_string()),
        V::Array(a) => Val::Array(a.iter().map(|x| convert_value(x, lines.loc(x.span()), lines)).collect()),
        V::InlineTable(t) => {
            let mut map = BTreeMap::new();
            for (k, x) in t.iter() {
                let kloc = t.key(k).map(|key| lines.loc(key.span())).unwrap_or(Loc::Nowhere);
                map.insert(k.to_string(), convert_value(x, kloc, lines));
            }
            Val::Table(map)
        }
    };
    Node { val, loc }
}

/// Applies `KEY=VALUE` (dotted key, TOML value) to the tree. A value that does
/// not parse as TOML is taken as a plain string, so `--set name=demo` works.
pub fn apply_override(root: &mut Node, spec: &str) -> Result<(), String> {
    let (key, value) = spec
        .split_once('=')
        .ok_or_else(|| format!("--set {spec}: expected KEY=VALUE, e.g. --set snapshot.interval=\"5s\""))?;
    let path = parse_dotted_key(key.trim()).map_err(|e| format!("--set {spec}: {e}"))?;
    let loc = Loc::Override(spec.to_string());
    let value_src = format!("v = {}", value.trim());
    let mut node = match parse(&value_src) {
        Ok(Node { val: Val::Table(mut t), .. }) => t.remove("v").unwrap_or_else(|| Node::table(Loc::Nowhere)),
        _ => Node { val: Val::Str(value.trim().to_string()), loc: loc.clone() },
    };
    relocate(&mut node, &loc);
    let (last, parents) = path.split_last().ok_or_else(|| format!("--set {spec}: the key is empty"))?;
    let mut cur = root;
    for (i, seg) in parents.iter().enumerate() {
        let Val::Table(map) = &mut cur.val else {
            return Err(format!("--set {spec}: `{}` is not a table", parents[..i].join(".")));
        };
        cur = map.entry(seg.clone()).or_insert_with(|| Node::table(loc.clone()));
    }
    match &mut cur.val {
        Val::Table(map) => {
            map.insert(last.clone(), node);
            Ok(())
        }
        _ => Err(format!("--set {spec}: `{}` is not a table", parents.join("."))),
    }
}

fn relocate(node: &mut Node, loc: &Loc) {
    node.loc = loc.clone();
    match &mut node.val {
        Val::Array(a) => a.iter_mut().for_each(|n| relocate(n, loc)),
        Val::Table(t) => t.values_mut().for_each(|n| relocate(n, loc)),
        _ => {}
    }
}

/// Splits a dotted TOML key (`a.b."c.d"`) into its segments.
pub fn parse_dotted_key(key: &str) -> Result<Vec<String>, String> {
    let src = format!("{key} = 0");
    let node = parse(&src).map_err(|e| format!("`{key}` is not a valid dotted key: {}", e.message))?;
    let mut out = Vec::new();
    let mut cur = &node;
    loop {
        match &cur.val {
            Val::Table(t) if t.len() == 1 => {
                let Some((k, v)) = t.iter().next() else { break };
                out.push(k.clone());
                cur = v;
            }
            _ => break,
        }
    }
    if out.is_empty() {
        return Err(format!("`{key}` is not a valid dotted key"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_tracked() {
        let root = parse("name = \"x\"\n\n[a]\nb = 1\nc = { d = true }\n").unwrap();
        let Val::Table(t) = &root.val else { panic!() };
        assert_eq!(t["name"].loc, Loc::Line(1));
        let Val::Table(a) = &t["a"].val else { panic!() };
        assert_eq!(a["b"].loc, Loc::Line(4));
        assert_eq!(a["c"].loc, Loc::Line(5));
    }

    #[test]
    fn syntax_errors_have_lines() {
        let e = parse("a = 1\nb = \n").unwrap_err();
        assert_eq!(e.line, 2);
    }

    #[test]
    fn overrides_create_and_replace() {
        let mut root = parse("[snapshot]\ninterval = \"2s\"\n").unwrap();
        apply_override(&mut root, "snapshot.interval=\"5s\"").unwrap();
        apply_override(&mut root, "sinks.table.config.path=\"/tmp/x\"").unwrap();
        apply_override(&mut root, "spouts.lines.source.files=[\"a\", \"b\"]").unwrap();
        apply_override(&mut root, "name=plain").unwrap();
        let j = root.to_json();
        assert_eq!(j["snapshot"]["interval"], "5s");
        assert_eq!(j["sinks"]["table"]["config"]["path"], "/tmp/x");
        assert_eq!(j["spouts"]["lines"]["source"]["files"][1], "b");
        assert_eq!(j["name"], "plain");
        assert!(apply_override(&mut root, "snapshot.interval.x=1").is_err());
        assert!(apply_override(&mut root, "noequals").is_err());
    }

    #[test]
    fn dotted_keys() {
        assert_eq!(parse_dotted_key("a.\"b.c\".d").unwrap(), vec!["a", "b.c", "d"]);
    }
}
