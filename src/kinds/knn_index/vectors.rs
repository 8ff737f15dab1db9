//! Embedding parts as the index reads them: `.npy` files (clip-retrieval's `img_emb_N.npy`, float16 or
//! float32, 2-D) streamed in chunks of rows, so that a part of any size is never held whole in memory.
//! Only the header is parsed up front: the first pass over all parts needs just their shapes.

use anyhow::{Context, bail};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"\x93NUMPY";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F16,
    F32,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F16 => 2,
            Dtype::F32 => 4,
        }
    }
}

/// A 2-D `.npy` file opened for streaming.
pub struct NpyRows {
    path: PathBuf,
    input: BufReader<File>,
    pub dtype: Dtype,
    pub rows: usize,
    pub cols: usize,
    read: usize,
    buf: Vec<u8>,
}

impl NpyRows {
    pub fn open(path: &Path) -> anyhow::Result<NpyRows> {
        Self::open_inner(path).with_context(|| format!("{} is not a readable 2-D float .npy file", path.display()))
    }

    fn open_inner(path: &Path) -> anyhow::Result<NpyRows> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = file.metadata()?.len();
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut pre = [0u8; 10];
        input.read_exact(&mut pre).context("shorter than a .npy header")?;
        if &pre[..6] != MAGIC {
            bail!("no NumPy magic");
        }
        let (header_len, start) = match pre[6] {
            1 => (u16::from_le_bytes([pre[8], pre[9]]) as usize, 10),
            2 | 3 => {
                let mut more = [0u8; 2];
                input.read_exact(&mut more).context("truncated header")?;
                (u32::from_le_bytes([pre[8], pre[9], more[0], more[1]]) as usize, 12)
            }
            v => bail!("format version {v} is not supported"),
        };
        if header_len > 1 << 16 {
            bail!("header of {header_len} bytes is implausibly long");
        }
        let mut dict = vec![0u8; header_len];
        input.read_exact(&mut dict).context("truncated header")?;
        let dict = String::from_utf8(dict).context("header is not text")?;
        let (dtype, shape) = parse_dict(&dict)?;
        let [rows, cols] = shape[..] else {
            bail!("shape {shape:?} is not 2-D (rows, dimensions)");
        };
        let want = (start + header_len) as u64 + (rows as u64) * (cols as u64) * dtype.size() as u64;
        if len != want {
            bail!("the file is {len} bytes, its shape ({rows}, {cols}) needs {want}: truncated or corrupt");
        }
        Ok(NpyRows { path: path.to_path_buf(), input, dtype, rows, cols, read: 0, buf: Vec::new() })
    }

    /// Appends up to `max_rows` rows, widened to f32, to `out`; returns how many (0 at the end).
    pub fn next_rows(&mut self, max_rows: usize, out: &mut Vec<f32>) -> anyhow::Result<usize> {
        let n = max_rows.min(self.rows - self.read);
        if n == 0 {
            return Ok(0);
        }
        self.buf.resize(n * self.cols * self.dtype.size(), 0);
        self.input
            .read_exact(&mut self.buf)
            .with_context(|| format!("{}: cannot read rows {}..{}", self.path.display(), self.read, self.read + n))?;
        out.reserve(n * self.cols);
        match self.dtype {
            Dtype::F16 => out.extend(self.buf.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())),
            Dtype::F32 => out.extend(self.buf.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        }
        self.read += n;
        Ok(n)
    }

    /// Rows read so far.
    pub fn position(&self) -> usize {
        self.read
    }
}

fn parse_dict(dict: &str) -> anyhow::Result<(Dtype, Vec<usize>)> {
    let field = |name: &str| -> anyhow::Result<&str> {
        let at = dict.find(&format!("'{name}':")).with_context(|| format!("header has no '{name}'"))?;
        Ok(dict[at + name.len() + 3..].trim_start())
    };
    let descr = field("descr")?;
    let dtype = if descr.starts_with("'<f2'") {
        Dtype::F16
    } else if descr.starts_with("'<f4'") {
        Dtype::F32
    } else {
        bail!("dtype {} is not supported (little-endian f2 or f4)", descr.split(',').next().unwrap_or(""));
    };
    if !field("fortran_order")?.starts_with("False") {
        bail!("Fortran-ordered arrays are not supported");
    }
    let shape = field("shape")?;
    let shape = shape.strip_prefix('(').and_then(|s| s.split(')').next()).context("malformed shape")?;
    let shape = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().with_context(|| format!("malformed shape dimension `{s}`")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((dtype, shape))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::npy;

    #[test]
    fn streams_what_the_clip_writer_wrote_and_rejects_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img_emb_00000.npy");
        let mut w = npy::RowWriter::create(&path, npy::Dtype::F16, 3).unwrap();
        let values: Vec<f32> = (0..15).map(|i| i as f32 * 0.5).collect();
        w.push(&values).unwrap();
        w.finish().unwrap();
        let mut r = NpyRows::open(&path).unwrap();
        assert_eq!((r.dtype, r.rows, r.cols), (Dtype::F16, 5, 3));
        let mut out = Vec::new();
        assert_eq!(r.next_rows(2, &mut out).unwrap(), 2);
        assert_eq!(r.next_rows(10, &mut out).unwrap(), 3);
        assert_eq!(r.next_rows(10, &mut out).unwrap(), 0);
        assert_eq!(out, values);

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let e = format!("{:#}", NpyRows::open(&path).err().unwrap());
        assert!(e.contains("img_emb_00000.npy") && e.contains("truncated"), "{e}");
    }
}
