//! A second real S3-compatible server, moto's (`moto_server`, from the `.venv` tests/run.sh makes), started
//! once per test binary on 127.0.0.1: unlike s3s-fs it lists each object's ETag, as S3 does, so plans can be
//! tested comparing the versions a listing shows with those manifests recorded. It dies with the test process.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The endpoint of the one moto server of this test process.
pub fn endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        let server = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
        assert!(server.exists(), "{} is missing: run tests/run.sh once (it installs moto)", server.display());
        let port = super::s3::free_port();
        let mut command = Command::new(&server);
        command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        if let Err(error) = super::spawn_for_the_test_process(command) {
            panic!("cannot start moto_server ({error})");
        }
        super::wait_listening("moto_server", port, Duration::from_secs(30));
        format!("http://127.0.0.1:{port}")
    })
}

/// A new, empty bucket (CreateBucket; moto checks no signature).
pub fn bucket() -> String {
    let name = format!("m{:016x}", super::s3::fastrand_u64());
    let address = endpoint().trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("connect to moto_server");
    write!(stream, "PUT /{name} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .expect("send CreateBucket");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read CreateBucket's answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "CreateBucket {name} failed: {answer}");
    name
}
