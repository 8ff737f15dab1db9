//! Shards: how a step's targets are derived from its inputs' targets.

use crate::util::digest::Digest;
use rayon::prelude::*;
use serde_json::{Value, json};
use std::fmt::Write;
use std::path::PathBuf;

/// One shard of a step, before keys are computed.
#[derive(Debug, Clone)]
pub struct ShardSpec {
    pub id: String,
    /// What identifies this shard's slice of the inputs (a group index, a row range); part of the key.
    pub coords: Value,
    /// The input targets this shard reads: (position in `from`, shard index in that step).
    pub inputs: Vec<(usize, usize)>,
    /// For sources: the file this shard is. Boxed: the plan's target keeps this box, and a spec without one
    /// (most steps') stays small.
    pub source: Option<Box<SourceFile>>,
}

#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    /// The path as the user wrote it, relative to the pipeline file; shown in plans.
    pub display: String,
    pub size: u64,
    /// The content's blake3, as bytes: a plan holds one per source file.
    pub blake3: Digest,
}

#[derive(Debug)]
pub enum Shards {
    Known(Vec<ShardSpec>),
    /// Not knowable until something is built; the text says what.
    Unknown(String),
}

/// What a step sees of one input step while planning.
#[derive(Debug, Clone, Copy)]
pub struct InputShards<'a> {
    pub step: &'a str,
    pub shards: &'a [InputShard],
    /// The most rows one of its shards holds, when the input step's settings fix it.
    pub rows_per_shard: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct InputShard {
    pub id: String,
    /// Row count when the input target is built and recorded one.
    pub rows: Option<u64>,
    /// For a source's shard: the file it is, which the reading kind may open (a parquet footer, say).
    pub file: Option<PathBuf>,
}

/// The ways a kind's shards can map to its inputs' shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// One shard per input shard, same id. Several inputs are joined on the shard id.
    OneToOne,
    /// Consecutive groups of `k` input shards, in input order: `00000`, `00001`, …
    Group(usize),
    /// A single shard reading every input shard.
    All,
    /// A single shard reading nothing.
    Once,
    /// Each input shard's rows split into fixed-size shards: `<stem>_00000`, … with the stem of
    /// [`row_stem`]. Shard i of an input always covers rows [i·n, (i+1)·n), so a new input adds shards and
    /// never moves existing ones.
    Rows(u64),
}

pub const SINGLE_SHARD: &str = "all";

impl Mapping {
    pub fn shards(self, inputs: &[InputShards]) -> Result<Shards, String> {
        let flat = || {
            inputs
                .iter()
                .enumerate()
                .flat_map(|(i, input)| (0..input.shards.len()).map(move |s| (i, s)))
                .collect::<Vec<_>>()
        };
        let out = match self {
            Mapping::Once => {
                vec![ShardSpec { id: SINGLE_SHARD.into(), coords: json!({}), inputs: vec![], source: None }]
            }
            Mapping::All => {
                vec![ShardSpec { id: SINGLE_SHARD.into(), coords: json!({}), inputs: flat(), source: None }]
            }
            Mapping::Group(k) => flat()
                .chunks(k.max(1))
                .enumerate()
                .map(|(g, members)| ShardSpec {
                    id: format!("{g:05}"),
                    coords: json!({ "group": g, "group_size": k }),
                    inputs: members.to_vec(),
                    source: None,
                })
                .collect(),
            Mapping::OneToOne => one_to_one(inputs)?,
            Mapping::Rows(n) => return Ok(rows(inputs, n.max(1))),
        };
        Ok(Shards::Known(out))
    }
}

fn one_to_one(inputs: &[InputShards]) -> Result<Vec<ShardSpec>, String> {
    let Some(first) = inputs.first() else {
        return Ok(Vec::new());
    };
    let spec = |(s, shard): (usize, &InputShard)| {
        let mut reads = vec![(0, s)];
        for (i, other) in inputs.iter().enumerate().skip(1) {
            let at = other.shards.iter().position(|o| o.id == shard.id).ok_or_else(|| {
                format!("shard `{}` of `{}` has no partner in `{}`", shard.id, first.step, other.step)
            })?;
            reads.push((i, at));
        }
        Ok(ShardSpec { id: shard.id.clone(), coords: json!({}), inputs: reads, source: None })
    };
    if inputs.len() == 1 {
        // One input (the usual case, up to 10⁶ shards): nothing to pair (nor to fail), so the specs are made
        // side by side.
        return first.shards.par_iter().enumerate().map(spec).collect();
    }
    // In order: the first shard without a partner is the one reported.
    let out = first.shards.iter().enumerate().map(spec).collect::<Result<Vec<_>, String>>()?;
    for other in inputs.iter().skip(1) {
        if other.shards.len() != first.shards.len() {
            return Err(format!(
                "`{}` has {} shards and `{}` has {}: one-to-one inputs must have the same shards",
                first.step,
                first.shards.len(),
                other.step,
                other.shards.len()
            ));
        }
    }
    Ok(out)
}

