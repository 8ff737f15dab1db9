//! What a query result shows beside its score: `image_path` (the sample key), `caption` and `url` of row i
//! of the metadata parts (clip-embed's `metadata/metadata_N.parquet`, copied beside the index), which is the
//! vector with id i. [`MetaWriter`] writes such a part (tests build parts by hand with it).

use crate::formats::columns::ColumnType;
use crate::formats::parquet::TableWriter;
use anyhow::{Context, bail};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Map, Value};
use std::fs::File;
use std::path::Path;

/// The columns kept, in file order. `image_path` is required in a part; the others may be absent.
pub const COLUMNS: [&str; 3] = ["image_path", "caption", "url"];
/// Rows per row group of a file [`MetaWriter`] writes.
pub const ROW_GROUP: usize = 16_384;

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Row {
    pub image_path: String,
    pub caption: Option<String>,
    pub url: Option<String>,
}

fn cell(field: &Field) -> Option<String> {
    match field {
        Field::Null => None,
        Field::Str(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A part's row count from its footer, without reading rows.
pub fn count_rows(path: &Path) -> anyhow::Result<u64> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader =
        SerializedFileReader::new(file).with_context(|| format!("{} is not a parquet file", path.display()))?;
    Ok(reader.metadata().file_metadata().num_rows().max(0) as u64)
}

/// Streams rows into a metadata parquet file, one row group per [`ROW_GROUP`] rows.
pub struct MetaWriter {
    table: TableWriter,
    pending: Vec<Map<String, Value>>,
}

impl MetaWriter {
    pub fn create(path: &Path) -> anyhow::Result<MetaWriter> {
        let columns: Vec<(String, ColumnType)> = COLUMNS.iter().map(|c| (c.to_string(), ColumnType::Text)).collect();
        let table = TableWriter::create(path, &columns, &["image_path"])?;
        Ok(MetaWriter { table, pending: Vec::with_capacity(ROW_GROUP) })
    }

    pub fn push(&mut self, row: Row) -> anyhow::Result<()> {
        let mut cells = Map::new();
        cells.insert("image_path".into(), Value::String(row.image_path));
        for (name, cell) in [("caption", row.caption), ("url", row.url)] {
            if let Some(text) = cell {
                cells.insert(name.into(), Value::String(text));
            }
        }
        self.pending.push(cells);
        if self.pending.len() >= ROW_GROUP {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if !self.pending.is_empty() {
            self.table.write_group(&self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }

    pub fn rows(&self) -> u64 {
        self.table.rows() + self.pending.len() as u64
    }

    pub fn finish(mut self) -> anyhow::Result<u64> {
        self.flush()?;
        self.table.finish()
    }
}

/// Reads rows by number across metadata parts read one after another (clip_back's sorted
/// `metadata/*.parquet`): row i of the index is the i-th row of their concatenation.
pub fn lookup_parts(paths: &[std::path::PathBuf], ids: &[u64]) -> anyhow::Result<Vec<Row>> {
    let mut starts = Vec::with_capacity(paths.len());
    let mut total = 0u64;
    for p in paths {
        starts.push(total);
        total += count_rows(p)?;
    }
    let mut out = vec![Row::default(); ids.len()];
    for (f, path) in paths.iter().enumerate() {
        let end = starts.get(f + 1).copied().unwrap_or(total);
        let wanted: Vec<(usize, u64)> = ids
            .iter()
            .enumerate()
            .filter(|(_, id)| (starts[f]..end).contains(*id))
            .map(|(i, id)| (i, id - starts[f]))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let local: Vec<u64> = wanted.iter().map(|w| w.1).collect();
        for ((slot, _), row) in wanted.iter().zip(lookup(path, &local)?) {
            out[*slot] = row;
        }
    }
    if let Some(id) = ids.iter().find(|id| **id >= total) {
        bail!("row {id} is past the {total} rows of the metadata parts (index and metadata disagree)");
    }
    Ok(out)
}

/// Reads rows by number from one parquet file, decoding only the row groups that hold them.
pub fn lookup(path: &Path, ids: &[u64]) -> anyhow::Result<Vec<Row>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader =
        SerializedFileReader::new(file).with_context(|| format!("{} is not a parquet file", path.display()))?;
    let groups: Vec<u64> =
        reader.metadata().row_groups().iter().map(|g| g.num_rows().max(0) as u64).collect::<Vec<_>>();
    let mut starts = Vec::with_capacity(groups.len());
    let mut total = 0u64;
    for n in &groups {
        starts.push(total);
        total += n;
    }
    let mut out = vec![None; ids.len()];
    // Group the wanted rows by row group, so that each group is decoded once.
    let mut wanted: std::collections::BTreeMap<usize, Vec<(u64, usize)>> = Default::default();
    for (i, &id) in ids.iter().enumerate() {
        if id >= total {
            bail!("{}: row {id} is past its {total} rows (index and metadata disagree)", path.display());
        }
        let g = starts.partition_point(|&s| s <= id) - 1;
        wanted.entry(g).or_default().push((id - starts[g], i));
    }
    for (g, mut rows) in wanted {
        rows.sort_unstable();
        let group = reader.get_row_group(g)?;
        let mut iter = group.get_row_iter(None).with_context(|| format!("{}: row group {g}", path.display()))?;
        let mut at = 0u64;
        let mut last: Option<(u64, Row)> = None;
        for (offset, slot) in rows {
            if let Some((prev, row)) = &last
                && *prev == offset
            {
                out[slot] = Some(row.clone());
                continue;
            }
            let skip = (offset - at) as usize;
            at = offset + 1;
            let row = iter.nth(skip).with_context(|| format!("{}: row group {g} ends early", path.display()))?;
            let row = row.with_context(|| format!("{}: row {}", path.display(), starts[g] + offset))?;
            let mut r = Row::default();
            for (name, field) in row.get_column_iter() {
                match name.as_str() {
                    "image_path" => r.image_path = cell(field).unwrap_or_default(),
                    "caption" => r.caption = cell(field),
                    "url" => r.url = cell(field),
                    _ => {}
                }
            }
            out[slot] = Some(r.clone());
            last = Some((offset, r));
        }
    }
    Ok(out.into_iter().map(Option::unwrap_or_default).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_written_in_groups_are_found_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.parquet");
        let mut w = MetaWriter::create(&path).unwrap();
        let n = ROW_GROUP * 2 + 5;
        for i in 0..n {
            w.push(Row {
                image_path: format!("k{i}"),
                caption: (i % 3 != 0).then(|| format!("caption {i}")),
                url: (i % 2 == 0).then(|| format!("http://h/{i}")),
            })
            .unwrap();
        }
        assert_eq!(w.finish().unwrap(), n as u64);
        assert_eq!(count_rows(&path).unwrap(), n as u64);
        let ids = [(n - 1) as u64, 0, ROW_GROUP as u64 + 1, 4, 4];
        let rows = lookup(&path, &ids).unwrap();
        for (row, id) in rows.iter().zip(ids) {
            assert_eq!(row.image_path, format!("k{id}"));
            assert_eq!(row.caption.is_some(), id % 3 != 0);
            assert_eq!(row.url, (id % 2 == 0).then(|| format!("http://h/{id}")));
        }
        assert!(lookup(&path, &[n as u64]).unwrap_err().to_string().contains("past its"));
        let second = dir.path().join("metadata_2.parquet");
        let mut w = MetaWriter::create(&second).unwrap();
        w.push(Row { image_path: "last".into(), caption: None, url: None }).unwrap();
        w.finish().unwrap();
        let both = lookup_parts(&[path.clone(), second], &[n as u64, 1]).unwrap();
        assert_eq!((both[0].image_path.as_str(), both[1].image_path.as_str()), ("last", "k1"));
    }
}
