//! EXIF as img2dataset's `exif` column holds it, rendered within a fixed budget per image.
//!
//! The EXIF of a downloaded image is written by a stranger. Its TIFF structure lets many entries point at one
//! large value, and a value as a byte list renders at three to five times its size, so rendering every entry
//! in full once turned a 199 KB PNG into gigabytes. Here the entries are listed from the raw TIFF structure
//! without reading their values, and each one is read and rendered only up to the budget below; the row keeps
//! what fits, marks what was cut, and still succeeds.

use exif::{Context, Field, In, Tag, Value};
use serde_json::{Map, Value as Json};
use std::collections::HashMap;
use std::fmt::Write;

/// Most fields rendered per image. A camera writes 50 to 150 tags outside its maker note (which is left out);
/// further entries are not read at all.
const MAX_FIELDS: usize = 256;
/// Longest rendered value, in bytes of text. Real text tags (descriptions, copyright, software) are well
/// under a few hundred bytes; a longer value is cut and marked.
const MAX_VALUE_BYTES: usize = 2048;
/// Most JSON text per image. A camera's tags render to 1 to 8 KB; the whole EXIF of a JPEG cannot exceed one
/// 64 KiB segment. Rows are kept until their shard is written, so this bounds a shard of 10,000 hostile rows
/// at 160 MiB of EXIF.
const MAX_JSON_BYTES: usize = 16 * 1024;
/// Largest EXIF payload read at all: four times what a JPEG can hold (one 64 KiB segment), as PNG and WebP
/// carry EXIF copied from cameras. Parsing lists every entry, about a hundred bytes each, so a PNG's `eXIf`
/// chunk of 32 MiB would cost hundreds of megabytes before any budget applies.
const MAX_EXIF_BYTES: usize = 256 * 1024;
/// The key of the note saying what the budget left out; no EXIF tag renders as `dsmake …`.
const LEFT_OUT_KEY: &str = "dsmake left out";
/// Room kept for that note.
const NOTE_ROOM: usize = 128;

/// Tags whose value kamadak-exif reads to render another tag's unit (XResolution's ResolutionUnit, a GPS
/// coordinate's reference). Those reads go through the parsed EXIF, which reads a value whole, so the units
/// come from it only when each of these values is as small as a real one.
const UNIT_TAGS: [Tag; 12] = [
    Tag::ResolutionUnit,
    Tag::FocalPlaneResolutionUnit,
    Tag::GPSLatitudeRef,
    Tag::GPSLongitudeRef,
    Tag::GPSAltitudeRef,
    Tag::GPSSpeedRef,
    Tag::GPSTrackRef,
    Tag::GPSImgDirectionRef,
    Tag::GPSDestLatitudeRef,
    Tag::GPSDestLongitudeRef,
    Tag::GPSDestBearingRef,
    Tag::GPSDestDistanceRef,
];
/// A real unit tag is a SHORT or a two-byte ASCII; anything past this is hostile.
const UNIT_TAG_MAX_BYTES: usize = 64;

