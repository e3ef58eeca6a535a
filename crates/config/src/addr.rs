//! Parsing of listen addresses, backend server addresses, client networks, certificate
//! names and URLs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;

use crate::ServerAddr;

/// A listen address: an IP literal and a port (`0.0.0.0:993`, `[::]:993`).
pub(crate) fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    value.parse::<SocketAddr>().map_err(|_| {
        if value.parse::<Ipv6Addr>().is_ok() {
            "an IPv6 address needs brackets and a port, e.g. \"[::]:993\"".to_owned()
        } else if !value.contains(':') {
            "no port".to_owned()
        } else if value
            .rsplit_once(':')
            .is_some_and(|(host, _)| host.parse::<Ipv4Addr>().is_err() && !host.starts_with('['))
        {
            "the host must be an IP address, not a name".to_owned()
        } else {
            "not ip:port".to_owned()
        }
    })
}

/// A backend server: `host:port`, `[v6]:port` or `unix:/absolute/path`.
pub(crate) fn parse_server(value: &str) -> Result<ServerAddr, String> {
    if let Some(path) = value.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("the unix socket path is empty".to_owned());
        }
        if !path.starts_with('/') {
            return Err("the unix socket path must be absolute".to_owned());
        }
        return Ok(ServerAddr::Unix(PathBuf::from(path)));
    }
    if let Some(rest) = value.strip_prefix('[') {
        let Some((host, port)) = rest.split_once("]:") else {
            return Err("no port after the bracketed IPv6 address".to_owned());
        };
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{host:?} is not an IPv6 address"));
        }
        return Ok(ServerAddr::Tcp {
            host: host.to_owned(),
            port: parse_port(port)?,
        });
    }
    if value.parse::<Ipv6Addr>().is_ok() {
        return Err("an IPv6 address needs brackets and a port, e.g. \"[::1]:143\"".to_owned());
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err("no port".to_owned());
    };
    if host.contains(':') {
        return Err("put an IPv6 address in brackets, e.g. \"[::1]:143\"".to_owned());
    }
    check_host(host)?;
    Ok(ServerAddr::Tcp {
        host: host.to_owned(),
        port: parse_port(port)?,
    })
}

fn parse_port(port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(0) => Err("port 0 is not a server port".to_owned()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("{port:?} is not a port (1-65535)")),
    }
}

/// An IPv4 literal or a DNS name (letters, digits, `-`, `_`, dots between labels).
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host is empty".to_owned());
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    let labels_ok = host.len() <= 253
        && host.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if labels_ok {
        Ok(())
    } else {
        Err(format!("{host:?} is neither an IP address nor a host name"))
    }
}

/// Whether two server addresses name the same server: the same port and unix path, or
/// the same host (IP literals compared as addresses, names without regard to case).
pub(crate) fn same_server(a: &ServerAddr, b: &ServerAddr) -> bool {
    match (a, b) {
        (ServerAddr::Unix(a), ServerAddr::Unix(b)) => a == b,
        (ServerAddr::Tcp { host: ha, port: pa }, ServerAddr::Tcp { host: hb, port: pb }) => {
            pa == pb
                && match (ha.parse::<IpAddr>(), hb.parse::<IpAddr>()) {
                    (Ok(a), Ok(b)) => a == b,
                    _ => ha.eq_ignore_ascii_case(hb),
                }
        }
        _ => false,
    }
}

/// A client network: CIDR (`10.0.0.0/8`, `2001:db8::/32`) or one address (`192.0.2.7`,
/// `::1`). Host bits below the prefix are refused: `10.0.0.1/8` is more likely a typo for
/// `10.0.0.1/32` than a way to write `10.0.0.0/8`, so the admin says which one is meant.
pub(crate) fn parse_network(value: &str) -> Result<IpNet, String> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let Some((addr, len)) = value.split_once('/') else {
        return Err("neither an IP address nor addr/prefix".to_owned());
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address (write IPv6 without brackets)"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let net = len
        .parse::<u8>()
        .ok()
        .and_then(|len| IpNet::new(ip, len).ok())
        .ok_or_else(|| format!("the prefix length {len:?} is not 0 to {max}"))?;
    if net.trunc() != net {
        return Err(format!(
            "has bits set after the /{}: write {} for the network, or {}/{max} for the one address",
            net.prefix_len(),
            net.trunc(),
            ip
        ));
    }
    Ok(net)
}

/// A DNS name for a certificate, lower-cased and without a trailing dot: letters,
/// digits and hyphens, at least two labels, no wildcard.
pub(crate) fn parse_domain(value: &str) -> Result<String, String> {
    let name = value
        .strip_suffix('.')
        .unwrap_or(value)
        .to_ascii_lowercase();
    if name.starts_with("*.") {
        return Err(
            "a wildcard name needs the dns-01 challenge, which postern does not \
offer; list each name"
                .to_owned(),
        );
    }
    if name.parse::<IpAddr>().is_ok() {
        return Err("is an IP address; list DNS names".to_owned());
    }
    if !name.is_ascii() {
        return Err("has non-ASCII letters; write the name in its xn-- (punycode) form".to_owned());
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return Err("is not a fully qualified name; write e.g. \"mail.example.org\"".to_owned());
    }
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.len() > 253 || !labels.iter().all(label_ok) {
        return Err(
            "is not a valid DNS name (letters, digits and inner hyphens, \
dot-separated labels of 1-63 characters)"
                .to_owned(),
        );
    }
    Ok(name)
}

/// A TLS server name to verify: an IP literal or a DNS name.
pub(crate) fn check_tls_name(value: &str) -> Result<(), String> {
    if value.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    check_host(value)
}

