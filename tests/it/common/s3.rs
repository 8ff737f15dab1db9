//! A real S3-compatible server (`s3s-fs`, installed by tests/run.sh) started once per test binary on
//! 127.0.0.1, and buckets for sandboxes. It dies with the test process.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

pub const ACCESS_KEY: &str = "dsmake-test";
pub const SECRET_KEY: &str = "dsmake-test-secret";

pub struct S3Server {
    pub endpoint: String,
    /// s3s-fs keeps each bucket as a folder here and each object as a file.
    pub root: PathBuf,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

pub fn server() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        sweep_dead_roots();
        let root = std::env::temp_dir().join(format!("{ROOT_PREFIX}{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        // A static is never dropped: the objects (uploaded binaries among them) would stay on disk after the
        // run and fill it over a few runs, so the root goes when the test process exits.
        // SAFETY: registers a plain `extern "C"` function with no captured state.
        unsafe { libc::atexit(remove_root_at_exit) };
        let port = free_port();
        let mut command = Command::new("s3s-fs");
        command
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&root);
        if let Err(error) = super::spawn_for_the_test_process(command) {
            panic!(
                "cannot start s3s-fs ({error}): install it with \
                 `cargo install s3s-fs --version 0.14.1 --features binary --locked` (tests/run.sh does)"
            );
        }
        super::wait_listening("s3s-fs", port, Duration::from_secs(10));
        S3Server { endpoint: format!("http://127.0.0.1:{port}"), root }
    })
}

const ROOT_PREFIX: &str = "dsmake-s3-";

extern "C" fn remove_root_at_exit() {
    let root = std::env::temp_dir().join(format!("{ROOT_PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(root);
}

/// Roots of test processes that were killed before their exit handler ran (no such process any more).
fn sweep_dead_roots() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(ROOT_PREFIX)).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A new, empty bucket (s3s-fs serves each folder of its root as a bucket).
pub fn bucket() -> String {
    let name = format!("t{:016x}", fastrand_u64());
    std::fs::create_dir_all(server().root.join(&name)).unwrap();
    name
}

pub fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// Environment for a dsmake process talking to `endpoint` (the server, or a proxy in front of it).
pub fn env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ("AWS_CONFIG_FILE", "/nonexistent".to_string()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent".to_string()),
    ]
}
