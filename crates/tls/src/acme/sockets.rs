//! `challenge_listen`: bound at start (port 443 or 80 needs the privileges postern drops
//! later), served on the control runtime by a small accept loop with a connection cap and a
//! deadline per connection, so a scanner on port 80 cannot take more than that.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postern_config::AcmeChallenge;
use postern_metrics::admin::accept_bounded;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::challenges::Challenges;
use super::error::AcmeError;
use super::{alpn, http01};

/// The bound `challenge_listen` sockets, handed from `Gateway::start` (before the privilege
/// drop) to the ACME task.
#[derive(Debug)]
pub struct ChallengeSockets {
    pub(crate) sockets: Vec<std::net::TcpListener>,
}

impl ChallengeSockets {
    /// The addresses actually bound (port 0 resolved), in configuration order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }
}

/// Binds every address; IPv6 sockets are v6-only so `[::]:443` and `0.0.0.0:443` coexist.
pub(crate) fn bind(addrs: &[SocketAddr], port: u16) -> Result<ChallengeSockets, AcmeError> {
    let mut sockets = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        let fail = |source| AcmeError::Bind { addr, port, source };
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(fail)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true).map_err(fail)?;
        }
        socket.set_reuse_address(true).map_err(fail)?;
        socket.set_nonblocking(true).map_err(fail)?;
        socket.bind(&addr.into()).map_err(fail)?;
        socket.listen(BACKLOG).map_err(fail)?;
        sockets.push(socket.into());
    }
    Ok(ChallengeSockets { sockets })
}

/// Which challenge type the sockets answer; switched by a config reload.
#[derive(Clone, Debug)]
pub(crate) struct ResponderKind(Arc<AtomicBool>);

impl ResponderKind {
    pub(crate) fn new(challenge: AcmeChallenge) -> ResponderKind {
        ResponderKind(Arc::new(AtomicBool::new(
            challenge == AcmeChallenge::Http01,
        )))
    }

    pub(crate) fn set(&self, challenge: AcmeChallenge) {
        self.0
            .store(challenge == AcmeChallenge::Http01, Ordering::Release);
    }

    fn get(&self) -> AcmeChallenge {
        if self.0.load(Ordering::Acquire) {
            AcmeChallenge::Http01
        } else {
            AcmeChallenge::TlsAlpn01
        }
    }
}

/// What answers on the challenge sockets: the tls-alpn-01 acceptor or the http-01 server,
/// whichever `kind` says, both from the same open challenges.
#[derive(Clone)]
pub(crate) struct Responder {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) challenges: Arc<Challenges>,
    pub(crate) kind: ResponderKind,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("kind", &self.kind.get())
            .finish_non_exhaustive()
    }
}

/// Serves every socket until `shutdown`.
pub(crate) fn spawn(
    sockets: ChallengeSockets,
    responder: Responder,
    shutdown: CancellationToken,
) -> Result<(), AcmeError> {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let challenge = responder.kind.get().as_str();
    for socket in sockets.sockets {
        let addr = socket.local_addr().ok();
        if let Some(addr) = addr {
            info!(%addr, challenge, "ACME challenge responder listening");
        }
        let listener = TcpListener::from_std(socket).map_err(|source| AcmeError::Bind {
            addr: addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            port: 0,
            source,
        })?;
        tokio::spawn(accept_loop(
            listener,
            responder.clone(),
            Arc::clone(&permits),
            shutdown.clone(),
        ));
    }
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    responder: Responder,
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    // Connections end by their own deadline; do not hold the shutdown for them.
    let _still_running = accept_bounded(
        "ACME challenge listener",
        &listener,
        &permits,
        &shutdown,
        |stream| {
            let _ = stream.set_nodelay(true);
            let responder = responder.clone();
            async move {
                match responder.kind.get() {
                    AcmeChallenge::TlsAlpn01 => {
                        alpn::serve(stream, responder.acceptor, CONNECTION_DEADLINE).await
                    }
                    AcmeChallenge::Http01 => {
                        http01::serve(stream, responder.challenges, CONNECTION_DEADLINE).await
                    }
                }
            }
        },
    )
    .await;
}

/// Validation connections open at once (a CA uses a few per name, e.g. three for pebble and
/// Let's Encrypt's multi-perspective validation).
const MAX_CONNECTIONS: usize = 64;
/// A validation connection is one request or one handshake.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
const BACKLOG: i32 = 128;
