//! Where a download may go. An address is refused when IANA's special-purpose registries (IPv4 and IPv6) say
//! it is not globally reachable, and an IPv6 address that carries an IPv4 one (IPv4-mapped, -translated and
//! -compatible, NAT64's well-known prefix, 6to4, Teredo) is judged as the IPv4 address it carries, since
//! that is where the packets end up. The names of a shard's URLs resolve once, in a cache shared by its
//! threads that is also the HTTP client's only resolver, so the address checked is the address connected to.
//!
//! A proxy resolves names itself, so it would connect where no check has looked. Downloads therefore take no
//! proxy from the environment (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` are for the Hub and Databricks
//! clients): only `DSMAKE_PROXY` sets one, and with it the destination checks move to that proxy; dsmake
//! still refuses IP literals it would refuse, but no longer resolves names itself.
//!
//! Error messages are stable: they land in the shard's parquet, and people group rows by them.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

const LOOPBACK: &str = "a loopback address";
const PRIVATE: &str = "a private address";
const LINK_LOCAL: &str = "a link-local address";
const UNSPECIFIED: &str = "an unspecified address";
const SHARED: &str = "a shared (carrier-grade NAT) address";
const MULTICAST: &str = "a multicast or reserved address";
const RESERVED: &str = "a reserved address";
const DOCUMENTATION: &str = "a documentation address";
const BENCHMARKING: &str = "a benchmarking address";
const SITE_LOCAL: &str = "a site-local address";

/// IANA's IPv4 special-purpose registry, the entries that are not globally reachable, plus multicast:
/// (network, prefix length, what it is). 192.0.0.0/24 is refused whole, its two anycast entries (PCP and
/// TURN servers) included: no image is served from them.
const V4_REFUSED: [([u8; 4], u32, &str); 15] = [
    ([0, 0, 0, 0], 8, UNSPECIFIED),
    ([10, 0, 0, 0], 8, PRIVATE),
    ([100, 64, 0, 0], 10, SHARED),
    ([127, 0, 0, 0], 8, LOOPBACK),
    ([169, 254, 0, 0], 16, LINK_LOCAL),
    ([172, 16, 0, 0], 12, PRIVATE),
    ([192, 0, 0, 0], 24, RESERVED),
    ([192, 0, 2, 0], 24, DOCUMENTATION),
    // The deprecated 6to4 relay anycast (RFC 7526): a relay into the IPv4 that 6to4 addresses carry.
    ([192, 88, 99, 0], 24, RESERVED),
    ([192, 168, 0, 0], 16, PRIVATE),
    ([198, 18, 0, 0], 15, BENCHMARKING),
    ([198, 51, 100, 0], 24, DOCUMENTATION),
    ([203, 0, 113, 0], 24, DOCUMENTATION),
    ([224, 0, 0, 0], 4, MULTICAST),
    // Reserved for future use, with the limited broadcast 255.255.255.255 at its end.
    ([240, 0, 0, 0], 4, MULTICAST),
];

/// Globally reachable entries inside 2001::/23, which is otherwise refused (IANA's IPv6 registry).
const V6_REACHABLE: [(u128, u32); 7] = [
    (0x2001_0001_0000_0000_0000_0000_0000_0001, 128), // PCP anycast
    (0x2001_0001_0000_0000_0000_0000_0000_0002, 128), // TURN anycast
    (0x2001_0001_0000_0000_0000_0000_0000_0003, 128), // DNS-SD service registration anycast
    (0x2001_0003_0000_0000_0000_0000_0000_0000, 32),  // AMT
    (0x2001_0004_0112_0000_0000_0000_0000_0000, 48),  // AS112-v6
    (0x2001_0020_0000_0000_0000_0000_0000_0000, 28),  // ORCHIDv2
    (0x2001_0030_0000_0000_0000_0000_0000_0000, 28),  // drone remote ID
];

