//! The layers of ARCHITECTURE.md, checked: every `crate::MODULE` a source file names must be in a layer below
//! its own module's (or its own module). A new upward import fails here with the file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module and the modules it may import.
fn allowed() -> BTreeMap<&'static str, Vec<&'static str>> {
    let base = ["util", "error", "retry", "formats"];
    let with = |more: &[&'static str]| base.iter().chain(more).copied().collect::<Vec<_>>();
    BTreeMap::from([
        ("error", vec![]),
        ("retry", vec![]),
        ("util", vec!["error"]),
        ("formats", vec!["util", "error"]),
        ("kind", with(&[])),
        ("clip", with(&["kind"])),
        ("store", with(&["kind"])),
        ("kinds", with(&["kind", "clip"])),
        ("pipeline", with(&["kind", "kinds"])),
        ("plan", with(&["kind", "store", "pipeline"])),
        ("exec", with(&["kind", "kinds", "store", "pipeline", "plan"])),
        ("remote", with(&["kind", "kinds", "clip", "store", "pipeline", "plan", "exec"])),
        ("cli", with(&["kind", "kinds", "clip", "store", "pipeline", "plan", "exec", "remote"])),
        // The crate root and the binary declare the modules.
        ("lib", vec![]),
        ("main", vec![]),
    ])
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `crate::NAME` paths in code (comments and unit-test modules left out), with their line numbers.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            // `crate::settings!` and `crate::setting_enum!` are macros, not modules.
            if !rest[name.len()..].starts_with('!') {
                found.push((n + 1, name));
            }
        }
    }
    found
}

#[test]
fn modules_import_only_from_layers_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed = allowed();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 50, "found only {} source files under {}", files.len(), src.display());
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let module =
            relative.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        let Some(may) = allowed.get(module.as_str()) else {
            wrong.push(format!("{}: module `{module}` is in no layer of ARCHITECTURE.md", relative.display()));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (line, name) in crate_paths(&text) {
            if name != module && !may.contains(&name.as_str()) {
                wrong.push(format!("{}:{line}: `{module}` imports `crate::{name}`", relative.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers of ARCHITECTURE.md:\n{}", wrong.join("\n"));
}

#[test]
fn the_check_sees_an_upward_import() {
    let text = "use crate::kind::Cancel;\n// crate::cli in a comment\nuse crate::exec::job::Job;\ncrate::settings! {}\n#[cfg(test)]\nuse crate::cli;";
    assert_eq!(crate_paths(text), vec![(1, "kind".to_string()), (3, "exec".to_string())]);
    assert!(!allowed()["kinds"].contains(&"exec"));
}
