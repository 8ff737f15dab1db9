//! Which index: a faiss `index_factory` string given by the user, or one chosen from the vector count and the
//! memory budget as autofaiss's `get_optimal_index_keys_v2` chooses (criteo/autofaiss,
//! autofaiss/external/optimize.py), within the index types dsmake writes:
//!
//! - fewer than 1,000 vectors, or an exact index that fits `max_index_memory_usage`: `Flat`. autofaiss
//!   picks `HNSW{M}` when a graph fits the budget; dsmake writes the exact index there instead (always
//!   right, and brute force stays well under a second per query at the sizes that fit a few GB).
//! - otherwise `IVF{nlist},PQ{M}x8`: `nlist` autofaiss's first choice for the count (4·√n rounded to a power
//!   of two below 10⁶ vectors, then 2¹⁴, 2¹⁶, 2¹⁷), `M` the largest of autofaiss's PQ sizes (256, 128, 64,
//!   48, 32, 24, 16, 8, 4) below and dividing the dimension whose codes and ids (`M + 8` bytes a vector) fit
//!   the budget; from 1,000 lists on the coarse quantizer is an HNSW graph (`IVF16384_HNSW32,PQ256x8`), as
//!   autofaiss's. autofaiss also rotates vectors with OPQ before PQ (`OPQ256_768,…`); dsmake does not write
//!   OPQ yet, so its codes are plain PQ.

use anyhow::{Context, bail};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKey {
    Flat,
    /// `hnsw`: the coarse quantizer is an HNSW graph with that M (`IVF{nlist}_HNSW{M}`), else flat. `opq`:
    /// an OPQ transform first (`OPQ{M}_{d_out}`, the PQ's M), with its output dimension (0: the input's,
    /// written `OPQ{M}`).
    IvfPq {
        nlist: usize,
        m: usize,
        hnsw: Option<usize>,
        opq: Option<usize>,
    },
}

impl std::fmt::Display for IndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IndexKey::Flat => f.write_str("Flat"),
            IndexKey::IvfPq { nlist, m, hnsw, opq } => {
                match opq {
                    Some(0) => write!(f, "OPQ{m},")?,
                    Some(d_out) => write!(f, "OPQ{m}_{d_out},")?,
                    None => {}
                }
                match hnsw {
                    Some(h) => write!(f, "IVF{nlist}_HNSW{h},PQ{m}x8"),
                    None => write!(f, "IVF{nlist},PQ{m}x8"),
                }
            }
        }
    }
}

const SUPPORTED: &str = "dsmake writes `Flat` and `IVF<nlist>,PQ<M>` (or `PQ<M>x8`; `IVF<nlist>_HNSW<M>` for an HNSW \
                         coarse quantizer; `OPQ<M>_<d>,` or `OPQ<M>,` before it for an OPQ transform)";

