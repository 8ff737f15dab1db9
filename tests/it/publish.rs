//! Publication on a shared store: concurrent writers of one target, a tampered input, a lost S3 lease.

use crate::common::proxy::Proxy;
use crate::common::{Backend, Sandbox};
use serde_json::{Value, json};
use std::process::{Child, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

on_every_store!(
    racing_workers_never_leave_a_manifest_over_other_bytes,
    an_input_with_other_bytes_of_the_same_size_fails_naming_it,
);

/// A sandbox whose S3 requests are atomic, as S3's are: through a proxy that passes them one at a time (see
/// `Faults::one_at_a_time`; s3s-fs alone is not atomic per request).
fn atomic_sandbox(backend: Backend, pipeline: &str) -> (Sandbox, Option<Proxy>) {
    let mut s = Sandbox::on(backend, pipeline);
    let proxy = (backend == Backend::S3).then(|| {
        let proxy = Proxy::start(&crate::common::s3::server().endpoint);
        proxy.faults.one_at_a_time.store(true, Ordering::SeqCst);
        s.endpoint = Some(proxy.endpoint.clone());
        proxy
    });
    (s, proxy)
}

/// Not deterministic on purpose: each run writes other random bytes of the same size, so a check by size alone
/// cannot tell two runs apart. Two outputs with a pause between them, so that racing runs interleave.
const NOISE: &str = r#"
[steps.noise]
kind = "command"
run = "head -c 65536 /dev/urandom > {out_dir}/{shard}.a; sleep 0.$((RANDOM % 3)); head -c 65536 /dev/urandom > {out_dir}/{shard}.b"
outputs = ["{shard}.a", "{shard}.b"]
"#;

/// Every manifest under the store's `_dsmake/` folders names objects whose blake3 is the one it records.
/// Returns how many manifests were checked.
fn assert_manifests_match_objects(s: &Sandbox) -> usize {
    let root = s.store();
    let mut checked = 0;
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != ".dsmake" {
                    stack.push(path);
                }
                continue;
            }
            let in_meta = dir.file_name().is_some_and(|d| d == "_dsmake");
            if !in_meta || !name.ends_with(".json") || name.starts_with(".dsmake-tmp-") {
                continue;
            }
            let manifest: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let step_dir = dir.parent().unwrap();
            for output in manifest["outputs"].as_array().unwrap() {
                let object = step_dir.join(output["name"].as_str().unwrap());
                let bytes = std::fs::read(&object).unwrap_or_else(|e| panic!("{}: {e}", object.display()));
                assert_eq!(
                    output["blake3"].as_str().unwrap(),
                    blake3::hash(&bytes).to_hex().to_string(),
                    "{} vouches for other bytes than {}",
                    path.display(),
                    object.display()
                );
                assert_eq!(output["size"], bytes.len());
            }
            checked += 1;
        }
    }
    checked
}

/// The job a build would hand its worker for `noise/all`, made from the manifest of a first build (which
/// records the key and its parts), so that several `dsmake worker` processes can build the same target at
/// once, as duplicate remote tasks (Spark speculation, a retried Databricks run) do. Builds themselves never
/// race: they hold the store's lock or lease.
fn job_for_noise(s: &Sandbox) -> Value {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(s.store().join("pipeline/noise/_dsmake/all.json")).unwrap()).unwrap();
    json!({
        "job_format": 1,
        "pipeline": "pipeline",
        "target": manifest["target"],
        "step": "noise",
        "shard": "all",
        "dir": "pipeline/noise",
        "key": manifest["key"],
        "key_parts": manifest["key_parts"],
        "inputs": [],
        "store": s.store_url(),
        "base_dir": s.dir.path(),
    })
}

