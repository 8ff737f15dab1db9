//! Downloading one image safely: destinations checked before every request and after every redirect
//! (non-http(s) schemes, and the addresses `destination` refuses, unless allow-listed) through the shard's
//! DNS cache, which is also the only resolver the HTTP client uses; no proxy but `DSMAKE_PROXY`; a
//! connection limit per host, a cap on bytes, and retries with backoff that honour Retry-After on 429 and 503.
//! A request is sent only once the build's memory budget has room for its connection's buffers and the body
//! it likely brings (the mean of the bodies so far), so that waiting for memory neither runs down the timeout
//! nor holds a connection open; its Content-Length then settles what it holds, and a body without one grows
//! it as it arrives.
//!
//! Error messages are stable: they land in the shard's parquet, and people group rows by them.

use super::destination::{Dns, SharedDns};
use crate::kind::{Cancel, MemoryBudget, memory::Buffer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use ureq::unversioned::transport::DefaultConnector;

#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub timeout: Duration,
    pub retries: u32,
    pub user_agent: String,
    pub user_agent_token: Option<String>,
    pub disallowed_directives: Vec<String>,
    pub allow_hosts: Vec<String>,
    pub max_redirects: u32,
    pub max_bytes: u64,
    pub per_host: usize,
    /// Longest wait a Retry-After may ask for.
    pub max_retry_after: Duration,
    /// `DSMAKE_PROXY`; never one from the environment's `HTTP_PROXY` and the like.
    pub proxy: Option<ureq::Proxy>,
    /// Certificates are not verified (the step's explicit `ignore_ssl_certificate`).
    pub ignore_ssl_certificate: bool,
}

/// At most `max` connections per host at once.
#[derive(Debug, Default)]
pub struct HostLimits {
    max: usize,
    used: Mutex<HashMap<String, usize>>,
    freed: Condvar,
}

pub struct HostPermit<'a> {
    limits: &'a HostLimits,
    host: String,
}

impl Drop for HostPermit<'_> {
    fn drop(&mut self) {
        let mut used = self.limits.used.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = used.get_mut(&self.host) {
            *n = n.saturating_sub(1);
        }
        self.limits.freed.notify_all();
    }
}

impl HostLimits {
    pub fn new(max: usize) -> HostLimits {
        HostLimits { max: max.max(1), ..Default::default() }
    }
    pub fn acquire(&self, host: &str) -> HostPermit<'_> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while used.get(host).copied().unwrap_or(0) >= self.max {
            used = self.freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        *used.entry(host.to_string()).or_default() += 1;
        HostPermit { limits: self, host: host.to_string() }
    }
}

pub struct Fetcher {
    agent: ureq::Agent,
    pub dns: Arc<Dns>,
    limits: HostLimits,
    opts: FetchOptions,
    memory: MemoryBudget,
    cancel: Cancel,
    /// Bodies read and their bytes, for the size the next one is expected to have.
    bodies: (AtomicU64, AtomicU64),
}

/// A downloaded body, counted in the build's memory budget until dropped; its buffer then goes back to
/// [`BODIES`].
pub struct Body {
    pub bytes: Vec<u8>,
    _held: Buffer,
}

impl Drop for Body {
    fn drop(&mut self) {
        keep_buffer(std::mem::take(&mut self.bytes));
    }
}

/// Bodies' buffers between downloads, up to [`KEEP_BODIES`] bytes of them, each holding what it last held
/// (its length: bytes already written). The process frees memory at once (`main.rs`), so a fresh buffer for
/// every body meant a page fault and a zeroed page for every 4 KiB received: a tenth of a build's CPU. What
/// the pool keeps idle is outside the memory budget, and bounded.
static BODIES: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Bytes of idle body buffers kept at most.
const KEEP_BODIES: usize = 48 << 20;

