//! The HNSW coarse quantizer of `IVF{nlist}_HNSW{M}`: faiss's `IndexHNSWFlat` (inner product) over the
//! coarse centroids, so that faiss finds a query's lists in a graph instead of scanning every centroid.
//!
//! Levels are drawn as faiss draws them (`HNSW::set_default_probas`, `random_level`); each node's neighbours
//! on a level are its exact nearest among the nodes of that level (2M on level 0, M above), found by gemm:
//! at most a few 10⁵ centroids, so brute force is cheap next to training them. faiss's builder prunes
//! neighbours with its diversity heuristic instead; the search it runs over the graph is the same.
//!
//! On disk (faiss/impl/index_write.cpp, `IHNf`): the common header, then the HNSW fields (`assign_probas`
//! f64, `cum_nneighbor_per_level` i32, `levels` i32, `offsets` u64, `neighbors` i32, each as a vector; then
//! `entry_point`, `max_level`, `efConstruction`, `efSearch` and a legacy `upper_beam` as i32), then the storage
//! as a whole `IxFI` index of the centroids.

use super::faiss::{Cursor, Out};
use super::linalg::{TopK, scores};
use anyhow::bail;
use rayon::prelude::*;

pub const FOURCC: &[u8; 4] = b"IHNf";

#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    pub assign_probas: Vec<f64>,
    pub cum: Vec<i32>,
    pub levels: Vec<i32>,
    pub neighbors: Vec<i32>,
    pub entry: i32,
    pub max_level: i32,
    pub ef_construction: i32,
    pub ef_search: i32,
}

