//! JPEG through libjpeg-turbo: decoding scaled in the DCT (1/2, 1/4 or 1/8 of each side, chosen so the result
//! is still at least the size img2dataset resizes to), and encoding with the library OpenCV uses, so that
//! `encode_quality` means what it means to img2dataset users.
//!
//! DCT scaling is most of the speed on large photos: a 3,000 px JPEG bound for 256 px decodes an eighth of
//! the pixels. The area filter that follows sees a slightly different input than a full decode would give
//! it (the IDCT's own averaging), which is invisible at the output size.

use super::options::{Admit, Decoded, Pixels, ProcessOptions, after_decode_bytes};
use image::ImageFormat;
use image::metadata::Orientation;
use turbojpeg::{Colorspace, Compressor, Decompressor, Image, PixelFormat, ScalingFactor, Subsamp};

/// libjpeg-turbo handles, kept per thread: creating them costs more than decoding a thumbnail.
#[derive(Default)]
pub struct Codec {
    decompressor: Option<Decompressor>,
    compressor: Option<Compressor>,
}

/// Scans a progressive JPEG may have. Each scan walks every block of the image, so a small file of many
/// near-empty scans costs scans × pixels (libjpeg-turbo's "two issues with the JPEG standard"); real
/// encoders write about 10. 100 is what the general decoder (zune-jpeg) allows by default, so both paths
/// refuse the same files.
pub const SCAN_LIMIT: u32 = 100;

impl Codec {
    fn decompressor(&mut self) -> Option<&mut Decompressor> {
        if self.decompressor.is_none() {
            let mut d = Decompressor::new().ok()?;
            d.set_scan_limit(SCAN_LIMIT).ok()?;
            self.decompressor = Some(d);
        }
        self.decompressor.as_mut()
    }
}

/// Decodes a JPEG, scaled when the output allows it. `None` hands the image to the general decoder: CMYK
/// and lossless JPEGs, and files libjpeg-turbo rejects or warns about (stray bytes before a marker, which
/// the general decoder tolerates), except a cut file and one over the scan limit, which fail here.
pub fn decode(
    bytes: &[u8],
    o: &ProcessOptions,
    codec: &mut Codec,
    pixels: &mut Vec<u8>,
    admit: Admit,
) -> Option<Result<Decoded, String>> {
    let decompressor = codec.decompressor()?;
    let header = decompressor.read_header(bytes).ok()?;
    if matches!(header.colorspace, Colorspace::CMYK | Colorspace::YCCK) || header.is_lossless {
        return None;
    }
    let (w, h) = (header.width as u32, header.height as u32);
    if let Err(e) = super::options::check_dimensions(o, w, h) {
        return Some(Err(e));
    }
    let orientation = orientation(bytes);
    let transposed = transposes(orientation);
    let (ow, oh) = if transposed { (h, w) } else { (w, h) };
    if let Err(e) = super::options::check_size(o, ow, oh) {
        return Some(Err(e));
    }
    let target = match super::options::resized_size(o, ow, oh) {
        Ok(target) => target,
        Err(e) => return Some(Err(e)),
    };
    let scale = match target {
        Some((tw, th, _)) => {
            let (tw, th) = if transposed { (th, tw) } else { (tw, th) };
            largest_reduction(w, h, tw, th)
        }
        // Kept as downloaded: decoding an eighth is enough to know the file is a whole image.
        None if o.keeps_original(ImageFormat::Jpeg, orientation == Orientation::NoTransforms) => {
            ScalingFactor::ONE_EIGHTH
        }
        None => ScalingFactor::ONE,
    };
    let (sw, sh) = (scale.scale(w as usize), scale.scale(h as usize));
    let n = sw * sh * 3;
    // The pixels (three times when turned: a copy, and the turned image), and a progressive file's DCT
    // coefficients for the whole image at full size (two bytes a sample), which libjpeg keeps until the last scan.
    let upright = orientation == Orientation::NoTransforms;
    let coefficients = if header.is_progressive { 2 * samples(&header) } else { 0 };
    // Resized from an eighth, a progressive file is decoded from its DC scans (`dc_scans`); a file kept as
    // downloaded is decoded whole, its check being the point.
    let dc_only = (header.is_progressive && target.is_some() && scale == ScalingFactor::ONE_EIGHTH)
        .then(|| super::dc_scans::dc_scans_only(bytes, SCAN_LIMIT))
        .flatten();
    let (dw, dh) = if transposed { (sh as u32, sw as u32) } else { (sw as u32, sh as u32) };
    let cost = n as u64 * if upright { 1 } else { 3 }
        + coefficients
        + dc_only.as_ref().map_or(0, |d| d.len() as u64)
        + after_decode_bytes(o, ow, oh, dw, dh);
    if let Err(e) = admit(cost) {
        return Some(Err(e));
    }
    super::process::room(pixels, n);
    decompressor.set_scaling_factor(scale).ok()?;
    // Where libjpeg-turbo refuses the cut-down stream, the whole file decides: its errors and warnings are the
    // file's.
    let from_dc =
        dc_only.as_ref().is_some_and(|cut| decompressor.decompress(cut, rgb(&mut pixels[..n], sw, sh)).is_ok());
    if !from_dc && let Err(e) = decompressor.decompress(bytes, rgb(&mut pixels[..n], sw, sh)) {
        return refused(&e);
    }
    let (sw, sh) = (sw as u32, sh as u32);
    let (pixels, width, height) = if orientation == Orientation::NoTransforms {
        (Pixels::Scratch(n), sw, sh)
    } else {
        let rgb = image::RgbImage::from_raw(sw, sh, pixels[..n].to_vec())?;
        let mut img = image::DynamicImage::ImageRgb8(rgb);
        img.apply_orientation(orientation);
        let rgb = img.into_rgb8();
        let (width, height) = rgb.dimensions();
        (Pixels::Owned(rgb.into_raw()), width, height)
    };
    Some(Ok(Decoded {
        pixels,
        width,
        height,
        original_width: ow,
        original_height: oh,
        upright: orientation == Orientation::NoTransforms,
        composited: false,
        covers: None,
    }))
}

