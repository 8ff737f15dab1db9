//! Builds the store of `tests/bench/engine_plan.sh` without running N shell commands, for plans of 10⁶
//! targets: what each `cp {input} {output}` target would leave (its output, then its manifest, with the key
//! the plan gives) is written directly, then the step index. The benchmark then checks, as after a real first
//! build, that a plan finds every target fresh; a fixture that did not match real builds would fail there.

use dsmake::plan::{PlanOptions, make};
use dsmake::store::local::LocalStore;
use dsmake::store::manifest::{self, Manifest, OutputFile};
use dsmake::store::step_state::StepState;
use dsmake::store::{META_DIR, Store, join};
use dsmake::util::stat_cache::StatCache;
use rayon::prelude::*;
use std::path::PathBuf;

#[test]
#[ignore = "a benchmark fixture: run by tests/bench/engine_plan.sh with FIXTURE=1"]
fn engine_plan_fixture() {
    let work = PathBuf::from(std::env::var("BENCH_DIR").expect("BENCH_DIR: the benchmark's work folder"));
    let pipeline = dsmake::pipeline::load(&work.join("pipeline.toml"), &[]).expect("the benchmark pipeline");
    let store = LocalStore::new(work.join("store"));
    let stat_cache = StatCache::open(work.join("cache/stat-cache.json"));
    let plan = make(&pipeline, &store, &stat_cache, &PlanOptions::default()).expect("a plan");
    stat_cache.save().expect("the stat cache saved");
    let to_run: Vec<usize> = plan.to_run().collect();
    to_run.par_iter().for_each(|&t| {
        let target = &plan.targets[t];
        let step = &pipeline.steps[target.step];
        let input = plan.targets[target.inputs[0]].source.as_ref().expect("a source input");
        let bytes = std::fs::read(&input.path).expect("the source file");
        let name = target.shard().to_string();
        let path = store.local_path(&join(&step.dir, &name)).expect("a local store");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let manifest = Manifest {
            manifest_format: manifest::FORMAT,
            target: target.name.clone(),
            key: target.key.to_string(),
            key_parts: plan.key_parts(&pipeline, t),
            outputs: vec![OutputFile {
                name,
                size: bytes.len() as u64,
                blake3: blake3::hash(&bytes).to_hex().to_string(),
                version: String::new(),
            }],
            rows: None,
            failures: None,
            retryable: None,
            retry: None,
            stats: serde_json::Value::Null,
            started_at: "2026-11-30T00:00:00Z".into(),
            duration_s: 0.0,
            dsmake_version: "fixture".into(),
            host: "fixture".into(),
        };
        let at = store.local_path(&format!("{}/{META_DIR}/{}.json", step.dir, target.shard())).unwrap();
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(at, serde_json::to_vec(&manifest).unwrap()).unwrap();
    });
    for step in pipeline.steps.iter().filter(|s| !s.kind.is_source()) {
        let mut state = StepState::load(&store, &step.dir).expect("the step folder");
        state.save_index(&store).expect("the step index");
    }
    println!("fixture: {} targets written", to_run.len());
}
