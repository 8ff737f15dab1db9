//! From TOML text to a checked [`Pipeline`]. Every error points at the key or value it is about.

use super::diagnostic::Diagnostic;
use super::params::{self, ParamError, Params};
use super::{Pipeline, Step, dag, is_valid_name};
use crate::kind::Inputs;
use crate::kind::settings::{Setting, SettingType, describe_value, quoted_list};
use crate::kinds;
use crate::util::suggest::{self, help_for};
use serde_json::{Map, Value};
use std::ops::Range;
use std::path::Path;
use toml_edit::{Document, Item, TableLike};

const TOP_KEYS: &[&str] = &["pipeline", "params", "steps"];
const PIPELINE_KEYS: &[&str] = &["name", "description"];
/// Keys every step takes, whatever its kind.
const STEP_KEYS: &[&str] = &["kind", "from", "dir", "description"];

/// Reads and parses a pipeline file, applying `--set` overrides to its params.
pub fn load(path: &Path, overrides: &[(String, String)]) -> Result<Pipeline, Diagnostic> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Diagnostic::whole_file(path, format!("cannot read pipeline file: {e}")))?;
    parse(path, &text, overrides)
}

pub fn parse(path: &Path, text: &str, overrides: &[(String, String)]) -> Result<Pipeline, Diagnostic> {
    Parser { file: path, text }.pipeline(overrides)
}

struct Parser<'a> {
    file: &'a Path,
    text: &'a str,
}

struct RawStep<'a> {
    name: String,
    table: &'a dyn TableLike,
    header: Option<Range<usize>>,
}

impl<'a> Parser<'a> {
    fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> Diagnostic {
        Diagnostic::at(self.file, self.text, span, message)
    }

    fn key_span(table: &dyn TableLike, key: &str) -> Option<Range<usize>> {
        table.get_key_value(key).and_then(|(k, _)| k.span())
    }

    fn item_span(table: &dyn TableLike, key: &str) -> Option<Range<usize>> {
        table.get_key_value(key).and_then(|(k, item)| item.span().or_else(|| k.span()))
    }

    fn check_keys(&self, table: &dyn TableLike, allowed: &[&str], what: &str) -> Result<(), Diagnostic> {
        for (key, _) in table.iter() {
            if !allowed.contains(&key) {
                return Err(self
                    .error(Self::key_span(table, key), format!("unknown key `{key}` in {what}"))
                    .with_help(help_for(key, what, allowed)));
            }
        }
        Ok(())
    }

