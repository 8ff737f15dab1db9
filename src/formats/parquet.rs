//! Tables of JSON rows written as parquet: img2dataset's shard parquet, clip-embed's metadata parts and
//! knn-index's `metadata.parquet`. Parquet's column API and snappy (what pandas and img2dataset write by
//! default): no Arrow needed.
//!
//! A column is a name and a [`ColumnType`]; a row is a JSON object, and a cell is the row's value under the
//! column's name. Text cells hold strings as they are and anything else as JSON. Columns are nullable (a
//! missing or null cell is null) unless named required, which every row must then have.

use crate::formats::columns::ColumnType;
use anyhow::{Context, anyhow, bail};
use parquet::basic::{Compression, LogicalType, Repetition, Type as Physical};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::{SerializedFileWriter, SerializedRowGroupWriter};
use parquet::schema::types::Type;
use serde_json::json;
use serde_json::{Map, Value};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Writes `rows` as one row group, every column nullable.
pub fn write(path: &Path, columns: &[(String, ColumnType)], rows: &[Map<String, Value>]) -> anyhow::Result<()> {
    let mut table = TableWriter::create(path, columns, &[])?;
    table.write_group(rows)?;
    table.finish()?;
    Ok(())
}

/// A parquet file written one row group at a time, so that a caller bounds its memory (and a reader's) by
/// the rows it hands over at once.
pub struct TableWriter {
    writer: SerializedFileWriter<File>,
    path: PathBuf,
    columns: Vec<(String, ColumnType, Repetition)>,
    groups: usize,
    rows: u64,
}

impl TableWriter {
    /// Creates (or truncates) `path`. `required` names the columns that no row may leave out.
    pub fn create(path: &Path, columns: &[(String, ColumnType)], required: &[&str]) -> anyhow::Result<TableWriter> {
        let columns: Vec<_> = columns
            .iter()
            .map(|(name, ty)| {
                let repetition =
                    if required.contains(&name.as_str()) { Repetition::REQUIRED } else { Repetition::OPTIONAL };
                (name.clone(), *ty, repetition)
            })
            .collect();
        let writer = open(path, &columns).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TableWriter { writer, path: path.to_path_buf(), columns, groups: 0, rows: 0 })
    }

    /// Appends `rows` as one row group.
    pub fn write_group(&mut self, rows: &[Map<String, Value>]) -> anyhow::Result<()> {
        let mut group =
            self.writer.next_row_group().with_context(|| format!("cannot write {}", self.path.display()))?;
        for (name, ty, repetition) in &self.columns {
            write_column(&mut group, name, *ty, *repetition, rows)
                .with_context(|| format!("cannot write column `{name}` of {}", self.path.display()))?;
        }
        group.close().with_context(|| format!("cannot write {}", self.path.display()))?;
        self.groups += 1;
        self.rows += rows.len() as u64;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Writes the footer and syncs the file; returns the row count.
    pub fn finish(mut self) -> anyhow::Result<u64> {
        // Every file these kinds ever wrote has a row group, even an empty one.
        if self.groups == 0 {
            self.write_group(&[])?;
        }
        let file = self.writer.into_inner().with_context(|| format!("cannot write {}", self.path.display()))?;
        file.sync_all().with_context(|| format!("cannot sync {}", self.path.display()))?;
        Ok(self.rows)
    }
}

fn open(path: &Path, columns: &[(String, ColumnType, Repetition)]) -> anyhow::Result<SerializedFileWriter<File>> {
    let mut fields = Vec::with_capacity(columns.len());
    for (name, ty, repetition) in columns {
        let builder = match ty {
            ColumnType::Text => {
                Type::primitive_type_builder(name, Physical::BYTE_ARRAY).with_logical_type(Some(LogicalType::String))
            }
            ColumnType::Bool => Type::primitive_type_builder(name, Physical::BOOLEAN),
            ColumnType::Int32 => Type::primitive_type_builder(name, Physical::INT32),
            ColumnType::Int64 => Type::primitive_type_builder(name, Physical::INT64),
            ColumnType::Float => Type::primitive_type_builder(name, Physical::DOUBLE),
        };
        fields.push(Arc::new(builder.with_repetition(*repetition).build()?));
    }
    let schema = Arc::new(Type::group_type_builder("schema").with_fields(fields).build()?);
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    Ok(SerializedFileWriter::new(File::create(path)?, schema, props)?)
}

