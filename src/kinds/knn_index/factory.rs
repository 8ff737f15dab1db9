//! Which index: a faiss `index_factory` string given by the user, or one chosen from the vector count and the
//! memory budget as autofaiss's `get_optimal_index_keys_v2` chooses ([`autofaiss`]; criteo/autofaiss,
//! autofaiss/external/optimize.py), within the index types dsmake writes:
//!
//! - where autofaiss keeps the f32 vectors (`Flat` below 1,000 vectors, `HNSW15` below 10,000, `HNSW{M}` when
//!   a graph fits the budget, `IVF{nlist},Flat` below 10⁶ when it fits), dsmake writes the exact `Flat` index:
//!   its faiss writer has neither `IndexHNSWFlat` nor `IndexIVFFlat`, and the exact index is no larger;
//! - otherwise autofaiss's quantized key, as it is: `OPQ{M}_{y},IVF{nlist},PQ{M}x8`, with an HNSW coarse
//!   quantizer (`IVF{nlist}_HNSW32`) from 1,000 lists on, every part of which dsmake trains and writes.

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

    /// Bytes of the codes and ids of `n` vectors (`M + 8` each; an exact index: the vectors).
    pub fn code_bytes(&self, n: u64) -> u64 {
        match *self {
            IndexKey::Flat => 0,
            IndexKey::IvfPq { m, .. } => n * (m as u64 + 8),
        }
    }

    /// Whether `n` vectors fit `budget` as autofaiss's choice counts them (`get_optimal_quantization`): the
    /// codes and ids (`M + 8` bytes a vector; centroids and tables not counted) compress the f32 vectors at least
    /// `4·n·d / budget` times (Python's float arithmetic). An exact index fits when its vectors do.
    pub fn fits(&self, n: u64, d: usize, budget: u64) -> bool {
        match *self {
            IndexKey::Flat => self.bytes(n, d) <= budget,
            IndexKey::IvfPq { m, .. } => (4 * d) as f64 / (m + 8) as f64 >= 4.0 * n as f64 * d as f64 / budget as f64,
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

/// autofaiss's first choice of coarse centroids for `n` vectors (`get_optimal_nb_clusters`; Python's `round`
/// rounds halves to even).
pub fn nlist_for(n: u64) -> usize {
    if n < 1_000_000 {
        let x = 4.0 * (n as f64).sqrt();
        2f64.powi(x.log2().round_ties_even() as i32) as usize
    } else if n < 10_000_000 {
        16_384
    } else if n < 300_000_000 {
        65_536
    } else {
        131_072
    }
}

/// The first index key autofaiss's `get_optimal_index_keys_v2` (criteo/autofaiss 2.18.0,
/// autofaiss/external/optimize.py) gives for `n` vectors of `d` in `budget` bytes, with the defaults
/// `clip-retrieval index` and `build_index` call it with (not memory-mappable, no direct map, CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Autofaiss {
    /// `Flat`: fewer than 1,000 vectors (`flat_threshold`).
    Flat,
    /// `HNSW{M}`: `HNSW15` below 10,000 vectors (`quantization_threshold`), whatever the budget; else
    /// `HNSW{min(M, 32)}` when a graph of `M ≥ 8` fits (`M = ⌊(budget / 4n − d) / 2⌋`).
    Hnsw(usize),
    /// `IVF{nlist},Flat`: below 10⁶ vectors (`ivf_flat_threshold`) when its estimated size (`IndexMetadata`:
    /// the vectors and the centroids in f32) fits.
    IvfFlat(usize),
    /// `get_optimal_quantization`'s first key: `OPQ{M}_{y},IVF{nlist}[_HNSW32],PQ{M}x8`.
    Quantized(IndexKey),
    /// No PQ size fits: autofaiss returns no key.
    Nothing,
}

impl std::fmt::Display for Autofaiss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Autofaiss::Flat => f.write_str("Flat"),
            Autofaiss::Hnsw(m) => write!(f, "HNSW{m}"),
            Autofaiss::IvfFlat(nlist) => write!(f, "IVF{nlist},Flat"),
            Autofaiss::Quantized(key) => key.fmt(f),
            Autofaiss::Nothing => f.write_str("(none)"),
        }
    }
}