/// EXIF tags as img2dataset records them (exifread's `process_file(details=False)`): a JSON object in text,
/// `"IFD Tag": "value"` with exifread's IFD names (Image, EXIF, GPS, Interoperability, Thumbnail); values are
/// kamadak-exif's renderings, so an enumerated value may read differently from exifread's. None when the image
/// has no EXIF.
///
/// Within the budget above: a value longer than `MAX_VALUE_BYTES` ends with `… [truncated: N bytes]`; an entry
/// whose value is the very bytes of an earlier one reads `(same value as KEY)`; entries past `MAX_FIELDS` or
/// past `MAX_JSON_BYTES` are counted under the key `dsmake left out`. A tag that appears twice under one name
/// keeps its first value.
pub fn exif_json(bytes: &[u8]) -> Option<String> {
    if let Some(len) = payload_len(bytes).filter(|&n| n > MAX_EXIF_BYTES) {
        let note = format!("EXIF of {len} bytes, over the {MAX_EXIF_BYTES}-byte limit");
        return Some(Json::Object(Map::from_iter([(LEFT_OUT_KEY.to_string(), Json::String(note))])).to_string());
    }
    // kamadak-exif parses lazily: this reads the entries' positions, not their values.
    let exif = read(bytes)?;
    let tiff = Tiff { buf: exif.buf(), le: exif.little_endian() };
    let mut entries = tiff.entries();
    // Tags that EXIF defines come first, so that entries a stranger invented cannot spend the budget before
    // them (the sort is stable: within each group the file's order stays).
    entries.sort_by_key(|e| e.tag.description().is_none());
    let units_from_exif = entries.iter().all(|e| !UNIT_TAGS.contains(&e.tag) || e.len <= UNIT_TAG_MAX_BYTES);

    let mut tags = Map::new();
    let mut size = 2; // the braces
    let mut left_out = 0usize;
    let mut first_with: HashMap<(usize, usize, u16), String> = HashMap::new();
    for e in &entries {
        // Maker notes and thumbnails are what details=False leaves out.
        if e.tag == Tag::MakerNote || (e.typ == UNDEFINED && e.len > 256) {
            continue;
        }
        if tags.len() >= MAX_FIELDS {
            left_out += 1;
            continue;
        }
        let key = format!("{} {}", e.ifd_name(), e.tag);
        if tags.contains_key(&key) {
            continue;
        }
        // Values of up to four bytes sit in the entry itself, so only longer ones can be shared.
        let shared = (e.len > 4).then_some((e.at, e.len, e.typ));
        let value = match shared.and_then(|s| first_with.get(&s)) {
            Some(first) => format!("(same value as {first})"),
            None => {
                let field = Field { tag: e.tag, ifd_num: e.ifd, value: tiff.value(e, MAX_VALUE_BYTES) };
                let display = field.display_value();
                let mut text = Capped::new(MAX_VALUE_BYTES);
                // An Err only says the text reached its cap.
                let _ = if units_from_exif {
                    write!(text, "{}", display.with_unit(&exif))
                } else {
                    write!(text, "{}", display.with_unit(()))
                };
                text.finish(e.len, (e.count as usize) <= MAX_VALUE_BYTES)
            }
        };
        let cost = json_len(&key) + json_len(&value) + 2;
        if size + cost > MAX_JSON_BYTES - NOTE_ROOM {
            left_out += 1;
            continue;
        }
        size += cost;
        if let Some(s) = shared {
            first_with.entry(s).or_insert_with(|| key.clone());
        }
        tags.insert(key, Json::String(value));
    }
    if left_out > 0 {
        let note = format!("{left_out} entries past the budget ({MAX_FIELDS} fields, {MAX_JSON_BYTES} bytes)");
        tags.insert(LEFT_OUT_KEY.to_string(), Json::String(note));
    }
    (!tags.is_empty()).then(|| Json::Object(tags).to_string())
}

/// An image's EXIF, parsed lazily. A JPEG's comes from its header (`jpeg::exif_segment`): kamadak-exif's own
/// reader walks a JPEG without EXIF to its end, copying the entropy-coded data as it goes, which cost more
/// than resizing. Other formats through kamadak-exif, which walks their chunks.
pub fn read(bytes: &[u8]) -> Option<exif::Exif> {
    if bytes.starts_with(&[0xff, 0xd8]) {
        let tiff = super::jpeg::exif_segment(bytes)?;
        return exif::Reader::new().read_raw(tiff.to_vec()).ok();
    }
    exif::Reader::new().read_from_container(&mut std::io::Cursor::new(bytes)).ok()
}

/// The size of a PNG's `eXIf` chunk or a WebP's `EXIF` chunk, found without reading it. A JPEG's EXIF fits
/// in one 64 KiB segment, and the decoders take no other format that carries EXIF.
fn payload_len(bytes: &[u8]) -> Option<usize> {
    let u32_at = |at: usize, le: bool| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some((if le { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) }) as usize)
    };
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        // Length (big-endian), type, data, CRC.
        let mut at = 8;
        while at < bytes.len() {
            let (len, kind) = (u32_at(at, false)?, bytes.get(at + 4..at + 8)?);
            if kind == b"eXIf" {
                return Some(len);
            }
            at = at.checked_add(12)?.checked_add(len)?;
        }
    } else if bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        // FourCC, length (little-endian), data padded to an even size.
        let mut at = 12;
        while at < bytes.len() {
            let (kind, len) = (bytes.get(at..at + 4)?, u32_at(at + 4, true)?);
            if kind == b"EXIF" {
                return Some(len);
            }
            at = at.checked_add(8)?.checked_add(len + len % 2)?;
        }
    }
    None
}

/// Bytes of `s` as a JSON string.
fn json_len(s: &str) -> usize {
    serde_json::to_string(s).map_or(s.len() * 6 + 2, |j| j.len())
}

