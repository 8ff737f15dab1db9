//! `img2dataset` against an image host on 127.0.0.1 that serves real photographs and every failure a crawl
//! meets. Each row's status and message are checked exactly, the stats add up, and Python's webdataset and
//! pyarrow read the output.

use crate::common::{Backend, Sandbox, built, http, hub_mock, parquet_rows, venv_python, work};

/// Row shards must not depend on the store: this runs on a local folder and on S3.
mod local {
    #[test]
    fn row_shards_over_hf_dataset_files_are_stable_when_files_are_added() {
        super::row_shards_over_hf_dataset_files_are_stable_when_files_are_added(super::Backend::Local)
    }
}
mod s3 {
    #[test]
    fn row_shards_over_hf_dataset_files_are_stable_when_files_are_added() {
        super::row_shards_over_hf_dataset_files_are_stable_when_files_are_added(super::Backend::S3)
    }
}
use http::{Reply, Server};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet_rows::{Row, row, urls_parquet};
use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

const PHOTOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clip-golden/images");

fn photo(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(PHOTOS).join(name)).unwrap()
}

fn encode(img: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), format).unwrap();
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A PNG that declares 30,000 × 30,000 pixels in a few dozen bytes.
fn bomb() -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        png.extend(&body);
        png.extend(crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend(30_000u32.to_be_bytes());
    ihdr.extend(30_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    png
}

/// A 60×40 JPEG whose EXIF says "rotate 90° clockwise" (orientation 6): displayed 40×60.
fn exif_rotated() -> Vec<u8> {
    let img =
        image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(60, 40, |x, _| image::Rgb([(x * 4) as u8, 90, 30])));
    let jpeg = encode(&img, image::ImageFormat::Jpeg);
    let mut tiff = b"II*\x00\x08\x00\x00\x00".to_vec();
    tiff.extend(1u16.to_le_bytes());
    tiff.extend(0x0112u16.to_le_bytes());
    tiff.extend(3u16.to_le_bytes());
    tiff.extend(1u32.to_le_bytes());
    tiff.extend([6, 0, 0, 0]);
    tiff.extend(0u32.to_le_bytes());
    let mut app1 = b"Exif\x00\x00".to_vec();
    app1.extend(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend([0xff, 0xe1]);
    out.extend(((app1.len() + 2) as u16).to_be_bytes());
    out.extend(app1);
    out.extend(&jpeg[2..]);
    out
}

fn cmyk_jpeg() -> Vec<u8> {
    let (w, h) = (48usize, 32usize);
    let data: Vec<u8> = (0..w * h).flat_map(|i| [(i % 200) as u8, 40, 80, 10]).collect();
    let mut compressor = turbojpeg::Compressor::new().unwrap();
    compressor.set_colorspace(turbojpeg::Colorspace::CMYK).unwrap();
    compressor.set_quality(90).unwrap();
    let image =
        turbojpeg::Image { pixels: &data[..], width: w, pitch: w * 4, height: h, format: turbojpeg::PixelFormat::CMYK };
    compressor.compress_to_vec(image).unwrap()
}

fn animated_gif() -> Vec<u8> {
    use image::codecs::gif::GifEncoder;
    let mut out = Vec::new();
    {
        let mut enc = GifEncoder::new(&mut out);
        for shade in [0u8, 200] {
            let frame = image::RgbaImage::from_pixel(30, 20, image::Rgba([shade, 100, 50, 255]));
            enc.encode_frame(image::Frame::new(frame)).unwrap();
        }
    }
    out
}

/// The image host: every path is one behaviour.
fn image_host() -> Server {
    let coffee = photo("coffee.jpg");
    let gray = encode(
        &image::DynamicImage::ImageLuma8(image::open(Path::new(PHOTOS).join("camera_gray.png")).unwrap().to_luma8()),
        image::ImageFormat::Jpeg,
    );
    let (bomb, exif, cmyk, gif) = (bomb(), exif_rotated(), cmyk_jpeg(), animated_gif());
    let busy = Arc::new(AtomicUsize::new(0));
    Server::start(move |r| {
        let path = r.path();
        if let Some(name) = path.strip_prefix("/img/") {
            let kind = if name.ends_with(".png") { "image/png" } else { "image/jpeg" };
            return match std::fs::read(Path::new(PHOTOS).join(name)) {
                Ok(bytes) => Reply::ok(kind, bytes),
                Err(_) => Reply::status(404, "no such photo"),
            };
        }
        match path {
            "/404" => Reply::status(404, "not found"),
            "/500" => Reply::status(500, "boom"),
            "/busy" => {
                if busy.fetch_add(1, Ordering::SeqCst) == 0 {
                    Reply::status(503, "busy").with_header("Retry-After", "1")
                } else {
                    Reply::ok("image/jpeg", coffee.clone())
                }
            }
            "/slow" => Reply::Delay(Duration::from_secs(3), Box::new(Reply::ok("image/jpeg", coffee.clone()))),
            "/redirect" => Reply::status(302, "").with_header("Location", "/img/rocket_wide.jpg"),
            "/loop" => Reply::status(302, "").with_header("Location", "/loop"),
            "/to-metadata" => {
                Reply::status(302, "").with_header("Location", "http://169.254.169.254/latest/meta-data/")
            }
            "/html" => Reply::ok("text/html", "<html><body>not an image</body></html>"),
            "/truncated" => Reply::ok("image/jpeg", coffee[..coffee.len() / 3].to_vec()),
            "/empty" => Reply::ok("image/jpeg", Vec::new()),
            "/reset" => Reply::Cut {
                status: 200,
                headers: vec![("Content-Type".into(), "image/jpeg".into())],
                body: coffee.clone(),
                cut: 2000,
                reset: true,
            },
            "/bomb" => Reply::ok("image/png", bomb.clone()),
            "/noai" => Reply::ok("image/jpeg", coffee.clone()).with_header("X-Robots-Tag", "noai"),
            "/other-bot-noai" => Reply::ok("image/jpeg", coffee.clone()).with_header("X-Robots-Tag", "otherbot: noai"),
            "/cmyk" => Reply::ok("image/jpeg", cmyk.clone()),
            "/gray" => Reply::ok("image/jpeg", gray.clone()),
            "/exif" => Reply::ok("image/jpeg", exif.clone()),
            "/gif" => Reply::ok("image/gif", gif.clone()),
            _ => Reply::status(404, "unknown path"),
        }
    })
}

fn write_binary(sb: &Sandbox, rel: &str, bytes: &[u8]) {
    let path = sb.path(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    let past = SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(past).unwrap();
}

/// key → (status, error_message, width, height, original_width, original_height), and the column names.
type ParquetRow = (String, Option<String>, Option<i64>, Option<i64>, Option<i64>, Option<i64>);

/// A row of a shard's parquet: key, the checked fields, every cell as text.
type Parsed = (String, ParquetRow, BTreeMap<String, String>);

fn read_parquet(path: &Path) -> (Vec<String>, Vec<Parsed>) {
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let columns: Vec<String> =
        reader.metadata().file_metadata().schema_descr().columns().iter().map(|c| c.name().to_string()).collect();
    let mut rows = Vec::new();
    for r in reader.get_row_iter(None).unwrap() {
        let r = r.unwrap();
        let mut cells = BTreeMap::new();
        for (name, field) in r.get_column_iter() {
            cells.insert(name.clone(), field.to_string().trim_matches('"').to_string());
        }
        let s = |k: &str| Some(cells[k].clone()).filter(|v| v != "null");
        let n = |k: &str| s(k).map(|v| v.parse::<i64>().unwrap());
        rows.push((
            cells["key"].clone(),
            (
                cells["status"].clone(),
                s("error_message"),
                n("width"),
                n("height"),
                n("original_width"),
                n("original_height"),
            ),
            cells,
        ));
    }
    (columns, rows)
}

fn tar_members(path: &Path) -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, data)
        })
        .collect()
}

