//! The session path of a `route = "user"` backend: postern answers the pre-login dialogue
//! itself ([`Prelogin`]), asks the director for the user's server, connects to that server
//! only, replays the client's login bytes, and relays as `route = "connection"` does, with
//! the session registered where the director can ask it to leave.

use std::sync::Arc;

use postern_backend_pool::{BackendConn, ClientInfo};
use postern_config::TlsMode;
use postern_director::{Director, Registration, RoutedSession};
use postern_metrics::SessionOutcome;
use postern_proto::capfilter::CapabilityFilter;
use postern_proto::imap_state::ImapState;
use postern_proto::login_guard::LoginGuard;
use postern_proto::prelogin::{Login, PreStep, Prelogin, PreloginLimits, ReplySwallow};
use postern_proto::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{SessionHandler, SessionPolicy, CLOSE_GRACE};
use crate::client_tls::ClientTls;
use crate::edge::Admission;
use crate::logins::LoginSink;
use crate::record::{SessionRecord, TlsFacts};
use crate::relay::{relay, Filters, Prelogin as RelayPrelogin, RelayPlan};

/// Where a listener's sessions are routed by user: the director and the backend's name.
#[derive(Clone, Debug)]
pub struct UserRouting {
    /// The process's director (placement, registry).
    pub director: Arc<Director>,
    /// The `[[backend]]` name.
    pub backend: String,
}

/// Bytes read from the client at a time before the login (the prelogin bounds what it
/// holds; this bounds each read on top).
const READ_CHUNK: usize = 4096;

/// How the pre-login dialogue ended without a login.
enum PreEnd {
    Closed,
    Shutdown,
    ClientError,
}

/// What a routed session takes over from the session driver.
pub(super) struct Context<'a> {
    pub(super) client: ClientInfo,
    pub(super) goodbye: &'a postern_listener::Goodbye,
    pub(super) policy: &'a SessionPolicy,
    pub(super) route: &'a UserRouting,
    pub(super) edge: &'a Admission,
    /// `limits.prelogin_timeout` from the accept.
    pub(super) prelogin_deadline: Instant,
}

