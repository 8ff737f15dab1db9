//! A shard's files, as img2dataset's webdataset writer lays them out: `NAME.tar` (members `KEY.EXT`,
//! `KEY.txt`, `KEY.json`, successes only, members named as webdataset's TarWriter names them),
//! `NAME.parquet` (every input row) and `NAME_stats.json`.
//!
//! The parquet file is written by `formats::parquet`, the writer every kind's tables share; its column types
//! are re-exported here for the shard writer in `mod.rs`.

pub use crate::formats::columns::ColumnType;
use anyhow::Context;
use std::io::Write;
use std::path::Path;

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
