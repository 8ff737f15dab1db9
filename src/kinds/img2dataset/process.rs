//! Decoding, resizing and encoding one image with img2dataset's rules (resizer.py): the same resize modes,
//! sizes and rounding, alpha composited on white, the same checks and their messages. Differences, on
//! purpose: the dimensions are read from the header and checked against a pixel cap before anything is
//! decoded; EXIF orientation is applied; a JPEG is decoded scaled in the DCT when the output is much smaller
//! (`jpeg.rs`), a PNG averaged in blocks row by row (`png.rs`); WebP is written lossless (the `image` crate has
//! no lossy encoder).
//!
//! The work per image is bounded by counts, not by a clock: the body by the download cap, the decoded
//! pixels and the resize target by `max_pixels` (from the header, before allocating), a progressive JPEG's
//! scans by `jpeg::SCAN_LIMIT` (each scan walks the whole image), an animation by its first frame (the only
//! one decoded). There is no deadline per decode because nothing long could be stopped by one: each costly
//! step is a single call that cannot be interrupted (libjpeg-turbo's decompress, the `image` crate's
//! decoders, libwebp's `WebPDecode`, the resizer, the encoders), and the loops of our own (compositing,
//! walking RIFF chunks) are linear in those bounded sizes. A clock checked between steps would only fail a
//! row after paying for it, and would make its status depend on the machine's load.

use super::options::{
    Admit, Decoded, Encode, Pixels, ProcessOptions, ResizeMode, after_decode_bytes, check_dimensions, check_size,
    resized_size,
};
use super::{jpeg, png, webp};
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageFormat, RgbImage};
use std::io::Cursor;

pub struct Processed {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub original_width: u32,
    pub original_height: u32,
}

/// Pixel buffers up to this size are kept between images; see `decoding::POOL` for larger ones.
pub const SMALL: usize = 16 << 20;
/// Largest pixel buffer kept at all: a 3840×2400 wallpaper decoded whole (a PNG) is 27.6 MB.
pub const LARGE: usize = 32 << 20;

/// Per-thread state reused across images (a pool per shard): fresh multi-megabyte pixel buffers per image
/// cost more in page faults and zeroing than the decoding itself.
#[derive(Default)]
pub struct Scratch {
    pixels: Vec<u8>,
    codec: jpeg::Codec,
    /// The resizer keeps its intermediate buffer between images.
    resizer: Resizer,
    /// The resized image, and the cropped or padded one made from it: output-sized.
    resized: Vec<u8>,
    framed: Vec<u8>,
}

impl Scratch {
    /// Whether the pixel buffer is over `SMALL` bytes (a full-size decode of over 5 megapixels).
    pub fn is_large(&self) -> bool {
        self.pixels.capacity() > SMALL
    }

    /// Lets go of the pixel buffer if it is over `max` bytes, and of the output-sized ones and the resizer's
    /// if they are over `SMALL` (a large `image_size`).
    pub fn shrink_past(&mut self, max: usize) {
        if self.pixels.capacity() > max {
            self.pixels = Vec::new();
        }
        for buffer in [&mut self.resized, &mut self.framed] {
            if buffer.capacity() > SMALL {
                *buffer = Vec::new();
            }
        }
        if self.resizer.size_of_internal_buffers() > SMALL {
            self.resizer.reset_internal_buffers();
        }
    }

    /// What the pixel buffer holds on to, for the tests that bound it.
    #[cfg(test)]
    pub(super) fn pixels_capacity(&self) -> usize {
        self.pixels.capacity()
    }
}

/// [`process_within`] with no memory budget.
#[cfg(test)]
pub fn process(bytes: &[u8], o: &ProcessOptions, scratch: &mut Scratch) -> Result<Processed, String> {
    process_within(bytes, o, scratch, &mut |_| Ok(()))
}

