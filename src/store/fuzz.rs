//! Property tests of what the store reads back: a step index (`index_codec`) and a manifest. Damaged or
//! hostile bytes give `None` or a clear error, never a panic; what was written reads back the same. Cases:
//! `PROPTEST_CASES` (default below, sized for CI).

use super::index_codec::{decode, encode};
use super::manifest::{InputKey, KeyParts, Manifest, OutputFile, RetryOf};
use super::record::{Record, Records};
use crate::util::fuzz::{config, damage, damaged};
use proptest::prelude::*;
use serde_json::Value;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[a-z0-9_./-]{0,12}"]
}

fn output() -> impl Strategy<Value = OutputFile> {
    (text(), any::<u64>()).prop_map(|(name, size)| OutputFile {
        name,
        size,
        blake3: String::new(),
        version: String::new(),
    })
}

/// A retry's `of_key` is a key, never empty (the index writes "no retry" as an empty key).
fn retry() -> impl Strategy<Value = Option<RetryOf>> {
    proptest::option::of(("[0-9a-f]{1,64}", any::<u32>()).prop_map(|(of_key, attempt)| RetryOf { of_key, attempt }))
}

fn record() -> impl Strategy<Value = Record> {
    (
        (any::<[u8; 32]>(), prop::collection::vec(output(), 0..4), any::<Option<u64>>(), any::<Option<u64>>()),
        (any::<Option<u64>>(), retry(), text(), any::<f64>(), text(), any::<u64>()),
    )
        .prop_map(|((key, outputs, rows, failures), (retryable, retry, started_at, duration_s, version, size))| {
            Record {
                key: crate::util::digest::Digest(key),
                outputs,
                rows,
                failures,
                retryable,
                retry,
                started_at,
                duration_s,
                manifest_version: version,
                manifest_size: size,
            }
        })
}

fn records(given: &std::collections::HashMap<String, Record>) -> Records {
    let mut records = Records::new();
    for (shard, r) in given {
        records.insert(shard, r);
    }
    records
}

/// Every field, the duration by its bits (a NaN is kept as it was).
fn same(a: &Record, b: &Record) -> bool {
    (&a.key, &a.outputs, a.rows, a.failures, a.retryable, &a.retry, &a.started_at)
        == (&b.key, &b.outputs, b.rows, b.failures, b.retryable, &b.retry, &b.started_at)
        && a.duration_s.to_bits() == b.duration_s.to_bits()
        && (&a.manifest_version, a.manifest_size) == (&b.manifest_version, b.manifest_size)
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("JSON numbers are finite", |f| f.is_finite()).prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn manifest() -> impl Strategy<Value = Manifest> {
    let key_parts = (text(), any::<u32>(), json(), text(), json(), prop::collection::vec((text(), text()), 0..3))
        .prop_map(|(kind, kind_version, settings, shard, coords, inputs)| KeyParts {
            kind,
            kind_version,
            settings,
            shard,
            coords,
            inputs: inputs.into_iter().map(|(target, key)| InputKey { target, key }).collect(),
            source: None,
        });
    let outputs = prop::collection::vec(
        (text(), any::<u64>(), "[0-9a-f]{0,64}").prop_map(|(name, size, blake3)| OutputFile {
            name,
            size,
            blake3,
            version: String::new(),
        }),
        0..4,
    );
    (
        (text(), text(), key_parts, outputs, any::<Option<u64>>(), any::<Option<u64>>()),
        (retry(), json(), text(), 0.0..1e9f64, text()),
    )
        .prop_map(
            |((target, key, key_parts, outputs, rows, failures), (retry, stats, started_at, duration_s, host))| {
                Manifest {
                    manifest_format: super::manifest::FORMAT,
                    target,
                    key,
                    key_parts,
                    outputs,
                    rows,
                    failures,
                    retryable: failures.map(|f| f / 2),
                    retry,
                    stats,
                    started_at,
                    duration_s,
                    dsmake_version: env!("CARGO_PKG_VERSION").to_string(),
                    host,
                }
            },
        )
}

/// A manifest read back: the same JSON when it parses, else an error that names the file.
fn check_manifest(bytes: &[u8]) -> Result<(), TestCaseError> {
    match Manifest::parse(bytes, "d/_dsmake/s.json") {
        Ok(m) => {
            // What parsed serialises again (no state that JSON cannot hold).
            serde_json::to_vec(&m).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        Err(e) => prop_assert!(e.to_string().starts_with("corrupt manifest d/_dsmake/s.json: "), "{e}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn an_index_round_trips(given in prop::collection::hash_map(text(), record(), 0..6)) {
        let back = decode(&encode(&records(&given))).expect("an index just written decodes");
        prop_assert_eq!(back.len(), given.len());
        for (shard, r) in &given {
            let read = back.get(shard).map(|r| r.to_record());
            prop_assert!(read.as_ref().is_some_and(|read| same(r, read)), "{shard}: {r:?} read back as {read:?}");
        }
    }

    #[test]
    fn any_bytes_after_the_magic_decode_or_not_without_panic(
        body in prop::collection::vec(any::<u8>(), 0..300),
        magic in any::<bool>(),
    ) {
        let mut bytes = if magic { b"DSMKIX03".to_vec() } else { Vec::new() };
        bytes.extend(body);
        let _ = decode(&bytes);
    }

    #[test]
    fn a_damaged_index_decodes_or_not_without_panic(
        given in prop::collection::hash_map(text(), record(), 1..4),
        damage in prop::collection::vec(damage(), 1..5),
    ) {
        let _ = decode(&damaged(&encode(&records(&given)), &damage));
    }

    #[test]
    fn a_manifest_round_trips(m in manifest()) {
        let json = serde_json::to_vec_pretty(&m).unwrap();
        let back = Manifest::parse(&json, "m.json").expect("a manifest just written parses");
        prop_assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&m).unwrap());
    }

    #[test]
    fn a_damaged_manifest_is_a_clear_error(m in manifest(), damage in prop::collection::vec(damage(), 1..5)) {
        check_manifest(&damaged(&serde_json::to_vec(&m).unwrap(), &damage))?;
    }

    #[test]
    fn any_bytes_as_a_manifest_are_a_clear_error(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        check_manifest(&bytes)?;
    }
}

/// Nesting past serde_json's depth limit is an error, not a stack overflow.
#[test]
fn a_deeply_nested_manifest_is_an_error() {
    let deep = format!("{{\"stats\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let e = Manifest::parse(deep.as_bytes(), "m.json").unwrap_err().to_string();
    assert!(e.contains("recursion limit"), "{e}");
}

/// Found by `a_manifest_round_trips`: a float in the key parts read back one ulp off, so a later plan would
/// have named an unchanged setting in a stale reason.
#[test]
fn a_float_in_the_key_parts_reads_back_exactly() {
    let x = 2.5355747024236033e89;
    let json = serde_json::to_string(&serde_json::json!({ "max_aspect_ratio": x })).unwrap();
    let back: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(back["max_aspect_ratio"].as_f64(), Some(x), "{json}");
}