/// A buffer of at least `n` bytes' capacity, and not much more (the budget counts its capacity): one kept,
/// or a new one.
fn buffer_for(n: usize) -> Vec<u8> {
    let mut pool = BODIES.lock().unwrap_or_else(|p| p.into_inner());
    let fits = |b: &Vec<u8>| (n..=n + n / 4).contains(&b.capacity());
    let best = pool.iter().enumerate().filter(|(_, b)| fits(b)).min_by_key(|(_, b)| b.capacity()).map(|(at, _)| at);
    match best {
        Some(at) => pool.swap_remove(at),
        None => Vec::with_capacity(n),
    }
}

/// Keeps `buffer` for a later body if the pool has room for it.
fn keep_buffer(buffer: Vec<u8>) {
    let mut pool = BODIES.lock().unwrap_or_else(|p| p.into_inner());
    let kept: usize = pool.iter().map(Vec::capacity).sum();
    if kept + buffer.capacity() <= KEEP_BODIES {
        pool.push(buffer);
    }
}

/// What a request is first given room for, before any body has been read; and what a body without a
/// Content-Length is, before it grows as it arrives.
const UNKNOWN_LENGTH: u64 = 256 << 10;

/// A request's connection buffers (ureq's input and output buffers, 128 KiB each), held while it is in flight.
const CONNECTION: u64 = 256 << 10;

/// What a failed attempt says about trying again.
enum Attempt {
    Done(Body),
    Retry(String, Option<Duration>),
    Fail(String),
}

fn reason(status: u16) -> &'static str {
    ureq::http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("")
}

impl Fetcher {
    pub fn new(opts: FetchOptions, memory: MemoryBudget, cancel: Cancel) -> Fetcher {
        let dns = Arc::new(Dns::new(opts.allow_hosts.clone(), opts.proxy.as_ref()));
        let config = ureq::Agent::config_builder()
            // Set whether or not there is one: ureq's default reads the environment's proxy variables.
            .proxy(opts.proxy.clone())
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .timeout_global(Some(opts.timeout))
            .user_agent(opts.user_agent.as_str())
            .max_idle_connections_per_host(opts.per_host.max(1))
            .tls_config(ureq::tls::TlsConfig::builder().disable_verification(opts.ignore_ssl_certificate).build())
            .build();
        let agent = ureq::Agent::with_parts(config, DefaultConnector::new(), SharedDns(dns.clone()));
        let bodies = (AtomicU64::new(0), AtomicU64::new(0));
        Fetcher { agent, dns, limits: HostLimits::new(opts.per_host), opts, memory, cancel, bodies }
    }

    /// What a request takes from the memory budget before it is sent.
    pub fn request_bytes(&self) -> u64 {
        CONNECTION + self.expected()
    }

    /// The size a body is expected to have: the mean so far.
    fn expected(&self) -> u64 {
        let (n, bytes) = (self.bodies.0.load(Ordering::Relaxed), self.bodies.1.load(Ordering::Relaxed));
        bytes.checked_div(n).unwrap_or(UNKNOWN_LENGTH).min(self.opts.max_bytes)
    }

    /// The image bytes at `url`, or the row's error message.
    pub fn fetch(&self, url: &str) -> Result<Body, String> {
        let mut attempt = 0;
        loop {
            match self.attempt(url) {
                Attempt::Done(bytes) => return Ok(bytes),
                Attempt::Fail(message) => return Err(message),
                Attempt::Retry(message, _) if attempt >= self.opts.retries => return Err(message),
                Attempt::Retry(_, wait) => {
                    let wait = wait.unwrap_or_else(|| crate::retry::backoff(attempt));
                    std::thread::sleep(wait.min(self.opts.max_retry_after));
                    attempt += 1;
                }
            }
        }
    }

