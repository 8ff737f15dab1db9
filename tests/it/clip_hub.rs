//! clip-embed's weights as inputs of the DAG, against the Hub stand-in (`common::hub_mock`) serving the tiny CLIP
//! (`tests/fixtures/clip-golden/tiny-clip`) as a model repo: the plan pins `repo@revision` to a commit and each
//! file's sha256, which go into the keys; workers fetch the weights themselves (resumed, verified) into an empty
//! cache; a moved revision is stale with its reason, a pinned one is not; offline plans use the saved listing; a
//! wrong token is a clear error; Spark workers that start with an empty cache fetch the weights themselves.

use crate::common::{Backend, Sandbox, built, hub_mock, work};
use hub_mock::HubMock;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const REPO: &str = "test/tiny-clip";

fn pipeline(extra: &str) -> String {
    format!(
        "[steps.shards]\nkind = \"files\"\npaths = \"wds/*.tar\"\n\n[steps.clip]\nkind = \"clip-embed\"\nfrom = \
         \"shards\"\nmodel = \"hf_clip:{REPO}\"\ndevice = \"cpu\"\nbatch_size = 2\n{extra}"
    )
}

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-golden").join(rel)
}

fn model_file(name: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("tiny-clip/{name}"))).unwrap()
}

/// A Hub with the tiny CLIP at one commit (and a README); returns the hub and the commit.
fn hub_with_model() -> (HubMock, String) {
    let hub = HubMock::start("laion/unused");
    let mut files: Vec<(&str, Option<Vec<u8>>)> =
        ["config.json", "tokenizer.json", "model.safetensors"].iter().map(|f| (*f, Some(model_file(f)))).collect();
    files.push(("README.md", Some(b"# tiny".to_vec())));
    let commit = hub.commit_model(REPO, &files);
    (hub, commit)
}