fn write_column(
    group: &mut SerializedRowGroupWriter<'_, File>,
    name: &str,
    ty: ColumnType,
    repetition: Repetition,
    rows: &[Map<String, Value>],
) -> anyhow::Result<()> {
    let cells: Vec<Option<&Value>> = rows.iter().map(|r| r.get(name).filter(|v| !v.is_null())).collect();
    // A required column has no definition levels; an optional one has 1 for a value and 0 for a null.
    let defs: Option<Vec<i16>> = match repetition {
        Repetition::REQUIRED => {
            if let Some(row) = cells.iter().position(Option::is_none) {
                bail!("row {row} has no value, and the column is required");
            }
            None
        }
        _ => Some(cells.iter().map(|c| i16::from(c.is_some())).collect()),
    };
    let defs = defs.as_deref();
    let present = cells.iter().flatten();
    let mut col = group.next_column()?.context("schema and columns disagree")?;
    match ty {
        ColumnType::Text => {
            let data: Vec<ByteArray> = present
                .map(|v| match v {
                    Value::String(s) => ByteArray::from(s.as_str()),
                    other => ByteArray::from(other.to_string().as_str()),
                })
                .collect();
            col.typed::<ByteArrayType>().write_batch(&data, defs, None)?;
        }
        ColumnType::Bool => {
            let data: Vec<bool> = present.map(|v| v.as_bool().unwrap_or_default()).collect();
            col.typed::<BoolType>().write_batch(&data, defs, None)?;
        }
        ColumnType::Int32 => {
            let data: Vec<i32> = present.map(|v| v.as_i64().unwrap_or_default() as i32).collect();
            col.typed::<Int32Type>().write_batch(&data, defs, None)?;
        }
        ColumnType::Int64 => {
            let data: Vec<i64> = present.map(|v| v.as_i64().unwrap_or_default()).collect();
            col.typed::<Int64Type>().write_batch(&data, defs, None)?;
        }
        ColumnType::Float => {
            let data: Vec<f64> = present.map(|v| v.as_f64().unwrap_or_default()).collect();
            col.typed::<DoubleType>().write_batch(&data, defs, None)?;
        }
    }
    col.close()?;
    Ok(())
}

/// The row count of a parquet file, from its footer.
pub fn row_count(path: &Path) -> anyhow::Result<u64> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader =
        SerializedFileReader::new(file).with_context(|| format!("{} is not a parquet file", path.display()))?;
    Ok(reader.metadata().file_metadata().num_rows().max(0) as u64)
}

/// Rows `range` of a parquet file (img2dataset's input shards), the `wanted` columns of each as JSON values.
pub fn read_rows(path: &Path, range: Range<u64>, wanted: &[String]) -> anyhow::Result<Vec<Map<String, Value>>> {
    let (start, end) = (range.start, range.end);
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader =
        SerializedFileReader::new(file).with_context(|| format!("{} is not a parquet file", path.display()))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let root = schema.root_schema();
    let mut fields = Vec::new();
    let mut seen = Vec::new();
    for name in wanted {
        if seen.contains(name) {
            continue;
        }
        seen.push(name.clone());
        let field = root.get_fields().iter().find(|f| f.name() == name).ok_or_else(|| {
            let have: Vec<&str> = root.get_fields().iter().map(|f| f.name()).collect();
            anyhow!("{} has no column `{name}` (columns: {})", path.display(), have.join(", "))
        })?;
        fields.push(field.clone());
    }
    let projection = parquet::schema::types::Type::group_type_builder("schema").with_fields(fields).build()?;
    let mut out = Vec::with_capacity(end.saturating_sub(start) as usize);
    let mut first = 0u64;
    for g in 0..reader.num_row_groups() {
        let n = reader.metadata().row_group(g).num_rows().max(0) as u64;
        let group_range = first..first + n;
        first += n;
        if group_range.end <= start || group_range.start >= end {
            continue;
        }
        let group = reader.get_row_group(g)?;
        let iter = group.get_row_iter(Some(projection.clone()))?;
        let skip = start.saturating_sub(group_range.start) as usize;
        let take = (end.min(group_range.end) - group_range.start.max(start)) as usize;
        for row in iter.skip(skip).take(take) {
            let row = row.with_context(|| format!("{}: unreadable row", path.display()))?;
            let mut map = Map::new();
            for (name, field) in row.get_column_iter() {
                map.insert(name.clone(), field_json(field));
            }
            out.push(map);
        }
    }
    if out.len() as u64 != end - start {
        bail!("{} has {} rows in [{start}, {end}): the file changed since it was planned", path.display(), out.len());
    }
    Ok(out)
}

