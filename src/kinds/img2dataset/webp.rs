//! Lossy and lossless WebP through libwebp, the library OpenCV (img2dataset) decodes WebP with: about twice
//! as fast as the pure-Rust decoder, and it rescales while writing rows (an area filter), so a photo bound for
//! 256 px never exists at full size in RGB. Animated, alpha and EXIF-carrying files go to the general
//! decoder, which animates, composites and orients them.

use super::options::{
    Admit, Decoded, Pixels, ProcessOptions, after_decode_bytes, check_dimensions, check_size, resized_size,
};
use libwebp_sys as webp;

/// `None` hands the image to the general decoder, also for a file libwebp rejects (it words the error).
pub fn decode(bytes: &[u8], o: &ProcessOptions, pixels: &mut Vec<u8>, admit: Admit) -> Option<Result<Decoded, String>> {
    if has_chunk(bytes, &[b"EXIF", b"ANIM"]) {
        return None;
    }
    let mut config = webp::WebPDecoderConfig::new().ok()?;
    // SAFETY: `bytes` is a live slice of the given length; `config.input` is a valid, initialised struct.
    let status = unsafe { webp::WebPGetFeatures(bytes.as_ptr(), bytes.len(), &mut config.input) };
    if status != webp::VP8StatusCode::VP8_STATUS_OK || config.input.has_animation != 0 || config.input.has_alpha != 0 {
        return None;
    }
    let (w, h) = (u32::try_from(config.input.width).ok()?, u32::try_from(config.input.height).ok()?);
    if let Err(e) = check_dimensions(o, w, h) {
        return Some(Err(e));
    }
    if let Err(e) = check_size(o, w, h) {
        return Some(Err(e));
    }
    // Only shrinking is left to libwebp; growing is the resizer's (Lanczos, as img2dataset).
    let (tw, th) = match resized_size(o, w, h) {
        Ok(Some((nw, nh, true))) => (nw, nh),
        Ok(_) => (w, h),
        Err(e) => return Some(Err(e)),
    };
    if (tw, th) != (w, h) {
        config.options.use_scaling = 1;
        config.options.scaled_width = i32::try_from(tw).ok()?;
        config.options.scaled_height = i32::try_from(th).ok()?;
    }
    let n = tw as usize * th as usize * 3;
    if let Err(e) = admit(n as u64 + after_decode_bytes(o, w, h, tw, th)) {
        return Some(Err(e));
    }
    super::process::room(pixels, n);
    config.output.colorspace = webp::WEBP_CSP_MODE::MODE_RGB;
    config.output.is_external_memory = 1;
    config.output.u.RGBA =
        webp::WebPRGBABuffer { rgba: pixels.as_mut_ptr(), stride: i32::try_from(tw * 3).ok()?, size: n };
    // SAFETY: the output buffer is `pixels`, at least `n` bytes, rows of `stride` bytes as declared; libwebp
    // writes only within it (external memory) and keeps no pointer after WebPDecode returns.
    let status = unsafe { webp::WebPDecode(bytes.as_ptr(), bytes.len(), &mut config) };
    if status == webp::VP8StatusCode::VP8_STATUS_NOT_ENOUGH_DATA {
        return Some(Err("image decoding error: truncated file: the WebP bitstream ends early".to_string()));
    }
    if status != webp::VP8StatusCode::VP8_STATUS_OK {
        return None;
    }
    Some(Ok(Decoded {
        pixels: Pixels::Scratch(n),
        width: tw,
        height: th,
        original_width: w,
        original_height: h,
        upright: true,
        composited: false,
        covers: None,
    }))
}

/// Why a WebP's data ends before its RIFF header says it does (libwebp's own test, applied to the files
/// the general decoder gets too).
pub fn ends_early(bytes: &[u8]) -> Option<&'static str> {
    let size = bytes.get(4..8)?;
    let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]) as usize;
    (size.saturating_add(8) > bytes.len()).then_some("the WebP ends before the size its RIFF header gives")
}

/// Whether the RIFF container holds any of `fourccs` among its chunks.
fn has_chunk(bytes: &[u8], fourccs: &[&[u8; 4]]) -> bool {
    let mut at = 12;
    while let Some(header) = bytes.get(at..at + 8) {
        if fourccs.iter().any(|f| &header[..4] == *f) {
            return true;
        }
        let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        at = at.saturating_add(8).saturating_add(size + (size & 1));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_chunks_by_walking_the_container() {
        let chunk = |fourcc: &[u8; 4], data: &[u8]| {
            let mut c = fourcc.to_vec();
            c.extend_from_slice(&(data.len() as u32).to_le_bytes());
            c.extend_from_slice(data);
            if data.len() % 2 == 1 {
                c.push(0);
            }
            c
        };
        let mut file = b"RIFF\0\0\0\0WEBP".to_vec();
        file.extend(chunk(b"VP8X", &[0; 10]));
        file.extend(chunk(b"VP8 ", &[1, 2, 3]));
        assert!(!has_chunk(&file, &[b"EXIF", b"ANIM"]));
        file.extend(chunk(b"EXIF", b"Exif"));
        assert!(has_chunk(&file, &[b"EXIF"]));
        assert!(!has_chunk(&file[..20], &[b"EXIF"]));
    }
}
