//! Dependencies run one way: every `crate::` path in `src/` names a module of a lower layer of
//! the table in `src/lib.rs` (or the module it is written in).
//!
//! The table is read from the crate docs themselves, so the documentation and this check
//! cannot drift apart. Paths are found in code, not in comments: a doc link to a higher layer
//! is a pointer for the reader, not a dependency. `use crate::{a::X, b}` groups count each
//! member. `src/main.rs` is the binary crate (its `crate` is not the library) and is skipped.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Module name to layer number, from the rows `//! | N | `a`, `b` | ... |` of `lib_rs`.
fn layer_table(lib_rs: &str) -> BTreeMap<String, u32> {
    let mut layers = BTreeMap::new();
    for line in lib_rs.lines() {
        let Some(row) = line.trim().strip_prefix("//! |") else {
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // The header and the `|---|` line have no number in the first cell.
        let Ok(layer) = cells[0].parse::<u32>() else {
            continue;
        };
        for module in cells[1].split(',') {
            layers.insert(module.trim().trim_matches('`').to_string(), layer);
        }
    }
    layers
}

/// The modules `lib.rs` declares.
fn declared_modules(lib_rs: &str) -> Vec<String> {
    lib_rs
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_string)
        })
        .collect()
}

/// Each top-level module a source text names through a `crate::` path, with its line number.
fn named_modules(source: &str) -> Vec<(usize, String)> {
    // Comment lines are blanked, not removed, so offsets still give line numbers.
    let code: String = source
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("//") {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        // `$crate::` in a macro, or an identifier that merely ends in `crate`.
        if start > 0 && (is_ident_byte(bytes[start - 1]) || bytes[start - 1] == b'$') {
            continue;
        }
        let line_at = |offset: usize| code[..offset].matches('\n').count() + 1;
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            for (offset, name) in group_members(group) {
                found.push((line_at(from + 1 + offset), name));
            }
        } else if let Some(name) = leading_ident(rest) {
            found.push((line_at(start), name));
        }
    }
    found
}

/// The first path segment of each member of a `{...}` group, with its offset in `group`,
/// which starts after the `{`.
fn group_members(group: &str) -> Vec<(usize, String)> {
    let mut members = Vec::new();
    let mut depth = 0usize;
    let mut at_member_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_member_start = true,
            c if at_member_start && !c.is_whitespace() => {
                at_member_start = false;
                if let Some(name) = leading_ident(&group[i..]) {
                    members.push((i, name));
                }
            }
            _ => {}
        }
    }
    members
}

fn leading_ident(text: &str) -> Option<String> {
    let text = text.trim_start();
    let end = text
        .bytes()
        .position(|b| !is_ident_byte(b))
        .unwrap_or(text.len());
    (end > 0).then(|| text[..end].to_string())
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Every breach of `layers` by the source of `module`, one line each.
fn breaches(layers: &BTreeMap<String, u32>, file: &str, module: &str, source: &str) -> Vec<String> {
    let Some(&own) = layers.get(module) else {
        return vec![format!(
            "{file}: module `{module}` is not in the layer table"
        )];
    };
    named_modules(source)
        .into_iter()
        .filter(|(_, target)| target != module)
        .filter_map(|(line, target)| match layers.get(&target) {
            None => Some(format!(
                "{file}:{line}: `crate::{target}` is not in the layer table"
            )),
            Some(&layer) if layer >= own => Some(format!(
                "{file}:{line}: `{module}` (layer {own}) uses `crate::{target}` (layer {layer})"
            )),
            Some(_) => None,
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn lib_rs() -> String {
    fs::read_to_string(src_dir().join("lib.rs")).unwrap()
}

/// (path relative to `src/`, top-level module, text) of every library source file.
fn library_sources() -> Vec<(String, String, String)> {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|path| {
            let relative = path
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if relative == "lib.rs" || relative == "main.rs" {
                return None;
            }
            let first = relative.split(['/', '\\']).next().unwrap();
            let module = first.strip_suffix(".rs").unwrap_or(first).to_string();
            let text = fs::read_to_string(&path).unwrap();
            Some((relative, module, text))
        })
        .collect()
}

#[test]
fn src_follows_the_layer_table() {
    let layers = layer_table(&lib_rs());
    let mut all = Vec::new();
    for (file, module, text) in library_sources() {
        all.extend(breaches(&layers, &file, &module, &text));
    }
    assert!(
        all.is_empty(),
        "imports against the layers of src/lib.rs:\n{}",
        all.join("\n")
    );
}

#[test]
fn every_module_has_a_layer() {
    let lib = lib_rs();
    let layers = layer_table(&lib);
    let declared = declared_modules(&lib);
    assert!(declared.len() > 10, "{declared:?}");
    for module in declared {
        assert!(
            layers.contains_key(&module),
            "`{module}` has no layer in src/lib.rs"
        );
    }
}

/// The scan sees the edges the code is known to have, so a clean result means something.
#[test]
fn the_scan_finds_known_edges() {
    let sources = library_sources();
    let edges = |module: &str| -> Vec<String> {
        sources
            .iter()
            .filter(|(_, m, _)| m == module)
            .flat_map(|(_, _, text)| named_modules(text).into_iter().map(|(_, t)| t))
            .collect()
    };
    for (from, to) in [
        ("server", "listener"),
        ("delivery", "spool"),
        ("store", "policy"),
        ("config", "dnssec"),
    ] {
        assert!(edges(from).iter().any(|t| t == to), "{from} -> {to}");
    }
}

#[test]
fn upward_and_sideways_paths_are_caught() {
    let layers = layer_table(&lib_rs());
    let config = |text: &str| breaches(&layers, "config/mod.rs", "config", text);
    assert_eq!(config("use crate::delivery::parse_relayhost;\n").len(), 1);
    assert_eq!(
        config("fn f() -> bool { crate::delivery::mx::MAX > 0 }\n").len(),
        1
    );
    // A group: only the member that points up is a breach, and it is named.
    let group = "use crate::{\n    policy::Plan,\n    delivery::{dane, mx},\n};\n";
    let found = config(group);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("config/mod.rs:3") && found[0].contains("crate::delivery"));
    // Downward, own-module, comment and macro paths are fine.
    assert!(config("use crate::policy::Plan;\nuse crate::config::duration;\n").is_empty());
    assert!(config("//! See [`crate::delivery`].\n    // crate::server\n").is_empty());
    assert!(config("macro_rules! m { () => { $crate::delivery::x() } }\n").is_empty());
    // Peers in one layer do not use each other.
    let listener = breaches(
        &layers,
        "listener/mod.rs",
        "listener",
        "use crate::delivery;\n",
    );
    assert_eq!(listener.len(), 1, "{listener:?}");
    // Unknown modules on either side.
    assert_eq!(config("use crate::nowhere::X;\n").len(), 1);
    assert_eq!(breaches(&layers, "x.rs", "x", "").len(), 1);
}
