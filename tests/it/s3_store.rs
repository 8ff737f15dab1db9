//! The S3 store against real S3-compatible servers (s3s-fs; moto where ETags must be listed), with a
//! fault-injecting proxy in front of it: throttling, cut connections and kills never leave a half-written
//! object or manifest visible.

use crate::common::proxy::Proxy;
use crate::common::{self, Backend, Sandbox, built, s3, work};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const SHARDS: usize = 6;

/// Outputs of 64 KiB, so that an upload can be cut in the middle of its body.
const PIPELINE: &str = r#"
[steps.raw]
kind = "files"
paths = "data/*.txt"

[steps.big]
kind = "command"
from = "raw"
run = "awk -v line=\"$(cat {input})\" 'BEGIN { for (i = 0; i < 4096; i++) print line }' > {output}"
outputs = "{stem}.bin"
"#;

fn sandbox() -> Sandbox {
    let s = Sandbox::on(Backend::S3, PIPELINE);
    for i in 0..SHARDS {
        s.write(&format!("data/{i}.txt"), &format!("row {i:011}\n"));
    }
    s
}

fn assert_outputs_complete(s: &Sandbox) {
    for i in 0..SHARDS {
        let expected = format!("row {i:011}\n").repeat(4096);
        assert_eq!(s.read_store(&format!("pipeline/big/{i}.bin")), expected, "big/{i}.bin");
    }
}

#[test]
fn builds_through_slowdowns_and_cut_connections() {
    let mut s = sandbox();
    let proxy = Proxy::start(&s3::server().endpoint);
    s.endpoint = Some(proxy.endpoint.clone());
    proxy.faults.slowdowns.store(3, Ordering::SeqCst);
    proxy.faults.cut_uploads.store(3, Ordering::SeqCst);
    proxy.faults.cut_listings.store(2, Ordering::SeqCst);

    let summary = s.build(&["-j", "2"]);
    assert_eq!(summary["built"], SHARDS);
    assert_eq!(proxy.faults.injected.load(Ordering::SeqCst), 8, "every planned fault was hit");
    assert_outputs_complete(&s);

    proxy.faults.cut_listings.store(1, Ordering::SeqCst);
    proxy.faults.slowdowns.store(2, Ordering::SeqCst);
    let plan = s.plan(&[]);
    assert!(work(&plan).is_empty(), "{plan}");
    assert!(proxy.faults.injected.load(Ordering::SeqCst) >= 10);
}

/// A manifest over its bound from a server that does not say how large it is (no `Content-Length`): refused
/// as its bytes pass the bound, named in the plan, and replaced by the next build.
#[test]
fn an_oversized_manifest_of_unannounced_size_is_refused_as_it_is_read() {
    let mut s = sandbox();
    s.build(&[]);
    let manifest = "pipeline/big/_dsmake/0.txt.json";
    s.overwrite_in_store(manifest, &vec![b' '; (16 << 20) + 1]);
    let proxy = Proxy::start(&s3::server().endpoint);
    s.endpoint = Some(proxy.endpoint.clone());
    proxy.faults.unsized_reads.store(1000, Ordering::SeqCst);
    let why = format!(
        "manifest unreadable ({}/{manifest} is over 16777216 bytes, more than a manifest may be (16777216 bytes at \
         most): dsmake did not write it as it is now; its target counts as missing, and a build replaces it)",
        s.store_url()
    );
    assert_eq!(work(&s.plan(&[])), [("big/0.txt".to_string(), "missing".to_string(), why)]);
    assert!(proxy.faults.injected.load(Ordering::SeqCst) >= 1, "a read without a Content-Length was made");
    assert_eq!(built(&s.build(&[])), ["big/0.txt"]);
    assert!(work(&s.plan(&[])).is_empty());
    assert_outputs_complete(&s);
}

