//! `allow` patterns: which destinations the clients of a `socks` or `http`
//! entry may name.
//!
//! Owns: parsing one `allow=` value (comma-separated patterns) into
//! [`Allow`]s, their normalised display, and matching a destination against
//! them ([`Allow::matches`], [`allowed`]). Never does: resolve a name (an IP
//! pattern matches only a destination the client gave as an IP literal).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use super::values::{check_dns_name, parse_port};

/// One `allow` pattern: a host part and a port range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    host: AllowHost,
    /// Inclusive; `(1, 65535)` when the pattern names no port.
    ports: (u16, u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AllowHost {
    /// `*`: every host.
    Any,
    /// `git.example.org`: that name only (lowercase, no final dot).
    Name(String),
    /// `.example.org` or `*.example.org`: the domain and every name under it.
    Domain(String),
    /// An address (`prefix` = full length) or a CIDR, host bits cleared.
    Net(IpAddr, u8),
}

const ALL_PORTS: (u16, u16) = (1, u16::MAX);

impl Allow {
    /// True when a client may name `host` (a DNS name, or an IP literal,
    /// IPv6 with or without brackets) at `port`.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if port < self.ports.0 || port > self.ports.1 {
            return false;
        }
        match &self.host {
            AllowHost::Any => true,
            AllowHost::Name(name) => {
                destination_ip(host).is_none() && normalise_name(host) == *name
            }
            AllowHost::Domain(domain) => {
                destination_ip(host).is_none() && in_domain(&normalise_name(host), domain)
            }
            AllowHost::Net(net, prefix) => {
                destination_ip(host).is_some_and(|ip| in_net(ip, *net, *prefix))
            }
        }
    }

    /// The patterns of one `allow=` value. A plain `*` makes the whole list
    /// "every destination", returned as the empty list.
    ///
    /// # Errors
    ///
    /// The first bad pattern, the message naming `allow` and the pattern.
    pub(super) fn parse_list(value: &str) -> Result<Vec<Allow>, String> {
        if value.is_empty() {
            return Err(
                "invalid allow \"\": expected comma-separated patterns, e.g. .example.org,10.0.0.0/8:22"
                    .to_string(),
            );
        }
        let mut out = Vec::new();
        let mut everything = false;
        for pattern in value.split(',') {
            let allow = parse_pattern(pattern)
                .map_err(|reason| format!("invalid allow pattern {pattern:?}: {reason}"))?;
            if allow.host == AllowHost::Any && allow.ports == ALL_PORTS {
                everything = true;
            } else if !out.contains(&allow) {
                out.push(allow);
            }
        }
        if everything {
            out.clear();
        }
        Ok(out)
    }
}

/// True when `allow` lets a client name `host` at `port`: the list is empty
/// (every destination) or one of its patterns matches.
pub fn allowed(allow: &[Allow], host: &str, port: u16) -> bool {
    allow.is_empty() || allow.iter().any(|a| a.matches(host, port))
}

fn parse_pattern(pattern: &str) -> Result<Allow, String> {
    if pattern.is_empty() {
        return Err("empty pattern".to_string());
    }
    let (host, ports) = if let Some(rest) = pattern.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| "missing ']' after an IPv6 address".to_string())?;
        let ports = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| "expected :PORT or :LO-HI after ']'".to_string())?,
            ),
        };
        let (ip, prefix) = parse_net(inner)?;
        if !ip.is_ipv6() {
            return Err("brackets are for IPv6 addresses only".to_string());
        }
        (AllowHost::Net(ip, prefix), ports)
    } else if pattern.matches(':').count() > 1 {
        // A bare IPv6 address: its colons leave no room for a port.
        let addr = pattern.split('/').next().unwrap_or(pattern);
        if addr.parse::<IpAddr>().is_err() {
            return Err(format!(
                "{addr:?} is not an IP address (write an IPv6 pattern with a port as [fd00::/8]:22)"
            ));
        }
        let (ip, prefix) = parse_net(pattern)?;
        (AllowHost::Net(ip, prefix), None)
    } else {
        let (host, ports) = match pattern.split_once(':') {
            Some((host, ports)) => (host, Some(ports)),
            None => (pattern, None),
        };
        (parse_host_pattern(host)?, ports)
    };
    let ports = match ports {
        None => ALL_PORTS,
        Some(ports) => parse_ports(ports)?,
    };
    Ok(Allow { host, ports })
}