/// IANA's IPv6 special-purpose registry, the entries that are not globally reachable and carry no IPv4
/// address, plus the deprecated site-local range and multicast; most specific first.
const V6_REFUSED: [(u128, u32, &str); 14] = [
    (0, 128, UNSPECIFIED),
    (1, 128, LOOPBACK),
    // Local-use NAT64 (RFC 8215): whatever the operator translates it to, often private space.
    (0x0064_ff9b_0001_0000_0000_0000_0000_0000, 48, PRIVATE),
    (0x0100_0000_0000_0000_0000_0000_0000_0000, 64, RESERVED), // discard-only
    (0x0100_0000_0000_0001_0000_0000_0000_0000, 64, RESERVED), // dummy prefix
    (0x2001_0002_0000_0000_0000_0000_0000_0000, 48, BENCHMARKING),
    (0x2001_0000_0000_0000_0000_0000_0000_0000, 23, RESERVED), // IETF protocol assignments
    (0x2001_0db8_0000_0000_0000_0000_0000_0000, 32, DOCUMENTATION),
    (0x3fff_0000_0000_0000_0000_0000_0000_0000, 20, DOCUMENTATION),
    (0x5f00_0000_0000_0000_0000_0000_0000_0000, 16, RESERVED), // SRv6 SIDs
    (0xfc00_0000_0000_0000_0000_0000_0000_0000, 7, PRIVATE),   // unique local
    (0xfe80_0000_0000_0000_0000_0000_0000_0000, 10, LINK_LOCAL),
    (0xfec0_0000_0000_0000_0000_0000_0000_0000, 10, SITE_LOCAL),
    (0xff00_0000_0000_0000_0000_0000_0000_0000, 8, MULTICAST),
];

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// What the address is ("a private address").
    pub what: &'static str,
    /// For an IPv6 address judged by the IPv4 address it carries: that address and the form.
    pub carried: Option<(Ipv4Addr, &'static str)>,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.carried {
            Some((v4, form)) => write!(f, "{} ({v4} in {form} form)", self.what),
            None => f.write_str(self.what),
        }
    }
}

fn in_net(bits: u128, net: u128, len: u32) -> bool {
    len == 0 || bits >> (128 - len) == net >> (128 - len)
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = u32::from(ip);
    V4_REFUSED
        .iter()
        .find(|(net, len, _)| bits >> (32 - len) == u32::from_be_bytes(*net) >> (32 - len))
        .map(|(_, _, what)| *what)
}

/// The IPv4 addresses an IPv6 one carries, and the form: a destination is refused when any of them is.
fn carried_v4(ip: Ipv6Addr) -> Vec<(Ipv4Addr, &'static str)> {
    let bits = u128::from(ip);
    let low = Ipv4Addr::from(bits as u32);
    if in_net(bits, 0xffff_0000_0000, 96) {
        vec![(low, "IPv4-mapped")]
    } else if in_net(bits, 0xffff_0000_0000_0000, 96) {
        vec![(low, "IPv4-translated")]
    } else if in_net(bits, 0, 96) && bits > 1 {
        vec![(low, "IPv4-compatible")]
    } else if in_net(bits, 0x0064_ff9b_0000_0000_0000_0000_0000_0000, 96) {
        vec![(low, "NAT64")]
    } else if in_net(bits, 0x2002_0000_0000_0000_0000_0000_0000_0000, 16) {
        vec![(Ipv4Addr::from((bits >> 80) as u32), "6to4")]
    } else if in_net(bits, 0x2001_0000_0000_0000_0000_0000_0000_0000, 32) {
        // The Teredo server, then the client, whose address is stored inverted.
        vec![(Ipv4Addr::from((bits >> 64) as u32), "Teredo"), (Ipv4Addr::from(!(bits as u32)), "Teredo")]
    } else {
        Vec::new()
    }
}

/// Why a destination is refused, or None when it may be fetched.
pub fn refused_ip(ip: IpAddr) -> Option<Refused> {
    let v6 = match ip {
        IpAddr::V4(v4) => return refused_v4(v4).map(|what| Refused { what, carried: None }),
        IpAddr::V6(v6) => v6,
    };
    let carried = carried_v4(v6);
    if !carried.is_empty() {
        return carried
            .into_iter()
            .find_map(|(v4, form)| refused_v4(v4).map(|what| Refused { what, carried: Some((v4, form)) }));
    }
    let bits = u128::from(v6);
    if V6_REACHABLE.iter().any(|&(net, len)| in_net(bits, net, len)) {
        return None;
    }
    V6_REFUSED
        .iter()
        .find(|&&(net, len, _)| in_net(bits, net, len))
        .map(|&(_, _, what)| Refused { what, carried: None })
}

/// `DSMAKE_PROXY`: the proxy every download goes through, or None.
pub fn proxy_from_env() -> anyhow::Result<Option<ureq::Proxy>> {
    proxy_from(std::env::var("DSMAKE_PROXY").ok().as_deref()).map_err(anyhow::Error::msg)
}

