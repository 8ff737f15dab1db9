//! A kind's settings, declared once: one typed struct written with [`settings!`](crate::settings), from which
//! the schema that `dsmake kinds` prints, the defaults, the type checks (with file, line and column, done by
//! the pipeline parser against the schema) and the typed value a kind receives all come. Enum-valued
//! settings are Rust enums written with [`setting_enum!`](crate::setting_enum): an unknown value is an error
//! that names the allowed ones.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A setting's type as a pipeline file writes it.
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
    /// One of these strings.
    Enum(&'static [&'static str]),
}

impl SettingType {
    pub fn describe(self) -> String {
        match self {
            SettingType::String => "a string".into(),
            SettingType::Integer => "an integer".into(),
            SettingType::Float => "a number".into(),
            SettingType::Bool => "a boolean".into(),
            SettingType::StringList => "a string or a list of strings".into(),
            SettingType::StringTable => "a table of strings".into(),
            SettingType::Enum(names) => format!("one of {}", quoted_list(names)),
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
            (SettingType::Enum(names), Value::String(s)) if names.contains(&s.as_str()) => Value::String(s),
            (SettingType::Enum(names), Value::String(s)) => {
                return Err(format!("unknown value \"{s}\": expected one of {}", quoted_list(names)));
            }
            _ => return Err(format!("expected {}, found {found}", self.describe())),
        };
        Ok(ok)
    }
}

/// `"a", "b" or "c"`
pub fn quoted_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.join(""),
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

#[derive(Debug, Clone)]
pub enum Fallback {
    /// The step must set it.
    Required,
    /// Absent stays absent (`null` in the effective settings).
    Absent,
    /// The value used when the step does not set it, as it goes into the effective settings.
    Value(Value),
}

/// One entry of a kind's schema.
#[derive(Debug, Clone)]
pub struct Setting {
    pub name: &'static str,
    pub ty: SettingType,
    pub fallback: Fallback,
    pub help: String,
}

impl Setting {
    /// The entry for a field of type `T` (written by [`settings!`](crate::settings)).
    pub fn of<T: SettingValue>(name: &'static str, doc: &[&str], default: Option<T>) -> Setting {
        let fallback = match default {
            Some(value) => Fallback::Value(value.default_json()),
            None if T::OPTIONAL => Fallback::Absent,
            None => Fallback::Required,
        };
        let help = doc.iter().map(|line| line.trim()).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
        Setting { name, ty: T::TYPE, fallback, help }
    }

    pub fn default_value(&self) -> Option<Value> {
        match &self.fallback {
            Fallback::Value(v) => Some(v.clone()),
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

impl std::fmt::Display for SettingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}
impl std::error::Error for SettingError {}

/// A type a setting may have.
pub trait SettingValue: Sized {
    const TYPE: SettingType;
    /// Absent from the file means `None`, not an error.
    const OPTIONAL: bool = false;
    /// The value from effective settings (already coerced to `TYPE` by the parser).
    fn from_json(value: &Value) -> Option<Self>;
    fn to_json(&self) -> Value;
    /// The value as a default goes into the effective settings (and so into keys).
    fn default_json(&self) -> Value {
        self.to_json()
    }
}

impl SettingValue for String {
    const TYPE: SettingType = SettingType::String;
    fn from_json(value: &Value) -> Option<Self> {
        value.as_str().map(str::to_string)
    }
    fn to_json(&self) -> Value {
        Value::String(self.clone())
    }
}

impl SettingValue for i64 {
    const TYPE: SettingType = SettingType::Integer;
    fn from_json(value: &Value) -> Option<Self> {
        value.as_i64()
    }
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
}

impl SettingValue for f64 {
    const TYPE: SettingType = SettingType::Float;
    fn from_json(value: &Value) -> Option<Self> {
        value.as_f64()
    }
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
    /// A whole default goes into effective settings as an integer, as the schema's JSON defaults did before
    /// settings were typed: keys of targets built then stay the same.
    fn default_json(&self) -> Value {
        if self.fract() == 0.0 && self.abs() < 9.0e15 { Value::from(*self as i64) } else { Value::from(*self) }
    }
}

impl SettingValue for bool {
    const TYPE: SettingType = SettingType::Bool;
    fn from_json(value: &Value) -> Option<Self> {
        value.as_bool()
    }
    fn to_json(&self) -> Value {
        Value::Bool(*self)
    }
}

impl SettingValue for Vec<String> {
    const TYPE: SettingType = SettingType::StringList;
    fn from_json(value: &Value) -> Option<Self> {
        value.as_array()?.iter().map(|v| v.as_str().map(str::to_string)).collect()
    }
    fn to_json(&self) -> Value {
        Value::Array(self.iter().cloned().map(Value::String).collect())
    }
}

impl SettingValue for BTreeMap<String, String> {
    const TYPE: SettingType = SettingType::StringTable;
    fn from_json(value: &Value) -> Option<Self> {
        value.as_object()?.iter().map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect()
    }
    fn to_json(&self) -> Value {
        Value::Object(self.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
    }
}

impl<T: SettingValue> SettingValue for Option<T> {
    const TYPE: SettingType = T::TYPE;
    const OPTIONAL: bool = true;
    fn from_json(value: &Value) -> Option<Self> {
        match value {
            Value::Null => Some(None),
            v => T::from_json(v).map(Some),
        }
    }
    fn to_json(&self) -> Value {
        self.as_ref().map_or(Value::Null, T::to_json)
    }
}

/// A kind's typed settings (a struct written with [`settings!`](crate::settings)).
pub trait Settings: Sized + Send + Sync + 'static {
    fn schema() -> &'static [Setting];
    /// From effective settings: the parser's output, or a job's.
    fn from_effective(settings: &Map<String, Value>) -> Result<Self, SettingError>;
}

/// Reads field `name` of effective settings (used by [`settings!`](crate::settings)).
pub fn field<T: SettingValue>(settings: &Map<String, Value>, name: &str) -> Result<T, SettingError> {
    let value = settings.get(name).unwrap_or(&Value::Null);
    T::from_json(value).ok_or_else(|| {
        SettingError::new(name, format!("expected {}, found {}", T::TYPE.describe(), describe_value(value)))
    })
}

/// Declares a kind's settings once: a struct whose fields are the settings, each with its doc comment (the
/// help that `dsmake kinds` prints and errors quote) and, optionally, a default. A field without a default is
/// required, unless its type is an `Option`.
///
/// ```ignore
/// settings! {
///     pub struct Settings {
///         /// the column of image URLs
///         url_col: String = "url".into(),
///         /// the column of captions
///         caption_col: Option<String>,
///     }
/// }
/// ```
#[macro_export]
macro_rules! settings {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty $(= $default:expr)?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        $vis struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl $crate::kind::settings::Settings for $name {
            fn schema() -> &'static [$crate::kind::settings::Setting] {
                static SCHEMA: std::sync::OnceLock<Vec<$crate::kind::settings::Setting>> = std::sync::OnceLock::new();
                SCHEMA.get_or_init(|| vec![$(
                    $crate::kind::settings::Setting::of::<$ty>(
                        stringify!($field),
                        &[$($doc),*],
                        $crate::settings!(@default $ty $(, $default)?),
                    ),
                )*])
            }
            fn from_effective(
                settings: &serde_json::Map<String, serde_json::Value>,
            ) -> Result<Self, $crate::kind::settings::SettingError> {
                Ok($name { $( $field: $crate::kind::settings::field(settings, stringify!($field))?, )* })
            }
        }
    };
    (@default $ty:ty) => { None };
    (@default $ty:ty, $default:expr) => { Some::<$ty>($default) };
}

