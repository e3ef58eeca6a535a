//! Binding listening sockets with SO_REUSEPORT.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// A listen address could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another process (or listener) holds the address.
    #[error("cannot listen on {addr}: the address is already in use; stop the other server on that port or change `listen` of listener {listener:?}")]
    InUse {
        /// The address.
        addr: SocketAddr,
        /// The listener's name.
        listener: String,
    },
    /// Ports below 1024 need privilege.
    #[error("cannot listen on {addr}: permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE (systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE), or change `listen` of listener {listener:?}")]
    Denied {
        /// The address.
        addr: SocketAddr,
        /// The listener's name.
        listener: String,
    },
    /// The address is not configured on this host.
    #[error("cannot listen on {addr}: no such address on this host; check `listen` of listener {listener:?}")]
    NotAvailable {
        /// The address.
        addr: SocketAddr,
        /// The listener's name.
        listener: String,
    },
    /// Any other socket error.
    #[error("cannot listen on {addr} for listener {listener:?}")]
    Other {
        /// The address.
        addr: SocketAddr,
        /// The listener's name.
        listener: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Listen backlog: large enough for reconnect storms after a restart at ISP scale; the
/// kernel caps it at net.core.somaxconn.
const BACKLOG: i32 = 4096;

/// Binds `count` sockets on `addr`, each with SO_REUSEPORT, so that the kernel spreads
/// incoming connections across the workers that own them.
///
/// With port 0 the first socket picks a port and the others bind to that same port.
pub fn bind_reuseport(
    listener: &str,
    addr: SocketAddr,
    count: usize,
) -> Result<Vec<std::net::TcpListener>, BindError> {
    let mut sockets = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = bind_one(addr).map_err(|source| classify(listener, addr, source))?;
        if addr.port() == 0 {
            addr = socket
                .local_addr()
                .map_err(|source| classify(listener, addr, source))?;
        }
        sockets.push(socket);
    }
    Ok(sockets)
}

fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // Lets `[::]:993` and `0.0.0.0:993` both be configured, as in the default config.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

fn classify(listener: &str, addr: SocketAddr, source: io::Error) -> BindError {
    let listener = listener.to_owned();
    match source.raw_os_error() {
        Some(libc::EADDRINUSE) => BindError::InUse { addr, listener },
        Some(libc::EACCES) | Some(libc::EPERM) => BindError::Denied { addr, listener },
        Some(libc::EADDRNOTAVAIL) => BindError::NotAvailable { addr, listener },
        _ => BindError::Other {
            addr,
            listener,
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_binds_all_sockets_to_one_port() {
        let socks = bind_reuseport("t", "127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let ports: Vec<u16> = socks
            .iter()
            .map(|s| s.local_addr().unwrap().port())
            .collect();
        assert!(ports.iter().all(|p| *p == ports[0] && *p != 0), "{ports:?}");
    }

    #[test]
    fn in_use_names_address_and_listener() {
        // A plain socket without SO_REUSEPORT blocks ours.
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = plain.local_addr().unwrap();
        let err = bind_reuseport("imaps", addr, 1).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&addr.to_string()) && msg.contains("imaps") && msg.contains("in use"),
            "{msg}"
        );
    }
}