impl Graph {
    /// A graph over the rows of `centroids` with `m` neighbours a level (2m on level 0).
    pub fn build(centroids: &[f32], d: usize, m: usize, seed: u64) -> Graph {
        let n = centroids.len() / d;
        let level_mult = 1.0 / (m as f64).ln();
        let (mut assign_probas, mut cum, mut nn) = (Vec::new(), vec![0i32], 0i32);
        for level in 0.. {
            let p = (-(level as f64) / level_mult).exp() * (1.0 - (-1.0 / level_mult).exp());
            if p < 1e-9 {
                break;
            }
            assign_probas.push(p);
            nn += if level == 0 { 2 * m as i32 } else { m as i32 };
            cum.push(nn);
        }
        let mut rng = fastrand::Rng::with_seed(seed);
        let levels: Vec<i32> = (0..n)
            .map(|_| {
                let mut f = rng.f64();
                for (level, p) in assign_probas.iter().enumerate() {
                    if f < *p {
                        return level as i32 + 1;
                    }
                    f -= p;
                }
                assign_probas.len() as i32
            })
            .collect();
        let offsets = offsets(&levels, &cum);
        let mut neighbors = vec![-1i32; offsets[n] as usize];
        let max_level = levels.iter().copied().max().unwrap_or(1) - 1;
        for level in 0..=max_level {
            let members: Vec<usize> = (0..n).filter(|&i| levels[i] > level).collect();
            let rows: Vec<f32> = members.iter().flat_map(|&i| centroids[i * d..(i + 1) * d].iter().copied()).collect();
            let want = (cum[level as usize + 1] - cum[level as usize]) as usize;
            let lists: Vec<Vec<i32>> = rows
                .par_chunks(256 * d)
                .enumerate()
                .flat_map_iter(|(block, chunk)| {
                    let mut s = Vec::new();
                    scores(chunk, &rows, d, &mut s);
                    let members = &members;
                    s.chunks_exact(members.len())
                        .enumerate()
                        .map(|(r, row)| {
                            let me = block * 256 + r;
                            let mut top = TopK::new(want);
                            row.iter().enumerate().filter(|(j, _)| *j != me).for_each(|(j, v)| top.push(*v, j as i64));
                            top.sorted().into_iter().map(|(j, _)| members[j as usize] as i32).collect()
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            for (&node, list) in members.iter().zip(lists) {
                let at = offsets[node] as usize + cum[level as usize] as usize;
                neighbors[at..at + list.len()].copy_from_slice(&list);
            }
        }
        let entry = levels.iter().position(|&l| l - 1 == max_level).map_or(-1, |i| i as i32);
        Graph { assign_probas, cum, levels, neighbors, entry, max_level, ef_construction: 40, ef_search: 16 }
    }

    pub fn write_to<W: std::io::Write>(&self, out: &mut Out<W>, d: usize, centroids: &[f32]) -> std::io::Result<()> {
        out.bytes(FOURCC)?;
        out.header(d, self.levels.len() as u64, true)?;
        out.u64(self.assign_probas.len() as u64)?;
        self.assign_probas.iter().try_for_each(|p| out.bytes(&p.to_le_bytes()))?;
        for v in [&self.cum, &self.levels] {
            out.u64(v.len() as u64)?;
            v.iter().try_for_each(|x| out.i32(*x))?;
        }
        let offsets = offsets(&self.levels, &self.cum);
        out.u64(offsets.len() as u64)?;
        offsets.iter().try_for_each(|x| out.u64(*x))?;
        out.u64(self.neighbors.len() as u64)?;
        self.neighbors.iter().try_for_each(|x| out.i32(*x))?;
        for v in [self.entry, self.max_level, self.ef_construction, self.ef_search, 1] {
            out.i32(v)?;
        }
        out.flat_ip(d, centroids)
    }

    /// Reads what follows `IHNf`: the graph and the centroids it stores.
    pub fn read_body(c: &mut Cursor) -> anyhow::Result<(Graph, usize, Vec<f32>)> {
        let (d, n) = c.header()?;
        let count = |c: &mut Cursor| -> anyhow::Result<usize> {
            let n = c.u64()? as usize;
            if n > 1 << 34 {
                bail!("implausible HNSW vector of {n} values");
            }
            Ok(n)
        };
        let k = count(c)?;
        let assign_probas =
            (0..k).map(|_| Ok(f64::from_le_bytes(c.take(8)?.try_into()?))).collect::<anyhow::Result<_>>()?;
        let k = count(c)?;
        let cum = (0..k).map(|_| c.i32()).collect::<anyhow::Result<Vec<_>>>()?;
        let k = count(c)?;
        let levels = (0..k).map(|_| c.i32()).collect::<anyhow::Result<Vec<_>>>()?;
        let k = count(c)?;
        let offsets = (0..k).map(|_| c.u64()).collect::<anyhow::Result<Vec<_>>>()?;
        let k = count(c)?;
        let neighbors = (0..k).map(|_| c.i32()).collect::<anyhow::Result<Vec<_>>>()?;
        let (entry, max_level, ef_construction, ef_search, _) = (c.i32()?, c.i32()?, c.i32()?, c.i32()?, c.i32()?);
        if &c.fourcc()? != super::faiss::FLAT_IP {
            bail!("the HNSW storage is not an IndexFlatIP");
        }
        let (sd, centroids) = c.flat_ip_body()?;
        let graph = Graph { assign_probas, cum, levels, neighbors, entry, max_level, ef_construction, ef_search };
        if sd != d || centroids.len() != n as usize * d || graph.levels.len() != n as usize {
            bail!("the HNSW graph of {n} nodes does not match its storage of {} values of {sd}", centroids.len());
        }
        if offsets != super::graph::offsets(&graph.levels, &graph.cum) {
            bail!("HNSW offsets do not follow the levels");
        }
        Ok((graph, d, centroids))
    }
}

/// Where each node's neighbours start: node i has `cum[levels[i]]` slots.
fn offsets(levels: &[i32], cum: &[i32]) -> Vec<u64> {
    let mut out = Vec::with_capacity(levels.len() + 1);
    let mut at = 0u64;
    out.push(0);
    for &l in levels {
        at += cum[l.clamp(0, cum.len() as i32 - 1) as usize] as u64;
        out.push(at);
    }
    out
}
