//! `dsmake build --remote databricks` against a local Jobs API server (tests/python/databricks_mock.py, which
//! validates every request against tests/fixtures/specs/databricks-jobs-2.1-aws.yaml, a copy of the published
//! spec, and runs the submitted driver with local Spark) and the S3 server: the whole path from the plan to outputs in S3,
//! and the errors a user meets on the way.

use crate::common::{self, Backend, Sandbox, built, s3, work};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

const TOKEN: &str = "dapi-test-secret-0123456789";

struct Mock {
    url: String,
    state: PathBuf,
    _child: Child,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn start_mock(state: &Path) -> Mock {
    let spec = repo().join("tests/fixtures/specs/databricks-jobs-2.1-aws.yaml");
    assert!(spec.is_file(), "the Jobs API spec is read from {}", spec.display());
    let mut command = Command::new(repo().join(".venv/bin/python"));
    command
        .arg(repo().join("tests/python/databricks_mock.py"))
        .arg("--spec")
        .arg(&spec)
        .args(["--token", TOKEN, "--state"])
        .arg(state)
        // The jobs it runs cache the uploaded binary in the temporary folder: keep it in the test's.
        .env("TMPDIR", state)
        .envs(s3::env(&s3::server().endpoint))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // The server dies with the test.
    common::die_with_parent_thread(&mut command);
    let mut child = command.spawn().expect("start the mock Jobs API (needs the .venv from tests/run.sh)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().strip_prefix("listening ").unwrap_or_else(|| panic!("mock said {line:?}"));
    Mock { url: format!("http://127.0.0.1:{port}"), state: state.to_path_buf(), _child: child }
}

/// A bucket for uploaded binaries, shared by the tests of this process (one upload of the big debug binary).
fn binary_dir() -> &'static str {
    static DIR: OnceLock<String> = OnceLock::new();
    DIR.get_or_init(|| format!("s3://{}/bin", s3::bucket()))
}

/// The sample pipeline plus `gate`, which fails for a shard while its `fail-<name>` file exists.
fn pipeline(dir: &Path) -> String {
    let sample = std::fs::read_to_string(repo().join("pipelines/sample.toml")).unwrap();
    format!(
        "{sample}\n[steps.gate]\nkind = \"command\"\nfrom = \"normalise\"\n\
         run = \"if [ -e {}/fail-{{stem}} ]; then echo 'gate refused' >&2; exit 3; fi; cp {{input}} {{output}}\"\n\
         outputs = \"{{stem}}.txt\"\n",
        dir.display()
    )
}

fn remote_file(mock: &str) -> String {
    format!(
        r#"description = "the local Jobs API"
[store]
url = "s3://unused-bucket/store"

[executor]
kind = "databricks"
host = "{mock}"
poll_seconds = 0.2
binary_dir = "{bin}"

[executor.clusters.cpu]
spark_version = "15.4.x-scala2.12"
node_type_id = "r5d.2xlarge"
autoscale = {{ min_workers = 2, max_workers = 10 }}
availability = "SPOT_WITH_FALLBACK"
first_on_demand = 1
instance_profile_arn = "arn:aws:iam::123456789012:instance-profile/dsmake"
spark_env_vars = {{ HF_TOKEN = "{{{{secrets/dsmake/hf_token}}}}" }}

[executor.clusters.gpu]
spark_version = "15.4.x-gpu-ml-scala2.12"
node_type_id = "g5.4xlarge"
num_workers = 2
availability = "SPOT_WITH_FALLBACK"
spark_conf = {{ "spark.task.resource.gpu.amount" = "1" }}
"#,
        bin = binary_dir()
    )
}

fn sandbox(mock: &Mock) -> Sandbox {
    let mut s = Sandbox::on(Backend::S3, "");
    s.write("pipeline.toml", &pipeline(s.dir.path()));
    for entry in std::fs::read_dir(repo().join("pipelines/sample/captions")).unwrap() {
        let entry = entry.unwrap();
        let text = std::fs::read_to_string(entry.path()).unwrap();
        s.write(&format!("sample/captions/{}", entry.file_name().to_str().unwrap()), &text);
    }
    s.write("remotes/databricks.toml", &remote_file(&mock.url));
    s.write(
        "databrickscfg",
        &format!("[DEFAULT]\nhost = https://elsewhere.example\n\n[test]\nhost = {}\ntoken = {TOKEN}\n", mock.url),
    );
    s.env.push(("DATABRICKS_CONFIG_FILE".into(), s.path("databrickscfg").display().to_string()));
    s
}

fn dbx(s: &Sandbox, extra: &[&str]) -> common::Run {
    let mut args = vec!["build", "pipeline.toml", "--remote", "databricks", "--format", "json"];
    args.extend(extra);
    let mut cmd = s.command(&args);
    cmd.env_remove("DATABRICKS_HOST").env_remove("DATABRICKS_TOKEN").env_remove("DATABRICKS_CONFIG_PROFILE");
    cmd.output().unwrap().into()
}

fn requests(mock: &Mock) -> Vec<String> {
    std::fs::read_to_string(mock.state.join("requests.log")).unwrap_or_default().lines().map(str::to_string).collect()
}

fn submits(mock: &Mock) -> usize {
    requests(mock).iter().filter(|r| *r == "POST /2.1/jobs/runs/submit").count()
}

#[test]
fn databricks_runs_fail_clearly_keep_what_was_built_and_finish_into_s3() {
    let state = tempfile::tempdir().unwrap();
    let mock = start_mock(state.path());
    let s = sandbox(&mock);

    // A cluster that cannot start: INTERNAL_ERROR, named with its task and message; nothing built.
    std::fs::write(mock.state.join("internal_error"), "").unwrap();
    let run = dbx(&s, &["-p", "test"]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("ended INTERNAL_ERROR: task `cpu-1` failed"), "{}", run.stderr);
    assert!(run.stderr.contains("Insufficient Instance Capacity"), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("{}/#job/runs/", mock.url)), "the run's URL is printed: {}", run.stderr);

