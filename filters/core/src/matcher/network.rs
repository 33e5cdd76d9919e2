//! Authority (host name) patterns and client CIDR ranges.

use crate::config::index_path;
use crate::request::{parse_address_ip, RequestView};
use serde::Deserialize;
use std::net::IpAddr;

/// Host names, `*.suffix` wildcards or `*`; compared case-insensitively, port ignored unless
/// the pattern has one.
#[derive(Debug, Clone)]
pub struct AuthorityMatcher {
    patterns: Vec<String>,
}

impl<'de> Deserialize<'de> for AuthorityMatcher {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let v = match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        };
        if v.is_empty() {
            return Err(serde::de::Error::custom(
                "authority must list at least one host",
            ));
        }
        for p in &v {
            if p.is_empty()
                || (p.contains('*')
                    && !(p == "*" || (p.starts_with("*.") && !p[2..].contains('*'))))
            {
                return Err(serde::de::Error::custom(format!(
                    "invalid authority pattern {p:?}: use a host, \"*.suffix\" or \"*\""
                )));
            }
        }
        Ok(AuthorityMatcher {
            patterns: v.into_iter().map(|p| p.to_ascii_lowercase()).collect(),
        })
    }
}

impl AuthorityMatcher {
    pub fn matches(&self, authority: &str) -> bool {
        let full = authority.to_ascii_lowercase();
        let host = strip_port(&full);
        self.patterns.iter().any(|p| {
            let target = if has_port(p) { full.as_str() } else { host };
            if p == "*" {
                true
            } else if let Some(suffix) = p.strip_prefix("*.") {
                target.len() > suffix.len() + 1
                    && target.ends_with(suffix)
                    && target.as_bytes()[target.len() - suffix.len() - 1] == b'.'
            } else {
                target == p
            }
        })
    }
}

fn has_port(p: &str) -> bool {
    if p.starts_with('[') {
        p.contains("]:")
    } else {
        p.matches(':').count() == 1
    }
}

fn strip_port(a: &str) -> &str {
    if let Some(end) = a.strip_prefix('[').and_then(|r| r.find(']')) {
        return &a[..end + 2];
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => a,
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CidrSpec {
    ranges: Vec<String>,
    #[serde(default)]
    trusted_hops: u32,
}

/// Client address ranges: `["10.0.0.0/8", "::1/128"]`, or
/// `{"ranges": [...], "trusted_hops": N}` to test the `X-Forwarded-For` client.
#[derive(Debug, Clone)]
pub struct CidrMatcher {
    ranges: Vec<Cidr>,
    trusted_hops: u32,
}

impl<'de> Deserialize<'de> for CidrMatcher {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            List(Vec<String>),
            Spec(CidrSpec),
        }
        let (ranges, trusted_hops) = match Form::deserialize(d)? {
            Form::List(v) => (v, 0),
            Form::Spec(s) => (s.ranges, s.trusted_hops),
        };
        if ranges.is_empty() {
            return Err(serde::de::Error::custom(
                "client_cidr must list at least one range",
            ));
        }
        let mut out = Vec::new();
        for (i, r) in ranges.iter().enumerate() {
            out.push(Cidr::parse(r).map_err(|e| {
                serde::de::Error::custom(format!("{}: {e}", index_path("client_cidr", i)))
            })?);
        }
        Ok(CidrMatcher {
            ranges: out,
            trusted_hops,
        })
    }
}

impl CidrMatcher {
    pub fn matches(&self, req: &RequestView) -> bool {
        match req.client_ip(self.trusted_hops) {
            Some(ip) => self.ranges.iter().any(|c| c.contains(ip)),
            None => false,
        }
    }
}

/// An IPv4 or IPv6 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let net = parse_address_ip(addr)
            .filter(|_| !addr.contains(']') && (addr.parse::<IpAddr>().is_ok()))
            .ok_or_else(|| format!("invalid CIDR {s:?}"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("invalid prefix length in {s:?}"))?,
            None => max,
        };
        Ok(Cidr { net, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.net, ip) {
            (IpAddr::V6(_), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            _ => ip,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = (bits / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rem = bits % 8;
    if rem == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rem);
    (a[full] & mask) == (b[full] & mask)
}