const SETTINGS: &str = r#"
caption_col = "caption"
save_additional_columns = ["similarity"]
image_size = 64
resize_mode = "border"
timeout = 1
retries = 1
allow_hosts = ["127.0.0.1"]
number_sample_per_shard = 100
"#;

#[test]
fn every_failure_a_crawl_meets_lands_in_the_parquet_with_its_status() {
    let host = image_host();
    let u = |p: &str| host.url(p);
    type Case<'a> = (String, &'a str, Option<&'a str>, Option<(i64, i64, i64, i64)>);
    let cases: Vec<Case> = vec![
        (u("/img/coffee.jpg"), "success", None, Some((64, 64, 600, 400))),
        (u("/img/chelsea.png"), "success", None, Some((64, 64, 451, 300))),
        (u("/404"), "failed_to_download", Some("HTTP Error 404: Not Found"), None),
        (u("/500"), "failed_to_download", Some("HTTP Error 500: Internal Server Error"), None),
        (u("/busy"), "success", None, Some((64, 64, 600, 400))),
        (u("/slow"), "failed_to_download", Some("timed out after 1s"), None),
        (u("/redirect"), "success", None, Some((64, 64, 640, 427))),
        (u("/loop"), "failed_to_download", Some("too many redirects (more than 10)"), None),
        (
            u("/to-metadata"),
            "failed_to_download",
            Some(
                "refused destination: 169.254.169.254 is a link-local address (allow it with allow_hosts or --allow-host)",
            ),
            None,
        ),
        (u("/html"), "failed_to_resize", Some("image decoding error: not an image format"), None),
        // A complete response carrying a cut file: img2dataset fails the row (issue 11 item 5).
        (
            u("/truncated"),
            "failed_to_resize",
            Some("image decoding error: truncated file: the JPEG ends before its end-of-image marker"),
            None,
        ),
        (u("/empty"), "failed_to_resize", Some("image decoding error: empty body"), None),
        (u("/reset"), "failed_to_download", Some("connection broken before the image was complete"), None),
        (u("/bomb"), "failed_to_resize", Some("image is 30000x30000 pixels, over the 89478485-pixel limit"), None),
        (u("/noai"), "failed_to_download", Some("Use of image disallowed by X-Robots-Tag directive"), None),
        (u("/other-bot-noai"), "success", None, Some((64, 64, 600, 400))),
        (
            "http://169.254.169.254/latest/meta-data/".into(),
            "failed_to_download",
            Some(
                "refused destination: 169.254.169.254 is a link-local address (allow it with allow_hosts or --allow-host)",
            ),
            None,
        ),
        (
            "file:///etc/passwd".into(),
            "failed_to_download",
            Some("refused destination: scheme `file` is not http(s)"),
            None,
        ),
        ("not a url".into(), "failed_to_download", Some("malformed URL: relative URL without a base"), None),
        ("http://".into(), "failed_to_download", Some("malformed URL: empty host"), None),
        (u("/img/chelsea.png"), "success", None, Some((64, 64, 451, 300))),
        (u("/cmyk"), "success", None, Some((64, 64, 48, 32))),
        (u("/gray"), "success", None, Some((64, 64, 512, 512))),
        (u("/img/astro_rgba.png"), "success", None, Some((64, 64, 200, 120))),
        (u("/exif"), "success", None, Some((64, 64, 40, 60))),
        (u("/gif"), "success", None, Some((64, 64, 30, 20))),
    ];
    let captions: Vec<String> = (0..cases.len()).map(|i| format!("caption {i}")).collect();
    let rows: Vec<Row> = cases.iter().zip(&captions).map(|((url, ..), c)| row(url, c)).collect();
    let sb = Sandbox::new(&format!(
        "[steps.urls]\nkind = \"files\"\npaths = \"urls.parquet\"\n\n[steps.images]\nkind = \"img2dataset\"\nfrom = \"urls\"\n{SETTINGS}"
    ));
    write_binary(&sb, "urls.parquet", &urls_parquet(&rows));

    let plan = sb.plan(&[]);
    assert_eq!(work(&plan).iter().map(|w| w.0.as_str()).collect::<Vec<_>>(), ["images/urls_00000"]);
    let summary = sb.build(&[]);
    assert_eq!(built(&summary), ["images/urls_00000"]);

    let dir = sb.store().join("pipeline/images");
    let (columns, got) = read_parquet(&dir.join("urls_00000.parquet"));
    assert_eq!(
        columns,
        [
            "similarity",
            "caption",
            "url",
            "key",
            "status",
            "error_message",
            "width",
            "height",
            "original_width",
            "original_height",
            "exif",
            "sha256"
        ]
    );
    assert_eq!(got.len(), cases.len());
    for (i, ((url, status, error, dims), (key, row, cells))) in cases.iter().zip(&got).enumerate() {
        assert_eq!(key, &format!("urls_00000{i:02}"), "row {i} ({url})");
        assert_eq!(&cells["url"], url, "row {i}");
        assert_eq!(cells["caption"], format!("caption {i}"));
        let expected_dims = dims.map(|(w, h, ow, oh)| (Some(w), Some(h), Some(ow), Some(oh)));
        assert_eq!(
            (row.0.as_str(), row.1.as_deref(), (row.2, row.3, row.4, row.5)),
            (*status, *error, expected_dims.unwrap_or((None, None, None, None))),
            "row {i}: {url}"
        );
        assert_eq!(cells["sha256"] != "null", row.0 != "failed_to_download", "row {i}: sha256 of what was downloaded");
    }

    // EXIF: the rotated JPEG's tags as exifread names them; a photo without EXIF has none.
    let exif_of = |suffix: &str| got.iter().find(|g| g.2["url"].ends_with(suffix)).unwrap().2["exif"].clone();
    let exif: serde_json::Value = serde_json::from_str(&exif_of("/exif").replace("\\\"", "\"")).unwrap();
    assert!(exif.get("Image Orientation").is_some(), "{exif}");
    assert_eq!(exif_of("/img/coffee.jpg"), "null");

    // The tar: successes only, KEY.jpg + KEY.json + KEY.txt, in key order of completion.
    let members = tar_members(&dir.join("urls_00000.tar"));
    let successes: Vec<&String> = got.iter().filter(|g| g.1.0 == "success").map(|g| &g.0).collect();
    assert_eq!(members.len(), successes.len() * 3);
    for key in &successes {
        let jpg = &members.iter().find(|(n, _)| *n == format!("{key}.jpg")).unwrap().1;
        let img = image::load_from_memory(jpg).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64));
        let json: serde_json::Value =
            serde_json::from_slice(&members.iter().find(|(n, _)| *n == format!("{key}.json")).unwrap().1).unwrap();
        assert_eq!(json["key"], key.as_str());
        assert_eq!(json["status"], "success");
        assert_eq!(json["similarity"], 0.3);
        let i: usize = key[10..].parse().unwrap();
        let txt = &members.iter().find(|(n, _)| *n == format!("{key}.txt")).unwrap().1;
        assert_eq!(String::from_utf8_lossy(txt), format!("caption {i}"));
    }
    // Alpha is composited on white: the RGBA photo's transparent corner is white.
    let rgba_key = &got.iter().find(|g| g.2["url"].ends_with("astro_rgba.png")).unwrap().0;
    let img = image::load_from_memory(&members.iter().find(|(n, _)| *n == format!("{rgba_key}.jpg")).unwrap().1)
        .unwrap()
        .to_rgb8();
    assert!(img.get_pixel(0, 0).0.iter().all(|&c| c > 240), "{:?}", img.get_pixel(0, 0));

    let stats: serde_json::Value =
        serde_json::from_str(&sb.read_store("pipeline/images/urls_00000_stats.json")).unwrap();
    let count = |s: &str| got.iter().filter(|g| g.1.0 == s).count() as u64;
    assert_eq!(stats["count"], cases.len() as u64);
    assert_eq!(stats["successes"], count("success"));
    assert_eq!(stats["failed_to_download"], count("failed_to_download"));
    assert_eq!(stats["failed_to_resize"], count("failed_to_resize"));
    let dict_total: u64 = stats["status_dict"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(dict_total, cases.len() as u64);
    assert_eq!(stats["status_dict"]["HTTP Error 404: Not Found"], 1);
    for k in ["duration", "start_time", "end_time"] {
        assert!(stats[k].as_f64().is_some(), "{k}");
    }

    // 503 with Retry-After: 1 was retried after a second, not before.
    let busy: Vec<Duration> = host.requests().iter().filter(|r| r.path() == "/busy").map(|r| r.at).collect();
    assert_eq!(busy.len(), 2);
    assert!(busy[1] - busy[0] >= Duration::from_millis(950), "{busy:?}");

    // Nothing was ever requested from the metadata address, and the second build does nothing.
    assert!(work(&sb.plan(&[])).is_empty());
}