/// `pixels` as libjpeg-turbo's output: packed RGB rows.
fn rgb(pixels: &mut [u8], width: usize, height: usize) -> Image<&mut [u8]> {
    Image { pixels, width, pitch: width * 3, height, format: PixelFormat::RGB }
}

/// Samples in all components at full size, from the subsampling: 3 per pixel at 4:4:4, 1.5 at 4:2:0.
fn samples(header: &turbojpeg::DecompressHeader) -> u64 {
    let pixels = header.width as u64 * header.height as u64;
    let halves = match header.subsamp {
        Subsamp::Gray => 2,
        Subsamp::Sub2x2 | Subsamp::Sub4x1 | Subsamp::Sub1x4 => 3,
        Subsamp::Sub2x1 | Subsamp::Sub1x2 => 4,
        _ => 6,
    };
    pixels * halves / 2
}

/// What to make of libjpeg-turbo's error (or warning, which TurboJPEG reports the same way): a verdict for
/// a file the general decoder must not retry (it would redo the work the limit refused), `None` otherwise.
fn refused(e: &turbojpeg::Error) -> Option<Result<Decoded, String>> {
    let turbojpeg::Error::TurboJpegError(message) = e else { return None };
    if message.starts_with("Progressive JPEG image has more than") {
        return Some(Err(format!("image decoding error: progressive JPEG with over {SCAN_LIMIT} scans")));
    }
    // A warning libjpeg-turbo fills in grey for; `ends_early` catches it first unless a marker lies about
    // a length.
    if message.contains("Premature end of JPEG file") {
        return Some(Err("image decoding error: truncated file: the JPEG data ends early".to_string()));
    }
    None
}

/// Where the next 0xFF from `at` is; the end when there is none. (memchr: entropy-coded data is most of a
/// file, and a byte-at-a-time search cost a percent of a build.)
fn next_ff(bytes: &[u8], at: usize) -> usize {
    bytes.get(at..).and_then(|rest| memchr::memchr(0xff, rest)).map_or(bytes.len(), |p| at + p)
}