/// Processes one image: decode (JPEG through libjpeg-turbo, scaled where the output allows), check,
/// resize, crop or pad, encode. WebP goes through libwebp, rescaled while decoding (`webp.rs`); a PNG shrunk
/// fourfold or more is reduced in blocks as its rows are inflated (`png.rs`). Each decoder
/// asks `admit` for the bytes the work will allocate once it has read the header, before allocating them.
pub fn process_within(
    bytes: &[u8],
    o: &ProcessOptions,
    scratch: &mut Scratch,
    admit: Admit,
) -> Result<Processed, String> {
    if bytes.is_empty() {
        return Err("image decoding error: empty body".to_string());
    }
    let format = image::guess_format(bytes).map_err(|_| "image decoding error: not an image format".to_string())?;
    // A complete response may carry a cut file; decoders fill in what is missing, img2dataset fails it.
    let truncated = match format {
        ImageFormat::Jpeg => jpeg::ends_early(bytes),
        ImageFormat::Png => png_ends_early(bytes),
        ImageFormat::WebP => webp::ends_early(bytes),
        _ => None,
    };
    if let Some(why) = truncated {
        return Err(format!("image decoding error: truncated file: {why}"));
    }
    let turbo = match format {
        ImageFormat::Jpeg => jpeg::decode(bytes, o, &mut scratch.codec, &mut scratch.pixels, admit),
        ImageFormat::WebP => webp::decode(bytes, o, &mut scratch.pixels, admit),
        ImageFormat::Png => png::decode(bytes, o, &mut scratch.pixels, admit),
        _ => None,
    };
    let decoded = match turbo {
        Some(decoded) => decoded?,
        None => decode_any(bytes, format, o, &mut scratch.pixels, admit)?,
    };
    let Decoded { width, height, original_width, original_height, .. } = decoded;
    let Scratch { pixels: buffer, codec, resizer, resized, framed } = scratch;
    let pixels: &[u8] = match &decoded.pixels {
        Pixels::Scratch(n) => &buffer[..*n],
        Pixels::Owned(v) => v,
    };
    let out = match resized_size(o, original_width, original_height)? {
        None => None,
        Some((nw, nh, downscale)) => {
            let source = (pixels, width, height);
            let resized = (resize(resizer, source, decoded.covers, (nw, nh), downscale, resized)?, nw, nh);
            Some(match o.mode {
                ResizeMode::CenterCrop => center_crop(resized, o.image_size, framed),
                ResizeMode::Border => pad_white(resized, o.image_size, framed),
                _ => resized,
            })
        }
    };
    let keep = out.is_none() && !decoded.composited && o.keeps_original(format, decoded.upright);
    if keep {
        return Ok(Processed {
            bytes: bytes.to_vec(),
            width: original_width,
            height: original_height,
            original_width,
            original_height,
        });
    }
    let (pixels, width, height) = out.unwrap_or((pixels, width, height));
    let bytes = encode(pixels, width, height, o, codec)?;
    Ok(Processed { bytes, width, height, original_width, original_height })
}

/// Any format the `image` crate reads, at full size: the common case (RGB, upright) straight into the
/// scratch buffer, the rest converted.
fn decode_any(
    bytes: &[u8],
    format: ImageFormat,
    o: &ProcessOptions,
    scratch: &mut Vec<u8>,
    admit: Admit,
) -> Result<Decoded, String> {
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(o.max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| format!("image decoding error: {e}"))?;
    let (w, h) = decoder.dimensions();
    check_dimensions(o, w, h)?;
    // The resize target checked now, not after decoding (orientation swaps the sides, not their product).
    resized_size(o, w, h)?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let upright = orientation == image::metadata::Orientation::NoTransforms;
    let fast = decoder.color_type() == image::ColorType::Rgb8 && upright;
    // Decoded as they are; otherwise also turned, and converted or composited through RGBA to RGB.
    let total = decoder.total_bytes();
    let pixels = u64::from(w) * u64::from(h);
    let decoding = if fast { total } else { total.saturating_mul(2).saturating_add(7 * pixels) };
    // Either way up: the orientation is applied after decoding.
    let after = after_decode_bytes(o, w, h, w, h).max(after_decode_bytes(o, h, w, h, w));
    admit(decoding.saturating_add(after))?;
    let decoded = if fast {
        let n = total as usize;
        room(scratch, n);
        decoder.read_image(&mut scratch[..n]).map_err(|e| format!("image decoding error: {e}"))?;
        Decoded {
            pixels: Pixels::Scratch(n),
            width: w,
            height: h,
            original_width: w,
            original_height: h,
            upright,
            composited: false,
            covers: None,
        }
    } else {
        let mut img = DynamicImage::from_decoder(decoder).map_err(|e| format!("image decoding error: {e}"))?;
        img.apply_orientation(orientation);
        let composited = img.color().has_alpha();
        let rgb = if composited { composite_on_white(&img) } else { img.into_rgb8() };
        let (width, height) = rgb.dimensions();
        Decoded {
            pixels: Pixels::Owned(rgb.into_raw()),
            width,
            height,
            original_width: width,
            original_height: height,
            upright,
            composited,
            covers: None,
        }
    };
    check_size(o, decoded.original_width, decoded.original_height)?;
    Ok(decoded)
}

