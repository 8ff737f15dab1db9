//! The common PNG (8-bit RGB, grey or palette, not interlaced, not animated, without EXIF) bound for an output
//! under a quarter of its size (a wallpaper bound for 256 px), decoded row by row and averaged in k×k blocks as
//! the rows come: the box pre-shrink that img2dataset's area resize (OpenCV's INTER_AREA) implies, as DCT
//! scaling is for a JPEG. A 4K wallpaper then never exists whole in RGB (27.6 MB faulted in and written, then
//! read again by the resizer): one row and one accumulator row of it do. Every other PNG goes to the general
//! decoder at full size.
//!
//! The blocks are k = ⌊min(w / 4·nw, h / 4·nh)⌋ pixels a side, so the reduced image is still at least four
//! times the output; the resizer's area filter takes it from there, reading the region the original covers
//! (the last column and row of blocks may be narrower, each block the mean of the pixels it covers). That
//! differs from an area resize of the whole image only at output pixels' edges (a block straddling one counts
//! as uniform): over 40 dB PSNR on a sharp-edged test card, about what JPEG at quality 95 itself costs.

use super::options::{
    Admit, Decoded, Pixels, ProcessOptions, after_decode_bytes, check_dimensions, check_size, resized_size,
};
use image::ImageFormat;
use image::error::{DecodingError, ImageError, LimitError, LimitErrorKind, ParameterError, ParameterErrorKind};
use std::io::Cursor;

/// Block sides at most: 128 rows of 255 still fit the u16 accumulator.
const MAX_BLOCK: u32 = 128;

/// How many times the output the reduced image stays at least. The resizer's box filter weighs whole
/// pixels, so the fewer source pixels an output pixel has, the more a block straddling its edge shows: at 2
/// times a sharp-edged test card came out at 36 dB from the full decode's result, at 4 times at 42 dB or more.
const MARGIN: u32 = 4;

/// `None` hands the image to the general decoder: other PNGs, images shrunk less than fourfold, and headers
/// the png crate rejects (the general decoder words the error the same way).
pub fn decode(bytes: &[u8], o: &ProcessOptions, pixels: &mut Vec<u8>, admit: Admit) -> Option<Result<Decoded, String>> {
    let max_bytes = usize::try_from(o.max_pixels.saturating_mul(8).max(1 << 20)).unwrap_or(usize::MAX);
    let mut decoder = ::png::Decoder::new_with_limits(Cursor::new(bytes), ::png::Limits { bytes: max_bytes });
    // As the general decoder reads it: 1, 2 and 4 bits and palettes expanded to 8, 16 bits kept (not taken).
    decoder.set_transformations(::png::Transformations::EXPAND);
    let mut reader = decoder.read_info().ok()?;
    let info = reader.info();
    if info.interlaced || info.animation_control.is_some() || info.exif_metadata.is_some() {
        return None;
    }
    let channels = match reader.output_color_type() {
        (::png::ColorType::Rgb, ::png::BitDepth::Eight) => 3,
        (::png::ColorType::Grayscale, ::png::BitDepth::Eight) => 1,
        _ => return None,
    };
    let (w, h) = (info.width, info.height);
    if let Err(e) = check_dimensions(o, w, h) {
        return Some(Err(e));
    }
    let k = match resized_size(o, w, h) {
        Ok(Some((nw, nh, true))) => block(w, h, nw, nh),
        Ok(_) => return None,
        Err(e) => return Some(Err(e)),
    };
    if k < 2 {
        return None;
    }
    let (rw, rh) = (w.div_ceil(k), h.div_ceil(k));
    let n = rw as usize * rh as usize * 3;
    let row_len = w as usize * channels;
    // The reduced pixels, the accumulator row, the png crate's rows (this one, the previous one, the raw
    // one being unfiltered) and its inflate window, then what resizing takes.
    let decoding = n as u64 + 2 * row_len as u64 + 3 * row_len as u64 + (64 << 10);
    if let Err(e) = admit(decoding + after_decode_bytes(o, w, h, rw, rh)) {
        return Some(Err(e));
    }
    super::process::room(pixels, n);
    if let Err(e) = reduce(&mut reader, (w, h, channels), k, &mut pixels[..n]) {
        return Some(Err(format!("image decoding error: {e}")));
    }
    if let Err(e) = check_size(o, w, h) {
        return Some(Err(e));
    }
    Some(Ok(Decoded {
        pixels: Pixels::Scratch(n),
        width: rw,
        height: rh,
        original_width: w,
        original_height: h,
        upright: true,
        composited: false,
        covers: (w % k != 0 || h % k != 0).then(|| (f64::from(w) / f64::from(k), f64::from(h) / f64::from(k))),
    }))
}