/// The proxy that `value` names: an http:// or https:// URL (http:// when the scheme is left out, as curl
/// reads it), with user:password@ if it wants them. Messages never repeat a password.
fn proxy_from(value: Option<&str>) -> Result<Option<ureq::Proxy>, String> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let shown = value.rsplit_once('@').map_or(value, |(_, host)| host);
    let usage = "set it to http://HOST:PORT or https://HOST:PORT, or unset it to download directly";
    let proxy =
        ureq::Proxy::new(value).map_err(|e| format!("DSMAKE_PROXY `{shown}` is not a proxy URL ({e}): {usage}"))?;
    match proxy.protocol() {
        ureq::ProxyProtocol::Http | ureq::ProxyProtocol::Https => Ok(Some(proxy)),
        other => Err(format!("DSMAKE_PROXY `{shown}` is a {other:?} proxy, which dsmake cannot use: {usage}")),
    }
}

/// A name's usable addresses, or why there are none.
type Resolved = Result<Vec<SocketAddr>, String>;

/// Resolutions of the shard's host names, shared by its threads; also the HTTP client's resolver.
#[derive(Debug, Default)]
pub struct Dns {
    cache: Mutex<HashMap<(String, u16), Resolved>>,
    allow: Vec<String>,
    /// `DSMAKE_PROXY`'s host: the operator chose it, so it is resolved without the checks.
    proxy: Option<String>,
    pub lookups: std::sync::atomic::AtomicU64,
}

