//! An exact faiss `IndexFlatIP` in faiss's own binary format, the file `faiss.read_index` loads and that
//! clip-retrieval's back end serves. Written here (no faiss library needed), streamed row by row.
//!
//! The layout, all little-endian as faiss writes on every platform it supports:
//! - the class's four-character code `IxFI` (IndexFlat with METRIC_INNER_PRODUCT),
//! - the index header: `d` (i32), `ntotal` (i64), two legacy i64 fields faiss fills with 2^20, `is_trained`
//!   (one byte, 1), `metric_type` (i32, 0 = inner product; no `metric_arg` follows for metrics below 2),
//! - the vectors as faiss's backward-compatible "xb" vector: a u64 count of f32 values (`ntotal·d`), then
//!   the values, row after row.

use anyhow::{Context, bail};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const FOURCC: &[u8; 4] = b"IxFI";
const LEGACY_DUMMY: i64 = 1 << 20;
const METRIC_INNER_PRODUCT: i32 = 0;
/// Bytes before the first vector value.
pub const HEADER_LEN: usize = 4 + 4 + 8 + 8 + 8 + 1 + 4 + 8;

/// Streams an `IndexFlatIP` of `ntotal` vectors of dimension `d` to a file.
pub struct FlatIpWriter {
    out: BufWriter<File>,
    path: PathBuf,
    d: usize,
    ntotal: u64,
    written: u64,
}

impl FlatIpWriter {
    pub fn create(path: &Path, d: usize, ntotal: u64) -> anyhow::Result<FlatIpWriter> {
        let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let d32 = i32::try_from(d).context("dimension does not fit faiss's int")?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(FOURCC);
        header.extend_from_slice(&d32.to_le_bytes());
        header.extend_from_slice(&(ntotal as i64).to_le_bytes());
        header.extend_from_slice(&LEGACY_DUMMY.to_le_bytes());
        header.extend_from_slice(&LEGACY_DUMMY.to_le_bytes());
        header.push(1);
        header.extend_from_slice(&METRIC_INNER_PRODUCT.to_le_bytes());
        header.extend_from_slice(&(ntotal * d as u64).to_le_bytes());
        debug_assert_eq!(header.len(), HEADER_LEN);
        out.write_all(&header).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(FlatIpWriter { out, path: path.to_path_buf(), d, ntotal, written: 0 })
    }

    /// Appends whole rows of `d` values.
    pub fn push(&mut self, values: &[f32]) -> anyhow::Result<()> {
        if !values.len().is_multiple_of(self.d.max(1)) {
            bail!("{}: {} values are not whole rows of {}", self.path.display(), values.len(), self.d);
        }
        let rows = (values.len() / self.d.max(1)) as u64;
        if self.written + rows > self.ntotal {
            bail!("{}: more than the {} vectors announced in the header", self.path.display(), self.ntotal);
        }
        let mut bytes = Vec::with_capacity(values.len() * 4);
        values.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        self.out.write_all(&bytes).with_context(|| format!("cannot write {}", self.path.display()))?;
        self.written += rows;
        Ok(())
    }

    pub fn finish(self) -> anyhow::Result<()> {
        if self.written != self.ntotal {
            bail!("{}: {} vectors written, the header says {}", self.path.display(), self.written, self.ntotal);
        }
        let path = self.path;
        let file = self
            .out
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {}", path.display()))?;
        file.sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
        Ok(())
    }
}

/// An `IndexFlatIP` file read back: (d, ntotal, vectors). For tests and for checking a file by hand.
pub fn read_flat_ip(path: &Path) -> anyhow::Result<(usize, usize, Vec<f32>)> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {}", path.display()))?;
    parse(&bytes).with_context(|| format!("{} is not a faiss IndexFlatIP file", path.display()))
}

fn parse(bytes: &[u8]) -> anyhow::Result<(usize, usize, Vec<f32>)> {
    if bytes.len() < HEADER_LEN || &bytes[..4] != FOURCC {
        bail!("no IxFI header");
    }
    let i32_at = |at: usize| i32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let d = usize::try_from(i32_at(4)).context("negative dimension")?;
    let ntotal = u64_at(8) as usize;
    if i32_at(33) != METRIC_INNER_PRODUCT {
        bail!("metric type {} is not inner product", i32_at(33));
    }
    let count = u64_at(37) as usize;
    if count != ntotal * d || bytes.len() != HEADER_LEN + count * 4 {
        bail!("{count} values for {ntotal} vectors of {d} in {} bytes", bytes.len());
    }
    let data = bytes[HEADER_LEN..].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok((d, ntotal, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_then_rows_as_faiss_lays_them_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("knn.index");
        let mut w = FlatIpWriter::create(&path, 2, 3).unwrap();
        w.push(&[1.0, 0.0, 0.0, 1.0]).unwrap();
        assert!(w.push(&[1.0]).is_err());
        w.push(&[0.5, 0.5]).unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..4], b"IxFI");
        assert_eq!(bytes.len(), HEADER_LEN + 6 * 4);
        assert_eq!(bytes[32], 1, "is_trained");
        let (d, n, data) = read_flat_ip(&path).unwrap();
        assert_eq!((d, n, data), (2, 3, vec![1.0, 0.0, 0.0, 1.0, 0.5, 0.5]));

        let short = FlatIpWriter::create(&dir.path().join("short.index"), 2, 3).unwrap();
        assert!(short.finish().unwrap_err().to_string().contains("0 vectors written, the header says 3"));
    }
}