/// The part of a row-split shard's id that names its input shard: distinct for distinct input shards, made
/// from the input's id alone (so it never changes when other files come or go), and free of `.` and `/`
/// (a shard's id names its output files and starts the keys inside them, which webdataset readers cut at
/// the first dot).
///
/// - `name.parquet`, where `name` has only ASCII letters, digits, `_` and `-`: `name`, as it always was.
/// - any other id: its `.parquet` ending dropped, then every byte but those ASCII letters, digits, `_` and
///   `-` written as `~` and two hex digits, as in URL escapes: `part.0.parquet` → `part~2E0`,
///   `data/train.parquet` → `data~2Ftrain`, `a.csv` → `a~2Ecsv`, `00000` → `00000`. Until this rule, ids
///   kept the text before their first dot and turned `/` into `_`, so `part.0.parquet` and `part.1.parquet`
///   were one shard, as were `a/b.parquet` and `a_b.parquet`; their shards now have new ids and are rebuilt
///   once. The one pair left alike, `name` and `name.parquet` side by side in one step, is refused when the
///   plan is made.
/// - the shards of a second or later input step (`from = ["a", "b"]`) are prefixed with that step's name
///   and `~~`, which no escaped id contains: the first input's ids never change when an input is added.
pub fn row_stem(input_step: Option<&str>, id: &str) -> String {
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let escape = |s: &str| {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                out.push(char::from(b));
            } else {
                // Writing to a String cannot fail.
                let _ = write!(out, "~{b:02X}");
            }
        }
        out
    };
    let stem = match id.strip_suffix(".parquet") {
        Some(name) if plain(name) => name.to_string(),
        Some(name) if !name.is_empty() => escape(name),
        _ => escape(id),
    };
    match input_step {
        Some(step) => format!("{}~~{stem}", escape(step)),
        None => stem,
    }
}

