//! Reading the CLIP golden fixtures' JSON (rows of numbers, lists of strings) and comparing float rows.

use serde_json::Value;

/// A JSON array of arrays of numbers, as f32 rows.
pub fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect()
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A JSON array of arrays of token ids.
pub fn token_rows(v: &Value) -> Vec<Vec<u32>> {
    rows(v).into_iter().map(|r| r.into_iter().map(|x| x as u32).collect()).collect()
}
