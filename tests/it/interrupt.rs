//! Kills and interrupts in the middle of a build: nothing half-written is ever visible, and the next build
//! runs only what did not finish.

use crate::common::{Backend, Sandbox, built, work};

on_every_store!(gc_during_a_build_waits_for_it_and_deletes_nothing_it_needs);
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const SHARDS: usize = 12;

/// Each target writes part of its output, pauses, then finishes it: a half-written file would show.
const SLOW: &str = r#"
[steps.raw]
kind = "files"
paths = "data/*.txt"

[steps.slow]
kind = "command"
from = "raw"
run = "head -c 3 {input} > {output}; sleep 0.4; cat {input} >> {output}"
outputs = "{stem}.txt"
"#;

fn sandbox() -> Sandbox {
    let s = Sandbox::new(SLOW);
    for i in 0..SHARDS {
        s.write(&format!("data/{i:02}.txt"), &format!("sample number {i}\n"));
    }
    s
}

fn expected(i: usize) -> String {
    let input = format!("sample number {i}\n");
    format!("{}{input}", &input[..3])
}

/// Published manifests: a kill can leave a `.dsmake-tmp-*` file beside them (never read as a manifest).
fn manifests(s: &Sandbox) -> Vec<String> {
    let dir = s.store().join("pipeline/slow/_dsmake");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".txt.json").map(str::to_string))
                .filter(|name| !name.starts_with(".dsmake-tmp-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn start_build(s: &Sandbox) -> Child {
    s.command(&["build", "pipeline.toml", "-j", "2", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dsmake")
}

fn wait_for_manifests(s: &Sandbox, at_least: usize) {
    let started = Instant::now();
    while manifests(s).len() < at_least {
        assert!(started.elapsed() < Duration::from_secs(30), "the build made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every visible output is complete, and every manifest vouches for exactly what is there.
fn assert_nothing_half_written(s: &Sandbox) {
    let dir = s.store().join("pipeline/slow");
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = entry.file_name().to_str().unwrap().to_string();
        if name == "_dsmake" || name.starts_with(".dsmake-tmp-") {
            continue;
        }
        let i: usize = name.trim_end_matches(".txt").parse().unwrap();
        assert_eq!(std::fs::read_to_string(entry.path()).unwrap(), expected(i), "{name} is half-written");
    }
    for shard in manifests(s) {
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("_dsmake/{shard}.txt.json"))).unwrap()).unwrap();
        let output = &manifest["outputs"][0];
        let bytes = std::fs::read(dir.join(output["name"].as_str().unwrap())).unwrap();
        assert_eq!(output["blake3"], blake3::hash(&bytes).to_hex().to_string());
    }
}

/// `unindexed`: manifests written after the step index was last saved, which the next plan must read.
fn rebuild_runs_only_the_rest(s: &Sandbox, finished: &[String], unindexed: usize) {
    let plan = s.plan(&[]);
    assert_eq!(plan["stats"]["manifests_read"], unindexed, "manifests newer than the index are read, once");
    let summary = s.build(&[]);
    let rebuilt = built(&summary);
    assert_eq!(rebuilt.len(), SHARDS - finished.len());
    for shard in finished {
        assert!(!rebuilt.contains(&format!("slow/{shard}.txt")), "{shard} was finished and must not run again");
    }
    for i in 0..SHARDS {
        assert_eq!(s.read_store(&format!("pipeline/slow/{i:02}.txt")), expected(i));
    }
}

#[test]
fn kill_9_loses_only_the_targets_in_flight() {
    let s = sandbox();
    let mut child = start_build(&s);
    wait_for_manifests(&s, 3);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let finished = manifests(&s);
    assert!(finished.len() < SHARDS, "the build finished before the kill; make the targets slower");
    assert_nothing_half_written(&s);
    // The commands in flight, orphaned by the kill, write only to scratch: wait them out, then check again.
    std::thread::sleep(Duration::from_millis(600));
    assert_nothing_half_written(&s);
    assert_eq!(manifests(&s), finished, "nothing is published after the build died");
    rebuild_runs_only_the_rest(&s, &finished, finished.len());
}

#[test]
fn ctrl_c_stops_cleanly_with_exit_130() {
    let s = sandbox();
    let child = start_build(&s);
    wait_for_manifests(&s, 2);
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "Ctrl-C must not wait for the whole build");
    assert_eq!(out.status.code(), Some(130));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Interrupted: stopping the targets in flight"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["interrupted"], true);
    let finished = manifests(&s);
    assert_eq!(summary["built"], finished.len());
    assert_nothing_half_written(&s);
    let scratch = s.store().join(".dsmake/scratch");
    assert!(is_empty(&scratch), "cancelled targets clean their scratch folders");
    rebuild_runs_only_the_rest(&s, &finished, 0);
}

fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(true)
}

/// gc started while a slow build runs waits for the build's lock or lease, then deletes only real orphans:
/// every output and manifest is intact and the build is fresh afterwards.
fn gc_during_a_build_waits_for_it_and_deletes_nothing_it_needs(backend: Backend) {
    let s = Sandbox::on(backend, SLOW);
    for i in 0..SHARDS {
        s.write(&format!("data/{i:02}.txt"), &format!("sample number {i}\n"));
    }
    let child = s
        .command(&["build", "pipeline.toml", "-j", "2", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dsmake");
    wait_for_manifests(&s, 1);
    let started = Instant::now();
    let gc = s.run(&["gc", "--yes"]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    assert!(gc.stderr.contains("Waiting for"), "gc waited for the build: {}", gc.stderr);
    assert!(started.elapsed() > Duration::from_millis(400), "gc ran while the build did");
    assert!(gc.stdout.is_empty(), "gc deleted files of the build: {}", gc.stdout);
    let build = child.wait_with_output().unwrap();
    assert!(build.status.success(), "{}", String::from_utf8_lossy(&build.stderr));

    assert_eq!(manifests(&s).len(), SHARDS);
    assert_nothing_half_written(&s);
    for i in 0..SHARDS {
        assert_eq!(s.read_store(&format!("pipeline/slow/{i:02}.txt")), expected(i));
    }
    assert!(work(&s.plan(&[])).is_empty(), "the build is fresh after gc");
}
