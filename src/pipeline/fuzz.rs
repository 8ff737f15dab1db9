//! Property tests of the parser: whatever the text, `parse` returns a pipeline or a diagnostic, never panics,
//! and a diagnostic's position lies inside the file. Cases: `PROPTEST_CASES` (default below, sized for CI).

use super::parse;
use crate::util::fuzz::config;
use proptest::prelude::*;
use std::path::Path;

/// The real pipelines, mutated below.
const SEEDS: &[&str] = &[
    include_str!("../../pipelines/sample.toml"),
    include_str!("../../pipelines/relaion-pop.toml"),
    include_str!("../../pipelines/relaion-art.toml"),
    include_str!("../../pipelines/relaion400m.toml"),
];

/// Pieces of TOML and of dsmake's own syntax; arbitrary text made of them reaches past the TOML parser.
const TOKENS: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
    "[steps.",
    "[params]",
    "[pipeline]",
    "steps",
    ".",
    "a",
    "b",
    "raw",
    "kind",
    "from",
    "dir",
    "run",
    "paths",
    "outputs",
    "per",
    "name",
    " = ",
    "=",
    "\"files\"",
    "\"command\"",
    "\"img2dataset\"",
    "\"",
    "'",
    "\"\"\"",
    "'''",
    "${",
    "}",
    "${x}",
    "$${",
    "{input}",
    "{output}",
    "{",
    ",",
    "\n",
    "\r\n",
    "\r",
    "\t",
    " ",
    "#",
    "0",
    "-1",
    "1e999",
    "nan",
    "inf",
    "true",
    "1979-05-27T07:32:00Z",
    "é",
    "→",
    "\u{feff}",
    "\u{0}",
    "\\",
    "\\u00e9",
    "..",
    "/",
];

/// The property: no panic (proptest reports one as a failure), and an error's position is a real place.
fn check(text: &str) -> Result<(), TestCaseError> {
    let Err(d) = parse(Path::new("fuzz/p.toml"), text, &[]) else {
        return Ok(());
    };
    let rendered = d.to_string();
    prop_assert!(rendered.starts_with(&d.message), "{rendered}");
    // Only a problem of the file as a whole has no place in it.
    prop_assert!(d.position.is_some() || d.message == "the pipeline has no steps", "no position: {}", d);
    if let Some(pos) = d.position {
        let lines: Vec<&str> = text.split('\n').collect();
        prop_assert!(pos.line >= 1 && pos.line <= lines.len(), "line {} of {}: {}", pos.line, lines.len(), d);
        let width = lines[pos.line - 1].chars().count();
        prop_assert!(pos.column >= 1 && pos.column <= width + 1, "column {} of {}: {}", pos.column, width, d);
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Edit {
    Delete { at: usize, len: usize },
    Insert { at: usize, token: &'static str },
    DuplicateLine { line: usize },
    SwapLines { a: usize, b: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1..12usize).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), prop::sample::select(TOKENS)).prop_map(|(at, token)| Edit::Insert { at, token }),
        any::<usize>().prop_map(|line| Edit::DuplicateLine { line }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines { a, b }),
    ]
}

/// Applies edits on characters (the parser takes `&str`, so the text stays UTF-8).
fn mutate(seed: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = seed.chars().collect();
    for e in edits {
        match *e {
            Edit::Delete { at, len } if !chars.is_empty() => {
                let at = at % chars.len();
                chars.drain(at..(at + len).min(chars.len()));
            }
            Edit::Delete { .. } => {}
            Edit::Insert { at, token } => {
                let at = at % (chars.len() + 1);
                chars.splice(at..at, token.chars());
            }
            Edit::DuplicateLine { line } | Edit::SwapLines { a: line, .. } => {
                let text: String = chars.iter().collect();
                let mut lines: Vec<&str> = text.split('\n').collect();
                let i = line % lines.len();
                match *e {
                    Edit::SwapLines { b, .. } => {
                        let j = b % lines.len();
                        lines.swap(i, j);
                    }
                    _ => lines.insert(i, lines[i]),
                }
                chars = lines.join("\n").chars().collect();
            }
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn token_soup_never_panics(tokens in prop::collection::vec(prop::sample::select(TOKENS), 0..80)) {
        check(&tokens.concat())?;
    }

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        check(&text)?;
    }

    #[test]
    fn mutated_pipelines_never_panic(
        seed in prop::sample::select(SEEDS),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        check(&mutate(seed, &edits))?;
    }
}

#[test]
fn the_seeds_parse() {
    for seed in SEEDS {
        parse(Path::new("fuzz/p.toml"), seed, &[]).unwrap();
    }
}
