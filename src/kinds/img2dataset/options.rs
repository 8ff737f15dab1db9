//! img2dataset's rules for one image, shared by the general decoder (`process.rs`) and the fast paths
//! (`jpeg.rs`, `webp.rs`): the options, the size checks with their messages, the resized size, and what a
//! decoder hands back.

use image::ImageFormat;

crate::setting_enum! {
    /// img2dataset's resize modes.
    pub enum ResizeMode {
        No = "no",
        KeepRatio = "keep_ratio",
        KeepRatioLargest = "keep_ratio_largest",
        CenterCrop = "center_crop",
        Border = "border",
    }
}

crate::setting_enum! {
    /// The format images are written in.
    pub enum Encode {
        Jpg = "jpg",
        Png = "png",
        Webp = "webp",
    }
}

impl Encode {
    pub fn ext(self) -> &'static str {
        match self {
            Encode::Jpg => "jpg",
            Encode::Png => "png",
            Encode::Webp => "webp",
        }
    }
    fn format(self) -> ImageFormat {
        match self {
            Encode::Jpg => ImageFormat::Jpeg,
            Encode::Png => ImageFormat::Png,
            Encode::Webp => ImageFormat::WebP,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProcessOptions {
    pub image_size: u32,
    pub mode: ResizeMode,
    pub resize_only_if_bigger: bool,
    pub skip_reencode: bool,
    pub encode: Encode,
    pub quality: u8,
    pub min_image_size: u32,
    pub max_image_area: f64,
    pub max_aspect_ratio: f64,
    /// Decoded pixels allowed; checked from the header before decoding.
    pub max_pixels: u64,
}

/// Asked, once the header is read and before anything is allocated, for the bytes a decode will allocate (the
/// build's memory budget admits them, waiting for room); an error fails the row.
pub type Admit<'a> = &'a mut dyn FnMut(u64) -> Result<(), String>;

/// Python's round(): halves to even, as albumentations' sizes are computed.
fn py_round(x: f64) -> u32 {
    x.round_ties_even().max(1.0) as u32
}

/// Where decoded RGB pixels are: the first bytes of the scratch buffer, or a buffer of their own.
pub enum Pixels {
    Scratch(usize),
    Owned(Vec<u8>),
}

/// An image decoded to RGB, upright; `width`×`height` may be a DCT-scaled version of the original.
pub struct Decoded {
    pub pixels: Pixels,
    pub width: u32,
    pub height: u32,
    pub original_width: u32,
    pub original_height: u32,
    pub upright: bool,
    /// Alpha was composited on white, so the original bytes cannot be kept.
    pub composited: bool,
    /// The width and height, in these pixels, that the original covers when it is less than all of them: a
    /// block-reduced image whose last blocks are partial (`png.rs`). The resizer reads that region.
    pub covers: Option<(f64, f64)>,
}

impl ProcessOptions {
    /// Whether an image that needs no resizing is kept byte for byte (`skip_reencode`).
    pub fn keeps_original(&self, format: ImageFormat, upright: bool) -> bool {
        self.skip_reencode && format == self.encode.format() && upright
    }
}

pub fn over_pixel_limit(w: u32, h: u32, o: &ProcessOptions) -> String {
    format!("image is {w}x{h} pixels, over the {}-pixel limit", o.max_pixels)
}

/// The checks on a header's dimensions, before any pixel is allocated: no side may be zero (a 0×9000 GIF
/// screen would make an infinite resize scale), and the decoded pixels must fit the cap.
pub fn check_dimensions(o: &ProcessOptions, w: u32, h: u32) -> Result<(), String> {
    if w == 0 || h == 0 {
        return Err(format!("image is {w}x{h} pixels: a side is zero"));
    }
    if u64::from(w) * u64::from(h) > o.max_pixels {
        return Err(over_pixel_limit(w, h, o));
    }
    Ok(())
}

/// img2dataset's checks on the (upright) original size, with its messages.
pub fn check_size(o: &ProcessOptions, w: u32, h: u32) -> Result<(), String> {
    if w.min(h) < o.min_image_size {
        return Err("image too small".to_string());
    }
    if f64::from(w) * f64::from(h) > o.max_image_area {
        return Err("image area too large".to_string());
    }
    if f64::from(w.max(h)) / f64::from(w.min(h).max(1)) > o.max_aspect_ratio {
        return Err("aspect ratio too large".to_string());
    }
    Ok(())
}

/// The bytes that resizing, padding or cropping and encoding allocate after a decode to `dw`×`dh` RGB pixels, for
/// an (upright) original of `ow`×`oh`: the resizer's intermediate rows, its output, the square, the encoder's
/// buffer. An upper bound, for the memory budget.
pub fn after_decode_bytes(o: &ProcessOptions, ow: u32, oh: u32, dw: u32, dh: u32) -> u64 {
    let (dw, dh) = (u64::from(dw), u64::from(dh));
    match resized_size(o, ow, oh) {
        Ok(Some((nw, nh, _))) => {
            let (nw, nh, size) = (u64::from(nw), u64::from(nh), u64::from(o.image_size));
            let square = match o.mode {
                ResizeMode::Border | ResizeMode::CenterCrop => size * size,
                _ => 0,
            };
            3 * ((nw * dh).max(dw * nh) + nw * nh + 2 * square.max(nw * nh))
        }
        _ => 3 * dw * dh,
    }
}

/// The size img2dataset resizes a `w`×`h` image to before cropping or padding, and whether that shrinks
/// it; `None` when it is not resized. An error when that size is absurd: a zero side, or more pixels than the
/// cap allows (a 1×9000 strip under `center_crop` to 256 px would be 256×2,304,000), so that nothing of that
/// size is ever allocated.
pub fn resized_size(o: &ProcessOptions, w: u32, h: u32) -> Result<Option<(u32, u32, bool)>, String> {
    let size = o.image_size;
    let side = match o.mode {
        ResizeMode::No => return Ok(None),
        ResizeMode::KeepRatio | ResizeMode::CenterCrop => w.min(h),
        ResizeMode::KeepRatioLargest | ResizeMode::Border => w.max(h),
    };
    let downscale = side > size;
    if o.resize_only_if_bigger && !downscale {
        return Ok(None);
    }
    if w == 0 || h == 0 {
        return Err(format!("image is {w}x{h} pixels: a side is zero"));
    }
    let scale = f64::from(size) / f64::from(side);
    let (nw, nh) = (f64::from(w) * scale, f64::from(h) * scale);
    // Checked as floats: the u32 casts below saturate, which would hide an overflow.
    if !scale.is_finite() || nw.round() * nh.round() > o.max_pixels as f64 {
        return Err(format!(
            "resizing {w}x{h} to {size} px ({}) would make {nw:.0}x{nh:.0} pixels, over the {}-pixel limit",
            o.mode, o.max_pixels
        ));
    }
    Ok(Some((py_round(nw), py_round(nh), downscale)))
}
