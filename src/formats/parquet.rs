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

/// A text cell that is not valid UTF-8. It is read with U+FFFD in place of each invalid sequence (as Python's
/// `bytes.decode(errors="replace")`), and said here so that the caller decides: note it, or fail its row.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidText {
    /// Its row, counted from the start of the range read.
    pub row: usize,
    pub column: String,
    /// Where the first invalid sequence starts, in bytes.
    pub offset: usize,
    /// A few characters around it, invalid bytes written `\xNN`: never the raw bytes.
    pub excerpt: String,
}

/// Rows read from a parquet file, and the text cells among them that were not valid UTF-8.
#[derive(Debug, Default)]
pub struct Rows {
    pub rows: Vec<Map<String, Value>>,
    pub invalid_text: Vec<InvalidText>,
}

/// Rows `range` of a parquet file (img2dataset's input shards), the `wanted` columns of each as JSON values.
///
/// Top-level text columns are read with the column API, as bytes, and decoded here: parquet's row reader fails
/// the whole iterator (and so the whole shard) on one invalid string, and echoes its bytes. A writer that does
/// not check (many do not) can put any bytes in a UTF8 column; one such cell costs at most its row.
pub fn read_rows(path: &Path, range: Range<u64>, wanted: &[String]) -> anyhow::Result<Rows> {
    let (start, end) = (range.start, range.end);
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader =
        SerializedFileReader::new(file).with_context(|| format!("{} is not a parquet file", path.display()))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let root = schema.root_schema();
    let mut fields = Vec::new();
    // (name, leaf column index) of the text columns, read apart from the row reader.
    let mut text: Vec<(String, usize)> = Vec::new();
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
        // Only a flat column: one value or null per row (a legacy repeated one goes through the row reader).
        let leaf = schema
            .columns()
            .iter()
            .position(|c| c.path().parts() == [name.as_str()] && c.max_rep_level() == 0 && c.max_def_level() <= 1);
        match leaf {
            Some(leaf) if is_text(field) => text.push((name.clone(), leaf)),
            _ => fields.push(field.clone()),
        }
    }
    let projection = parquet::schema::types::Type::group_type_builder("schema").with_fields(fields).build()?;
    let mut out = Rows { rows: Vec::with_capacity(end.saturating_sub(start) as usize), invalid_text: Vec::new() };
    let mut first = 0u64;
    for g in 0..reader.num_row_groups() {
        let n = reader.metadata().row_group(g).num_rows().max(0) as u64;
        let group_range = first..first + n;
        first += n;
        if group_range.end <= start || group_range.start >= end {
            continue;
        }
        let group = reader.get_row_group(g)?;
        let skip = start.saturating_sub(group_range.start) as usize;
        let take = (end.min(group_range.end) - group_range.start.max(start)) as usize;
        let base = out.rows.len();
        if projection.get_fields().is_empty() {
            out.rows.extend((0..take).map(|_| Map::new()));
        } else {
            for row in group.get_row_iter(Some(projection.clone()))?.skip(skip).take(take) {
                let index = start + out.rows.len() as u64;
                let row =
                    row.map_err(|e| anyhow!("{}: row {index} is unreadable: {}", path.display(), short_error(&e)))?;
                out.rows.push(row.get_column_iter().map(|(name, field)| (name.clone(), field_json(field))).collect());
            }
        }
        if out.rows.len() - base != take {
            break;
        }
        for (name, leaf) in &text {
            let cells = read_text_column(group.get_column_reader(*leaf)?, skip, take)
                .with_context(|| format!("{}: cannot read column `{name}`", path.display()))?;
            for (i, cell) in cells.into_iter().enumerate() {
                let value = match cell {
                    None => Value::Null,
                    Some(bytes) => {
                        let (decoded, invalid) = decode_text(bytes.data());
                        if let Some((offset, excerpt)) = invalid {
                            let row = base + i;
                            out.invalid_text.push(InvalidText { row, column: name.clone(), offset, excerpt });
                        }
                        Value::String(decoded)
                    }
                };
                out.rows[base + i].insert(name.clone(), value);
            }
        }
    }
    out.invalid_text.sort_by_key(|b| b.row);
    if out.rows.len() as u64 != end - start {
        bail!(
            "{} has {} rows in [{start}, {end}): the file changed since it was planned",
            path.display(),
            out.rows.len()
        );
    }
    Ok(out)
}

/// Whether a column holds text: a top-level BYTE_ARRAY annotated UTF8, ENUM or JSON.
fn is_text(field: &Type) -> bool {
    use parquet::basic::ConvertedType;
    if !field.is_primitive() || field.get_physical_type() != Physical::BYTE_ARRAY {
        return false;
    }
    let info = field.get_basic_info();
    matches!(info.converted_type(), ConvertedType::UTF8 | ConvertedType::ENUM | ConvertedType::JSON)
        || matches!(info.logical_type_ref(), Some(LogicalType::String | LogicalType::Enum | LogicalType::Json))
}

