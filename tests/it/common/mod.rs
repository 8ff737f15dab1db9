//! A sandbox for running the real `dsmake` binary: a folder with a pipeline, its data, a store (a local
//! folder, or a bucket in a real S3-compatible server) and a cache.
#![allow(dead_code)]

/// Runs store-independent tests twice, on a local folder and on S3: `on_every_store!(test_fn, …)` where each
/// `test_fn(backend: Backend)`.
#[macro_export]
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(#[test] fn $name() { super::$name(super::Backend::Local) })*
        }
        mod s3 {
            $(#[test] fn $name() { super::$name(super::Backend::S3) })*
        }
    };
}

pub mod garage;
pub mod golden;
pub mod http;
pub mod hub_mock;
pub mod moto;
pub mod parquet_rows;
pub mod proxy;
pub mod s3;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

/// Where a sandbox keeps its store: the same tests run on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    S3,
    /// S3 on moto's server (`common::moto`), which lists ETags; its objects are not files a test can read.
    Moto,
}

pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub backend: Backend,
    bucket: Option<String>,
    /// The S3 endpoint dsmake talks to: the server, or a fault-injecting proxy in front of it.
    pub endpoint: Option<String>,
    /// Extra environment for every dsmake this sandbox runs.
    pub env: Vec<(String, String)>,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Sandbox {
    pub fn new(pipeline: &str) -> Sandbox {
        Sandbox::on(Backend::Local, pipeline)
    }

    pub fn on(backend: Backend, pipeline: &str) -> Sandbox {
        let (bucket, endpoint) = match backend {
            Backend::Local => (None, None),
            Backend::S3 => (Some(s3::bucket()), Some(s3::server().endpoint.clone())),
            Backend::Moto => (Some(moto::bucket()), Some(moto::endpoint().to_string())),
        };
        let sandbox =
            Sandbox { dir: tempfile::tempdir().expect("tempdir"), backend, bucket, endpoint, env: Vec::new() };
        sandbox.write("pipeline.toml", pipeline);
        sandbox
    }

    /// What `--store` says.
    pub fn store_url(&self) -> String {
        match &self.bucket {
            None => self.path("store").display().to_string(),
            Some(bucket) => format!("s3://{bucket}/store"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The store's objects on disk: the local store's folder, or the folder where s3s-fs keeps the bucket's
    /// objects (one file per object), so tests can damage a store the way a user or a crash would.
    pub fn store(&self) -> PathBuf {
        assert_ne!(self.backend, Backend::Moto, "moto keeps its objects in memory: read them through S3");
        match &self.bucket {
            None => self.path("store"),
            Some(bucket) => s3::server().root.join(bucket).join("store"),
        }
    }

    /// Writes a file with an mtime in the past, as a file that was not just edited would have (files
    /// modified within the stat cache's racy window are hashed again on purpose).
    pub fn write(&self, rel: &str, text: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        let past = SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(past).unwrap();
    }

    /// Replaces an object of the store with `bytes` the way another writer would: the local store's file, or a
    /// put to the bucket through S3 (s3s-fs keeps each object's checksum apart from its file, so editing the
    /// file would only make the server refuse to serve it).
    pub fn overwrite_in_store(&self, rel: &str, bytes: &[u8]) {
        let Some(bucket) = &self.bucket else {
            std::fs::write(self.store().join(rel), bytes).unwrap();
            return;
        };
        let file = self.path("overwrite.bin");
        std::fs::write(&file, bytes).unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(root.join(".venv/bin/python"))
            .arg(root.join("tests/python/s3_put.py"))
            .args([bucket.as_str(), &format!("store/{rel}")])
            .arg(&file)
            .envs(s3::env(self.endpoint.as_deref().unwrap_or(&s3::server().endpoint)))
            .output()
            .expect("run tests/python/s3_put.py with .venv (tests/run.sh makes it)");
        assert!(out.status.success(), "s3_put.py failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn read_store(&self, rel: &str) -> String {
        std::fs::read_to_string(self.store().join(rel)).unwrap_or_else(|e| panic!("store/{rel}: {e}"))
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dsmake"));
        // Whatever dsmake's children leave in the temporary folder (spark_driver.py's binary cache, one
        // debug binary per build) goes with the sandbox.
        let tmp = self.path("tmp");
        std::fs::create_dir_all(&tmp).expect("the sandbox's tmp folder");
        cmd.current_dir(self.dir.path())
            .env("TMPDIR", &tmp)
            .env("DSMAKE_CACHE_DIR", self.path("cache"))
            .env("DSMAKE_STORE", self.store_url())
            .env_remove("XDG_CACHE_HOME")
            .env_remove("AWS_PROFILE")
            .args(args);
        if let Some(endpoint) = &self.endpoint {
            cmd.envs(s3::env(endpoint));
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `dsmake ARGS` with the pipeline file appended after the subcommand.
    pub fn run(&self, args: &[&str]) -> Run {
        let mut full = vec![args[0], "pipeline.toml"];
        full.extend(&args[1..]);
        self.command(&full).output().expect("run dsmake").into()
    }

    /// `dsmake build --format json`, which must succeed.
    pub fn build(&self, extra: &[&str]) -> Value {
        let mut args = vec!["build", "--format", "json"];
        args.extend(extra);
        let run = self.run(&args);
        assert_eq!(run.code, 0, "build failed:\n{}\n{}", run.stdout, run.stderr);
        run.json()
    }

    pub fn plan(&self, extra: &[&str]) -> Value {
        let mut args = vec!["plan", "--format", "json"];
        args.extend(extra);
        let run = self.run(&args);
        assert_eq!(run.code, 0, "plan failed:\n{}", run.stderr);
        run.json()
    }
}

/// The child gets SIGKILL when the thread that spawned it ends, so a test process killed mid-run leaves no
/// server behind.
pub fn die_with_parent_thread(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl only sets a flag on the child before exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Starts a server that lives exactly as long as the test process, its output dropped. It is started from a
/// thread that never ends: PR_SET_PDEATHSIG fires when the thread that forked the child exits.
pub fn spawn_for_the_test_process(mut command: Command) -> Result<(), String> {
    command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    die_with_parent_thread(&mut command);
    let (ready, started_or_not) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let child = command.spawn();
        let started = child.is_ok();
        let _ = ready.send(child.err().map(|e| e.to_string()));
        if started {
            loop {
                std::thread::park();
            }
        }
    });
    match started_or_not.recv() {
        Ok(None) => Ok(()),
        Ok(Some(error)) => Err(error),
        Err(_) => Err("the thread that starts it ended".to_string()),
    }
}

/// Waits until a server started on 127.0.0.1 accepts connections on `port`.
pub fn wait_listening(name: &str, port: u16, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "{name} did not start listening on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `target → (action, reason)` for every target of a JSON plan.
pub fn actions(plan: &Value) -> Vec<(String, String, String)> {
    plan["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["target"].as_str().unwrap().to_string(),
                t["action"].as_str().unwrap().to_string(),
                t["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The targets of a plan whose action is not `fresh` or `source`, with action and reason.
pub fn work(plan: &Value) -> Vec<(String, String, String)> {
    actions(plan).into_iter().filter(|(_, a, _)| a != "fresh" && a != "source").collect()
}

pub fn built(summary: &Value) -> Vec<String> {
    let mut names: Vec<String> =
        summary["built_targets"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    names.sort();
    names
}

pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

pub fn exists(path: &Path) -> bool {
    path.exists()
}

/// Runs `tests/python/<script>` with the `.venv` that tests/run.sh makes and returns its stdout. The test
/// fails, rather than skips, without the venv or when the script exits non-zero (showing both outputs).
pub fn venv_python(script: &str, args: &[&Path]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run tests/run.sh once (it creates .venv)", python.display());
    let out = Command::new(&python)
        .arg(root.join("tests/python").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

/// The files of `data/*.txt`, each copied by a target of its own: a plan as large as the files are many.
pub const COPIES: &str = r#"
[steps.raw]
kind = "files"
paths = "data/*.txt"

[steps.copy]
kind = "command"
from = "raw"
run = "cp {input} {output}"
"#;

/// A secret's stand-in: tests search everything dsmake writes or prints for it.
pub const CANARY: &str = "canary-5f2c9e71d3";

/// Every file under `root` that holds `needle`, however deep (the store, the cache, the run folders).
pub fn files_holding(root: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes())) {
                found.push(path);
            }
        }
    }
    found
}