#[test]
fn without_the_allow_list_loopback_is_refused_and_allow_host_opts_in() {
    let host = image_host();
    let sb = Sandbox::new(
        "[steps.urls]\nkind = \"files\"\npaths = \"urls.parquet\"\n\n[steps.images]\nkind = \"img2dataset\"\nfrom = \"urls\"\n",
    );
    write_binary(&sb, "urls.parquet", &urls_parquet(&[row(&host.url("/img/coffee.jpg"), "c")]));
    sb.build(&[]);
    let (_, got) = read_parquet(&sb.store().join("pipeline/images/urls_00000.parquet"));
    assert_eq!(
        got[0].1.1.as_deref(),
        Some("refused destination: 127.0.0.1 is a loopback address (allow it with allow_hosts or --allow-host)")
    );
    assert!(host.requests().is_empty());

    // --allow-host opts in for one run without changing any key: the refused row is retried, not the shard
    // rebuilt from scratch.
    assert_eq!(work(&sb.plan(&["--allow-host", "127.0.0.1"])), Vec::<(String, String, String)>::new());
    let summary = sb.build(&["--retry-failed", "images", "--allow-host", "127.0.0.1"]);
    assert_eq!(built(&summary), ["images/urls_00000"]);
    let (_, got) = read_parquet(&sb.store().join("pipeline/images/urls_00000.parquet"));
    assert_eq!((got[0].1.0.as_str(), got[0].1.1.as_deref()), ("success", None));
    assert_eq!(host.requests().len(), 1);
}

/// `max_image_bytes`: an image one byte over the cap fails to download with a fixed message, whether its
/// length is declared or it comes chunked without one, and without waiting for the rest of its body; an
/// image of exactly the cap succeeds either way.
#[test]
fn an_image_over_max_image_bytes_fails_to_download_without_being_read_whole() {
    let fits = photo("coffee.jpg");
    let cap = fits.len();
    // A JPEG decoder stops at the end-of-image marker: the byte after it only makes the file too large.
    let over = [fits.as_slice(), &[0]].concat();
    // Longer than the 1 s timeout: a client that waited for these bytes would report a timeout instead.
    let held_back = Duration::from_secs(5);
    let streamed = |pieces: Vec<(Duration, Vec<u8>)>, chunked: bool| Reply::Streamed {
        status: 200,
        headers: vec![("Content-Type".into(), "image/jpeg".into())],
        pieces,
        chunked,
    };
    let host = Server::start(move |r| match r.path() {
        "/fits" => Reply::ok("image/jpeg", fits.clone()),
        "/fits-chunked" => streamed(fits.chunks(16 << 10).map(|c| (Duration::ZERO, c.to_vec())).collect(), true),
        // Its Content-Length is over the cap; the body itself would come only after the timeout.
        "/declared" => streamed(vec![(held_back, over.clone())], false),
        // The whole image at once, then the end of the body held back.
        "/chunked" => {
            let mut pieces: Vec<_> = over.chunks(16 << 10).map(|c| (Duration::ZERO, c.to_vec())).collect();
            pieces.push((held_back, Vec::new()));
            streamed(pieces, true)
        }
        _ => Reply::status(404, "unknown path"),
    });
    let paths = ["/fits", "/declared", "/fits-chunked", "/chunked"];
    let urls: Vec<String> = paths.iter().map(|p| host.url(p)).collect();
    let rows: Vec<Row> = urls.iter().map(|u| row(u, "a coffee")).collect();
    let sb = Sandbox::new(&format!(
        "[steps.urls]\nkind = \"files\"\npaths = \"urls.parquet\"\n\n[steps.images]\nkind = \"img2dataset\"\nfrom = \"urls\"\n{SETTINGS}max_image_bytes = {cap}\n"
    ));
    write_binary(&sb, "urls.parquet", &urls_parquet(&rows));
    sb.build(&[]);

    let (_, got) = read_parquet(&sb.store().join("pipeline/images/urls_00000.parquet"));
    let too_large = format!("image is larger than {cap} bytes");
    let outcomes: Vec<(&str, &str, Option<&str>, bool)> =
        got.iter().map(|g| (g.2["url"].as_str(), g.1.0.as_str(), g.1.1.as_deref(), g.2["sha256"] != "null")).collect();
    assert_eq!(
        outcomes,
        [
            (urls[0].as_str(), "success", None, true),
            (urls[1].as_str(), "failed_to_download", Some(too_large.as_str()), false),
            (urls[2].as_str(), "success", None, true),
            (urls[3].as_str(), "failed_to_download", Some(too_large.as_str()), false),
        ]
    );
    // Too large is final: no retry asked for the same bytes again.
    let mut asked: Vec<String> = host.requests().iter().map(|r| r.path().to_string()).collect();
    asked.sort();
    assert_eq!(asked, ["/chunked", "/declared", "/fits", "/fits-chunked"]);
}