/// [`Autofaiss`]'s choice, by the same arithmetic (floats as Python's).
pub fn autofaiss(n: u64, d: usize, budget: u64) -> Autofaiss {
    if n < 1_000 {
        return Autofaiss::Flat;
    }
    if n < 10_000 {
        return Autofaiss::Hnsw(15);
    }
    let (nf, df, bf) = (n as f64, d as f64, budget as f64);
    let m_hnsw = ((bf / (4.0 * nf) - df) / 2.0).floor();
    if m_hnsw >= 8.0 {
        return Autofaiss::Hnsw((m_hnsw as usize).min(32));
    }
    let nlist = nlist_for(n);
    if n < 1_000_000 && 4 * n * d as u64 + 4 * (nlist * d) as u64 <= budget {
        return Autofaiss::IvfFlat(nlist);
    }
    quantized(n, d, budget).map_or(Autofaiss::Nothing, Autofaiss::Quantized)
}

/// `get_optimal_quantization`'s first key: the largest PQ size below `d` whose codes and ids (`M + 8` bytes a
/// vector; centroids and tables not counted) compress the f32 vectors at least as much as the budget asks, with
/// the first number of lists; OPQ's output `y = (min(d / M, 6) + 1) · M` (a multiple of `M` a little above `d`,
/// or at most `7·M`), and an HNSW coarse quantizer from 1,000 lists on.
pub fn quantized(n: u64, d: usize, budget: u64) -> Option<IndexKey> {
    let nlist = nlist_for(n);
    let hnsw = (nlist >= 1000).then_some(32);
    [256, 128, 64, 48, 32, 24, 16, 8, 4]
        .into_iter()
        .map(|m| IndexKey::IvfPq { nlist, m, hnsw, opq: Some(((d / m).min(6) + 1) * m) })
        .find(|key| matches!(key, IndexKey::IvfPq { m, .. } if *m < d) && key.fits(n, d, budget))
}

/// The index dsmake builds for `n` vectors of `d` within `budget` bytes: autofaiss's choice, except that where
/// autofaiss builds an HNSW graph or an IVF-Flat index over the f32 vectors, dsmake writes the exact `Flat`
/// index, which dsmake's faiss writer has (it writes neither `IndexHNSWFlat` nor `IndexIVFFlat`) and which is
/// no larger than either (both also hold every vector in f32); `dsmake search` is exact there.
pub fn choose(n: u64, d: usize, budget: u64) -> anyhow::Result<IndexKey> {
    match autofaiss(n, d, budget) {
        Autofaiss::Flat | Autofaiss::Hnsw(_) | Autofaiss::IvfFlat(_) => Ok(IndexKey::Flat),
        Autofaiss::Quantized(_) | Autofaiss::Nothing => choose_approximate(n, d, budget),
    }
}

