//! Downloading one image safely: destinations checked before every request and after every redirect
//! (loopback, private, link-local and non-http(s) refused unless allow-listed), a DNS cache shared by the
//! shard's threads that is also the only resolver the HTTP client uses (so a name cannot resolve to a
//! public address for the check and a private one for the connection), a connection limit per host, a
//! cap on bytes, and retries with backoff that honour Retry-After on 429 and 503.
//!
//! Error messages are stable: they land in the shard's parquet, and people group rows by them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

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
}

/// Why a destination is refused, or None when it may be fetched.
pub fn refused_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_private() {
                Some("a private address")
            } else if v4.is_link_local() {
                Some("a link-local address")
            } else if v4.is_unspecified() || o[0] == 0 {
                Some("an unspecified address")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("a shared (carrier-grade NAT) address")
            } else if v4.is_multicast() || v4.is_broadcast() || o[0] >= 240 {
                Some("a multicast or reserved address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return refused_ip(IpAddr::V4(v4));
            }
            let s = v6.segments();
            if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() {
                Some("an unspecified address")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("a private address")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("a link-local address")
            } else if v6.is_multicast() {
                Some("a multicast or reserved address")
            } else {
                None
            }
        }
    }
}

/// A name's usable addresses, or why there are none.
type Resolved = Result<Vec<SocketAddr>, String>;

/// Resolutions of the shard's host names, shared by its threads; also the HTTP client's resolver.
#[derive(Debug, Default)]
pub struct Dns {
    cache: Mutex<HashMap<(String, u16), Resolved>>,
    allow: Vec<String>,
    pub lookups: std::sync::atomic::AtomicU64,
}

impl Dns {
    pub fn new(allow: Vec<String>) -> Dns {
        Dns { allow: allow.into_iter().map(|h| h.to_ascii_lowercase()).collect(), ..Default::default() }
    }

    fn allowed(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        self.allow.iter().any(|a| a == "*" || *a == host)
    }

    /// The addresses that `host` may be reached at, or the message for the row.
    pub fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let key = (bare.to_ascii_lowercase(), port);
        if let Some(hit) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return hit.clone();
        }
        let result = self.lookup(bare, port);
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(key, result.clone());
        result
    }

    fn lookup(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => {
                self.lookups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (host, port).to_socket_addrs().map_err(|_| "host not found".to_string())?.collect()
            }
        };
        if addrs.is_empty() {
            return Err("host not found".to_string());
        }
        if self.allowed(host) {
            return Ok(addrs);
        }
        if let Some(why) = addrs.iter().find_map(|a| refused_ip(a.ip())) {
            let ip = addrs.iter().find(|a| refused_ip(a.ip()).is_some()).map(|a| a.ip().to_string());
            let shown = if host.parse::<IpAddr>().is_ok() {
                host.to_string()
            } else {
                format!("{host} ({})", ip.unwrap_or_default())
            };
            return Err(format!("refused destination: {shown} is {why} (allow it with allow_hosts or --allow-host)"));
        }
        Ok(addrs)
    }
}

#[derive(Debug)]
struct SharedDns(Arc<Dns>);

impl Resolver for SharedDns {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().ok_or(ureq::Error::HostNotFound)?;
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
        let addrs = self
            .0
            .resolve(host, port)
            .map_err(|e| ureq::Error::Io(std::io::Error::new(std::io::ErrorKind::PermissionDenied, e)))?;
        let mut out = self.empty();
        for a in addrs.into_iter().take(16) {
            out.push(a);
        }
        Ok(out)
    }
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
}

/// What a failed attempt says about trying again.
enum Attempt {
    Done(Vec<u8>),
    Retry(String, Option<Duration>),
    Fail(String),
}

fn reason(status: u16) -> &'static str {
    ureq::http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("")
}

impl Fetcher {
    pub fn new(opts: FetchOptions) -> Fetcher {
        let dns = Arc::new(Dns::new(opts.allow_hosts.clone()));
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .timeout_global(Some(opts.timeout))
            .user_agent(opts.user_agent.as_str())
            .max_idle_connections_per_host(opts.per_host.max(1))
            .build();
        let agent = ureq::Agent::with_parts(config, DefaultConnector::new(), SharedDns(dns.clone()));
        Fetcher { agent, dns, limits: HostLimits::new(opts.per_host), opts }
    }

    /// The image bytes at `url`, or the row's error message.
    pub fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
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
            let body = response.body_mut().with_config().limit(self.opts.max_bytes).read_to_vec();
            return match body {
                Ok(bytes) => Attempt::Done(bytes),
                Err(ureq::Error::BodyExceedsLimit(_)) => too_large(),
                Err(e) => self.transport(e, started),
            };
        }
    }

    fn check(&self, url: &url::Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("refused destination: scheme `{}` is not http(s)", url.scheme()));
        }
        let Some(host) = url.host_str() else {
            return Err("malformed URL: no host".to_string());
        };
        let port = url.port_or_known_default().unwrap_or(80);
        self.dns.resolve(host, port).map(drop)
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

    #[test]
    fn classifies_destinations() {
        let refused = |s: &str| refused_ip(s.parse().unwrap());
        assert_eq!(refused("169.254.169.254"), Some("a link-local address"));
        assert_eq!(refused("127.0.0.1"), Some("a loopback address"));
        assert_eq!(refused("10.1.2.3"), Some("a private address"));
        assert_eq!(refused("::ffff:192.168.0.1"), Some("a private address"));
        assert_eq!(refused("fd00::1"), Some("a private address"));
        assert_eq!(refused("8.8.8.8"), None);
        let dns = Dns::new(vec!["127.0.0.1".into()]);
        assert!(dns.resolve("127.0.0.1", 80).is_ok());
        assert_eq!(
            dns.resolve("[::1]", 80).unwrap_err(),
            "refused destination: ::1 is a loopback address (allow it with allow_hosts or --allow-host)"
        );
    }
}