fn racing_workers_never_leave_a_manifest_over_other_bytes(backend: Backend) {
    let (s, _proxy) = atomic_sandbox(backend, NOISE);
    s.build(&[]);
    s.write("job.json", &job_for_noise(&s).to_string());
    let mut mixed = 0;
    for _round in 0..5 {
        let workers: Vec<Child> = (0..4)
            .map(|_| s.command(&["worker", "job.json"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap())
            .collect();
        for worker in workers {
            let out = worker.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            // A worker either publishes (or adopts a manifest it checked), or finds its outputs mixed with or
            // replaced by another build's and says so, as a transient failure (exit 75); nothing else may go wrong.
            if !out.status.success() {
                assert!(
                    stderr.contains("outputs are mixed")
                        || stderr.contains("published over this one's outputs")
                        || stderr.contains("kept changing"),
                    "{stderr}"
                );
                assert_eq!(out.status.code(), Some(75), "{stderr}");
                mixed += 1;
            }
        }
        assert_manifests_match_objects(&s);
    }
    eprintln!("{mixed} workers found the outputs mixed");
    // Whatever the race left, the next build makes the target whole and every manifest matches its objects.
    s.build(&[]);
    assert_eq!(assert_manifests_match_objects(&s), 1);
    let left = crate::common::work(&s.plan(&[]));
    assert!(left.is_empty(), "{left:?}");
}

/// A deterministic step reading the noise: an input whose bytes change under its manifest (same size) is caught
/// by the worker that fetches it, by blake3, and the error names the file.
fn an_input_with_other_bytes_of_the_same_size_fails_naming_it(backend: Backend) {
    let s = Sandbox::on(backend, &copying_noise(""));
    s.build(&[]);
    let built_before = s.read_store("pipeline/copy/_dsmake/all.json");
    let job = job_reading_noise(&s);
    // Same size, other bytes, written by someone else.
    let mut bytes = std::fs::read(s.store().join("pipeline/noise/all.a")).unwrap();
    bytes[0] ^= 0xff;
    s.overwrite_in_store("pipeline/noise/all.a", &bytes);
    let changed = |stderr: &str| {
        stderr.contains("input file pipeline/noise/all.a of noise/all has blake3")
            && stderr.contains("it changed after its manifest was written")
    };

    // A worker handed a job planned before the change (a remote task, say) fetches the input and refuses it.
    s.write("job.json", &job.to_string());
    let worker: crate::common::Run = s.command(&["worker", "job.json"]).output().unwrap().into();
    assert_eq!(worker.code, 75, "a transient failure: {}", worker.stderr);
    assert!(changed(&worker.stderr), "{}", worker.stderr);
    assert_eq!(s.read_store("pipeline/copy/_dsmake/all.json"), built_before, "nothing was built from it");

    // A change to `copy` alone makes it stale, so a build reads `noise`'s outputs again. The plan calls `noise`
    // fresh: a local folder lists sizes (and times, which copies of a folder do not keep), and s3s-fs lists no
    // ETags (S3 and moto do, and their plans call `noise` stale: `s3_store::a_listing_with_another_etag_…`);
    // the worker that reads it refuses it.
    s.write("pipeline.toml", &copying_noise("; true"));
    let run = s.run(&["build", "--retries", "0"]);
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(changed(&run.stderr), "{}", run.stderr);
    assert_eq!(s.read_store("pipeline/copy/_dsmake/all.json"), built_before);
    if backend == Backend::S3 {
        // Each output's ETag, as the upload returned it, is in the manifest for plans to compare.
        let noise: Value = serde_json::from_str(&s.read_store("pipeline/noise/_dsmake/all.json")).unwrap();
        for output in noise["outputs"].as_array().unwrap() {
            assert!(output["version"].as_str().is_some_and(|v| v.len() > 2), "{output}");
        }
    }
}

/// An input replaced by a larger object (as anyone who can write to a shared bucket could): the worker that
/// fetches it refuses it by the size the server announces, or, where the server announces none, once more
/// bytes than its manifest records came; and names it.
#[test]
fn a_larger_input_is_refused_without_being_downloaded_whole() {
    let mut s = Sandbox::on(Backend::S3, &copying_noise(""));
    s.build(&[]);
    let job = job_reading_noise(&s);
    let recorded = std::fs::metadata(s.store().join("pipeline/noise/all.a")).unwrap().len();
    s.overwrite_in_store("pipeline/noise/all.a", &vec![b'x'; 1 << 20]);
    s.write("job.json", &job.to_string());
    let expected = format!(
        "input file pipeline/noise/all.a of noise/all is larger than the {recorded} bytes its manifest records: it \
         changed after its manifest was written"
    );
    let worker = |s: &Sandbox| -> crate::common::Run { s.command(&["worker", "job.json"]).output().unwrap().into() };
    let refused = worker(&s);
    assert!(refused.stderr.contains(&expected), "{}", refused.stderr);
    assert_eq!(refused.code, 75, "a transient failure, as for other bytes of the same size: {}", refused.stderr);

    let proxy = Proxy::start(&crate::common::s3::server().endpoint);
    s.endpoint = Some(proxy.endpoint.clone());
    proxy.faults.unsized_reads.store(1000, Ordering::SeqCst);
    let refused = worker(&s);
    assert!(refused.stderr.contains(&expected), "{}", refused.stderr);
    assert_eq!(refused.code, 75, "{}", refused.stderr);
    assert!(proxy.faults.injected.load(Ordering::SeqCst) >= 1, "the input was read without a Content-Length");
}

/// [`NOISE`] and a deterministic step `copy` that reads it, its command ending in `suffix`.
fn copying_noise(suffix: &str) -> String {
    format!(
        "{NOISE}\n[steps.copy]\nkind = \"command\"\nfrom = \"noise\"\nrun = \"cat {{inputs}} > {{output}}{suffix}\"\n\
         outputs = \"{{shard}}.copy\"\n"
    )
}

/// The job a build would hand its worker for `copy/all`, from the manifests of a first build.
fn job_reading_noise(s: &Sandbox) -> Value {
    let manifest = |step: &str| -> Value {
        serde_json::from_str(&s.read_store(&format!("pipeline/{step}/_dsmake/all.json"))).unwrap()
    };
    let (copy, noise) = (manifest("copy"), manifest("noise"));
    let outputs: Vec<Value> =
        noise["outputs"].as_array().unwrap().iter().map(|o| json!({ "name": o["name"], "size": o["size"] })).collect();
    json!({
        "job_format": 1,
        "pipeline": "pipeline",
        "target": "copy/all",
        "step": "copy",
        "shard": "all",
        "dir": "pipeline/copy",
        "key": copy["key"],
        "key_parts": copy["key_parts"],
        "inputs": [{
            "target": "noise/all",
            "shard": "all",
            "files": outputs.iter().map(|o| json!({ "store": format!("pipeline/noise/{}", o["name"].as_str().unwrap()) })).collect::<Vec<_>>(),
            "expect": { "manifest": "pipeline/noise/_dsmake/all.json", "key": noise["key"], "outputs": outputs },
        }],
        "store": s.store_url(),
        "base_dir": s.dir.path(),
    })
}

/// S3 only: a build whose lease is taken from it stops publishing, with a clear error, while the build that
/// took the lease over finishes; at the end every manifest matches its objects.
#[test]
fn a_build_that_loses_its_lease_stops_publishing() {
    const SLOW: &str = r#"
[steps.noise]
kind = "command"
run = "for i in $(seq 0 7); do sleep 0.5; head -c 4096 /dev/urandom > {out_dir}/$i.bin; done"
outputs = ["0.bin", "1.bin", "2.bin", "3.bin", "4.bin", "5.bin", "6.bin", "7.bin"]

[steps.more]
kind = "command"
from = "noise"
per = "shard"
run = "sleep 1; head -c 4096 /dev/urandom > {output}"
outputs = "{shard}.more"
"#;
    let mut s = Sandbox::on(Backend::S3, SLOW);
    // Renewed every second: the loss is noticed within the build.
    s.env.push(("DSMAKE_LEASE_SECONDS".into(), "3".into()));
    let a =
        s.command(&["build", "pipeline.toml", "-j", "1"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let leases = s.store().join(".dsmake/leases");
    let started = Instant::now();
    while std::fs::read_dir(&leases).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "the build took no lease");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Taken from it, as an operator's clean-up or a clock jump past expiry would: removed from the bucket.
    std::thread::sleep(Duration::from_millis(500));
    for lease in std::fs::read_dir(&leases).unwrap().flatten() {
        std::fs::remove_file(lease.path()).unwrap();
    }
    let b =
        s.command(&["build", "pipeline.toml", "-j", "1"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let (a_err, b_err) = (String::from_utf8_lossy(&a.stderr), String::from_utf8_lossy(&b.stderr));
    assert!(b.status.success(), "{b_err}");
    assert!(!a.status.success(), "the build without its lease went on publishing: {a_err}");
    assert!(a_err.contains("lost its build lease"), "{a_err}");
    assert_manifests_match_objects(&s);
}