impl SessionHandler {
    /// Runs a routed session on an established TLS connection.
    pub(super) async fn routed(
        &self,
        mut tls: ClientTls<TcpStream>,
        tls_facts: TlsFacts,
        ctx: Context<'_>,
    ) -> SessionRecord {
        let Context {
            client,
            goodbye,
            policy,
            route,
            edge,
            prelogin_deadline,
        } = ctx;
        let s = &policy.settings;
        let ended = |outcome| SessionRecord {
            tls: Some(TlsFacts {
                version: tls_facts.version,
                sni: tls_facts.sni.clone(),
            }),
            ..SessionRecord::ended(outcome)
        };
        if !policy.pool.any_up() {
            warn!("no backend server reachable; sending the goodbye");
            close_with(&mut tls, s.protocol.unavailable_goodbye()).await;
            return ended(SessionOutcome::BackendUnavailable);
        }
        let caps = policy.pool.capabilities();
        let mut pre = Prelogin::new(
            s.protocol,
            &s.hostname,
            caps.as_ref(),
            PreloginLimits {
                max_line_length: s.max_line_length,
                max_commands: s.max_plaintext_commands,
            },
        );
        // postern's greeting is due on implicit TLS; a STARTTLS client had the plaintext
        // phase's, except that ManageSieve lists the capabilities again after the upgrade
        // (RFC 5804), and its greeting is that list.
        let greet = s.tls == TlsMode::Implicit || s.protocol == Protocol::Sieve;
        let remaining = prelogin_deadline.saturating_duration_since(Instant::now());
        let dialogue = tokio::time::timeout(
            s.plaintext_timeout.min(remaining),
            prelogin(&mut tls, &mut pre, greet, goodbye, s.protocol),
        )
        .await;
        let login = match dialogue {
            Ok(Ok(login)) => login,
            Ok(Err(end)) => {
                return ended(match end {
                    PreEnd::Closed => SessionOutcome::Closed,
                    PreEnd::Shutdown => SessionOutcome::Shutdown,
                    PreEnd::ClientError => SessionOutcome::ClientError,
                })
            }
            Err(_) if remaining < s.plaintext_timeout => {
                close_with(&mut tls, s.protocol.prelogin_goodbye()).await;
                return ended(SessionOutcome::PreloginTimeout);
            }
            Err(_) => {
                close_with(&mut tls, timeout_goodbye(s.protocol)).await;
                return ended(SessionOutcome::PlaintextTimeout);
            }
        };
        drop(pre);

        let Some(backend) = Box::pin(connect(route, &login.user, client)).await else {
            close_with(&mut tls, s.protocol.unavailable_goodbye()).await;
            return SessionRecord {
                user: None,
                ..ended(SessionOutcome::BackendUnavailable)
            };
        };
        let server = backend.server;
        let registration = route.director.register(Registration {
            listener: &s.listener,
            peer: client.peer,
            backend: &route.backend,
            server: &server,
            user: &login.user,
        });
        let greeting = backend.greeting;
        let mut backend_stream = backend.stream;
        let filters = Filters {
            guard: Some(Box::new(LoginGuard::new(s.protocol, s.max_line_length))),
            // The client is on TLS with postern: the server's STARTTLS advertisements go (T6).
            caps: Some(Box::new(CapabilityFilter::new(s.protocol))),
            imap: (s.protocol == Protocol::Imap).then(|| Box::new(ImapState::new())),
            swallow: (login.swallow > 0)
                .then(|| Box::new(ReplySwallow::new(s.protocol, login.swallow))),
        };
        // A login the server refused ends the session once the refusal is written: a second
        // attempt may name another user, who belongs on another server.
        let failed = Notify::new();
        let logins = LoginSink {
            listener: &s.listener,
            peer: client.peer,
            backend: &server,
            ok: &self.metrics.logins_ok,
            failed: &self.metrics.logins_failed,
            admission: edge,
            on_failure: Some(&failed),
        };
        let plan = RelayPlan {
            greeting_len: super::greeting_len(s.protocol, &greeting),
            greeting,
            // The client had postern's greeting.
            swallow_greeting: true,
            replay: login.replay.as_slice(),
            filters,
            idle_timeout: s.idle_timeout,
            leave: leave(goodbye, &registration, &failed),
            goodbye: reconnect_goodbye(s.protocol),
            counters: &self.counters,
            logins: Some(&logins),
            prelogin: Some(RelayPrelogin {
                deadline: prelogin_deadline,
                goodbye: s.protocol.prelogin_goodbye(),
            }),
        };
        let relayed = relay(&mut tls, &mut backend_stream, plan).await;
        drop(registration);
        let outcome = super::finish(&mut tls, relayed.end, &server).await;
        SessionRecord {
            outcome,
            tls: Some(tls_facts),
            backend: Some(server),
            user: relayed.user,
            totals: relayed.totals,
        }
    }
}

/// The drain, the director (the user belongs elsewhere now, or was kicked) or a refused
/// login asks the session to leave.
async fn leave(goodbye: &postern_listener::Goodbye, routed: &RoutedSession, failed: &Notify) {
    tokio::select! {
        () = goodbye.requested() => {}
        () = routed.leave_requested() => {
            info!(user_session = routed.id(), "the director asked the session to leave");
        }
        () = failed.notified() => {}
    }
}

