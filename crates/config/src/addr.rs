//! Parsing of listen addresses and backend server addresses.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

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
}
