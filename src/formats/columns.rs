//! Parquet column types for JSON-valued columns (img2dataset's saved columns, clip-embed's metadata fields).

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Bool,
    Int32,
    Int64,
    Float,
    Text,
}

impl ColumnType {
    /// The narrowest type that holds every non-null value; integers mixed with floats are floats, anything
    /// else mixed is text, and an all-null column is text.
    pub fn infer<'a>(values: impl Iterator<Item = &'a Value>) -> ColumnType {
        let mut ty: Option<ColumnType> = None;
        for v in values {
            let this = match v {
                Value::Null => continue,
                Value::Bool(_) => ColumnType::Bool,
                Value::Number(n) if n.is_i64() => ColumnType::Int64,
                Value::Number(_) => ColumnType::Float,
                _ => ColumnType::Text,
            };
            ty = Some(match (ty, this) {
                (None, t) => t,
                (Some(a), b) if a == b => a,
                (Some(ColumnType::Int64), ColumnType::Float) | (Some(ColumnType::Float), ColumnType::Int64) => {
                    ColumnType::Float
                }
                _ => ColumnType::Text,
            });
        }
        ty.unwrap_or(ColumnType::Text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn infers_the_narrowest_type() {
        let infer = |v: Value| ColumnType::infer(v.as_array().unwrap().iter());
        assert_eq!(infer(json!([1, null, 2])), ColumnType::Int64);
        assert_eq!(infer(json!([1, 2.5])), ColumnType::Float);
        assert_eq!(infer(json!([true, "x"])), ColumnType::Text);
        assert_eq!(infer(json!([null])), ColumnType::Text);
    }
}