    fn attempt(&self, url: &str) -> Attempt {
        let mut current = match url::Url::parse(url.trim()) {
            Ok(u) => u,
            Err(e) => return Attempt::Fail(format!("malformed URL: {e}")),
        };
        let mut redirects = 0;
        loop {
            if let Err(message) = self.check(&current) {
                return Attempt::Fail(message);
            }
            let host = current.host_str().unwrap_or_default().to_string();
            let _permit = self.limits.acquire(&host);
            // After the host's permit, never before: a request that held memory while it waited for a permit
            // would starve the requests that hold the permits and wait for memory.
            let Ok(held) = self.memory.buffer(self.request_bytes(), &self.cancel) else {
                return Attempt::Fail("interrupted".to_string());
            };
            let started = Instant::now();
            let response = self.agent.get(current.as_str()).call();
            let mut response = match response {
                Ok(r) => r,
                Err(e) => return self.transport(e, started),
            };
            let status = response.status().as_u16();
            if (300..400).contains(&status) && status != 304 {
                let Some(location) = response.headers().get("Location").and_then(|v| v.to_str().ok()) else {
                    return Attempt::Fail(format!("HTTP Error {status}: redirect without a Location"));
                };
                redirects += 1;
                if redirects > self.opts.max_redirects {
                    return Attempt::Fail(format!("too many redirects (more than {})", self.opts.max_redirects));
                }
                current = match current.join(location) {
                    Ok(u) => u,
                    Err(e) => return Attempt::Fail(format!("malformed redirect URL: {e}")),
                };
                continue;
            }
            if !(200..300).contains(&status) {
                let message = format!("HTTP Error {status}: {}", reason(status));
                if status == 429 || status >= 500 {
                    let after = response
                        .headers()
                        .get("Retry-After")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    return Attempt::Retry(message, after);
                }
                return Attempt::Fail(message);
            }
            if self.disallowed(&response) {
                return Attempt::Fail("Use of image disallowed by X-Robots-Tag directive".to_string());
            }
            let too_large = || Attempt::Fail(format!("image is larger than {} bytes", self.opts.max_bytes));
            // A declared length over the cap fails before any of the body is read; a body without one
            // (chunked) or longer than declared is cut off one byte past the cap.
            let declared = response
                .headers()
                .get("Content-Length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if declared.is_some_and(|n| n > self.opts.max_bytes) {
                return too_large();
            }
            return match self.read_body(response.body_mut(), declared, held) {
                Ok(body) => Attempt::Done(body),
                Err(ureq::Error::BodyExceedsLimit(_)) => too_large(),
                Err(e) => self.transport(e, started),
            };
        }
    }

    /// Reads a body of `declared` bytes (when said) into what `held` holds for the request: room for all of it
    /// (waited for when it is more than expected), or, without a length, for a first part and then more as it
    /// arrives (doubling). The buffer never holds more than the budget counts.
    fn read_body(&self, body: &mut ureq::Body, declared: Option<u64>, mut held: Buffer) -> Result<Body, ureq::Error> {
        use std::io::Read;
        let interrupted = || ureq::Error::Io(std::io::Error::other("interrupted"));
        let max = self.opts.max_bytes;
        // A byte past the declared length, so that the end is seen without growing.
        let first = declared.map_or(UNKNOWN_LENGTH, |n| n + 1).min(max + 1);
        match (CONNECTION + first).checked_sub(held.bytes()) {
            Some(more) => held.grow(more, &self.cancel).map_err(|_| interrupted())?,
            None => held.shrink_to(CONNECTION + first),
        }
        let mut reader = body.with_config().limit(max).reader();
        // Read straight into the buffer: its first `len` bytes are written already (a kept buffer), and the
        // rest is zeroed once, as needed, since a safe `read` takes initialised bytes.
        let mut bytes = buffer_for(first as usize);
        if let Some(more) = (bytes.capacity() as u64).checked_sub(first).filter(|&more| more > 0) {
            held.grow(more, &self.cancel).map_err(|_| interrupted())?;
        }
        let mut filled = 0;
        loop {
            if filled == bytes.capacity() {
                // Up to a byte past the cap, where the reader's limit says the body is too large.
                let more = (filled as u64).clamp(64 << 10, 8 << 20).min(max + 1 - filled as u64);
                held.grow(more, &self.cancel).map_err(|_| interrupted())?;
                bytes.reserve_exact(more as usize);
            }
            if filled == bytes.len() {
                bytes.resize(bytes.capacity(), 0);
            }
            match reader.read(&mut bytes[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ureq::Error::from(e)),
            }
        }
        bytes.truncate(filled);
        // A body without a length may have grown well past its size.
        let spare = bytes.capacity() - filled;
        if spare > 64 << 10 && spare > filled / 4 {
            bytes.shrink_to_fit();
        }
        // The response is read: its connection goes back to the pool, and only the body is held from now on.
        held.shrink_to(bytes.capacity() as u64);
        self.bodies.0.fetch_add(1, Ordering::Relaxed);
        self.bodies.1.fetch_add(filled as u64, Ordering::Relaxed);
        Ok(Body { bytes, _held: held })
    }

