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
