//! `[params]` and their use as `${name}` inside step settings. A setting that is exactly `${name}` takes the
//! param's value with its type; inside a longer string the value is spliced in as text. `$${` is a literal `${`.

use serde_json::Value;
use std::collections::BTreeMap;

pub type Params = BTreeMap<String, Value>;

/// Why a string could not be interpolated.
#[derive(Debug, PartialEq, Eq)]
pub enum ParamError {
    Undefined(String),
    Unterminated,
}

/// Expands `${…}` references in `text`.
pub fn interpolate(text: &str, params: &Params) -> Result<Value, ParamError> {
    if let Some(name) = text.strip_prefix("${").and_then(|t| t.strip_suffix('}'))
        && !name.contains(['$', '{', '}'])
    {
        {
            return params.get(name).cloned().ok_or_else(|| ParamError::Undefined(name.to_string()));
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after.find('}').ok_or(ParamError::Unterminated)?;
            let name = &after[..end];
            let value = params.get(name).ok_or_else(|| ParamError::Undefined(name.to_string()))?;
            match value {
                Value::String(s) => out.push_str(s),
                other => out.push_str(&other.to_string()),
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

/// Parses a `--set` value for a param whose current value is `like`: the param keeps its type.
pub fn parse_override(raw: &str, like: &Value) -> Result<Value, String> {
    let parsed = match like {
        Value::String(_) => return Ok(Value::String(raw.to_string())),
        Value::Bool(_) => raw.parse::<bool>().ok().map(Value::from),
        Value::Number(n) if n.is_f64() => raw.parse::<f64>().ok().map(Value::from),
        Value::Number(_) => raw.parse::<i64>().ok().map(Value::from),
        _ => serde_json::from_str(raw).ok(),
    };
    parsed.ok_or_else(|| format!("expected {}, found `{raw}`", crate::kind::settings::describe_value(like)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params() -> Params {
        [("n".to_string(), json!(4)), ("col".to_string(), json!("caption"))].into()
    }

    #[test]
    fn whole_reference_keeps_type() {
        assert_eq!(interpolate("${n}", &params()), Ok(json!(4)));
    }

    #[test]
    fn splices_and_escapes() {
        assert_eq!(interpolate("a-${col}-${n}", &params()), Ok(json!("a-caption-4")));
        assert_eq!(interpolate("$${col} costs $5", &params()), Ok(json!("${col} costs $5")));
    }

    #[test]
    fn undefined_and_unterminated() {
        assert_eq!(interpolate("x${nope}", &params()), Err(ParamError::Undefined("nope".into())));
        assert_eq!(interpolate("x${col", &params()), Err(ParamError::Unterminated));
    }

    #[test]
    fn overrides_keep_the_param_type() {
        assert_eq!(parse_override("8", &json!(4)), Ok(json!(8)));
        assert!(parse_override("eight", &json!(4)).is_err());
        assert_eq!(parse_override("8", &json!("x")), Ok(json!("8")));
    }
}