/// A parquet cell as JSON: numbers, strings and booleans as such, anything else as its text.
fn field_json(field: &parquet::record::Field) -> Value {
    use parquet::record::Field as F;
    match field {
        F::Null => Value::Null,
        F::Bool(b) => json!(b),
        F::Byte(n) => json!(n),
        F::Short(n) => json!(n),
        F::Int(n) => json!(n),
        F::Long(n) => json!(n),
        F::UByte(n) => json!(n),
        F::UShort(n) => json!(n),
        F::UInt(n) => json!(n),
        F::ULong(n) => json!(n),
        F::Float(x) => serde_json::Number::from_f64(f64::from(*x)).map_or(Value::Null, Value::Number),
        F::Double(x) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
        F::Str(s) => json!(s),
        other => json!(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use serde_json::json;

    fn rows(v: Value) -> Vec<Map<String, Value>> {
        v.as_array().unwrap().iter().map(|r| r.as_object().unwrap().clone()).collect()
    }

    #[test]
    fn writes_typed_nullable_and_required_columns_in_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let columns: Vec<(String, ColumnType)> = [
            ("key", ColumnType::Text),
            ("n", ColumnType::Int32),
            ("big", ColumnType::Int64),
            ("x", ColumnType::Float),
            ("ok", ColumnType::Bool),
            ("extra", ColumnType::Text),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
        let mut table = TableWriter::create(&path, &columns, &["key"]).unwrap();
        table
            .write_group(&rows(json!([{"key": "a", "n": 1, "big": 5, "x": 0.5, "ok": true, "extra": {"e": 1}}])))
            .unwrap();
        table.write_group(&rows(json!([{"key": "b", "n": null}, {"key": "c", "extra": "s"}]))).unwrap();
        assert_eq!(table.finish().unwrap(), 3);

        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 2);
        let schema = reader.metadata().file_metadata().schema_descr();
        let shape: Vec<_> = schema
            .columns()
            .iter()
            .map(|c| (c.name().to_string(), c.physical_type(), c.self_type().get_basic_info().repetition()))
            .collect();
        assert_eq!(shape[0], ("key".to_string(), Physical::BYTE_ARRAY, Repetition::REQUIRED));
        assert_eq!(shape[1], ("n".to_string(), Physical::INT32, Repetition::OPTIONAL));
        assert_eq!(shape[2].1, Physical::INT64);
        assert_eq!(shape[3].1, Physical::DOUBLE);
        assert_eq!(shape[4].1, Physical::BOOLEAN);
        let column = reader.metadata().row_group(0).column(0);
        assert_eq!(column.compression(), Compression::SNAPPY);
        let rows: Vec<String> = reader.get_row_iter(None).unwrap().map(|r| r.unwrap().to_string()).collect();
        assert_eq!(rows[0], r#"{key: "a", n: 1, big: 5, x: 0.5, ok: true, extra: "{"e":1}"}"#);
        assert_eq!(rows[1], r#"{key: "b", n: null, big: null, x: null, ok: null, extra: null}"#);
        assert!(rows[2].ends_with(r#"extra: "s"}"#), "{}", rows[2]);
    }

    #[test]
    fn an_empty_table_has_one_empty_row_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.parquet");
        write(&path, &[("a".to_string(), ColumnType::Text)], &[]).unwrap();
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 1);
        assert_eq!(reader.metadata().file_metadata().num_rows(), 0);
    }

    #[test]
    fn a_required_cell_left_out_names_the_column_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let mut table = TableWriter::create(&path, &[("key".to_string(), ColumnType::Text)], &["key"]).unwrap();
        let e = format!("{:#}", table.write_group(&rows(json!([{"key": "a"}, {}]))).unwrap_err());
        assert!(e.contains("column `key` of") && e.contains("t.parquet") && e.contains("row 1 has no value"), "{e}");
    }

    #[test]
    fn an_unwritable_path_is_named() {
        let e = format!("{:#}", write(Path::new("/nonexistent/dir/t.parquet"), &[], &[]).unwrap_err());
        assert!(e.starts_with("cannot create /nonexistent/dir/t.parquet"), "{e}");
    }
}