fn row_shards_over_hf_dataset_files_are_stable_when_files_are_added(backend: Backend) {
    let host = image_host();
    let hub = hub_mock::HubMock::start("laion/tiny");
    let file = |n: usize| {
        let urls: Vec<String> = (0..n).map(|i| host.url(if i % 2 == 0 { "/img/coffee.jpg" } else { "/404" })).collect();
        let rows: Vec<Row> = urls.iter().map(|u| row(u, "x")).collect();
        urls_parquet(&rows)
    };
    hub.commit(&[("data/a.parquet", Some(file(5)))]);
    let mut sb = Sandbox::on(
        backend,
        "[steps.meta]\nkind = \"hf-dataset\"\nrepo = \"laion/tiny\"\n\n[steps.images]\nkind = \"img2dataset\"\nfrom = \"meta\"\n\
         caption_col = \"caption\"\nimage_size = 32\nallow_hosts = [\"127.0.0.1\"]\nnumber_sample_per_shard = 2\n",
    );
    sb.env.push(("HF_ENDPOINT".into(), hub.endpoint()));
    let plan = sb.plan(&[]);
    assert_eq!(plan["steps"][1]["unknown"], "row counts are known once meta/data/a.parquet is built");
    let summary = sb.build(&[]);
    assert_eq!(
        built(&summary),
        ["images/data~2Fa_00000", "images/data~2Fa_00001", "images/data~2Fa_00002", "meta/data/a.parquet"]
    );
    let m: serde_json::Value =
        serde_json::from_str(&sb.read_store("pipeline/images/_dsmake/data~2Fa_00002.json")).unwrap();
    assert_eq!((m["rows"].as_u64(), m["failures"].as_u64()), (Some(1), Some(0)));
    let (_, got) = read_parquet(&sb.store().join("pipeline/images/data~2Fa_00001.parquet"));
    assert_eq!(got.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(), ["data~2Fa_000010", "data~2Fa_000011"]);

    hub.commit(&[("data/b.parquet", Some(file(2)))]);
    let summary = sb.build(&[]);
    assert_eq!(built(&summary), ["images/data~2Fb_00000", "meta/data/b.parquet"]);
}

#[test]
fn python_webdataset_and_pyarrow_read_the_output() {
    let host = image_host();
    let urls = [host.url("/img/coffee.jpg"), host.url("/404"), host.url("/img/astronaut.png"), host.url("/gray")];
    let rows: Vec<Row> = urls.iter().map(|u| row(u, "a photo")).collect();
    let sb = Sandbox::new(&format!(
        "[steps.urls]\nkind = \"files\"\npaths = \"urls.parquet\"\n\n[steps.images]\nkind = \"img2dataset\"\nfrom = \"urls\"\n{SETTINGS}"
    ));
    write_binary(&sb, "urls.parquet", &urls_parquet(&rows));
    sb.build(&[]);
    let stdout = venv_python("check_webdataset.py", &[&sb.store().join("pipeline/images")]);
    assert!(stdout.contains("ok: 1 shards, 3 samples, 4 rows"), "{stdout}");
}

/// img2dataset's #358: `--retry-failed` re-attempts only the failed downloads of a built shard. Successes keep
/// their tar members byte for byte without a request, an image that cannot be decoded keeps its verdict,
/// and what reads the shard is rebuilt because the shard's key changes.
#[test]
fn retry_failed_attempts_only_the_failed_downloads_and_rebuilds_what_reads_them() {
    let down = Arc::new(AtomicUsize::new(1));
    let coffee = photo("coffee.jpg");
    let host = {
        let down = down.clone();
        Server::start(move |r| match r.path() {
            "/coffee" => Reply::ok("image/jpeg", coffee.clone()),
            "/flaky" | "/flaky-too" if down.load(Ordering::SeqCst) == 1 => Reply::status(500, "down"),
            "/flaky" | "/flaky-too" => Reply::ok("image/jpeg", coffee.clone()),
            "/html" => Reply::ok("text/html", "<html></html>"),
            _ => Reply::status(404, "unknown path"),
        })
    };
    let paths = ["/coffee", "/flaky", "/html", "/flaky-too", "/gone"];
    let urls: Vec<String> = paths.iter().map(|p| host.url(p)).collect();
    let rows: Vec<Row> = urls.iter().map(|u| row(u, "a coffee")).collect();
    let sb = Sandbox::new(&format!(
        "[steps.urls]\nkind = \"files\"\npaths = \"urls.parquet\"\n\n[steps.images]\nkind = \"img2dataset\"\n\
         from = \"urls\"\n{SETTINGS}\n[steps.listing]\nkind = \"command\"\nfrom = \"images\"\n\
         run = 'for f in {{input}}; do case $f in *.tar) tar tf $f;; esac; done | sort > {{output}}'\noutputs = \"{{stem}}.txt\"\n"
    ));
    write_binary(&sb, "urls.parquet", &urls_parquet(&rows));
    sb.build(&[]);
    let tar = sb.store().join("pipeline/images/urls_00000.tar");
    let before = tar_members(&tar);
    assert_eq!(
        before.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["urls_0000000.jpg", "urls_0000000.json", "urls_0000000.txt"]
    );
    let manifest = |sb: &Sandbox| -> serde_json::Value {
        serde_json::from_str(&sb.read_store("pipeline/images/_dsmake/urls_00000.json")).unwrap()
    };
    assert_eq!((manifest(&sb)["failures"].as_u64(), manifest(&sb)["retryable"].as_u64()), (Some(4), Some(3)));

    // A plain plan has nothing to do; --retry-failed names the rows and what follows.
    assert_eq!(work(&sb.plan(&[])), Vec::<(String, String, String)>::new());
    assert_eq!(
        work(&sb.plan(&["--retry-failed", "images"])),
        [
            ("images/urls_00000".into(), "stale".into(), "retrying 3 failed rows (--retry-failed images)".into()),
            ("listing/urls_00000".into(), "blocked".into(), "input images/urls_00000 changed".into()),
        ]
    );

    down.store(0, Ordering::SeqCst);
    host.clear();
    let summary = sb.build(&["--retry-failed", "images"]);
    assert_eq!(built(&summary), ["images/urls_00000", "listing/urls_00000"]);
    let mut asked: Vec<String> = host.requests().iter().map(|r| r.path().to_string()).collect();
    asked.sort();
    assert_eq!(asked, ["/flaky", "/flaky-too", "/gone"]);

    let after = tar_members(&tar);
    let names: Vec<&str> = after.iter().map(|(n, _)| n.as_str()).collect();
    for key in ["urls_0000000", "urls_0000001", "urls_0000003"] {
        for ext in ["jpg", "json", "txt"] {
            assert!(names.contains(&format!("{key}.{ext}").as_str()), "{key}.{ext} missing from {names:?}");
        }
    }
    assert_eq!(after.len(), 9);
    for (name, bytes) in &before {
        assert_eq!(after.iter().find(|(n, _)| n == name).map(|(_, b)| b), Some(bytes), "{name} changed");
    }
    let (_, got) = read_parquet(&sb.store().join("pipeline/images/urls_00000.parquet"));
    let statuses: Vec<(&str, &str, Option<&str>)> =
        got.iter().map(|g| (g.0.as_str(), g.1.0.as_str(), g.1.1.as_deref())).collect();
    assert_eq!(
        statuses,
        [
            ("urls_0000000", "success", None),
            ("urls_0000001", "success", None),
            ("urls_0000002", "failed_to_resize", Some("image decoding error: not an image format")),
            ("urls_0000003", "success", None),
            ("urls_0000004", "failed_to_download", Some("HTTP Error 404: Not Found")),
        ]
    );
    let stats: serde_json::Value =
        serde_json::from_str(&sb.read_store("pipeline/images/urls_00000_stats.json")).unwrap();
    assert_eq!((stats["count"].as_u64(), stats["successes"].as_u64()), (Some(5), Some(3)));
    assert_eq!((manifest(&sb)["failures"].as_u64(), manifest(&sb)["retryable"].as_u64()), (Some(2), Some(1)));
    assert_eq!(manifest(&sb)["retry"]["attempt"], 1);
    assert!(sb.read_store("pipeline/listing/urls_00000.txt").contains("urls_0000003.jpg"));

    // The retried shard is fresh for a plain plan; a second retry is attempt 2, and a kind without failed
    // rows says so.
    assert_eq!(work(&sb.plan(&[])), Vec::<(String, String, String)>::new());
    host.clear();
    let summary = sb.build(&["--retry-failed", "images"]);
    assert_eq!(built(&summary), ["images/urls_00000", "listing/urls_00000"]);
    assert_eq!(host.requests().iter().map(|r| r.path().to_string()).collect::<Vec<_>>(), ["/gone"]);
    assert_eq!(manifest(&sb)["retry"]["attempt"], 2);
    let run = sb.run(&["plan", "--retry-failed", "listing"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "--retry-failed listing: a `command` step has no failed rows to retry (use --force listing to rebuild it)"
        ),
        "{}",
        run.stderr
    );
}

