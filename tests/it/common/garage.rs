//! Garage (garagehq.deuxfleurs.fr), a widely used S3-compatible server, as one node on 127.0.0.1 with its
//! metadata in LMDB. Its ListObjectsV2 is a range scan of the ordered object table, so a page costs about the
//! same however many objects the bucket holds, as on S3; s3s-fs walks the whole prefix for every page. Only
//! the listing benchmark uses it (`SERVER=garage tests/bench/s3_listing.sh`): the test suite never needs it.
//!
//! The binary is `$GARAGE`, else `garage` on the PATH. The server, its configuration and its data live in one
//! temporary folder; dropping [`Garage`] kills the server and removes the folder (the server also dies with
//! the thread that started it, so a killed test leaves none).

use super::s3::{ACCESS_KEY, SECRET_KEY, fastrand_u64, free_port};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const INSTALL: &str = "cargo install garage --version 2.5.0 --no-default-features \
                           --features bundled-libs,lmdb --root ~/.cache/garage-bin  (then GARAGE=~/.cache/garage-bin/bin/garage)";

pub struct Garage {
    pub endpoint: String,
    binary: String,
    config: PathBuf,
    server: Child,
    // Dropped after the server is killed (fields drop in order, after `Drop::drop`).
    dir: tempfile::TempDir,
}

impl Garage {
    /// A fresh one-node cluster with its layout applied and the test suite's key (`s3::ACCESS_KEY`) imported.
    pub fn start() -> Garage {
        let binary = std::env::var("GARAGE").unwrap_or_else(|_| "garage".to_string());
        let dir = tempfile::Builder::new().prefix("dsmake-garage-").tempdir().expect("a temporary folder");
        let (rpc_port, s3_port) = (free_port(), free_port());
        let secret: String = (0..4).map(|_| format!("{:016x}", fastrand_u64())).collect();
        // No fsync: the data is thrown away after the run, and the benchmark measures listing, not disks.
        let config = format!(
            r#"metadata_dir = "{root}/meta"
data_dir = "{root}/data"
db_engine = "lmdb"
metadata_fsync = false
data_fsync = false
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"
"#,
            root = dir.path().display()
        );
        let config_path = dir.path().join("garage.toml");
        std::fs::write(&config_path, config).expect("write garage.toml");
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).expect("a log file for garage");
        let mut command = Command::new(&binary);
        command.arg("-c").arg(&config_path).arg("server");
        command.stdout(log("server.out")).stderr(log("server.err"));
        super::die_with_parent_thread(&mut command);
        let server = match command.spawn() {
            Ok(server) => server,
            Err(error) => panic!("cannot start garage `{binary}` ({error}): install it with\n    {INSTALL}"),
        };
        let garage =
            Garage { endpoint: format!("http://127.0.0.1:{s3_port}"), binary, config: config_path, server, dir };
        super::wait_listening("garage", s3_port, Duration::from_secs(30));
        let node = garage.cli_retrying(&["node", "id", "-q"]);
        // `<64 hex digits>@<address>`: the layout takes the id.
        let node = node.split('@').next().unwrap_or_default().trim().to_string();
        garage.cli_retrying(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        garage.cli_retrying(&["layout", "apply", "--version", "1"]);
        garage.cli_retrying(&["key", "import", ACCESS_KEY, SECRET_KEY, "--yes"]);
        garage
    }

    /// A new, empty bucket that the test suite's key may read, write and own.
    pub fn bucket(&self) -> String {
        let name = format!("g{:016x}", fastrand_u64());
        self.cli_retrying(&["bucket", "create", &name]);
        self.cli_retrying(&["bucket", "allow", "--read", "--write", "--owner", &name, "--key", ACCESS_KEY]);
        name
    }

    /// CPU seconds the server has used so far (user and system, all its threads).
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.server.id())).unwrap_or_default();
        // Fields 14 and 15 (utime, stime), counted after the command name, which may hold spaces.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let ticks: f64 = after_name.split_whitespace().skip(11).take(2).filter_map(|t| t.parse::<f64>().ok()).sum();
        // SAFETY: sysconf reads a constant of the system.
        ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }

    /// Runs `garage -c <config> <args>` until it succeeds (a node just started answers "layout not ready" for
    /// a moment), within 60 s; returns its stdout.
    fn cli_retrying(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new(&self.binary)
                .arg("-c")
                .arg(&self.config)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("cannot run garage {args:?}: {e}"));
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            if Instant::now() > deadline {
                panic!(
                    "garage {args:?} failed: {}\n{}\n(server log: {})",
                    out.status,
                    String::from_utf8_lossy(&out.stderr),
                    self.dir.path().join("server.err").display()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
