//! A kind's settings schema: the keys it takes, their types and defaults. The parser checks a step against it
//! (with file, line and column) and fills in defaults, so a kind receives effective settings it can trust.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingType {
    String,
    Integer,
    Float,
    Bool,
    /// A string or a list of strings; always stored as a list.
    StringList,
    /// A table of string values (environment variables, say).
    StringTable,
}

impl SettingType {
    pub fn describe(self) -> &'static str {
        match self {
            SettingType::String => "a string",
            SettingType::Integer => "an integer",
            SettingType::Float => "a number",
            SettingType::Bool => "a boolean",
            SettingType::StringList => "a string or a list of strings",
            SettingType::StringTable => "a table of strings",
        }
    }

    /// Checks a value against the type, turning the accepted shorthands into the canonical shape.
    pub fn coerce(self, value: Value) -> Result<Value, String> {
        let found = describe_value(&value);
        let ok = match (self, value) {
            (SettingType::String, v @ Value::String(_)) => v,
            (SettingType::Integer, v @ Value::Number(_)) if v.is_i64() || v.is_u64() => v,
            (SettingType::Float, Value::Number(n)) => Value::from(n.as_f64().unwrap_or_default()),
            (SettingType::Bool, v @ Value::Bool(_)) => v,
            (SettingType::StringList, v @ Value::String(_)) => Value::Array(vec![v]),
            (SettingType::StringList, Value::Array(items)) if items.iter().all(Value::is_string) => Value::Array(items),
            (SettingType::StringTable, Value::Object(map)) if map.values().all(Value::is_string) => Value::Object(map),
            _ => return Err(format!("expected {}, found {found}", self.describe())),
        };
        Ok(ok)
    }
}

pub fn describe_value(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Fallback {
    /// The step must set it.
    Required,
    /// Absent stays absent (`null` in the effective settings).
    Absent,
    /// A JSON literal used when the step does not set it.
    Value(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub name: &'static str,
    pub ty: SettingType,
    pub fallback: Fallback,
    pub help: &'static str,
}

impl Setting {
    pub const fn required(name: &'static str, ty: SettingType, help: &'static str) -> Self {
        Setting { name, ty, fallback: Fallback::Required, help }
    }
    pub const fn optional(name: &'static str, ty: SettingType, help: &'static str) -> Self {
        Setting { name, ty, fallback: Fallback::Absent, help }
    }
    pub const fn default(name: &'static str, ty: SettingType, json: &'static str, help: &'static str) -> Self {
        Setting { name, ty, fallback: Fallback::Value(json), help }
    }

    pub fn default_value(&self) -> Option<Value> {
        match self.fallback {
            Fallback::Value(json) => Some(serde_json::from_str(json).unwrap_or(Value::Null)),
            Fallback::Absent => Some(Value::Null),
            Fallback::Required => None,
        }
    }
}

/// A problem a kind found in its settings after the types checked out; the parser points at `key`.
#[derive(Debug)]
pub struct SettingError {
    pub key: String,
    pub message: String,
    pub help: Option<String>,
}

impl SettingError {
    pub fn new(key: &str, message: impl Into<String>) -> Self {
        SettingError { key: key.to_string(), message: message.into(), help: None }
    }
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn coerces_shorthands_and_rejects_wrong_types() {
        assert_eq!(SettingType::StringList.coerce(json!("a")).unwrap(), json!(["a"]));
        assert_eq!(SettingType::Float.coerce(json!(2)).unwrap(), json!(2.0));
        assert_eq!(SettingType::Integer.coerce(json!("4")).unwrap_err(), "expected an integer, found a string");
        assert!(SettingType::StringList.coerce(json!(["a", 1])).is_err());
    }
}
