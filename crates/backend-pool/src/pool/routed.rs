//! What `route = "user"` needs from a pool: the servers as placement sees them, and a
//! connect to the one server placement chose, with no failover (another server would split
//! the user's sessions; a server that fails is marked down by health and placement moves
//! its users).

use postern_config::ServerAddr;

use super::{ClientInfo, Pool, Target};
use crate::error::PoolError;
use crate::pool::BackendConn;

/// One server of a pool, as placement and `postern ctl servers` see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStatus {
    /// The label (`10.0.0.5:143`, `unix:/run/imap.sock`): log field, metric label, `ctl` name.
    pub label: String,
    /// The host, the placement key: the host part of a `host:port` server (an IPv6 literal
    /// without brackets), the path of a unix socket.
    pub host: String,
    /// The port (none for a unix socket).
    pub port: Option<u16>,
    /// The `servers` entry it comes from: the address itself, or for an address a host
    /// name resolved to, that name (`weights` are keyed by it).
    pub addr: ServerAddr,
    /// Passing its health checks.
    pub up: bool,
    /// Up/down changes since the pool was built (a change between two looks shows here).
    pub transitions: u64,
    /// Sessions relayed to it now.
    pub sessions: usize,
}

impl Pool {
    /// The pool's servers in config order; empty for an exec backend.
    pub fn servers(&self) -> Vec<ServerStatus> {
        let Target::Servers(list) = &self.target else {
            return Vec::new();
        };
        list.load()
            .iter()
            .map(|s| {
                let (host, port) = match &s.addr {
                    ServerAddr::Tcp { host, port } => (host.clone(), Some(*port)),
                    ServerAddr::Unix(path) => (path.display().to_string(), None),
                };
                ServerStatus {
                    label: s.label.clone(),
                    host,
                    port,
                    addr: s.origin.clone(),
                    up: s.is_up(),
                    transitions: s.health.transitions(),
                    sessions: s.active(),
                }
            })
            .collect()
    }

    /// Connects to the server labelled `server` only (within `connect_timeout`), as
    /// [`Pool::connect`] does for each server it tries: PROXY header, greeting check,
    /// forwarding, passive health. No failover.
    pub async fn connect_to(
        &self,
        server: &str,
        client: ClientInfo,
    ) -> Result<BackendConn, PoolError> {
        let gone = || PoolError::ServerGone {
            backend: self.name.clone(),
            server: server.to_owned(),
        };
        let Target::Servers(list) = &self.target else {
            return Err(gone());
        };
        let servers = list.load();
        let server = servers
            .iter()
            .find(|s| s.label == server)
            .ok_or_else(gone)?;
        let slot =
            server
                .try_reserve(self.max_per_server)
                .ok_or_else(|| PoolError::ServerFull {
                    backend: self.name.clone(),
                    server: server.label.clone(),
                    limit: self.max_per_server,
                })?;
        match self
            .connect_one(server, &client, self.connect_timeout)
            .await
        {
            Ok((stream, greeting)) => Ok(self.ready(server, stream, greeting, slot)),
            Err(error) => Err(PoolError::ServerFailed {
                backend: self.name.clone(),
                source: error,
            }),
        }
    }
}

impl Pool {
    /// `route = "user"`: what every server that is up offers before login (the intersection
    /// of their last learned capabilities); None until a probe has learned any.
    pub fn capabilities(&self) -> Option<postern_proto::capabilities::Capabilities> {
        let Target::Servers(list) = &self.target else {
            return None;
        };
        let learned: Vec<_> = list
            .load()
            .iter()
            .filter(|s| s.is_up())
            .filter_map(|s| s.caps.get())
            .collect();
        let (first, rest) = learned.split_first()?;
        Some(
            rest.iter()
                .fold((**first).clone(), |acc, c| acc.intersect(c)),
        )
    }
}