    fn check(&self, url: &url::Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("refused destination: scheme `{}` is not http(s)", url.scheme()));
        }
        let Some(host) = url.host_str() else {
            return Err("malformed URL: no host".to_string());
        };
        let port = url.port_or_known_default().unwrap_or(80);
        self.dns.check(host, port)
    }

    fn transport(&self, e: ureq::Error, started: Instant) -> Attempt {
        let timeout = self.opts.timeout.as_secs_f64();
        match e {
            ureq::Error::Timeout(_) => Attempt::Retry(format!("timed out after {timeout}s"), None),
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => Attempt::Fail(io.to_string()),
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                Attempt::Retry(format!("timed out after {timeout}s"), None)
            }
            ureq::Error::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                Attempt::Retry("connection broken before the image was complete".to_string(), None)
            }
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                Attempt::Retry("connection refused".to_string(), None)
            }
            ureq::Error::HostNotFound => Attempt::Fail("host not found".to_string()),
            ureq::Error::ConnectionFailed => Attempt::Retry("connection failed".to_string(), None),
            other if started.elapsed() >= self.opts.timeout => {
                let _ = other;
                Attempt::Retry(format!("timed out after {timeout}s"), None)
            }
            ureq::Error::Io(io) if self.cancel.is_cancelled() => Attempt::Fail(format!("download error: {io}")),
            other => Attempt::Fail(format!("download error: {other}")),
        }
    }

    /// img2dataset's rule: any X-Robots-Tag value whose directives include a disallowed one, for every
    /// agent or for our user agent token.
    fn disallowed(&self, response: &ureq::http::Response<ureq::Body>) -> bool {
        if self.opts.disallowed_directives.is_empty() {
            return false;
        }
        response.headers().get_all("X-Robots-Tag").iter().filter_map(|v| v.to_str().ok()).any(|value| {
            let (agent, directives) = match value.split_once(':') {
                Some((a, d)) => (Some(a.trim().to_ascii_lowercase()), d),
                None => (None, value),
            };
            let for_us = agent.is_none_or(|a| self.opts.user_agent_token.as_deref().is_some_and(|t| t == a));
            for_us
                && directives
                    .split(',')
                    .map(|d| d.trim().to_ascii_lowercase())
                    .any(|d| self.opts.disallowed_directives.contains(&d))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kept buffer comes back, with the bytes it held, for a body it fits without much to spare; not for
    /// a body a quarter or more smaller (the budget counts its capacity), and one that would take the pool
    /// past its bound is not kept. (Sizes no other test uses: the pool is the process's.)
    #[test]
    fn body_buffers_are_kept_within_bounds() {
        let mut held = Vec::with_capacity(3_000_017);
        held.extend_from_slice(b"earlier body");
        let at = held.as_ptr();
        keep_buffer(held);
        let small = buffer_for(2_000_003);
        assert_ne!(small.as_ptr(), at, "too large for it");
        let reused = buffer_for(2_900_009);
        assert_eq!(reused.as_ptr(), at);
        assert_eq!((&reused[..], reused.capacity()), (&b"earlier body"[..], 3_000_017));
        keep_buffer(Vec::with_capacity(KEEP_BODIES + 1));
        let pool = BODIES.lock().unwrap();
        assert!(pool.iter().map(Vec::capacity).sum::<usize>() <= KEEP_BODIES, "over the bound: not kept");
    }
}
