//! faiss's binary index format, written and read here (no faiss library needed): the files
//! `faiss.read_index` loads and clip-retrieval's `clip_back` serves. Everything is little-endian, as faiss
//! writes on every platform it supports, and follows faiss/impl/index_write.cpp:
//! - an index starts with its class's four-character code, then the common header: `d` (i32), `ntotal`
//!   (i64), two legacy i64 fields faiss fills with 2^20, `is_trained` (one byte), `metric_type` (i32, 0 =
//!   inner product; no `metric_arg` follows for metrics below 2);
//! - `IxFI`: an `IndexFlatIP`, the header then its vectors as an "xb" vector (a u64 count of f32 values,
//!   then the values row after row);
//! - `IwPQ`: an `IndexIVFPQ` (see [`super::ivfpq`]); vectors are a u64 count then the values;
//! - `IxPT`: an `IndexPreTransform`, OPQ's transform before an `IwPQ` (see [`super::opq`]).

use super::factory::IndexKey;
use super::ivfpq::IvfPq;
use anyhow::{Context, bail};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub const FLAT_IP: &[u8; 4] = b"IxFI";
pub const IVF_PQ: &[u8; 4] = b"IwPQ";
const LEGACY_DUMMY: i64 = 1 << 20;
const METRIC_INNER_PRODUCT: i32 = 0;
/// Bytes of a flat index before its first vector value.
pub const FLAT_HEADER_LEN: usize = 4 + 4 + 8 + 8 + 8 + 1 + 4 + 8;

/// Little-endian writes of faiss's field types.
pub struct Out<W: Write>(pub W);

impl<W: Write> Out<W> {
    pub fn bytes(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.0.write_all(b)
    }
    pub fn u8(&mut self, v: u8) -> std::io::Result<()> {
        self.bytes(&[v])
    }
    pub fn i32(&mut self, v: i32) -> std::io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }
    pub fn u64(&mut self, v: u64) -> std::io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }
    pub fn i64(&mut self, v: i64) -> std::io::Result<()> {
        self.bytes(&v.to_le_bytes())
    }
    pub fn f32s(&mut self, v: &[f32]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(v.len().min(1 << 16) * 4);
        for chunk in v.chunks(1 << 16) {
            buf.clear();
            chunk.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
            self.bytes(&buf)?;
        }
        Ok(())
    }
    /// A `std::vector<float>` as faiss's WRITEVECTOR lays it out: its length, then its values.
    pub fn f32_vec(&mut self, v: &[f32]) -> std::io::Result<()> {
        self.u64(v.len() as u64)?;
        self.f32s(v)
    }
    /// faiss's common index header, after the four-character code.
    pub fn header(&mut self, d: usize, ntotal: u64, trained: bool) -> std::io::Result<()> {
        self.i32(d as i32)?;
        self.i64(ntotal as i64)?;
        self.i64(LEGACY_DUMMY)?;
        self.i64(LEGACY_DUMMY)?;
        self.u8(trained as u8)?;
        self.i32(METRIC_INNER_PRODUCT)
    }
    /// A whole `IndexFlatIP` held in memory.
    pub fn flat_ip(&mut self, d: usize, data: &[f32]) -> std::io::Result<()> {
        self.bytes(FLAT_IP)?;
        self.header(d, (data.len() / d.max(1)) as u64, true)?;
        self.f32_vec(data)
    }
}

/// Little-endian reads of faiss's field types, with the offset in errors.
pub struct Cursor<'a> {
    bytes: &'a [u8],
    pub at: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor { bytes, at: 0 }
    }
    pub fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            bail!("truncated: {n} bytes wanted at offset {}, the file has {}", self.at, self.bytes.len());
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn array<const N: usize>(&mut self) -> anyhow::Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub fn u8(&mut self) -> anyhow::Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn i32(&mut self) -> anyhow::Result<i32> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> anyhow::Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> anyhow::Result<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    pub fn fourcc(&mut self) -> anyhow::Result<[u8; 4]> {
        self.array()
    }
    pub fn f32s(&mut self, n: usize) -> anyhow::Result<Vec<f32>> {
        let bytes = self.take(n.checked_mul(4).context("implausible vector length")?)?;
        Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }
    pub fn f32_vec(&mut self) -> anyhow::Result<Vec<f32>> {
        let n = self.u64()? as usize;
        self.f32s(n)
    }
    /// The common header: (d, ntotal). Only inner-product indices are dsmake's.
    pub fn header(&mut self) -> anyhow::Result<(usize, u64)> {
        let d = usize::try_from(self.i32()?).context("negative dimension")?;
        let ntotal = u64::try_from(self.i64()?).context("negative ntotal")?;
        self.take(16)?;
        self.u8()?;
        let metric = self.i32()?;
        if metric != METRIC_INNER_PRODUCT {
            bail!("metric type {metric} is not inner product (0)");
        }
        Ok((d, ntotal))
    }
    /// An `IndexFlatIP` after its four-character code: (d, vectors).
    pub fn flat_ip_body(&mut self) -> anyhow::Result<(usize, Vec<f32>)> {
        let (d, ntotal) = self.header()?;
        let data = self.f32_vec()?;
        if data.len() as u64 != ntotal * d as u64 {
            bail!("{} values for {ntotal} vectors of {d}", data.len());
        }
        Ok((d, data))
    }
}

/// An index file as dsmake reads it back.
pub enum Index {
    Flat { d: usize, data: Vec<f32> },
    IvfPq(Box<IvfPq>),
}