fn parse_host_pattern(host: &str) -> Result<AllowHost, String> {
    if host == "*" {
        return Ok(AllowHost::Any);
    }
    if host.contains('/') || host.parse::<IpAddr>().is_ok() {
        let (ip, prefix) = parse_net(host)?;
        return Ok(AllowHost::Net(ip, prefix));
    }
    let (domain, name) = match host.strip_prefix("*.").or_else(|| host.strip_prefix('.')) {
        Some(domain) => (true, domain),
        None => (false, host),
    };
    if name.is_empty() {
        return Err("empty domain".to_string());
    }
    if name.contains('*') {
        return Err("'*' only as the whole host, or as *. before a domain".to_string());
    }
    check_dns_name(name)?;
    let name = normalise_name(name);
    Ok(if domain {
        AllowHost::Domain(name)
    } else {
        AllowHost::Name(name)
    })
}

/// `ADDR` or `ADDR/PREFIX`; host bits are cleared.
pub(super) fn parse_net(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("prefix length {p:?} out of range 0-{max}")),
        },
    };
    Ok((mask(ip, prefix), prefix))
}

fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = match s.split_once('-') {
        Some((lo, hi)) => (parse_port(lo, "allow")?, parse_port(hi, "allow")?),
        None => {
            let port = parse_port(s, "allow")?;
            (port, port)
        }
    };
    if lo > hi {
        return Err(format!("port range {lo}-{hi} goes backwards"));
    }
    Ok((lo, hi))
}

/// The address of a destination given as an IP literal (IPv6 bracketed or
/// not; an IPv4-mapped IPv6 address as its IPv4 address).
pub(super) fn destination_ip(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip: IpAddr = bare.parse().ok()?;
    Some(match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    })
}

/// Lowercase, without a final dot.
pub(super) fn normalise_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// True when `name` is `domain` or a name under it (both normalised).
pub(super) fn in_domain(name: &str, domain: &str) -> bool {
    name == domain
        || (name.len() > domain.len()
            && name.ends_with(domain)
            && name.as_bytes()[name.len() - domain.len() - 1] == b'.')
}

/// True when `ip` is inside `net/prefix` (same family only).
pub(super) fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => mask(ip, prefix) == net,
        _ => false,
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & kept).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & kept))
        }
    }
}

/// `ADDR` or `ADDR/PREFIX`, the prefix left out at full length.
pub(super) fn format_net(ip: IpAddr, prefix: u8) -> String {
    let full = if ip.is_ipv4() { 32 } else { 128 };
    if prefix == full {
        ip.to_string()
    } else {
        format!("{ip}/{prefix}")
    }
}

