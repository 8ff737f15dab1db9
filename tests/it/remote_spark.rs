//! `dsmake build --remote spark-local`: the sample pipeline built by Spark tasks (pyspark from the .venv that
//! tests/run.sh makes, local[2]) into the S3 server, byte for byte what a local build makes; a worker killed
//! mid-run is retried by Spark. One Spark run (about 10 s to start) serves the whole test.

use crate::common::{Backend, CANARY, Sandbox, built, files_holding};
use std::collections::BTreeMap;
use std::path::Path;

fn remote_file() -> String {
    format!("{}/remotes/spark-local.toml", env!("CARGO_MANIFEST_DIR"))
}

/// The sample pipeline, plus a step whose command kills its own worker (`kill -9 $PPID`) the first time it
/// runs for each shard: Spark must retry those tasks.
fn pipeline(markers: &Path) -> String {
    let sample = std::fs::read_to_string(format!("{}/pipelines/sample.toml", env!("CARGO_MANIFEST_DIR"))).unwrap();
    format!(
        "{sample}\n[steps.flaky]\nkind = \"command\"\nfrom = \"captions\"\n\
         run = \"m={}/$(basename {{input}}); if [ ! -e \\\"$m\\\" ]; then touch \\\"$m\\\"; kill -9 $PPID; exit 1; fi; cp {{input}} {{output}}\"\n\
         outputs = \"{{stem}}.txt\"\n",
        markers.display()
    )
}

fn sandbox(backend: Backend) -> Sandbox {
    let s = Sandbox::on(backend, "");
    let markers = s.path("markers");
    std::fs::create_dir_all(&markers).unwrap();
    s.write("pipeline.toml", &pipeline(&markers));
    let captions = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/sample/captions");
    for entry in std::fs::read_dir(captions).unwrap() {
        let entry = entry.unwrap();
        let text = std::fs::read_to_string(entry.path()).unwrap();
        s.write(&format!("sample/captions/{}", entry.file_name().to_str().unwrap()), &text);
    }
    s
}

/// Every published output (manifests aside): path → bytes.
fn outputs(store: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for step in ["normalise", "counts", "report", "flaky"] {
        let dir = store.join("sample").join(step);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                let name = format!("{step}/{}", entry.file_name().to_str().unwrap());
                files.insert(name, std::fs::read(entry.path()).unwrap());
            }
        }
    }
    files
}

#[test]
fn spark_builds_the_sample_into_s3_like_a_local_build_and_retries_killed_workers() {
    // The reference: a local build (its markers exist up front, so nothing is killed).
    let local = sandbox(Backend::Local);
    for name in std::fs::read_dir(local.path("sample/captions")).unwrap() {
        std::fs::write(local.path("markers").join(name.unwrap().file_name()), "").unwrap();
    }
    let summary = local.build(&[]);
    assert_eq!(summary["built"], 14, "{summary}");

    let s = sandbox(Backend::S3);
    let remote = remote_file();
    let run = s.run(&["build", "--remote", &remote, "--format", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let summary = run.json();
    let names = built(&summary);
    let mut unique = names.clone();
    unique.dedup();
    assert_eq!(names, unique, "each target reported once");
    assert_eq!(names.len(), 14, "5 normalise + 3 counts + 1 report + 5 flaky: {summary}");
    assert!(run.stderr.contains("on spark (local[2,3])"), "{}", run.stderr);
    // Every flaky worker was killed once (its marker is there) and its retry built the target.
    assert_eq!(std::fs::read_dir(s.path("markers")).unwrap().count(), 5);
    assert_eq!(outputs(&s.store()), outputs(&local.store()), "remote outputs are byte-identical to local ones");
    // Each target has one manifest, written by a worker (the same code path as a local build).
    let manifest = s.read_store("sample/report/_dsmake/all.json");
    assert!(manifest.contains("\"dsmake_version\""), "{manifest}");

    // A second run plans nothing and submits nothing: no Spark at all.
    let run = s.run(&["build", "--remote", &remote, "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["built"], 0);
    assert_eq!(run.json()["fresh"], 14);
    assert!(!run.stderr.contains("on spark"), "nothing was submitted: {}", run.stderr);
}

#[test]
fn spark_executor_env_reaches_the_tasks_but_not_spark_submits_argv_or_the_store() {
    let s = Sandbox::on(Backend::S3, "");
    s.write(
        "pipeline.toml",
        "[steps.raw]\nkind = \"files\"\npaths = \"data/*.txt\"\n\n[steps.authed]\nkind = \"command\"\nfrom = \"raw\"\n\
         pass_env = [\"DSMAKE_IT_TOKEN\"]\nrun = \"printf %s \\\"$DSMAKE_IT_TOKEN\\\" | wc -c | tr -d ' ' > {output}\"\n\
         outputs = \"{stem}.n\"\n",
    );
    s.write("data/a.txt", "a\n");
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin");
    let argv = s.path("argv.txt");
    let wrapper = s.path("spark-submit");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\nexec '{}' \"$@\"\n",
            argv.display(),
            venv.join("spark-submit").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let remote = std::fs::read_to_string(remote_file())
        .unwrap()
        .replace("python = \"../.venv/bin/python\"", &format!("python = \"{}\"", venv.join("python").display()))
        .replace("[executor.conf]", &format!("spark_submit = \"{}\"\n\n[executor.conf]", wrapper.display()))
        + &format!("\n[executor.env]\nDSMAKE_IT_TOKEN = \"{CANARY}\"\n");
    s.write("remotes/secret.toml", &remote);
    let remote = s.path("remotes/secret.toml");

    let run = s.run(&["build", "--remote", remote.to_str().unwrap(), "--format", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(s.read_store("pipeline/authed/a.n").trim(), CANARY.len().to_string(), "the task saw the variable");
    let argv = std::fs::read_to_string(&argv).unwrap();
    assert!(argv.contains("--master") && !argv.contains(CANARY), "spark-submit's argv holds the secret:\n{argv}");
    assert!(!run.stdout.contains(CANARY) && !run.stderr.contains(CANARY));
    assert_eq!(files_holding(&s.store(), CANARY), Vec::<std::path::PathBuf>::new(), "the store holds the secret");
}
