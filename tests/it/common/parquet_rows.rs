//! Parquet files of URL rows, as LAION metadata has them: `url`, `caption`, `similarity` (nullable).
#![allow(dead_code)]

use parquet::basic::{Compression, LogicalType, Repetition, Type as Physical};
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;
use std::sync::Arc;

pub struct Row<'a> {
    pub url: Option<&'a str>,
    pub caption: Option<&'a str>,
    pub similarity: Option<f64>,
}

pub fn row<'a>(url: &'a str, caption: &'a str) -> Row<'a> {
    Row { url: Some(url), caption: Some(caption), similarity: Some(0.3) }
}

fn string(name: &str) -> Arc<Type> {
    Arc::new(
        Type::primitive_type_builder(name, Physical::BYTE_ARRAY)
            .with_repetition(Repetition::OPTIONAL)
            .with_logical_type(Some(LogicalType::String))
            .build()
            .unwrap(),
    )
}

pub fn urls_parquet(rows: &[Row]) -> Vec<u8> {
    let cells: Vec<Cells> =
        rows.iter().map(|r| (r.url.map(str::as_bytes), r.caption.map(str::as_bytes), r.similarity)).collect();
    write_urls(&cells)
}

/// `urls_parquet` with url and caption cells given as bytes, valid UTF-8 or not; similarity 0.3.
pub fn urls_parquet_bytes(rows: &[(&[u8], &[u8])]) -> Vec<u8> {
    let cells: Vec<Cells> = rows.iter().map(|&(url, caption)| (Some(url), Some(caption), Some(0.3))).collect();
    write_urls(&cells)
}

/// One row's url, caption and similarity; `None` is a null cell. The string columns take any bytes, as a writer
/// that does not check its strings leaves them.
type Cells<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, Option<f64>);

fn write_urls(rows: &[Cells]) -> Vec<u8> {
    let fields = vec![
        string("url"),
        string("caption"),
        Arc::new(
            Type::primitive_type_builder("similarity", Physical::DOUBLE)
                .with_repetition(Repetition::OPTIONAL)
                .build()
                .unwrap(),
        ),
    ];
    let schema = Arc::new(Type::group_type_builder("schema").with_fields(fields).build().unwrap());
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    let mut out = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut out, schema, props).unwrap();
    let mut group = writer.next_row_group().unwrap();
    for col_i in 0..3 {
        let mut col = group.next_column().unwrap().unwrap();
        match col_i {
            0 | 1 => {
                let cells: Vec<Option<&[u8]>> = rows.iter().map(|r| if col_i == 0 { r.0 } else { r.1 }).collect();
                let defs: Vec<i16> = cells.iter().map(|c| i16::from(c.is_some())).collect();
                let data: Vec<ByteArray> = cells.iter().flatten().map(|s| ByteArray::from(s.to_vec())).collect();
                col.typed::<ByteArrayType>().write_batch(&data, Some(&defs), None).unwrap();
            }
            _ => {
                let defs: Vec<i16> = rows.iter().map(|r| i16::from(r.2.is_some())).collect();
                let data: Vec<f64> = rows.iter().filter_map(|r| r.2).collect();
                col.typed::<DoubleType>().write_batch(&data, Some(&defs), None).unwrap();
            }
        }
        col.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();
    out
}