/// An approximate index whatever the count (`exact_faiss = false`): autofaiss's quantized key.
pub fn choose_approximate(n: u64, d: usize, budget: u64) -> anyhow::Result<IndexKey> {
    quantized(n, d, budget).with_context(|| {
        format!(
            "{n} vectors of {d} do not fit max_index_memory_usage ({budget} bytes) even with PQ4 codes (12 bytes a \
             vector with its id, as autofaiss counts them): raise it"
        )
    })
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

    /// Each case's key worked out by hand from autofaiss's `get_optimal_index_keys_v2` (criteo/autofaiss 2.18.0,
    /// autofaiss/external/optimize.py: the thresholds, `m_hnsw`, `get_optimal_ivf` with `IndexMetadata`'s size,
    /// `get_optimal_quantization`, `get_optimal_nb_clusters`), and what dsmake builds for it.
    #[test]
    fn chooses_as_autofaiss_get_optimal_index_keys_v2() {
        let cases: [(u64, usize, &str, &str); 16] = [
            // Fewer than 1,000 vectors (flat_threshold).
            (500, 768, "1B", "Flat"),
            // Below 10,000 (quantization_threshold) HNSW15 whatever the budget; dsmake: exact.
            (5_000, 768, "1B", "HNSW15"),
            // m_hnsw = ⌊(4G / 4·10⁴ − 768) / 2⌋ ≥ 8: HNSW32.
            (10_000, 768, "4G", "HNSW32"),
            (1_000_000, 768, "4G", "HNSW32"),
            // m_hnsw = ⌊(780 − 768) / 2⌋ = 6; IVF1024,Flat (307,200,000 + 3,145,728 bytes) fits.
            (100_000, 768, "312000000", "IVF1024,Flat"),
            // Compression 30.7G / 4G = 7.2 ≤ 3072 / 264: PQ256, y = (min(768 / 256, 6) + 1)·256 = 1024; 10⁷ is not
            // below 10⁷: 65,536 lists, ≥ 1,000 so HNSW32.
            (10_000_000, 768, "4G", "OPQ256_1024,IVF65536_HNSW32,PQ256x8"),
            // 71.5 times: PQ64 gives 42.7, PQ48 54.9, PQ32 76.8; y = 7·32.
            (400_000_000, 768, "16G", "OPQ32_224,IVF131072_HNSW32,PQ32x8"),
            // 4·√10⁵ = 1265: 1,024 lists.
            (100_000, 768, "64M", "OPQ256_1024,IVF1024_HNSW32,PQ256x8"),
            // 4·√2¹⁷ = 2^10.5: Python rounds the half to even, 1,024 lists (not 2,048).
            (131_072, 768, "64M", "OPQ256_1024,IVF1024_HNSW32,PQ256x8"),
            // The f32 vectors (6.144·10⁹ bytes) fit, an HNSW8 graph (6.272·10⁹) does not, and from 10⁶ on no
            // IVF-Flat: PQ256, where dsmake chose Flat before.
            (2_000_000, 768, "6200000000", "OPQ256_1024,IVF16384_HNSW32,PQ256x8"),
            // d = 64: PQ sizes below 64 only; 4.9 times: PQ48 gives 4.57, PQ32 6.4; y = 3·32; 512 lists, no HNSW.
            (20_000, 64, "1M", "OPQ32_96,IVF512,PQ32x8"),
            (12_000, 32, "400000", "OPQ24_48,IVF512,PQ24x8"),
            (15_000, 32, "400000", "OPQ16_48,IVF512,PQ16x8"),
            (12_000, 32, "200000", "OPQ8_40,IVF512,PQ8x8"),
            (16_000, 32, "200000", "OPQ4_28,IVF512,PQ4x8"),
            // 1,144 times: more than PQ4's 256: no key.
            (400_000_000, 768, "1G", "(none)"),
        ];
        // dsmake builds autofaiss's quantized keys as they are, and Flat where autofaiss keeps the vectors.
        for (n, d, budget, theirs) in cases {
            let budget = parse_memory(budget).unwrap();
            assert_eq!(autofaiss(n, d, budget).to_string(), theirs, "{n} x {d} in {budget}");
            match choose(n, d, budget) {
                Ok(key) if theirs.starts_with("OPQ") => {
                    assert_eq!(key.to_string(), theirs);
                    key.check(n, d).unwrap();
                    assert!(key.fits(n, d, budget) && IndexKey::parse(theirs).unwrap() == key);
                }
                Ok(key) => assert_eq!((key, theirs == "(none)"), (IndexKey::Flat, false), "{n} x {d} in {budget}"),
                Err(e) => assert!(theirs == "(none)" && e.to_string().contains("raise it"), "{e}"),
            }
        }
        // exact_faiss = false: quantized even where autofaiss keeps the vectors.
        assert_eq!(choose_approximate(5_000, 32, 1 << 30).unwrap().to_string(), "OPQ24_48,IVF256,PQ24x8");
        assert_eq!(nlist_for(100_000), 1024);
        assert_eq!(
            IndexKey::IvfPq { nlist: 16_384, m: 64, hnsw: None, opq: None }.train_rows(5_000_000, 768, 16 << 30),
            1_048_576
        );
    }
}