/// Declares an enum-valued setting: the variants and the strings a pipeline file writes for them.
///
/// ```ignore
/// setting_enum! { pub enum Device { Auto = "auto", Cpu = "cpu", Cuda = "cuda" } }
/// ```
#[macro_export]
macro_rules! setting_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $( $(#[$vmeta])* $variant, )+ }

        impl $name {
            pub const NAMES: &'static [&'static str] = &[$($text),+];
            pub fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $text, )+ }
            }
            pub fn parse(text: &str) -> Option<Self> {
                match text { $( $text => Some($name::$variant), )+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::kind::settings::SettingValue for $name {
            const TYPE: $crate::kind::settings::SettingType = $crate::kind::settings::SettingType::Enum($name::NAMES);
            fn from_json(value: &serde_json::Value) -> Option<Self> {
                value.as_str().and_then($name::parse)
            }
            fn to_json(&self) -> serde_json::Value {
                serde_json::Value::String(self.as_str().to_string())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    crate::setting_enum! { enum Mode { Fast = "fast", Slow = "slow" } }

    crate::settings! {
        struct Example {
            /// a required name
            name: String,
            /// how fast;
            /// two lines of help
            mode: Mode = Mode::Fast,
            /// seconds
            timeout: f64 = 10.0,
            /// maybe
            limit: Option<i64>,
            /// tags
            tags: Vec<String> = vec!["a".into()],
        }
    }

    #[test]
    fn coerces_shorthands_and_rejects_wrong_types() {
        assert_eq!(SettingType::StringList.coerce(json!("a")).unwrap(), json!(["a"]));
        assert_eq!(SettingType::Float.coerce(json!(2)).unwrap(), json!(2.0));
        assert_eq!(SettingType::Integer.coerce(json!("4")).unwrap_err(), "expected an integer, found a string");
        assert!(SettingType::StringList.coerce(json!(["a", 1])).is_err());
        assert_eq!(
            Mode::TYPE.coerce(json!("medium")).unwrap_err(),
            "unknown value \"medium\": expected one of \"fast\" or \"slow\""
        );
        assert_eq!(Mode::TYPE.coerce(json!(3)).unwrap_err(), "expected one of \"fast\" or \"slow\", found an integer");
    }

    #[test]
    fn one_declaration_gives_schema_defaults_and_values() {
        let schema = Example::schema();
        let names: Vec<&str> = schema.iter().map(|s| s.name).collect();
        assert_eq!(names, ["name", "mode", "timeout", "limit", "tags"]);
        assert!(matches!(schema[0].fallback, Fallback::Required));
        assert_eq!(schema[1].help, "how fast; two lines of help");
        assert_eq!(schema[1].default_value(), Some(json!("fast")));
        // A whole float default is written as an integer, as the JSON defaults were: keys stay the same.
        assert_eq!(serde_json::to_string(&schema[2].default_value().unwrap()).unwrap(), "10");
        assert_eq!(schema[3].default_value(), Some(Value::Null));
        assert_eq!(schema[4].default_value(), Some(json!(["a"])));

        let effective = json!({"name": "x", "mode": "slow", "timeout": 2.5, "limit": null, "tags": []});
        let s = Example::from_effective(effective.as_object().unwrap()).unwrap();
        assert_eq!((s.name.as_str(), s.mode, s.timeout, s.limit, s.tags.len()), ("x", Mode::Slow, 2.5, None, 0));

        let wrong = json!({"name": "x", "mode": "slow", "timeout": "soon", "limit": null, "tags": []});
        let e = Example::from_effective(wrong.as_object().unwrap()).unwrap_err();
        assert_eq!((e.key.as_str(), e.message.as_str()), ("timeout", "expected a number, found a string"));
    }
}