impl fmt::Display for Allow {
    /// The pattern as `--check` prints it, which reads back the same:
    /// `*`, `git.example.org`, `.example.org`, `10.0.0.0/8`, `fd00::/8`,
    /// each with `:PORT` or `:LO-HI` when it has one (`[fd00::/8]:22`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let has_ports = self.ports != ALL_PORTS;
        match &self.host {
            AllowHost::Any => f.write_str("*")?,
            AllowHost::Name(name) => f.write_str(name)?,
            AllowHost::Domain(domain) => write!(f, ".{domain}")?,
            AllowHost::Net(ip, prefix) if ip.is_ipv6() && has_ports => {
                write!(f, "[{}]", format_net(*ip, *prefix))?
            }
            AllowHost::Net(ip, prefix) => f.write_str(&format_net(*ip, *prefix))?,
        }
        match self.ports {
            ALL_PORTS => Ok(()),
            (lo, hi) if lo == hi => write!(f, ":{lo}"),
            (lo, hi) => write!(f, ":{lo}-{hi}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;

    fn list(value: &str) -> Vec<Allow> {
        Allow::parse_list(value).unwrap_or_else(|e| panic!("{value}: {e}"))
    }

    fn shown(value: &str) -> String {
        list(value)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn matching_table() {
        // (patterns, host, port, allowed)
        let cases: &[(&str, &str, u16, bool)] = &[
            // SPEC's examples.
            ("git.example.org", "git.example.org", 443, true),
            ("git.example.org", "www.example.org", 443, false),
            ("git.example.org", "a.git.example.org", 443, false),
            (".example.org", "example.org", 80, true),
            (".example.org", "git.example.org", 80, true),
            (".example.org", "a.b.example.org", 80, true),
            (".example.org", "notexample.org", 80, false),
            (".example.org", "example.org.evil", 80, false),
            ("*.example.org", "example.org", 80, true),
            ("*.example.org", "x.example.org", 80, true),
            ("10.0.0.0/8", "10.1.2.3", 22, true),
            ("10.0.0.0/8", "11.0.0.1", 22, false),
            ("fd00::/8", "fd12::1", 22, true),
            ("fd00::/8", "[fd12::1]", 22, true),
            ("fd00::/8", "fe80::1", 22, false),
            ("[fd00::/8]:22", "fd00::5", 22, true),
            ("[fd00::/8]:22", "fd00::5", 23, false),
            ("*", "anything.example", 1, true),
            ("*", "192.0.2.1", 65535, true),
            // Names are not resolved, IPs are not names.
            ("10.0.0.0/8", "ten.example", 22, false),
            ("localhost", "127.0.0.1", 22, false),
            (".example.org", "10.0.0.1", 22, false),
            // Case and a final dot.
            ("Git.Example.ORG", "GIT.example.org.", 1, true),
            (".Example.org.", "X.EXAMPLE.ORG", 1, true),
            ("git.example.org.", "git.example.org", 1, true),
            // Ports and ranges, inclusive.
            ("h:22", "h", 22, true),
            ("h:22", "h", 2222, false),
            ("h:1000-2000", "h", 1000, true),
            ("h:1000-2000", "h", 2000, true),
            ("h:1000-2000", "h", 999, false),
            ("h:1000-2000", "h", 2001, false),
            ("*:443", "any.host", 443, true),
            ("*:443", "any.host", 80, false),
            ("10.1.2.3:22", "10.1.2.3", 22, true),
            ("10.1.2.3:22", "10.1.2.4", 22, false),
            // A single address; IPv4-mapped IPv6 counts as IPv4.
            ("192.0.2.7", "192.0.2.7", 1, true),
            ("192.0.2.7", "192.0.2.8", 1, false),
            ("10.0.0.0/8", "::ffff:10.0.0.1", 1, true),
            ("::1", "::1", 1, true),
            ("::1", "[::1]", 1, true),
            ("::1", "127.0.0.1", 1, false),
            // /0 is the whole family only.
            ("0.0.0.0/0", "203.0.113.9", 1, true),
            ("0.0.0.0/0", "2001:db8::1", 1, false),
            ("::/0", "2001:db8::1", 1, true),
            // A list: any pattern.
            (".a.example,10.0.0.0/8:22", "x.a.example", 9, true),
            (".a.example,10.0.0.0/8:22", "10.9.9.9", 22, true),
            (".a.example,10.0.0.0/8:22", "10.9.9.9", 23, false),
        ];
        for &(patterns, host, port, expected) in cases {
            assert_eq!(
                allowed(&list(patterns), host, port),
                expected,
                "{patterns} vs {host}:{port}"
            );
        }
        assert!(allowed(&[], "x", 1), "empty list = everything");
    }

    #[test]
    fn patterns_normalise_for_display() {
        assert_eq!(shown("Git.Example.org."), "git.example.org");
        assert_eq!(shown("*.example.org,.example.org"), ".example.org");
        assert_eq!(shown("10.1.2.3/8"), "10.0.0.0/8");
        assert_eq!(shown("10.0.0.1/32,10.0.0.1"), "10.0.0.1");
        assert_eq!(shown("FD00::1/8"), "fd00::/8");
        assert_eq!(shown("[fd00::/8]"), "fd00::/8");
        assert_eq!(shown("[fd00::1]:22-22"), "[fd00::1]:22");
        assert_eq!(shown("h:1-65535"), "h");
        assert_eq!(shown("*:22,h:10-20"), "*:22,h:10-20");
        assert_eq!(shown("a,*,b"), "");
        for value in [
            "git.example.org",
            ".example.org,10.0.0.0/8:22",
            "[fd00::/8]:22-80,*:443",
        ] {
            assert_eq!(shown(&shown(value)), shown(value), "{value}");
            assert_eq!(list(&shown(value)), list(value), "{value}");
        }
    }

    #[test]
    fn pattern_errors() {
        for (value, message) in [
            ("", "invalid allow \"\": expected comma-separated patterns, e.g. .example.org,10.0.0.0/8:22"),
            ("a,,b", "invalid allow pattern \"\": empty pattern"),
            ("a,", "invalid allow pattern \"\": empty pattern"),
            (".", "invalid allow pattern \".\": empty domain"),
            ("*.", "invalid allow pattern \"*.\": empty domain"),
            ("a.*.org", "invalid allow pattern \"a.*.org\": '*' only as the whole host, or as *. before a domain"),
            ("**", "invalid allow pattern \"**\": '*' only as the whole host, or as *. before a domain"),
            ("bad!name", "invalid allow pattern \"bad!name\": character '!' not allowed in a host name"),
            ("10.0.0.0/33", "invalid allow pattern \"10.0.0.0/33\": prefix length \"33\" out of range 0-32"),
            ("10.0.0.0/x", "invalid allow pattern \"10.0.0.0/x\": prefix length \"x\" out of range 0-32"),
            ("fd00::/129", "invalid allow pattern \"fd00::/129\": prefix length \"129\" out of range 0-128"),
            ("name/8", "invalid allow pattern \"name/8\": \"name\" is not an IP address"),
            ("fd00::1:x", "invalid allow pattern \"fd00::1:x\": \"fd00::1:x\" is not an IP address (write an IPv6 pattern with a port as [fd00::/8]:22)"),
            ("[10.0.0.1]:22", "invalid allow pattern \"[10.0.0.1]:22\": brackets are for IPv6 addresses only"),
            ("[fd00::1", "invalid allow pattern \"[fd00::1\": missing ']' after an IPv6 address"),
            ("[fd00::1]22", "invalid allow pattern \"[fd00::1]22\": expected :PORT or :LO-HI after ']'"),
            ("h:0", "invalid allow pattern \"h:0\": port \"0\" out of range 1-65535 in allow"),
            ("h:ssh", "invalid allow pattern \"h:ssh\": invalid port \"ssh\" in allow: expected a number 1-65535"),
            ("h:", "invalid allow pattern \"h:\": invalid port \"\" in allow: expected a number 1-65535"),
            ("h:20-10", "invalid allow pattern \"h:20-10\": port range 20-10 goes backwards"),
            ("h:1-2-3", "invalid allow pattern \"h:1-2-3\": invalid port \"2-3\" in allow: expected a number 1-65535"),
        ] {
            assert_eq!(Allow::parse_list(value), Err(message.to_string()), "{value}");
        }
    }

    #[test]
    fn allow_on_entries() {
        let entry = one("2222 socks allow=.example.org allow=10.0.0.0/8:22,[fd00::/8]:22");
        assert_eq!(
            entry.allow,
            list(".example.org,10.0.0.0/8:22,[fd00::/8]:22")
        );
        assert!(one("2222 http").allow.is_empty());
        assert!(one("2222 http allow=*").allow.is_empty());
        // Defaults: client-named entries only; an entry's own list replaces them.
        let config = ok("defaults allow=.corp\n2222 socks\n2223 h 22\n2224 http allow=*:443\n");
        assert_eq!(config.entries[0].allow, list(".corp"));
        assert!(config.entries[1].allow.is_empty());
        assert_eq!(config.entries[2].allow, list("*:443"));
        assert_eq!(
            err1("2222 h 22 allow=.corp"),
            "x.conf:1: option \"allow\" needs a socks or http entry (where the client names the destination)"
        );
        assert_eq!(
            err1("2222 h 22 p 1 allow=x allow=y"),
            "x.conf:1: option \"allow\" needs a socks or http entry (where the client names the destination)"
        );
        assert_eq!(
            err1("2222 socks allow=a,,b"),
            "x.conf:1: invalid allow pattern \"\": empty pattern"
        );
    }
}
