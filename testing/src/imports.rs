//! What a layering test reads in source files: the `crate::` paths of
//! their code (comments left out), to check that imports point one way.
//! The crate's `tests/layering.rs` and the gateway's use it.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

/// Every `.rs` file under `dir`, recursively, into `out`.
pub fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("the directory is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `text` without its comment lines.
pub fn code(text: &str) -> String {
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first segments of every `crate::` path in `code`, with `use
/// crate::{a::b, c}` groups expanded.
pub fn crate_paths(code: &str) -> Vec<String> {
    paths_after(code, "crate::", true)
}

/// The first segments of every path that goes on after `prefix` in `code`
/// (`reverse::` in `crate::reverse::registry::X` and in `use crate::{reverse::{a,
/// b}}`; `super::` of a module's child), with groups expanded.
pub fn sub_paths(code: &str, prefix: &str) -> Vec<String> {
    paths_after(code, prefix, false)
}

fn paths_after(code: &str, prefix: &str, root: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let after = &rest[at + prefix.len()..];
        let before = rest[..at].chars().last();
        rest = after;
        let joined = |c: char| c.is_alphanumeric() || c == '_' || c == '$' || (root && c == ':');
        if before.is_some_and(joined) {
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

/// The first segment of `path` (`a` of `a::b`), without leading spaces.
pub fn first_segment(path: &str) -> String {
    path.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Names that a crate root (`lib.rs`, `main.rs`) re-exports (`pub use`,
/// `pub(crate) use`), with the module each comes from.
pub fn root_names(lib: &str) -> HashMap<String, String> {
    let mut names = HashMap::new();
    for stmt in code(lib).split(';') {
        let stmt = stmt.trim();
        let Some(path) = stmt
            .strip_prefix("pub use ")
            .or_else(|| stmt.strip_prefix("pub(crate) use "))
        else {
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
