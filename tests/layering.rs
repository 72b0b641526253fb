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

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
};

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

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code without comment lines.
fn code(text: &str) -> String {
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first segments of every `crate::` path in `code`, with `use
/// crate::{a::b, c}` groups expanded.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let before = rest[..at].chars().last();
        rest = after;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':' || c == '$') {
            continue; // `$crate::`, `other_crate::`, `super::crate::`
        }
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (depth == 1 && c == ',') {
                    out.push(first_segment(&item));
                    item.clear();
                    if depth == 0 {
                        break;
                    }
                } else {
                    item.push(c);
                }
            }
        } else {
            out.push(first_segment(after));
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

fn first_segment(path: &str) -> String {
    path.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Names that `lib.rs` re-exports at the crate root, with their module.
fn root_names(lib: &str) -> HashMap<String, String> {
    let mut names = HashMap::new();
    for stmt in code(lib).split(';') {
        let Some(path) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let path = path.strip_prefix("crate::").unwrap_or(path);
        let module = first_segment(path);
        for name in path.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
            if !name.is_empty() && name != module {
                names.insert(name.to_owned(), module.clone());
            }
        }
    }
    names
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
