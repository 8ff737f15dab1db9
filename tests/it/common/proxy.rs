//! A fault-injecting TCP proxy in front of the S3 server: answers 503 SlowDown, cuts uploads and listings
//! in the middle, throttles request bodies. Every request gets `Connection: close`, so one connection is
//! one request and faults can be aimed at requests.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Faults {
    /// The next N requests are answered `503 SlowDown`.
    pub slowdowns: AtomicUsize,
    /// The next N PUT requests are cut after 1 KiB of their body.
    pub cut_uploads: AtomicUsize,
    /// The next N object listings are cut after 300 bytes of the response.
    pub cut_listings: AtomicUsize,
    /// Request bodies are sent upstream at this rate (0: as fast as they come).
    pub bytes_per_second: AtomicU64,
    /// Every request waits this long before it is sent upstream: a far-away server's round trip.
    pub latency_ms: AtomicU64,
    /// The next N object reads (GETs other than listings) are answered without their `Content-Length`, the
    /// body delimited by the connection's close, as HTTP/1.1 allows: a client learns its size only by reading it.
    pub unsized_reads: AtomicUsize,
    /// Faults actually injected, so that a test can show it was not vacuous.
    pub injected: AtomicUsize,
    /// Requests reach the server one at a time, each answered whole before the next starts. s3s-fs checks a
    /// put's condition and then writes, and reads an object's ETag apart from its body, so racing requests can
    /// see states that S3, atomic per request, never shows; this makes them atomic for race tests.
    pub one_at_a_time: AtomicBool,
    turn: Mutex<()>,
}

pub struct Proxy {
    pub endpoint: String,
    pub faults: Arc<Faults>,
    /// Request lines seen, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
}

fn take(counter: &AtomicUsize) -> bool {
    counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let faults = Arc::new(Faults::default());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (f, r) = (faults.clone(), requests.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (f, r, upstream) = (f.clone(), r.clone(), upstream.clone());
                std::thread::spawn(move || {
                    let _ = serve(client, &upstream, &f, &r);
                });
            }
        });
        Proxy { endpoint, faults, requests }
    }

    pub fn saw(&self, needle: &str) -> bool {
        self.requests.lock().unwrap().iter().any(|r| r.contains(needle))
    }
}

fn read_head(client: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        let n = client.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn with_connection_close(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

fn serve(mut client: TcpStream, upstream: &str, faults: &Faults, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let (head, early_body) = read_head(&mut client)?;
    let _turn =
        faults.one_at_a_time.load(Ordering::SeqCst).then(|| faults.turn.lock().unwrap_or_else(|e| e.into_inner()));
    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string();
    log.lock().unwrap().push(line.clone());
    let content_length: usize = String::from_utf8_lossy(&head)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    // Only bodies longer than the cut point can be cut in the middle.
    let is_put = line.starts_with("PUT ") && content_length > 4096;
    let is_listing = line.starts_with("GET ") && line.contains("list-type=2");

    if take(&faults.slowdowns) {
        faults.injected.fetch_add(1, Ordering::SeqCst);
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
        let response = format!(
            "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nRetry-After: 0\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        client.write_all(response.as_bytes())?;
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }

    let latency = faults.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        std::thread::sleep(Duration::from_millis(latency));
    }
    let mut server = TcpStream::connect(upstream)?;
    server.write_all(&with_connection_close(&head))?;
    if is_put && take(&faults.cut_uploads) {
        faults.injected.fetch_add(1, Ordering::SeqCst);
        let mut sent = early_body.len().min(1024);
        server.write_all(&early_body[..sent])?;
        let mut chunk = [0u8; 512];
        while sent < 1024 {
            let n = client.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            server.write_all(&chunk[..n])?;
            sent += n;
        }
        let _ = server.shutdown(Shutdown::Both);
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }

    // Request body upstream on its own thread (throttled if asked), response back here.
    let (mut from_client, mut to_server) = (client.try_clone()?, server.try_clone()?);
    let rate = faults.bytes_per_second.load(Ordering::SeqCst);
    let uploader = std::thread::spawn(move || {
        let started = Instant::now();
        let mut sent = early_body.len() as u64;
        let _ = to_server.write_all(&early_body);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = match from_client.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if to_server.write_all(&chunk[..n]).is_err() {
                break;
            }
            sent += n as u64;
            if rate > 0 {
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
    });
    if line.starts_with("GET ") && !is_listing && take(&faults.unsized_reads) {
        faults.injected.fetch_add(1, Ordering::SeqCst);
        let (head, rest) = read_head(&mut server)?;
        let head = String::from_utf8_lossy(&head)
            .split("\r\n")
            .filter(|l| !l.to_ascii_lowercase().starts_with("content-length:"))
            .collect::<Vec<_>>()
            .join("\r\n");
        client.write_all(head.as_bytes())?;
        client.write_all(&rest)?;
    }
    let cut_at = (is_listing && take(&faults.cut_listings)).then(|| {
        faults.injected.fetch_add(1, Ordering::SeqCst);
        300usize
    });
    let mut relayed = 0usize;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match server.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let n = cut_at.map_or(n, |cut| n.min(cut.saturating_sub(relayed)));
        client.write_all(&chunk[..n])?;
        relayed += n;
        if cut_at.is_some_and(|cut| relayed >= cut) {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
    let _ = uploader.join();
    Ok(())
}
