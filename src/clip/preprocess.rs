//! Image preprocessing exactly as open_clip's ViT transforms do it (the ones all-clip and clip-retrieval
//! use): decode, convert to RGB the way Pillow's `convert("RGB")` does (alpha dropped, not composited; grey
//! repeated), resize the short side to the model's size with Pillow's antialiased bicubic, centre crop,
//! scale to [0, 1] and normalise with OpenAI's mean and std. open_clip's `preprocess_cfg` varies this
//! ([`PreprocessConfig`]): bilinear, squash or longest-side-and-pad, other mean and std, and alpha kept
//! through the resize (premultiplied, as Pillow resizes RGBA) when the transform gets the image as opened.
//! Palette images are resized as RGB(A) here; Pillow would resize a `P` image with NEAREST.
//!
//! The resize is Pillow's own algorithm (`libImaging/Resample.c`) transcribed: the same coefficients in
//! double precision, the same 22-bit fixed point, horizontal pass then vertical with 8-bit clipping in
//! between. A SIMD resizer with 16-bit coefficients (fast_image_resize, Pillow-SIMD) differs from it by one
//! level in about a sixth of the values and by up to ten on sharp edges; this matches it exactly.

use anyhow::{Context, anyhow};
use image::RgbImage;

/// OpenAI's CLIP normalisation (`OPENAI_DATASET_MEAN` / `_STD` in open_clip), written as open_clip writes them.
#[allow(clippy::excessive_precision)]
pub const OPENAI_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const OPENAI_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Decoding limits for untrusted images: a larger image is refused rather than allowed to exhaust memory.
pub const MAX_SIDE: u32 = 16_384;
pub const MAX_DECODE_BYTES: u64 = 512 << 20;

/// How an image becomes the model's square input: open_clip's `preprocess_cfg`.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    pub size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub filter: Filter,
    pub resize: ResizeMode,
    /// The padding level of [`ResizeMode::LongestThenPad`] (open_clip's `fill_color`).
    pub fill: u8,
    /// Images with alpha are resized before the alpha is dropped, premultiplied, as Pillow resizes the RGBA
    /// image that open_clip's transform gets from `Image.open` (its `convert("RGB")` comes after the resize).
    /// Off: alpha is dropped first, as `Image.open(...).convert("RGB")` before the transform does.
    pub alpha_before_convert: bool,
}

/// Pillow's resampling filters that open_clip's transforms use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Bicubic,
    Bilinear,
}

/// open_clip's `resize_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeMode {
    /// `shortest`: the short side becomes the size, then a centre crop (OpenAI's transform).
    ShortestThenCrop,
    /// `squash`: both sides become the size, the aspect ratio is not kept.
    Squash,
    /// `longest`: the long side becomes the size, then centred on a square of `fill`.
    LongestThenPad,
}

impl PreprocessConfig {
    /// OpenAI's CLIP transform at `size`: bicubic, shortest side then centre crop, OpenAI's mean and std,
    /// alpha dropped before the resize.
    pub fn openai(size: u32) -> Self {
        PreprocessConfig {
            size,
            mean: OPENAI_MEAN,
            std: OPENAI_STD,
            filter: Filter::Bicubic,
            resize: ResizeMode::ShortestThenCrop,
            fill: 0,
            alpha_before_convert: false,
        }
    }
}

pub struct Preprocess {
    pub size: u32,
    pub config: PreprocessConfig,
    /// Per channel, the normalised value of each 8-bit level: computed as torch does it, in f32
    /// (`k / 255`, then `(x - mean) / std`), so that the result is bit-identical to open_clip's.
    table: [[f32; 256]; 3],
}

/// Where the resized image lands: the part of it that is computed (`window`, in resized coordinates) and
/// where that part goes in the square output (`at`, for padding).
struct Placement {
    resized: (u32, u32),
    window: Window,
    at: (usize, usize),
}

impl Preprocess {
    pub fn openai(size: u32) -> Self {
        Self::new(PreprocessConfig::openai(size))
    }

    pub fn new(config: PreprocessConfig) -> Self {
        let mut table = [[0f32; 256]; 3];
        for (c, row) in table.iter_mut().enumerate() {
            for (k, v) in row.iter_mut().enumerate() {
                *v = (k as f32 / 255.0 - config.mean[c]) / config.std[c];
            }
        }
        Preprocess { size: config.size, config, table }
    }