// ---------------------------------------------------------------------------------------------------------
// Item 1: the EXIF memory bomb.

/// A 1×1 PNG whose EXIF has `entries` invented tags all pointing at one `blob_len`-byte BYTE value, after a
/// camera's Make. Written by hand: a little-endian TIFF, IFD0 only.
fn exif_bomb_png(entries: u16, blob_len: u32) -> Vec<u8> {
    let make = b"Canon\0";
    let ifd_len = 2 + 12 * (usize::from(entries) + 1) + 4;
    let make_at = (8 + ifd_len) as u32;
    let blob_at = make_at + make.len() as u32;
    let mut tiff = b"II\x2a\x00\x08\x00\x00\x00".to_vec();
    tiff.extend((entries + 1).to_le_bytes());
    let mut entry = |tag: u16, typ: u16, count: u32, at: u32| {
        for part in [&tag.to_le_bytes()[..], &typ.to_le_bytes(), &count.to_le_bytes(), &at.to_le_bytes()] {
            tiff.extend_from_slice(part);
        }
    };
    entry(0x010f, 2, make.len() as u32, make_at);
    for i in 0..entries {
        entry(0xc000 + i, 1, blob_len, blob_at);
    }
    tiff.extend(0u32.to_le_bytes());
    tiff.extend(make);
    tiff.extend(std::iter::repeat_n(b'A', blob_len as usize));

    use image::ImageEncoder;
    let mut png = Vec::new();
    let mut encoder = image::codecs::png::PngEncoder::new(&mut png);
    encoder.set_exif_metadata(tiff).unwrap();
    encoder.write_image(&[200, 100, 50], 1, 1, image::ExtendedColorType::Rgb8).unwrap();
    png
}

#[test]
fn hostile_exif_is_rendered_within_its_budget_and_the_row_succeeds() {
    // The issue's file: 300 entries sharing one 200 KB value (1.5 GB of RSS and a 241 MB tar before).
    let png = exif_bomb_png(300, 200_000);
    let host = Server::start(move |_| Reply::ok("image/png", png.clone()));
    let url = host.url("/bomb.png");
    let sb = Sandbox::new(
        "[steps.urls]\nkind = \"files\"\npaths = \"urls.parquet\"\n\n[steps.images]\nkind = \"img2dataset\"\n\
         from = \"urls\"\nimage_size = 16\nallow_hosts = [\"127.0.0.1\"]\n",
    );
    write_binary(&sb, "urls.parquet", &urls_parquet(&[row(&url, "a"), row(&url, "b")]));
    assert_eq!(built(&sb.build(&[])), ["images/urls_00000"]);

    let dir = sb.store().join("pipeline/images");
    let (_, got) = read_parquet(&dir.join("urls_00000.parquet"));
    for (key, (status, error, ..), cells) in &got {
        assert_eq!((status.as_str(), error), ("success", &None), "{key}");
        let exif = &cells["exif"];
        assert!(exif.len() <= 17 * 1024, "{key}: {} bytes of EXIF", exif.len());
        // Normal tags still render; the budget's note says what it left out.
        assert!(exif.contains("Image Make"), "{exif:.300}");
        assert!(exif.contains("dsmake left out"), "{exif:.300}");
    }
    let tar = std::fs::metadata(dir.join("urls_00000.tar")).unwrap().len();
    assert!(tar < 200_000, "the tar holds {tar} bytes for two 1×1 images");
}

// ---------------------------------------------------------------------------------------------------------
// Item 2: shard ids that collide.

#[test]
fn input_files_whose_names_differ_only_in_dots_and_slashes_get_their_own_shards() {
    let host = Server::start(|_| Reply::status(404, "not found"));
    let sb = Sandbox::new(
        "[steps.urls]\nkind = \"files\"\npaths = \"data/**/*.parquet\"\n\n[steps.images]\nkind = \"img2dataset\"\n\
         from = \"urls\"\nallow_hosts = [\"127.0.0.1\"]\nretries = 0\n",
    );
    // Dask's part.N.parquet, and a file in a folder beside one with an underscore: each pair was one shard.
    let files = ["part.0.parquet", "part.1.parquet", "a/b.parquet", "a_b.parquet", "plain.parquet"];
    for name in files {
        let url = host.url(&format!("/{name}"));
        write_binary(&sb, &format!("data/{name}"), &urls_parquet(&[row(&url, name)]));
    }
    let summary = sb.build(&[]);
    assert_eq!(
        built(&summary),
        [
            "images/a_b_00000",
            "images/a~2Fb_00000",
            "images/part~2E0_00000",
            "images/part~2E1_00000",
            "images/plain_00000"
        ]
    );
    // Each shard holds its own file's row, and a second plan finds everything fresh (no shard keeps
    // replacing another's).
    for (shard, name) in [
        ("a_b_00000", "a_b.parquet"),
        ("a~2Fb_00000", "a/b.parquet"),
        ("part~2E0_00000", "part.0.parquet"),
        ("part~2E1_00000", "part.1.parquet"),
        ("plain_00000", "plain.parquet"),
    ] {
        let (_, got) = read_parquet(&sb.store().join(format!("pipeline/images/{shard}.parquet")));
        assert_eq!(got.len(), 1, "{shard}");
        assert_eq!(got[0].2["url"], host.url(&format!("/{name}")), "{shard}");
        assert_eq!(got[0].0, format!("{shard}0000"), "{shard}: the key starts with the shard id");
    }
    assert!(work(&sb.plan(&[])).is_empty(), "{:?}", work(&sb.plan(&[])));
}

