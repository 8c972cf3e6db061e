//! The checks of the topology's graph: unique names, inputs that exist and
//! are of the right kind, and no cycle among bolts.

use std::collections::{BTreeSet, HashMap};

use super::tree::{Loc, Val};
use super::{closest, Bolt, Cx, OnError, Sink, Spout, Table, DEAD_LETTERS};

/// Whether `input` of a bolt whose inputs are `inputs` is a spout's
/// dead-letter stream (`SPOUT.dead`); `Err(Some(why))` when it names one
/// that cannot be read, `Err(None)` when it names none.
fn dead_letter_input(input: &str, spouts: &[Spout], inputs: &[String]) -> Result<(), Option<String>> {
    let Some(name) = input.strip_suffix(DEAD_LETTERS) else { return Err(None) };
    let Some(s) = spouts.iter().find(|s| s.name == name) else { return Err(None) };
    if s.on_error != OnError::DeadLetter {
        return Err(Some(format!(
            "`{input}` is spout `{name}`'s dead-letter stream: set spouts.{name}.on_error = \"dead-letter\""
        )));
    }
    if inputs.iter().any(|i| i == name) {
        return Err(Some(format!("a bolt cannot read both `{name}` and its dead letters `{input}`")));
    }
    Ok(())
}

impl Cx {
    /// Inputs must name existing processors of the right kind, and bolts must not form a cycle.
    pub(super) fn check_graph(&mut self, root: &Table, spouts: &[Spout], bolts: &[Bolt], sinks: &[Sink]) {
        let kinds = self.unique_names(spouts, bolts, sinks);
        for b in bolts {
            for i in &b.inputs {
                let why = match kinds.get(i.as_str()) {
                    Some(&"spout") | Some(&"bolt") => continue,
                    Some(&"sink") => format!("`{i}` is a sink; sinks have no output"),
                    None => match dead_letter_input(i, spouts, &b.inputs) {
                        Ok(()) => continue,
                        Err(why) => why.unwrap_or_else(|| format!("unknown input `{i}`{}", suggest(i, &kinds))),
                    },
                    _ => format!("unknown input `{i}`{}", suggest(i, &kinds)),
                };
                self.err(&inputs_loc(root, "bolts", &b.name), &format!("bolts.{}.inputs", b.name), why);
            }
        }
        for s in spouts.iter().filter(|s| s.on_error == OnError::DeadLetter) {
            let stream = format!("{}{DEAD_LETTERS}", s.name);
            if !bolts.iter().any(|b| b.inputs.contains(&stream)) {
                let why = format!("dead letters need a bolt that reads them: add `{stream}` to a bolt's inputs");
                self.err(&Loc::Nowhere, &format!("spouts.{}.on_error", s.name), why);
            }
        }
        for s in sinks {
            for i in &s.inputs {
                let why = match kinds.get(i.as_str()) {
                    Some(&"bolt") => continue,
                    Some(other) => format!("`{i}` is a {other}; a sink reads the committed state of bolts"),
                    None => format!("unknown input `{i}`{}", suggest(i, &kinds)),
                };
                self.err(&inputs_loc(root, "sinks", &s.name), &format!("sinks.{}.inputs", s.name), why);
            }
        }
        for cycle in cycles(bolts) {
            let Some(name) = cycle.last() else { continue };
            let why = format!("the bolts form a cycle: {}", cycle.join(" <- "));
            self.err(&inputs_loc(root, "bolts", name), &format!("bolts.{name}.inputs"), why);
        }
    }

    /// Every processor's kind by name, reporting names used twice.
    fn unique_names<'a>(
        &mut self,
        spouts: &'a [Spout],
        bolts: &'a [Bolt],
        sinks: &'a [Sink],
    ) -> HashMap<&'a str, &'static str> {
        let mut kinds: HashMap<&str, &str> = HashMap::new();
        let names = spouts
            .iter()
            .map(|s| (s.name.as_str(), "spout"))
            .chain(bolts.iter().map(|b| (b.name.as_str(), "bolt")))
            .chain(sinks.iter().map(|s| (s.name.as_str(), "sink")));
        for (n, kind) in names {
            if let Some(prev) = kinds.insert(n, kind) {
                let why = format!("the name is used by a {prev} and a {kind}; processor names must be unique");
                self.err(&Loc::Nowhere, n, why);
            }
        }
        kinds
    }
}

/// Where the `inputs` key of processor `name` in `section` is written.
fn inputs_loc(root: &Table, section: &str, name: &str) -> Loc {
    let Some(Val::Table(t)) = root.get(section).map(|n| &n.val) else { return Loc::Nowhere };
    match t.get(name).map(|p| &p.val) {
        Some(Val::Table(pt)) => pt.get("inputs").map_or(Loc::Nowhere, |i| i.loc.clone()),
        _ => Loc::Nowhere,
    }
}

fn suggest(name: &str, kinds: &HashMap<&str, &str>) -> String {
    let names: Vec<&str> = kinds.keys().copied().collect();
    closest(name, &names).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default()
}

/// Every cycle among bolts (each once), as the names along it, the first
/// repeated at the end: a depth-first search with colours.
fn cycles(bolts: &[Bolt]) -> Vec<Vec<String>> {
    let index: HashMap<&str, usize> = bolts.iter().enumerate().map(|(i, b)| (b.name.as_str(), i)).collect();
    let name = |i: usize| bolts.get(i).map_or("?", |b| b.name.as_str()).to_string();
    let (mut colour, mut seen, mut found) = (vec![0u8; bolts.len()], BTreeSet::new(), Vec::new());
    for start in 0..bolts.len() {
        if colour[start] != 0 {
            continue;
        }
        colour[start] = 1;
        let (mut stack, mut path) = (vec![(start, 0usize)], vec![start]);
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let Some(input) = bolts.get(node).and_then(|b| b.inputs.get(*next)) else {
                colour[node] = 2;
                stack.pop();
                path.pop();
                continue;
            };
            *next += 1;
            let Some(&j) = index.get(input.as_str()) else { continue };
            if colour[j] == 0 {
                colour[j] = 1;
                stack.push((j, 0));
                path.push(j);
            } else if colour[j] == 1 {
                let from = path.iter().position(|&p| p == j).unwrap_or(0);
                let mut cycle: Vec<String> = path.iter().skip(from).map(|&p| name(p)).collect();
                cycle.push(name(j));
                let mut key = cycle.clone();
                key.sort();
                if seen.insert(key.join(",")) {
                    found.push(cycle);
                }
            }
        }
    }
    found
}
