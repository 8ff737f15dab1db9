//! The `knn-index` and `knn-train` kinds and `dsmake search`:
//! - recall@10 of the usearch HNSW graph (written beside with `usearch = true`) against exact search;
//! - the pipeline through the real binary: WebDataset shards → clip-embed (tiny CLIP) → knn-index, then
//!   `dsmake search` with a caption of the sample returns that sample first (text and `--image` queries,
//!   table and JSON), and says what to build when the index is not there;
//! - clip-retrieval's own clip_back code serves the folder (tests/python/check_clip_back.py);
//! - IVF-PQ files: faiss reads them, and faiss, clip_back and `dsmake search` agree;
//! - knn-train: adding a part adds vectors without retraining, until the chosen key no longer fits.

use crate::common::{Sandbox, actions, built, venv_python, work};
use dsmake::kinds::knn_index::hnsw;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// splitmix64: a fixed seed gives the same vectors on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// A standard normal (Box–Muller).
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
    /// `n` vectors uniform on the unit sphere of `d` dimensions.
    fn unit_vectors(&mut self, n: usize, d: usize) -> Vec<f32> {
        let mut out: Vec<f32> = (0..n * d).map(|_| self.normal()).collect();
        for row in out.chunks_exact_mut(d) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter_mut().for_each(|x| *x /= norm);
        }
        out
    }
}