    /// Values per image: 3 · size · size.
    pub fn len(&self) -> usize {
        3 * self.size as usize * self.size as usize
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Encoded image bytes (JPEG, PNG, WebP; the format is sniffed, not taken from a name) → CHW f32.
    pub fn pixels_from_bytes(&self, bytes: &[u8]) -> anyhow::Result<Vec<f32>> {
        let decoded = decode(bytes)?;
        if self.config.alpha_before_convert && decoded.color().has_alpha() {
            let rgba = decoded.to_rgba8();
            let (w, h) = rgba.dimensions();
            return self.pixels_of(rgba.as_raw(), w, h, 4);
        }
        self.pixels(&decoded.to_rgb8())
    }

    /// An RGB image → the model's input, CHW f32, `3 · size · size` values.
    pub fn pixels(&self, image: &RgbImage) -> anyhow::Result<Vec<f32>> {
        let (w, h) = image.dimensions();
        self.pixels_of(image.as_raw(), w, h, 3)
    }

    fn placement(&self, w: u32, h: u32) -> anyhow::Result<Placement> {
        let s = self.size;
        let full = |(rw, rh): (u32, u32)| Window { x: 0, y: 0, width: rw as usize, height: rh as usize };
        Ok(match self.config.resize {
            ResizeMode::ShortestThenCrop => {
                let (rw, rh) = resized_size(w, h, s);
                // torchvision's CenterCrop: int(round((h - size) / 2)) with Python's round-half-to-even.
                let (top, left) = (crop_offset(rh, s), crop_offset(rw, s));
                let window = Window { x: left as usize, y: top as usize, width: s as usize, height: s as usize };
                Placement { resized: (rw, rh), window, at: (0, 0) }
            }
            ResizeMode::Squash => Placement { resized: (s, s), window: full((s, s)), at: (0, 0) },
            ResizeMode::LongestThenPad => {
                let (rw, rh) = longest_size(w, h, s);
                if rw == 0 || rh == 0 {
                    anyhow::bail!("a {w}x{h} image is too elongated to fit {s}x{s} with its aspect ratio");
                }
                // open_clip's center_crop_or_pad: the smaller margin on the left and top.
                let at = (((s - rw) / 2) as usize, ((s - rh) / 2) as usize);
                Placement { resized: (rw, rh), window: full((rw, rh)), at }
            }
        })
    }

    /// `channels` (3, or 4 with alpha) 8-bit interleaved → CHW f32.
    fn pixels_of(&self, raw: &[u8], w: u32, h: u32, channels: usize) -> anyhow::Result<Vec<f32>> {
        if w == 0 || h == 0 {
            return Err(anyhow!("the image is empty ({w}x{h})"));
        }
        let s = self.size as usize;
        let Placement { resized: (rw, rh), window, at } = self.placement(w, h)?;
        let resampled;
        // (buffer, its row width in pixels, the window's origin in it)
        let (buf, bw, origin) = if (rw, rh) == (w, h) {
            // Pillow returns a copy when the size does not change: no resampling, no premultiplying.
            (raw, w as usize, (window.x, window.y))
        } else {
            // Only the window is computed: each output pixel of Pillow's resize depends on its own
            // coefficients alone, so this is exact, and a very elongated image cannot blow up the memory.
            let (rw, rh) = (rw as usize, rh as usize);
            resampled = if channels == 4 {
                let mut premultiplied = raw.to_vec();
                premultiplied.chunks_exact_mut(4).for_each(premultiply);
                let mut out =
                    pillow_resample(&premultiplied, 4, w as usize, h as usize, rw, rh, window, self.config.filter);
                out.chunks_exact_mut(4).for_each(unpremultiply);
                out
            } else {
                pillow_resample(raw, channels, w as usize, h as usize, rw, rh, window, self.config.filter)
            };
            (resampled.as_slice(), window.width, (0, 0))
        };
        let n = s * s;
        let mut out = vec![0f32; 3 * n];
        if (window.width, window.height) != (s, s) {
            for c in 0..3 {
                out[c * n..(c + 1) * n].fill(self.table[c][self.config.fill as usize]);
            }
        }
        for y in 0..window.height {
            let row = ((origin.1 + y) * bw + origin.0) * channels;
            let out_row = (at.1 + y) * s + at.0;
            for x in 0..window.width {
                let p = row + x * channels;
                for c in 0..3 {
                    out[c * n + out_row + x] = self.table[c][buf[p + c] as usize];
                }
            }
        }
        Ok(out)
    }
}

/// Pillow's RGBA → RGBa (`MULDIV255`, rounded).
fn premultiply(p: &mut [u8]) {
    let a = p[3] as u32;
    for c in &mut p[..3] {
        let t = *c as u32 * a + 128;
        *c = (((t >> 8) + t) >> 8) as u8;
    }
}

/// Pillow's RGBa → RGBA: `255 · c / a` truncated and clipped; alpha 0 and 255 leave the colour as it is.
fn unpremultiply(p: &mut [u8]) {
    let a = p[3] as u32;
    if a != 0 && a != 255 {
        for c in &mut p[..3] {
            *c = (255 * *c as u32 / a).min(255) as u8;
        }
    }
}

/// Decodes image bytes to 8-bit RGB as Pillow's `Image.open(...).convert("RGB")` does.
pub fn decode_rgb(bytes: &[u8]) -> anyhow::Result<RgbImage> {
    // DynamicImage's RGB conversion drops alpha and repeats grey, like Pillow's convert("RGB").
    Ok(decode(bytes)?.to_rgb8())
}

/// Decodes image bytes within the limits for untrusted images.
fn decode(bytes: &[u8]) -> anyhow::Result<image::DynamicImage> {
    let mut reader =
        image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().context("cannot read the image")?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    reader.decode().context("cannot decode the image")
}

/// Pillow's fixed-point precision for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

impl Filter {
    /// Pillow's kernel support.
    fn support(self) -> f64 {
        match self {
            Filter::Bicubic => 2.0,
            Filter::Bilinear => 1.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Bicubic => bicubic(x),
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
        }
    }
}

/// Pillow's BICUBIC kernel (a = -0.5), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for a full-image box, for output positions
/// `start..start + count`: per position the first input index, the tap count, and `ksize` fixed-point weights.
fn coefficients(
    in_size: usize,
    out_size: usize,
    start: usize,
    count: usize,
    filter: Filter,
) -> (Vec<(usize, usize)>, Vec<i32>, usize) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(count);
    let mut weights = vec![0i32; count * ksize];
    let mut k = vec![0f64; ksize];
    for (i, xx) in (start..start + count).enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates toward zero, as `as` does.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            *kx = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *kx;
        }
        for (x, kx) in k.iter().enumerate().take(xmax) {
            let w = if ww != 0.0 { kx / ww } else { *kx };
            let fixed = w * (1u32 << PRECISION_BITS) as f64;
            weights[i * ksize + x] = if w < 0.0 { (fixed - 0.5) as i32 } else { (fixed + 0.5) as i32 };
        }
        bounds.push((xmin, xmax));
    }
    (bounds, weights, ksize)
}

fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// The part of a resized image to compute.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

/// Pillow's `ImagingResample` on an 8-bit image of `channels` interleaved channels (3 or 4), `window` of the
/// `out_w` x `out_h` result: horizontal pass over the rows the vertical pass needs, then the vertical pass,
/// each rounding and clipping to 8 bits. (Pillow skips a pass whose size does not change; its coefficients
/// there are the identity, so running it gives the same bytes.)
#[allow(clippy::too_many_arguments)]
pub fn pillow_resample(
    src: &[u8],
    channels: usize,
    w: usize,
    h: usize,
    out_w: usize,
    out_h: usize,
    window: Window,
    filter: Filter,
) -> Vec<u8> {
    const ROUND: i32 = 1 << (PRECISION_BITS - 1);
    let Window { x: x0, y: y0, width: cw, height: ch } = window;
    let (vb, vk, vks) = coefficients(h, out_h, y0, ch, filter);
    let (hb, hk, hks) = coefficients(w, out_w, x0, cw, filter);
    let (first, last) = (vb[0].0, vb[ch - 1].0 + vb[ch - 1].1);
    let nc = channels;
    let mut tmp = vec![0u8; (last - first) * cw * nc];
    for (row, y) in (first..last).enumerate() {
        let line = &src[y * w * nc..(y + 1) * w * nc];
        for (xx, &(xmin, n)) in hb.iter().enumerate() {
            let k = &hk[xx * hks..xx * hks + n];
            let mut ss = [ROUND; 4];
            for (x, &kx) in k.iter().enumerate() {
                let p = (xmin + x) * nc;
                for c in 0..nc {
                    ss[c] += line[p + c] as i32 * kx;
                }
            }
            let o = (row * cw + xx) * nc;
            for c in 0..nc {
                tmp[o + c] = clip8(ss[c]);
            }
        }
    }
    let mut out = vec![0u8; ch * cw * nc];
    for (yy, &(ymin, n)) in vb.iter().enumerate() {
        let k = &vk[yy * vks..yy * vks + n];
        let ymin = ymin - first;
        let o = yy * cw * nc;
        for i in 0..cw * nc {
            let mut ss = ROUND;
            for (y, &ky) in k.iter().enumerate() {
                ss += tmp[(ymin + y) * cw * nc + i] as i32 * ky;
            }
            out[o + i] = clip8(ss);
        }
    }
    out
}

