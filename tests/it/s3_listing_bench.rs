//! What listing a step folder costs on S3, in ranges side by side and page after page, run by
//! `tests/bench/s3_listing.sh`: an S3-compatible server behind the fault proxy, which delays every request by
//! `LATENCY_MS` (default 30) as a far-away server would. The step folder holds `N` targets (default 20,000):
//! an output and a manifest each, and the step index. Each figure is one `StepState::load`, what a plan does
//! per step: the index read, then the listing.
//!
//! `SERVER` picks the server: `s3s-fs` (the default; the test suite's, its objects written straight into its
//! folder) or `garage` (`common::garage`, filled with real PUTs), whose listing costs per page as S3's does.

use crate::common::garage::Garage;
use crate::common::proxy::Proxy;
use crate::common::s3;
use dsmake::store::manifest::Manifest;
use dsmake::store::s3::{S3Options, S3Store};
use dsmake::store::step_state::StepState;
use dsmake::store::{Store, manifest_path};
use std::sync::atomic::Ordering;
use std::time::Instant;

const STEP: &str = "p/copy";
/// Uploads in flight while a Garage bucket is filled.
const PUT_THREADS: usize = 32;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Target `i`'s output (its store path and bytes) and manifest (likewise), as a build leaves them.
fn target(i: usize) -> [(String, Vec<u8>); 2] {
    let shard = format!("{i:06}.txt");
    let output = format!("row {i}\n");
    let manifest = Manifest::of_one_output(&format!("copy/{shard}"), &shard, &shard, output.len() as u64);
    [
        (format!("{STEP}/{shard}"), output.into_bytes()),
        (manifest_path(STEP, &shard), serde_json::to_vec(&manifest).unwrap()),
    ]
}

/// CPU seconds this process (client and proxy) has used so far.
fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
#[ignore = "a benchmark: run tests/bench/s3_listing.sh"]
fn s3_listing_bench() {
    let n = env_number("N", 20_000) as usize;
    let latency = env_number("LATENCY_MS", 30);
    let server = std::env::var("SERVER").unwrap_or_else(|_| "s3s-fs".to_string());
    let garage = match server.as_str() {
        "s3s-fs" => None,
        "garage" => Some(Garage::start()),
        other => panic!("SERVER={other}: s3s-fs or garage"),
    };
    let (endpoint, bucket) = match &garage {
        Some(garage) => (garage.endpoint.clone(), garage.bucket()),
        None => (s3::server().endpoint.clone(), s3::bucket()),
    };
    // SAFETY: this benchmark runs alone (`--ignored s3_listing_bench`); nothing else reads the environment yet.
    unsafe {
        for (name, value) in s3::env(&endpoint) {
            std::env::set_var(name, value);
        }
    }
    let open = |endpoint: &str| {
        let options = S3Options { endpoint: Some(endpoint.to_string()), ..Default::default() };
        S3Store::open(&format!("s3://{bucket}/store"), &options).unwrap()
    };
    let direct = open(&endpoint);
    // After a newline: the test harness's "test s3_listing_bench ... " has none.
    println!("\n== {server}, load average {}", load_average());

    let started = Instant::now();
    match &garage {
        // s3s-fs keeps each object as a file: written straight, they take seconds, not PUTs.
        None => {
            let root = s3::server().root.join(&bucket).join("store");
            for (path, bytes) in (0..n).flat_map(target) {
                let file = root.join(path);
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(file, bytes).unwrap();
            }
        }
        Some(_) => std::thread::scope(|scope| {
            for first in 0..PUT_THREADS {
                let direct = &direct;
                scope.spawn(move || {
                    for (path, bytes) in (first..n).step_by(PUT_THREADS).flat_map(target) {
                        direct.write(&path, &bytes).unwrap();
                    }
                });
            }
        }),
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("== {n} targets ({} objects) written in {seconds:.1} s, {:.0} objects/s", 2 * n, 2.0 * n as f64 / seconds);

    // The step index, as a build leaves it: every manifest read once, then the index written.
    let started = Instant::now();
    let mut state = StepState::load(&direct, STEP).unwrap();
    assert_eq!(state.records.len(), n);
    state.save_index(&direct).unwrap();
    println!("== index written after reading {n} manifests in {:.1} s", started.elapsed().as_secs_f64());

    let proxy = Proxy::start(&endpoint);
    proxy.faults.latency_ms.store(latency, Ordering::SeqCst);
    let store = open(&proxy.endpoint);
    println!("== StepState::load through the proxy, {latency} ms added to every request");
    for (label, concurrency) in [("sequential (one paginated listing)", "1"), ("ranges, 16 at a time", "16")] {
        // SAFETY: as above; read by the store when it lists.
        unsafe { std::env::set_var("DSMAKE_S3_LIST_CONCURRENCY", concurrency) };
        let before = store.requests();
        let (client_cpu, server_cpu) = (own_cpu_seconds(), garage.as_ref().map(Garage::cpu_seconds));
        let started = Instant::now();
        let state = StepState::load(&store, STEP).unwrap();
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(state.listed, 2 * n + 1, "every object listed once");
        assert_eq!(state.manifests_read, 0, "the index vouches for every manifest");
        let server_cpu = match garage.as_ref().zip(server_cpu) {
            Some((garage, before)) => format!("{:>6.2} s", garage.cpu_seconds() - before),
            None => "     -  ".to_string(),
        };
        println!(
            "   {label:<36} {seconds:>7.2} s  {:>5} requests  CPU: client+proxy {:>6.2} s, server {server_cpu}",
            store.requests() - before,
            own_cpu_seconds() - client_cpu,
        );
    }
    println!("== load average {}", load_average());
}