/// Text that stops growing at its cap: rendering a long value never builds more than the cap.
struct Capped {
    text: String,
    cap: usize,
    cut: bool,
}

impl Capped {
    fn new(cap: usize) -> Capped {
        Capped { text: String::new(), cap, cut: false }
    }

    /// The text, trimmed, with a mark when it was cut or its value was read only in part.
    fn finish(self, value_len: usize, read_whole: bool) -> String {
        let text = self.text.trim();
        if self.cut || !read_whole { format!("{text}… [truncated: {value_len} bytes]") } else { text.to_string() }
    }
}

impl Write for Capped {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.cap - self.text.len();
        if s.len() <= room {
            self.text.push_str(s);
            return Ok(());
        }
        let mut end = room;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.text.push_str(&s[..end]);
        self.cut = true;
        Err(std::fmt::Error)
    }
}

const ASCII: u16 = 2;
const UNDEFINED: u16 = 7;

/// One IFD entry, located but not read.
#[derive(Debug)]
struct Entry {
    ifd: In,
    tag: Tag,
    typ: u16,
    count: u32,
    /// Where the value's bytes start in the TIFF data.
    at: usize,
    /// The value's size in bytes (0 for a type TIFF does not define).
    len: usize,
}

impl Entry {
    fn ifd_name(&self) -> &'static str {
        if self.ifd == In::THUMBNAIL {
            return "Thumbnail";
        }
        match self.tag.context() {
            Context::Tiff => "Image",
            Context::Exif => "EXIF",
            Context::Gps => "GPS",
            Context::Interop => "Interoperability",
            _ => "Image",
        }
    }
}

/// Bytes of one element of a TIFF field type, 0 for an undefined type.
fn unit_len(typ: u16) -> usize {
    match typ {
        1 | 2 | 6 | 7 => 1,
        3 | 8 => 2,
        4 | 9 | 11 => 4,
        5 | 10 | 12 => 8,
        _ => 0,
    }
}

/// Most IFDs in the chain, as kamadak-exif reads them.
const MAX_IFDS: u16 = 8;

/// TIFF data (the EXIF payload) in its byte order.
struct Tiff<'a> {
    buf: &'a [u8],
    le: bool,
}