impl IndexKey {
    /// Parses a faiss factory string of a kind dsmake writes.
    pub fn parse(s: &str) -> anyhow::Result<IndexKey> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let number = |text: &str, prefix: &str| -> Option<usize> {
            text.strip_prefix(prefix).and_then(|n| n.parse::<usize>().ok()).filter(|&n| n > 0)
        };
        let (opq, parts) = match parts.split_first() {
            Some((first, rest)) if first.starts_with("OPQ") => {
                let (m, d_out) = match first[3..].split_once('_') {
                    Some((m, d_out)) => (m, d_out.parse::<usize>().ok().filter(|&d| d > 0)),
                    None => (&first[3..], Some(0)),
                };
                let m = m.parse::<usize>().ok().filter(|&m| m > 0);
                let (Some(m), Some(d_out)) = (m, d_out) else {
                    bail!("`{s}`: `{first}` is not OPQ<M>_<d> or OPQ<M>; {SUPPORTED}");
                };
                (Some((m, d_out)), rest)
            }
            _ => (None, parts.as_slice()),
        };
        match parts {
            ["Flat"] if opq.is_none() => Ok(IndexKey::Flat),
            [ivf, pq] => {
                let (ivf_part, hnsw) = match ivf.split_once("_HNSW") {
                    Some((ivf, m)) => {
                        let m = m.parse::<usize>().ok().filter(|m| (2..=512).contains(m));
                        (ivf, Some(m.with_context(|| format!("`{s}`: HNSW<M> needs M from 2 to 512; {SUPPORTED}"))?))
                    }
                    None => (*ivf, None),
                };
                let nlist = number(ivf_part, "IVF")
                    .with_context(|| format!("`{s}`: `{ivf}` is not IVF<nlist>; {SUPPORTED}"))?;
                let pq = pq.strip_suffix("x8").unwrap_or(pq);
                let m = number(pq, "PQ").with_context(|| format!("`{s}`: `{pq}` is not PQ<M>; {SUPPORTED}"))?;
                if let Some((opq_m, _)) = opq
                    && opq_m != m
                {
                    bail!("`{s}`: dsmake trains OPQ for the PQ's subspaces: write OPQ{m}, not OPQ{opq_m}");
                }
                Ok(IndexKey::IvfPq { nlist, m, hnsw, opq: opq.map(|o| o.1) })
            }
            _ => bail!(
                "index_key `{s}` is not a factory string dsmake writes: {SUPPORTED} (HNSW indices without IVF, and \
                 transforms other than OPQ, are not written yet)"
            ),
        }
    }

    /// The dimension the IVF-PQ works in: OPQ's output, else the vectors'.
    pub fn inner_dim(&self, d: usize) -> usize {
        match *self {
            IndexKey::IvfPq { opq: Some(d_out), .. } if d_out > 0 => d_out,
            _ => d,
        }
    }

    /// Whether it needs k-means training.
    pub fn trained(&self) -> bool {
        matches!(self, IndexKey::IvfPq { .. })
    }

    /// Bytes of the index for `n` vectors of `d` (what must fit in memory while it is filled).
    pub fn bytes(&self, n: u64, d: usize) -> u64 {
        match *self {
            IndexKey::Flat => n * d as u64 * 4,
            IndexKey::IvfPq { nlist, m, hnsw, opq } => {
                let inner = self.inner_dim(d);
                n * (m as u64 + 8)
                    + 4 * (nlist * inner + 256 * inner) as u64
                    + (nlist * 2 * hnsw.unwrap_or(0) * 4) as u64
                    + opq.map_or(0, |_| 4 * (d * inner) as u64)
            }
        }
    }

    /// Checks the key against the data's dimension and count.
    pub fn check(&self, n: u64, d: usize) -> anyhow::Result<()> {
        if let IndexKey::IvfPq { nlist, m, opq, .. } = *self {
            let inner = self.inner_dim(d);
            if !inner.is_multiple_of(m) {
                match opq {
                    Some(d_out) if d_out > 0 => bail!("{self}: PQ{m} needs OPQ's output dimension divisible by {m}"),
                    _ => bail!("{self}: PQ{m} needs a dimension divisible by {m}, the vectors have {d}"),
                }
            }
            if n < nlist as u64 {
                bail!("{self}: IVF{nlist} needs at least {nlist} vectors to train, there are {n}");
            }
        }
        Ok(())
    }

    /// Training vectors for this key: 64 per coarse centroid (faiss warns below 39) and at least 10,000 (39
    /// for each of the PQ's 256 centroids per subspace), within the memory for training; at most `n`.
    pub fn train_rows(&self, n: u64, d: usize, memory: u64) -> u64 {
        match *self {
            IndexKey::Flat => 0,
            IndexKey::IvfPq { nlist, .. } => {
                // The sample and its residuals, in f32.
                let fits = memory / (d as u64 * 4 * 2);
                (64 * nlist as u64).max(10_000).min(fits.max(nlist as u64 * 32)).min(n)
            }
        }
    }
}

/// autofaiss's first choice of coarse centroids for `n` vectors (`get_optimal_nb_clusters`).
pub fn nlist_for(n: u64) -> usize {
    if n < 1_000_000 {
        let x = 4.0 * (n as f64).sqrt();
        2f64.powi(x.log2().round() as i32) as usize
    } else if n < 10_000_000 {
        16_384
    } else if n < 300_000_000 {
        65_536
    } else {
        131_072
    }
}

/// The index for `n` vectors of `d` within `budget` bytes.
pub fn choose(n: u64, d: usize, budget: u64) -> anyhow::Result<IndexKey> {
    if n < 1_000 || IndexKey::Flat.bytes(n, d) <= budget {
        return Ok(IndexKey::Flat);
    }
    let nlist = nlist_for(n);
    // autofaiss: `IVF{nlist}_HNSW32` from 1,000 lists on.
    let hnsw = (nlist >= 1000).then_some(32);
    for m in [256, 128, 64, 48, 32, 24, 16, 8, 4] {
        let key = IndexKey::IvfPq { nlist, m, hnsw, opq: None };
        if m < d && d.is_multiple_of(m) && key.bytes(n, d) <= budget {
            return Ok(key);
        }
    }
    bail!(
        "{n} vectors of {d} do not fit max_index_memory_usage ({budget} bytes) even as IVF{nlist},PQ4x8 \
         ({} bytes): raise it",
        IndexKey::IvfPq { nlist, m: 4, hnsw, opq: None }.bytes(n, d)
    )
}