/// Places `user` and connects to that server. When the connect fails, the failure has
/// counted against the server's health (passive checks): placement is asked once more, and a
/// different server (the failed one now down) is tried; the same server again is not.
async fn connect(route: &UserRouting, user: &str, client: ClientInfo) -> Option<BackendConn> {
    let mut tried: Option<String> = None;
    for _ in 0..2 {
        let placed = match route.director.place(&route.backend, user) {
            Ok(p) => p,
            Err(error) => {
                warn!(%error, user, "no server for the user; sending the goodbye");
                return None;
            }
        };
        if tried.as_deref() == Some(placed.server.as_str()) {
            break;
        }
        debug!(user, server = %placed.server, why = placed.why.as_str(), "user placed");
        match placed.pool.connect_to(&placed.server, client).await {
            Ok(conn) => return Some(conn),
            Err(error) => {
                warn!(error = %postern_metrics::ErrorChain(&error), user, server = %placed.server, "the user's server failed");
                tried = Some(placed.server);
            }
        }
    }
    warn!(
        user,
        "the user's server is not reachable; sending the goodbye"
    );
    None
}

/// Runs the pre-login dialogue to the login (the caller bounds its time).
async fn prelogin(
    tls: &mut ClientTls<TcpStream>,
    pre: &mut Prelogin,
    greet: bool,
    goodbye: &postern_listener::Goodbye,
    protocol: Protocol,
) -> Result<Login, PreEnd> {
    if greet {
        write(tls, &pre.greeting()).await?;
    }
    let mut buf = Vec::new();
    loop {
        match pre.step(&mut buf) {
            PreStep::NeedMore => {}
            PreStep::Reply(r) => {
                write(tls, &r).await?;
                continue;
            }
            PreStep::Login(login) => return Ok(login),
            PreStep::Close(r) => {
                close_with(tls, &r).await;
                return Err(PreEnd::Closed);
            }
        }
        let mut chunk = [0u8; READ_CHUNK];
        let read = tokio::select! {
            r = tls.read(&mut chunk) => r,
            () = goodbye.requested() => {
                close_with(tls, protocol.shutdown_goodbye()).await;
                return Err(PreEnd::Shutdown);
            }
        };
        match read {
            Ok(0) => return Err(PreEnd::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(PreEnd::Closed),
            Err(e) => {
                debug!(error = %e, "client failed before login");
                return Err(PreEnd::ClientError);
            }
        }
    }
}

async fn write(tls: &mut ClientTls<TcpStream>, bytes: &[u8]) -> Result<(), PreEnd> {
    if bytes.is_empty() {
        return Ok(());
    }
    tls.write_all(bytes)
        .await
        .map_err(|_| PreEnd::ClientError)?;
    tls.flush().await.map_err(|_| PreEnd::ClientError)
}

/// Writes `bytes` (if any), then closes the TLS session, within [`CLOSE_GRACE`].
async fn close_with(tls: &mut ClientTls<TcpStream>, bytes: &[u8]) {
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if !bytes.is_empty() {
            let _ = tls.write_all(bytes).await;
        }
        let _ = tls.shutdown().await;
    })
    .await;
}

/// The goodbye of a routed session asked to leave (moved, kicked, evacuated, a refused
/// login): the client should reconnect, and will be placed anew.
fn reconnect_goodbye(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::Imap => b"* BYE [UNAVAILABLE] please reconnect\r\n",
        // POP3 has no unsolicited response: it just closes.
        Protocol::Pop3 => b"",
        Protocol::Smtp => b"421 4.3.2 please reconnect\r\n",
        Protocol::Sieve => b"BYE (TRYLATER) \"please reconnect\"\r\n",
    }
}

/// The goodbye when the client took longer than `plaintext_timeout` to log in.
fn timeout_goodbye(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::Imap => b"* BYE Autologout; timeout waiting for login\r\n",
        Protocol::Pop3 => b"-ERR Timeout waiting for login, closing connection\r\n",
        Protocol::Smtp => b"421 4.4.2 Timeout waiting for authentication, closing connection\r\n",
        Protocol::Sieve => b"BYE \"Timeout waiting for login, closing connection\"\r\n",
    }
}
