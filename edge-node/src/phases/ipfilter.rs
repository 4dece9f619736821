//! Request phase "ip filter": who the client is, and whether a service's `ip_filter`
//! policies let it in. Runs right after routing and before authentication, so a refused
//! client learns nothing about credentials (403 `ip_denied`).
//!
//! ```text
//!  peer (TCP) ──in trusted_proxies?──no──> client = peer
//!     │ yes
//!  X-Forwarded-For, walked from the right: a trusted hop ─> look one further left
//!     ├─ an untrusted address ─> client (the first one from the right)
//!     ├─ a malformed entry    ─> client = the last trusted hop (garbage is never believed)
//!     └─ nothing left         ─> client = the leftmost (trusted) address
//!  client ─> deny matches? 403 ─> allow list present and no match? 403 ─> pass
//! ```
//!
//! `X-Real-IP` is never read. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`), as peers, in
//! `X-Forwarded-For` and in the policy (`::ffff:10.0.0.0/104`), are IPv4 addresses: they
//! match IPv4 rules only. Rules are compiled once per config into one hash set per prefix
//! length, so a lookup costs one probe per distinct prefix length, whatever the list's size.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use tollgate_proto::model::IpFilter;
use tollgate_proto::validate::parse_cidr;

use crate::error::ProxyError;

/// A set of CIDRs, IPv4 and IPv6, matched by prefix length.
#[derive(Debug, Default)]
pub struct CidrSet {
    /// (prefix length, networks with the host bits cleared), one entry per length in use.
    v4: Vec<(u8, HashSet<u32>)>,
    v6: Vec<(u8, HashSet<u128>)>,
}

fn mask4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl CidrSet {
    /// Compiles CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or single addresses.
    pub fn compile<S: AsRef<str>>(cidrs: &[S]) -> Result<CidrSet, String> {
        let mut set = CidrSet::default();
        for c in cidrs {
            set.insert(parse_cidr(c.as_ref())?);
        }
        Ok(set)
    }

    fn insert(&mut self, net: ipnet::IpNet) {
        match net {
            ipnet::IpNet::V4(n) => self.insert_v4(u32::from(n.network()), n.prefix_len()),
            ipnet::IpNet::V6(n) => match n.network().to_ipv4_mapped() {
                // Inside ::ffff:0:0/96: an IPv4 rule written in IPv6.
                Some(v4) if n.prefix_len() >= 96 => self.insert_v4(u32::from(v4), n.prefix_len() - 96),
                _ => {
                    let len = n.prefix_len();
                    let bits = u128::from(n.network()) & mask6(len);
                    match self.v6.iter_mut().find(|(l, _)| *l == len) {
                        Some((_, s)) => {
                            s.insert(bits);
                        }
                        None => self.v6.push((len, HashSet::from([bits]))),
                    }
                }
            },
        }
    }

    fn insert_v4(&mut self, addr: u32, len: u8) {
        let bits = addr & mask4(len);
        match self.v4.iter_mut().find(|(l, _)| *l == len) {
            Some((_, s)) => {
                s.insert(bits);
            }
            None => self.v4.push((len, HashSet::from([bits]))),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `ip` is in the set (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().any(|(len, s)| s.contains(&(a & mask4(*len))))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().any(|(len, s)| s.contains(&(a & mask6(*len))))
            }
        }
    }
}

/// One compiled `ip_filter` policy.
#[derive(Debug)]
pub struct IpRule {
    allow: CidrSet,
    deny: CidrSet,
    trusted_proxies: CidrSet,
}

impl IpRule {
    pub fn compile(f: &IpFilter) -> Result<IpRule, String> {
        Ok(IpRule {
            allow: CidrSet::compile(&f.allow).map_err(|m| format!("ip_filter.allow: {m}"))?,
            deny: CidrSet::compile(&f.deny).map_err(|m| format!("ip_filter.deny: {m}"))?,
            trusted_proxies: CidrSet::compile(&f.trusted_proxies)
                .map_err(|m| format!("ip_filter.trusted_proxies: {m}"))?,
        })
    }

