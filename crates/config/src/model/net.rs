//! Sets of client networks (`allow`, `deny`, `proxy_from`, `[limits] exempt`).

use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

/// A set of IP networks written as CIDR (`10.0.0.0/8`, `2001:db8::/32`) or single
/// addresses (`192.0.2.7` = `/32`, `::1` = `/128`).
///
/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.7`, what a dual-stack socket reports for an
/// IPv4 client) match the IPv4 networks, and an IPv4-mapped network written in IPv6 form
/// (`::ffff:10.0.0.0/104`) is kept as the IPv4 network it means, so that one address is
/// never in a set in one spelling and out of it in the other.
///
/// Lookups scan the list; configurations hold a handful of networks, not a routing table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkSet {
    nets: Vec<IpNet>,
}

impl NetworkSet {
    /// The set of these networks (each taken as the network it means, see the type docs).
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        NetworkSet {
            nets: nets.into_iter().map(unmap_net).collect(),
        }
    }

    /// Whether `addr` is in one of the networks.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.nets.iter().any(|n| n.contains(&addr))
    }

    /// No networks at all.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The networks, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &IpNet> {
        self.nets.iter()
    }
}

impl fmt::Display for NetworkSet {
    /// `10.0.0.0/8, ::1/128`, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nets.is_empty() {
            return f.write_str("none");
        }
        for (i, n) in self.nets.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

/// `::ffff:a.b.c.d/p` with `p >= 96` is the IPv4 network `a.b.c.d/(p-96)`.
fn unmap_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let (Some(v4), Some(len)) = (v6.addr().to_ipv4_mapped(), v6.prefix_len().checked_sub(96))
        {
            if let Ok(v4) = Ipv4Net::new(v4, len) {
                return IpNet::V4(v4);
            }
        }
    }
    net
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(nets: &[&str]) -> NetworkSet {
        NetworkSet::new(nets.iter().map(|n| n.parse::<IpNet>().unwrap()))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn contains_by_family_and_prefix() {
        let s = set(&["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"]);
        assert!(s.contains(ip("10.255.0.1")));
        assert!(!s.contains(ip("11.0.0.1")));
        assert!(s.contains(ip("2001:db8:1::5")));
        assert!(!s.contains(ip("2001:db9::5")));
        assert!(s.contains(ip("192.0.2.7")));
        assert!(!s.contains(ip("192.0.2.8")));
        assert!(!NetworkSet::default().contains(ip("10.0.0.1")));
    }

    #[test]
    fn ipv4_mapped_addresses_match_ipv4_networks() {
        let s = set(&["10.0.0.0/8"]);
        assert!(s.contains(ip("::ffff:10.1.2.3")));
        assert!(!s.contains(ip("::ffff:11.1.2.3")));
        let mapped = set(&["::ffff:10.0.0.0/104"]);
        assert_eq!(
            mapped, s,
            "a mapped network is kept as the IPv4 network it means"
        );
        assert!(mapped.contains(ip("10.1.2.3")));
        assert!(mapped.contains(ip("::ffff:10.1.2.3")));
        // IPv4-compatible or other IPv6 networks stay IPv6.
        assert!(!set(&["::/96"]).contains(ip("10.1.2.3")));
        assert!(set(&["::/0"]).contains(ip("2001:db8::1")));
    }

    #[test]
    fn displays_as_written() {
        assert_eq!(
            set(&["10.0.0.0/8", "::1/128"]).to_string(),
            "10.0.0.0/8, ::1/128"
        );
        assert_eq!(NetworkSet::default().to_string(), "none");
    }
}
