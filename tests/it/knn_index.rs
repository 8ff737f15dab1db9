//! The `knn-index` kind and `dsmake search`:
//! - recall@10 of the HNSW index against exact (f32 brute force) search on 100,000 random unit vectors;
//! - the pipeline through the real binary: WebDataset shards → clip-embed (tiny CLIP) → knn-index, then
//!   `dsmake search` with a caption of the sample returns that sample first (text and `--image` queries,
//!   table and JSON), and says what to build when the index is not there;
//! - Python reads what it wrote: `knn.index` with faiss-cpu, the usearch file with `usearch`, the metadata
//!   with pyarrow (`tests/python/check_knn.py`, in the `.venv` that tests/run.sh makes).

use crate::common::{Sandbox, built, venv_python};
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
    let out = s.store().join("pipeline/knn");
    for f in ["image.usearch", "knn.index", "metadata.parquet", "index_infos.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let manifest: Value = serde_json::from_slice(&std::fs::read(out.join("_dsmake/all.json")).unwrap()).unwrap();
    assert_eq!((manifest["rows"].as_u64(), manifest["stats"]["dimensions"].as_u64()), (Some(6), Some(16)));

    // Every caption finds its own sample first, by the approximate and by the exact index.
    let samples = [
        ("000000000", 0, "http://h/0.png"),
        ("000000001", 1, "http://h/1.jpg"),
        ("000000002", 2, "http://h/2.png"),
        ("000010000", 5, "http://h/3.png"),
        ("000010001", 6, "http://h/4.jpg"),
        ("000010002", 7, "http://h/5.png"),
    ];
    for (key, text, url) in samples {
        for exact in [false, true] {
            let mut args = vec![t[text].as_str(), "--step", "knn_text", "-k", "3"];
            if exact {
                args.push("--exact");
            }
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
    assert_eq!(found["results"][0]["image_path"], "000000002", "{found}");
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
    let found = search(&s, &["a new caption", "--step", "knn_text"]);
    assert_eq!(found["results"][0]["image_path"], "000020000", "{found}");
    assert_eq!(found["results"].as_array().unwrap().len(), 7);
}

/// faiss-cpu reads `knn.index`, usearch the HNSW file, pyarrow the metadata (tests/python/check_knn.py).
#[test]
fn python_faiss_usearch_and_pyarrow_read_the_index() {
    let s = sandbox();
    s.build(&[]);
    let clip = s.store().join("pipeline/clip");
    for (step, kind) in [("knn", "image"), ("knn_text", "text")] {
        let index = s.store().join(format!("pipeline/{step}"));
        let stdout = venv_python("check_knn.py", &[&index, &clip, Path::new(kind)]);
        assert!(stdout.contains("check_knn: ok: 6 vectors of 16"), "{step}: {stdout}");
        println!("{}", stdout.trim());
    }
}

/// A bad part fails the build with its name; settings are checked before anything runs.
#[test]
fn bad_settings_and_parts_say_what_is_wrong() {
    let s = Sandbox::new(&PIPELINE.replace("embeddings = \"text\"", "quantization = \"f8\""));
    let run = s.run(&["plan"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("unknown quantization \"f8\"") && run.stderr.contains("\"i8\""), "{}", run.stderr);

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