#[test]
fn plans_with_listings_not_a_request_per_target() {
    let s = sandbox();
    s.build(&[]);
    s.build(&[]); // folds the manifests into each step's index
    let plan = s.plan(&[]);
    assert!(work(&plan).is_empty());
    // One listing of the step folder and one read of its index: not 2 × SHARDS.
    assert_eq!(plan["stats"]["store_requests"], 2, "{}", plan["stats"]);
    assert_eq!(plan["stats"]["manifests_read"], 0);
}

/// Forty one-line targets (common::COPIES): 81 objects in the step folder, listed in pages of 5.

#[test]
fn lists_in_parallel_ranges_exactly_what_one_listing_finds() {
    let mut s = Sandbox::on(Backend::S3, common::COPIES);
    for i in 0..40 {
        s.write(&format!("data/{i:03}.txt"), &format!("row {i}\n"));
    }
    s.env.push(("DSMAKE_S3_LIST_PAGE".into(), "5".into()));
    assert_eq!(s.build(&[])["built"], 40);
    s.build(&[]); // the index, whose records give the split points
    // Objects the index does not know of, before the first cut, among the cuts, on a page's edge and after
    // the last: a range listing must find them as the single listing does.
    let folder = s.store().join("pipeline/copy");
    for stray in ["!first", "004.txt-", "017-x", "017.txt.0", "033.txt~", "_dsmake/zz", "~last"] {
        std::fs::write(folder.join(stray), stray).unwrap();
    }
    let objects: u64 = 40 + 40 + 1 + 7;

    let plan_with = |s: &mut Sandbox, concurrency: &str| {
        s.env.push(("DSMAKE_S3_LIST_CONCURRENCY".into(), concurrency.into()));
        let plan = s.plan(&[]);
        s.env.pop();
        assert!(work(&plan).is_empty(), "{plan}");
        plan["stats"].clone()
    };
    let sequential = plan_with(&mut s, "1");
    assert_eq!(sequential["objects_listed"], objects, "{sequential}");
    // The index, then one page after another.
    assert_eq!(sequential["store_requests"], 1 + objects.div_ceil(5), "{sequential}");
    let parallel = plan_with(&mut s, "4");
    assert_eq!(parallel["objects_listed"], objects, "every object once: {parallel}");
    assert_eq!(parallel["manifests_read"], 0);

    // Through slowdowns and cut listings: retried page by page, the same objects.
    let proxy = Proxy::start(&s3::server().endpoint);
    s.endpoint = Some(proxy.endpoint.clone());
    proxy.faults.slowdowns.store(6, Ordering::SeqCst);
    proxy.faults.cut_listings.store(3, Ordering::SeqCst);
    let throttled = plan_with(&mut s, "4");
    assert_eq!(proxy.faults.injected.load(Ordering::SeqCst), 9, "every planned fault was hit");
    assert_eq!(throttled["objects_listed"], objects, "{throttled}");
    let listings = proxy.requests.lock().unwrap().iter().filter(|r| r.contains("list-type=2")).count();
    let starts = proxy.requests.lock().unwrap().iter().filter(|r| r.contains("start-after=")).count();
    assert!(starts >= 10, "listed in ranges: {starts} of {listings} listings start after a cut");
}

/// A target whose single output is 40 MiB: a multipart upload.
const MULTIPART: &str = r#"
[steps.big]
kind = "command"
run = "head -c 41943040 /dev/zero | tr '\\0' 'x' > {output}"
outputs = "big.bin"
"#;