    fn table<'t>(&self, parent: &'t dyn TableLike, key: &str) -> Result<Option<&'t dyn TableLike>, Diagnostic> {
        match parent.get(key) {
            None => Ok(None),
            Some(item) => item.as_table_like().map(Some).ok_or_else(|| {
                self.error(Self::item_span(parent, key), format!("`{key}` must be a table, like `[{key}]`"))
            }),
        }
    }

    fn pipeline(&self, overrides: &[(String, String)]) -> Result<Pipeline, Diagnostic> {
        let doc = Document::parse(self.text).map_err(|e| {
            let message = e.message().trim_end().to_string();
            self.error(e.span(), format!("invalid TOML: {message}"))
        })?;
        let root = doc.as_table();
        self.check_keys(root, TOP_KEYS, "the pipeline file")?;

        let (name, description) = self.header(root)?;
        let params = self.params(root, overrides)?;
        let raw_steps = self.raw_steps(root)?;
        let mut steps = Vec::with_capacity(raw_steps.len());
        let names: Vec<String> = raw_steps.iter().map(|s| s.name.clone()).collect();
        for raw in &raw_steps {
            steps.push(self.step(raw, &params, &names, &name)?);
        }

        let from: Vec<Vec<String>> = steps.iter().map(|s: &Step| s.from.clone()).collect();
        let order = dag::order(&names, &from).map_err(|cycle| {
            let first = &raw_steps[names.iter().position(|n| *n == cycle[0]).unwrap_or(0)];
            self.error(
                Self::item_span(first.table, "from").or(first.header.clone()),
                format!("steps form a cycle: {}", cycle.join(" → ")),
            )
            .with_help("a step cannot read, directly or not, its own output: remove one `from` of the cycle")
        })?;
        let mut slots: Vec<Option<Step>> = steps.into_iter().map(Some).collect();
        let steps = order.into_iter().filter_map(|i| slots[i].take()).collect();

        // Absolute, because commands run in scratch folders where a relative path means nothing.
        let parent = match self.file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => ".".into(),
        };
        let base_dir = std::path::absolute(&parent).unwrap_or(parent);
        Ok(Pipeline { name, description, file: self.file.to_path_buf(), base_dir, params, steps })
    }

    fn header(&self, root: &dyn TableLike) -> Result<(String, String), Diagnostic> {
        let stem = self.file.file_stem().and_then(|s| s.to_str()).unwrap_or("pipeline").to_string();
        let Some(table) = self.table(root, "pipeline")? else {
            return Ok((stem, String::new()));
        };
        self.check_keys(table, PIPELINE_KEYS, "[pipeline]")?;
        let name = match self.plain_string(table, "name")? {
            Some(name) if !is_valid_name(&name) => {
                return Err(self
                    .error(Self::item_span(table, "name"), format!("invalid pipeline name `{name}`"))
                    .with_help("use letters, digits, `-`, `_` and `.`; it becomes a folder in the store"));
            }
            Some(name) => name,
            None => stem,
        };
        Ok((name, self.plain_string(table, "description")?.unwrap_or_default()))
    }

    fn plain_string(&self, table: &dyn TableLike, key: &str) -> Result<Option<String>, Diagnostic> {
        match table.get(key) {
            None => Ok(None),
            Some(item) => match item.as_str() {
                Some(s) => Ok(Some(s.to_string())),
                None => Err(self.error(Self::item_span(table, key), format!("`{key}` must be a string"))),
            },
        }
    }

    fn params(&self, root: &dyn TableLike, overrides: &[(String, String)]) -> Result<Params, Diagnostic> {
        let mut params = Params::new();
        if let Some(table) = self.table(root, "params")? {
            for (key, item) in table.iter() {
                // A param's value enters keys, manifests, plans and stale reasons (in the store for good), so
                // one that names a secret is refused before `--set` can fill it.
                if crate::util::secret::looks_secret(key) {
                    return Err(self
                        .error(Self::key_span(table, key), format!("param `{key}` looks like a secret"))
                        .with_help(
                            "params are written into every manifest and plan: give a secret to a command step \
                             through the environment, with `pass_env = [\"NAME\"]`",
                        ));
                }
                let value = self.value(item, Self::item_span(table, key), None)?;
                params.insert(key.to_string(), value);
            }
        }
        for (key, raw) in overrides {
            let Some(current) = params.get(key) else {
                let known: Vec<&str> = params.keys().map(String::as_str).collect();
                return Err(Diagnostic::whole_file(self.file, format!("--set {key}={raw}: unknown param `{key}`"))
                    .with_help(if known.is_empty() {
                        "the pipeline file has no [params]: only params declared there can be set".to_string()
                    } else {
                        help_for(key, "[params]", &known)
                    }));
            };
            let value = params::parse_override(raw, current).map_err(|why| {
                Diagnostic::whole_file(self.file, format!("--set {key}={raw}: {why}"))
                    .with_help(format!("`{key}` is {} in [params]", describe_value(current)))
            })?;
            params.insert(key.clone(), value);
        }
        Ok(params)
    }

    fn raw_steps<'t>(&self, root: &'t dyn TableLike) -> Result<Vec<RawStep<'t>>, Diagnostic> {
        let Some(steps) = self.table(root, "steps")? else {
            return Err(self
                .error(None, "the pipeline has no steps")
                .with_help("add a step, e.g. `[steps.raw]` with `kind = \"files\"` and `paths = \"data/*\"`"));
        };
        let mut out = Vec::new();
        for (name, item) in steps.iter() {
            let span = Self::key_span(steps, name);
            let Some(table) = item.as_table_like() else {
                return Err(self.error(span, format!("step `{name}` must be a table, like `[steps.{name}]`")));
            };
            if !is_valid_name(name) {
                return Err(self
                    .error(span, format!("invalid step name `{name}`"))
                    .with_help("use letters, digits, `-`, `_` and `.`; it becomes a folder in the store"));
            }
            let header = match item {
                Item::Table(t) => t.span().or(span),
                _ => span,
            };
            out.push(RawStep { name: name.to_string(), table, header });
        }
        if out.is_empty() {
            return Err(self.error(Self::key_span(root, "steps"), "the pipeline has no steps"));
        }
        Ok(out)
    }

    fn step(&self, raw: &RawStep, params: &Params, names: &[String], pipeline: &str) -> Result<Step, Diagnostic> {
        let table = raw.table;
        let name = &raw.name;
        let kind_name = match table.get("kind").map(|i| (i, i.as_str())) {
            None => {
                return Err(self
                    .error(raw.header.clone(), format!("step `{name}` has no `kind`"))
                    .with_help(format!("set `kind` to one of {}", kinds::names_for_help())));
            }
            Some((_, None)) => {
                return Err(self.error(Self::item_span(table, "kind"), "`kind` must be a string"));
            }
            Some((_, Some(k))) => k,
        };
        let Some(kind) = kinds::lookup(kind_name) else {
            let all = kinds::names();
            return Err(self
                .error(Self::item_span(table, "kind"), format!("unknown step kind `{kind_name}`"))
                .with_help(help_for(kind_name, "kind", &all)));
        };

        let schema = kind.schema();
        let mut allowed: Vec<&str> = STEP_KEYS.to_vec();
        allowed.extend(schema.iter().map(|s| s.name));
        self.check_keys(table, &allowed, &format!("step `{name}` (kind `{kind_name}`)"))?;

        let from = self.from(table, name, names)?;
        match kind.inputs() {
            Inputs::None if !from.is_empty() => {
                return Err(self
                    .error(Self::item_span(table, "from"), format!("a `{kind_name}` step reads no other step"))
                    .with_help("remove `from`: this kind is a source"));
            }
            Inputs::Required if from.is_empty() => {
                return Err(self
                    .error(raw.header.clone(), format!("step `{name}` (kind `{kind_name}`) needs `from`"))
                    .with_help("name the step it reads, e.g. `from = \"raw\"`"));
            }
            _ => {}
        }

        let mut settings = Map::new();
        for setting in schema {
            let value = self.setting(table, setting, params, raw, kind_name)?;
            settings.insert(setting.name.to_string(), value);
        }
        let settings = Value::Object(settings);
        let traits = kind.check(&settings, !from.is_empty()).map_err(|e| {
            let span = Self::item_span(table, &e.key).or(raw.header.clone());
            let d = self.error(span, format!("step `{name}`: {}", e.message));
            match e.help {
                Some(h) => d.with_help(h),
                None => d,
            }
        })?;

        let dir = match table.get("dir") {
            None => format!("{pipeline}/{name}"),
            Some(item) => {
                let span = Self::item_span(table, "dir");
                let value = self.value(item, span.clone(), Some(params))?;
                match value.as_str() {
                    Some(d) if is_store_relative(d) => d.trim_end_matches('/').to_string(),
                    _ => {
                        return Err(self
                            .error(span, "`dir` must be a relative folder in the store")
                            .with_help("e.g. `dir = \"relaion-pop/images\"`; no `..`, no leading `/`"));
                    }
                }
            }
        };
        let description = self.plain_string(table, "description")?;
        Ok(Step { name: name.clone(), kind, from, settings, traits, dir, description })
    }

    fn from(&self, table: &dyn TableLike, name: &str, names: &[String]) -> Result<Vec<String>, Diagnostic> {
        let Some(item) = table.get("from") else {
            return Ok(Vec::new());
        };
        let span = Self::item_span(table, "from");
        let list: Vec<String> = match item.as_value() {
            Some(toml_edit::Value::String(s)) => vec![s.value().clone()],
            Some(toml_edit::Value::Array(a)) if a.iter().all(|v| v.is_str()) => {
                a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()
            }
            _ => return Err(self.error(span, "`from` must be a step name or a list of step names")),
        };
        for input in &list {
            if !names.contains(input) {
                let others: Vec<&str> = names.iter().map(String::as_str).filter(|n| *n != name).collect();
                return Err(self
                    .error(span, format!("step `{name}` reads `{input}`, but there is no step `{input}`"))
                    .with_help(help_for(input, "step", &others)));
            }
        }
        Ok(list)
    }

    fn setting(
        &self,
        table: &dyn TableLike,
        setting: &Setting,
        params: &Params,
        raw: &RawStep,
        kind: &str,
    ) -> Result<Value, Diagnostic> {
        let Some(item) = table.get(setting.name) else {
            return setting.default_value().ok_or_else(|| {
                self.error(raw.header.clone(), format!("step `{}` (kind `{kind}`) needs `{}`", raw.name, setting.name))
                    .with_help(format!("`{}`: {}", setting.name, setting.help))
            });
        };
        let span = Self::item_span(table, setting.name);
        let value = self.value(item, span.clone(), Some(params))?;
        if let (SettingType::Enum(names), Value::String(found)) = (setting.ty, &value)
            && !names.contains(&found.as_str())
        {
            let message = format!("step `{}`: unknown {} \"{found}\"", raw.name, setting.name);
            let help = match suggest::closest(found, names.iter().copied()) {
                Some(best) => format!("did you mean \"{best}\"? expected {}", quoted_list(names)),
                None => format!("expected {}", quoted_list(names)),
            };
            return Err(self.error(span, message).with_help(help));
        }
        setting.ty.coerce(value).map_err(|why| {
            self.error(span, format!("wrong type for `{}` in step `{}`: {why}", setting.name, raw.name))
                .with_help(format!("`{}`: {}", setting.name, setting.help))
        })
    }

    /// Converts a TOML item to JSON, expanding `${param}` references when `params` is given.
    fn value(&self, item: &Item, span: Option<Range<usize>>, params: Option<&Params>) -> Result<Value, Diagnostic> {
        match item {
            Item::None => Ok(Value::Null),
            Item::Value(v) => self.toml_value(v, params),
            Item::Table(t) => self.toml_table(t, params),
            Item::ArrayOfTables(a) => {
                a.iter().map(|t| self.toml_table(t, params)).collect::<Result<Vec<_>, _>>().map(Value::Array)
            }
        }
        .map_err(|mut d| {
            if d.position.is_none() {
                d = self.error(span, d.message.clone());
            }
            d
        })
    }

    fn toml_table(&self, table: &dyn TableLike, params: Option<&Params>) -> Result<Value, Diagnostic> {
        let mut map = Map::new();
        for (key, item) in table.iter() {
            map.insert(key.to_string(), self.value(item, Self::item_span(table, key), params)?);
        }
        Ok(Value::Object(map))
    }

    fn toml_value(&self, value: &toml_edit::Value, params: Option<&Params>) -> Result<Value, Diagnostic> {
        use toml_edit::Value as T;
        Ok(match value {
            T::String(s) => match params {
                None => Value::String(s.value().clone()),
                Some(params) => params::interpolate(s.value(), params).map_err(|e| match e {
                    ParamError::Undefined(name) => {
                        let known: Vec<&str> = params.keys().map(String::as_str).collect();
                        self.error(value.span(), format!("param `{name}` is used but not defined in [params]"))
                            .with_help(match suggest::closest(&name, known.iter().copied()) {
                                Some(best) => format!("did you mean `{best}`?"),
                                None => format!("add `{name} = …` under [params]"),
                            })
                    }
                    ParamError::Unterminated => self
                        .error(value.span(), "unterminated `${` in string")
                        .with_help("close it with `}`, or write `$${` for a literal `${`"),
                })?,
            },
            T::Integer(i) => Value::from(*i.value()),
            T::Float(f) => serde_json::Number::from_f64(*f.value())
                .map(Value::Number)
                .ok_or_else(|| self.error(value.span(), "nan and inf are not allowed here"))?,
            T::Boolean(b) => Value::Bool(*b.value()),
            T::Datetime(d) => Value::String(d.value().to_string()),
            T::Array(a) => Value::Array(a.iter().map(|v| self.toml_value(v, params)).collect::<Result<_, _>>()?),
            T::InlineTable(t) => self.toml_table(t, params)?,
        })
    }
}

fn is_store_relative(dir: &str) -> bool {
    !dir.is_empty() && !dir.starts_with('/') && dir.split('/').all(|c| !c.is_empty() && c != ".." && c != ".")
        || dir.ends_with('/') && is_store_relative(dir.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::load;

    #[test]
    fn a_param_named_like_a_secret_is_refused_where_it_is_declared() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        let pipeline =
            "[params]\nhf_token = \"\"\n\n[steps.a]\nkind = \"command\"\nrun = \"echo ${hf_token} > {output}\"\n";
        std::fs::write(&file, pipeline).unwrap();
        let overrides = [("hf_token".to_string(), "canary".to_string())];
        let e = load(&file, &overrides).unwrap_err();
        assert_eq!(e.message, "param `hf_token` looks like a secret");
        assert!(!format!("{e:?}").contains("canary"), "the refusal never echoes the value");
        std::fs::write(&file, pipeline.replace("hf_token", "max_tokens")).unwrap();
        assert!(load(&file, &[]).is_ok());
    }
}