/// The k best rows by inner product, by brute force in f32 (two threads).
fn exact_top_k(data: &[f32], d: usize, queries: &[f32], k: usize) -> Vec<Vec<u64>> {
    let per_query = |q: &[f32]| {
        let mut scored: Vec<(f32, u64)> = data
            .chunks_exact(d)
            .enumerate()
            .map(|(i, row)| (row.iter().zip(q).map(|(a, b)| a * b).sum::<f32>(), i as u64))
            .collect();
        scored.select_nth_unstable_by(k, |a, b| b.0.total_cmp(&a.0));
        scored.truncate(k);
        scored.into_iter().map(|(_, i)| i).collect::<Vec<u64>>()
    };
    let qs: Vec<&[f32]> = queries.chunks_exact(d).collect();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        let handles: Vec<_> = qs
            .chunks(qs.len().div_ceil(threads))
            .map(|part| s.spawn(move || part.iter().map(|q| per_query(q)).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn recall_at_10_is_at_least_095_against_exact_search_on_100000_vectors() {
    let (n, d, queries, k) = (100_000, 64, 100, 10);
    let mut rng = Rng(42);
    let data = rng.unit_vectors(n, d);
    let qs = rng.unit_vectors(queries, d);

    let started = Instant::now();
    let params = hnsw::Params::default();
    let index = hnsw::create(d, n, 2, &params).unwrap();
    for (c, chunk) in data.chunks(16_384 * d).enumerate() {
        hnsw::add_rows(&index, (c * 16_384) as u64, chunk, d).unwrap();
    }
    let build = started.elapsed();
    assert_eq!(index.size(), n);

    let started = Instant::now();
    let approx: Vec<Vec<u64>> = qs
        .chunks_exact(d)
        .map(|q| hnsw::search(&index, q, k).unwrap().into_iter().map(|(key, _)| key).collect())
        .collect();
    let search = started.elapsed();
    let started = Instant::now();
    let exact = exact_top_k(&data, d, &qs, k);
    let brute = started.elapsed();
    let hits: usize = approx.iter().zip(&exact).map(|(a, e)| e.iter().filter(|x| a.contains(x)).count()).sum();
    let recall = hits as f64 / (queries * k) as f64;
    println!(
        "recall@10 = {recall:.4} over {queries} queries; {n} x {d} f16, M={} efConstruction={} efSearch={}; \
         build {:.1} s, {:.0} queries/s on one thread (brute force: {:.1} s)",
        params.connectivity,
        params.expansion_add,
        params.expansion_search,
        build.as_secs_f64(),
        queries as f64 / search.as_secs_f64(),
        brute.as_secs_f64()
    );
    assert!(recall >= 0.95, "recall@10 = {recall}");
}

const PIPELINE: &str = r#"
[steps.shards]
kind = "files"
paths = "wds/*.tar"

[steps.clip]
kind = "clip-embed"
from = "shards"
model_path = "tiny-clip"
device = "cpu"
batch_size = 4

[steps.knn]
kind = "knn-index"
from = "clip"

[steps.knn_text]
kind = "knn-index"
from = "clip"
embeddings = "text"
usearch = true
"#;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-golden").join(rel)
}

/// Sets a file's mtime in the past, as for a file not just edited (the stat cache re-hashes recent ones).
fn settle(path: &Path) {
    let past = SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options().write(true).open(path).unwrap().set_modified(past).unwrap();
}

/// A WebDataset shard of fixture photos: (key, image file, caption, url) per sample.
fn write_shard(s: &Sandbox, name: &str, samples: &[(&str, &str, &str, &str)]) {
    let path = s.path(&format!("wds/{name}"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut tar = tar::Builder::new(std::fs::File::create(&path).unwrap());
    let mut add = |member: String, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, member, data).unwrap();
    };
    for (key, image, caption, url) in samples {
        let ext = image.rsplit('.').next().unwrap();
        add(format!("{key}.{ext}"), &std::fs::read(fixture(&format!("images/{image}"))).unwrap());
        add(format!("{key}.txt"), caption.as_bytes());
        add(format!("{key}.json"), json!({ "url": url, "key": key }).to_string().as_bytes());
    }
    tar.finish().unwrap();
    drop(tar);
    settle(&path);
}

fn texts() -> Vec<String> {
    let e: Value = serde_json::from_slice(&std::fs::read(fixture("expected/expected.json")).unwrap()).unwrap();
    e["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect()
}

fn sandbox() -> Sandbox {
    let s = Sandbox::new(PIPELINE);
    std::fs::create_dir_all(s.path("tiny-clip")).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(fixture(&format!("tiny-clip/{f}")), s.path(&format!("tiny-clip/{f}"))).unwrap();
        settle(&s.path(&format!("tiny-clip/{f}")));
    }
    let t = texts();
    write_shard(
        &s,
        "00000.tar",
        &[
            ("000000000", "astronaut.png", &t[0], "http://h/0.png"),
            ("000000001", "coffee.jpg", &t[1], "http://h/1.jpg"),
            ("000000002", "chelsea.png", &t[2], "http://h/2.png"),
        ],
    );
    write_shard(
        &s,
        "00001.tar",
        &[
            ("000010000", "camera_gray.png", &t[5], "http://h/3.png"),
            ("000010001", "rocket_wide.jpg", &t[6], "http://h/4.jpg"),
            ("000010002", "astro_rgba.png", &t[7], "http://h/5.png"),
        ],
    );
    s
}

fn search(s: &Sandbox, args: &[&str]) -> Value {
    let mut full = vec!["search"];
    full.extend(args);
    full.extend(["--format", "json"]);
    let run = s.run(&full);
    assert_eq!(run.code, 0, "search {args:?} failed:\n{}\n{}", run.stdout, run.stderr);
    run.json()
}

/// The tiny CLIP's weights are random, so text and image embeddings do not meet: captions are searched in
/// the text index (a caption finds its own sample) and photos in the image index (a photo finds itself).
/// With a real model the image index answers text queries (the default, `embeddings = "image"`).
#[test]
fn search_finds_the_sample_whose_caption_or_photo_matches_and_says_what_to_build() {
    let s = sandbox();
    let t = texts();

    let run = s.run(&["search", &t[1]]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("several knn-index steps (knn, knn_text): choose one with --step"), "{}", run.stderr);
    let run = s.run(&["search", &t[1], "--step", "knn_text"]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("the index `knn_text/all` is not built")
            && run.stderr.contains("dsmake build pipeline.toml --target knn_text"),
        "{}",
        run.stderr
    );

    let summary = s.build(&[]);
    let names = built(&summary);
    assert!(names.contains(&"knn/all".to_string()) && names.contains(&"knn_text/all".to_string()), "{names:?}");
    // clip_back's folder: both indices, their infos, the metadata parts as clip-retrieval copies them.
    let out = s.store().join("pipeline/knn");
    for f in ["image.index", "image.json", "text.index", "text.json", "metadata/metadata_00000.parquet"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert!(!out.join("image.usearch").exists());
    let text_only = s.store().join("pipeline/knn_text");
    assert!(text_only.join("text.usearch").is_file() && !text_only.join("image.index").exists());
    let manifest: Value = serde_json::from_slice(&std::fs::read(out.join("_dsmake/all.json")).unwrap()).unwrap();
    assert_eq!(manifest["rows"].as_u64(), Some(6));
    assert_eq!(manifest["stats"]["image"]["vectors dimension"].as_u64(), Some(16));
    assert_eq!(manifest["stats"]["text"]["index_key"], "Flat");

    // Every caption finds its own sample first in text.index (of either step), and in the HNSW graph.
    let samples = [
        ("000000000", 0, "http://h/0.png"),
        ("000000001", 1, "http://h/1.jpg"),
        ("000000002", 2, "http://h/2.png"),
        ("000010000", 5, "http://h/3.png"),
        ("000010001", 6, "http://h/4.jpg"),
        ("000010002", 7, "http://h/5.png"),
    ];
    for (key, text, url) in samples {
        for (step, extra) in [("knn", "--exact"), ("knn_text", "--exact"), ("knn_text", "--hnsw")] {
            let args = vec![t[text].as_str(), "--step", step, "--modality", "text", "-k", "3", extra];
            let found = search(&s, &args);
            let first = &found["results"][0];
            assert_eq!(first["image_path"], key, "{found}");
            assert_eq!((first["caption"].as_str(), first["url"].as_str()), (Some(t[text].as_str()), Some(url)));
            assert!(first["score"].as_f64().unwrap() > 0.99, "{found}");
            assert_eq!(found["results"].as_array().unwrap().len(), 3);
        }
    }

    // A photo finds itself in the image index; the table names it on the first row.
    let photo = fixture("images/chelsea.png");
    let found = search(&s, &["--image", photo.to_str().unwrap(), "--step", "knn"]);
    assert_eq!((found["modality"].as_str(), found["index_key"].as_str()), (Some("image"), Some("Flat")), "{found}");
    assert_eq!(found["results"][0]["image_path"], "000000002", "{found}");
    let run = s.run(&["search", "--image", photo.to_str().unwrap(), "--step", "knn_text", "--modality", "image"]);
    assert!(run.stderr.contains("knn_text has no image.index"), "{}", run.stderr);
    assert!(found["results"][0]["score"].as_f64().unwrap() > 0.99, "{found}");
    let run = s.run(&["search", "--image", photo.to_str().unwrap(), "--step", "knn", "-k", "2"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("Top 2 for image "), "{}", run.stdout);
    assert!(lines[1].contains("score") && lines[1].contains("url") && lines[1].contains("caption"), "{}", run.stdout);
    assert!(lines[2].contains("http://h/2.png") && lines[2].contains("000000002"), "{}", run.stdout);
    assert_eq!(lines.len(), 4, "{}", run.stdout);

    // A new shard: the index is out of date until rebuilt, and says how to rebuild it.
    write_shard(&s, "00002.tar", &[("000020000", "coffee.jpg", "a new caption", "http://h/6.jpg")]);
    let run = s.run(&["search", "a new caption", "--step", "knn_text"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("is out of date") && run.stderr.contains("--target knn_text"), "{}", run.stderr);
    let rebuilt = built(&s.build(&[]));
    assert_eq!(rebuilt, ["clip/00002", "knn/all", "knn_text/all"]);
    let found = search(&s, &["a new caption", "--step", "knn", "--modality", "text"]);
    assert_eq!(found["results"][0]["image_path"], "000020000", "{found}");
    assert_eq!(found["results"].as_array().unwrap().len(), 7);
}

/// clip-retrieval's clip_back, its own code (clip-retrieval 2.44.0 from PyPI), loads the folder as it loads
/// `--indice_folder` and answers every sample's image and text embedding with that sample
/// (tests/python/check_clip_back.py says which functions it calls).
#[test]
fn clip_back_serves_the_folder_and_answers_each_sample_with_itself() {
    let s = sandbox();
    s.build(&["--target", "knn"]);
    let index = s.store().join("pipeline/knn");
    let clip = s.store().join("pipeline/clip");
    let stdout = venv_python("check_clip_back.py", &[&index, Path::new("self"), &clip]);
    assert!(stdout.contains("check_clip_back: ok: 24 queries"), "{stdout}");
    println!("{}", stdout.trim());
}

/// A bad part fails the build with its name; settings are checked before anything runs.
#[test]
fn bad_settings_and_parts_say_what_is_wrong() {
    let s = Sandbox::new(&PIPELINE.replace("embeddings = \"text\"", "quantization = \"f8\""));
    let run = s.run(&["plan"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("unknown quantization \"f8\"") && run.stderr.contains("\"i8\""), "{}", run.stderr);
    for (setting, wanted) in [
        ("index_key = \"PCA64,IVF1024_HNSW32,PQ64\"", "not written yet"),
        ("index_key = \"OPQ32_128,IVF1024_HNSW32,PQ64\"", "write OPQ64, not OPQ32"),
        ("max_index_memory_usage = \"4X\"", "unknown unit `X`"),
        ("index_key = \"Flat\"\nexact_faiss = false", "contradicts index_key `Flat`"),
    ] {
        let s = Sandbox::new(&PIPELINE.replace("embeddings = \"text\"", setting));
        let run = s.run(&["plan"]);
        assert_eq!(run.code, 2, "{setting}: {}", run.stderr);
        assert!(run.stderr.contains(wanted), "{setting}: {}", run.stderr);
    }

    let s = Sandbox::new(
        "[steps.emb]\nkind = \"files\"\npaths = [\"emb/*.npy\", \"emb/*.parquet\"]\n\n[steps.knn]\nkind = \"knn-index\"\nfrom = \"emb\"\n",
    );
    std::fs::create_dir_all(s.path("emb")).unwrap();
    // Two rows of f16 in the npy, metadata with one row: the part is named in the error.
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let dict = "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 4), }";
    let header = format!("{dict:<117}\n");
    npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
    npy.extend_from_slice(header.as_bytes());
    npy.extend_from_slice(&[0u8; 16]);
    std::fs::write(s.path("emb/img_emb_7.npy"), &npy).unwrap();
    settle(&s.path("emb/img_emb_7.npy"));
    let meta = s.path("emb/metadata_7.parquet");
    let mut w = dsmake::kinds::knn_index::meta::MetaWriter::create(&meta).unwrap();
    w.push(dsmake::kinds::knn_index::meta::Row { image_path: "a".into(), caption: None, url: None }).unwrap();
    w.finish().unwrap();
    settle(&meta);
    let run = s.run(&["build"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(
        all.contains("part 7 (emb/img_emb_7.npy)") && all.contains("has 2 rows but") && all.contains("has 1"),
        "{all}"
    );
}

const PARTS: &str = r#"
[steps.emb]
kind = "files"
paths = ["emb/*.npy", "emb/*.parquet"]
"#;

/// A part as clip-retrieval writes it: `img_emb_N.npy`, `text_emb_N.npy` (float16, unit vectors around 24
/// centres) and `metadata_N.parquet` (`image_path` `pN_i`).
fn write_part(s: &Sandbox, number: usize, rows: usize, d: usize) -> Vec<f32> {
    use dsmake::clip::npy::{Dtype, RowWriter};
    std::fs::create_dir_all(s.path("emb")).unwrap();
    let mut rng = Rng(7);
    let centres = rng.unit_vectors(24, d);
    let mut rng = Rng(1000 + number as u64);
    let mut image = Vec::new();
    for side in ["img_emb", "text_emb"] {
        let noise = rng.unit_vectors(rows, d);
        let mut values = Vec::with_capacity(rows * d);
        for (i, n) in noise.chunks_exact(d).enumerate() {
            let c = &centres[(i * 7 + number) % 24 * d..][..d];
            let mut row: Vec<f32> = c.iter().zip(n).map(|(c, n)| c + 0.6 * n).collect();
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter_mut().for_each(|x| *x /= norm);
            values.extend(row);
        }
        let path = s.path(&format!("emb/{side}_{number}.npy"));
        let mut w = RowWriter::create(&path, Dtype::F16, d).unwrap();
        w.push(&values).unwrap();
        w.finish().unwrap();
        settle(&path);
        if side == "img_emb" {
            image = values;
        }
    }
    let path = s.path(&format!("emb/metadata_{number}.parquet"));
    let mut w = dsmake::kinds::knn_index::meta::MetaWriter::create(&path).unwrap();
    for i in 0..rows {
        let row = dsmake::kinds::knn_index::meta::Row {
            image_path: format!("p{number}_{i}"),
            caption: Some(format!("caption {number} {i}")),
            url: None,
        };
        w.push(row).unwrap();
    }
    w.finish().unwrap();
    settle(&path);
    image
}

fn write_query(s: &Sandbox, name: &str, v: &[f32]) -> PathBuf {
    use dsmake::clip::npy::{Dtype, RowWriter};
    let path = s.path(name);
    let mut w = RowWriter::create(&path, Dtype::F32, v.len()).unwrap();
    w.push(v).unwrap();
    w.finish().unwrap();
    path
}

fn infos(s: &Sandbox, step: &str, side: &str) -> Value {
    serde_json::from_slice(&std::fs::read(s.store().join(format!("pipeline/{step}/{side}.json"))).unwrap()).unwrap()
}

/// IVF-PQ written by dsmake, with a flat and with an HNSW coarse quantizer, and behind OPQ transforms (a
/// rotation, and autofaiss's padded shape): faiss reads it as `IndexIVFPQ` (in an `IndexPreTransform` for
/// OPQ) with the nprobe dsmake chose, and faiss's search, clip_back's answer and `dsmake search --embedding`
/// agree, on both sides.
#[test]
fn ivf_pq_files_are_read_by_faiss_and_faiss_clip_back_and_dsmake_search_agree() {
    let s = Sandbox::new(&format!(
        "{PARTS}\n[steps.knn]\nkind = \"knn-index\"\nfrom = \"emb\"\nindex_key = \"IVF32,PQ8x8\"\n\n\
         [steps.knn_hnsw]\nkind = \"knn-index\"\nfrom = \"emb\"\nembeddings = \"image\"\n\
         index_key = \"IVF32_HNSW8,PQ8x8\"\nnprobe = 32\n\n\
         [steps.knn_opq]\nkind = \"knn-index\"\nfrom = \"emb\"\nembeddings = \"image\"\n\
         index_key = \"OPQ8_32,IVF32,PQ8x8\"\n\n\
         [steps.knn_opq_wide]\nkind = \"knn-index\"\nfrom = \"emb\"\nembeddings = \"image\"\n\
         index_key = \"OPQ8_48,IVF32_HNSW8,PQ8x8\"\nnprobe = 8\n"
    ));
    let (rows, d) = (2500, 32);
    let first = write_part(&s, 0, rows, d);
    write_part(&s, 1, rows, d);
    write_part(&s, 2, rows, d);
    assert_eq!(built(&s.build(&[])), ["knn/all", "knn_hnsw/all", "knn_opq/all", "knn_opq_wide/all"]);
    for side in ["image", "text"] {
        let i = infos(&s, "knn", side);
        assert_eq!((i["index_key"].as_str(), i["nb vectors"].as_u64()), (Some("IVF32,PQ8x8"), Some(3 * rows as u64)));
        assert!(i["10-recall@10"].as_f64().unwrap() > 0.3, "{i}");
        assert_eq!(i["trained_by"], "this step");
    }
    // A query near a stored vector: a mix of row 5 of part 0 and another row.
    let q: Vec<f32> = first[5 * d..6 * d].iter().zip(&first[9 * d..10 * d]).map(|(a, b)| 0.9 * a + 0.1 * b).collect();
    let query = write_query(&s, "q.npy", &q);
    for (step, side, key) in [
        ("knn", "image", "IVF32,PQ8x8"),
        ("knn", "text", "IVF32,PQ8x8"),
        ("knn_hnsw", "image", "IVF32_HNSW8,PQ8x8"),
        ("knn_opq", "image", "OPQ8_32,IVF32,PQ8x8"),
        ("knn_opq_wide", "image", "OPQ8_48,IVF32_HNSW8,PQ8x8"),
    ] {
        let index = s.store().join(format!("pipeline/{step}"));
        let args = ["--embedding", query.to_str().unwrap(), "--step", step, "--modality", side, "-k", "10"];
        let found = search(&s, &args);
        assert_eq!(found["index_key"], key, "{found}");
        assert_eq!(found["results"].as_array().unwrap().len(), 10, "{found}");
        if side == "image" {
            assert_eq!(found["results"][0]["image_path"], "p0_5", "{found}");
        }
        let results = s.path(&format!("{step}-{side}-results.json"));
        std::fs::write(&results, found.to_string()).unwrap();
        let out = venv_python(
            "check_clip_back.py",
            &[&index, Path::new("agree"), Path::new(side), &query, &results, Path::new(key)],
        );
        assert!(out.contains("faiss, clip_back and dsmake agree on the top 10"), "{out}");
        println!("{}", out.trim());
    }
}

/// Training is its own target: a new part is added to the trained quantizers (the knn-train target stays
/// fresh, only the index is rebuilt); once the count outgrows the key chosen for it, the plan retrains and
/// says from which key to which.
#[test]
fn knn_train_is_its_own_target_and_retrains_only_when_the_key_no_longer_fits() {
    let pipeline = |train: &str| {
        format!(
            "{PARTS}\n[steps.knn_train]\nkind = \"knn-train\"\nfrom = \"emb\"\n{train}\n\n[steps.knn]\nkind = \
             \"knn-index\"\nfrom = [\"emb\", \"knn_train\"]\n"
        )
    };
    // IVF16,PQ8x8 trains on 10,000 vectors: the first two parts.
    let s = Sandbox::new(&pipeline("index_key = \"IVF16,PQ8x8\""));
    let d = 32;
    for n in 0..3 {
        write_part(&s, n, 5000, d);
    }
    assert_eq!(built(&s.build(&[])), ["knn/all", "knn_train/all"]);
    let train_dir = s.store().join("pipeline/knn_train");
    for f in ["image.trained.index", "text.trained.index", "train.json"] {
        assert!(train_dir.join(f).is_file(), "{f}");
    }
    let manifest = |step: &str| -> Value {
        serde_json::from_slice(&std::fs::read(s.store().join(format!("pipeline/{step}/_dsmake/all.json"))).unwrap())
            .unwrap()
    };
    let train_key = manifest("knn_train")["key"].clone();
    assert_eq!(infos(&s, "knn", "image")["trained_by"], "knn-train");
    assert_eq!(infos(&s, "knn", "text")["nb vectors"], 15000);

    write_part(&s, 3, 5000, d);
    let plan = s.plan(&[]);
    let todo: Vec<(String, String)> = work(&plan).into_iter().map(|(t, a, _)| (t, a)).collect();
    assert_eq!(todo, [("knn/all".to_string(), "stale".to_string())], "{:?}", actions(&plan));
    assert_eq!(built(&s.build(&[])), ["knn/all"]);
    assert_eq!(manifest("knn_train")["key"], train_key);
    assert_eq!(infos(&s, "knn", "image")["nb vectors"], 20000);
    let out =
        venv_python("check_clip_back.py", &[&s.store().join("pipeline/knn"), Path::new("count"), Path::new("20000")]);
    assert!(out.contains("ok"), "{out}");

    // Chosen from the budget as autofaiss's get_optimal_index_keys_v2 chooses (src/kinds/knn_index/factory.rs):
    // 12,000 vectors of 32 in 200,000 bytes as OPQ8_40,IVF512,PQ8x8 (16 bytes a vector with its id); 16,000
    // only with PQ4.
    let s = Sandbox::new(&pipeline("max_index_memory_usage = \"200000\""));
    for n in 0..3 {
        write_part(&s, n, 4000, d);
    }
    assert_eq!(built(&s.build(&[])), ["knn/all", "knn_train/all"]);
    assert_eq!(infos(&s, "knn", "image")["index_key"], "OPQ8_40,IVF512,PQ8x8");
    write_part(&s, 3, 4000, d);
    let plan = s.plan(&[]);
    let train = actions(&plan).into_iter().find(|(t, _, _)| t == "knn_train/all").unwrap();
    assert_eq!(train.1, "stale", "{train:?}");
    assert!(train.2.starts_with(r#"shard.index_key: "OPQ8_40,IVF512,PQ8x8" → "OPQ4_28,IVF512,PQ4x8""#), "{train:?}");
}

/// Encoding is one target a part (knn-encode): adding a part encodes that part only (the knn-train target and
/// the other parts' encodings stay fresh), and the index equals, byte for byte, the one a knn-index step
/// that encodes every part itself writes, before and after the part is added.
#[test]
fn adding_a_part_encodes_only_that_part_and_the_index_equals_a_from_scratch_build() {
    let s = Sandbox::new(&format!(
        "{PARTS}\n[steps.knn_train]\nkind = \"knn-train\"\nfrom = \"emb\"\nindex_key = \"OPQ8_32,IVF16,PQ8x8\"\n\n\
         [steps.knn_encode]\nkind = \"knn-encode\"\nfrom = [\"emb\", \"knn_train\"]\n\n\
         [steps.knn]\nkind = \"knn-index\"\nfrom = [\"emb\", \"knn_train\", \"knn_encode\"]\nnprobe = 4\n\n\
         [steps.scratch]\nkind = \"knn-index\"\nfrom = [\"emb\", \"knn_train\"]\nnprobe = 4\n"
    ));
    let d = 32;
    // OPQ8_32,IVF16,PQ8x8 trains on 10,000 vectors: the first two parts.
    for n in 0..3 {
        write_part(&s, n, 5000, d);
    }
    assert_eq!(
        built(&s.build(&[])),
        ["knn/all", "knn_encode/0", "knn_encode/1", "knn_encode/2", "knn_train/all", "scratch/all"]
    );
    let same_as_scratch = |rows: u64| {
        for side in ["image", "text"] {
            let file = |step: &str| std::fs::read(s.store().join(format!("pipeline/{step}/{side}.index"))).unwrap();
            assert!(file("knn") == file("scratch"), "{side}.index differs from the from-scratch build");
            let i = infos(&s, "knn", side);
            assert_eq!(
                (i["nb vectors"].as_u64(), i["parts_encoded_by_knn_encode"].as_u64()),
                (Some(rows), Some(rows / 5000))
            );
            assert_eq!(infos(&s, "scratch", side)["parts_encoded_by_knn_encode"], 0);
        }
    };
    same_as_scratch(15000);

    write_part(&s, 3, 5000, d);
    let plan = s.plan(&[]);
    let todo: Vec<(String, String)> = work(&plan).into_iter().map(|(t, a, _)| (t, a)).collect();
    assert_eq!(
        todo,
        [
            ("knn_encode/3".to_string(), "missing".to_string()),
            ("knn/all".to_string(), "blocked".to_string()),
            ("scratch/all".to_string(), "stale".to_string())
        ],
        "{:?}",
        actions(&plan)
    );
    assert_eq!(built(&s.build(&[])), ["knn/all", "knn_encode/3", "scratch/all"]);
    same_as_scratch(20000);
    let out =
        venv_python("check_clip_back.py", &[&s.store().join("pipeline/knn"), Path::new("count"), Path::new("20000")]);
    assert!(out.contains("ok"), "{out}");
}