/// torchvision's `Resize(size)` on a PIL image: the short side becomes `size`, the long side
/// `int(size * long / short)` (truncated).
pub fn resized_size(w: u32, h: u32, size: u32) -> (u32, u32) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (size as f64 * long as f64 / short as f64) as u32;
    if w <= h { (size, new_long) } else { (new_long, size) }
}

/// open_clip's `ResizeKeepRatio` with `longest = 1`: both sides divided by the larger of the two ratios to
/// the size, each rounded half to even as Python's `round` does.
pub fn longest_size(w: u32, h: u32, size: u32) -> (u32, u32) {
    let ratio = (w as f64 / size as f64).max(h as f64 / size as f64);
    ((w as f64 / ratio).round_ties_even() as u32, (h as f64 / ratio).round_ties_even() as u32)
}

/// `int(round((len - size) / 2.0))` with round-half-to-even, as Python rounds.
fn crop_offset(len: u32, size: u32) -> u32 {
    let d = len.saturating_sub(size);
    let half = d / 2;
    if d % 2 == 1 && half % 2 == 1 { half + 1 } else { half }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_offsets_follow_torchvision() {
        assert_eq!(resized_size(512, 512, 336), (336, 336));
        assert_eq!(resized_size(600, 400, 336), (504, 336));
        assert_eq!(resized_size(200, 120, 336), (560, 336));
        assert_eq!(resized_size(300, 451, 224), (224, 336));
        // (339 - 336) / 2 = 1.5 → 2; (341 - 336) / 2 = 2.5 → 2; (337 - 336) / 2 = 0.5 → 0
        assert_eq!(crop_offset(339, 336), 2);
        assert_eq!(crop_offset(341, 336), 2);
        assert_eq!(crop_offset(337, 336), 0);
        assert_eq!(crop_offset(336, 336), 0);
    }

    #[test]
    fn extreme_aspect_ratios_compute_only_the_crop() {
        let p = Preprocess::openai(336);
        // Resized in full this would be 336 x 5,505,024 pixels (5.5 GB); only the 336 x 336 crop is made.
        let thin = RgbImage::from_fn(1, 16_384, |_, y| image::Rgb([(y % 256) as u8, 0, 255]));
        let px = p.pixels(&thin).unwrap();
        assert_eq!(px.len(), p.len());
        let flat = RgbImage::from_pixel(300, 2, image::Rgb([10, 20, 30]));
        let px = p.pixels(&flat).unwrap();
        // A constant image stays constant through the resize.
        assert!(px[..336 * 336].iter().all(|v| *v == p.table[0][10]));
    }

    #[test]
    fn longest_side_resizes_round_half_to_even_and_pads_with_the_fill() {
        // 200x120 → ratio 200/56: 56 x round(33.6) = 34; 0.5 ties go to even as Python's round.
        assert_eq!(longest_size(200, 120, 56), (56, 34));
        assert_eq!(longest_size(120, 200, 56), (34, 56));
        assert_eq!(longest_size(112, 9, 56), (56, 4)); // 4.5 → 4
        assert_eq!(longest_size(112, 11, 56), (56, 6)); // 5.5 → 6
        let config = PreprocessConfig { resize: ResizeMode::LongestThenPad, fill: 7, ..PreprocessConfig::openai(8) };
        let p = Preprocess::new(config);
        let px = p.pixels(&RgbImage::from_pixel(16, 4, image::Rgb([200, 200, 200]))).unwrap();
        // 16x4 → 8x2, centred: rows 3 and 4 hold the image, the others the fill.
        let rows: Vec<f32> = (0..8).map(|y| px[y * 8]).collect();
        let (fill, img) = (p.table[0][7], p.table[0][200]);
        assert_eq!(rows, [fill, fill, fill, img, img, fill, fill, fill]);
    }

    #[test]
    fn alpha_is_resized_premultiplied_as_pillow_does() {
        // Pillow: RGBA → RGBa is round(c·a/255), RGBa → RGBA is 255·c/a truncated; 0 and 255 keep the colour.
        let mut p = [200, 100, 3, 128];
        premultiply(&mut p);
        assert_eq!(p, [100, 50, 2, 128]);
        unpremultiply(&mut p);
        assert_eq!(p, [199, 99, 3, 128]);
        let mut clear = [10, 20, 30, 0];
        premultiply(&mut clear);
        unpremultiply(&mut clear);
        assert_eq!(clear, [0, 0, 0, 0]);
    }

    #[test]
    fn normalisation_table_matches_torch_arithmetic() {
        let p = Preprocess::openai(336);
        assert_eq!(p.table[0][0], (0.0f32 - OPENAI_MEAN[0]) / OPENAI_STD[0]);
        assert!((p.table[2][255] - (1.0 - OPENAI_MEAN[2]) / OPENAI_STD[2]).abs() < 1e-6);
    }
}