#[test]
fn a_build_killed_during_a_multipart_upload_leaves_no_visible_object() {
    let mut s = Sandbox::on(Backend::S3, MULTIPART);
    // The killed build cannot release its lease: a short one lets the next build take it over quickly.
    s.env.push(("DSMAKE_LEASE_SECONDS".into(), "2".into()));
    let proxy = Proxy::start(&s3::server().endpoint);
    s.endpoint = Some(proxy.endpoint.clone());
    proxy.faults.bytes_per_second.store(8 * 1024 * 1024, Ordering::SeqCst);

    let mut child = s.command(&["build", "pipeline.toml"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    while !proxy.saw("partNumber=") {
        assert!(started.elapsed() < Duration::from_secs(60), "no multipart upload started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(proxy.saw("?uploads"), "the upload was a multipart upload");
    assert!(
        !proxy.saw("uploadId=")
            || !proxy.requests.lock().unwrap().iter().any(|r| r.starts_with("POST") && r.contains("uploadId=")),
        "the upload was not completed"
    );

    assert!(!s.store().join("pipeline/big/big.bin").exists(), "no object appears from an unfinished upload");
    assert!(!s.store().join("pipeline/big/_dsmake/all.json").exists());
    let plan = s.plan(&[]);
    assert_eq!(plan["targets"][0]["action"], "missing");

    // gc works under the builds' lease: the killed build's lease is taken over once it expires. A note no
    // upload of ours wrote (over the 64 KiB a note may be) is passed over.
    s.overwrite_in_store(".dsmake/uploads/stranger.json", &vec![b' '; (64 << 10) + 1]);
    let gc = s.run(&["gc", "--uploads", "--older-than", "0"]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    assert!(gc.stdout.contains("aborted upload pipeline/big/big.bin"), "{}\n{}", gc.stdout, gc.stderr);
    assert!(gc.stderr.contains("Took over the expired build lease"), "{}", gc.stderr);

    s.endpoint = Some(s3::server().endpoint.clone());
    let run = s.run(&["build", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(built(&run.json()), vec!["big/all".to_string()]);
    assert_eq!(std::fs::metadata(s.store().join("pipeline/big/big.bin")).unwrap().len(), 41_943_040);
}

#[test]
fn two_concurrent_builds_build_every_target_once() {
    let s = sandbox();
    let spawn = || {
        s.command(&["build", "pipeline.toml", "--format", "json", "-j", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The second build starts once the first holds the build lease. (s3s-fs checks `If-None-Match` and then
    // writes, so two conditional puts in the same instant can both succeed there; S3 itself is atomic.)
    let a = spawn();
    let lease = s.store().join(".dsmake/leases/pipeline.json");
    let started = Instant::now();
    while !lease.exists() {
        assert!(started.elapsed() < Duration::from_secs(30), "the first build took no lease");
        std::thread::sleep(Duration::from_millis(5));
    }
    let b = spawn();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(
        a.status.success() && b.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    let summary = |out: &std::process::Output| -> serde_json::Value { serde_json::from_slice(&out.stdout).unwrap() };
    let mut all = built(&summary(&a));
    all.extend(built(&summary(&b)));
    all.sort();
    let expected: Vec<String> = (0..SHARDS).map(|i| format!("big/{i}.txt")).collect();
    assert_eq!(all, expected, "each target built by exactly one of the two builds");
    assert_outputs_complete(&s);
}

#[test]
fn a_remote_file_names_the_store_and_a_bad_one_says_where() {
    let s = sandbox();
    let (bucket_url, endpoint) = (s.store_url(), s3::server().endpoint.clone());
    s.write(
        "remotes/test.toml",
        &format!("description = \"test bucket\"\n[store]\nurl = \"{bucket_url}\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\n"),
    );
    let mut cmd = s.command(&["build", "pipeline.toml", "--remote", "test", "--format", "json"]);
    cmd.env_remove("DSMAKE_STORE").env_remove("AWS_ENDPOINT_URL");
    let run: common::Run = cmd.output().unwrap().into();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["built"], SHARDS);
    assert!(s.store().join("pipeline/big/0.bin").exists());

    s.write("remotes/bad.toml", "[store]\nurl = \"s3://x-bucket\"\nendpont = \"http://x\"\n");
    let mut cmd = s.command(&["plan", "pipeline.toml", "--remote", "bad"]);
    cmd.env_remove("DSMAKE_STORE");
    let run: common::Run = cmd.output().unwrap().into();
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("unknown field `endpont`"), "{}", run.stderr);
    assert!(run.stderr.contains("remotes/bad.toml:3:1"), "{}", run.stderr);

    let mut cmd = s.command(&["plan", "pipeline.toml", "--remote", "tset"]);
    cmd.env_remove("DSMAKE_STORE");
    let run: common::Run = cmd.output().unwrap().into();
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("no remote `tset` (did you mean `test`?)"), "{}", run.stderr);
}

#[test]
fn wrong_credentials_are_named_and_nothing_is_built() {
    let s = sandbox();
    let mut cmd = s.command(&["build", "pipeline.toml"]);
    cmd.env("AWS_SECRET_ACCESS_KEY", "wrong");
    let run: common::Run = cmd.output().unwrap().into();
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("HTTP 403"), "{}", run.stderr);
    assert!(run.stderr.contains("check the credentials"), "{}", run.stderr);
}

#[test]
fn a_pipeline_moves_from_a_local_store_to_s3_and_back_without_rebuilding() {
    let s3 = sandbox();
    let local = s3.path("local-store").display().to_string();
    let mut build: common::Run =
        s3.command(&["build", "pipeline.toml", "--store", &local, "--format", "json"]).output().unwrap().into();
    assert_eq!(build.code, 0, "{}", build.stderr);
    assert_eq!(build.json()["built"], SHARDS);

    let copy: common::Run =
        s3.command(&["copy", "pipeline.toml", "--store", &local, "--to", &s3.store_url()]).output().unwrap().into();
    assert_eq!(copy.code, 0, "{}", copy.stderr);
    assert!(copy.stderr.contains(&format!("Copied {SHARDS} targets")), "{}", copy.stderr);
    assert!(work(&s3.plan(&[])).is_empty(), "everything is fresh in the bucket");
    assert_outputs_complete(&s3);
    let status = s3.run(&["status", "--format", "json"]).json();
    assert_eq!(status["steps"][1]["bytes"], SHARDS as u64 * 16 * 4096, "sizes come from the bucket");

    // And back, into a second local folder.
    let back = s3.path("back").display().to_string();
    let copy: common::Run = s3.command(&["copy", "pipeline.toml", "--to", &back]).output().unwrap().into();
    assert_eq!(copy.code, 0, "{}", copy.stderr);
    build = s3.command(&["build", "pipeline.toml", "--store", &back, "--format", "json"]).output().unwrap().into();
    assert_eq!(build.json()["built"], 0);
    assert_eq!(build.json()["fresh"], SHARDS);
}

/// On a server that lists ETags (moto's, as S3 does), an output rewritten with other bytes of the same size is
/// stale in the next plan, naming the output and the version its manifest recorded; the build that follows
/// rebuilds that target alone (keys follow input keys, so `copy` keeps its key), and the plan after it is all
/// fresh.
#[test]
fn a_listing_with_another_etag_makes_the_output_stale() {
    let pipeline = r#"
[steps.noise]
kind = "command"
run = "head -c 4096 /dev/urandom > {out_dir}/a.bin; head -c 4096 /dev/urandom > {out_dir}/b.bin"
outputs = ["a.bin", "b.bin"]

[steps.copy]
kind = "command"
from = "noise"
run = "cat {inputs} > {output}"
outputs = "{shard}.copy"
"#;
    let s = Sandbox::on(Backend::Moto, pipeline);
    assert_eq!(built(&s.build(&[])), ["copy/all", "noise/all"]);
    assert_eq!(work(&s.plan(&[])), Vec::<(String, String, String)>::new(), "a second plan finds all fresh");

    // Same size, other bytes, put by another writer: only the listing's ETag tells.
    s.overwrite_in_store("pipeline/noise/a.bin", &[7u8; 4096]);
    let plan = s.plan(&[]);
    let stale = work(&plan);
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert_eq!((stale[0].0.as_str(), stale[0].1.as_str()), ("noise/all", "stale"));
    assert!(
        stale[0]
            .2
            .starts_with("output a.bin was rewritten since its manifest (the store no longer lists it as version \""),
        "{}",
        stale[0].2
    );

    assert_eq!(built(&s.build(&[])), ["noise/all"]);
    assert_eq!(work(&s.plan(&[])), Vec::<(String, String, String)>::new(), "fresh after the rebuild");
}
