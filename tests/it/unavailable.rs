//! A step that cannot be planned (a source whose files are missing, a Hub that cannot be reached, a model that
//! is not at hand) is reported as unavailable, with why; everything that does not read it is planned and built
//! as usual, `--target` builds what does not need it, and `status` always answers.

use crate::common::{Backend, Sandbox, actions, built, hub_mock, parquet_rows, strings};
use hub_mock::HubMock;
use parquet_rows::{row, urls_parquet};
use serde_json::Value;

on_every_store!(
    a_source_without_files_is_unavailable_and_the_rest_builds,
    an_unreachable_hub_leaves_the_local_steps_buildable,
    a_model_not_at_hand_does_not_stop_the_steps_before_it,
);

/// The steps every case below builds: `raw → up`, which the unavailable step does not touch.
const LOCAL: &str = r#"
[steps.raw]
kind = "files"
paths = "data/*.txt"

[steps.up]
kind = "command"
from = "raw"
run = "tr a-z A-Z < {input} > {output}"
"#;

/// `extra → count` reads files that are not there.
const MISSING_FILES: &str = r#"
[steps.extra]
kind = "files"
paths = "missing/*.csv"

[steps.count]
kind = "command"
from = "extra"
run = "wc -l < {input} > {output}"
"#;

fn step<'a>(plan: &'a Value, name: &str) -> &'a Value {
    plan["steps"].as_array().unwrap().iter().find(|s| s["step"] == name).unwrap()
}

fn json(run: &crate::common::Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr))
}