    // One target's command fails on the cluster: the run ends FAILED, the error names the task and the
    // target; with --keep-going every other target is built, and all are kept.
    std::fs::write(s.path("fail-0003-coffee"), "").unwrap();
    let run = dbx(&s, &["-p", "test", "--keep-going"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("ended FAILED: task `cpu-1` failed"), "{}", run.stderr);
    let summary = run.json();
    assert_eq!(summary["failed"][0]["target"], "gate/0003-coffee.txt", "{summary}");
    assert!(summary["failed"][0]["error"].as_str().unwrap().contains("gate refused"), "{summary}");
    assert_eq!(summary["built"], 13, "{summary}");
    let left: Vec<String> = work(&s.plan(&[])).into_iter().map(|(t, _, _)| t).collect();
    assert_eq!(left, vec!["gate/0003-coffee.txt".to_string()], "nothing already built is lost");

    // The cause is fixed: the next run builds the one target left, into the S3 server.
    std::fs::remove_file(s.path("fail-0003-coffee")).unwrap();
    let run = dbx(&s, &["-p", "test"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(built(&run.json()), vec!["gate/0003-coffee.txt".to_string()]);
    assert_eq!(s.read_store("sample/gate/0003-coffee.txt"), s.read_store("sample/normalise/0003-coffee.txt"));
    assert!(s.read_store("sample/report/top-words.txt").lines().count() > 3);

    // Nothing left to do: nothing is submitted.
    let before = submits(&mock);
    let run = dbx(&s, &["-p", "test"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["built"], 0);
    assert_eq!(submits(&mock), before, "a build with an empty plan submits no run");
    assert_eq!(before, 3);

    // Every request the executor sent was valid under the spec, and the submission has the shape it should.
    let log = requests(&mock);
    assert!(log.iter().all(|r| !r.starts_with("INVALID")), "{log:#?}");
    assert!(log.iter().any(|r| r == "GET /2.1/jobs/runs/get-output"), "{log:#?}");
    let body: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(mock.state.join("last_submit.json")).unwrap()).unwrap();
    let task = &body["tasks"][0];
    assert_eq!(body["idempotency_token"].as_str().unwrap().len(), 64);
    assert_eq!(task["new_cluster"]["aws_attributes"]["availability"], "SPOT_WITH_FALLBACK");
    assert_eq!(task["new_cluster"]["autoscale"]["max_workers"], 10);
    assert!(task["spark_python_task"]["python_file"].as_str().unwrap().ends_with("/spark_driver.py"));
    // Secrets stay references; no token or AWS key is in the request, the plan or the output.
    let text = body.to_string();
    assert!(text.contains("{{secrets/dsmake/hf_token}}"));
    for secret in [TOKEN, s3::SECRET_KEY] {
        assert!(!text.contains(secret), "a secret in the submission");
        assert!(!run.stderr.contains(secret) && !run.stdout.contains(secret));
    }
    let plans: Vec<PathBuf> =
        walk(&s.store().join(".dsmake/runs")).into_iter().filter(|p| p.ends_with("plan.json")).collect();
    assert_eq!(plans.len(), 3);
    for plan in plans {
        let text = std::fs::read_to_string(plan).unwrap();
        assert!(!text.contains(TOKEN) && !text.contains(s3::SECRET_KEY), "a secret in a plan");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            out.extend(walk(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out
}

#[test]
fn auth_and_remote_file_errors_are_clear_and_build_nothing() {
    let state = tempfile::tempdir().unwrap();
    let mock = start_mock(state.path());
    let s = sandbox(&mock);

    // A wrong token: the API's 401, said with where the credentials came from, never the token itself.
    let mut cmd = s.command(&["build", "pipeline.toml", "--remote", "databricks"]);
    cmd.env_remove("DATABRICKS_CONFIG_PROFILE")
        .env("DATABRICKS_HOST", &mock.url)
        .env("DATABRICKS_TOKEN", "dapi-wrong-token");
    let run: common::Run = cmd.output().unwrap().into();
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("rejected the credentials from DATABRICKS_HOST/DATABRICKS_TOKEN (HTTP 401"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("dapi-wrong-token"));

    // A profile that is not there: named, with the profiles that are, and how to add it.
    let run = dbx(&s, &["-p", "tset"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("Databricks profile `tset` not found"), "{}", run.stderr);
    assert!(run.stderr.contains("did you mean `test`?"), "{}", run.stderr);
    assert!(run.stderr.contains("dsmake remote login"), "{}", run.stderr);

    // Malformed remote files: where, and what.
    s.write(
        "remotes/databricks.toml",
        &remote_file(&mock.url).replace("node_type_id = \"g5.4xlarge\"", "node_type = \"g5.4xlarge\""),
    );
    let run = dbx(&s, &["-p", "test"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("unknown field `node_type`"), "{}", run.stderr);
    assert!(run.stderr.contains("remotes/databricks.toml:"), "{}", run.stderr);
    s.write("remotes/databricks.toml", &remote_file(&mock.url).replace("num_workers = 2", "master = \"local[2]\""));
    let run = dbx(&s, &["-p", "test"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("unknown field `master`")
            || run.stderr.contains("`master` is a setting of the spark executor"),
        "{}",
        run.stderr
    );
    s.write("remotes/databricks.toml", &remote_file(&mock.url).replace("num_workers = 2\n", ""));
    let run = dbx(&s, &["-p", "test"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("cluster `gpu` needs exactly one of `num_workers` and `autoscale`"), "{}", run.stderr);

    assert_eq!(submits(&mock), 0);
    assert!(!s.store().join("sample").exists(), "nothing was built");

    // `dsmake remote login` checks the token against the workspace and writes a profile readable by its owner only.
    s.write("remotes/databricks.toml", &remote_file(&mock.url));
    let mut cmd = s.command(&["remote", "login", "--host", &mock.url, "-p", "fresh"]);
    cmd.env_remove("DATABRICKS_TOKEN").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), format!("{TOKEN}\n").as_bytes()).unwrap();
    let run: common::Run = child.wait_with_output().unwrap().into();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains(TOKEN));
    let cfg = std::fs::read_to_string(s.path("databrickscfg")).unwrap();
    assert!(cfg.contains("[test]") && cfg.contains("[fresh]"), "{cfg}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(s.path("databrickscfg")).unwrap().permissions().mode() & 0o777, 0o600);
    let mut cmd = s.command(&["remote", "login", "--host", &mock.url, "-p", "bad"]);
    cmd.env("DATABRICKS_TOKEN", "dapi-nope");
    let run: common::Run = cmd.output().unwrap().into();
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("HTTP 401") && run.stderr.contains("the token was not saved"), "{}", run.stderr);
    assert!(!std::fs::read_to_string(s.path("databrickscfg")).unwrap().contains("[bad]"));
}

#[test]
fn remote_init_reads_terraform_outputs() {
    let s = Sandbox::new("");
    s.write(
        "tf.json",
        r#"{
  "databricks_host": {"sensitive": false, "type": "string", "value": "https://dbc-1234.cloud.databricks.com"},
  "store_url": {"sensitive": false, "type": "string", "value": "s3://laion-data/datasets"},
  "region": {"sensitive": false, "type": "string", "value": "us-west-2"},
  "instance_profile_arn": {"sensitive": false, "type": "string", "value": "arn:aws:iam::1:instance-profile/dsmake"},
  "gpu_policy_id": {"sensitive": false, "type": "string", "value": "ABC123"},
  "hf_token_secret": {"sensitive": false, "type": "string", "value": "{{secrets/dsmake/hf_token}}"}
}"#,
    );
    let run: common::Run = s.command(&["remote", "init", "--from-terraform", "tf.json"]).output().unwrap().into();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = std::fs::read_to_string(s.path("remotes/databricks.toml")).unwrap();
    for needle in [
        "url = \"s3://laion-data/datasets\"",
        "host = \"https://dbc-1234.cloud.databricks.com\"",
        "policy_id = \"ABC123\"",
        "\"spark.task.resource.gpu.amount\" = \"1\"",
        "availability = \"SPOT_WITH_FALLBACK\"",
        "HF_TOKEN = \"{{secrets/dsmake/hf_token}}\"",
    ] {
        assert!(text.contains(needle), "{needle} in:\n{text}");
    }
    let run: common::Run = s.command(&["remote", "init", "--from-terraform", "tf.json"]).output().unwrap().into();
    assert_eq!(run.code, 2, "an existing file is not replaced without --force: {}", run.stderr);
    s.write("partial.json", r#"{"databricks_host": {"value": "https://x"}}"#);
    let run: common::Run =
        s.command(&["remote", "init", "--from-terraform", "partial.json", "--force"]).output().unwrap().into();
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("no `store_url`"), "{}", run.stderr);
}

/// `gpu_binary`: the tasks that run GPU steps get the CUDA build (here a wrapper that notes each run and then
/// runs this dsmake), uploaded by content hash; the other tasks get the plain binary.
#[test]
fn gpu_steps_run_the_gpu_binary_and_the_others_the_plain_one() {
    let state = tempfile::tempdir().unwrap();
    let mock = start_mock(state.path());
    let s = sandbox(&mock);
    let clip = repo().join("tests/fixtures/clip-golden");
    std::fs::create_dir_all(s.path("tiny-clip")).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(clip.join("tiny-clip").join(f), s.path(&format!("tiny-clip/{f}"))).unwrap();
    }
    crate::clip_hub::write_shard(&s, "00000.tar", &[("coffee.jpg", "a cup of coffee")]);
    s.write(
        "pipeline.toml",
        &format!(
            "{}\n[steps.shards]\nkind = \"files\"\npaths = \"wds/*.tar\"\n\n[steps.clip]\nkind = \"clip-embed\"\n\
             from = \"shards\"\nmodel_path = \"tiny-clip\"\ndevice = \"cpu\"\n",
            pipeline(s.dir.path())
        ),
    );
    let marker = s.path("gpu-runs");
    s.write(
        "cuda/dsmake-cuda",
        &format!("#!/bin/sh\necho \"$@\" >> '{}'\nexec '{}' \"$@\"\n", marker.display(), env!("CARGO_BIN_EXE_dsmake")),
    );
    let remote = std::fs::read_to_string(s.path("remotes/databricks.toml")).unwrap();
    s.write(
        "remotes/databricks.toml",
        &remote.replace("binary_dir =", "gpu_binary = \"../cuda/dsmake-cuda\"\nbinary_dir ="),
    );

    let run = dbx(&s, &["-p", "test"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(built(&run.json()).contains(&"clip/00000".to_string()), "{}", run.stdout);
    let body: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(mock.state.join("last_submit.json")).unwrap()).unwrap();
    let binary = |task: &serde_json::Value| {
        let params = task["spark_python_task"]["parameters"].as_array().unwrap().clone();
        let at = params.iter().position(|p| p == "--binary").unwrap();
        (task["task_key"].as_str().unwrap().to_string(), params[at + 1].as_str().unwrap().to_string())
    };
    let tasks: Vec<(String, String)> = body["tasks"].as_array().unwrap().iter().map(binary).collect();
    let gpu: Vec<&(String, String)> = tasks.iter().filter(|(k, _)| k.starts_with("gpu")).collect();
    let cpu: Vec<&(String, String)> = tasks.iter().filter(|(k, _)| k.starts_with("cpu")).collect();
    assert!(!gpu.is_empty() && !cpu.is_empty(), "{tasks:?}");
    assert!(gpu.iter().all(|(_, b)| cpu.iter().all(|(_, c)| b != c)), "{tasks:?}");
    // The wrapper ran the GPU step's target, and only it.
    let runs = std::fs::read_to_string(&marker).unwrap_or_default();
    assert_eq!(runs.lines().count(), 1, "{runs}");
}
