//! The six original jobs as `pipelines/relaion-pop.toml`, `relaion-art.toml` and `relaion400m.toml`, planned
//! against the Hub stand-in serving their dataset (one small parquet file) and their models' repos (placeholder
//! bytes: a plan reads listings, not weights): online, the plan pins the dataset and every model; offline, it
//! says from the saved listings what it would fetch. Variants that share a dataset and image size share one
//! image step; every job's embeddings and index have their own folder. relaion400m trains and encodes its
//! IVF-PQ index as targets of their own.

use crate::common::{Sandbox, hub_mock, parquet_rows};
use hub_mock::HubMock;
use serde_json::Value;
use std::collections::BTreeSet;

fn recipe(file: &str) -> String {
    format!("{}/pipelines/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// The model repos a recipe names, with the files the plan pins from each.
fn serve_models(hub: &HubMock, models: &[(&str, &[&str])]) -> Vec<String> {
    models
        .iter()
        .map(|(repo, files)| {
            let changes: Vec<(&str, Option<Vec<u8>>)> =
                files.iter().map(|f| (*f, Some(format!("{repo}/{f}").into_bytes()))).collect();
            hub.commit_model(repo, &changes)
        })
        .collect()
}

const HF_CLIP: &[&str] = &["config.json", "tokenizer.json", "model.safetensors"];

fn plan(s: &Sandbox, file: &str, offline: bool) -> (i32, Value, String) {
    let mut cmd = s.command(&["plan", &recipe(file), "--format", "json"]);
    if offline {
        cmd.env("HF_HUB_OFFLINE", "1");
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), json, stderr)
}

fn step<'a>(plan: &'a Value, name: &str) -> &'a Value {
    plan["steps"].as_array().unwrap().iter().find(|s| s["step"] == name).unwrap_or_else(|| panic!("no {name}: {plan}"))
}

/// Online: pinned; the metadata built (so image shards are known); offline: the same plan from the saved
/// listings, saying so, with the files it would fetch.
fn check(file: &str, dataset: &str, models: &[(&str, &[&str])], embed_steps: &[&str]) {
    let hub = HubMock::start(dataset);
    let rows: Vec<_> =
        (0..3).map(|i| parquet_rows::row("http://127.0.0.1:9/a.jpg", if i == 0 { "a" } else { "b" })).collect();
    hub.commit(&[("data/part-0.parquet", Some(parquet_rows::urls_parquet(&rows)))]);
    let commits = serve_models(&hub, models);
    let mut s = Sandbox::new("");
    s.env.push(("HF_ENDPOINT".into(), hub.endpoint()));

    let run = s.command(&["build", &recipe(file), "--target", "metadata"]).output().unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.stderr));
    let (code, online, stderr) = plan(&s, file, false);
    assert_eq!(code, 0, "{stderr}");
    for ((repo, _), commit) in models.iter().zip(&commits) {
        assert!(stderr.contains(&format!("{repo}@main → commit {commit}")), "{file}: {stderr}");
    }
    assert!(
        stderr.contains("ignore_ssl_certificate = true: image hosts' TLS certificates are not verified"),
        "{stderr}"
    );

    hub.server.clear();
    let (code, offline, stderr) = plan(&s, file, true);
    assert_eq!(code, 0, "{stderr}");
    assert!(hub.requests().is_empty(), "an offline plan asks nothing");
    assert!(stderr.contains(&format!("offline (HF_HUB_OFFLINE): using the listing of {dataset}@main")), "{stderr}");
    for (repo, _) in models {
        assert!(stderr.contains(&format!("offline (HF_HUB_OFFLINE): using the listing of {repo}@main")), "{stderr}");
    }
    assert_eq!(offline["targets"], online["targets"], "offline, the same targets and keys");
    // What it would fetch: the images of the metadata's rows, then the embeddings with the pinned weights.
    let targets: Vec<(String, String)> = offline["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["target"].as_str().unwrap().to_string(), t["action"].as_str().unwrap().to_string()))
        .collect();
    assert!(targets.contains(&("metadata/data/part-0.parquet".into(), "fresh".into())), "{targets:?}");
    for embed in embed_steps {
        assert!(
            targets.iter().any(|(t, a)| t.starts_with(&format!("{embed}/")) && a == "blocked"),
            "{embed}: {targets:?}"
        );
        // An index trained as its own target (knn-train) takes its key from the vector count, which the plan
        // knows once the first embeddings part is built, and says so; an index alone is one target known now.
        let trained = offline["steps"].as_array().unwrap().iter().any(|s| s["step"] == format!("{embed}-train"));
        let index_waits = if trained {
            let train = &step(&offline, &format!("{embed}-train"))["unknown"];
            assert_eq!(train, &format!("the vector count is known once {embed}/00000 is built"), "{offline}");
            Value::from(format!("waits for the shards of {embed}-train"))
        } else {
            Value::Null
        };
        assert_eq!(step(&offline, &format!("{embed}-index"))["unknown"], index_waits, "{offline}");
    }
    // Every step writes its own folder.
    let dirs: Vec<&str> = offline["steps"].as_array().unwrap().iter().map(|s| s["dir"].as_str().unwrap()).collect();
    assert_eq!(dirs.iter().collect::<BTreeSet<_>>().len(), dirs.len(), "{dirs:?}");
}

#[test]
fn relaion_pop_plans_three_jobs_over_two_image_steps() {
    check(
        "relaion-pop.toml",
        "laion/relaion-pop",
        &[
            ("openai/clip-vit-large-patch14-336", HF_CLIP),
            ("UCSC-VLAA/ViT-H-14-CLIPA-336-laion2B", &["open_clip_config.json", "open_clip_pytorch_model.bin"]),
            ("bert-base-uncased", &["tokenizer.json", "tokenizer_config.json", "vocab.txt"]),
            ("openai/clip-vit-large-patch14", HF_CLIP),
        ],
        &["vit-l-336", "vit-h-336", "vit-l-224"],
    );
}

#[test]
fn relaion_art_plans_two_jobs_over_one_image_step() {
    check(
        "relaion-art.toml",
        "laion/relaion-art",
        &[
            ("openai/clip-vit-large-patch14", HF_CLIP),
            (
                "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
                &[
                    "open_clip_config.json",
                    "open_clip_model.safetensors",
                    "open_clip_pytorch_model.bin",
                    "tokenizer.json",
                ],
            ),
        ],
        &["vit-l", "vit-h"],
    );
}

#[test]
fn relaion400m_plans_its_job() {
    check("relaion400m.toml", "laion/relaion400m", &[("openai/clip-vit-large-patch14", HF_CLIP)], &["vit-l"]);
}
