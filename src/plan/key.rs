//! Target keys: blake3 over a canonical encoding of everything that determines a target's work.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Everything that goes into a key. The manifest keeps it, so that a changed key can be explained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyParts {
    pub kind: String,
    pub kind_version: u32,
    /// Effective settings (objects have sorted keys, so the encoding is canonical).
    pub settings: Value,
    pub shard: String,
    pub coords: Value,
    pub inputs: Vec<InputKey>,
    /// A source's content identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputKey {
    pub target: String,
    pub key: String,
}

/// Changing this string changes every key: do it only when the encoding itself changes.
const DOMAIN: &[u8] = b"dsmake key v1\n";

impl KeyParts {
    pub fn key(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(DOMAIN);
        // serde_json writes struct fields in declaration order and map keys sorted: a canonical encoding.
        let encoded = serde_json::to_vec(self).unwrap_or_default();
        hasher.update(&encoded);
        hasher.finalize().to_hex().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parts() -> KeyParts {
        KeyParts {
            kind: "command".into(),
            kind_version: 1,
            settings: json!({"run": "cat {input}", "outputs": ["{shard}"]}),
            shard: "a".into(),
            coords: json!({}),
            inputs: vec![InputKey { target: "raw/a".into(), key: "k1".into() }],
            source: None,
        }
    }

    #[test]
    fn key_is_stable_and_independent_of_setting_order() {
        let a = parts();
        let mut b = parts();
        b.settings = serde_json::from_str(r#"{"outputs": ["{shard}"], "run": "cat {input}"}"#).unwrap();
        assert_eq!(a.key(), b.key());
        assert_eq!(a.key().len(), 64);
    }

    #[test]
    fn every_part_changes_the_key() {
        let base = parts().key();
        let mut p = parts();
        p.kind_version = 2;
        assert_ne!(p.key(), base);
        let mut p = parts();
        p.settings["run"] = json!("cat -n {input}");
        assert_ne!(p.key(), base);
        let mut p = parts();
        p.shard = "b".into();
        assert_ne!(p.key(), base);
        let mut p = parts();
        p.inputs[0].key = "k2".into();
        assert_ne!(p.key(), base);
        let mut p = parts();
        p.source = Some(json!({"blake3": "x"}));
        assert_ne!(p.key(), base);
    }
}