fn bare(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

impl Dns {
    pub fn new(allow: Vec<String>, proxy: Option<&ureq::Proxy>) -> Dns {
        Dns {
            allow: allow.into_iter().map(|h| h.to_ascii_lowercase()).collect(),
            proxy: proxy.map(|p| bare(p.host()).to_ascii_lowercase()),
            ..Default::default()
        }
    }

    fn allowed(&self, host: &str) -> bool {
        let host = bare(host).to_ascii_lowercase();
        self.allow.iter().any(|a| a == "*" || *a == host)
    }

    /// Checks a URL's host before a request. Without a proxy: resolves it (into the cache the connection
    /// uses) and checks every address. With one, the proxy resolves names and checks destinations; an IP
    /// literal is still checked here.
    pub fn check(&self, host: &str, port: u16) -> Result<(), String> {
        if self.proxy.is_none() {
            return self.resolve(host, port).map(drop);
        }
        match bare(host).parse::<IpAddr>() {
            Ok(ip) if !self.allowed(host) => match refused_ip(ip) {
                Some(why) => Err(refusal(&ip.to_string(), why)),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// The addresses that `host` may be reached at, or the message for the row.
    pub fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let key = (bare(host).to_ascii_lowercase(), port);
        if let Some(hit) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return hit.clone();
        }
        let result = self.lookup(bare(host), port);
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
        if self.allowed(host) || self.proxy.as_deref() == Some(&host.to_ascii_lowercase()) {
            return Ok(addrs);
        }
        if let Some((ip, why)) = addrs.iter().find_map(|a| Some((a.ip(), refused_ip(a.ip())?))) {
            let shown = if host.parse::<IpAddr>().is_ok() { host.to_string() } else { format!("{host} ({ip})") };
            return Err(refusal(&shown, why));
        }
        Ok(addrs)
    }
}

fn refusal(shown: &str, why: Refused) -> String {
    format!("refused destination: {shown} is {why} (allow it with allow_hosts or --allow-host)")
}

/// The HTTP client's resolver: the shard's `Dns`, so that a name cannot resolve to a public address for the
/// check and a private one for the connection.
#[derive(Debug)]
pub struct SharedDns(pub Arc<Dns>);

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

#[cfg(test)]
mod tests {
    use super::*;

    fn what(address: &str) -> Option<&'static str> {
        refused_ip(address.parse().unwrap()).map(|r| r.what)
    }

    #[test]
    fn ipv4_special_purpose_addresses_are_refused() {
        let table = [
            ("0.0.0.0", Some(UNSPECIFIED)),
            ("0.1.2.3", Some(UNSPECIFIED)),
            ("10.1.2.3", Some(PRIVATE)),
            ("100.64.0.1", Some(SHARED)),
            ("100.127.255.255", Some(SHARED)),
            ("100.128.0.1", None),
            ("127.0.0.1", Some(LOOPBACK)),
            ("127.255.255.254", Some(LOOPBACK)),
            ("169.254.169.254", Some(LINK_LOCAL)),
            ("172.15.255.255", None),
            ("172.16.0.1", Some(PRIVATE)),
            ("172.31.255.255", Some(PRIVATE)),
            ("172.32.0.1", None),
            ("192.0.0.1", Some(RESERVED)),
            ("192.0.0.9", Some(RESERVED)),
            ("192.0.0.170", Some(RESERVED)),
            ("192.0.1.1", None),
            ("192.0.2.7", Some(DOCUMENTATION)),
            ("192.31.196.1", None),
            ("192.52.193.1", None),
            ("192.88.99.1", Some(RESERVED)),
            ("192.168.0.1", Some(PRIVATE)),
            ("192.175.48.1", None),
            ("198.17.255.255", None),
            ("198.18.0.1", Some(BENCHMARKING)),
            ("198.19.255.255", Some(BENCHMARKING)),
            ("198.20.0.1", None),
            ("198.51.100.1", Some(DOCUMENTATION)),
            ("203.0.113.9", Some(DOCUMENTATION)),
            ("224.0.0.1", Some(MULTICAST)),
            ("239.255.255.250", Some(MULTICAST)),
            ("240.0.0.1", Some(MULTICAST)),
            ("255.255.255.255", Some(MULTICAST)),
            ("1.1.1.1", None),
            ("8.8.8.8", None),
            ("93.184.215.14", None),
            ("223.255.255.255", None),
        ];
        for (address, want) in table {
            assert_eq!(what(address), want, "{address}");
        }
    }

    #[test]
    fn ipv6_special_purpose_addresses_are_refused() {
        let table = [
            ("::", Some(UNSPECIFIED)),
            ("::1", Some(LOOPBACK)),
            ("64:ff9b:1::a", Some(PRIVATE)),
            ("100::1", Some(RESERVED)),
            ("100:0:0:1::1", Some(RESERVED)),
            ("100:0:0:2::1", None),
            ("2001:1::1", None),
            ("2001:1::2", None),
            ("2001:1::4", Some(RESERVED)),
            ("2001:2::1", Some(BENCHMARKING)),
            ("2001:3::1", None),
            ("2001:4:112::1", None),
            ("2001:4:113::1", Some(RESERVED)),
            ("2001:10::1", Some(RESERVED)),
            ("2001:20::1", None),
            ("2001:30::1", None),
            ("2001:1ff::1", Some(RESERVED)),
            ("2001:200::1", None),
            ("2001:db8::1", Some(DOCUMENTATION)),
            ("2620:4f:8000::1", None),
            ("3fff::1", Some(DOCUMENTATION)),
            ("3fff:fff::1", Some(DOCUMENTATION)),
            ("3fff:1000::1", None),
            ("5f00::1", Some(RESERVED)),
            ("fc00::1", Some(PRIVATE)),
            ("fd12:3456::1", Some(PRIVATE)),
            ("fe80::1", Some(LINK_LOCAL)),
            ("febf::1", Some(LINK_LOCAL)),
            ("fec0::1", Some(SITE_LOCAL)),
            ("feff::1", Some(SITE_LOCAL)),
            ("ff02::1", Some(MULTICAST)),
            ("ff0e::1", Some(MULTICAST)),
            ("2606:4700:4700::1111", None),
            ("2a00:1450:4001::200e", None),
        ];
        for (address, want) in table {
            assert_eq!(what(address), want, "{address}");
        }
    }

    #[test]
    fn ipv6_forms_that_carry_ipv4_are_judged_as_that_ipv4() {
        let v4 = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let table = [
            ("::ffff:127.0.0.1", Some((LOOPBACK, "127.0.0.1", "IPv4-mapped"))),
            ("::ffff:192.168.0.1", Some((PRIVATE, "192.168.0.1", "IPv4-mapped"))),
            ("::ffff:8.8.8.8", None),
            ("::ffff:0:169.254.169.254", Some((LINK_LOCAL, "169.254.169.254", "IPv4-translated"))),
            ("::ffff:0:8.8.8.8", None),
            ("::10.0.0.1", Some((PRIVATE, "10.0.0.1", "IPv4-compatible"))),
            ("::127.0.0.1", Some((LOOPBACK, "127.0.0.1", "IPv4-compatible"))),
            ("::2", Some((UNSPECIFIED, "0.0.0.2", "IPv4-compatible"))),
            ("::8.8.8.8", None),
            ("64:ff9b::10.0.0.1", Some((PRIVATE, "10.0.0.1", "NAT64"))),
            ("64:ff9b::a9fe:a9fe", Some((LINK_LOCAL, "169.254.169.254", "NAT64"))),
            ("64:ff9b::198.18.0.1", Some((BENCHMARKING, "198.18.0.1", "NAT64"))),
            ("64:ff9b::8.8.8.8", None),
            ("2002:7f00:1::", Some((LOOPBACK, "127.0.0.1", "6to4"))),
            ("2002:c0a8:101:1::1", Some((PRIVATE, "192.168.1.1", "6to4"))),
            ("2002:a9fe:a9fe::1", Some((LINK_LOCAL, "169.254.169.254", "6to4"))),
            ("2002:808:808::1", None),
            // Teredo: server 65.54.227.120, client 10.0.0.1 stored inverted (f5ff:fffe).
            ("2001:0:4136:e378:8000:63bf:f5ff:fffe", Some((PRIVATE, "10.0.0.1", "Teredo"))),
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", None),
            ("2001:0:a00:1:8000:63bf:f7f7:f7f7", Some((PRIVATE, "10.0.0.1", "Teredo"))),
        ];
        for (address, want) in table {
            let got = refused_ip(address.parse().unwrap());
            let want = want.map(|(what, ip, form)| Refused { what, carried: Some((v4(ip), form)) });
            assert_eq!(got, want, "{address}");
        }
        assert_eq!(
            refused_ip("2002:a00:1::".parse().unwrap()).unwrap().to_string(),
            "a private address (10.0.0.1 in 6to4 form)"
        );
    }

    #[test]
    fn the_cache_checks_every_address_and_honours_the_allow_list() {
        let dns = Dns::new(vec!["127.0.0.1".into()], None);
        assert!(dns.resolve("127.0.0.1", 80).is_ok());
        assert_eq!(
            dns.resolve("[::1]", 80).unwrap_err(),
            "refused destination: ::1 is a loopback address (allow it with allow_hosts or --allow-host)"
        );
        assert_eq!(
            dns.check("[64:ff9b::a00:1]", 80).unwrap_err(),
            "refused destination: 64:ff9b::a00:1 is a private address (10.0.0.1 in NAT64 form) (allow it with \
             allow_hosts or --allow-host)"
        );
        assert_eq!(Dns::new(vec!["*".into()], None).check("[::1]", 80), Ok(()));
    }

    #[test]
    fn with_a_proxy_names_are_left_to_it_and_literals_still_checked() {
        let proxy = proxy_from(Some("http://user:secret@127.0.0.1:3128")).unwrap();
        let dns = Dns::new(vec![], proxy.as_ref());
        // Not resolved here (no lookup is made): the proxy resolves it and checks where it leads.
        assert_eq!(dns.check("images.example", 80), Ok(()));
        assert_eq!(dns.lookups.load(std::sync::atomic::Ordering::Relaxed), 0);
        assert!(dns.check("10.0.0.1", 80).unwrap_err().contains("is a private address"));
        assert!(dns.check("[::ffff:127.0.0.1]", 80).unwrap_err().contains("is a loopback address"));
        // The proxy itself, chosen by the operator, is resolved without the checks.
        assert_eq!(dns.resolve("127.0.0.1", 3128), Ok(vec!["127.0.0.1:3128".parse().unwrap()]));
        assert!(Dns::new(vec![], None).resolve("127.0.0.1", 3128).is_err());
    }

    #[test]
    fn dsmake_proxy_is_an_http_url_and_errors_hide_the_password() {
        assert!(proxy_from(None).unwrap().is_none());
        assert!(proxy_from(Some("  ")).unwrap().is_none());
        let proxy = proxy_from(Some("https://proxy.corp:8443")).unwrap().unwrap();
        assert_eq!((proxy.host(), proxy.port()), ("proxy.corp", 8443));
        let proxy = proxy_from(Some("proxy.corp:3128")).unwrap().unwrap();
        assert_eq!((proxy.protocol(), proxy.host(), proxy.port()), (ureq::ProxyProtocol::Http, "proxy.corp", 3128));
        for (value, message) in [
            ("socks5://u:hunter2@proxy.corp:1080", "DSMAKE_PROXY `proxy.corp:1080` is a Socks5 proxy"),
            ("http://u:hunter2@", "DSMAKE_PROXY `` is not a proxy URL"),
        ] {
            let e = proxy_from(Some(value)).unwrap_err();
            assert!(e.starts_with(message), "{value}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.ends_with("or unset it to download directly"), "{e}");
        }
    }
}