/// The block side for a `w`×`h` image bound for `nw`×`nh`: the reduced image stays at least `MARGIN` times the
/// output.
fn block(w: u32, h: u32, nw: u32, nh: u32) -> u32 {
    let (bw, bh) = (nw.saturating_mul(MARGIN).max(1), nh.saturating_mul(MARGIN).max(1));
    (w / bw).min(h / bh).min(MAX_BLOCK)
}

/// Reads the image's rows, averaging each k×k block into one RGB pixel of `out` (rows of ⌈w/k⌉ pixels), then
/// the end of its image data, as the general decoder does.
fn reduce<R: std::io::BufRead + std::io::Seek>(
    reader: &mut ::png::Reader<R>,
    (w, h, channels): (u32, u32, usize),
    k: u32,
    out: &mut [u8],
) -> Result<(), ImageError> {
    let (w, h, k) = (w as usize, h as usize, k as usize);
    let mut sums = vec![0u16; w * channels];
    let out_row = w.div_ceil(k) * 3;
    let mut rows = 0;
    for y in 0..h {
        let row = reader.next_row().map_err(from_png)?.ok_or_else(|| missing_rows(y, h))?;
        for (s, &b) in sums.iter_mut().zip(row.data()) {
            *s += u16::from(b);
        }
        rows += 1;
        if rows == k || y + 1 == h {
            let at = y / k * out_row;
            collapse(&sums, channels, k, rows, &mut out[at..at + out_row]);
            sums.fill(0);
            rows = 0;
        }
    }
    // Past the last row, the png crate reads what is left of the image data (its checksum included).
    match reader.next_row().map_err(from_png)? {
        None => Ok(()),
        Some(_) => Err(ImageError::Parameter(ParameterError::from_kind(ParameterErrorKind::Generic(
            "more rows than the header gives".to_string(),
        )))),
    }
}

/// One row of blocks: each the rounded mean of its pixels (`rows` × up to `k` columns), grey made RGB.
fn collapse(sums: &[u16], channels: usize, k: usize, rows: usize, out: &mut [u8]) {
    let full = Mean::of(k * rows);
    for (block, px) in sums.chunks(k * channels).zip(out.chunks_exact_mut(3)) {
        let cols = block.len() / channels;
        let mean = if cols == k { full } else { Mean::of(cols * rows) };
        if channels == 3 {
            let mut total = [0u32; 3];
            for pixel in block.chunks_exact(3) {
                total[0] += u32::from(pixel[0]);
                total[1] += u32::from(pixel[1]);
                total[2] += u32::from(pixel[2]);
            }
            px.copy_from_slice(&total.map(|t| mean.of_total(t)));
        } else {
            px.fill(mean.of_total(block.iter().map(|&s| u32::from(s)).sum()));
        }
    }
}

/// Rounded division of a block's total by its pixel count, as a multiplication (a division per output value
/// cost more than the averaging itself). Exact: totals stay under 2^22 (128² pixels of 255) and counts under
/// 2^15, so the reciprocal's error (under 2^-40 per unit) never carries into the integer part.
#[derive(Clone, Copy)]
struct Mean {
    half: u32,
    reciprocal: u64,
}

impl Mean {
    fn of(count: usize) -> Mean {
        let count = count.max(1) as u64;
        Mean { half: (count / 2) as u32, reciprocal: (1u64 << 40).div_ceil(count) }
    }

    fn of_total(self, total: u32) -> u8 {
        ((u64::from(total + self.half) * self.reciprocal) >> 40) as u8
    }
}

fn missing_rows(y: usize, h: usize) -> ImageError {
    ImageError::Parameter(ParameterError::from_kind(ParameterErrorKind::Generic(format!(
        "the image data ends after {y} of {h} rows"
    ))))
}

