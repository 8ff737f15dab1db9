//! EXIF as img2dataset's `exif` column holds it.

use serde_json::{Map, Value, json};

/// EXIF tags as img2dataset records them (exifread's `process_file(details=False)`): a JSON object in text,
/// `"IFD Tag": "value"` with exifread's IFD names (Image, EXIF, GPS, Interoperability, Thumbnail); values are
/// kamadak-exif's renderings, so an enumerated value may read differently from exifread's. None when the image
/// has no EXIF.
pub fn exif_json(bytes: &[u8]) -> Option<String> {
    let exif = exif::Reader::new().read_from_container(&mut std::io::Cursor::new(bytes)).ok()?;
    let mut tags = Map::new();
    for f in exif.fields() {
        let ifd = if f.ifd_num == exif::In::THUMBNAIL {
            "Thumbnail"
        } else {
            match f.tag.context() {
                exif::Context::Tiff => "Image",
                exif::Context::Exif => "EXIF",
                exif::Context::Gps => "GPS",
                exif::Context::Interop => "Interoperability",
                _ => "Image",
            }
        };
        // Maker notes and thumbnails are what details=False leaves out.
        if f.tag == exif::Tag::MakerNote || matches!(f.value, exif::Value::Undefined(ref v, _) if v.len() > 256) {
            continue;
        }
        let value = f.display_value().with_unit(&exif).to_string();
        tags.insert(format!("{ifd} {}", f.tag), json!(value.trim()));
    }
    (!tags.is_empty()).then(|| Value::Object(tags).to_string())
}