impl Index {
    pub fn d(&self) -> usize {
        match self {
            Index::Flat { d, .. } => *d,
            Index::IvfPq(ivf) => ivf.input_dim(),
        }
    }
    /// The faiss factory string it is.
    pub fn key(&self) -> String {
        match self {
            Index::Flat { .. } => "Flat".into(),
            Index::IvfPq(ivf) => {
                let hnsw = ivf.graph.as_ref().map(|g| (g.cum.get(1).copied().unwrap_or(0) / 2) as usize);
                let opq = ivf.opq.as_ref().map(|o| o.d_out);
                IndexKey::IvfPq { nlist: ivf.nlist(), m: ivf.pq.m, hnsw, opq }.to_string()
            }
        }
    }
    pub fn ntotal(&self) -> u64 {
        match self {
            Index::Flat { d, data } => (data.len() / (*d).max(1)) as u64,
            Index::IvfPq(ivf) => ivf.ntotal(),
        }
    }
    /// The top `k` (id, inner product), best first; `nprobe` (IVF only) defaults to the file's.
    pub fn search(&self, q: &[f32], k: usize, nprobe: Option<usize>) -> Vec<(i64, f32)> {
        match self {
            Index::Flat { d, data } => {
                let mut top = super::linalg::TopK::new(k);
                for (i, row) in data.chunks_exact(*d).enumerate() {
                    top.push(super::linalg::dot(row, q), i as i64);
                }
                top.sorted()
            }
            Index::IvfPq(ivf) => ivf.search(q, k, nprobe.unwrap_or(ivf.nprobe)),
        }
    }
}

pub fn read(path: &Path) -> anyhow::Result<Index> {
    Ok(read_hashed(path, false)?.0)
}

/// The index in `path`, and the blake3 of its bytes where `hash` asks for it (read once for both).
pub fn read_hashed(path: &Path, hash: bool) -> anyhow::Result<(Index, Option<[u8; 32]>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let index = parse(&bytes).with_context(|| {
        format!("{} is not a faiss index dsmake reads (IndexFlatIP, IndexIVFPQ, OPQ + IndexIVFPQ)", path.display())
    })?;
    Ok((index, hash.then(|| *blake3::hash(&bytes).as_bytes())))
}

fn parse(bytes: &[u8]) -> anyhow::Result<Index> {
    let mut c = Cursor::new(bytes);
    let code = c.fourcc()?;
    let index = match &code {
        FLAT_IP => {
            let (d, data) = c.flat_ip_body()?;
            Index::Flat { d, data }
        }
        IVF_PQ => Index::IvfPq(Box::new(IvfPq::read_body(&mut c)?)),
        super::opq::PRE_TRANSFORM => Index::IvfPq(Box::new(IvfPq::read_pre_transform(&mut c)?)),
        other => bail!("index type {:?} is not one dsmake writes", String::from_utf8_lossy(other)),
    };
    if c.at != bytes.len() {
        bail!("{} bytes left after the index", bytes.len() - c.at);
    }
    Ok(index)
}

/// Streams an `IndexFlatIP` of `ntotal` vectors of dimension `d` to a file, so that an exact index of any
/// size is never held in memory.
pub struct FlatIpWriter {
    out: Out<BufWriter<File>>,
    path: PathBuf,
    d: usize,
    ntotal: u64,
    written: u64,
}

impl FlatIpWriter {
    pub fn create(path: &Path, d: usize, ntotal: u64) -> anyhow::Result<FlatIpWriter> {
        let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut out = Out(BufWriter::with_capacity(1 << 20, file));
        i32::try_from(d).context("dimension does not fit faiss's int")?;
        (|| {
            out.bytes(FLAT_IP)?;
            out.header(d, ntotal, true)?;
            out.u64(ntotal * d as u64)
        })()
        .with_context(|| format!("cannot write {}", path.display()))?;
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
        self.out.f32s(values).with_context(|| format!("cannot write {}", self.path.display()))?;
        self.written += rows;
        Ok(())
    }

    pub fn finish(self) -> anyhow::Result<()> {
        if self.written != self.ntotal {
            bail!("{}: {} vectors written, the header says {}", self.path.display(), self.written, self.ntotal);
        }
        finish_file(self.out.0, &self.path)
    }
}

/// Flushes and syncs a written file.
pub fn finish_file(out: BufWriter<File>, path: &Path) -> anyhow::Result<()> {
    let file =
        out.into_inner().map_err(|e| e.into_error()).with_context(|| format!("cannot write {}", path.display()))?;
    file.sync_all().with_context(|| format!("cannot sync {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_index_is_header_then_rows_as_faiss_lays_them_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.index");
        let mut w = FlatIpWriter::create(&path, 2, 3).unwrap();
        w.push(&[1.0, 0.0, 0.0, 1.0]).unwrap();
        assert!(w.push(&[1.0]).is_err());
        w.push(&[0.5, 0.5]).unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..4], b"IxFI");
        assert_eq!(bytes.len(), FLAT_HEADER_LEN + 6 * 4);
        assert_eq!(bytes[32], 1, "is_trained");
        let Index::Flat { d, data } = read(&path).unwrap() else { panic!("not flat") };
        assert_eq!((d, data), (2, vec![1.0, 0.0, 0.0, 1.0, 0.5, 0.5]));
        assert_eq!(read(&path).unwrap().search(&[0.0, 1.0], 2, None), vec![(1, 1.0), (2, 0.5)]);

        let short = FlatIpWriter::create(&dir.path().join("short.index"), 2, 3).unwrap();
        assert!(short.finish().unwrap_err().to_string().contains("0 vectors written, the header says 3"));
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(format!("{:#}", read(&path).err().unwrap()).contains("truncated"));
    }
}