/// Plan, build, `--target`, status: the three cases below differ only in why one step is unavailable.
fn unavailable_leaves_the_rest(s: &Sandbox, bad: &str, after: &str, why: &str) {
    let run = s.run(&["plan", "--format", "json"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    let plan = json(&run);
    assert_eq!(step(&plan, bad)["unavailable"], true, "{plan}");
    assert!(step(&plan, bad)["unknown"].as_str().unwrap().contains(why), "{plan}");
    assert_eq!(step(&plan, after)["unavailable"], false);
    assert_eq!(step(&plan, after)["unknown"], format!("waits on `{bad}`, which is unavailable"));
    assert_eq!(
        actions(&plan).into_iter().filter(|(t, _, _)| t.starts_with("up/")).collect::<Vec<_>>(),
        vec![("up/a.txt".to_string(), "missing".to_string(), "never built".to_string())],
        "the other steps are planned as usual"
    );
    assert!(run.stderr.contains(&format!("error: step `{bad}` cannot be planned now: ")), "{}", run.stderr);
    assert!(run.stderr.contains(why), "{}", run.stderr);
    let check = s.run(&["plan", "--check"]);
    assert_eq!(check.code, 3, "plan --check counts it: {}", check.stderr);
    assert!(check.stdout.contains("Unavailable (the steps that read them wait"), "{}", check.stdout);

    // --target of a step that does not need it: built, exit 0.
    let run = s.run(&["build", "--target", "up", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(built(&json(&run)), strings(&["up/a.txt"]));

    // The whole pipeline stops before any work, as make does at its first error, naming the step; with
    // --keep-going, everything that does not read it is built, then it is named.
    s.write("data/b.txt", "bravo\n");
    let run = s.run(&["build"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains(&format!("Unavailable:\n  {bad}: ")), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("error: step `{bad}` cannot be planned now: ")), "{}", run.stderr);
    assert!(!s.store().join("pipeline/up/b.txt").exists(), "nothing was built without --keep-going");
    let run = s.run(&["build", "--keep-going", "--format", "json"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    let summary = json(&run);
    assert_eq!(built(&summary), strings(&["up/b.txt"]));
    assert_eq!(summary["unavailable"][0]["step"], bad);
    assert!(summary["unavailable"][0]["reason"].as_str().unwrap().contains(why), "{summary}");
    assert_eq!(s.read_store("pipeline/up/b.txt"), "BRAVO\n");

    // status answers from the store, with the step marked.
    let run = s.run(&["status"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains(&format!("  {bad}: unavailable: ")), "{}", run.stdout);
    let run = s.run(&["status", "--format", "json"]);
    let status = json(&run);
    assert_eq!(step(&status, "up")["fresh"], 2, "{status}");
    assert_eq!(step(&status, bad)["unavailable"], true, "{status}");
}

fn sandbox(backend: Backend, unavailable: &str) -> Sandbox {
    let s = Sandbox::on(backend, &format!("{LOCAL}{unavailable}"));
    s.write("data/a.txt", "alpha\n");
    s
}

fn a_source_without_files_is_unavailable_and_the_rest_builds(backend: Backend) {
    let s = sandbox(backend, MISSING_FILES);
    unavailable_leaves_the_rest(&s, "extra", "count", "`missing/*.csv` matches no file");
}

const HUB: &str = r#"
[steps.meta]
kind = "hf-dataset"
repo = "laion/tiny"

[steps.count]
kind = "command"
from = "meta"
run = "wc -c < {input} > {output}"
"#;

fn an_unreachable_hub_leaves_the_local_steps_buildable(backend: Backend) {
    let mut s = sandbox(backend, HUB);
    // A port nothing listens on, on this machine: the Hub cannot be reached.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    s.env.push(("HF_ENDPOINT".into(), format!("http://{closed}")));
    unavailable_leaves_the_rest(&s, "meta", "count", &format!("http://{closed}"));

    // Once the Hub answers, the step plans again; status never asks it.
    let hub = HubMock::start("laion/tiny");
    hub.commit(&[("part-0.parquet", Some(urls_parquet(&[row("http://127.0.0.1:9/a.jpg", "a")])))]);
    s.env.retain(|(k, _)| k != "HF_ENDPOINT");
    s.env.push(("HF_ENDPOINT".into(), hub.endpoint()));
    let run = s.run(&["status"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(hub.requests().is_empty(), "status sent nothing to the Hub");
    s.build(&[]);
    let run = s.run(&["status", "--format", "json"]);
    assert_eq!(step(&json(&run), "count")["fresh"], 1, "{}", run.stdout);
}

const MODEL: &str = r#"
[steps.shards]
kind = "files"
paths = "wds/*.tar"

[steps.clip]
kind = "clip-embed"
from = "shards"
model = "ViT-B/32"
device = "cpu"

[steps.index]
kind = "knn-index"
from = "clip"
"#;

fn a_model_not_at_hand_does_not_stop_the_steps_before_it(backend: Backend) {
    let mut s = sandbox(backend, MODEL);
    s.write("wds/00000.tar", "not read: the plan stops at the model");
    s.env.push(("HF_HUB_OFFLINE".into(), "1".into()));
    unavailable_leaves_the_rest(
        &s,
        "clip",
        "index",
        "HF_HUB_OFFLINE is set and no earlier listing of model `openai/clip-vit-base-patch32` at `main` is saved",
    );
}

/// `--target` of a step whose shards are known only once its inputs are built builds those inputs, then it,
/// in one build.
#[test]
fn target_of_a_row_split_step_builds_its_inputs_first() {
    let hub = HubMock::start("laion/tiny");
    let rows: Vec<_> = (0..3).map(|_| row("http://127.0.0.1:9/a.jpg", "a")).collect();
    hub.commit(&[("part-0.parquet", Some(urls_parquet(&rows)))]);
    let mut s = Sandbox::new(
        r#"
[steps.meta]
kind = "hf-dataset"
repo = "laion/tiny"

[steps.images]
kind = "img2dataset"
from = "meta"
number_sample_per_shard = 2
allow_hosts = ["127.0.0.1"]
timeout = 2

[steps.other]
kind = "command"
run = "echo > {output}"
"#,
    );
    s.env.push(("HF_ENDPOINT".into(), hub.endpoint()));
    let plan = s.plan(&["--target", "images"]);
    assert_eq!(step(&plan, "images")["unknown"], "row counts are known once meta/part-0.parquet is built");
    let selected: Vec<String> = actions(&plan).into_iter().map(|(t, _, _)| t).collect();
    assert_eq!(selected, strings(&["meta/part-0.parquet"]), "other/all is not asked for");

    let summary = s.build(&["--target", "images"]);
    assert_eq!(built(&summary), strings(&["images/part-0_00000", "images/part-0_00001", "meta/part-0.parquet"]));
    let run = s.run(&["plan", "--check", "--target", "images"]);
    assert_eq!(run.code, 0, "{}", run.stdout);
}
