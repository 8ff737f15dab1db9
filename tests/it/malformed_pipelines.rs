//! Malformed pipeline files against the real binary: `dsmake plan` must exit 2 and say what is wrong, where
//! (file, line, column) and, where it can, how to fix it.
//!
//! Each case's position is written by hand and carries the text expected there, so a case checks both that
//! the binary reports that position and that the position really is the mistake in the file.

use std::path::Path;
use std::process::Command;

struct Case {
    name: &'static str,
    toml: &'static str,
    /// Extra arguments after `plan <file>` (`--set`, say).
    args: &'static [&'static str],
    /// The first line of stderr, after `error: `.
    message: &'static str,
    /// 1-based line and column of the `-->` location, and the text that starts there in `toml`; `None` for
    /// problems that have no place in the file (those print `--> <file>` alone).
    at: Option<(usize, usize, &'static str)>,
    /// The `= help:` line, after `= help: `; `None` asserts that there is none.
    help: Option<&'static str>,
}

/// A correct pipeline with an integer param; the `--set` cases use it, and so does the harness check.
const WITH_PARAM: &str = r#"[params]
words = 2

[steps.raw]
kind = "files"
paths = "data/*.txt"

[steps.counts]
kind = "command"
from = "raw"
per = "group"
group_size = "${words}"
run = "cat {input} > {output}"
"#;

