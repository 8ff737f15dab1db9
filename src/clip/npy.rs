//! NumPy `.npy` files (format version 1.0), the layout clip-retrieval and autofaiss read: a small writer
//! that streams rows of a 2-D array (the row count is patched into the header at the end) and a reader for
//! little-endian float arrays.

use anyhow::{Context, bail};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"\x93NUMPY";
/// The writer's whole preamble (magic, version, length, header dict, padding): room for any row count, and
/// a multiple of 64 so that the data is aligned as numpy writes it.
const PREAMBLE: usize = 128;

/// Element types this module reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F16,
    F32,
}

impl Dtype {
    fn descr(self) -> &'static str {
        match self {
            Dtype::F16 => "<f2",
            Dtype::F32 => "<f4",
        }
    }
    fn size(self) -> usize {
        match self {
            Dtype::F16 => 2,
            Dtype::F32 => 4,
        }
    }
}

fn header(dtype: Dtype, shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [one] => format!("({one},)"),
        many => format!("({})", many.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
    };
    let dict = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {dims}, }}", dtype.descr());
    let mut out = Vec::with_capacity(PREAMBLE);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    let len = PREAMBLE - 10;
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(PREAMBLE - 1, b' ');
    out.push(b'\n');
    out
}

/// Writes a 2-D array row by row; [`finish`](Self::finish) fixes the row count in the header.
pub struct RowWriter {
    out: BufWriter<File>,
    path: PathBuf,
    dtype: Dtype,
    cols: usize,
    rows: usize,
}

impl RowWriter {
    pub fn create(path: &Path, dtype: Dtype, cols: usize) -> anyhow::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut out = BufWriter::new(file);
        out.write_all(&header(dtype, &[0, cols]))?;
        Ok(RowWriter { out, path: path.to_path_buf(), dtype, cols, rows: 0 })
    }

    /// Appends rows given as f32, `cols` values each; converted to the file's dtype (round to nearest even
    /// for f16, as numpy's `astype(np.float16)`).
    pub fn push(&mut self, values: &[f32]) -> anyhow::Result<()> {
        if self.cols == 0 || !values.len().is_multiple_of(self.cols) {
            bail!("{}: {} values are not whole rows of {}", self.path.display(), values.len(), self.cols);
        }
        let mut bytes = Vec::with_capacity(values.len() * self.dtype.size());
        match self.dtype {
            Dtype::F16 => values.iter().for_each(|v| bytes.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
            Dtype::F32 => values.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes())),
        }
        self.out.write_all(&bytes).with_context(|| format!("cannot write {}", self.path.display()))?;
        self.rows += values.len() / self.cols;
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Writes the final header and syncs the file.
    pub fn finish(self) -> anyhow::Result<usize> {
        let (rows, path) = (self.rows, self.path.clone());
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {}", path.display()))?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&header(self.dtype, &[rows, self.cols]))?;
        file.sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
        Ok(rows)
    }
}

/// An array read from a `.npy` file, its values widened to f32.
#[derive(Debug, Clone)]
pub struct Array {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

pub fn read(path: &Path) -> anyhow::Result<Array> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {}", path.display()))?;
    parse(&bytes).with_context(|| format!("{} is not a readable .npy file", path.display()))
}

pub fn parse(bytes: &[u8]) -> anyhow::Result<Array> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        bail!("no NumPy magic");
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => bail!("format version {v} is not supported"),
    };
    let dict = bytes.get(start..start + len).context("truncated header")?;
    let dict = std::str::from_utf8(dict).context("header is not text")?;
    let field = |name: &str| -> anyhow::Result<&str> {
        let at = dict.find(&format!("'{name}':")).with_context(|| format!("header has no '{name}'"))?;
        Ok(dict[at + name.len() + 3..].trim_start())
    };
    let dtype = if field("descr")?.starts_with("'<f2'") {
        Dtype::F16
    } else if field("descr")?.starts_with("'<f4'") {
        Dtype::F32
    } else {
        bail!(
            "dtype {} is not supported (only little-endian f2 and f4)",
            field("descr")?.split(',').next().unwrap_or("")
        )
    };
    if !field("fortran_order")?.starts_with("False") {
        bail!("Fortran-ordered arrays are not supported");
    }
    let shape_text = field("shape")?;
    let shape_text = shape_text.strip_prefix('(').and_then(|s| s.split(')').next()).context("malformed shape")?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().with_context(|| format!("malformed shape dimension `{s}`")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let count: usize = shape.iter().product();
    let body = &bytes[start + len..];
    if body.len() != count * dtype.size() {
        bail!("data is {} bytes, the shape {:?} needs {}", body.len(), shape, count * dtype.size());
    }
    let data = match dtype {
        Dtype::F16 => body.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F32 => body.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
    };
    Ok(Array { dtype, shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_rows_read_back_with_their_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/x.npy");
        let mut w = RowWriter::create(&path, Dtype::F16, 2).unwrap();
        w.push(&[1.0, -0.5, 0.25, 65504.0]).unwrap();
        w.push(&[0.1, 0.2]).unwrap();
        assert!(w.push(&[1.0]).is_err());
        assert_eq!(w.finish().unwrap(), 3);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), PREAMBLE + 12);
        let a = parse(&bytes).unwrap();
        assert_eq!((a.dtype, a.shape.clone()), (Dtype::F16, vec![3, 2]));
        assert_eq!(&a.data[..4], &[1.0, -0.5, 0.25, 65504.0]);
        assert!((a.data[4] - 0.1).abs() < 1e-3);
        let empty = RowWriter::create(&dir.path().join("e.npy"), Dtype::F32, 4).unwrap();
        assert_eq!(empty.finish().unwrap(), 0);
        assert_eq!(read(&dir.path().join("e.npy")).unwrap().shape, vec![0, 4]);
    }
}
