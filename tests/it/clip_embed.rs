//! The `clip-embed` step through the real binary: WebDataset shards written here from the golden fixture's
//! photos, embedded with the tiny CLIP (a copy of `tests/fixtures/clip-golden/tiny-clip`, see the README
//! there) via `model_path`; outputs checked against clip-retrieval's layout and the reference embeddings;
//! incremental behaviour (a new shard builds one new part; a changed model rebuilds every part and says so).
//! The npy files are checked with a parser written in this file, independent of dsmake's own, and read back
//! with numpy, pyarrow and webdataset (`tests/python/check_clip_embed.py`, in the `.venv` that tests/run.sh
//! makes).

use crate::common::{Sandbox, built, venv_python, work};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const PIPELINE: &str = r#"
[steps.shards]
kind = "files"
paths = "wds/*.tar"

[steps.clip]
kind = "clip-embed"
from = "shards"
model_path = "tiny-clip"
device = "cpu"
batch_size = 2
"#;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-golden").join(rel)
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(fixture("expected/expected.json")).unwrap()).unwrap()
}

/// Sets a file's mtime in the past, as for a file not just edited (the stat cache re-hashes recent ones).
fn settle(path: &Path) {
    let past = SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options().write(true).open(path).unwrap().set_modified(past).unwrap();
}

/// One sample: key, image file from the fixture (or raw bytes), caption (None: no .txt member), json.
struct Sample<'a> {
    key: &'a str,
    image: Result<&'a str, &'a [u8]>,
    caption: Option<&'a str>,
    json: Value,
}

fn write_shard(s: &Sandbox, name: &str, samples: &[Sample]) {
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
    for sample in samples {
        let (ext, bytes) = match sample.image {
            Ok(file) => (file.rsplit('.').next().unwrap(), std::fs::read(fixture(&format!("images/{file}"))).unwrap()),
            Err(raw) => ("jpg", raw.to_vec()),
        };
        add(format!("{}.{ext}", sample.key), &bytes);
        if let Some(caption) = sample.caption {
            add(format!("{}.txt", sample.key), caption.as_bytes());
        }
        add(format!("{}.json", sample.key), sample.json.to_string().as_bytes());
    }
    tar.finish().unwrap();
    drop(tar);
    settle(&path);
}

fn copy_model(s: &Sandbox) {
    std::fs::create_dir_all(s.path("tiny-clip")).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(fixture(&format!("tiny-clip/{f}")), s.path(&format!("tiny-clip/{f}"))).unwrap();
        settle(&s.path(&format!("tiny-clip/{f}")));
    }
}

fn sandbox() -> Sandbox {
    let s = Sandbox::new(PIPELINE);
    copy_model(&s);
    let e = expected();
    let text = |i: usize| e["texts"][i].as_str().unwrap().to_string();
    let (t0, t1, t2, t6) = (text(0), text(1), text(2), text(6));
    write_shard(
        &s,
        "00000.tar",
        &[
            Sample {
                key: "000000000",
                image: Ok("astronaut.png"),
                caption: Some(&t0),
                json: json!({"url": "http://h/0.png", "width": 512, "status": "success"}),
            },
            Sample {
                key: "000000001",
                image: Ok("coffee.jpg"),
                caption: Some(&t1),
                json: json!({"url": "http://h/1.jpg", "width": 600, "status": "success"}),
            },
            Sample {
                key: "000000002",
                image: Ok("chelsea.png"),
                caption: Some(&t2),
                json: json!({"url": "http://h/2.png", "width": 451, "status": "success"}),
            },
        ],
    );
    write_shard(
        &s,
        "00001.tar",
        &[
            Sample {
                key: "000010000",
                image: Ok("camera_gray.png"),
                caption: None,
                json: json!({"url": "http://h/3.png"}),
            },
            Sample {
                key: "000010001",
                image: Err(b"not an image"),
                caption: Some("broken"),
                json: json!({"url": "http://h/x"}),
            },
            Sample {
                key: "000010002",
                image: Ok("rocket_wide.jpg"),
                caption: Some(&t6),
                json: json!({"url": "http://h/4.jpg"}),
            },
            Sample {
                key: "000010003",
                image: Ok("astro_rgba.png"),
                caption: Some(""),
                json: json!({"url": "http://h/5.png"}),
            },
        ],
    );
    s
}