#[test]
fn two_shards_with_one_id_are_refused_at_plan_time_naming_both_files() {
    // `x` and `x.parquet` both give shards `x_…`: the one pair the id scheme leaves alike.
    let sb = Sandbox::new(
        "[steps.urls]\nkind = \"files\"\npaths = \"data/*\"\n\n[steps.images]\nkind = \"img2dataset\"\n\
         from = \"urls\"\nallow_hosts = [\"127.0.0.1\"]\n",
    );
    for name in ["x", "x.parquet"] {
        write_binary(&sb, &format!("data/{name}"), &urls_parquet(&[row("http://127.0.0.1:9/x.jpg", name)]));
    }
    let run = sb.run(&["plan"]);
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(run.stderr.contains("step `images` has two shards named `x_00000`"), "{}", run.stderr);
    assert!(run.stderr.contains("urls/x (file data/x)"), "{}", run.stderr);
    assert!(run.stderr.contains("urls/x.parquet (file data/x.parquet)"), "{}", run.stderr);
    // Nothing was built or published.
    assert!(!sb.store().join("pipeline/images").exists());
}

// ---------------------------------------------------------------------------------------------------------
// Item 8: proxies around the destination checks. Every socket here is on 127.0.0.1.

/// A CONNECT proxy on 127.0.0.1 that records what it was asked for and tunnels only to 127.0.0.1 (a name
/// it resolves itself: `localhost`), never anywhere else.
struct ConnectProxy {
    url: String,
    asked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ConnectProxy {
    fn start() -> ConnectProxy {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let asked: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let log = asked.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(client.try_clone().unwrap());
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap() == 0 || header == "\r\n" {
                            break;
                        }
                    }
                    log.lock().unwrap().push(line.trim().to_string());
                    let mut client = client;
                    let target = line.split_whitespace().nth(1).unwrap_or_default().to_string();
                    let port = target.rsplit_once(':').and_then(|(host, port)| {
                        matches!(host, "localhost" | "127.0.0.1").then(|| port.parse::<u16>().ok()).flatten()
                    });
                    let Some(port) = port.filter(|_| line.starts_with("CONNECT ")) else {
                        let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
                        return;
                    };
                    let upstream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                    client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").unwrap();
                    let (mut up_read, mut up_write) = (upstream.try_clone().unwrap(), upstream);
                    let mut down_write = client.try_clone().unwrap();
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut up_read, &mut down_write);
                    });
                    // Bytes the client sent after its CONNECT head may sit in the reader's buffer.
                    let _ = up_write.write_all(reader.buffer());
                    let _ = std::io::copy(reader.get_mut(), &mut up_write);
                });
            }
        });
        ConnectProxy { url, asked }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

fn coffee() -> Vec<u8> {
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clip-golden/images/coffee.jpg")).unwrap()
}

#[test]
fn downloads_ignore_the_environment_s_proxy_variables() {
    let photo = coffee();
    let host = Server::start(move |_| Reply::ok("image/jpeg", photo.clone()));
    let proxy = ConnectProxy::start();
    let mut sb = Sandbox::new(
        "[steps.urls]\nkind = \"files\"\npaths = \"urls.parquet\"\n\n[steps.images]\nkind = \"img2dataset\"\n\
         from = \"urls\"\nimage_size = 16\nallow_hosts = [\"127.0.0.1\"]\n",
    );
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        sb.env.push((var.into(), proxy.url.clone()));
    }
    sb.env.push(("NO_PROXY".into(), String::new()));
    sb.env.push(("no_proxy".into(), String::new()));
    write_binary(&sb, "urls.parquet", &urls_parquet(&[row(&host.url("/coffee.jpg"), "c")]));
    sb.build(&[]);
    let (_, got) = read_parquet(&sb.store().join("pipeline/images/urls_00000.parquet"));
    assert_eq!((got[0].1.0.as_str(), &got[0].1.1), ("success", &None));
    assert_eq!(host.requests().len(), 1);
    assert!(proxy.asked().is_empty(), "{:?}", proxy.asked());
}