/// Why a JPEG's data ends before its end-of-image marker, walking its markers as libjpeg reads them:
/// segments by their lengths, entropy-coded data up to the next marker (0xFF then neither a stuffed zero nor
/// a restart), stray bytes between markers skipped. What follows the first EOI (a second image, a motion
/// photo's video) is not looked at.
pub fn ends_early(bytes: &[u8]) -> Option<&'static str> {
    const EARLY: Option<&str> = Some("the JPEG ends before its end-of-image marker");
    let mut at = 2; // after SOI
    loop {
        // The next marker: skip stray bytes up to an 0xFF, then fill bytes (more 0xFF).
        at = next_ff(bytes, at);
        while bytes.get(at) == Some(&0xff) {
            at += 1;
        }
        let Some(&marker) = bytes.get(at) else { return EARLY };
        at += 1;
        match marker {
            0xd9 => return None,
            // Standalone markers: no length.
            0x00 | 0x01 | 0xd0..=0xd7 => continue,
            _ => {}
        }
        let Some(len) = bytes.get(at..at + 2) else { return EARLY };
        at += usize::from(u16::from_be_bytes([len[0], len[1]]));
        if at > bytes.len() {
            return EARLY;
        }
        if marker == 0xda {
            let Some(end) = entropy_end(bytes, at) else { return EARLY };
            at = end;
        }
    }
}

/// Where a scan's entropy-coded data from `at` ends: at the next 0xFF followed by neither a stuffed zero nor
/// a restart marker. `None` when the data runs to the end of the file.
pub(super) fn entropy_end(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        at = next_ff(bytes, at);
        match bytes.get(at + 1)? {
            0x00 | 0xd0..=0xd7 => at += 2,
            _ => return Some(at),
        }
    }
}

/// The smallest of 1/8, 1/4, 1/2 that keeps both sides at least the target's (scaling up never shrinks).
fn largest_reduction(w: u32, h: u32, tw: u32, th: u32) -> ScalingFactor {
    [ScalingFactor::ONE_EIGHTH, ScalingFactor::ONE_QUARTER, ScalingFactor::ONE_HALF]
        .into_iter()
        .find(|f| f.scale(w as usize) >= tw as usize && f.scale(h as usize) >= th as usize)
        .unwrap_or(ScalingFactor::ONE)
}

/// The TIFF data of a JPEG's EXIF: the first APP1 segment that starts `Exif\0\0`, looked for in the header
/// only (up to the first scan, where libjpeg and exifread look too). `None` for a JPEG without one, or one
/// whose header is cut or malformed.
pub fn exif_segment(bytes: &[u8]) -> Option<&[u8]> {
    let mut at = 2; // after SOI
    loop {
        // The next marker, past stray bytes and fill bytes.
        at = next_ff(bytes, at);
        while bytes.get(at) == Some(&0xff) {
            at += 1;
        }
        let marker = *bytes.get(at)?;
        at += 1;
        match marker {
            0x00 | 0x01 | 0xd0..=0xd7 => continue,
            // SOI, EOI, SOS: no EXIF in the header.
            0xd8..=0xda => return None,
            _ => {}
        }
        let len = usize::from(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
        let segment = bytes.get(at + 2..(at + len).max(at + 2))?;
        if marker == 0xe1
            && let Some(tiff) = segment.strip_prefix(b"Exif\0\0")
        {
            return Some(tiff);
        }
        at += len.max(2);
    }
}

/// The EXIF orientation, read from the APP1 segment without decoding anything.
fn orientation(bytes: &[u8]) -> Orientation {
    let Some(exif) = super::exif::read(bytes) else {
        return Orientation::NoTransforms;
    };
    exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY)
        .and_then(|f| f.value.get_uint(0))
        .and_then(|v| u8::try_from(v).ok())
        .and_then(Orientation::from_exif)
        .unwrap_or(Orientation::NoTransforms)
}

fn transposes(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
    )
}

