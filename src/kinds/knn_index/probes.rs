//! The queries behind the recall and latency figures in `image.json`/`text.json`.

/// Queries that are not stored vectors: the normalised mean of two neighbouring samples.
pub fn probe_queries(samples: &[Vec<f32>]) -> Vec<Vec<f32>> {
    if samples.len() < 2 {
        return samples.to_vec();
    }
    (0..samples.len())
        .map(|i| {
            let (a, b) = (&samples[i], &samples[(i + 1) % samples.len()]);
            let mut q: Vec<f32> = a.iter().zip(b).map(|(x, y)| x + y).collect();
            super::linalg::normalize(&mut q);
            q
        })
        .collect()
}