#[test]
fn dsmake_proxy_takes_every_download_and_the_destination_checks() {
    let photo = coffee();
    let host = Server::start(move |_| Reply::ok("image/jpeg", photo.clone()));
    let proxy = ConnectProxy::start();
    // No allow-list: without the proxy, `localhost` is refused as a loopback address.
    let mut sb = Sandbox::new(
        "[steps.urls]\nkind = \"files\"\npaths = \"urls.parquet\"\n\n[steps.images]\nkind = \"img2dataset\"\n\
         from = \"urls\"\nimage_size = 16\nretries = 0\n",
    );
    let by_name = format!("http://localhost:{}/coffee.jpg", host.addr.port());
    // An IP literal dsmake refuses is still refused here, before any request: the proxy never sees it.
    let literal = "http://[::ffff:10.0.0.1]/x.jpg";
    write_binary(&sb, "urls.parquet", &urls_parquet(&[row(&by_name, "by name"), row(literal, "literal")]));
    let before = sb.build(&[]);
    assert_eq!(built(&before), ["images/urls_00000"]);
    let (_, got) = read_parquet(&sb.store().join("pipeline/images/urls_00000.parquet"));
    assert!(got[0].1.1.as_deref().unwrap_or_default().contains("is a loopback address"), "{:?}", got[0].1);
    assert!(proxy.asked().is_empty());

    sb.env.push(("DSMAKE_PROXY".into(), proxy.url.clone()));
    sb.build(&["--retry-failed", "images"]);
    let (_, got) = read_parquet(&sb.store().join("pipeline/images/urls_00000.parquet"));
    assert_eq!((got[0].1.0.as_str(), &got[0].1.1), ("success", &None), "{:?}", got[0]);
    assert_eq!(
        got[1].1.1.as_deref(),
        Some(
            "refused destination: ::ffff:10.0.0.1 is a private address (10.0.0.1 in IPv4-mapped form) (allow it \
             with allow_hosts or --allow-host)"
        )
    );
    assert_eq!(proxy.asked(), [format!("CONNECT localhost:{} HTTP/1.1", host.addr.port())]);
    assert_eq!(host.requests().len(), 1);

    // A proxy dsmake cannot use is an error that names the variable and hides the password.
    sb.env.push(("DSMAKE_PROXY".into(), "socks5://user:hunter2@127.0.0.1:1080".into()));
    let run = sb.run(&["build", "--force", "images"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("DSMAKE_PROXY `127.0.0.1:1080` is a Socks5 proxy"), "{}", run.stderr);
    assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
}

#[test]
fn a_caption_or_url_that_is_not_utf8_costs_its_row_at_most_and_no_message_holds_its_bytes() {
    let photo = coffee();
    let host = Server::start(move |_| Reply::ok("image/jpeg", photo.clone()));
    let (a, b) = (host.url("/a.jpg"), host.url("/b.jpg"));
    // Latin-1 "café" (a common mis-encoding in scraped captions), and a URL with a byte that is no UTF-8.
    let bad_url = [host.url("/").as_bytes(), b"\xff.jpg"].concat();
    let sb = Sandbox::new(
        "[steps.urls]\nkind = \"files\"\npaths = \"urls.parquet\"\n\n[steps.images]\nkind = \"img2dataset\"\n\
         from = \"urls\"\ncaption_col = \"caption\"\nimage_size = 16\nallow_hosts = [\"127.0.0.1\"]\nretries = 0\n",
    );
    let rows: [(&[u8], &[u8]); 3] =
        [(a.as_bytes(), b"fine"), (b.as_bytes(), b"caf\xe9 au lait"), (&bad_url, b"lost url")];
    write_binary(&sb, "urls.parquet", &parquet_rows::urls_parquet_bytes(&rows));
    // `build` asserts that the build succeeds: before, the shard failed on every build.
    assert_eq!(built(&sb.build(&[])), ["images/urls_00000"]);

    let dir = sb.store().join("pipeline/images");
    let (_, got) = read_parquet(&dir.join("urls_00000.parquet"));
    let by_caption = |c: &str| got.iter().find(|r| r.2["caption"] == c).unwrap_or_else(|| panic!("{c}: {got:?}"));
    assert_eq!(by_caption("fine").1.0, "success");
    // The caption is kept as read, U+FFFD in place of the byte, and its row succeeds.
    let lossy = by_caption("caf\u{fffd} au lait");
    assert_eq!((lossy.1.0.as_str(), &lossy.1.1), ("success", &None));
    // The URL's row fails alone, and nothing was fetched for it.
    let lost = by_caption("lost url");
    assert_eq!(lost.1.0, "failed_to_download");
    let at = host.url("/").len();
    assert_eq!(lost.1.1.as_deref(), Some(format!("the URL is not valid UTF-8 (at byte {at})").as_str()));
    assert_eq!(host.requests().len(), 2, "{:?}", host.requests());
    // The caption's .txt holds the decoded text.
    let members = tar_members(&dir.join("urls_00000.tar"));
    assert!(members.iter().any(|(n, d)| n.ends_with(".txt") && d == "caf\u{fffd} au lait".as_bytes()), "{members:?}");
    // The note: where each cell was, an escaped excerpt, never the bytes.
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("urls_00000_stats.json")).unwrap()).unwrap();
    let note = &stats["invalid_utf8"];
    assert_eq!(note["cells"], 2, "{stats}");
    assert_eq!(note["first"][0]["column"], "caption");
    assert_eq!(note["first"][0]["byte"], 3);
    assert_eq!(note["first"][0]["excerpt"], "caf\\xe9 au lait");
    assert_eq!(note["first"][1]["column"], "url");
    assert_eq!(stats["failed_to_download"], 1);
}

// ---------------------------------------------------------------------------------------------------------
// Items 4 and 5: absurd dimensions, many scans, cut files.

/// A GIF with a `w`×`h` logical screen and one 1×1 frame, written by hand: 35 bytes.
fn gif_screen(w: u16, h: u16) -> Vec<u8> {
    let mut g = b"GIF89a".to_vec();
    g.extend(w.to_le_bytes());
    g.extend(h.to_le_bytes());
    g.extend([0x80, 0, 0, 0, 0, 0, 255, 255, 255]); // a global table of two colours
    g.extend([0x2c, 0, 0, 0, 0, 1, 0, 1, 0, 0]); // a 1×1 frame at 0,0
    g.extend([2, 2, 0x44, 0x01, 0, 0x3b]); // its LZW data, the trailer
    g
}

/// A progressive JPEG of a photo, its last scan repeated 200 times before the end-of-image marker: a few
/// KB that would make a decoder walk the whole image 200 more times.
fn many_scans_jpeg() -> Vec<u8> {
    let img = image::open(Path::new(PHOTOS).join("coffee.jpg")).unwrap().to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut c = turbojpeg::Compressor::new().unwrap();
    c.set_progressive(true).unwrap();
    let image = turbojpeg::Image {
        pixels: img.as_raw().as_slice(),
        width: w,
        pitch: w * 3,
        height: h,
        format: turbojpeg::PixelFormat::RGB,
    };
    let jpeg = c.compress_to_vec(image).unwrap();
    let eoi = jpeg.len() - 2;
    let last_sos = jpeg.windows(2).rposition(|p| p == [0xff, 0xda]).unwrap();
    let mut out = jpeg[..eoi].to_vec();
    for _ in 0..200 {
        out.extend_from_slice(&jpeg[last_sos..eoi]);
    }
    out.extend_from_slice(&jpeg[eoi..]);
    out
}

fn many_frames_gif() -> Vec<u8> {
    use image::codecs::gif::GifEncoder;
    let mut out = Vec::new();
    {
        let mut enc = GifEncoder::new(&mut out);
        let frames = (0..400u32).map(|i| {
            image::Frame::new(image::RgbaImage::from_pixel(64, 64, image::Rgba([(i % 256) as u8, 0, 0, 255])))
        });
        enc.encode_frames(frames).unwrap();
    }
    out
}

