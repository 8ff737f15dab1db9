//! Property tests of the image path on hostile bytes: real encoded images (JPEG, progressive JPEG, PNG, WebP,
//! GIF, with EXIF and alpha) and the hostile files of the unit tests (cut files, 0×N GIF screens, a JPEG of
//! many scans), damaged at random. `process` and `exif_json` must return, never panic, and never hand back
//! or hold pixels beyond the cap. Cases: `PROPTEST_CASES` (default below, sized for CI).

use super::dc_scans::tests::{encode as tj_encode, photo};
use super::exif::exif_json;
use super::exif::tests::{camera_tiff, png_with_exif};
use super::jpeg::tests::with_extra_scans;
use super::options::{Encode, ProcessOptions, ResizeMode};
use super::process::tests::gif_screen;
use super::process::{Scratch, process, process_within};
use crate::util::fuzz::{config, damage, damaged};
use image::{DynamicImage, ImageFormat, RgbImage, RgbaImage};
use proptest::prelude::*;
use std::io::Cursor;
use std::sync::LazyLock;

/// The cap under test: far below the seeds' damaged headers, above every seed.
const MAX_PIXELS: u64 = 4096;
/// The largest side asked for: a bordered square stays under the cap.
const MAX_SIZE: u32 = 48;

fn encoded(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), format).unwrap();
    out
}

/// A JPEG with the camera's EXIF (orientation 6) in an APP1 segment after SOI.
fn jpeg_with_exif(jpeg: &[u8]) -> Vec<u8> {
    let tiff = camera_tiff();
    let mut app1 = vec![0xff, 0xe1];
    app1.extend(((tiff.len() + 8) as u16).to_be_bytes());
    app1.extend(b"Exif\0\0");
    app1.extend(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend(app1);
    out.extend(&jpeg[2..]);
    out
}

/// What `image::guess_format` (and `exif_json`, for TIFF) recognise, so that random bytes reach the decoders.
const SIGNATURES: &[&[u8]] = &[b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\0\0\0\0WEBPVP8 ", b"II*\0"];

static SEEDS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let rgb = DynamicImage::ImageRgb8(RgbImage::from_fn(40, 24, |x, y| image::Rgb([x as u8 * 6, y as u8 * 9, 77])));
    let rgba = DynamicImage::ImageRgba8(RgbaImage::from_fn(20, 30, |x, y| image::Rgba([x as u8, y as u8, 9, 128])));
    let jpeg = encoded(&rgb, ImageFormat::Jpeg);
    let png = encoded(&rgb, ImageFormat::Png);
    let mut seeds = vec![
        jpeg_with_exif(&jpeg),
        jpeg.clone(),
        png.clone(),
        png_with_exif(camera_tiff()),
        encoded(&rgb, ImageFormat::WebP),
        encoded(&rgba, ImageFormat::WebP),
        encoded(&rgba, ImageFormat::Png),
        encoded(&rgba, ImageFormat::Gif),
        with_extra_scans(0),
        with_extra_scans(120),
        // 64 × 64 with restart markers: decoded from its DC scans for sizes up to 8.
        tj_encode(&photo(64, 64), 64, 64, true, turbojpeg::raw::TJSAMP_TJSAMP_420, 2),
        gif_screen(0, 9000),
        gif_screen(1, 9000),
        gif_screen(64, 64),
        jpeg[..jpeg.len() / 2].to_vec(),
        png[..png.len() - 5].to_vec(),
        camera_tiff(),
    ];
    seeds.shrink_to_fit();
    seeds
});

fn options() -> impl Strategy<Value = ProcessOptions> {
    let mode = prop::sample::select(
        &[
            ResizeMode::No,
            ResizeMode::KeepRatio,
            ResizeMode::KeepRatioLargest,
            ResizeMode::CenterCrop,
            ResizeMode::Border,
        ][..],
    );
    let encode = prop::sample::select(&[Encode::Jpg, Encode::Png, Encode::Webp][..]);
    (mode, encode, 1..=MAX_SIZE, any::<bool>(), any::<bool>(), 0..=100u8).prop_map(
        |(mode, encode, image_size, resize_only_if_bigger, skip_reencode, quality)| ProcessOptions {
            image_size,
            mode,
            resize_only_if_bigger,
            skip_reencode,
            encode,
            quality,
            min_image_size: 0,
            max_image_area: f64::INFINITY,
            max_aspect_ratio: f64::INFINITY,
            max_pixels: MAX_PIXELS,
        },
    )
}

/// The property: a result, and nothing of it (nor of the scratch buffer kept for the next image) over the cap;
/// and the pixel buffer is never larger than what the decode asked the memory budget for.
fn check(bytes: &[u8], o: &ProcessOptions) -> Result<(), TestCaseError> {
    let mut scratch = Scratch::default();
    let mut admitted = 0u64;
    let result = process_within(bytes, o, &mut scratch, &mut |n| {
        admitted += n;
        Ok(())
    });
    let held = scratch.pixels_capacity() as u64;
    prop_assert!(held <= 4 * MAX_PIXELS, "the scratch buffer holds {held} bytes");
    // A Vec holds at least 8 bytes once it holds any.
    prop_assert!(held <= admitted.max(8), "the scratch buffer holds {held} bytes, {admitted} were admitted");
    if let Ok(p) = result {
        let original = u64::from(p.original_width) * u64::from(p.original_height);
        prop_assert!(original > 0 && original <= MAX_PIXELS, "{}x{}", p.original_width, p.original_height);
        let out = u64::from(p.width) * u64::from(p.height);
        prop_assert!(out > 0 && out <= MAX_PIXELS, "{}x{} written", p.width, p.height);
        prop_assert!(!p.bytes.is_empty());
    }
    let _ = exif_json(bytes);
    Ok(())
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn damaged_images_never_panic_or_exceed_the_cap(
        seed in 0..SEEDS.len(),
        damage in prop::collection::vec(damage(), 1..6),
        o in options(),
    ) {
        check(&damaged(&SEEDS[seed], &damage), &o)?;
    }

    #[test]
    fn arbitrary_bytes_behind_an_image_signature_never_panic(
        magic in prop::sample::select(SIGNATURES),
        body in prop::collection::vec(any::<u8>(), 0..256),
        o in options(),
    ) {
        let mut bytes = magic.to_vec();
        bytes.extend(body);
        check(&bytes, &o)?;
    }
}

#[test]
fn the_seeds_are_processed_or_refused() {
    let o = ProcessOptions {
        image_size: 32,
        mode: ResizeMode::Border,
        resize_only_if_bigger: false,
        skip_reencode: false,
        encode: Encode::Jpg,
        quality: 90,
        min_image_size: 0,
        max_image_area: f64::INFINITY,
        max_aspect_ratio: f64::INFINITY,
        max_pixels: MAX_PIXELS,
    };
    let ok: Vec<bool> = SEEDS.iter().map(|s| process(s, &o, &mut Scratch::default()).is_ok()).collect();
    assert_eq!(ok.iter().filter(|&&ok| ok).count(), 11, "{ok:?}");
    assert!(exif_json(&SEEDS[0]).is_some_and(|json| json.contains("Canon")));
}