/// Rows `skip..skip + take` of a top-level BYTE_ARRAY column of one row group, undecoded; None for a null.
fn read_text_column(
    reader: parquet::column::reader::ColumnReader,
    skip: usize,
    take: usize,
) -> anyhow::Result<Vec<Option<ByteArray>>> {
    let parquet::column::reader::ColumnReader::ByteArrayColumnReader(mut reader) = reader else {
        bail!("not a BYTE_ARRAY column");
    };
    if reader.skip_records(skip)? != skip {
        bail!("fewer rows than the row group says");
    }
    let (mut defs, mut values) = (Vec::new(), Vec::new());
    let (records, _, _) = reader.read_records(take, Some(&mut defs), None, &mut values)?;
    if records != take {
        bail!("{records} rows where the row group says {take}");
    }
    // A required column has no definition levels: every row has a value. In an optional one, 1 marks a value.
    if defs.is_empty() {
        return Ok(values.into_iter().map(Some).collect());
    }
    let mut values = values.into_iter();
    Ok(defs.iter().map(|&d| if d > 0 { values.next() } else { None }).collect())
}

/// A text cell's bytes as a string, and where it is not UTF-8, the offset of the first invalid sequence and an
/// excerpt around it; the string then has U+FFFD in place of each invalid sequence.
fn decode_text(bytes: &[u8]) -> (String, Option<(usize, String)>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), None),
        Err(e) => {
            let offset = e.valid_up_to();
            (String::from_utf8_lossy(bytes).into_owned(), Some((offset, excerpt(bytes, offset))))
        }
    }
}