#[test]
fn absurd_dimensions_many_scans_and_cut_files_fail_to_resize_with_what_is_wrong() {
    let coffee = photo("coffee.jpg");
    let chelsea = image::open(Path::new(PHOTOS).join("chelsea.png")).unwrap();
    let png = encode(&chelsea, image::ImageFormat::Png);
    let webp = encode(&chelsea, image::ImageFormat::WebP);
    let files: Vec<(&str, &str, Vec<u8>)> = vec![
        ("/coffee.jpg", "image/jpeg", coffee.clone()),
        ("/zero.gif", "image/gif", gif_screen(0, 9000)),
        ("/strip.gif", "image/gif", gif_screen(1, 9000)),
        ("/frames.gif", "image/gif", many_frames_gif()),
        ("/scans.jpg", "image/jpeg", many_scans_jpeg()),
        ("/cut.jpg", "image/jpeg", coffee[..coffee.len() / 2].to_vec()),
        ("/cut.png", "image/png", png[..png.len() - 1].to_vec()),
        ("/cut.webp", "image/webp", webp[..webp.len() * 2 / 3].to_vec()),
    ];
    let served = files.clone();
    let host = Server::start(move |r| match served.iter().find(|(p, ..)| *p == r.path()) {
        Some((_, kind, bytes)) => Reply::ok(kind, bytes.clone()),
        None => Reply::status(404, "unknown path"),
    });
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Option<(i64, i64, i64, i64)>);
    let cases: Vec<Case> = vec![
        ("/coffee.jpg", "success", None, Some((256, 256, 600, 400))),
        ("/zero.gif", "failed_to_resize", Some("image is 0x9000 pixels: a side is zero"), None),
        (
            "/strip.gif",
            "failed_to_resize",
            Some(
                "resizing 1x9000 to 256 px (center_crop) would make 256x2304000 pixels, over the 89478485-pixel limit",
            ),
            None,
        ),
        // Only the first frame of an animation is decoded, as OpenCV does.
        ("/frames.gif", "success", None, Some((256, 256, 64, 64))),
        ("/scans.jpg", "failed_to_resize", Some("image decoding error: progressive JPEG with over 100 scans"), None),
        (
            "/cut.jpg",
            "failed_to_resize",
            Some("image decoding error: truncated file: the JPEG ends before its end-of-image marker"),
            None,
        ),
        (
            "/cut.png",
            "failed_to_resize",
            Some("image decoding error: truncated file: the PNG ends before its IEND chunk"),
            None,
        ),
        (
            "/cut.webp",
            "failed_to_resize",
            Some("image decoding error: truncated file: the WebP ends before the size its RIFF header gives"),
            None,
        ),
    ];
    let urls: Vec<String> = cases.iter().map(|c| host.url(c.0)).collect();
    let rows: Vec<Row> = urls.iter().map(|u| row(u, "c")).collect();
    // The README's LAION example: center_crop to 256 px.
    let sb = Sandbox::new(
        "[steps.urls]\nkind = \"files\"\npaths = \"urls.parquet\"\n\n[steps.images]\nkind = \"img2dataset\"\n\
         from = \"urls\"\nimage_size = 256\nresize_mode = \"center_crop\"\nallow_hosts = [\"127.0.0.1\"]\n",
    );
    write_binary(&sb, "urls.parquet", &urls_parquet(&rows));
    assert_eq!(built(&sb.build(&[])), ["images/urls_00000"]);

    let (_, got) = read_parquet(&sb.store().join("pipeline/images/urls_00000.parquet"));
    assert_eq!(got.len(), cases.len());
    for ((path, status, error, dims), (_, row, cells)) in cases.iter().zip(&got) {
        assert!(cells["url"].ends_with(path), "rows in input order");
        let expected_dims = dims.map(|(w, h, ow, oh)| (Some(w), Some(h), Some(ow), Some(oh)));
        assert_eq!(
            (row.0.as_str(), row.1.as_deref(), (row.2, row.3, row.4, row.5)),
            (*status, *error, expected_dims.unwrap_or((None, None, None, None))),
            "{path}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// Item 9: one memory budget per build.

/// A photo-like test card (gradients, a grid, noise), so that it compresses like a photograph.
fn noisy_card(w: u32, h: u32, seed: u32) -> image::DynamicImage {
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let noise = (state >> 26) as u8;
        let grid = if (x / 37 + y / 23) % 2 == 0 { 50 } else { 0 };
        let (r, g) = ((x * 190 / w) as u8, (y * 190 / h) as u8);
        image::Rgb([r + noise, g + grid, (seed * 20) as u8 + noise / 2])
    }))
}

/// Four shards built at once (`--net-jobs 4`) share one budget: with `--memory 4MiB` the bytes the build held
/// at once (requests' buffers, bodies waiting to be decoded, the pixels of decodes) stay within 4 MiB, but for
/// the one body at a time that may always grow (the oldest, so that growing bodies never wait on each other),
/// where an unbounded build of the same rows holds several times that; and the outputs are the same. Bodies come with a
/// Content-Length and without one (chunked), as PNGs (reduced in blocks as their rows are inflated) and JPEGs
/// (scaled while decoding).
#[test]
fn shards_built_at_once_share_one_memory_budget_and_stay_within_it() {
    let jpegs: Vec<Vec<u8>> =
        (0..3).map(|i| encode(&noisy_card(1200 + 40 * i, 900, i), image::ImageFormat::Jpeg)).collect();
    let png = encode(&noisy_card(800, 600, 7), image::ImageFormat::Png);
    let small = encode(&noisy_card(640, 480, 9), image::ImageFormat::Jpeg);
    assert!(png.len() > 500_000 && small.len() < 200_000, "{} {}", png.len(), small.len());
    // The most one request holds: its connection's buffers (256 KiB) and the largest body, a byte over.
    let one_request = (256 << 10) + png.len() as u64 + 1;
    let host = Server::start(move |r| {
        let i: usize = r.path().trim_start_matches("/img/").parse().unwrap_or(0);
        match i % 4 {
            0 => Reply::ok("image/png", png.clone()),
            1 => Reply::Streamed {
                status: 200,
                headers: vec![("Content-Type".into(), "image/jpeg".into())],
                pieces: vec![(Duration::ZERO, small.clone())],
                chunked: true,
            },
            _ => Reply::ok("image/jpeg", jpegs[i % 3].clone()),
        }
    });
    let urls: Vec<String> = (0..48).map(|i| host.url(&format!("/img/{i}"))).collect();
    let rows: Vec<Row> = urls.iter().map(|u| row(u, "a photo")).collect();
    let pipeline = "[steps.urls]\nkind = \"files\"\npaths = \"urls.parquet\"\n\n[steps.images]\n\
                    kind = \"img2dataset\"\nfrom = \"urls\"\nimage_size = 64\nnumber_sample_per_shard = 12\n\
                    per_host_connections = 2\nallow_hosts = [\"127.0.0.1\"]\n";
    let build = |memory: &str| {
        let sb = Sandbox::new(pipeline);
        write_binary(&sb, "urls.parquet", &urls_parquet(&rows));
        let summary = sb.build(&["--memory", memory, "-j", "2", "--net-jobs", "4"]);
        assert_eq!(built(&summary).len(), 4, "{summary}");
        let m = &summary["memory"];
        let (budget, peak) = (m["budget_bytes"].as_u64().unwrap(), m["peak_bytes"].as_u64().unwrap());
        assert_eq!(m["decode_slots"], 2);
        let dir = sb.store().join("pipeline/images");
        let mut outputs = BTreeMap::new();
        for part in 0..4 {
            let shard = format!("urls_{part:05}");
            let (_, parsed) = read_parquet(&dir.join(format!("{shard}.parquet")));
            assert!(parsed.iter().all(|(_, (status, ..), _)| status == "success"), "{parsed:?}");
            outputs.insert(format!("{shard}.parquet"), std::fs::read(dir.join(format!("{shard}.parquet"))).unwrap());
            // Members go in as images finish, so their order differs between builds; their bytes do not.
            for (name, bytes) in tar_members(&dir.join(format!("{shard}.tar"))) {
                outputs.insert(name, bytes);
            }
        }
        (budget, peak, outputs)
    };
    let (budget, peak, bounded) = build("4MiB");
    assert_eq!(budget, 4 << 20);
    assert!(peak > 0 && peak <= budget + one_request, "the build held {peak} bytes at once, budget {budget}");
    let (_, unbounded_peak, unbounded) = build("1GiB");
    assert!(unbounded_peak > 2 * budget, "unbounded, the same build held {unbounded_peak} bytes at once");
    eprintln!("held at most {peak} bytes under a budget of {budget}; {unbounded_peak} without one");
    assert_eq!(bounded.len(), 4 + 48 * 2, "four parquets, an image and a json per row");
    assert!(bounded == unbounded, "the outputs differ with the budget");
}