const CASES: &[Case] = &[
    Case {
        name: "invalid_toml_syntax",
        toml: r#"[pipeline]
name = "x"

[steps.raw]
kind = "files"
paths = "data/*.txt
"#,
        args: &[],
        message: "invalid TOML: invalid basic string, expected `\"`",
        // The end of the line where the closing quote is missing.
        at: Some((6, 20, "\n")),
        help: None,
    },
    Case {
        name: "unknown_top_level_key",
        toml: r#"[pipeline]
name = "x"

[stpes.raw]
kind = "files"
paths = "data/*"
"#,
        args: &[],
        message: "unknown key `stpes` in the pipeline file",
        at: Some((4, 2, "stpes")),
        help: Some("did you mean `steps`?"),
    },
    Case {
        name: "unknown_key_in_pipeline_table",
        toml: r#"[pipeline]
name = "x"
descripton = "typo"

[steps.raw]
kind = "files"
paths = "data/*"
"#,
        args: &[],
        message: "unknown key `descripton` in [pipeline]",
        at: Some((3, 1, "descripton")),
        help: Some("did you mean `description`?"),
    },
    Case {
        name: "unknown_key_in_step",
        toml: r#"[steps.raw]
kind = "files"
paths = "data/*"

[steps.counts]
kind = "command"
from = "raw"
per = "group"
grop_size = 2
run = "wc -l {input} > {output}"
"#,
        args: &[],
        message: "unknown key `grop_size` in step `counts` (kind `command`)",
        at: Some((9, 1, "grop_size")),
        help: Some("did you mean `group_size`?"),
    },
    Case {
        name: "wrong_setting_type",
        toml: r#"[steps.raw]
kind = "files"
paths = "data/*"

[steps.counts]
kind = "command"
from = "raw"
per = "group"
group_size = "two"
run = "wc -l {input} > {output}"
"#,
        args: &[],
        message: "wrong type for `group_size` in step `counts`: expected an integer, found a string",
        at: Some((9, 14, "\"two\"")),
        help: Some("`group_size`: input shards per target when per = \"group\""),
    },
    Case {
        name: "missing_kind",
        toml: r#"[steps.raw]
kind = "files"
paths = "data/*"

[steps.counts]
from = "raw"
run = "wc -l {input} > {output}"
"#,
        args: &[],
        message: "step `counts` has no `kind`",
        at: Some((5, 1, "[steps.counts]")),
        help: Some("set `kind` to one of {KINDS}"),
    },
    Case {
        name: "unknown_kind",
        toml: r#"[steps.raw]
kind = "files"
paths = "data/*"

[steps.counts]
kind = "comand"
from = "raw"
run = "wc -l {input} > {output}"
"#,
        args: &[],
        message: "unknown step kind `comand`",
        at: Some((6, 8, "\"comand\"")),
        help: Some("did you mean `command`?"),
    },
    Case {
        name: "from_names_a_missing_step",
        toml: r#"[steps.raw]
kind = "files"
paths = "data/*"

[steps.counts]
kind = "command"
from = "rwa"
run = "wc -l {input} > {output}"
"#,
        args: &[],
        message: "step `counts` reads `rwa`, but there is no step `rwa`",
        at: Some((7, 8, "\"rwa\"")),
        help: Some("did you mean `raw`?"),
    },
    Case {
        name: "cycle_of_three_steps",
        toml: r#"[steps.a]
kind = "command"
from = "c"
run = "cat {input} > {output}"

[steps.b]
kind = "command"
from = "a"
run = "cat {input} > {output}"

[steps.c]
kind = "command"
from = "b"
run = "cat {input} > {output}"
"#,
        args: &[],
        // In data-flow order from the first step in the file: a is read by b, b by c, c by a.
        message: "steps form a cycle: a → b → c → a",
        at: Some((3, 8, "\"c\"")),
        help: Some("a step cannot read, directly or not, its own output: remove one `from` of the cycle"),
    },
    Case {
        name: "step_reads_itself",
        toml: r#"[steps.raw]
kind = "files"
paths = "data/*"

[steps.loop]
kind = "command"
from = ["raw", "loop"]
run = "cat {input} > {output}"
"#,
        args: &[],
        message: "steps form a cycle: loop → loop",
        at: Some((7, 8, "[\"raw\", \"loop\"]")),
        help: Some("a step cannot read, directly or not, its own output: remove one `from` of the cycle"),
    },
    Case {
        name: "undefined_param",
        toml: r#"[params]
case = "upper"

[steps.raw]
kind = "files"
paths = "data/*"

[steps.counts]
kind = "command"
from = "raw"
run = "tr ${nope} < {input} > {output}"
"#,
        args: &[],
        message: "param `nope` is used but not defined in [params]",
        at: Some((11, 7, "\"tr ${nope}")),
        help: Some("add `nope = …` under [params]"),
    },
    Case {
        name: "misspelt_param",
        toml: r#"[params]
case = "upper"

[steps.raw]
kind = "files"
paths = "data/*"

[steps.counts]
kind = "command"
from = "raw"
run = "tr ${cse} < {input} > {output}"
"#,
        args: &[],
        message: "param `cse` is used but not defined in [params]",
        at: Some((11, 7, "\"tr ${cse}")),
        help: Some("did you mean `case`?"),
    },
    Case {
        name: "set_of_an_unknown_param",
        toml: WITH_PARAM,
        args: &["--set", "word=3"],
        message: "--set word=3: unknown param `word`",
        at: None,
        help: Some("did you mean `words`?"),
    },
    Case {
        name: "set_without_any_params",
        toml: r#"[steps.raw]
kind = "files"
paths = "data/*"
"#,
        args: &["--set", "word=3"],
        message: "--set word=3: unknown param `word`",
        at: None,
        help: Some("the pipeline file has no [params]: only params declared there can be set"),
    },
    Case {
        name: "set_with_a_value_of_the_wrong_type",
        toml: WITH_PARAM,
        args: &["--set", "words=two"],
        message: "--set words=two: expected an integer, found `two`",
        at: None,
        help: Some("`words` is an integer in [params]"),
    },
    Case {
        name: "missing_required_setting",
        toml: r#"[steps.raw]
kind = "files"
paths = "data/*"

[steps.counts]
kind = "command"
from = "raw"
outputs = "{stem}.n"
"#,
        args: &[],
        message: "step `counts` (kind `command`) needs `run`",
        at: Some((5, 1, "[steps.counts]")),
        help: Some(
            "`run`: the shell command; {input}, {output}, {outputs}, {out_dir}, {shard}, {stem}, {step} and {pipeline} are filled in",
        ),
    },
    Case {
        name: "from_on_a_files_step",
        toml: r#"[steps.raw]
kind = "files"
paths = "data/*"

[steps.more]
kind = "files"
from = "raw"
paths = "more/*"
"#,
        args: &[],
        message: "a `files` step reads no other step",
        at: Some((7, 8, "\"raw\"")),
        help: Some("remove `from`: this kind is a source"),
    },
    Case {
        name: "misspelt_placeholder_in_run",
        toml: r#"[steps.raw]
kind = "files"
paths = "data/*"

[steps.counts]
kind = "command"
from = "raw"
run = "wc -l {input} > {ouput}"
"#,
        args: &[],
        message: "step `counts`: unknown placeholder `{ouput}`",
        at: Some((8, 7, "\"wc -l {input} > {ouput}\"")),
        help: Some("did you mean `{output}`?"),
    },
    Case {
        name: "input_placeholder_without_from",
        toml: r#"[steps.hello]
kind = "command"
run = "cat {input} > {output}"
"#,
        args: &[],
        message: "step `hello`: unknown placeholder `{input}`",
        at: Some((3, 7, "\"cat {input}")),
        help: Some("a step without `from` has no {input}"),
    },
    Case {
        name: "misspelt_placeholder_in_outputs",
        toml: r#"[steps.raw]
kind = "files"
paths = "data/*"

[steps.counts]
kind = "command"
from = "raw"
run = "cat {input} > {output}"
outputs = "{shrd}.txt"
"#,
        args: &[],
        message: "step `counts`: unknown placeholder `{shrd}`",
        at: Some((9, 11, "\"{shrd}.txt\"")),
        help: Some("did you mean `{shard}`?"),
    },
    Case {
        name: "per_group_without_group_size",
        toml: r#"[steps.raw]
kind = "files"
paths = "data/*"

[steps.counts]
kind = "command"
from = "raw"
per = "group"
run = "cat {input} > {output}"
"#,
        args: &[],
        message: "step `counts`: per = \"group\" needs `group_size` (a positive integer)",
        at: Some((8, 7, "\"group\"")),
        help: Some("add e.g. `group_size = 2`: the number of input shards per target"),
    },
    Case {
        name: "negative_group_size",
        toml: r#"[steps.raw]
kind = "files"
paths = "data/*"

[steps.counts]
kind = "command"
from = "raw"
per = "group"
group_size = -1
run = "cat {input} > {output}"
"#,
        args: &[],
        message: "step `counts`: `group_size` must be a positive integer, found -1",
        at: Some((9, 14, "-1")),
        help: None,
    },
    Case {
        name: "dir_outside_the_store",
        toml: r#"[steps.raw]
kind = "files"
paths = "data/*"

[steps.counts]
kind = "command"
from = "raw"
dir = "../x"
run = "cat {input} > {output}"
"#,
        args: &[],
        message: "`dir` must be a relative folder in the store",
        at: Some((8, 7, "\"../x\"")),
        help: Some("e.g. `dir = \"relaion-pop/images\"`; no `..`, no leading `/`"),
    },
    Case {
        name: "secret_param",
        toml: r#"[params]
hf_token = ""

[steps.raw]
kind = "files"
paths = "data/*"
"#,
        args: &["--set", "hf_token=canary-5f2c9e71d3"],
        message: "param `hf_token` looks like a secret",
        at: Some((2, 1, "hf_token")),
        help: Some(
            "params are written into every manifest and plan: give a secret to a command step through the environment, with `pass_env = [\"NAME\"]`",
        ),
    },
];

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `dsmake plan <file> ARGS` with a store and a cache inside `dir`, run from `dir`.
fn plan(dir: &Path, file: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_dsmake"))
        .arg("plan")
        .arg(file)
        .args(args)
        .arg("--store")
        .arg(dir.join("store"))
        .env("DSMAKE_CACHE_DIR", dir.join("cache"))
        .env_remove("DSMAKE_STORE")
        .current_dir(dir)
        .output()
        .expect("run dsmake");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The text of `toml` from 1-based `line` and `column` (in characters) to the end of the file.
fn text_at(toml: &str, line: usize, column: usize) -> Option<&str> {
    let start = toml.split_inclusive('\n').take(line - 1).map(str::len).sum();
    let rest = toml.get(start..)?;
    let offset = match rest.char_indices().nth(column - 1) {
        Some((i, _)) => i,
        None => rest.len(),
    };
    rest.get(offset..)
}

/// What is wrong with the run of `case`, if anything.
fn problems(case: &Case, file: &Path, run: &Run) -> Vec<String> {
    let mut problems = Vec::new();
    if run.code != Some(2) {
        problems.push(format!("exit code {:?}, expected 2", run.code));
    }
    let lines: Vec<&str> = run.stderr.lines().collect();
    let message = format!("error: {}", case.message);
    if lines.first() != Some(&message.as_str()) {
        problems.push(format!("first stderr line is not `{message}`"));
    }
    let location = match case.at {
        Some((line, column, expected_text)) => {
            // The hand-computed position must be the mistake in the file, not only what the binary says.
            let found = text_at(case.toml, line, column);
            if !found.is_some_and(|t| t.starts_with(expected_text)) {
                problems.push(format!(
                    "the case is wrong: {line}:{column} in its TOML starts with {:?}, not {expected_text:?}",
                    found.map(|t| t.chars().take(expected_text.chars().count()).collect::<String>())
                ));
            }
            format!("--> {}:{line}:{column}", file.display())
        }
        None => format!("--> {}", file.display()),
    };
    if !lines.iter().any(|l| l.trim_start() == location) {
        problems.push(format!("no line `{location}`"));
    }
    let helps: Vec<&str> = lines.iter().map(|l| l.trim_start()).filter(|l| l.starts_with("= help:")).collect();
    match case.help {
        Some(help) => {
            // {KINDS} stands for every built-in kind, which grows as kinds are added.
            let kinds = dsmake::kinds::names().iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
            let expected = format!("= help: {}", help.replace("{KINDS}", &kinds));
            if helps != [expected.as_str()] {
                problems.push(format!("help lines {helps:?}, expected [{expected:?}]"));
            }
        }
        None if !helps.is_empty() => problems.push(format!("unexpected help lines {helps:?}")),
        None => {}
    }
    problems
}

#[test]
fn malformed_pipelines_exit_2_with_message_location_and_help() {
    assert!(CASES.len() >= 14);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut failures = Vec::new();
    for case in CASES {
        let file = dir.path().join(format!("{}.toml", case.name));
        std::fs::write(&file, case.toml).expect("write pipeline");
        let run = plan(dir.path(), &file, case.args);
        let problems = problems(case, &file, &run);
        if !problems.is_empty() {
            failures.push(format!("case `{}`:\n  - {}\n  stderr:\n{}", case.name, problems.join("\n  - "), run.stderr));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n\n{}", failures.len(), CASES.len(), failures.join("\n"));
}

#[test]
fn case_names_are_unique() {
    let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), CASES.len());
}

/// The harness itself: the pipeline the `--set` cases use is correct, and so is a `--set` of the right type.
#[test]
fn a_valid_pipeline_plans_without_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("data")).expect("mkdir");
    for name in ["a", "b", "c"] {
        std::fs::write(dir.path().join(format!("data/{name}.txt")), name).expect("write data");
    }
    let file = dir.path().join("valid.toml");
    std::fs::write(&file, WITH_PARAM).expect("write pipeline");
    for args in [&[][..], &["--set", "words=3"][..]] {
        let run = plan(dir.path(), &file, args);
        assert_eq!(run.code, Some(0), "plan {args:?} failed:\nstdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
        assert!(!run.stderr.contains("error"), "plan {args:?} printed an error:\n{}", run.stderr);
        assert!(run.stdout.contains("counts"), "plan {args:?} does not show step `counts`:\n{}", run.stdout);
    }
}