/// The png crate's error as the `image` crate words it, so that a row fails with the message the general
/// decoder gives.
fn from_png(err: ::png::DecodingError) -> ImageError {
    match err {
        ::png::DecodingError::IoError(e) => ImageError::IoError(e),
        e @ ::png::DecodingError::Format(_) => ImageError::Decoding(DecodingError::new(ImageFormat::Png.into(), e)),
        e @ ::png::DecodingError::Parameter(_) => {
            ImageError::Parameter(ParameterError::from_kind(ParameterErrorKind::Generic(e.to_string())))
        }
        ::png::DecodingError::LimitsExceeded => {
            ImageError::Limits(LimitError::from_kind(LimitErrorKind::InsufficientMemory))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::options::{Encode, ResizeMode};
    use super::super::process::tests::{card, options, psnr};
    use super::super::process::{Processed, Scratch, process_within};
    use super::*;
    use image::{DynamicImage, GrayImage, RgbImage};

    fn encode(img: &DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png).unwrap();
        out
    }

    /// Processed, with the bytes the decode asked the budget for.
    fn run(bytes: &[u8], o: &ProcessOptions) -> (Result<Processed, String>, u64) {
        let mut admitted = 0;
        let out = process_within(bytes, o, &mut Scratch::default(), &mut |n| {
            admitted += n;
            Ok(())
        });
        (out, admitted)
    }

    fn pixels(p: &Processed) -> RgbImage {
        image::load_from_memory(&p.bytes).unwrap().to_rgb8()
    }

    /// Row by row and averaged in blocks, a PNG comes out as the general decoder (full size, then the area
    /// resize) gives the same pixels (an opaque RGBA PNG of them, which it takes): the same sizes in every
    /// mode, PSNR over 40 dB written losslessly (JPEG at quality 95 itself costs about that), and under half
    /// a full RGB decode's bytes asked of the budget. Sides that blocks do not divide, grey, and a palette.
    #[test]
    fn reduced_rows_match_a_full_decode() {
        let palette = {
            let mut out = Vec::new();
            let mut encoder = ::png::Encoder::new(&mut out, 1500, 1000);
            encoder.set_color(::png::ColorType::Indexed);
            encoder.set_palette((0..=255u8).flat_map(|i| [i, 255 - i, i / 2]).collect::<Vec<u8>>());
            let mut writer = encoder.write_header().unwrap();
            let data: Vec<u8> = (0..1500 * 1000u32).map(|i| ((i % 1500) / 6 + (i / 1500) / 9) as u8).collect();
            writer.write_image_data(&data).unwrap();
            writer.finish().unwrap();
            out
        };
        let expanded = image::load_from_memory(&palette).unwrap();
        let grey = DynamicImage::ImageLuma8(GrayImage::from_fn(1100, 2300, |x, y| {
            image::Luma([((x / 7 + y / 5) % 256) as u8])
        }));
        let images = [
            ("1800x1200", DynamicImage::ImageRgb8(card(1800, 1200))),
            ("1201x2999", DynamicImage::ImageRgb8(card(1201, 2999))),
            ("3840x2160", DynamicImage::ImageRgb8(card(3840, 2160))),
            ("grey", grey),
        ];
        let mut cases: Vec<(&str, Vec<u8>, Vec<u8>, u64)> = images
            .iter()
            .map(|(name, img)| {
                (
                    *name,
                    encode(img),
                    encode(&DynamicImage::ImageRgba8(img.to_rgba8())),
                    img.width() as u64 * img.height() as u64,
                )
            })
            .collect();
        cases.push(("palette", palette, encode(&DynamicImage::ImageRgba8(expanded.to_rgba8())), 1500 * 1000));
        let modes = [ResizeMode::Border, ResizeMode::CenterCrop, ResizeMode::KeepRatio, ResizeMode::KeepRatioLargest];
        for (name, rows, general, pixels_in) in &cases {
            for mode in modes {
                let mut o = options(mode);
                o.image_size = 96;
                o.encode = Encode::Png;
                let ((a, asked), (b, _)) = (run(rows, &o), run(general, &o));
                let (a, b) = (a.unwrap(), b.unwrap());
                assert_eq!(
                    (a.width, a.height, a.original_width, a.original_height),
                    (b.width, b.height, b.original_width, b.original_height),
                    "{name} {mode:?}"
                );
                let db = psnr(&pixels(&a), &pixels(&b));
                assert!(db > 40.0, "{name} {mode:?}: PSNR {db:.1} dB");
                assert!(asked < 3 * pixels_in / 2, "{name} {mode:?}: asked {asked} for {pixels_in} pixels");
                assert!(decode(rows, &o, &mut Vec::new(), &mut |_| Ok(())).is_some(), "{name} {mode:?}");
            }
        }
    }

    /// The row path is taken for outputs under a quarter of the image only: an image shrunk less, or grown,
    /// goes through the general decoder as before, byte for byte.
    #[test]
    fn images_shrunk_less_than_fourfold_decode_whole() {
        let img = DynamicImage::ImageRgb8(card(300, 200));
        let (rgb, rgba) = (encode(&img), encode(&DynamicImage::ImageRgba8(img.to_rgba8())));
        for size in [38, 256, 600] {
            let mut o = options(ResizeMode::Border);
            o.image_size = size;
            let mut scratch = Scratch::default();
            assert!(decode(&rgb, &o, &mut Vec::new(), &mut |_| Ok(())).is_none(), "{size}");
            let a = process_within(&rgb, &o, &mut scratch, &mut |_| Ok(())).unwrap();
            let b = process_within(&rgba, &o, &mut scratch, &mut |_| Ok(())).unwrap();
            assert!(a.bytes == b.bytes, "{size}");
        }
        let mut o = options(ResizeMode::Border);
        o.image_size = 37;
        assert!(decode(&rgb, &o, &mut Vec::new(), &mut |_| Ok(())).is_some());
    }

    /// The multiplication gives what the division gives, for every count a block can have and every total.
    #[test]
    fn means_are_exact() {
        for count in (1..=300).chain([MAX_BLOCK as usize * MAX_BLOCK as usize - 1, (MAX_BLOCK * MAX_BLOCK) as usize]) {
            let mean = Mean::of(count);
            let c = count as u32;
            for total in (0..=255 * c).step_by(1 + count / 64) {
                assert_eq!(u32::from(mean.of_total(total)), (total + c / 2) / c, "{total} / {count}");
            }
            assert_eq!(u32::from(mean.of_total(255 * c)), 255);
        }
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    /// Where the chunk `fourcc` starts (its length field).
    fn chunk(png: &[u8], fourcc: &[u8; 4]) -> usize {
        png.windows(4).position(|w| w == fourcc).unwrap() - 4
    }

    /// Damaged image data fails the row (as the general decoder fails it), never makes a half image: a byte
    /// changed in the compressed rows (the chunk's CRC then fails), rows missing behind a header that promises
    /// more (CRCs right), a cut file.
    #[test]
    fn damaged_image_data_fails() {
        let o = options(ResizeMode::Border);
        let img = DynamicImage::ImageRgb8(card(1200, 900));
        let good = encode(&img);
        assert!(decode(&good, &o, &mut Vec::new(), &mut |_| Ok(())).is_some_and(|r| r.is_ok()));
        let mut flipped = good.clone();
        let idat = chunk(&good, b"IDAT");
        flipped[idat + 8 + 1000] ^= 0x55;
        // Half the rows, under a header that says 900.
        let mut short = encode(&DynamicImage::ImageRgb8(card(1200, 450)));
        short[16..24].copy_from_slice(&[0, 0, 4, 176, 0, 0, 3, 132]);
        let crc = crc32(&short[12..29]);
        short[29..33].copy_from_slice(&crc.to_be_bytes());
        for (name, bytes) in [("flipped", flipped), ("short", short)] {
            let err = decode(&bytes, &o, &mut Vec::new(), &mut |_| Ok(())).map(|r| r.err());
            let err = err.flatten().unwrap_or_else(|| panic!("{name}: no error"));
            assert!(err.starts_with("image decoding error: "), "{name}: {err}");
            let whole = super::super::process::tests::process_(&bytes, &o).err();
            assert_eq!(whole.as_deref(), Some(err.as_str()), "{name}");
        }
        let cut = super::super::process::tests::process_(&good[..good.len() / 2], &o).err();
        assert_eq!(cut.as_deref(), Some("image decoding error: truncated file: the PNG ends before its IEND chunk"));
    }
}