/// A .npy file parsed by hand: checks the v1.0 header as numpy writes it and returns (descr, shape, values).
fn read_npy(path: &Path) -> (String, Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00", "{}: magic and version 1.0", path.display());
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + len) % 64, 0, "numpy aligns the data to 64 bytes");
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(header.ends_with('\n') && header.contains("'fortran_order': False"), "{header}");
    let descr = header.split("'descr': '").nth(1).unwrap().split('\'').next().unwrap().to_string();
    let shape: Vec<usize> = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse().unwrap())
        .collect();
    assert_eq!(descr, "<f2");
    let values: Vec<f32> =
        bytes[10 + len..].chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
    assert_eq!(values.len(), shape.iter().product::<usize>());
    (descr, shape, values)
}

fn parquet_rows(path: &Path) -> (Vec<String>, Vec<Vec<(String, String)>>) {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let columns =
        reader.metadata().file_metadata().schema_descr().columns().iter().map(|c| c.name().to_string()).collect();
    let rows = reader
        .get_row_iter(None)
        .unwrap()
        .map(|r| r.unwrap().get_column_iter().map(|(n, f)| (n.clone(), f.to_string())).collect())
        .collect();
    (columns, rows)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

fn reference(e: &Value, field: &str, index: usize) -> Vec<f32> {
    e[field][index].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// An expected output row: sample key, its image, and the index of its caption in expected.json's texts.
type Row<'a> = (&'a str, &'a str, Option<usize>);

#[test]
fn embeds_webdataset_shards_in_clip_retrievals_layout_and_rebuilds_what_changed() {
    let s = sandbox();
    let first = s.build(&[]);
    assert_eq!(built(&first), ["clip/00000", "clip/00001"]);
    let e = expected();
    let image_index = |name: &str| e["images"].as_array().unwrap().iter().position(|i| i == name).unwrap();
    let out = s.store().join("pipeline/clip");

    // Part 0: three samples; part 1: four, one of which does not decode (counted, left out).
    let parts: [(&str, &[Row]); 2] = [
        (
            "00000",
            &[
                ("000000000", "astronaut.png", Some(0)),
                ("000000001", "coffee.jpg", Some(1)),
                ("000000002", "chelsea.png", Some(2)),
            ],
        ),
        (
            "00001",
            &[
                ("000010000", "camera_gray.png", None),
                ("000010002", "rocket_wide.jpg", Some(6)),
                ("000010003", "astro_rgba.png", None),
            ],
        ),
    ];
    for (part, samples) in parts {
        let (_, shape, img) = read_npy(&out.join(format!("img_emb/img_emb_{part}.npy")));
        let (_, tshape, txt) = read_npy(&out.join(format!("text_emb/text_emb_{part}.npy")));
        assert_eq!(shape, [samples.len(), 16]);
        assert_eq!(tshape, shape);
        let (columns, rows) = parquet_rows(&out.join(format!("metadata/metadata_{part}.parquet")));
        assert_eq!(&columns[..2], ["image_path", "caption"]);
        assert!(columns.contains(&"url".to_string()), "{columns:?}");
        assert_eq!(rows.len(), samples.len());
        for (r, (key, image, caption)) in samples.iter().enumerate() {
            let row = &img[r * 16..(r + 1) * 16];
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 2e-3, "{part} row {r}: norm {norm}");
            let c = cosine(row, &reference(&e, "image_embeds_normalized", image_index(image)));
            assert!(c >= 0.999, "{part} row {r} ({image}): cosine {c} with the reference");
            assert_eq!(rows[r][0], ("image_path".to_string(), format!("\"{key}\"")), "rows align with the keys");
            let trow = &txt[r * 16..(r + 1) * 16];
            assert!((trow.iter().map(|x| x * x).sum::<f32>().sqrt() - 1.0).abs() < 2e-3);
            match caption {
                Some(t) => {
                    let c = cosine(trow, &reference(&e, "text_embeds_normalized", *t));
                    assert!(c >= 0.999, "{part} row {r}: text cosine {c}");
                    let want = e["texts"][*t].as_str().unwrap();
                    assert_eq!(rows[r][1].1, serde_json::to_string(want).unwrap().replace("\\\"", "\""));
                }
                // No .txt member and an empty one both embed the empty caption.
                None => assert_eq!(rows[r][1].1, "\"\""),
            }
        }
    }
    let manifest: Value = serde_json::from_slice(&std::fs::read(out.join("_dsmake/00001.json")).unwrap()).unwrap();
    assert_eq!((manifest["rows"].as_u64(), manifest["failures"].as_u64()), (Some(3), Some(1)));
    let failure = manifest["stats"]["failures"][0].as_str().unwrap();
    assert!(failure.contains("shards/00001.tar") && failure.contains("000010001"), "{failure}");

    // A new shard: exactly one new part; the others stay fresh.
    write_shard(
        &s,
        "00002.tar",
        &[Sample { key: "000020000", image: Ok("coffee.jpg"), caption: Some("x"), json: json!({}) }],
    );
    let plan = s.plan(&[]);
    let todo: Vec<String> = work(&plan).into_iter().map(|(t, _, _)| t).collect();
    assert_eq!(todo, ["clip/00002"]);
    assert_eq!(built(&s.build(&[])), ["clip/00002"]);

    // A changed model file: every part is stale and the reason names the weights.
    let weights = s.path("tiny-clip/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01; // the lowest mantissa bits of the last weight: still a valid model
    std::fs::write(&weights, &bytes).unwrap();
    settle(&weights);
    let plan = s.plan(&[]);
    let stale = work(&plan);
    assert_eq!(stale.len(), 3, "{stale:?}");
    for (target, action, reason) in &stale {
        assert_eq!(action, "stale", "{target}");
        assert!(reason.contains("model.safetensors"), "{target}: {reason}");
        println!("{target}: {reason}");
    }
    assert_eq!(built(&s.build(&[])), ["clip/00000", "clip/00001", "clip/00002"]);
}

/// What clip-retrieval's users read: numpy loads the embeddings (float16, [rows, 16], unit rows), pyarrow the
/// metadata, and every row lines up with its WebDataset sample as webdataset reads the shard (key, caption,
/// json fields, and the reference embeddings of its own photo and caption).
#[test]
fn numpy_pyarrow_and_webdataset_read_the_outputs_back_row_by_row() {
    let s = sandbox();
    assert_eq!(built(&s.build(&[])), ["clip/00000", "clip/00001"]);
    let (clip, fixture) = (s.store().join("pipeline/clip"), fixture(""));
    let (shard0, shard1) = (s.path("wds/00000.tar"), s.path("wds/00001.tar"));
    let stdout = venv_python("check_clip_embed.py", &[&clip, &fixture, &shard0, &shard1]);
    assert!(stdout.contains("check_clip_embed: ok: 2 parts, 6 rows of 16"), "{stdout}");
    println!("{}", stdout.trim());
}

#[test]
fn unsupported_models_say_what_to_do() {
    let s = Sandbox::new(&PIPELINE.replace("model_path = \"tiny-clip\"", "model = \"ViT-L/14@336\""));
    let run = s.run(&["plan"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("did you mean \"ViT-L/14@336px\"") && run.stderr.contains("\"ViT-B/32\""),
        "{}",
        run.stderr
    );
}

#[test]
fn write_batch_size_groups_whole_shards_or_says_why_not() {
    let one = |key| [Sample { key, image: Ok("coffee.jpg"), caption: None, json: json!({}) }];
    let s = Sandbox::new(&PIPELINE.replace("batch_size = 2", "write_batch_size = 4\nsamples_per_shard = 2"));
    copy_model(&s);
    for (key, name) in [("0", "00000.tar"), ("1", "00001.tar"), ("2", "00002.tar")] {
        write_shard(&s, name, &one(key));
    }
    let plan = s.plan(&[]);
    let inputs: Vec<(String, Vec<String>)> = plan["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["step"] == "clip")
        .map(|t| (t["target"].as_str().unwrap().to_string(), serde_json::from_value(t["inputs"].clone()).unwrap()))
        .collect();
    let part = |t: &str, i: &[&str]| (t.to_string(), i.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(
        inputs,
        [part("clip/00000", &["shards/00000.tar", "shards/00001.tar"]), part("clip/00001", &["shards/00002.tar"])]
    );

    let s = Sandbox::new(&PIPELINE.replace("batch_size = 2", "write_batch_size = 3\nsamples_per_shard = 2"));
    copy_model(&s);
    write_shard(&s, "00000.tar", &one("a"));
    let run = s.run(&["plan"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("not a whole number of input shards of 2 images"), "{}", run.stderr);
}

/// A `model_path` folder in open_clip's format, as a CLIPA repository ships it (only the pickled `.bin`)
/// with its tokenizer's files beside it: embedded as open_clip embeds (the reference of
/// `tests/fixtures/openclip-golden`), keyed by the files that make the model, and a changed `.bin` rebuilds.
#[test]
fn an_open_clip_folder_with_a_pickled_checkpoint_embeds_as_open_clip() {
    let s = Sandbox::new(&PIPELINE.replace("model_path = \"tiny-clip\"", "model_path = \"clipa\""));
    let golden = |rel: &str| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openclip-golden").join(rel);
    let model = s.path("clipa");
    std::fs::create_dir_all(&model).unwrap();
    let files = [
        "clipa-tiny/open_clip_config.json",
        "clipa-tiny/open_clip_pytorch_model.bin",
        "bert-tiny/tokenizer.json",
        "bert-tiny/tokenizer_config.json",
        "bert-tiny/special_tokens_map.json",
    ];
    for f in files {
        let to = model.join(Path::new(f).file_name().unwrap());
        std::fs::copy(golden(f), &to).unwrap();
        settle(&to);
    }
    let e: Value = serde_json::from_slice(&std::fs::read(golden("expected/clipa-tiny.json")).unwrap()).unwrap();
    let text = e["texts"][0].as_str().unwrap().to_string();
    write_shard(
        &s,
        "00000.tar",
        &[
            Sample { key: "a", image: Ok("astronaut.png"), caption: Some(&text), json: json!({}) },
            Sample { key: "b", image: Ok("astro_rgba.png"), caption: None, json: json!({}) },
        ],
    );
    assert_eq!(built(&s.build(&[])), ["clip/00000"]);
    let out = s.store().join("pipeline/clip");
    let (_, shape, img) = read_npy(&out.join("img_emb/img_emb_00000.npy"));
    let (_, _, txt) = read_npy(&out.join("text_emb/text_emb_00000.npy"));
    assert_eq!(shape, [2, 48]);
    let images = e["images"].as_array().unwrap();
    for (row, name) in ["astronaut.png", "astro_rgba.png"].iter().enumerate() {
        let at = images.iter().position(|i| i == name).unwrap();
        let c = cosine(&img[row * 48..(row + 1) * 48], &reference(&e, "image_embeds_normalized", at));
        assert!(c >= 0.999, "{name}: cosine {c} with open_clip's");
    }
    let c = cosine(&txt[..48], &reference(&e, "text_embeds_normalized", 0));
    assert!(c >= 0.999, "caption: cosine {c} with open_clip's");
    let manifest: Value = serde_json::from_slice(&std::fs::read(out.join("_dsmake/00000.json")).unwrap()).unwrap();
    let mut files: Vec<&String> = manifest["stats"]["model"].as_object().unwrap().keys().collect();
    files.sort();
    assert_eq!(
        files,
        [
            "open_clip_config.json",
            "open_clip_pytorch_model.bin",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );

    let weights = model.join("open_clip_pytorch_model.bin");
    let mut bytes = std::fs::read(&weights).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x01; // the plan only hashes it
    std::fs::write(&weights, &bytes).unwrap();
    settle(&weights);
    let stale = work(&s.plan(&[]));
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert!(stale[0].2.contains("open_clip_pytorch_model.bin"), "{}", stale[0].2);
}