/// Why a PNG's data ends before its IEND chunk, walking the chunks by their lengths (as libpng reads them;
/// bytes after IEND are ignored).
fn png_ends_early(bytes: &[u8]) -> Option<&'static str> {
    let mut at = 8usize;
    while let Some(header) = bytes.get(at..at + 8) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        // Length, type, data and CRC.
        let end = at.saturating_add(12).saturating_add(len);
        if end > bytes.len() {
            break;
        }
        if &header[4..8] == b"IEND" {
            return None;
        }
        at = end;
    }
    Some("the PNG ends before its IEND chunk")
}

/// img2dataset's alpha matting: alpha/255·colour + 255 − alpha, rounded.
fn composite_on_white(img: &DynamicImage) -> RgbImage {
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (src, dst) in rgba.pixels().zip(out.pixels_mut()) {
        let a = f32::from(src[3]);
        for c in 0..3 {
            dst[c] = (a / 255.0 * f32::from(src[c]) + 255.0 - a).round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// Makes `buffer` at least `n` bytes long. One too small is replaced rather than grown: growing would copy
/// what it holds (the last image's pixels) for nothing.
pub(super) fn room(buffer: &mut Vec<u8>, n: usize) {
    if buffer.len() < n {
        if buffer.capacity() < n {
            *buffer = Vec::new();
            buffer.reserve_exact(n);
        }
        buffer.resize(n, 0);
    }
}

/// An RGB image: its pixels, width and height.
type Rgb<'a> = (&'a [u8], u32, u32);

/// Resizes to `nw`×`nh` into `out`: area-like filtering when shrinking (OpenCV's INTER_AREA), Lanczos when
/// growing (INTER_LANCZOS4); from the top-left `covers` region of the pixels when given. The pixels as they
/// are when the size is already right.
fn resize<'a>(
    resizer: &mut Resizer,
    (pixels, w, h): Rgb<'a>,
    covers: Option<(f64, f64)>,
    (nw, nh): (u32, u32),
    downscale: bool,
    out: &'a mut Vec<u8>,
) -> Result<&'a [u8], String> {
    use fast_image_resize::PixelType;
    use fast_image_resize::images::{Image, ImageRef};
    if (nw, nh) == (w, h) && covers.is_none() {
        return Ok(pixels);
    }
    let src = ImageRef::new(w, h, pixels, PixelType::U8x3).map_err(|e| format!("resize error: {e}"))?;
    let n = nw as usize * nh as usize * 3;
    room(out, n);
    let mut dst =
        Image::from_slice_u8(nw, nh, &mut out[..n], PixelType::U8x3).map_err(|e| format!("resize error: {e}"))?;
    let filter = if downscale { FilterType::Box } else { FilterType::Lanczos3 };
    let mut options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter));
    if let Some((cw, ch)) = covers {
        options = options.crop(0.0, 0.0, cw, ch);
    }
    resizer.resize(&src, &mut dst, &options).map_err(|e| format!("resize error: {e}"))?;
    Ok(&out[..n])
}

/// The centre `size`×`size` (or less, on a short side), into `out`.
fn center_crop<'a>((pixels, w, h): Rgb<'_>, size: u32, out: &'a mut Vec<u8>) -> Rgb<'a> {
    let (cw, ch) = (size.min(w), size.min(h));
    let (x, y) = (((w - cw) / 2) as usize, ((h - ch) / 2) as usize);
    let (row, in_row) = (cw as usize * 3, w as usize * 3);
    out.clear();
    for r in y..y + ch as usize {
        let at = r * in_row + x * 3;
        out.extend_from_slice(&pixels[at..at + row]);
    }
    (&out[..], cw, ch)
}

/// Centred on white, row by row, into `out`.
fn pad_white<'a>((pixels, w, h): Rgb<'_>, size: u32, out: &'a mut Vec<u8>) -> Rgb<'a> {
    let (tw, th) = (size.max(w), size.max(h));
    let (x, y) = (((tw - w) / 2) as usize, ((th - h) / 2) as usize);
    let (row, out_row) = (w as usize * 3, tw as usize * 3);
    out.clear();
    out.resize(out_row * th as usize, 255);
    if row > 0 {
        for (r, src) in pixels.chunks_exact(row).enumerate() {
            let at = (y + r) * out_row + x * 3;
            out[at..at + row].copy_from_slice(src);
        }
    }
    (&out[..], tw, th)
}