fn rows(inputs: &[InputShards], per_shard: u64) -> Shards {
    let mut out = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        for (s, shard) in input.shards.iter().enumerate() {
            let Some(rows) = shard.rows else {
                return Shards::Unknown(format!("row counts are known once {}/{} is built", input.step, shard.id));
            };
            let stem = row_stem((i > 0).then_some(input.step), &shard.id);
            for part in 0..rows.div_ceil(per_shard) {
                let start = part * per_shard;
                out.push(ShardSpec {
                    id: format!("{stem}_{part:05}"),
                    coords: json!({ "rows": [start, (start + per_shard).min(rows)] }),
                    inputs: vec![(i, s)],
                    source: None,
                });
            }
        }
    }
    Shards::Known(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(ids: &[(&str, Option<u64>)]) -> Vec<InputShard> {
        ids.iter().map(|(id, rows)| InputShard { id: id.to_string(), rows: *rows, file: None }).collect()
    }

    fn ids(s: Shards) -> Vec<String> {
        match s {
            Shards::Known(v) => v.into_iter().map(|s| s.id).collect(),
            Shards::Unknown(why) => vec![why],
        }
    }

    #[test]
    fn groups_are_consecutive() {
        let a = shards(&[("a", None), ("b", None), ("c", None)]);
        let input = [InputShards { step: "raw", shards: &a, rows_per_shard: None }];
        let Shards::Known(groups) = Mapping::Group(2).shards(&input).unwrap() else { panic!() };
        assert_eq!(
            groups.iter().map(|g| g.inputs.clone()).collect::<Vec<_>>(),
            vec![vec![(0, 0), (0, 1)], vec![(0, 2)]]
        );
        assert_eq!(groups[1].id, "00001");
    }

    #[test]
    fn rows_split_per_input_and_wait_for_counts() {
        let a = shards(&[("a.parquet", Some(25)), ("b.parquet", Some(10))]);
        let input = [InputShards { step: "meta", shards: &a, rows_per_shard: None }];
        assert_eq!(ids(Mapping::Rows(10).shards(&input).unwrap()), vec!["a_00000", "a_00001", "a_00002", "b_00000"]);
        let b = shards(&[("a.parquet", None)]);
        let input = [InputShards { step: "meta", shards: &b, rows_per_shard: None }];
        assert_eq!(
            ids(Mapping::Rows(10).shards(&input).unwrap()),
            vec!["row counts are known once meta/a.parquet is built"]
        );
    }

    #[test]
    fn row_ids_are_distinct_stable_and_plain_names_unchanged() {
        let cases = [
            ("name.parquet", "name"),
            ("train-00000-of-00004.parquet", "train-00000-of-00004"),
            ("a_b.parquet", "a_b"),
            ("a/b.parquet", "a~2Fb"),
            ("part.0.parquet", "part~2E0"),
            ("part.1.parquet", "part~2E1"),
            ("data/train.parquet", "data~2Ftrain"),
            ("a.csv", "a~2Ecsv"),
            ("a.b.parquet", "a~2Eb"),
            ("a~2Eb.parquet", "a~7E2Eb"),
            (".parquet", "~2Eparquet"),
            ("00000", "00000"),
            ("all", "all"),
            ("été.parquet", "~C3~A9t~C3~A9"),
        ];
        for (id, stem) in cases {
            assert_eq!(row_stem(None, id), stem, "{id}");
        }
        let stems: std::collections::HashSet<String> = cases.iter().map(|(id, _)| row_stem(None, id)).collect();
        assert_eq!(stems.len(), cases.len());
        assert_eq!(row_stem(Some("more"), "a.parquet"), "more~~a");
        assert_eq!(row_stem(Some("my.step"), "a/b.parquet"), "my~2Estep~~a~2Fb");

        // The collisions, through the mapping: distinct ids, and a file's ids do not depend on
        // which other files exist.
        let a = shards(&[("part.0.parquet", Some(3)), ("part.1.parquet", Some(3)), ("a/b.parquet", Some(1))]);
        let b = shards(&[("a_b.parquet", Some(1)), ("part.0.parquet", Some(1))]);
        let inputs = [
            InputShards { step: "meta", shards: &a, rows_per_shard: None },
            InputShards { step: "more", shards: &b, rows_per_shard: None },
        ];
        let all = ids(Mapping::Rows(2).shards(&inputs).unwrap());
        assert_eq!(
            all,
            [
                "part~2E0_00000",
                "part~2E0_00001",
                "part~2E1_00000",
                "part~2E1_00001",
                "a~2Fb_00000",
                "more~~a_b_00000",
                "more~~part~2E0_00000"
            ]
        );
        let alone = shards(&[("part.1.parquet", Some(3))]);
        let input = [InputShards { step: "meta", shards: &alone, rows_per_shard: None }];
        assert_eq!(ids(Mapping::Rows(2).shards(&input).unwrap()), ["part~2E1_00000", "part~2E1_00001"]);
    }

    #[test]
    fn one_to_one_joins_on_ids() {
        let a = shards(&[("x", None), ("y", None)]);
        let b = shards(&[("y", None), ("x", None)]);
        let inputs = [
            InputShards { step: "a", shards: &a, rows_per_shard: None },
            InputShards { step: "b", shards: &b, rows_per_shard: None },
        ];
        let Shards::Known(out) = Mapping::OneToOne.shards(&inputs).unwrap() else { panic!() };
        assert_eq!(out[0].inputs, vec![(0, 0), (1, 1)]);
        let c = shards(&[("z", None)]);
        let inputs = [
            InputShards { step: "a", shards: &a, rows_per_shard: None },
            InputShards { step: "c", shards: &c, rows_per_shard: None },
        ];
        assert!(Mapping::OneToOne.shards(&inputs).is_err());
    }

    #[test]
    fn one_to_one_of_a_single_input_keeps_its_order() {
        let names: Vec<String> = (0..5000).map(|i| format!("{:05}", (i * 7919) % 5000)).collect();
        let many = shards(&names.iter().map(|n| (n.as_str(), None)).collect::<Vec<_>>());
        let inputs = [InputShards { step: "a", shards: &many, rows_per_shard: None }];
        let Shards::Known(out) = Mapping::OneToOne.shards(&inputs).unwrap() else { panic!() };
        assert_eq!(out.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), names);
        assert!(out.iter().enumerate().all(|(i, s)| s.inputs == [(0, i)] && s.source.is_none()));
    }
}