/// Encodes RGB pixels at `quality` with 4:2:0 chroma, as OpenCV's `imencode(".jpg")` does.
pub fn encode(codec: &mut Codec, pixels: &[u8], w: u32, h: u32, quality: u8) -> Result<Vec<u8>, String> {
    let fail = |e: turbojpeg::Error| format!("image encoding error: {e}");
    if codec.compressor.is_none() {
        codec.compressor = Some(Compressor::new().map_err(fail)?);
    }
    let compressor = codec.compressor.as_mut().ok_or("image encoding error: no JPEG encoder")?;
    compressor.set_quality(i32::from(quality.clamp(1, 100))).map_err(fail)?;
    compressor.set_subsamp(Subsamp::Sub2x2).map_err(fail)?;
    let (w, h) = (w as usize, h as usize);
    let image = Image { pixels, width: w, pitch: w * 3, height: h, format: PixelFormat::RGB };
    compressor.compress_to_vec(image).map_err(fail)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn reduces_as_far_as_the_target_allows() {
        assert_eq!(largest_reduction(3000, 2000, 256, 171), ScalingFactor::ONE_EIGHTH);
        assert_eq!(largest_reduction(1500, 1000, 256, 171), ScalingFactor::ONE_QUARTER);
        assert_eq!(largest_reduction(600, 400, 256, 171), ScalingFactor::ONE_HALF);
        assert_eq!(largest_reduction(300, 200, 256, 171), ScalingFactor::ONE);
        assert_eq!(largest_reduction(100, 80, 256, 205), ScalingFactor::ONE);
    }

    /// A progressive JPEG, its last scan repeated `extra` times before the end-of-image marker.
    pub fn with_extra_scans(extra: usize) -> Vec<u8> {
        let img = Image::mandelbrot(16, 16, PixelFormat::RGB);
        let mut c = Compressor::new().unwrap();
        c.set_progressive(true).unwrap();
        let jpeg = c.compress_to_vec(img.as_deref()).unwrap();
        let eoi = jpeg.len() - 2;
        assert_eq!(&jpeg[eoi..], [0xff, 0xd9]);
        let last_sos = jpeg.windows(2).rposition(|w| w == [0xff, 0xda]).unwrap();
        let mut out = jpeg[..eoi].to_vec();
        for _ in 0..extra {
            out.extend_from_slice(&jpeg[last_sos..eoi]);
        }
        out.extend_from_slice(&jpeg[eoi..]);
        out
    }

    /// A JPEG's EXIF is the first `Exif` APP1 segment of its header (after other APP segments); one after the
    /// first scan is not looked for, nor anything in a header that is cut.
    #[test]
    fn exif_is_read_from_the_header_only() {
        let jpeg = with_extra_scans(0);
        let tiff: &[u8] = b"II*\0\x08\0\0\0\0\0";
        let segment = |marker: u8, body: &[u8]| {
            let mut s = vec![0xff, marker];
            s.extend(((body.len() + 2) as u16).to_be_bytes());
            s.extend_from_slice(body);
            s
        };
        let exif = segment(0xe1, &[b"Exif\0\0", tiff].concat());
        let mut with = jpeg[..2].to_vec();
        with.extend(segment(0xe0, b"JFIF\0\x01\x02"));
        with.extend(segment(0xe1, b"http://ns.adobe.com/xap/1.0/\0"));
        with.extend(&exif);
        with.extend(&jpeg[2..]);
        assert_eq!(exif_segment(&with), Some(tiff));
        assert_eq!(exif_segment(&jpeg), None);
        assert_eq!(exif_segment(&with[..with.len() - jpeg.len() + 2 - 4]), None, "cut in the segment");
        let eoi = jpeg.len() - 2;
        let after = [&jpeg[..eoi], &exif, &jpeg[eoi..]].concat();
        assert_eq!(exif_segment(&after), None, "after the first scan");
    }

    /// The scan limit stops libjpeg-turbo at scan 101, and the general decoder is not tried after it.
    #[test]
    fn scans_are_limited() {
        use super::super::process::{Scratch, process, tests::options};
        let o = options(super::super::options::ResizeMode::Border);
        assert!(process(&with_extra_scans(10), &o, &mut Scratch::default()).is_ok());
        let err = process(&with_extra_scans(200), &o, &mut Scratch::default()).err();
        assert_eq!(err.as_deref(), Some("image decoding error: progressive JPEG with over 100 scans"));
    }

    /// libjpeg-turbo's warning about a cut file is a failure too, for a file whose markers `ends_early`
    /// cannot see through; the marker walk itself stops at the first EOI.
    #[test]
    fn a_cut_file_is_truncated_to_both_checks() {
        use super::super::process::tests::options;
        let jpeg = with_extra_scans(0);
        assert_eq!(ends_early(&jpeg), None);
        let cut = &jpeg[..jpeg.len() - 40];
        assert_eq!(ends_early(cut), Some("the JPEG ends before its end-of-image marker"));
        let o = options(super::super::options::ResizeMode::No);
        let err = decode(cut, &o, &mut Codec::default(), &mut Vec::new(), &mut |_| Ok(())).map(|r| r.err());
        assert_eq!(err, Some(Some("image decoding error: truncated file: the JPEG data ends early".to_string())));
        let mut two = jpeg.clone();
        two.extend_from_slice(cut);
        assert_eq!(ends_early(&two), None);
    }
}
