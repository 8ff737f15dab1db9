//! `metadata/metadata_N.parquet`, as clip-retrieval writes it: `image_path` (the sample key), `caption`,
//! then the sample json's fields as columns, one row per embedding row. Column types are inferred per part
//! from the values (bool, int64, double, string; anything mixed or nested is written as JSON text), as
//! pandas infers them for clip-retrieval. Written by `formats::parquet`.

use crate::formats::columns::ColumnType;
use crate::formats::parquet::TableWriter;
use anyhow::Context;
use serde_json::{Map, Value};
use std::path::Path;

/// Columns that come from the sample itself; json fields of the same name are left out (the caption comes
/// from `KEY.txt`, as clip-retrieval takes it).
const OWN_COLUMNS: [&str; 2] = ["image_path", "caption"];
/// Rows per row group: bounds the reader's memory on large parts.
const ROW_GROUP: usize = 100_000;

/// A part's rows: each sample's json fields, with its own columns set over any json field of their name.
#[derive(Debug, Default)]
pub struct Metadata {
    rows: Vec<Map<String, Value>>,
}

impl Metadata {
    pub fn push(&mut self, key: String, caption: String, json: Option<Map<String, Value>>) {
        let mut row = json.unwrap_or_default();
        row.insert(OWN_COLUMNS[0].into(), Value::String(key));
        row.insert(OWN_COLUMNS[1].into(), Value::String(caption));
        self.rows.push(row);
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// json field names in first-seen order (name order within a sample), without the sample's own columns.
    fn fields(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for row in &self.rows {
            for k in row.keys() {
                if !OWN_COLUMNS.contains(&k.as_str()) && !seen.contains(k) {
                    seen.push(k.clone());
                }
            }
        }
        seen
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let mut columns: Vec<(String, ColumnType)> =
            OWN_COLUMNS.iter().map(|c| (c.to_string(), ColumnType::Text)).collect();
        for f in self.fields() {
            let ty = ColumnType::infer(self.rows.iter().filter_map(|r| r.get(&f)));
            columns.push((f, ty));
        }
        let mut table = TableWriter::create(path, &columns, &OWN_COLUMNS)?;
        for group in self.rows.chunks(ROW_GROUP) {
            table.write_group(group)?;
        }
        table.finish()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::basic::Type as Physical;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use serde_json::json;

    #[test]
    fn writes_aligned_rows_with_inferred_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata/metadata_00000.parquet");
        let mut m = Metadata::default();
        let obj = |v: Value| v.as_object().cloned();
        m.push("k0".into(), "a cat".into(), obj(json!({"url": "u0", "width": 10, "score": 1, "caption": "x"})));
        m.push("k1".into(), "a dog".into(), None);
        m.push("k2".into(), "".into(), obj(json!({"url": "u2", "width": null, "score": 0.5, "exif": {"a": 1}})));
        m.write(&path).unwrap();
        let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        let schema = reader.metadata().file_metadata().schema_descr();
        let names: Vec<_> = schema.columns().iter().map(|c| c.name().to_string()).collect();
        // serde_json's maps are sorted, so a sample's fields come in name order; later samples' new fields
        // follow.
        assert_eq!(names, ["image_path", "caption", "score", "url", "width", "exif"]);
        assert_eq!(schema.column(2).physical_type(), Physical::DOUBLE);
        assert_eq!(schema.column(4).physical_type(), Physical::INT64);
        let rows: Vec<String> = reader.get_row_iter(None).unwrap().map(|r| r.unwrap().to_string()).collect();
        assert_eq!(rows.len(), 3);
        assert!(rows[0].contains("image_path: \"k0\"") && rows[0].contains("width: 10"), "{}", rows[0]);
        assert!(rows[1].contains("url: null"), "{}", rows[1]);
        assert!(rows[2].contains(r#"exif: "{"a":1}""#), "{}", rows[2]);
    }
}
