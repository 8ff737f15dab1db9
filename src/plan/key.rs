//! Target keys: blake3 over a canonical encoding of everything that determines a target's work.

use crate::util::digest::Digest;
use serde::Serialize;
use serde_json::Value;

pub use crate::store::manifest::{InputKey, KeyParts};

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

/// The key of attempt `attempt` at a target's failed rows: a new key, so that what reads the target is
/// rebuilt, derived from the key its settings and inputs give.
pub fn retry_key(of_key: &str, attempt: u32) -> Digest {
    let mut hasher = blake3::Hasher::new();
    hasher.update(DOMAIN);
    hasher.update(b"retry-failed\0");
    hasher.update(of_key.as_bytes());
    hasher.update(&attempt.to_le_bytes());
    hasher.finalize().into()
}

/// A source file's content identity as it goes into keys and manifests (fields in the order a JSON object
/// with sorted keys has them, so both encodings agree).
#[derive(Debug, Clone, Serialize)]
pub struct SourceIdentity<'a> {
    pub blake3: &'a Digest,
    pub path: &'a str,
}

/// Computes the keys of one step's targets without building a [`KeyParts`] for each: the part of the
/// encoding that every target of the step shares (kind, version, settings) is hashed once, and each target
/// hashes only its own tail. The bytes are exactly those of `KeyParts::key`, so the keys are the same.
#[derive(Clone)]
pub struct StepKeyer {
    prefix: blake3::Hasher,
}

impl StepKeyer {
    pub fn new(kind: &str, kind_version: u32, settings: &Value) -> StepKeyer {
        let mut prefix = blake3::Hasher::new();
        prefix.update(DOMAIN);
        prefix.update(b"{\"kind\":");
        write_json(&mut prefix, kind);
        prefix.update(format!(",\"kind_version\":{kind_version},\"settings\":").as_bytes());
        write_json(&mut prefix, settings);
        prefix.update(b",\"shard\":");
        StepKeyer { prefix }
    }

    pub fn key<'a>(
        &self,
        shard: &str,
        coords: &Value,
        inputs: impl Iterator<Item = (&'a str, &'a Digest)>,
        source: Option<&SourceIdentity>,
    ) -> Digest {
        // The tail is written out first and hashed in one piece: hashing it value by value cost a hasher
        // update per quote and comma, for each of 10⁶ targets.
        let mut tail = Vec::with_capacity(256);
        write_json(&mut tail, shard);
        tail.extend_from_slice(b",\"coords\":");
        write_json(&mut tail, coords);
        tail.extend_from_slice(b",\"inputs\":[");
        for (n, (target, key)) in inputs.enumerate() {
            if n > 0 {
                tail.push(b',');
            }
            tail.extend_from_slice(b"{\"target\":");
            write_json(&mut tail, target);
            // As `write_json` would write the hex string: quotes, then 64 digits that need no escaping.
            tail.extend_from_slice(b",\"key\":\"");
            tail.extend_from_slice(&key.hex());
            tail.extend_from_slice(b"\"}");
        }
        tail.push(b']');
        if let Some(source) = source {
            tail.extend_from_slice(b",\"source\":");
            write_json(&mut tail, source);
        }
        tail.push(b'}');
        let mut hasher = self.prefix.clone();
        hasher.update(&tail);
        hasher.finalize().into()
    }
}

fn write_json(out: &mut impl std::io::Write, value: &(impl Serialize + ?Sized)) {
    // Writing into a hasher or a vector cannot fail, and these values always serialise.
    let _ = serde_json::to_writer(out, value);
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
    fn the_step_keyer_gives_the_same_keys() {
        let mut p = parts();
        p.shard = "we\"ird/sh\u{e4}rd".into();
        p.coords = json!({"rows": [0, 10]});
        let keyer = StepKeyer::new(&p.kind, p.kind_version, &p.settings);
        p.inputs = vec![
            InputKey { target: "raw/a".into(), key: blake3::hash(b"a").to_hex().to_string() },
            InputKey { target: "raw/b".into(), key: blake3::hash(b"b").to_hex().to_string() },
        ];
        let digests: Vec<Digest> = p.inputs.iter().map(|i| Digest::from_hex(&i.key).unwrap()).collect();
        let inputs = p.inputs.iter().zip(&digests).map(|(i, d)| (i.target.as_str(), d));
        assert_eq!(keyer.key(&p.shard, &p.coords, inputs, None).to_string(), p.key());

        let digest = Digest::from(blake3::hash(b"abc"));
        let source = SourceIdentity { blake3: &digest, path: "data/a.txt" };
        p.source = Some(json!({"path": "data/a.txt", "blake3": digest.to_string()}));
        p.inputs.clear();
        assert_eq!(keyer.key(&p.shard, &p.coords, std::iter::empty(), Some(&source)).to_string(), p.key());
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