    /// Whether the client may pass: deny wins; with an allow list, only what it names passes.
    pub fn admits(&self, client: IpAddr) -> bool {
        !self.deny.contains(client) && (self.allow.is_empty() || self.allow.contains(client))
    }

    /// Refuses the request unless its client (as this policy's trusted proxies see it) passes.
    pub fn check(&self, peer: SocketAddr, headers: &HeaderMap) -> Result<(), ProxyError> {
        let client = client_ip(peer.ip(), headers, &self.trusted_proxies);
        if self.admits(client) {
            Ok(())
        } else {
            Err(ProxyError::IpDenied)
        }
    }
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:80`,
/// `[2001:db8::1]:80`) or in brackets; anything else (`unknown`, obfuscated ids, empty) is
/// malformed.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = entry.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    let inner = entry.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(|a| IpAddr::V6(a).to_canonical())
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy; then the first
/// address from the right of `X-Forwarded-For` (all its lines, in order) that is not a
/// trusted proxy. A malformed entry stops the walk at the last trusted hop.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &CidrSet) -> IpAddr {
    let mut client = peer.to_canonical();
    if trusted.is_empty() || !trusted.contains(client) {
        return client;
    }
    let mut lines = Vec::new();
    for v in headers.get_all(crate::upstream::forward::X_FORWARDED_FOR) {
        match v.to_str() {
            Ok(s) => lines.push(s),
            // Not even text: believe none of it.
            Err(_) => return client,
        }
    }
    for entry in lines.iter().rev().flat_map(|l| l.rsplit(',')) {
        match parse_hop(entry) {
            Some(ip) => {
                client = ip;
                if !trusted.contains(ip) {
                    return client;
                }
            }
            None => return client,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(cidrs: &[&str]) -> CidrSet {
        CidrSet::compile(cidrs).unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cidr_matching_v4() {
        let s = set(&["10.0.0.0/8", "192.168.1.7", "172.16.0.0/12"]);
        assert!(s.contains(ip("10.255.1.2")));
        assert!(s.contains(ip("192.168.1.7")));
        assert!(!s.contains(ip("192.168.1.8")));
        assert!(s.contains(ip("172.31.255.255")));
        assert!(!s.contains(ip("172.32.0.0")));
        assert!(!s.contains(ip("11.0.0.1")));
        // Host bits in the rule are ignored (10.1.2.3/8 is 10.0.0.0/8).
        assert!(set(&["10.1.2.3/8"]).contains(ip("10.200.0.1")));
        let all = set(&["0.0.0.0/0"]);
        assert!(all.contains(ip("1.2.3.4")) && !all.contains(ip("2001:db8::1")));
        assert!(!set(&[]).contains(ip("1.2.3.4")));
    }

    #[test]
    fn cidr_matching_v6() {
        let s = set(&["2001:db8::/32", "fe80::1/128"]);
        assert!(s.contains(ip("2001:db8:ffff::1")));
        assert!(!s.contains(ip("2001:db9::1")));
        assert!(s.contains(ip("fe80::1")));
        assert!(!s.contains(ip("fe80::2")));
        assert!(!s.contains(ip("10.0.0.1")));
        let all = set(&["::/0"]);
        assert!(all.contains(ip("2001:db8::1")) && !all.contains(ip("10.0.0.1")));
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        // A mapped peer matches IPv4 rules...
        let v4 = set(&["10.0.0.0/8"]);
        assert!(v4.contains(ip("::ffff:10.1.2.3")));
        assert!(!v4.contains(ip("::ffff:11.1.2.3")));
        // ...and a mapped rule is an IPv4 rule.
        let mapped = set(&["::ffff:10.0.0.0/104"]);
        assert!(mapped.contains(ip("10.9.9.9")));
        assert!(mapped.contains(ip("::ffff:10.9.9.9")));
        assert!(!mapped.contains(ip("11.0.0.1")));
    }

    #[test]
    fn deny_wins_and_an_allow_list_refuses_the_rest() {
        let rule = IpRule::compile(&IpFilter {
            allow: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
            deny: vec!["10.6.6.0/24".into()],
            trusted_proxies: vec![],
        })
        .unwrap();
        assert!(rule.admits(ip("10.1.2.3")));
        assert!(rule.admits(ip("::ffff:10.1.2.3")));
        assert!(rule.admits(ip("2001:db8::5")));
        assert!(!rule.admits(ip("10.6.6.6")));
        assert!(!rule.admits(ip("8.8.8.8")));
        let deny_only = IpRule::compile(&IpFilter {
            allow: vec![],
            deny: vec!["8.8.8.8".into()],
            trusted_proxies: vec![],
        })
        .unwrap();
        assert!(!deny_only.admits(ip("8.8.8.8")));
        assert!(deny_only.admits(ip("8.8.4.4")));
        assert!(IpRule::compile(&IpFilter {
            allow: vec!["10.0.0.0/33".into()],
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let trusted = set(&["127.0.0.1"]);
        let peer = ip("192.0.2.9");
        assert_eq!(client_ip(peer, &xff(&["10.1.2.3"]), &trusted), peer);
        assert_eq!(client_ip(peer, &xff(&["10.1.2.3"]), &CidrSet::default()), peer);
        // X-Real-IP is never read.
        let mut h = HeaderMap::new();
        h.insert("x-real-ip", HeaderValue::from_static("10.1.2.3"));
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("127.0.0.1"));
    }

    #[test]
    fn forwarded_for_is_walked_from_the_right_past_trusted_proxies() {
        let trusted = set(&["127.0.0.1", "10.9.0.0/16"]);
        let lb = ip("127.0.0.1");
        assert_eq!(client_ip(lb, &xff(&["10.1.2.3"]), &trusted), ip("10.1.2.3"));
        // The rightmost untrusted entry decides; what the client wrote to its left is ignored.
        assert_eq!(
            client_ip(lb, &xff(&["10.1.2.3, 8.8.8.8"]), &trusted),
            ip("8.8.8.8")
        );
        assert_eq!(
            client_ip(lb, &xff(&["1.1.1.1, 8.8.8.8, 10.9.1.1 , 10.9.2.2"]), &trusted),
            ip("8.8.8.8")
        );
        // Several header lines are one list, in order.
        assert_eq!(
            client_ip(lb, &xff(&["8.8.8.8", "10.9.1.1"]), &trusted),
            ip("8.8.8.8")
        );
        // Ports, brackets and mapped addresses.
        assert_eq!(client_ip(lb, &xff(&["8.8.8.8:4711"]), &trusted), ip("8.8.8.8"));
        assert_eq!(
            client_ip(lb, &xff(&["[2001:db8::1]:80"]), &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_ip(lb, &xff(&["[2001:db8::1]"]), &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(client_ip(lb, &xff(&["::ffff:8.8.8.8"]), &trusted), ip("8.8.8.8"));
        // A mapped peer is trusted as its IPv4 address.
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &xff(&["8.8.8.8"]), &trusted),
            ip("8.8.8.8")
        );
        // No header: the proxy itself; all trusted: the leftmost.
        assert_eq!(client_ip(lb, &HeaderMap::new(), &trusted), lb);
        assert_eq!(
            client_ip(lb, &xff(&["10.9.3.3, 10.9.1.1"]), &trusted),
            ip("10.9.3.3")
        );
    }

    #[test]
    fn malformed_forwarded_for_stops_at_the_last_trusted_hop() {
        let trusted = set(&["127.0.0.1", "10.9.0.0/16"]);
        let lb = ip("127.0.0.1");
        for garbage in [
            "unknown",
            "",
            "10.1.2.3.4",
            "10.1.2.3, ",
            "_hidden",
            "10.1.2.3 8.8.8.8",
        ] {
            assert_eq!(client_ip(lb, &xff(&[garbage]), &trusted), lb, "{garbage:?}");
        }
        assert_eq!(
            client_ip(lb, &xff(&["8.8.8.8, bogus, 10.9.1.1"]), &trusted),
            ip("10.9.1.1")
        );
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"10.1.2.3\xff").unwrap(),
        );
        assert_eq!(client_ip(lb, &h, &trusted), lb);
    }
}
