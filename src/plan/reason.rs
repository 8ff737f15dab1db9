//! Why a target is stale: the difference between what went into its recorded key and what goes in now.

use super::key::KeyParts;
use serde_json::Value;
use std::collections::BTreeMap;

/// How many changed inputs a reason names before it counts the rest.
const NAMED_INPUTS: usize = 3;

/// Explains a key change. `describe_input` turns an input target into words ("source data/a.csv" for a
/// source file, the target name otherwise).
pub fn explain(old: &KeyParts, new: &KeyParts, describe_input: &dyn Fn(&str) -> String) -> String {
    let mut reasons = Vec::new();
    if old.kind != new.kind {
        reasons.push(format!("kind: {} → {}", old.kind, new.kind));
    } else if old.kind_version != new.kind_version {
        reasons.push(format!("{} kind version: {} → {}", new.kind, old.kind_version, new.kind_version));
    }
    diff_values("settings", &old.settings, &new.settings, &mut reasons);
    // What the kind planned this shard from (a row range, a file's oid, knn-train's index key), field by field.
    diff_values("shard", &old.coords, &new.coords, &mut reasons);
    if old.source != new.source {
        reasons.push("content changed".to_string());
    }
    let before: BTreeMap<&str, &str> = old.inputs.iter().map(|i| (i.target.as_str(), i.key.as_str())).collect();
    let after: BTreeMap<&str, &str> = new.inputs.iter().map(|i| (i.target.as_str(), i.key.as_str())).collect();
    let mut changes = Vec::new();
    for (target, key) in &after {
        match before.get(target) {
            None => changes.push(format!("input {target} added")),
            Some(old_key) if old_key != key => changes.push(format!("{} changed", describe_input(target))),
            _ => {}
        }
    }
    for target in before.keys().filter(|t| !after.contains_key(*t)) {
        changes.push(format!("input {target} removed"));
    }
    if changes.len() > NAMED_INPUTS + 1 {
        let more = changes.len() - NAMED_INPUTS;
        changes.truncate(NAMED_INPUTS);
        changes.push(format!("and {more} more inputs"));
    }
    reasons.extend(changes);
    if reasons.is_empty() {
        reasons.push("key encoding changed".to_string());
    }
    reasons.join("; ")
}

fn diff_values(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let null = Value::Null;
                let (x, y) = (a.get(key).unwrap_or(&null), b.get(key).unwrap_or(&null));
                diff_values(&format!("{path}.{key}"), x, y, out);
            }
        }
        (Value::String(a), Value::String(b)) if a != b && a.chars().count().max(b.chars().count()) > LONG => {
            let (a, b) = changed_window(a, b);
            out.push(format!("{path}: {a} → {b}"));
        }
        (a, b) if a != b => out.push(format!("{path}: {} → {}", show(a), show(b))),
        _ => {}
    }
}

/// Strings longer than this are shown around what changed, not whole.
const LONG: usize = 60;
/// Characters of unchanged context kept on each side of a change.
const CONTEXT: usize = 12;

fn changed_window(a: &str, b: &str) -> (String, String) {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let max_suffix = a.len().min(b.len()) - prefix;
    let suffix = a.iter().rev().zip(b.iter().rev()).take(max_suffix).take_while(|(x, y)| x == y).count();
    let cut = |s: &[char]| {
        let start = prefix.saturating_sub(CONTEXT);
        let end = (s.len() - suffix + CONTEXT).min(s.len());
        let body: String = s[start..end].iter().collect();
        let body = serde_json::to_string(&body).unwrap_or_default();
        let body = &body[1..body.len() - 1];
        format!("\"{}{body}{}\"", if start > 0 { "…" } else { "" }, if end < s.len() { "…" } else { "" })
    };
    (cut(&a), cut(&b))
}

fn show(value: &Value) -> String {
    match value {
        Value::Null => "(unset)".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::key::InputKey;
    use serde_json::json;

    fn parts(settings: Value, inputs: &[(&str, &str)]) -> KeyParts {
        KeyParts {
            kind: "command".into(),
            kind_version: 1,
            settings,
            shard: "a".into(),
            coords: json!({}),
            inputs: inputs.iter().map(|(t, k)| InputKey { target: t.to_string(), key: k.to_string() }).collect(),
            source: None,
        }
    }

    fn plain(t: &str) -> String {
        format!("input {t}")
    }

    #[test]
    fn names_the_changed_setting() {
        let old = parts(json!({"caption_col": "caption", "n": 1}), &[]);
        let new = parts(json!({"caption_col": "cogvlm_caption", "n": 1}), &[]);
        assert_eq!(explain(&old, &new, &plain), r#"settings.caption_col: "caption" → "cogvlm_caption""#);
    }

    #[test]
    fn names_the_changed_shard_coordinate() {
        let mut old = parts(json!({}), &[]);
        let mut new = old.clone();
        old.coords = json!({"index_key": "IVF512,PQ16x8", "train_rows": 10000, "dimensions": 32});
        new.coords = json!({"index_key": "IVF512,PQ8x8", "train_rows": 10000, "dimensions": 32});
        assert_eq!(explain(&old, &new, &plain), r#"shard.index_key: "IVF512,PQ16x8" → "IVF512,PQ8x8""#);
        new.coords = json!({"rows": [0, 20]});
        old.coords = json!({"rows": [0, 10]});
        assert_eq!(explain(&old, &new, &plain), "shard.rows: [0,10] → [0,20]");
    }

    #[test]
    fn shows_long_strings_around_the_change() {
        let long = |word: &str| {
            format!("if [ \"{word}\" = upper ]; then tr '[:lower:]' '[:upper:]'; else tr '[:upper:]' '[:lower:]'; fi")
        };
        let old = parts(json!({"run": long("upper")}), &[]);
        let new = parts(json!({"run": long("lower")}), &[]);
        assert_eq!(
            explain(&old, &new, &plain),
            r#"settings.run: "if [ \"upper\" = upper …" → "if [ \"lower\" = upper …""#
        );
    }

    #[test]
    fn names_changed_added_and_removed_inputs() {
        let old = parts(json!({}), &[("raw/a", "1"), ("raw/b", "2")]);
        let new = parts(json!({}), &[("raw/a", "9"), ("raw/c", "3")]);
        let source = |t: &str| format!("source data/{}.csv", &t[4..]);
        assert_eq!(explain(&old, &new, &source), "source data/a.csv changed; input raw/c added; input raw/b removed");
    }

    #[test]
    fn counts_many_changed_inputs() {
        let old = parts(json!({}), &[("s/1", "a"), ("s/2", "a"), ("s/3", "a"), ("s/4", "a"), ("s/5", "a")]);
        let new = parts(json!({}), &[("s/1", "b"), ("s/2", "b"), ("s/3", "b"), ("s/4", "b"), ("s/5", "b")]);
        assert_eq!(
            explain(&old, &new, &plain),
            "input s/1 changed; input s/2 changed; input s/3 changed; and 2 more inputs"
        );
    }
}
