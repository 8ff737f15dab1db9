//! `metadata/metadata_N.parquet`, as clip-retrieval writes it: `image_path` (the sample key), `caption`,
//! then the sample json's fields as columns, one row per embedding row. Column types are inferred per part
//! from the values (bool, int64, double, string; anything mixed or nested is written as JSON text), as
//! pandas infers them for clip-retrieval. Written with parquet's column API: no Arrow needed.

use crate::formats::columns::ColumnType;
use anyhow::Context;
use parquet::basic::{Compression, LogicalType, Repetition, Type as Physical};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;
use serde_json::{Map, Value};
use std::path::Path;
use std::sync::Arc;

/// Columns that come from the sample itself; json fields of the same name are left out (the caption comes
/// from `KEY.txt`, as clip-retrieval takes it).
const OWN_COLUMNS: [&str; 2] = ["image_path", "caption"];
/// Rows per row group: bounds the reader's memory on large parts.
const ROW_GROUP: usize = 100_000;

#[derive(Debug, Default)]
pub struct Metadata {
    pub keys: Vec<String>,
    pub captions: Vec<String>,
    pub json: Vec<Option<Map<String, Value>>>,
}

impl Metadata {
    pub fn push(&mut self, key: String, caption: String, json: Option<Map<String, Value>>) {
        self.keys.push(key);
        self.captions.push(caption);
        self.json.push(json);
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// json field names in first-seen order (name order within a sample), without the sample's own columns.
    fn fields(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for map in self.json.iter().flatten() {
            for k in map.keys() {
                if !OWN_COLUMNS.contains(&k.as_str()) && !seen.contains(k) {
                    seen.push(k.clone());
                }
            }
        }
        seen
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        self.write_inner(path).with_context(|| format!("cannot write {}", path.display()))
    }

    fn write_inner(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let fields = self.fields();
        let columns: Vec<(String, ColumnType)> = fields
            .iter()
            .map(|f| (f.clone(), ColumnType::infer(self.json.iter().filter_map(|m| m.as_ref().and_then(|m| m.get(f))))))
            .collect();
        let mut schema_fields =
            vec![string_field("image_path", Repetition::REQUIRED)?, string_field("caption", Repetition::REQUIRED)?];
        for (name, ty) in &columns {
            let physical = match ty {
                ColumnType::Text => {
                    schema_fields.push(string_field(name, Repetition::OPTIONAL)?);
                    continue;
                }
                ColumnType::Bool => Physical::BOOLEAN,
                ColumnType::Int32 | ColumnType::Int64 => Physical::INT64,
                ColumnType::Float => Physical::DOUBLE,
            };
            schema_fields.push(Arc::new(
                Type::primitive_type_builder(name, physical).with_repetition(Repetition::OPTIONAL).build()?,
            ));
        }
        let schema = Arc::new(Type::group_type_builder("schema").with_fields(schema_fields).build()?);
        // Snappy: what pandas and clip-retrieval write by default.
        let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
        let file = std::fs::File::create(path)?;
        let mut writer = SerializedFileWriter::new(file, schema, props)?;
        let total = self.len();
        let mut start = 0;
        loop {
            let end = (start + ROW_GROUP).min(total);
            let mut group = writer.next_row_group()?;
            let rows = start..end;
            for values in [&self.keys, &self.captions] {
                let mut col = group.next_column()?.context("schema and columns disagree")?;
                let data: Vec<ByteArray> = values[rows.clone()].iter().map(|s| ByteArray::from(s.as_str())).collect();
                col.typed::<ByteArrayType>().write_batch(&data, None, None)?;
                col.close()?;
            }
            for (name, ty) in &columns {
                let cells: Vec<Option<&Value>> = self.json[rows.clone()]
                    .iter()
                    .map(|m| m.as_ref().and_then(|m| m.get(name)).filter(|v| !v.is_null()))
                    .collect();
                let defs: Vec<i16> = cells.iter().map(|c| i16::from(c.is_some())).collect();
                let present = cells.iter().flatten();
                let mut col = group.next_column()?.context("schema and columns disagree")?;
                match ty {
                    ColumnType::Text => {
                        let data: Vec<ByteArray> = present.map(|v| ByteArray::from(text(v).as_str())).collect();
                        col.typed::<ByteArrayType>().write_batch(&data, Some(&defs), None)?;
                    }
                    ColumnType::Bool => {
                        let data: Vec<bool> = present.map(|v| v.as_bool().unwrap_or_default()).collect();
                        col.typed::<BoolType>().write_batch(&data, Some(&defs), None)?;
                    }
                    ColumnType::Int32 | ColumnType::Int64 => {
                        let data: Vec<i64> = present.map(|v| v.as_i64().unwrap_or_default()).collect();
                        col.typed::<Int64Type>().write_batch(&data, Some(&defs), None)?;
                    }
                    ColumnType::Float => {
                        let data: Vec<f64> = present.map(|v| v.as_f64().unwrap_or_default()).collect();
                        col.typed::<DoubleType>().write_batch(&data, Some(&defs), None)?;
                    }
                }
                col.close()?;
            }
            group.close()?;
            start = end;
            if start >= total {
                break;
            }
        }
        let file = writer.into_inner()?;
        file.sync_all()?;
        Ok(())
    }
}

fn string_field(name: &str, repetition: Repetition) -> anyhow::Result<Arc<Type>> {
    Ok(Arc::new(
        Type::primitive_type_builder(name, Physical::BYTE_ARRAY)
            .with_repetition(repetition)
            .with_logical_type(Some(LogicalType::String))
            .build()?,
    ))
}

/// A cell as text: strings as they are, anything else as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
