//! The edge's layers import downward only, and the crates that must not depend on the edge
//! do not.
//!
//! `edge/src` is four folders, lowest first: `cache`, `upstream`, `front`, `node`. A file
//! of one layer may name (with a `crate::` path, in code or in a doc link) its own layer
//! and the layers below it, never one above: the cache core knows nothing of upstreams,
//! sockets or nodes, and only the node composes everything. Every module lives in a layer
//! folder (`lib.rs` aside), every path into the crate names its layer
//! (`crate::cache::...`, not a root re-export), and nothing climbs out of its layer with
//! `super::super`.
//!
//! `purge-api` and `geodns` talk to nodes through the wire crate (`node-api`); neither may
//! depend on `edge`.
//!
//! Run with `cargo test -p edge --test layers`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The layers, lowest first: each may import itself and those before it.
const LAYERS: [&str; 4] = ["cache", "upstream", "front", "node"];

/// Every `.rs` file under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The first segment of every `crate::` path in `source`, with its line number: `crate::a::b`
/// gives `a`, `crate::{a::b, c}` gives `a` and `c`.
fn crate_paths(source: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in source.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            // `crate` must start a path, not end another word (`my_crate::`).
            let before = rest[..at].chars().next_back();
            rest = &rest[at + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                found.extend(
                    group_heads(group, source, n)
                        .into_iter()
                        .map(|h| (n + 1, h)),
                );
            } else {
                found.push((n + 1, ident(rest)));
            }
        }
    }
    found
}

/// The first segment of each top-level item of a `{...}` group starting at `group` (which
/// may continue on later lines of `source` after line `n`).
fn group_heads(group: &str, source: &str, n: usize) -> Vec<String> {
    let text: String = std::iter::once(group)
        .chain(source.lines().skip(n + 1))
        .collect::<Vec<_>>()
        .join("\n");
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect_head = true;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => expect_head = true,
            c if expect_head && depth == 0 && (c.is_alphanumeric() || c == '_') => {
                heads.push(ident(&text[i..]));
                expect_head = false;
            }
            _ => {}
        }
    }
    heads
}

fn ident(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Every way `source`, a file of layer `layer` (an index into [`LAYERS`]), breaks the rule.
fn violations(source: &str, layer: usize) -> Vec<String> {
    let mut out = Vec::new();
    for (line, head) in crate_paths(source) {
        match LAYERS.iter().position(|l| *l == head) {
            Some(target) if target > layer => out.push(format!(
                "line {line}: crate::{head} is above the {} layer",
                LAYERS[layer]
            )),
            Some(_) => {}
            None => out.push(format!(
                "line {line}: crate::{head} names no layer (write crate::<layer>::...)"
            )),
        }
    }
    for (n, text) in source.lines().enumerate() {
        if text.contains("super::super") {
            out.push(format!(
                "line {}: super::super leaves the layer (use a crate:: path)",
                n + 1
            ));
        }
    }
    out
}

#[test]
fn layers_import_downward_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut report = String::new();
    let mut checked = 0;
    for file in rust_files(&src) {
        let relative = file.strip_prefix(&src).expect("under src");
        if relative == Path::new("lib.rs") {
            continue;
        }
        let folder = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or_default();
        let Some(layer) = LAYERS.iter().position(|l| *l == folder) else {
            let _ = writeln!(
                report,
                "{}: not in a layer folder ({})",
                relative.display(),
                LAYERS.join(", ")
            );
            continue;
        };
        let source = std::fs::read_to_string(&file).expect("readable source");
        for violation in violations(&source, layer) {
            let _ = writeln!(report, "{}: {violation}", relative.display());
        }
        checked += 1;
    }
    assert!(
        checked >= 40,
        "only {checked} files checked: is the layout still there?"
    );
    assert!(
        report.is_empty(),
        "layers must import downward only ({}):\n{report}",
        LAYERS.join(" < ")
    );
}

#[test]
fn purge_api_and_geodns_do_not_depend_on_edge() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for member in ["purge-api", "geodns"] {
        let path = root.join(member).join("Cargo.toml");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let manifest: toml::Table = text.parse().expect("a valid manifest");
        assert_eq!(
            edge_dependencies(&manifest),
            Vec::<String>::new(),
            "{member} depends on edge: it must use node-api instead"
        );
    }
}

/// The sections of a manifest that name the `edge` crate as a dependency.
fn edge_dependencies(manifest: &toml::Table) -> Vec<String> {
    const SECTIONS: [&str; 3] = ["dependencies", "dev-dependencies", "build-dependencies"];
    let mut tables: Vec<(String, &toml::Table)> = SECTIONS
        .iter()
        .filter_map(|s| Some((s.to_string(), manifest.get(*s)?.as_table()?)))
        .collect();
    if let Some(targets) = manifest.get("target").and_then(|t| t.as_table()) {
        for (target, table) in targets {
            for section in SECTIONS {
                if let Some(deps) = table.get(section).and_then(|d| d.as_table()) {
                    tables.push((format!("target.{target}.{section}"), deps));
                }
            }
        }
    }
    tables
        .into_iter()
        .filter(|(_, deps)| {
            deps.iter().any(|(name, spec)| {
                name == "edge" || spec.get("package").and_then(|p| p.as_str()) == Some("edge")
            })
        })
        .map(|(section, _)| section)
        .collect()
}

#[test]
fn the_checks_catch_what_they_are_for() {
    let cache = 0;
    let upward = "use crate::cache::key::CacheKey;\nuse crate::node::proxy::Edge;\n";
    assert_eq!(
        violations(upward, cache).len(),
        1,
        "{:?}",
        violations(upward, cache)
    );
    let grouped =
        "use crate::{\n    cache::store::Entry,\n    front::{body::EdgeBody, TlsName},\n};\n";
    assert_eq!(violations(grouped, cache).len(), 1);
    assert!(
        violations(grouped, 2).is_empty(),
        "front may use cache and itself"
    );
    assert_eq!(
        violations("/// See [`crate::Edge`].", 3).len(),
        1,
        "a root re-export"
    );
    assert_eq!(violations("use super::super::node::x;", 3).len(), 1);
    assert!(violations("let my_crate::node = 1;", 0).is_empty());
    let manifest: toml::Table = "[dev-dependencies]\nedge = { path = \"../edge\" }\n"
        .parse()
        .unwrap();
    assert_eq!(edge_dependencies(&manifest), ["dev-dependencies"]);
    let renamed: toml::Table = "[target.'cfg(unix)'.dependencies]\ncore = { package = \"edge\" }\n"
        .parse()
        .unwrap();
    assert_eq!(edge_dependencies(&renamed).len(), 1);
}
