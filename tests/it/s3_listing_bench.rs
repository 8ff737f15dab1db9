//! What listing a step folder costs on S3, in ranges side by side and page after page, run by
//! `tests/bench/s3_listing.sh`: s3s-fs behind the fault proxy, which delays every request by `LATENCY_MS`
//! (default 30) as a far-away server would. The step folder holds `N` targets (default 20,000): an output and
//! a manifest each, and the step index. Each figure is one `StepState::load`, what a plan does per step: the
//! index read, then the listing.

use crate::common::proxy::Proxy;
use crate::common::s3;
use dsmake::store::Store;
use dsmake::store::s3::{S3Options, S3Store};
use dsmake::store::step_state::StepState;
use std::sync::atomic::Ordering;
use std::time::Instant;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
#[ignore = "a benchmark: run tests/bench/s3_listing.sh"]
fn s3_listing_bench() {
    let n = env_number("N", 20_000) as usize;
    let latency = env_number("LATENCY_MS", 30);
    let bucket = s3::bucket();
    let folder = s3::server().root.join(&bucket).join("store/p/copy");
    std::fs::create_dir_all(folder.join("_dsmake")).unwrap();
    let started = Instant::now();
    for i in 0..n {
        let shard = format!("{i:06}.txt");
        let output = format!("row {i}\n");
        std::fs::write(folder.join(&shard), &output).unwrap();
        let manifest = serde_json::json!({
            "manifest_format": 1, "target": format!("copy/{shard}"), "key": "0".repeat(64),
            "key_parts": {"kind": "command", "kind_version": 1, "settings": {}, "shard": shard, "coords": {},
                          "inputs": []},
            "outputs": [{"name": shard, "size": output.len()}],
            "started_at": "2026-11-30T00:00:00Z", "duration_s": 0.0, "dsmake_version": "bench", "host": "bench",
        });
        std::fs::write(folder.join(format!("_dsmake/{shard}.json")), manifest.to_string()).unwrap();
    }
    println!("== {n} targets ({} objects) written in {:.1} s", 2 * n + 1, started.elapsed().as_secs_f64());

    // SAFETY: this benchmark runs alone (`--ignored s3_listing_bench`); nothing else reads the environment yet.
    unsafe {
        for (name, value) in s3::env(&s3::server().endpoint) {
            std::env::set_var(name, value);
        }
    }
    let open = |endpoint: &str| {
        let options = S3Options { endpoint: Some(endpoint.to_string()), ..Default::default() };
        S3Store::open(&format!("s3://{bucket}/store"), &options).unwrap()
    };
    // The step index, as a build leaves it: every manifest read once, then the index written.
    let direct = open(&s3::server().endpoint);
    let started = Instant::now();
    let mut state = StepState::load(&direct, "p/copy").unwrap();
    assert_eq!(state.records.len(), n);
    state.save_index(&direct).unwrap();
    println!("== index written after reading {n} manifests in {:.1} s", started.elapsed().as_secs_f64());

    let proxy = Proxy::start(&s3::server().endpoint);
    proxy.faults.latency_ms.store(latency, Ordering::SeqCst);
    let store = open(&proxy.endpoint);
    println!("== StepState::load through the proxy, {latency} ms added to every request");
    for (label, concurrency) in [("sequential (one paginated listing)", "1"), ("ranges, 16 at a time", "16")] {
        // SAFETY: as above; read by the store when it lists.
        unsafe { std::env::set_var("DSMAKE_S3_LIST_CONCURRENCY", concurrency) };
        let before = store.requests();
        let started = Instant::now();
        let state = StepState::load(&store, "p/copy").unwrap();
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(state.listed, 2 * n + 1, "every object listed once");
        assert_eq!(state.manifests_read, 0, "the index vouches for every manifest");
        println!("   {label:<36} {seconds:>7.2} s  {:>5} requests", store.requests() - before);
    }
}
