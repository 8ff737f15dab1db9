//! The queries and timings behind `index_infos.json`'s latency and recall figures.

use super::hnsw;
use std::time::Instant;

/// Queries that are not stored vectors: the normalised mean of two neighbouring samples.
pub fn probe_queries(samples: &[Vec<f32>]) -> Vec<Vec<f32>> {
    if samples.len() < 2 {
        return samples.to_vec();
    }
    (0..samples.len())
        .map(|i| {
            let (a, b) = (&samples[i], &samples[(i + 1) % samples.len()]);
            let mut q: Vec<f32> = a.iter().zip(b).map(|(x, y)| x + y).collect();
            let norm = q.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                q.iter_mut().for_each(|x| *x /= norm);
            }
            q
        })
        .collect()
}

/// Average and 99th-percentile latency of one query at a time, in milliseconds.
pub fn latency(index: &usearch::Index, queries: &[Vec<f32>]) -> anyhow::Result<(f64, f64)> {
    let mut times = Vec::with_capacity(queries.len());
    for q in queries {
        let t = Instant::now();
        hnsw::search(index, q, 10)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    if times.is_empty() {
        return Ok((0.0, 0.0));
    }
    times.sort_by(f64::total_cmp);
    let avg = times.iter().sum::<f64>() / times.len() as f64;
    let p99 = times[((times.len() as f64 * 0.99).ceil() as usize).clamp(1, times.len()) - 1];
    Ok((avg, p99))
}
