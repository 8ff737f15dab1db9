//! A progressive JPEG cut down to what a decode at 1/8 scale reads. At that scale libjpeg's inverse DCT is
//! 1×1 and uses each block's DC coefficient only, yet the AC scans are most of a progressive file's bytes and
//! most of its decoding: libjpeg-turbo's progressive Huffman decoder has no fast path (a 3840×2160 photo
//! decodes at 1/8 in about 4× a baseline file's time). The stream given to libjpeg keeps every DC scan as it
//! is and replaces the AC scans of each component decoded from its DC alone by one scan that codes every AC
//! coefficient as zero in a few end-of-band runs. The AC coefficients are then known, so libjpeg applies no
//! block smoothing (which would alter the DC of an incomplete image), and the pixels are exactly those of the
//! whole file at 1/8.
//!
//! Anything unexpected (a baseline, arithmetic-coded or 12-bit file, a marker out of place, data that ends
//! early, more scans than the limit) gives `None`, and the whole file is decoded as before, with its errors.
//! Damage confined to an AC scan left out is not seen: it could not change the pixels at this scale.

/// The rewritten stream, or `None` where the whole file must be decoded.
pub fn dc_scans_only(bytes: &[u8], scan_limit: u32) -> Option<Vec<u8>> {
    if bytes.get(..2) != Some(&[0xff, 0xd8]) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 8);
    out.extend_from_slice(&bytes[..2]);
    let mut frame: Option<Frame> = None;
    let mut scans = 0u32;
    let mut at = 2;
    loop {
        // A marker, possibly after fill bytes; stray bytes between segments are left to the whole decode.
        if bytes.get(at) != Some(&0xff) {
            return None;
        }
        while bytes.get(at) == Some(&0xff) {
            at += 1;
        }
        let marker = *bytes.get(at)?;
        at += 1;
        match marker {
            0xd9 => break,
            // SOF2 (progressive Huffman), tables, scans, restart intervals, APPn and comments; other frame
            // types, arithmetic conditioning, DNL and hierarchical markers are not this file's.
            0xc2 | 0xc4 | 0xda | 0xdb | 0xdd | 0xe0..=0xef | 0xfe => {}
            _ => return None,
        }
        let len = usize::from(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
        let body = bytes.get(at + 2..at.checked_add(len)?)?;
        let segment = |out: &mut Vec<u8>| {
            out.extend_from_slice(&[0xff, marker]);
            out.extend_from_slice(&bytes[at..at + len]);
        };
        if marker == 0xda {
            scans += 1;
            let frame = frame.as_mut()?;
            if scans > scan_limit {
                return None;
            }
            let ns = usize::from(*body.first()?);
            let ids = body.get(1..1 + 2 * ns)?;
            let &[first, last, approximation] = body.get(1 + 2 * ns..4 + 2 * ns)? else { return None };
            if ns == 0 || (first > 0 && ns != 1) || first > last || last > 63 {
                return None;
            }
            for id in ids.iter().step_by(2) {
                let c = frame.components.iter_mut().find(|c| c.id == *id)?;
                for k in usize::from(first)..=usize::from(last).min(9) {
                    c.precision[k] = (approximation & 15) as i8;
                }
            }
            // An AC scan holds one component; it goes when that component's IDCT at 1/8 reads DC only.
            let keep = first == 0 || !frame.components.iter().find(|c| c.id == ids[0])?.dc_only;
            let data = at + len;
            let end = super::jpeg::entropy_end(bytes, data)?;
            if keep {
                segment(&mut out);
                out.extend_from_slice(&bytes[data..end]);
            }
            at = end;
            continue;
        }
        if marker == 0xc2 {
            if frame.is_some() {
                return None;
            }
            frame = Some(Frame::parse(body)?);
        }
        segment(&mut out);
        at += len;
    }
    let frame = frame?;
    if scans == 0 || !frame.components.iter().any(|c| c.dc_only) {
        return None;
    }
    // Where the whole file leaves any of coefficients 1 to 9 short of full precision, libjpeg smooths its
    // blocks (their DC too) when decoding it, and would not smooth this stream's: such a file is decoded whole.
    if frame.components.iter().any(|c| c.precision[1..].iter().any(|&p| p != 0)) {
        return None;
    }
    // No restart markers in the scans below, and one AC table: the 15 end-of-band-run symbols EOB0..EOB14,
    // all 4 bits long (codes 0000 to 1110; an all-ones code is not allowed).
    out.extend_from_slice(&[0xff, 0xdd, 0, 4, 0, 0]);
    out.extend_from_slice(&[0xff, 0xc4, 0, 34, 0x10]);
    let mut counts = [0u8; 16];
    counts[3] = 15;
    out.extend_from_slice(&counts);
    out.extend((0..15u8).map(|r| r << 4));
    for c in frame.components.iter().filter(|c| c.dc_only) {
        // One component, Td/Ta 0, coefficients 1 to 63, first scan at full precision.
        out.extend_from_slice(&[0xff, 0xda, 0, 8, 1, c.id, 0, 1, 63, 0]);
        end_of_band_runs(frame.blocks(c), &mut out);
    }
    out.extend_from_slice(&[0xff, 0xd9]);
    Some(out)
}