/// A WebDataset shard of two fixture photos with captions.
pub fn write_shard(s: &Sandbox, name: &str, photos: &[(&str, &str)]) {
    let path = s.path(&format!("wds/{name}"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut tar = tar::Builder::new(std::fs::File::create(&path).unwrap());
    for (i, (photo, caption)) in photos.iter().enumerate() {
        let key = format!("{}{i:04}", name.trim_end_matches(".tar"));
        let ext = photo.rsplit('.').next().unwrap();
        let members = [
            (format!("{key}.{ext}"), std::fs::read(fixture(&format!("images/{photo}"))).unwrap()),
            (format!("{key}.txt"), caption.as_bytes().to_vec()),
            (format!("{key}.json"), json!({ "url": format!("http://h/{key}") }).to_string().into_bytes()),
        ];
        for (member, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, member, data.as_slice()).unwrap();
        }
    }
    tar.finish().unwrap();
    drop(tar);
    let past = SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(past).unwrap();
}

fn sandbox_on(backend: Backend, hub: &HubMock, extra: &str) -> Sandbox {
    let mut s = Sandbox::on(backend, &pipeline(extra));
    s.env.push(("HF_ENDPOINT".into(), hub.endpoint()));
    s.env.push(("HF_TOKEN".into(), "hf_model_token".into()));
    write_shard(&s, "00000.tar", &[("astronaut.png", "an astronaut"), ("coffee.jpg", "a cup of coffee")]);
    write_shard(&s, "00001.tar", &[("chelsea.png", "a cat")]);
    s
}

fn downloads(hub: &HubMock) -> Vec<(String, Option<String>)> {
    hub.requests()
        .iter()
        .filter(|r| r.path().contains("/resolve/"))
        .map(|r| (r.path().rsplit('/').next().unwrap().to_string(), r.header("Range").map(str::to_string)))
        .collect()
}

fn manifest(s: &Sandbox, shard: &str) -> Value {
    serde_json::from_str(&s.read_store(&format!("pipeline/clip/_dsmake/{shard}.json"))).unwrap()
}

/// Blobs the worker cache holds under `cache`.
fn blobs(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache.join("clip-embed/blobs"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.retain(|n| !n.contains('.'));
    names.sort();
    names
}

#[test]
fn the_plan_pins_the_model_and_workers_fetch_it_verified_into_an_empty_cache() {
    let (hub, commit) = hub_with_model();
    hub.state.lock().unwrap().token = Some("hf_model_token".into());
    let s = sandbox_on(Backend::Local, &hub, "");
    let plan = s.run(&["plan"]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(plan.stderr.contains(&format!("clip-embed `clip`: {REPO}@main → commit {commit}")), "{}", plan.stderr);
    assert!(downloads(&hub).is_empty(), "planning a Hugging Face-format model downloads nothing");

    let summary = s.build(&[]);
    assert_eq!(built(&summary), ["clip/00000", "clip/00001"]);
    // Each file once, though two parts use it; every request carried the token.
    let mut fetched: Vec<String> = downloads(&hub).into_iter().map(|(f, _)| f).collect();
    fetched.sort();
    assert_eq!(fetched, ["config.json", "model.safetensors", "tokenizer.json"]);
    assert!(hub.requests().iter().all(|r| r.header("Authorization") == Some("Bearer hf_model_token")));
    let weights = model_file("model.safetensors");
    let m = manifest(&s, "00000");
    let files = m["key_parts"]["coords"]["model"]["files"].as_array().cloned().unwrap_or_default();
    let safetensors = files.iter().find(|f| f["name"] == "model.safetensors").expect("the key names the weights");
    assert_eq!(safetensors["oid"], hub_mock::sha256(&weights).as_str(), "{m}");
    assert_eq!(safetensors["commit"], commit.as_str());
    assert_eq!(m["rows"], 2);
    assert!(!s.read_store("pipeline/clip/_dsmake/00000.json").contains("hf_model_token"));
    assert!(blobs(&s.path("cache")).contains(&hub_mock::sha256(&weights)));

    // The same embeddings as the same model read from a local folder.
    let local = Sandbox::new(&pipeline("").replace(&format!("model = \"hf_clip:{REPO}\""), "model_path = \"m\""));
    std::fs::create_dir_all(local.path("m")).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::write(local.path(&format!("m/{f}")), model_file(f)).unwrap();
    }
    write_shard(&local, "00000.tar", &[("astronaut.png", "an astronaut"), ("coffee.jpg", "a cup of coffee")]);
    write_shard(&local, "00001.tar", &[("chelsea.png", "a cat")]);
    local.build(&[]);
    for f in ["img_emb/img_emb_00000.npy", "text_emb/text_emb_00001.npy"] {
        let a = std::fs::read(s.store().join("pipeline/clip").join(f)).unwrap();
        assert_eq!(a, std::fs::read(local.store().join("pipeline/clip").join(f)).unwrap(), "{f}");
    }

    // Unchanged: fresh, nothing fetched.
    hub.server.clear();
    assert!(work(&s.plan(&[])).is_empty());
    assert!(downloads(&hub).is_empty());
}

#[test]
fn a_moved_revision_is_stale_with_its_reason_and_a_pinned_revision_is_not() {
    let (hub, c1) = hub_with_model();
    let s = sandbox_on(Backend::Local, &hub, "");
    s.build(&[]);
    let pinned = sandbox_on(Backend::Local, &hub, &format!("model_revision = \"{c1}\"\n"));
    pinned.build(&[]);

    // A commit that changes no file the model uses: still fresh.
    let c2 = hub.commit_model(REPO, &[("README.md", Some(b"# tiny, documented".to_vec()))]);
    let run = s.run(&["plan", "--format", "json"]);
    assert!(run.stderr.contains(&format!("@main → commit {c2}")), "{}", run.stderr);
    assert!(work(&run.json()).is_empty(), "{}", run.stdout);

    // New weights on main: every part is stale, and the reason names the model.
    let mut weights = model_file("model.safetensors");
    let last = weights.len() - 1;
    weights[last] ^= 1;
    let c3 = hub.commit_model(REPO, &[("model.safetensors", Some(weights.clone()))]);
    let todo = work(&s.plan(&[]));
    assert_eq!(todo.len(), 2, "{todo:?}");
    for (target, action, reason) in &todo {
        assert!(target.starts_with("clip/") && action == "stale", "{todo:?}");
        assert!(reason.contains("model") && reason.contains(&hub_mock::sha256(&weights)), "{reason}");
    }
    // Pinned to the first commit: nothing moved for it.
    let run = pinned.run(&["plan", "--format", "json"]);
    assert!(run.stderr.contains(&format!("@{c1} → commit {c1}")), "{}", run.stderr);
    assert!(work(&run.json()).is_empty());
    assert_ne!(c1, c3);
}

#[test]
fn offline_plans_use_the_saved_listing_and_workers_only_the_cache() {
    let (hub, commit) = hub_with_model();
    let mut s = sandbox_on(Backend::Local, &hub, "");
    s.env.push(("HF_HUB_OFFLINE".into(), "1".into()));
    // Nothing saved: the step is unavailable, and says why.
    let run = s.run(&["plan", "--format", "json"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    let plan = run.json();
    let clip = plan["steps"].as_array().unwrap().iter().find(|st| st["step"] == "clip").cloned().unwrap_or_default();
    let why = clip["unknown"].as_str().unwrap_or_default();
    assert!(
        why.contains(&format!("HF_HUB_OFFLINE is set and no earlier listing of model `{REPO}` at `main`")),
        "{plan}"
    );

    // An online plan saves the listing; offline, a build uses it and says so, but cannot fetch.
    s.env.retain(|(k, _)| k != "HF_HUB_OFFLINE");
    s.plan(&[]);
    s.env.push(("HF_HUB_OFFLINE".into(), "1".into()));
    hub.server.clear();
    let run = s.run(&["build", "--target", "clip/00001"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(&format!("offline (HF_HUB_OFFLINE): using the listing of {REPO}@main")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&commit), "{}", run.stderr);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains("HF_HUB_OFFLINE is set and config.json of model `test/tiny-clip`"), "{all}");
    assert!(all.contains("is not in this machine's cache"), "{all}");
    assert!(hub.requests().is_empty(), "offline sends nothing");

    // Online once, then offline with the cache filled: builds without the Hub.
    s.env.retain(|(k, _)| k != "HF_HUB_OFFLINE");
    s.build(&["--target", "clip/00000"]);
    s.env.push(("HF_HUB_OFFLINE".into(), "1".into()));
    hub.server.clear();
    let summary = s.build(&[]);
    assert_eq!(built(&summary), ["clip/00001"]);
    assert!(hub.requests().is_empty());
}

#[test]
fn a_cut_weights_download_resumes_with_a_range_request() {
    let (hub, _) = hub_with_model();
    hub.state.lock().unwrap().cut_once = Some(("model.safetensors".into(), 5000));
    let s = sandbox_on(Backend::Local, &hub, "");
    s.build(&[]);
    let ranges: Vec<Option<String>> =
        downloads(&hub).into_iter().filter(|(f, _)| f == "model.safetensors").map(|(_, r)| r).collect();
    assert_eq!(ranges, [None, Some("bytes=5000-".to_string())]);
    // The whole model once: the part of the weights that arrived before the cut is not fetched again.
    let all: usize = ["config.json", "tokenizer.json", "model.safetensors"].iter().map(|f| model_file(f).len()).sum();
    let fetched: u64 =
        ["00000", "00001"].iter().map(|p| manifest(&s, p)["stats"]["model_bytes_fetched"].as_u64().unwrap()).sum();
    assert_eq!(fetched, all as u64);
}

#[test]
fn a_corrupt_weights_download_fails_the_part_and_a_wrong_token_is_a_clear_error() {
    let (hub, _) = hub_with_model();
    hub.state.lock().unwrap().corrupt.push("model.safetensors".into());
    let s = sandbox_on(Backend::Local, &hub, "");
    let run = s.run(&["build", "--target", "clip/00001"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains(&format!("sha256 mismatch for model.safetensors of model `{REPO}`")), "{all}");
    assert!(!s.store().join("pipeline/clip/img_emb/img_emb_00001.npy").exists());

    let (hub, _) = hub_with_model();
    hub.state.lock().unwrap().token = Some("good".into());
    let mut s = sandbox_on(Backend::Local, &hub, "");
    s.env.retain(|(k, _)| k != "HF_TOKEN");
    s.env.push(("HF_TOKEN".into(), "expired".into()));
    let run = s.run(&["plan"]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains(&format!("the Hub refused HF_TOKEN for model `{REPO}` (401): the token is invalid or expired")),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("expired\""), "the token is never printed: {}", run.stderr);
    let bad = Sandbox::new(&pipeline("").replace(REPO, "test/tinny-clip"));
    let mut bad = bad;
    bad.env.push(("HF_ENDPOINT".into(), hub.endpoint()));
    bad.env.push(("HF_TOKEN".into(), "good".into()));
    write_shard(&bad, "00000.tar", &[("astronaut.png", "an astronaut")]);
    let run = bad.run(&["plan"]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("there is no model `test/tinny-clip` on the Hub (404): check `model`"),
        "{}",
        run.stderr
    );
}

#[test]
fn spark_workers_that_start_with_an_empty_cache_fetch_the_weights_themselves() {
    let (hub, _) = hub_with_model();
    let s = sandbox_on(Backend::S3, &hub, "");
    let worker_cache = s.path("worker-cache");
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin");
    let remote = std::fs::read_to_string(format!("{}/remotes/spark-local.toml", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .replace("python = \"../.venv/bin/python\"", &format!("python = \"{}\"", venv.join("python").display()))
        + &format!(
            "\n[executor.env]\nDSMAKE_CACHE_DIR = \"{}\"\nHF_ENDPOINT = \"{}\"\nHF_TOKEN = \"hf_model_token\"\n",
            worker_cache.display(),
            hub.endpoint()
        );
    s.write("remotes/hub.toml", &remote);
    let run = s.run(&["build", "--remote", s.path("remotes/hub.toml").to_str().unwrap(), "--format", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(built(&run.json()), ["clip/00000", "clip/00001"]);
    // The planner fetched nothing; the workers filled their own cache, verified.
    assert!(blobs(&s.path("cache")).is_empty());
    assert!(blobs(&worker_cache).contains(&hub_mock::sha256(&model_file("model.safetensors"))));
    assert!(s.store().join("pipeline/clip/img_emb/img_emb_00001.npy").is_file());
}

/// A model repo as the Hub stand-in serves it: its name and its files (name, bytes).
type ServedRepo = (String, Vec<(String, Vec<u8>)>);

/// The model of the end-to-end test: the `model` setting and the repos that serve it. The CLIPA-shaped tiny
/// model of `tests/fixtures/openclip-golden` in open_clip's format (only the pickled `.bin`, as CLIPA's repos ship
/// it) under CLIPA's repo name, and `bert-tiny` as the `bert-base-uncased` its config names. Named through
/// `hf-hub:` so that its own (tiny) config is read: `open_clip:ViT-H-14-CLIPA-336/laion2b` would build the real
/// architecture from open_clip's table, which these weights do not fit.
fn e2e_model() -> (String, Vec<ServedRepo>) {
    let golden = |rel: &str| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openclip-golden").join(rel);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let files = |dir: &str, names: &[&str]| -> Vec<(String, Vec<u8>)> {
        names.iter().map(|n| (n.to_string(), golden(&format!("{dir}/{n}")))).collect()
    };
    (
        "open_clip:hf-hub:UCSC-VLAA/ViT-H-14-CLIPA-336-laion2B".to_string(),
        vec![
            (
                "UCSC-VLAA/ViT-H-14-CLIPA-336-laion2B".to_string(),
                files("clipa-tiny", &["open_clip_config.json", "open_clip_pytorch_model.bin"]),
            ),
            (
                "bert-base-uncased".to_string(),
                files(
                    "bert-tiny",
                    &["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"],
                ),
            ),
        ],
    )
}

/// Captions the tiny BERT tokenizer reads into distinct ids (`expected/clipa-tiny.json`).
fn e2e_captions() -> Vec<String> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openclip-golden/expected/clipa-tiny.json");
    let e: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    [0, 1, 2, 4].iter().map(|&i| e["texts"][i].as_str().unwrap().to_string()).collect()
}

/// hf-dataset → img2dataset → clip-embed → knn-index → `dsmake search`, the metadata and the weights from the Hub
/// stand-in (the CLIPA-shaped open_clip model and its BERT tokenizer), the photos from an image host on 127.0.0.1:
/// a caption finds its own photo's row first.
#[test]
fn end_to_end_from_the_hub_to_search() {
    let photos = fixture("images");
    let host = crate::common::http::Server::start(move |r| {
        match std::fs::read(photos.join(r.path().trim_start_matches('/'))) {
            Ok(bytes) => crate::common::http::Reply::ok("image/png", bytes),
            Err(_) => crate::common::http::Reply::status(404, "no such photo"),
        }
    });
    let captions = e2e_captions();
    let files = ["astronaut.png", "coffee.jpg", "chelsea.png", "rocket_wide.jpg"];
    let urls: Vec<String> = files.iter().map(|f| host.url(&format!("/{f}"))).collect();
    let rows: Vec<_> = urls.iter().zip(&captions).map(|(u, c)| crate::common::parquet_rows::row(u, c)).collect();
    let hub = HubMock::start("laion/tiny");
    hub.commit(&[("data/part-0.parquet", Some(crate::common::parquet_rows::urls_parquet(&rows)))]);
    let (model, repos) = e2e_model();
    for (repo, files) in &repos {
        let changes: Vec<(&str, Option<Vec<u8>>)> = files.iter().map(|(n, b)| (n.as_str(), Some(b.clone()))).collect();
        hub.commit_model(repo, &changes);
    }
    let mut s = Sandbox::new(&format!(
        "[steps.meta]\nkind = \"hf-dataset\"\nrepo = \"laion/tiny\"\n\n[steps.images]\nkind = \"img2dataset\"\nfrom = \
         \"meta\"\ncaption_col = \"caption\"\nimage_size = 64\nresize_mode = \"keep_ratio\"\nallow_hosts = \
         [\"127.0.0.1\"]\nnumber_sample_per_shard = 2\n\n[steps.clip]\nkind = \"clip-embed\"\nfrom = \"images\"\nmodel = \
         \"{model}\"\ndevice = \"cpu\"\nbatch_size = 2\n\n[steps.knn]\nkind = \"knn-index\"\nfrom = \"clip\"\nembeddings = \
         \"text\"\n"
    ));
    s.env.push(("HF_ENDPOINT".into(), hub.endpoint()));
    let summary = s.build(&[]);
    assert_eq!(
        built(&summary),
        [
            "clip/00000",
            "clip/00001",
            "images/data~2Fpart-0_00000",
            "images/data~2Fpart-0_00001",
            "knn/all",
            "meta/data/part-0.parquet"
        ]
        .map(String::from)
    );
    let m = manifest(&s, "00000");
    assert_eq!(m["rows"], 2, "{m}");
    // The weights the key names: the pickled checkpoint's sha256, and the tokenizer from its own repo.
    let files = m["key_parts"]["coords"]["model"]["files"].as_array().cloned().unwrap_or_default();
    let names: Vec<(&str, &str)> =
        files.iter().map(|f| (f["repo"].as_str().unwrap(), f["name"].as_str().unwrap())).collect();
    assert!(names.contains(&("UCSC-VLAA/ViT-H-14-CLIPA-336-laion2B", "open_clip_pytorch_model.bin")), "{names:?}");
    assert!(names.contains(&("bert-base-uncased", "tokenizer.json")), "{names:?}");
    for (i, caption) in captions.iter().enumerate() {
        let run = s.run(&["search", caption, "-k", "2", "--format", "json"]);
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        let found = run.json();
        assert_eq!(found["results"][0]["caption"], caption.as_str(), "{found}");
        assert_eq!(found["results"][0]["url"], urls[i].as_str(), "{found}");
    }
    // `status` asks no remote service: the saved listings and the cached config answer it.
    hub.server.clear();
    let run = s.run(&["status"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
}

/// An open_clip repo with OpenAI's BPE and no tokenizer.json of its own (the ViT-H-14-shaped fixture): the plan
/// pins OpenAI's tokenizer.json from `openai/clip-vit-base-patch32` with it, and the worker embeds with both.
#[test]
fn an_open_clip_repo_without_a_tokenizer_gets_openais_bpe() {
    let hub = HubMock::start("laion/unused");
    let golden = |rel: &str| {
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openclip-golden").join(rel))
            .unwrap()
    };
    hub.commit_model(
        "laion/vith-tiny",
        &[
            ("open_clip_config.json", Some(golden("vith-tiny/open_clip_config.json"))),
            ("open_clip_model.safetensors", Some(golden("vith-tiny/open_clip_model.safetensors"))),
        ],
    );
    hub.commit_model("openai/clip-vit-base-patch32", &[("tokenizer.json", Some(model_file("tokenizer.json")))]);
    let s = sandbox_on(Backend::Local, &hub, "");
    s.write("pipeline.toml", &pipeline("").replace(&format!("hf_clip:{REPO}"), "open_clip:hf-hub:laion/vith-tiny"));
    let summary = s.build(&[]);
    assert_eq!(built(&summary), ["clip/00000", "clip/00001"]);
    let m = manifest(&s, "00001");
    let files = m["key_parts"]["coords"]["model"]["files"].as_array().cloned().unwrap_or_default();
    let names: Vec<(&str, &str)> =
        files.iter().map(|f| (f["repo"].as_str().unwrap(), f["name"].as_str().unwrap())).collect();
    assert_eq!(
        names,
        [
            ("laion/vith-tiny", "open_clip_config.json"),
            ("laion/vith-tiny", "open_clip_model.safetensors"),
            ("openai/clip-vit-base-patch32", "tokenizer.json"),
        ]
    );
    assert_eq!(m["rows"], 1);
}
