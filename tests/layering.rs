//! The layering of `src/` stays true: arrows only point down.
//!
//! ```text
//! 5  lib.rs, fuzzing/      the crate's face and its test harnesses
//! 4  reverse/              reverse tunnels: registry, ReverseTunnelServer
//! 3  server/               the tunnel server role, TunnelLayer
//! 2  client/               the tunnel client role, TunnelChannel
//! 1  engine/, info, limits the engine both roles share
//! 0  wire/, error          what travels: pure, no I/O, no runtime
//! ```
//!
//! Every `crate::` path in a file's code (not its comments) names the module
//! it comes from; a name re-exported at the crate root counts as the module
//! it is defined in. A file may only name modules of its own layer or
//! lower ones. The wire layer and the flow-control module must not use
//! tokio at all.

use std::{collections::BTreeMap, fs, path::Path};

use grpctunnel_testing::imports::{code, crate_paths, root_names, rust_files};

/// The layer of a top-level module of `src/`.
fn layer(module: &str) -> Option<u8> {
    Some(match module {
        "pb" | "wire" | "error" => 0,
        "engine" | "info" | "limits" => 1,
        "client" => 2,
        "server" => 3,
        // `cluster` is lib.rs's public face of `reverse::cluster`.
        "reverse" | "cluster" => 4,
        "lib" | "fuzzing" => 5,
        _ => return None,
    })
}

#[test]
fn imports_only_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    let roots = root_names(&lib);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(files.len() > 30, "src/ looks empty: {files:?}");
    let mut wrong = Vec::new();
    let mut seen = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src/");
        let top = rel
            .iter()
            .next()
            .and_then(|c| c.to_str())
            .map(|c| c.trim_end_matches(".rs"))
            .expect("a path");
        let Some(mine) = layer(top) else {
            wrong.push(format!(
                "{}: module `{top}` has no layer in this test",
                rel.display()
            ));
            continue;
        };
        let text = fs::read_to_string(file).expect("readable");
        for name in crate_paths(&code(&text)) {
            let module = roots.get(&name).cloned().unwrap_or(name);
            let Some(theirs) = layer(&module) else {
                wrong.push(format!("{}: `crate::{module}` has no layer", rel.display()));
                continue;
            };
            *seen.entry((mine, theirs)).or_insert(0) += 1;
            if theirs > mine {
                wrong.push(format!(
                    "{} (layer {mine}) imports `crate::{module}` (layer {theirs})",
                    rel.display()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that point up:\n{}",
        wrong.join("\n")
    );
    // The test sees the arrows it is about: roles use the engine, the engine
    // uses the wire layer.
    for pair in [(2, 1), (3, 1), (4, 2), (1, 0)] {
        assert!(
            seen.contains_key(&pair),
            "no import from layer {} to {}: {seen:?}",
            pair.0,
            pair.1
        );
    }
}

#[test]
fn wire_layer_and_flow_control_use_no_runtime() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src.join("wire"), &mut files);
    files.push(src.join("engine").join("flow.rs"));
    assert!(files.len() >= 9, "{files:?}");
    for file in files {
        let text = code(&fs::read_to_string(&file).expect("readable"));
        for forbidden in ["tokio", "std::net", "std::fs", "std::thread"] {
            assert!(
                !text.contains(forbidden),
                "{} uses {forbidden}: the wire layer and flow control are pure",
                file.display()
            );
        }
    }
}

#[test]
fn the_checker_sees_nested_groups_and_root_names() {
    let paths = crate_paths("use crate::{a::b, c::{d, e}, f};\nlet x = crate::g::h();\n$crate::i");
    assert_eq!(paths, ["a", "c", "f", "g"]);
    let roots = root_names("pub use client::{TunnelChannel, TunnelChannelBuilder};\npub mod x;");
    assert_eq!(
        roots.get("TunnelChannelBuilder").map(String::as_str),
        Some("client")
    );
    assert_eq!(layer("server"), Some(3));
}

/// The layer of a module of `src/reverse/`: the registry owns the
/// tunnels; the cluster and the channel use it, never the other way.
fn reverse_layer(module: &str) -> Option<u8> {
    Some(match module {
        "wakers" | "outlier" | "opening" | "served" => 0,
        "registry" => 1,
        "cluster" => 2,
        "channel" => 3,
        "accept" | "serve" | "keep" => 4,
        _ => return None,
    })
}

#[test]
fn reverse_modules_point_down_with_no_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let reverse = src.join("reverse");
    let lib_names = root_names(&fs::read_to_string(src.join("lib.rs")).expect("lib.rs"));
    let names = root_names(&fs::read_to_string(reverse.join("mod.rs")).expect("mod.rs"));
    let mut files = Vec::new();
    rust_files(&reverse, &mut files);
    files.sort();
    let mut graph: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&reverse).expect("under reverse/");
        let mine = rel
            .iter()
            .next()
            .and_then(|c| c.to_str())
            .map(|c| c.trim_end_matches(".rs").to_owned())
            .expect("a path");
        if mine == "mod" {
            continue; // the face: its re-exports
        }
        let text = code(&fs::read_to_string(file).expect("readable"));
        let mut refs = grpctunnel_testing::imports::sub_paths(&text, "reverse::");
        if rel.components().count() == 1 {
            // A file of reverse/ itself: `super::x` is reverse's `x`.
            refs.extend(grpctunnel_testing::imports::sub_paths(&text, "super::"));
        }
        // Names the crate root re-exports from reverse/.
        refs.extend(
            crate_paths(&text)
                .into_iter()
                .filter(|n| lib_names.get(n).is_some_and(|m| m == "reverse")),
        );
        for name in refs {
            let theirs = names.get(&name).cloned().unwrap_or(name);
            if theirs == mine || theirs == "crate" {
                continue;
            }
            if reverse_layer(&theirs).is_none() {
                if theirs.chars().next().is_some_and(char::is_lowercase) {
                    wrong.push(format!(
                        "{}: `reverse::{theirs}` has no layer",
                        rel.display()
                    ));
                }
                continue;
            }
            graph.entry(mine.clone()).or_default().insert(theirs);
        }
    }
    for (module, named) in &graph {
        let Some(l) = reverse_layer(module) else {
            wrong.push(format!("reverse/{module} has no layer in this test"));
            continue;
        };
        for theirs in named {
            let t = reverse_layer(theirs).expect("checked above");
            if t > l {
                wrong.push(format!(
                    "reverse/{module} (layer {l}) uses reverse/{theirs} (layer {t})"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The arrows the layering is about are seen.
    for (from, to) in [
        ("channel", "registry"),
        ("channel", "cluster"),
        ("cluster", "registry"),
        ("registry", "wakers"),
    ] {
        assert!(
            graph.get(from).is_some_and(|n| n.contains(to)),
            "{from} does not use {to}: {graph:?}"
        );
    }
}