struct Component {
    id: u8,
    h: u64,
    v: u64,
    /// Whether libjpeg decodes this component at 1/8 with a 1×1 IDCT. A component subsampled in both
    /// directions gets a larger one instead of being upsampled (libjpeg's `jpeg_calc_output_dimensions`:
    /// the size doubles while both sampling ratios divide by twice it), which reads AC coefficients: such a
    /// component keeps all its scans (4:2:0's chroma, a small part of the file).
    dc_only: bool,
    /// The bits still missing from coefficients 0 to 9 (zigzag order) after the scans so far (the point
    /// transform of the last scan that coded each), −1 before any did: libjpeg's `coef_bits`.
    precision: [i8; 10],
}

/// What SOF2 says: the image's size and each component's sampling factors.
struct Frame {
    width: u64,
    height: u64,
    components: Vec<Component>,
    h_max: u64,
    v_max: u64,
}

impl Frame {
    fn parse(body: &[u8]) -> Option<Frame> {
        let [sample_bits, h1, h0, w1, w0, n, ..] = *body else { return None };
        let (width, height) = (u64::from(u16::from_be_bytes([w1, w0])), u64::from(u16::from_be_bytes([h1, h0])));
        // 12-bit samples, and a height given later by DNL, are left to the whole decode.
        if sample_bits != 8 || width == 0 || height == 0 || n == 0 {
            return None;
        }
        let mut components: Vec<Component> = body
            .get(6..6 + 3 * usize::from(n))?
            .chunks_exact(3)
            .map(|c| Component {
                id: c[0],
                h: u64::from(c[1] >> 4),
                v: u64::from(c[1] & 15),
                dc_only: false,
                precision: [-1; 10],
            })
            .collect();
        if components.iter().any(|c| !(1..=4).contains(&c.h) || !(1..=4).contains(&c.v)) {
            return None;
        }
        let h_max = components.iter().map(|c| c.h).max()?;
        let v_max = components.iter().map(|c| c.v).max()?;
        for c in &mut components {
            c.dc_only = h_max % (c.h * 2) != 0 || v_max % (c.v * 2) != 0;
        }
        Some(Frame { width, height, components, h_max, v_max })
    }

    /// Blocks in a scan of this component alone: its samples' extent in 8×8 blocks, as libjpeg counts them
    /// (`width_in_blocks`, `height_in_blocks`), with no padding to whole MCUs.
    fn blocks(&self, c: &Component) -> u64 {
        (self.width * c.h).div_ceil(self.h_max * 8) * (self.height * c.v).div_ceil(self.v_max * 8)
    }
}

/// Entropy-coded data that ends the bands of `blocks` blocks at once: runs of up to 32,767 blocks, each the
/// symbol EOBr (r = the run's bit length − 1, code r in 4 bits) and the run's low r bits; padded with ones,
/// 0xFF bytes stuffed with a zero.
fn end_of_band_runs(mut blocks: u64, out: &mut Vec<u8>) {
    let mut bits = BitWriter { acc: 0, pending: 0, out };
    while blocks > 0 {
        let run = blocks.min(32_767) as u32;
        let r = 31 - run.leading_zeros();
        bits.put(r, 4);
        bits.put(run - (1 << r), r);
        blocks -= u64::from(run);
    }
    if bits.pending > 0 {
        let fill = 8 - bits.pending;
        bits.put((1 << fill) - 1, fill);
    }
}

