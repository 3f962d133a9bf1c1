//! IP literals and CIDR ranges.
//!
//! Only two spellings count as IP literals: IPv4 as four dot-separated decimal octets (no
//! leading zeros), and IPv6 written with hex digits and colons only (`::` allowed). Embedded
//! IPv4 (`::ffff:1.2.3.4`), zone ids and hostnames are plain strings.

use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IpLit {
    V4(u32),
    V6(u128),
}

/// Parses `s` when it is an IP literal in one of the accepted spellings.
pub(crate) fn parse_ip(s: &str) -> Option<IpLit> {
    let first = *s.as_bytes().first()?;
    if s.len() > 39 || !(first.is_ascii_hexdigit() || first == b':') {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return s.parse::<Ipv4Addr>().ok().map(|a| IpLit::V4(a.into()));
    }
    if s.contains(':') && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
        return s.parse::<Ipv6Addr>().ok().map(|a| IpLit::V6(a.into()));
    }
    None
}

/// A compiled `cidr` operand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cidr {
    v6: bool,
    base: u128,
    mask: u128,
}

impl Cidr {
    /// Parses `addr/bits`; IPv4 masks must be 0-31 and IPv6 masks 0-127.
    pub(crate) fn parse(text: &str) -> Result<Cidr, String> {
        let bad = || format!("{text:?} is not a valid CIDR range");
        let (addr, bits) = text.split_once('/').ok_or_else(bad)?;
        if bits.is_empty() || bits.len() > 3 || !bits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let bits: u32 = bits.parse().map_err(|_| bad())?;
        match parse_ip(addr) {
            Some(IpLit::V4(a)) if bits < 32 => {
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                Ok(Cidr {
                    v6: false,
                    base: u128::from(a & mask),
                    mask: u128::from(mask),
                })
            }
            Some(IpLit::V6(a)) if bits < 128 => {
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                Ok(Cidr {
                    v6: true,
                    base: a & mask,
                    mask,
                })
            }
            Some(IpLit::V4(_)) => Err(format!("{text:?}: IPv4 CIDR mask must be between 0 and 31")),
            Some(IpLit::V6(_)) => Err(format!(
                "{text:?}: IPv6 CIDR mask must be between 0 and 127"
            )),
            None => Err(bad()),
        }
    }

    /// True for a string that is an address of the same family inside the range.
    pub(crate) fn contains(&self, s: &str) -> bool {
        match parse_ip(s) {
            Some(IpLit::V4(a)) if !self.v6 => u128::from(a) & self.mask == self.base,
            Some(IpLit::V6(a)) if self.v6 => a & self.mask == self.base,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals() {
        assert_eq!(parse_ip("10.0.0.1"), Some(IpLit::V4(0x0a00_0001)));
        assert_eq!(parse_ip("2001:0DB8:0:0:0:0:0:1"), parse_ip("2001:db8::1"));
        assert_eq!(parse_ip("::1"), parse_ip("0:0:0:0:0:0:0:1"));
        for s in [
            "",
            "010.0.0.1",
            "1.2.3",
            "::ffff:1.2.3.4",
            "fe80::1%eth0",
            "host",
            "300.1.1.1",
            "abc",
        ] {
            assert_eq!(parse_ip(s), None, "{s}");
        }
    }

    #[test]
    fn ranges() {
        let c = Cidr::parse("10.0.0.5/24").unwrap();
        assert!(c.contains("10.0.0.255"));
        assert!(!c.contains("10.0.1.0"));
        assert!(!c.contains("::a00:1"));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("255.255.255.255")
        );
        let c6 = Cidr::parse("2001:DB8::/32").unwrap();
        assert!(c6.contains("2001:db8:ffff::1"));
        assert!(!c6.contains("2001:db9::1"));
        assert!(!c6.contains("10.0.0.1"));
        for bad in [
            "10.0.0.0/32",
            "::/128",
            "10.0.0.0",
            "10.0.0.0/-1",
            "10.0.0.0/33",
            "10.0.0.0/abc",
            "300.0.0.0/8",
            "::ffff:10.0.0.0/104",
            " 10.0.0.0/8",
            "10.0.0.0/8/8",
            "host/8",
            "10.0.0.0/",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
