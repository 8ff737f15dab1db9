//! A shard's files, as img2dataset's webdataset writer lays them out: `NAME.tar` (members `KEY.EXT`,
//! `KEY.txt`, `KEY.json`, successes only, members named as webdataset's TarWriter names them),
//! `NAME.parquet` (every input row) and `NAME_stats.json`.
//!
//! The parquet file uses the same writer as clip-embed's metadata: parquet's column API, snappy.

pub use crate::formats::columns::ColumnType;
use anyhow::Context;
use parquet::basic::{Compression, LogicalType, Repetition, Type as Physical};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;
use serde_json::{Map, Value};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// Writes samples into a tar as webdataset's TarWriter does: regular files, mode 0444, the same mtime.
pub struct TarOut {
    builder: tar::Builder<std::io::BufWriter<std::fs::File>>,
    mtime: u64,
}

impl TarOut {
    pub fn create(path: &Path) -> anyhow::Result<TarOut> {
        let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let mtime =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Ok(TarOut { builder: tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, file)), mtime })
    }

    /// One sample's members, in webdataset's order (extensions sorted).
    pub fn write(&mut self, key: &str, members: &mut [(&str, &[u8])]) -> anyhow::Result<()> {
        members.sort_by(|a, b| a.0.cmp(b.0));
        for (ext, data) in members.iter() {
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            header.set_mode(0o444);
            header.set_mtime(self.mtime);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_username("bigdata").ok();
            header.set_groupname("bigdata").ok();
            header.set_cksum();
            self.builder.append_data(&mut header, format!("{key}.{ext}"), *data)?;
        }
        Ok(())
    }

    pub fn finish(self) -> anyhow::Result<()> {
        let mut inner = self.builder.into_inner()?;
        inner.flush()?;
        inner.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(())
    }
}

/// Writes `rows` (JSON objects) with the given columns, in order; a missing or null cell is null.
pub fn write_parquet(path: &Path, columns: &[(String, ColumnType)], rows: &[Map<String, Value>]) -> anyhow::Result<()> {
    write_inner(path, columns, rows).with_context(|| format!("cannot write {}", path.display()))
}

fn write_inner(path: &Path, columns: &[(String, ColumnType)], rows: &[Map<String, Value>]) -> anyhow::Result<()> {
    let mut fields = Vec::with_capacity(columns.len());
    for (name, ty) in columns {
        let builder = match ty {
            ColumnType::Text => {
                Type::primitive_type_builder(name, Physical::BYTE_ARRAY).with_logical_type(Some(LogicalType::String))
            }
            ColumnType::Bool => Type::primitive_type_builder(name, Physical::BOOLEAN),
            ColumnType::Int32 => Type::primitive_type_builder(name, Physical::INT32),
            ColumnType::Int64 => Type::primitive_type_builder(name, Physical::INT64),
            ColumnType::Float => Type::primitive_type_builder(name, Physical::DOUBLE),
        };
        fields.push(Arc::new(builder.with_repetition(Repetition::OPTIONAL).build()?));
    }
    let schema = Arc::new(Type::group_type_builder("schema").with_fields(fields).build()?);
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    let file = std::fs::File::create(path)?;
    let mut writer = SerializedFileWriter::new(file, schema, props)?;
    let mut group = writer.next_row_group()?;
    for (name, ty) in columns {
        let cells: Vec<Option<&Value>> = rows.iter().map(|r| r.get(name).filter(|v| !v.is_null())).collect();
        let defs: Vec<i16> = cells.iter().map(|c| i16::from(c.is_some())).collect();
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
                col.typed::<ByteArrayType>().write_batch(&data, Some(&defs), None)?;
            }
            ColumnType::Bool => {
                let data: Vec<bool> = present.map(|v| v.as_bool().unwrap_or_default()).collect();
                col.typed::<BoolType>().write_batch(&data, Some(&defs), None)?;
            }
            ColumnType::Int32 => {
                let data: Vec<i32> = present.map(|v| v.as_i64().unwrap_or_default() as i32).collect();
                col.typed::<Int32Type>().write_batch(&data, Some(&defs), None)?;
            }
            ColumnType::Int64 => {
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
    writer.into_inner()?.sync_all()?;
    Ok(())
}