struct BitWriter<'a> {
    acc: u32,
    pending: u32,
    out: &'a mut Vec<u8>,
}

impl BitWriter<'_> {
    /// Appends the low `n` bits of `value` (at most 14 at a time: `pending` stays under 8 between calls).
    fn put(&mut self, value: u32, n: u32) {
        self.acc = (self.acc << n) | value;
        self.pending += n;
        while self.pending >= 8 {
            self.pending -= 8;
            let byte = (self.acc >> self.pending) as u8;
            self.out.push(byte);
            if byte == 0xff {
                self.out.push(0);
            }
        }
        self.acc &= (1 << self.pending) - 1;
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use turbojpeg::{Decompressor, Image, PixelFormat, ScalingFactor, raw};

    /// `rgb` (w × h) as a JPEG from libjpeg-turbo at quality 90, with the given subsampling and restart
    /// interval in MCUs (0: none).
    pub fn encode(rgb: &[u8], w: usize, h: usize, progressive: bool, subsamp: raw::TJSAMP, restart: i32) -> Vec<u8> {
        // SAFETY: a fresh handle, used and destroyed here; `rgb` holds w × h × 3 bytes as declared; the
        // output buffer libjpeg-turbo allocates is copied and freed before returning.
        unsafe {
            let handle = raw::tj3Init(raw::TJINIT_TJINIT_COMPRESS as i32);
            assert!(!handle.is_null());
            for (param, value) in [
                (raw::TJPARAM_TJPARAM_QUALITY, 90),
                (raw::TJPARAM_TJPARAM_SUBSAMP, subsamp),
                (raw::TJPARAM_TJPARAM_PROGRESSIVE, i32::from(progressive)),
                (raw::TJPARAM_TJPARAM_RESTARTBLOCKS, restart),
            ] {
                assert_eq!(raw::tj3Set(handle, param as i32, value), 0);
            }
            let (mut buf, mut size) = (std::ptr::null_mut(), 0);
            let pixel_format = raw::TJPF_TJPF_RGB;
            let status =
                raw::tj3Compress8(handle, rgb.as_ptr(), w as i32, 0, h as i32, pixel_format, &mut buf, &mut size);
            assert_eq!(status, 0);
            let jpeg = std::slice::from_raw_parts(buf, size as usize).to_vec();
            raw::tj3Free(buf.cast());
            raw::tj3Destroy(handle);
            jpeg
        }
    }

    /// A JPEG decoded at 1/8 to RGB, as `jpeg::decode` does it.
    fn eighth(jpeg: &[u8]) -> Result<(usize, usize, Vec<u8>), turbojpeg::Error> {
        let mut d = Decompressor::new()?;
        let header = d.read_header(jpeg)?;
        d.set_scaling_factor(ScalingFactor::ONE_EIGHTH)?;
        let (w, h) = (ScalingFactor::ONE_EIGHTH.scale(header.width), ScalingFactor::ONE_EIGHTH.scale(header.height));
        let mut pixels = vec![0; w * h * 3];
        d.decompress(
            jpeg,
            Image { pixels: pixels.as_mut_slice(), width: w, pitch: w * 3, height: h, format: PixelFormat::RGB },
        )?;
        Ok((w, h, pixels))
    }

    /// Both decode at 1/8 to the same pixels (a difference is described, not printed whole).
    fn assert_same(cut: &[u8], whole: &[u8], case: &str) {
        let (a, b) = (eighth(cut).unwrap(), eighth(whole).unwrap());
        assert_eq!((a.0, a.1), (b.0, b.1), "{case}: size");
        let differ = a.2.iter().zip(&b.2).filter(|(x, y)| x != y).count();
        assert_eq!(differ, 0, "{case}: {differ} of {} bytes differ", a.2.len());
    }

    /// The photograph the tests encode, cut to `w` × `h` from its top left corner.
    pub fn photo(w: u32, h: u32) -> Vec<u8> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clip-golden/images/chelsea.png");
        image::open(path).unwrap().crop_imm(0, 0, w, h).into_rgb8().into_raw()
    }

    /// For every subsampling, odd sizes (partial MCUs) and restart intervals, the rewritten stream decodes
    /// at 1/8 to exactly the whole file's pixels, from a fraction of its bytes.
    #[test]
    fn decodes_at_an_eighth_to_the_whole_files_pixels() {
        let samplings = [
            raw::TJSAMP_TJSAMP_420,
            raw::TJSAMP_TJSAMP_444,
            raw::TJSAMP_TJSAMP_422,
            raw::TJSAMP_TJSAMP_440,
            raw::TJSAMP_TJSAMP_411,
            raw::TJSAMP_TJSAMP_GRAY,
        ];
        for (w, h) in [(451, 300), (203, 131), (64, 64), (9, 300)] {
            let rgb = photo(w, h);
            for subsamp in samplings {
                for restart in [0, 1, 7] {
                    let jpeg = encode(&rgb, w as usize, h as usize, true, subsamp, restart);
                    let cut = dc_scans_only(&jpeg, 100).unwrap_or_else(|| panic!("{w}×{h} {subsamp} {restart}"));
                    assert_same(&cut, &jpeg, &format!("{w}×{h}, sampling {subsamp}, restart {restart}"));
                    if (w, h) == (451, 300) && restart == 0 {
                        assert!(cut.len() * 3 < jpeg.len(), "{} of {} bytes", cut.len(), jpeg.len());
                    }
                }
            }
        }
    }

    /// More blocks than one end-of-band run covers (32,767): several runs, their bits across byte
    /// boundaries, 0xFF bytes stuffed.
    #[test]
    fn long_runs_end_every_band() {
        let (w, h) = (2100, 1000); // 262 × 125 luma blocks at 4:4:4: 32,750 … 4:2:0's 263 × 125
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| ((i * 7919) % 251) as u8).collect();
        for subsamp in [raw::TJSAMP_TJSAMP_444, raw::TJSAMP_TJSAMP_420] {
            let jpeg = encode(&rgb, w, h, true, subsamp, 0);
            let cut = dc_scans_only(&jpeg, 100).unwrap();
            assert_same(&cut, &jpeg, &format!("{w}×{h}, sampling {subsamp}"));
        }
        let mut stuffed = Vec::new();
        end_of_band_runs(32_767 * 2 + 255, &mut stuffed);
        // EOB14 and 32,767 − 2¹⁴ in 14 bits (all ones), twice, then EOB7 and 255 − 2⁷, one bit of padding:
        // 1110 1111…11 1110 1111…11 0111 1111111 1.
        assert_eq!(stuffed, [0xef, 0xff, 0x00, 0xfb, 0xff, 0x00, 0xf7, 0xff, 0x00]);
    }

    /// Files that are not progressive Huffman, that end early or that hold more scans than the limit are
    /// decoded whole.
    #[test]
    fn other_files_are_decoded_whole() {
        let rgb = photo(64, 48);
        let baseline = encode(&rgb, 64, 48, false, raw::TJSAMP_TJSAMP_420, 0);
        assert_eq!(dc_scans_only(&baseline, 100), None);
        let progressive = encode(&rgb, 64, 48, true, raw::TJSAMP_TJSAMP_420, 0);
        assert!(dc_scans_only(&progressive, 100).is_some());
        let scans = progressive.windows(2).filter(|w| w == &[0xff, 0xda]).count() as u32;
        assert!(dc_scans_only(&progressive, scans).is_some());
        assert_eq!(dc_scans_only(&progressive, scans - 1), None);
        for cut in [2, 100, progressive.len() - 2, progressive.len() - 1] {
            assert_eq!(dc_scans_only(&progressive[..cut], 100), None, "cut at {cut}");
        }
        assert_eq!(dc_scans_only(b"", 100), None);
        assert_eq!(dc_scans_only(b"\xff\xd8\xff\xd9", 100), None, "no frame, no scan");
    }

    /// Through the whole image path: a progressive photo resized from an eighth (decoded from its DC scans)
    /// gives byte for byte the output of its baseline twin (the same coefficients in one scan), at every
    /// subsampling, upright and turned by EXIF-free decoding alike.
    #[test]
    fn a_progressive_photo_resized_from_an_eighth_is_its_baseline_twin() {
        use super::super::options::ResizeMode;
        use super::super::process::{Scratch, process, tests::options};
        let (w, h) = (1100, 700); // an eighth (137 × 87) still covers the tests' 64 px
        let rgb = image::imageops::resize(
            &image::RgbImage::from_raw(451, 300, photo(451, 300)).unwrap(),
            w,
            h,
            image::imageops::FilterType::Triangle,
        )
        .into_raw();
        for subsamp in [raw::TJSAMP_TJSAMP_420, raw::TJSAMP_TJSAMP_444, raw::TJSAMP_TJSAMP_GRAY] {
            let baseline = encode(&rgb, w as usize, h as usize, false, subsamp, 0);
            let progressive = encode(&rgb, w as usize, h as usize, true, subsamp, 0);
            for mode in [ResizeMode::Border, ResizeMode::CenterCrop, ResizeMode::KeepRatio] {
                let o = options(mode);
                let a = process(&progressive, &o, &mut Scratch::default()).unwrap();
                let b = process(&baseline, &o, &mut Scratch::default()).unwrap();
                assert_eq!((a.width, a.height, a.original_width), (b.width, b.height, w));
                assert!(a.bytes == b.bytes, "sampling {subsamp}, {mode:?}: outputs differ");
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(crate::util::fuzz::config(512))]

        /// Damaged progressive files (restart markers, three samplings) are cut down or left whole, never a
        /// panic; what comes out is never much more than went in, and libjpeg-turbo reads it or says why not.
        #[test]
        fn damaged_progressive_files_never_panic(
            seed in 0..3usize,
            damage in proptest::collection::vec(crate::util::fuzz::damage(), 1..6),
        ) {
            static SEEDS: std::sync::LazyLock<Vec<Vec<u8>>> = std::sync::LazyLock::new(|| {
                let rgb = photo(120, 72);
                [raw::TJSAMP_TJSAMP_420, raw::TJSAMP_TJSAMP_444, raw::TJSAMP_TJSAMP_GRAY]
                    .into_iter()
                    .zip([0, 3, 1])
                    .map(|(subsamp, restart)| encode(&rgb, 120, 72, true, subsamp, restart))
                    .collect()
            });
            let bytes = crate::util::fuzz::damaged(&SEEDS[seed], &damage);
            if let Some(cut) = dc_scans_only(&bytes, 100) {
                proptest::prop_assert!(cut.len() <= bytes.len() + 1024, "{} bytes from {}", cut.len(), bytes.len());
                let _ = eighth(&cut);
            }
        }
    }

    /// A file whose scans stop short of full precision (its last refinement scan removed) is smoothed by
    /// libjpeg, so it is decoded whole; so is an AC scan of two components, which no encoder writes.
    #[test]
    fn incomplete_or_malformed_progressions_are_decoded_whole() {
        let jpeg = encode(&photo(64, 48), 64, 48, true, raw::TJSAMP_TJSAMP_444, 0);
        let last_sos = jpeg.windows(2).rposition(|w| w == [0xff, 0xda]).unwrap();
        let short = [&jpeg[..last_sos], &jpeg[jpeg.len() - 2..]].concat();
        assert!(eighth(&short).is_ok(), "libjpeg-turbo reads the shortened file");
        assert_eq!(dc_scans_only(&short, 100), None);
        // The first AC scan's header given a second component (Ns 2, its length 2 more), its data kept.
        let ac = (0..jpeg.len() - 8)
            .find(|&i| jpeg[i..i + 2] == [0xff, 0xda] && jpeg[i + 4] == 1 && jpeg[i + 7] > 0)
            .unwrap();
        let len = u16::from_be_bytes([jpeg[ac + 2], jpeg[ac + 3]]) + 2;
        let (c, tables) = (jpeg[ac + 5], jpeg[ac + 6]);
        let header =
            [&[0xff, 0xda][..], &len.to_be_bytes(), &[2, c, tables, c % 3 + 1, tables], &jpeg[ac + 7..ac + 10]];
        let two = [&jpeg[..ac], &header.concat(), &jpeg[ac + 10..]].concat();
        assert_eq!(dc_scans_only(&two, 100), None);
    }
}
