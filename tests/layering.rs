//! The architecture's shape, checked (docs/architecture.md): every crate
//! depends only on crates below it, no library knows the command line, and
//! inside every crate the top-level modules depend on each other without a
//! cycle (read from `crate::` paths in the source). Runs without KVM.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The crates, lowest first: each may depend only on crates before it.
const LAYERS: &[(&str, &str)] = &[
    ("guest/abi", "lockstep-guest-abi"),
    ("guest/services", "lockstep-guest-services"),
    ("guest/linux", "lockstep-guest-linux"),
    ("ioengine", "ioengine"),
    ("virtq", "virtq"),
    ("status", "lockstep-status"),
    ("logchan", "logchan"),
    ("blkio", "blkio"),
    ("netio", "netio"),
    ("vmm", "lockstep-vmm"),
    ("ft", "lockstep-ft"),
    ("bench", "lockstep-bench"),
    (".", "lockstep"),
];

/// Crates that are libraries: the command line is not theirs to know.
const BINARIES: &[&str] = &["lockstep", "lockstep-bench"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `[dependencies]` section's package names (not dev-dependencies:
/// tests may reach anywhere).
fn dependencies(manifest: &str) -> Vec<String> {
    let mut deps = Vec::new();
    let mut inside = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == "[dependencies]";
            continue;
        }
        if inside && let Some((name, _)) = line.split_once('=') {
            let name = name.trim().trim_end_matches(".workspace").trim();
            if !name.is_empty() && !name.starts_with('#') {
                deps.push(name.to_string());
            }
        }
    }
    deps
}

#[test]
fn crates_depend_only_downward_and_libraries_know_no_command_line() {
    let mut problems = Vec::new();
    for (i, (dir, name)) in LAYERS.iter().enumerate() {
        let manifest = fs::read_to_string(root().join(dir).join("Cargo.toml"))
            .unwrap_or_else(|e| panic!("{dir}/Cargo.toml: {e}"));
        for dep in dependencies(&manifest) {
            if let Some(j) = LAYERS.iter().position(|(_, n)| *n == dep)
                && j >= i
            {
                problems.push(format!("{name} depends on {dep}, which is not below it"));
            }
            if dep == "clap" && !BINARIES.contains(name) {
                problems.push(format!("the library {name} depends on clap"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to (`None`: the crate root).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// The top-level modules named after `crate::` in `code` (comments
/// removed), including those inside `use crate::{a, b::c}`. Unit tests
/// (from a `#[cfg(test)]` line on) may reach anywhere and are not read.
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for line in code.lines() {
        if line.trim() == "#[cfg(test)]" {
            break;
        }
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().last();
            rest = &rest[at + "crate::".len()..];
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue; // e.g. `lockstep_crate::`
            }
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for part in inner.split(',') {
                    let name = ident(part.trim());
                    if !name.is_empty() {
                        found.insert(name);
                    }
                }
            } else {
                let name = ident(rest);
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
    }
    found
}

/// A cycle in `graph`, if any, as a path that starts and ends at one node.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(2) => return None,
            Some(1) => {
                let from = path.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(node.to_string(), 1);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_crate_has_a_cycle_between_its_top_level_modules() {
    let mut problems = Vec::new();
    // The guest kernel is a workspace of its own, outside the layers.
    let guest = [("guest/kernel", "lockstep-guest")];
    for (dir, name) in LAYERS.iter().chain(guest.iter()) {
        let src = root().join(dir).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        assert!(
            !files.is_empty(),
            "{name}: no sources under {}",
            src.display()
        );
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut modules = BTreeSet::new();
        for f in &files {
            if let Some(m) = module_of(&src, f) {
                modules.insert(m);
            }
        }
        for f in &files {
            let Some(m) = module_of(&src, f) else {
                continue;
            };
            if f.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            let code = fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let uses = crate_paths(&code);
            let edges = graph.entry(m.clone()).or_default();
            edges.extend(uses.into_iter().filter(|u| *u != m && modules.contains(u)));
        }
        if let Some(cycle) = find_cycle(&graph) {
            problems.push(format!("{name}: modules in a cycle: {}", cycle.join(" → ")));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_paths_groups_and_cycles() {
    let code = "use crate::a::X;\nuse crate::{b, c::Y};\n// crate::d in a comment\nlet z = crate::e::f();\nuse lockstep_crate::g;\n#[cfg(test)]\nuse crate::h;";
    let found: Vec<String> = crate_paths(code).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "e"]);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.entry("x".into()).or_default().insert("y".into());
    assert!(find_cycle(&graph).is_none());
    graph.entry("y".into()).or_default().insert("x".into());
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["x".into(), "y".into(), "x".into()])
    );
}