/// A memory size as autofaiss writes it: `4G`, `512MB`, `16GB`, `1.5T`, `100B`, or plain bytes; powers of 1024.
pub fn parse_memory(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().ok().filter(|v: &f64| v.is_finite() && *v >= 0.0).with_context(|| {
        format!("`{s}` is not a memory size (a number and a unit, as autofaiss takes them: 4G, 512MB, 16GB)")
    })?;
    let unit = unit.to_ascii_uppercase();
    let unit = unit.strip_suffix('B').filter(|u| !u.is_empty()).unwrap_or(&unit);
    let power = match unit {
        "" | "B" => 0,
        "K" => 1,
        "M" => 2,
        "G" => 3,
        "T" => 4,
        "P" => 5,
        _ => bail!("`{s}`: unknown unit `{unit}` (B, K, M, G, T, P)"),
    };
    Ok((value * 1024f64.powi(power)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_factory_strings_and_memory_sizes() {
        assert_eq!(IndexKey::parse("Flat").unwrap(), IndexKey::Flat);
        assert_eq!(
            IndexKey::parse("IVF1024,PQ64x8").unwrap(),
            IndexKey::IvfPq { nlist: 1024, m: 64, hnsw: None, opq: None }
        );
        assert_eq!(IndexKey::parse("IVF16, PQ8").unwrap().to_string(), "IVF16,PQ8x8");
        let key = IndexKey::parse("IVF1024_HNSW32,PQ64").unwrap();
        assert_eq!(
            (key, key.to_string().as_str()),
            (IndexKey::IvfPq { nlist: 1024, m: 64, hnsw: Some(32), opq: None }, "IVF1024_HNSW32,PQ64x8")
        );
        assert!(IndexKey::parse("IVF1024_HNSW1,PQ64").is_err());
        let key = IndexKey::parse("OPQ64_448,IVF1024_HNSW32,PQ64").unwrap();
        assert_eq!((key.to_string().as_str(), key.inner_dim(768)), ("OPQ64_448,IVF1024_HNSW32,PQ64x8", 448));
        assert_eq!(IndexKey::parse("OPQ16,IVF64,PQ16").unwrap().to_string(), "OPQ16,IVF64,PQ16x8");
        assert!(IndexKey::parse("OPQ16,IVF64,PQ16").unwrap().check(1000, 50).is_err());
        assert!(IndexKey::parse("OPQ16_64,IVF64,PQ16").unwrap().check(1000, 50).is_ok());
        let e = IndexKey::parse("OPQ32_128,IVF1024,PQ64").unwrap_err().to_string();
        assert!(e.contains("write OPQ64"), "{e}");
        assert!(IndexKey::parse("OPQ,IVF64,PQ16").is_err() && IndexKey::parse("OPQ16,Flat").is_err());
        let e = IndexKey::parse("PCA64,IVF64,PQ16").unwrap_err().to_string();
        assert!(e.contains("not written yet"), "{e}");
        assert!(IndexKey::parse("IVF0,PQ8").is_err());
        assert_eq!(parse_memory("4G").unwrap(), 4 << 30);
        assert_eq!(parse_memory("16GB").unwrap(), 16 << 30);
        assert_eq!(parse_memory("1.5K").unwrap(), 1536);
        assert_eq!(parse_memory("100").unwrap(), 100);
        assert!(parse_memory("4X").is_err() && parse_memory("G").is_err());
    }

    #[test]
    fn chooses_as_autofaiss_within_the_budget() {
        let g4 = 4u64 << 30;
        assert_eq!(choose(500, 768, 1).unwrap(), IndexKey::Flat);
        assert_eq!(choose(1_000_000, 768, g4).unwrap(), IndexKey::Flat);
        // 10⁷ × 768 floats is 30 GB: PQ256 (264 bytes a vector, 2.6 GB) fits 4G, as autofaiss's OPQ256 does.
        assert_eq!(choose(10_000_000, 768, g4).unwrap().to_string(), "IVF65536_HNSW32,PQ256x8");
        // 4·10⁸ vectors in 16G: 40 bytes a vector, PQ32.
        assert_eq!(choose(400_000_000, 768, 16 << 30).unwrap().to_string(), "IVF131072_HNSW32,PQ32x8");
        assert_eq!(choose(100_000, 768, 64 << 20).unwrap().to_string(), "IVF1024_HNSW32,PQ256x8");
        assert_eq!(choose(20_000, 64, 1 << 20).unwrap().to_string(), "IVF512,PQ32x8");
        assert_eq!(nlist_for(100_000), 1024);
        assert!(choose(400_000_000, 768, 1 << 30).unwrap_err().to_string().contains("raise it"));
        assert_eq!(
            IndexKey::IvfPq { nlist: 16_384, m: 64, hnsw: None, opq: None }.train_rows(5_000_000, 768, 16 << 30),
            1_048_576
        );
    }
}