/// An ACME directory URL: `https://host[:port]/path`. RFC 8555 §6.1 requires HTTPS.
pub(crate) fn check_directory_url(value: &str) -> Result<(), String> {
    let uri: http::Uri = value.parse().map_err(|_| "not a URL".to_owned())?;
    if uri.scheme_str() != Some("https") {
        return Err("ACME needs https:// (RFC 8555)".to_owned());
    }
    match uri.host() {
        Some(h) if !h.is_empty() => Ok(()),
        _ => Err("no host".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen("[::]:993").ok(),
            Some("[::]:993".parse().unwrap())
        );
        assert_eq!(
            parse_listen("0.0.0.0:993").ok(),
            Some("0.0.0.0:993".parse().unwrap())
        );
        assert_eq!(
            parse_listen("[::1]:0").ok(),
            Some("[::1]:0".parse().unwrap())
        );
        assert!(parse_listen("::1").unwrap_err().contains("brackets"));
        assert!(parse_listen("localhost:993")
            .unwrap_err()
            .contains("IP address"));
        assert_eq!(parse_listen("0.0.0.0").unwrap_err(), "no port");
        assert!(parse_listen("0.0.0.0:99999").is_err());
    }

    #[test]
    fn server_addresses() {
        let tcp = |h: &str, p| ServerAddr::Tcp {
            host: h.to_owned(),
            port: p,
        };
        assert_eq!(parse_server("127.0.0.1:143"), Ok(tcp("127.0.0.1", 143)));
        assert_eq!(
            parse_server("imap.internal:10143"),
            Ok(tcp("imap.internal", 10143))
        );
        assert_eq!(parse_server("[::1]:143"), Ok(tcp("::1", 143)));
        assert_eq!(
            parse_server("[2001:db8::5]:993").map(|a| a.to_string()),
            Ok("[2001:db8::5]:993".into())
        );
        assert_eq!(
            parse_server("unix:/run/dovecot/imap"),
            Ok(ServerAddr::Unix("/run/dovecot/imap".into()))
        );
        assert!(parse_server("unix:run/x").unwrap_err().contains("absolute"));
        assert!(parse_server("::1:143").unwrap_err().contains("brackets"));
        assert!(parse_server("::1").unwrap_err().contains("brackets"));
        assert!(parse_server("[::1]").unwrap_err().contains("no port"));
        assert!(parse_server("[zz]:1").unwrap_err().contains("not an IPv6"));
        assert_eq!(parse_server("host").unwrap_err(), "no port");
        assert!(parse_server("host:0").unwrap_err().contains("port 0"));
        assert!(parse_server("host:x").unwrap_err().contains("not a port"));
        assert!(parse_server("bad host:1").unwrap_err().contains("neither"));
        assert!(parse_server(":143").unwrap_err().contains("empty"));
    }

    #[test]
    fn networks() {
        let net = |s: &str| parse_network(s).map(|n| n.to_string());
        assert_eq!(net("10.0.0.0/8"), Ok("10.0.0.0/8".into()));
        assert_eq!(net("192.0.2.7"), Ok("192.0.2.7/32".into()));
        assert_eq!(net("::1"), Ok("::1/128".into()));
        assert_eq!(net("2001:db8::/32"), Ok("2001:db8::/32".into()));
        assert_eq!(net("0.0.0.0/0"), Ok("0.0.0.0/0".into()));
        assert!(net("10.0.0.1/8").unwrap_err().contains("write 10.0.0.0/8"));
        assert!(net("10.0.0.0/33").unwrap_err().contains("0 to 32"));
        assert!(net("::/129").unwrap_err().contains("0 to 128"));
        assert!(net("[::1]/128").unwrap_err().contains("without brackets"));
        assert!(net("10.0.0.0/x").is_err());
        assert!(net("").is_err());
        assert!(net("example.org").is_err());
    }

    #[test]
    fn domains() {
        assert_eq!(
            parse_domain("Mail.Example.ORG."),
            Ok("mail.example.org".into())
        );
        assert!(parse_domain("*.example.org")
            .unwrap_err()
            .contains("dns-01"));
        assert!(parse_domain("192.0.2.1")
            .unwrap_err()
            .contains("IP address"));
        assert!(parse_domain("mail")
            .unwrap_err()
            .contains("fully qualified"));
        assert!(parse_domain("bad_name.example.org").is_err());
        assert!(parse_domain("-x.example.org").is_err());
        assert!(parse_domain("a..example.org").is_err());
        assert!(parse_domain("müller.example")
            .unwrap_err()
            .contains("punycode"));
    }

    #[test]
    fn directory_urls() {
        assert!(check_directory_url("https://acme-v02.api.letsencrypt.org/directory").is_ok());
        assert!(check_directory_url("https://127.0.0.1:14000/dir").is_ok());
        assert!(check_directory_url("http://example.org/dir")
            .unwrap_err()
            .contains("https"));
        assert!(check_directory_url("example.org/dir").is_err());
        assert!(check_directory_url("not a url").is_err());
    }

    #[test]
    fn same_server_compares_ips_as_addresses() {
        let s = |v: &str| parse_server(v).unwrap();
        assert!(same_server(&s("[::1]:143"), &s("[0:0::1]:143")));
        assert!(same_server(&s("Imap.Example:143"), &s("imap.example:143")));
        assert!(!same_server(&s("127.0.0.1:143"), &s("127.0.0.1:993")));
        assert!(!same_server(&s("unix:/a"), &s("127.0.0.1:1")));
    }
}