fn encode(pixels: &[u8], w: u32, h: u32, o: &ProcessOptions, codec: &mut jpeg::Codec) -> Result<Vec<u8>, String> {
    use image::ImageEncoder;
    let mut out = Vec::with_capacity(pixels.len() / 8);
    let rgb = image::ExtendedColorType::Rgb8;
    let result = match o.encode {
        Encode::Jpg => return jpeg::encode(codec, pixels, w, h, o.quality),
        Encode::Png => {
            use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
            let compression = match o.quality {
                0..=2 => CompressionType::Fast,
                3..=6 => CompressionType::Default,
                _ => CompressionType::Best,
            };
            PngEncoder::new_with_quality(&mut out, compression, PngFilter::Adaptive).write_image(pixels, w, h, rgb)
        }
        Encode::Webp => image::codecs::webp::WebPEncoder::new_lossless(&mut out).write_image(pixels, w, h, rgb),
    };
    result.map_err(|e| format!("image encoding error: {e}"))?;
    Ok(out)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in super::super) fn options(mode: ResizeMode) -> ProcessOptions {
        ProcessOptions {
            image_size: 64,
            mode,
            resize_only_if_bigger: false,
            skip_reencode: false,
            encode: Encode::Jpg,
            quality: 95,
            min_image_size: 0,
            max_image_area: f64::INFINITY,
            max_aspect_ratio: f64::INFINITY,
            max_pixels: 1 << 24,
        }
    }

    pub(in super::super) fn process_(bytes: &[u8], o: &ProcessOptions) -> Result<Processed, String> {
        process(bytes, o, &mut Scratch::default())
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        RgbImage::from_pixel(w, h, image::Rgb([10, 20, 30]))
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn sizes_follow_img2dataset() {
        let img = png(200, 100);
        let p = process_(&img, &options(ResizeMode::Border)).unwrap();
        assert_eq!((p.width, p.height, p.original_width, p.original_height), (64, 64, 200, 100));
        let p = process_(&img, &options(ResizeMode::KeepRatio)).unwrap();
        assert_eq!((p.width, p.height), (128, 64));
        let p = process_(&img, &options(ResizeMode::KeepRatioLargest)).unwrap();
        assert_eq!((p.width, p.height), (64, 32));
        let p = process_(&img, &options(ResizeMode::CenterCrop)).unwrap();
        assert_eq!((p.width, p.height), (64, 64));
        let p = process_(&img, &options(ResizeMode::No)).unwrap();
        assert_eq!((p.width, p.height), (200, 100));
        let mut only = options(ResizeMode::Border);
        only.resize_only_if_bigger = true;
        let p = process_(&png(50, 40), &only).unwrap();
        assert_eq!((p.width, p.height), (50, 40));
    }

    /// A photo-like test card: gradients, a sharp-edged grid and noise, so resampling errors show.
    pub(in super::super) fn card(w: u32, h: u32) -> RgbImage {
        let mut seed = 7u32;
        RgbImage::from_fn(w, h, |x, y| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = (seed >> 27) as u8;
            let grid = if (x / 40 + y / 40) % 2 == 0 { 60 } else { 0 };
            image::Rgb([(x * 255 / w) as u8 / 2 + grid + noise, (y * 255 / h) as u8 / 2 + noise, 128 - grid / 2])
        })
    }

    pub(in super::super) fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
        assert_eq!(a.dimensions(), b.dimensions());
        let se: f64 = a.as_raw().iter().zip(b.as_raw()).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum();
        10.0 * (255.0f64.powi(2) / (se / a.as_raw().len() as f64)).log10()
    }

    /// The DCT-scaled JPEG path gives what a full decode then an area resize gives, to the eye: the same
    /// sizes, and a PSNR far above what JPEG quality 95 itself costs.
    #[test]
    fn scaled_jpeg_decoding_matches_a_full_decode() {
        let img = card(1200, 800);
        let mut jpeg = Vec::new();
        image::DynamicImage::ImageRgb8(img.clone()).write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg).unwrap();
        // The same pixels as a PNG go through the full decode.
        let decoded = image::load_from_memory(&jpeg).unwrap().to_rgb8();
        let mut png = Vec::new();
        decoded.write_to(&mut Cursor::new(&mut png), ImageFormat::Png).unwrap();
        for mode in [ResizeMode::Border, ResizeMode::CenterCrop, ResizeMode::KeepRatio] {
            let mut o = options(mode);
            o.image_size = 256;
            let scaled = process_(&jpeg, &o).unwrap();
            let full = process_(&png, &o).unwrap();
            assert_eq!((scaled.width, scaled.height, scaled.original_width), (full.width, full.height, 1200));
            let (a, b) =
                (image::load_from_memory(&scaled.bytes).unwrap(), image::load_from_memory(&full.bytes).unwrap());
            let db = psnr(&a.to_rgb8(), &b.to_rgb8());
            assert!(db > 34.0, "{mode:?}: PSNR {db:.1} dB");
        }
    }

    /// WebP through libwebp, rescaled while decoding, against the PNG of the same pixels through the
    /// general decoder and the resizer; and a WebP with alpha, which the general decoder composites.
    #[test]
    fn webp_rescaled_by_libwebp_matches_the_general_path() {
        let img = card(900, 600);
        let encode = |img: &image::DynamicImage, format| {
            let mut out = Vec::new();
            img.write_to(&mut Cursor::new(&mut out), format).unwrap();
            out
        };
        let rgb = image::DynamicImage::ImageRgb8(img);
        let (webp, png) = (encode(&rgb, ImageFormat::WebP), encode(&rgb, ImageFormat::Png));
        let mut o = options(ResizeMode::Border);
        o.image_size = 256;
        let (a, b) = (process_(&webp, &o).unwrap(), process_(&png, &o).unwrap());
        assert_eq!((a.width, a.height, a.original_width, a.original_height), (256, 256, 900, 600));
        let db = psnr(
            &image::load_from_memory(&a.bytes).unwrap().to_rgb8(),
            &image::load_from_memory(&b.bytes).unwrap().to_rgb8(),
        );
        assert!(db > 34.0, "PSNR {db:.1} dB");
        let rgba = image::DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(40, 30, image::Rgba([0, 0, 0, 0])));
        let p = process_(&encode(&rgba, ImageFormat::WebP), &o).unwrap();
        let white = image::load_from_memory(&p.bytes).unwrap().to_rgb8();
        assert!(white.pixels().all(|px| px.0.iter().all(|&c| c > 250)), "alpha composited on white");
    }

    /// A scratch's buffers carry nothing from one image to the next: a small image after a large one (of
    /// each mode and format) comes out as it does with a fresh scratch.
    #[test]
    fn a_reused_scratch_gives_what_a_fresh_one_gives() {
        let large = image::DynamicImage::ImageRgb8(card(900, 700));
        let small = image::DynamicImage::ImageRgb8(card(150, 40));
        for mode in [ResizeMode::Border, ResizeMode::CenterCrop, ResizeMode::KeepRatio, ResizeMode::No] {
            for format in [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP] {
                let mut o = options(mode);
                o.image_size = 96;
                let mut scratch = Scratch::default();
                process(&encode_as(&large, format), &o, &mut scratch).unwrap();
                let again = process(&encode_as(&small, format), &o, &mut scratch).unwrap();
                let fresh = process_(&encode_as(&small, format), &o).unwrap();
                assert_eq!((again.width, again.height), (fresh.width, fresh.height), "{mode:?} {format:?}");
                assert!(again.bytes == fresh.bytes, "{mode:?} {format:?}");
            }
        }
    }

    #[test]
    fn checks_come_before_work() {
        let mut o = options(ResizeMode::Border);
        o.max_pixels = 100;
        assert_eq!(process_(&png(20, 20), &o).err().unwrap(), "image is 20x20 pixels, over the 100-pixel limit");
        let mut o = options(ResizeMode::Border);
        o.min_image_size = 30;
        assert_eq!(process_(&png(20, 40), &o).err().unwrap(), "image too small");
        assert_eq!(process_(b"", &o).err().unwrap(), "image decoding error: empty body");
        assert_eq!(process_(b"<html></html>", &o).err().unwrap(), "image decoding error: not an image format");
    }

    /// A GIF of `w`×`h` logical screen with one 1×1 frame, written by hand: 35 bytes.
    pub(in super::super) fn gif_screen(w: u16, h: u16) -> Vec<u8> {
        let mut g = b"GIF89a".to_vec();
        g.extend(w.to_le_bytes());
        g.extend(h.to_le_bytes());
        g.extend([0x80, 0, 0, 0, 0, 0, 255, 255, 255]); // a global table of two colours
        g.extend([0x2c, 0, 0, 0, 0, 1, 0, 1, 0, 0]); // a 1×1 frame at 0,0
        g.extend([2, 2, 0x44, 0x01, 0, 0x3b]); // its LZW data, the trailer
        g
    }

    /// Zero or absurd dimensions fail in every mode from the header and the resize target, before any pixel
    /// buffer of that size exists (the cap is 2^24 pixels, the scratch buffer stays empty).
    #[test]
    fn absurd_dimensions_fail_before_anything_is_allocated() {
        let zero = gif_screen(0, 9000);
        assert_eq!(zero.len(), 35);
        let modes = [
            ResizeMode::No,
            ResizeMode::KeepRatio,
            ResizeMode::KeepRatioLargest,
            ResizeMode::CenterCrop,
            ResizeMode::Border,
        ];
        for mode in modes {
            let mut scratch = Scratch::default();
            let err = process(&zero, &options(mode), &mut scratch).err();
            assert_eq!(err.as_deref(), Some("image is 0x9000 pixels: a side is zero"), "{mode:?}");
            assert_eq!(scratch.pixels.capacity(), 0, "{mode:?}");
        }
        // A 1×9000 strip is fine as it is, but scaled so its short side is 64 px it would be 64×576,000.
        let strip = gif_screen(1, 9000);
        for mode in [ResizeMode::KeepRatio, ResizeMode::CenterCrop] {
            let mut scratch = Scratch::default();
            let err = process(&strip, &options(mode), &mut scratch).err();
            let want =
                format!("resizing 1x9000 to 64 px ({mode}) would make 64x576000 pixels, over the 16777216-pixel limit");
            assert_eq!(err, Some(want));
            assert_eq!(scratch.pixels.capacity(), 0, "{mode:?}");
        }
        for mode in [ResizeMode::No, ResizeMode::Border, ResizeMode::KeepRatioLargest] {
            let p = process_(&strip, &options(mode)).unwrap();
            assert_eq!((p.original_width, p.original_height), (1, 9000), "{mode:?}");
        }
        // The same checks on the fast paths' headers.
        let jpeg = encode_as(&image::DynamicImage::ImageRgb8(card(1, 3000)), ImageFormat::Jpeg);
        let webp = encode_as(&image::DynamicImage::ImageRgb8(card(1, 3000)), ImageFormat::WebP);
        let mut o = options(ResizeMode::CenterCrop);
        o.max_pixels = 1 << 20;
        for (name, bytes) in [("jpeg", jpeg), ("webp", webp)] {
            let mut scratch = Scratch::default();
            let err = process(&bytes, &o, &mut scratch).err();
            let want =
                "resizing 1x3000 to 64 px (center_crop) would make 64x192000 pixels, over the 1048576-pixel limit";
            assert_eq!(err.as_deref(), Some(want), "{name}");
            assert_eq!(scratch.pixels.capacity(), 0, "{name}");
        }
    }

    /// Each decoder asks the budget for its bytes once the header is read and before it allocates: a refusal
    /// fails the row with nothing allocated, and what it asks covers the pixel buffer it fills; a JPEG bound for
    /// 64 px asks for its eighth-size decode, not the full one, and a PNG for its rows reduced in blocks.
    #[test]
    fn decoders_ask_the_budget_before_allocating() {
        let img = image::DynamicImage::ImageRgb8(card(800, 600));
        let full = 800 * 600 * 3;
        let o = options(ResizeMode::Border);
        let mut asked = Vec::new();
        for format in [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP] {
            let bytes = encode_as(&img, format);
            let mut scratch = Scratch::default();
            let err = process_within(&bytes, &o, &mut scratch, &mut |_| Err("interrupted".to_string())).err();
            assert_eq!(err.as_deref(), Some("interrupted"), "{format:?}");
            assert_eq!(scratch.pixels.capacity(), 0, "{format:?}");
            let mut admitted = 0;
            process_within(&bytes, &o, &mut scratch, &mut |n| {
                admitted += n;
                Ok(())
            })
            .unwrap();
            assert!(scratch.pixels.capacity() as u64 <= admitted, "{format:?}: {admitted}");
            asked.push(admitted);
        }
        let [jpeg, png, webp] = asked[..] else { unreachable!() };
        assert!(jpeg < full / 8 && webp < full / 8, "scaled while decoding: {jpeg}, {webp}");
        assert!(png < full / 4, "reduced row by row: {png}");
    }

    fn encode_as(img: &image::DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), format).unwrap();
        out
    }

    /// An animation decodes its first frame only, as OpenCV's `imdecode` does, so its other frames cost no
    /// pixels: 400 frames of 64×64 under a cap of two frames' pixels succeed, and a frame is checked against
    /// the cap like a still image.
    #[test]
    fn animations_decode_their_first_frame_only() {
        use image::codecs::gif::GifEncoder;
        let mut gif = Vec::new();
        {
            let mut encoder = GifEncoder::new(&mut gif);
            let frames = (0..400u32).map(|i| {
                let px = image::Rgba([(i % 256) as u8, 0, 0, 255]);
                image::Frame::new(image::RgbaImage::from_pixel(64, 64, px))
            });
            encoder.encode_frames(frames).unwrap();
        }
        let mut o = options(ResizeMode::No);
        o.max_pixels = 2 * 64 * 64;
        let p = process_(&gif, &o).unwrap();
        assert_eq!((p.width, p.height), (64, 64));
        o.max_pixels = 64 * 64 - 1;
        assert_eq!(process_(&gif, &o).err().unwrap(), "image is 64x64 pixels, over the 4095-pixel limit");
    }

    /// A file cut short inside a complete response fails with a message that says so, wherever the cut
    /// falls: in the middle, or in the last bytes (a JPEG's EOI, a PNG's IEND, a WebP's last pixels), and
    /// whichever decoder would have taken it (an RGBA WebP goes to the general decoder).
    #[test]
    fn truncated_files_fail() {
        let rgb = image::DynamicImage::ImageRgb8(card(300, 200));
        let rgba = image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(120, 80, |x, y| {
            image::Rgba([x as u8, y as u8, 7, (x + y) as u8])
        }));
        let mut progressive = turbojpeg::Compressor::new().unwrap();
        progressive.set_progressive(true).unwrap();
        let progressive = progressive
            .compress_to_vec(turbojpeg::Image {
                pixels: rgb.as_bytes(),
                width: 300,
                pitch: 900,
                height: 200,
                format: turbojpeg::PixelFormat::RGB,
            })
            .unwrap();
        let files = [
            ("JPEG", encode_as(&rgb, ImageFormat::Jpeg), "the JPEG ends before its end-of-image marker"),
            ("progressive JPEG", progressive, "the JPEG ends before its end-of-image marker"),
            ("PNG", encode_as(&rgb, ImageFormat::Png), "the PNG ends before its IEND chunk"),
            ("WebP", encode_as(&rgb, ImageFormat::WebP), "the WebP ends before the size its RIFF header gives"),
            ("RGBA WebP", encode_as(&rgba, ImageFormat::WebP), "the WebP ends before the size its RIFF header gives"),
        ];
        for (name, bytes, why) in files {
            assert!(process_(&bytes, &options(ResizeMode::Border)).is_ok(), "{name} whole");
            for cut in [bytes.len() / 3, bytes.len() * 2 / 3, bytes.len() - 1] {
                let err = process_(&bytes[..cut], &options(ResizeMode::Border)).err();
                let want = format!("image decoding error: truncated file: {why}");
                assert_eq!(err, Some(want), "{name} cut at {cut} of {}", bytes.len());
            }
        }
    }

    /// Bytes after a complete image are not a truncation: a JPEG followed by another (a multi-picture file)
    /// or by a motion photo's video, a PNG or WebP with trailing bytes.
    #[test]
    fn trailing_bytes_are_not_a_truncation() {
        let rgb = image::DynamicImage::ImageRgb8(card(64, 48));
        let jpeg = encode_as(&rgb, ImageFormat::Jpeg);
        let mut tail = jpeg[..jpeg.len() / 2].to_vec(); // a marker-rich tail that itself ends early
        tail.extend_from_slice(b"\xff\xda\x00\x08junk");
        for format in [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP] {
            let mut bytes = encode_as(&rgb, format);
            bytes.extend_from_slice(&tail);
            assert!(process_(&bytes, &options(ResizeMode::Border)).is_ok(), "{format:?}");
        }
    }
}
