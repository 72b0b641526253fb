//! The layering of the gateway's `src/` stays true: a folder per concern,
//! arrows only point down, and no concerns import each other in a circle.
//!
//! ```text
//! 4  main.rs                 the binary: its subcommands
//! 3  hub/, agent/            the two roles, and what each is made of
//! 2  admin/                  the admin API, its CLI, dashboard, sessions
//! 1  credentials/            config, credentials and what each may do
//! 0  telemetry/, failure, signal, keepalive, compression, limit, ending
//!                            leaves: metrics, logs, traces, errors, limits
//! ```
//!
//! Every `crate::` path in a file's code (not its comments) names the
//! concern it comes from: the folder (or root file) of the module, as
//! `main.rs` re-exports each module from its folder
//! (`crate::metrics` is `telemetry/`). A file may only name concerns of
//! its own layer or lower ones, and the concerns of one layer never form
//! a circle.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

use grpctunnel_testing::imports::{code, crate_paths, root_names, rust_files};

/// The layer of a concern (a folder, or a file at the root) of the
/// gateway's `src/`.
fn layer(concern: &str) -> Option<u8> {
    Some(match concern {
        "telemetry" | "failure" | "signal" | "keepalive" | "compression" | "limit" | "ending" => 0,
        "credentials" => 1,
        "admin" => 2,
        "hub" | "agent" => 3,
        "main" => 4,
        _ => return None,
    })
}

/// Concern -> the concerns its code names.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let main = fs::read_to_string(src.join("main.rs")).expect("main.rs");
    let roots = root_names(&main);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 30, "src/ looks empty: {files:?}");
    let mut graph = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src/");
        let module = rel
            .iter()
            .next()
            .and_then(|c| c.to_str())
            .map(|c| c.trim_end_matches(".rs").to_owned())
            .expect("a path");
        let text = fs::read_to_string(file).expect("readable");
        let named: &mut BTreeSet<String> = graph.entry(module.clone()).or_default();
        for name in crate_paths(&code(&text)) {
            let theirs = roots.get(&name).cloned().unwrap_or(name);
            if theirs != module {
                named.insert(theirs);
            }
        }
    }
    graph
}

#[test]
fn gateway_imports_only_point_down() {
    let graph = imports();
    let mut wrong = Vec::new();
    for (module, named) in &graph {
        let Some(mine) = layer(module) else {
            wrong.push(format!("module `{module}` has no layer in this test"));
            continue;
        };
        for theirs in named {
            match layer(theirs) {
                None => wrong.push(format!("{module}: `crate::{theirs}` has no layer")),
                Some(l) if l > mine => wrong.push(format!(
                    "{module} (layer {mine}) imports `crate::{theirs}` (layer {l})"
                )),
                Some(_) => {}
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The test sees the arrows it is about.
    for (from, to) in [
        ("hub", "admin"),
        ("hub", "credentials"),
        ("admin", "telemetry"),
        ("credentials", "telemetry"),
        ("agent", "admin"),
    ] {
        assert!(graph[from].contains(to), "{from} does not import {to}");
    }
}

#[test]
fn gateway_modules_import_no_circle() {
    let graph = imports();
    // Depth-first search from every module, along its imports.
    fn visit<'a>(
        module: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<String> {
        if let Some(at) = path.iter().position(|m| *m == module) {
            let mut circle = path[at..].to_vec();
            circle.push(module);
            return Some(circle.join(" -> "));
        }
        if !done.insert(module) {
            return None;
        }
        path.push(module);
        for next in graph.get(module).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        let circle = visit(module, &graph, &mut Vec::new(), &mut done);
        assert!(
            circle.is_none(),
            "an import circle: {}",
            circle.unwrap_or_default()
        );
    }
}