/// Up to 16 bytes either side of `at`, printable: valid text as it is (control characters escaped), anything
/// else as `\xNN`; `…` where it was cut.
fn excerpt(bytes: &[u8], at: usize) -> String {
    const SIDE: usize = 16;
    let (from, to) = (at.saturating_sub(SIDE), (at + SIDE).min(bytes.len()));
    let mut out = String::new();
    if from > 0 {
        out.push('…');
    }
    for chunk in bytes[from..to].utf8_chunks() {
        out.extend(chunk.valid().chars().flat_map(char::escape_debug));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    if to < bytes.len() {
        out.push('…');
    }
    out
}

/// A parquet reader's error without the cell's bytes that some of its messages list in full.
fn short_error(e: &parquet::errors::ParquetError) -> String {
    let message = e.to_string();
    let message = message.split(" Bytes: ").next().unwrap_or_default();
    let mut short: String = message.chars().take(200).collect();
    if short.len() < message.len() {
        short.push('…');
    }
    short
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
    fn ranges_across_row_groups_read_text_numbers_and_nulls_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let columns: Vec<(String, ColumnType)> =
            [("key", ColumnType::Text), ("n", ColumnType::Int32), ("c", ColumnType::Text)]
                .into_iter()
                .map(|(n, t)| (n.to_string(), t))
                .collect();
        let mut table = TableWriter::create(&path, &columns, &["key"]).unwrap();
        table.write_group(&rows(json!([{"key": "a", "n": 0, "c": "x"}, {"key": "b", "n": 1}]))).unwrap();
        table.write_group(&rows(json!([{"key": "c", "c": "z"}, {"key": "d", "n": 3, "c": "w"}]))).unwrap();
        table.finish().unwrap();
        let wanted = ["c", "key", "n", "key"].map(String::from);
        let read = read_rows(&path, 1..4, &wanted).unwrap();
        assert_eq!(
            read.rows,
            rows(json!([
                {"key": "b", "n": 1, "c": null},
                {"key": "c", "n": null, "c": "z"},
                {"key": "d", "n": 3, "c": "w"},
            ]))
        );
        assert!(read.invalid_text.is_empty());
        // Text columns alone (no row reader at all).
        let keys = read_rows(&path, 0..4, &["key".to_string()]).unwrap();
        assert_eq!(keys.rows.iter().map(|r| r["key"].as_str().unwrap()).collect::<String>(), "abcd");
        let e = format!("{:#}", read_rows(&path, 0..5, &wanted).unwrap_err());
        assert!(e.contains("has 4 rows in [0, 5)"), "{e}");
    }

    /// A file with a UTF8 `url`, a UTF8 `caption` and an INT32 `n` whose cells are written as raw bytes, as a
    /// writer that does not check its strings leaves them.
    fn raw_text_file(path: &Path, cells: &[(&[u8], Option<&[u8]>)]) {
        let text = |name: &str, repetition| {
            Arc::new(
                Type::primitive_type_builder(name, Physical::BYTE_ARRAY)
                    .with_repetition(repetition)
                    .with_logical_type(Some(LogicalType::String))
                    .build()
                    .unwrap(),
            )
        };
        let n = Type::primitive_type_builder("n", Physical::INT32).with_repetition(Repetition::REQUIRED).build();
        let fields =
            vec![text("url", Repetition::REQUIRED), text("caption", Repetition::OPTIONAL), Arc::new(n.unwrap())];
        let schema = Arc::new(Type::group_type_builder("schema").with_fields(fields).build().unwrap());
        let props = Arc::new(WriterProperties::builder().build());
        let mut writer = SerializedFileWriter::new(File::create(path).unwrap(), schema, props).unwrap();
        let mut group = writer.next_row_group().unwrap();
        let urls: Vec<ByteArray> = cells.iter().map(|(u, _)| ByteArray::from(u.to_vec())).collect();
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>().write_batch(&urls, None, None).unwrap();
        col.close().unwrap();
        let captions: Vec<ByteArray> =
            cells.iter().filter_map(|(_, c)| c.map(|c| ByteArray::from(c.to_vec()))).collect();
        let defs: Vec<i16> = cells.iter().map(|(_, c)| i16::from(c.is_some())).collect();
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>().write_batch(&captions, Some(&defs), None).unwrap();
        col.close().unwrap();
        let numbers: Vec<i32> = (0..cells.len() as i32).collect();
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<Int32Type>().write_batch(&numbers, None, None).unwrap();
        col.close().unwrap();
        group.close().unwrap();
        writer.close().unwrap();
    }

    #[test]
    fn an_invalid_utf8_cell_is_read_lossily_and_named_without_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        raw_text_file(
            &path,
            &[
                (b"http://a/0.jpg", Some(b"fine")),
                (b"http://a/1.jpg", Some(b"caf\xe9 au lait")),
                (b"http://a/\xff.jpg", None),
                (b"http://a/3.jpg", Some("d\u{e9}j\u{e0} vu".as_bytes())),
            ],
        );
        // Parquet's own row reader fails on the second row: the whole file would be lost.
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        assert!(reader.get_row_iter(None).unwrap().any(|r| r.is_err()));

        let wanted = ["url", "caption", "n"].map(String::from);
        let read = read_rows(&path, 0..4, &wanted).unwrap();
        assert_eq!(read.rows.len(), 4);
        assert_eq!(read.rows[0], rows(json!([{"url": "http://a/0.jpg", "caption": "fine", "n": 0}]))[0]);
        assert_eq!(read.rows[1]["caption"], "caf\u{fffd} au lait");
        assert_eq!(read.rows[2]["url"], "http://a/\u{fffd}.jpg");
        assert_eq!(read.rows[2]["caption"], Value::Null);
        assert_eq!(read.rows[3]["caption"], "d\u{e9}j\u{e0} vu", "valid non-ASCII text is read as it is");
        assert_eq!(
            read.invalid_text,
            [
                InvalidText { row: 1, column: "caption".into(), offset: 3, excerpt: "caf\\xe9 au lait".into() },
                InvalidText { row: 2, column: "url".into(), offset: 9, excerpt: "http://a/\\xff.jpg".into() },
            ]
        );
        // Rows count from the start of the range read.
        let tail = read_rows(&path, 2..4, &wanted).unwrap();
        assert_eq!(tail.invalid_text.iter().map(|b| (b.row, b.column.as_str())).collect::<Vec<_>>(), [(0, "url")]);
        // A column that is not read is not judged.
        assert!(read_rows(&path, 0..4, &["n".to_string()]).unwrap().invalid_text.is_empty());
    }

    #[test]
    fn excerpts_are_short_and_printable() {
        let mut long = vec![b'a'; 100];
        long[50] = 0x80;
        long[52] = b'\n';
        let (text, invalid) = decode_text(&long);
        assert_eq!(text.chars().filter(|&c| c == '\u{fffd}').count(), 1);
        let (offset, excerpt) = invalid.unwrap();
        assert_eq!(offset, 50);
        assert_eq!(excerpt, format!("…{}\\x80a\\n{}…", "a".repeat(16), "a".repeat(13)));
        // A character cut by the window's start shows as its bytes, not as a broken character.
        let cut = ("\u{e9}".repeat(10) + "a").into_bytes().into_iter().chain([0xff]).collect::<Vec<_>>();
        assert!(excerpt_of(&cut).starts_with("…\\xa9\u{e9}"), "{}", excerpt_of(&cut));
        assert_eq!(decode_text(b"ok"), ("ok".to_string(), None));
    }

    fn excerpt_of(bytes: &[u8]) -> String {
        decode_text(bytes).1.unwrap().1
    }

    #[test]
    fn reader_errors_leave_the_bytes_out() {
        let e = parquet::errors::ParquetError::General(
            "Error reading BYTE_ARRAY as String. Bytes: [99, 97, 102, 233] Error: Utf8Error".into(),
        );
        assert_eq!(short_error(&e), "Parquet error: Error reading BYTE_ARRAY as String.");
        let long = parquet::errors::ParquetError::General("x".repeat(500));
        assert!(short_error(&long).chars().count() <= 201);
    }

    #[test]
    fn an_unwritable_path_is_named() {
        let e = format!("{:#}", write(Path::new("/nonexistent/dir/t.parquet"), &[], &[]).unwrap_err());
        assert!(e.starts_with("cannot create /nonexistent/dir/t.parquet"), "{e}");
    }
}