impl Tiff<'_> {
    fn bytes<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        self.buf.get(at..at.checked_add(N)?)?.try_into().ok()
    }

    fn u16(&self, at: usize) -> Option<u16> {
        let b = self.bytes::<2>(at)?;
        Some(if self.le { u16::from_le_bytes(b) } else { u16::from_be_bytes(b) })
    }

    fn u32(&self, at: usize) -> Option<u32> {
        let b = self.bytes::<4>(at)?;
        Some(if self.le { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) })
    }

    fn u64(&self, at: usize) -> Option<u64> {
        let b = self.bytes::<8>(at)?;
        Some(if self.le { u64::from_le_bytes(b) } else { u64::from_be_bytes(b) })
    }

    /// Every entry, in the order kamadak-exif lists them: the IFD chain from the header, each IFD's Exif,
    /// GPS and Interoperability IFDs at the place of their pointer. An IFD is read once, however often it is
    /// pointed at; reading stops at the first malformed part.
    fn entries(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut next = self.u32(4).unwrap_or(0);
        for ifd in 0..MAX_IFDS {
            if next == 0 {
                break;
            }
            match self.ifd(next as usize, Context::Tiff, In(ifd), &mut seen, &mut out) {
                Some(after) => next = after,
                None => break,
            }
        }
        out
    }

    /// Lists the entries of the IFD at `offset` into `out`; returns the offset of the next IFD.
    fn ifd(
        &self,
        offset: usize,
        context: Context,
        ifd: In,
        seen: &mut std::collections::HashSet<usize>,
        out: &mut Vec<Entry>,
    ) -> Option<u32> {
        if !seen.insert(offset) {
            return None;
        }
        let count = usize::from(self.u16(offset)?);
        for i in 0..count {
            let at = offset + 2 + 12 * i;
            let tag = Tag(context, self.u16(at)?);
            let typ = self.u16(at + 2)?;
            let n = self.u32(at + 4)?;
            let len = unit_len(typ).checked_mul(n as usize)?;
            let value_at = if len <= 4 { at + 8 } else { self.u32(at + 8)? as usize };
            if value_at.checked_add(len)? > self.buf.len() {
                return None;
            }
            let entry = Entry { ifd, tag, typ, count: n, at: value_at, len };
            let child = match tag {
                Tag::ExifIFDPointer => Context::Exif,
                Tag::GPSInfoIFDPointer => Context::Gps,
                Tag::InteropIFDPointer => Context::Interop,
                _ => {
                    out.push(entry);
                    continue;
                }
            };
            let pointer = match typ {
                1 => self.buf.get(value_at).map(|&b| u32::from(b)),
                3 => self.u16(value_at).map(u32::from),
                4 => self.u32(value_at),
                _ => None,
            }?;
            // A sub-IFD has no next IFD; a malformed one ends only its own listing.
            self.ifd(pointer as usize, child, ifd, seen, out);
        }
        self.u32(offset + 2 + 12 * count)
    }

    /// The entry's value, read up to `max_elements` of its elements: enough to fill a rendering capped at
    /// that many bytes, as an element renders to at least one.
    fn value(&self, e: &Entry, max_elements: usize) -> Value {
        let unit = unit_len(e.typ);
        if unit == 0 {
            return Value::Unknown(e.typ, e.count, e.at as u32);
        }
        let n = (e.count as usize).min(max_elements);
        let end = e.at + (n * unit).min(e.len);
        let raw = &self.buf[e.at.min(end)..end];
        let each = |size: usize| (0..n).map(move |i| e.at + i * size);
        match e.typ {
            1 => Value::Byte(raw.to_vec()),
            ASCII => {
                let mut parts: Vec<Vec<u8>> = raw.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
                if parts.last().is_some_and(Vec::is_empty) {
                    parts.pop();
                }
                Value::Ascii(parts)
            }
            3 => Value::Short(each(2).filter_map(|at| self.u16(at)).collect()),
            4 => Value::Long(each(4).filter_map(|at| self.u32(at)).collect()),
            5 => Value::Rational(
                each(8)
                    .filter_map(|at| Some(exif::Rational { num: self.u32(at)?, denom: self.u32(at + 4)? }))
                    .collect(),
            ),
            6 => Value::SByte(raw.iter().map(|&b| b as i8).collect()),
            UNDEFINED => Value::Undefined(raw.to_vec(), e.at as u32),
            8 => Value::SShort(each(2).filter_map(|at| self.u16(at)).map(|v| v as i16).collect()),
            9 => Value::SLong(each(4).filter_map(|at| self.u32(at)).map(|v| v as i32).collect()),
            10 => Value::SRational(
                each(8)
                    .filter_map(|at| {
                        Some(exif::SRational { num: self.u32(at)? as i32, denom: self.u32(at + 4)? as i32 })
                    })
                    .collect(),
            ),
            11 => Value::Float(each(4).filter_map(|at| self.u32(at)).map(f32::from_bits).collect()),
            _ => Value::Double(each(8).filter_map(|at| self.u64(at)).map(f64::from_bits).collect()),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// An entry's value for the test encoder: its own bytes (inline when they fit in four) or the blob
    /// every `Shared` entry points at, `skip` bytes in.
    enum Val {
        Own(Vec<u8>),
        Shared { skip: u32 },
    }

    type TestEntry = (u16, u16, u32, Val);

    /// A little-endian TIFF (EXIF payload): IFD0, then an Exif IFD when `exif` has entries, then the values
    /// that do not fit in their entry, then `blob`. Enough of TIFF to write what a hostile server would.
    fn tiff(ifd0: Vec<TestEntry>, exif: Vec<TestEntry>, blob: &[u8]) -> Vec<u8> {
        let mut ifd0 = ifd0;
        let exif_at = 8 + 2 + 12 * (ifd0.len() + usize::from(!exif.is_empty())) + 4;
        if !exif.is_empty() {
            ifd0.push((0x8769, 4, 1, Val::Own((exif_at as u32).to_le_bytes().to_vec())));
        }
        let ifd_size = |n: usize| if n == 0 { 0 } else { 2 + 12 * n + 4 };
        let mut data_at = 8 + ifd_size(ifd0.len()) + ifd_size(exif.len());
        let own: usize = ifd0
            .iter()
            .chain(&exif)
            .map(|e| if let Val::Own(v) = &e.3 { if v.len() > 4 { v.len() } else { 0 } } else { 0 })
            .sum();
        let blob_at = (data_at + own) as u32;
        let mut out = b"II\x2a\x00\x08\x00\x00\x00".to_vec();
        let mut data: Vec<u8> = Vec::new();
        for ifd in [&ifd0, &exif] {
            if ifd.is_empty() {
                continue;
            }
            out.extend((ifd.len() as u16).to_le_bytes());
            for (tag, typ, count, val) in ifd {
                out.extend(tag.to_le_bytes());
                out.extend(typ.to_le_bytes());
                out.extend(count.to_le_bytes());
                match val {
                    Val::Own(v) if v.len() <= 4 => out.extend(v.iter().copied().chain([0; 4]).take(4)),
                    Val::Own(v) => {
                        out.extend((data_at as u32).to_le_bytes());
                        data_at += v.len();
                        data.extend(v);
                    }
                    Val::Shared { skip } => out.extend((blob_at + skip).to_le_bytes()),
                }
            }
            out.extend(0u32.to_le_bytes());
        }
        out.extend(data);
        out.extend(blob);
        out
    }

    /// The tags a camera writes, a few of each kind of value.
    fn camera() -> (Vec<TestEntry>, Vec<TestEntry>) {
        let ascii = |s: &str| (2, s.len() as u32 + 1, Val::Own(s.bytes().chain([0]).collect()));
        let rational = |n: u32, d: u32| Val::Own(n.to_le_bytes().into_iter().chain(d.to_le_bytes()).collect());
        let ifd0: Vec<(u16, (u16, u32, Val))> = vec![
            (0x010f, ascii("Canon")),
            (0x0110, ascii("Canon EOS 5D")),
            (0x0112, (3, 1, Val::Own(vec![6, 0]))),
            (0x011a, (5, 1, rational(72, 1))),
            (0x0128, (3, 1, Val::Own(vec![2, 0]))),
            (0x0132, ascii("2024:05:01 12:00:00")),
        ];
        let ifd0 = ifd0.into_iter().map(|(tag, (typ, count, val))| (tag, typ, count, val));
        let exif = vec![
            (0x829a, 5, 1, rational(1, 250)),
            (0x8827, 3, 1, Val::Own(vec![100, 0])),
            (0x9000, 7, 4, Val::Own(b"0231".to_vec())),
        ];
        (ifd0.collect(), exif)
    }

    /// The rendering before budgets: every field, whole, as kamadak-exif reads it.
    fn unbudgeted(bytes: &[u8]) -> Map<String, Json> {
        let exif = exif::Reader::new().read_from_container(&mut std::io::Cursor::new(bytes)).unwrap();
        let mut tags = Map::new();
        for f in exif.fields() {
            let e = Entry { ifd: f.ifd_num, tag: f.tag, typ: 0, count: 0, at: 0, len: 0 };
            let value = f.display_value().with_unit(&exif).to_string();
            tags.insert(format!("{} {}", e.ifd_name(), f.tag), Json::String(value.trim().to_string()));
        }
        tags
    }

    fn parsed(json: &str) -> Map<String, Json> {
        match serde_json::from_str(json).unwrap() {
            Json::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    /// A camera's EXIF payload (orientation 6: rotated), for the fuzz seeds.
    pub(in super::super) fn camera_tiff() -> Vec<u8> {
        let (ifd0, exif) = camera();
        tiff(ifd0, exif, &[])
    }

    pub(in super::super) fn png_with_exif(exif: Vec<u8>) -> Vec<u8> {
        use image::ImageEncoder;
        let mut png = Vec::new();
        let mut encoder = image::codecs::png::PngEncoder::new(&mut png);
        encoder.set_exif_metadata(exif).unwrap();
        encoder.write_image(&[0, 0, 0], 1, 1, image::ExtendedColorType::Rgb8).unwrap();
        png
    }

    #[test]
    fn a_camera_renders_as_before() {
        let (ifd0, exif) = camera();
        let blob = tiff(ifd0, exif, &[]);
        let got = parsed(&exif_json(&blob).unwrap());
        assert_eq!(got, unbudgeted(&blob));
        assert_eq!(got["Image XResolution"], "72 pixels per inch");
        assert_eq!(got["EXIF ExposureTime"], "1/250 s");
        assert_eq!(got["Image Make"], "\"Canon\"");
        // The same from a PNG's eXIf chunk.
        assert_eq!(exif_json(&png_with_exif(blob.clone())), exif_json(&blob));
    }

    #[test]
    fn entries_sharing_one_large_value_stay_within_the_budget() {
        // The image: 300 entries pointing at one 200 KB value, in a PNG.
        let big = vec![b'A'; 200_000];
        for typ in [1u16, 7] {
            let (camera0, exif) = camera();
            // Before the camera's tags, as an attacker would put them.
            let mut ifd0: Vec<TestEntry> =
                (0..300).map(|i| (0xc000 + i, typ, big.len() as u32, Val::Shared { skip: 0 })).collect();
            ifd0.extend(camera0);
            let png = png_with_exif(tiff(ifd0, exif, &big));
            let json = exif_json(&png).unwrap();
            assert!(json.len() <= MAX_JSON_BYTES, "type {typ}: {} bytes", json.len());
            let got = parsed(&json);
            assert_eq!(got["Image XResolution"], "72 pixels per inch");
            assert_eq!(got["EXIF ExposureTime"], "1/250 s");
            assert_eq!(got["EXIF PhotographicSensitivity"], "100");
            assert_eq!(got["Image Model"], "\"Canon EOS 5D\"");
            if typ == UNDEFINED {
                // Long UNDEFINED values are what details=False leaves out.
                assert_eq!(got.len(), 9, "{got:?}");
                continue;
            }
            let first = got["Image Tag(Tiff, 49152)"].as_str().unwrap();
            assert!(first.starts_with("0x41") || first.starts_with("65, 65"), "{first:.40}");
            assert!(first.ends_with("… [truncated: 200000 bytes]"), "{first:.40}");
            assert!(first.len() <= MAX_VALUE_BYTES + 40, "{}", first.len());
            for i in 49153..49200 {
                assert_eq!(got[&format!("Image Tag(Tiff, {i})")], "(same value as Image Tag(Tiff, 49152))");
            }
            let note = got[LEFT_OUT_KEY].as_str().unwrap();
            assert!(note.ends_with("past the budget (256 fields, 16384 bytes)"), "{note}");
        }
    }

    #[test]
    fn overlapping_values_and_huge_unit_tags_stay_within_the_budget() {
        // Entries that each start one byte further into the blob are not the same value, so the caps alone
        // bound them; a ResolutionUnit of 100,000 shorts is not read through kamadak-exif for units.
        let big = vec![7u8; 300_000];
        let (mut ifd0, exif) = camera();
        ifd0.retain(|e| e.0 != 0x0128);
        ifd0.push((0x0128, 3, 100_000, Val::Shared { skip: 0 }));
        ifd0.extend((0..2000).map(|i| (0xc000 + i, 1, 200_000, Val::Shared { skip: u32::from(i) })));
        let json = exif_json(&tiff(ifd0, exif, &big)).unwrap();
        assert!(json.len() <= MAX_JSON_BYTES, "{} bytes", json.len());
        let got = parsed(&json);
        // Without the units of the file, XResolution falls back to TIFF's default unit.
        assert_eq!(got["Image XResolution"], "72 pixels per inch");
        assert!(got["Image ResolutionUnit"].as_str().unwrap().ends_with("[truncated: 200000 bytes]"));
        assert!(got.contains_key(LEFT_OUT_KEY));
    }

    #[test]
    fn an_oversized_payload_is_not_parsed() {
        let (ifd0, exif) = camera();
        let blob = tiff(ifd0, exif, &vec![0; MAX_EXIF_BYTES]);
        let png = png_with_exif(blob.clone());
        assert_eq!(payload_len(&png), Some(blob.len()));
        let got = parsed(&exif_json(&png).unwrap());
        let note = format!("EXIF of {} bytes, over the {MAX_EXIF_BYTES}-byte limit", blob.len());
        assert_eq!(got, Map::from_iter([(LEFT_OUT_KEY.to_string(), Json::String(note))]));
        // A WebP's EXIF chunk is found the same way, past an odd-sized chunk's padding.
        let mut webp = b"RIFF\0\0\0\0WEBPVP8L\x03\0\0\0abc\0EXIF".to_vec();
        webp.extend(300_000u32.to_le_bytes());
        assert_eq!(payload_len(&webp), Some(300_000));
        let small = tiff(camera().0, vec![], &[]);
        assert_eq!(payload_len(&png_with_exif(small.clone())), Some(small.len()));
    }

    #[test]
    fn no_exif_is_none() {
        assert_eq!(exif_json(b"not an image"), None);
        let mut png = Vec::new();
        image::ImageEncoder::write_image(
            image::codecs::png::PngEncoder::new(&mut png),
            &[0, 0, 0],
            1,
            1,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
        assert_eq!(exif_json(&png), None);
    }
}
