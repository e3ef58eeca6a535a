//! The session driver: from an accepted socket to the session log line.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use postern_backend_pool::{BackendConn, ClientInfo, Pool};
use postern_config::{LimitsConfig, NetworkSet, ProxyConfig, TlsMode};
use postern_listener::{Connection, Handler};
use postern_metrics::{HandshakeFailure, ListenerMetrics, RejectReason, SessionOutcome};
use postern_proto::capfilter::CapabilityFilter;
use postern_proto::imap_state::ImapState;
use postern_proto::login_guard::LoginGuard;
use postern_proto::starttls::PlainLimits;
use postern_proto::Protocol;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info_span, warn, Instrument};

use crate::client_tls::{self, ClientTls};
use crate::edge::{Admission, EdgeState};
use crate::logins::LoginSink;
use crate::proxy::{self, Addresses};
use crate::record::{SessionRecord, TlsFacts};
use crate::refusal::{refuse, RefusalLog};
use crate::relay::{relay, Counters, Filters, Prelogin, RelayEnd, RelayPlan};
use crate::starttls::{plaintext_phase, PlainEnd};

mod routed;

pub use routed::UserRouting;

/// Everything a listener's sessions need to know about themselves.
#[derive(Clone, Debug)]
pub struct SessionSettings {
    /// Listener name (log field and metric label).
    pub listener: String,
    /// Protocol spoken.
    pub protocol: Protocol,
    /// Implicit TLS or STARTTLS.
    pub tls: TlsMode,
    /// Deadline for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Deadline for the plaintext phase of a STARTTLS listener.
    pub plaintext_timeout: Duration,
    /// Relay closes after this long without a byte either way.
    pub idle_timeout: Duration,
    /// Longest command line held before TLS (plaintext phase) and by the login guard (see
    /// `proto::login_guard`: what `max_line_length` covers).
    pub max_line_length: usize,
    /// Commands accepted before STARTTLS.
    pub max_plaintext_commands: usize,
    /// Host name in postern's own greetings.
    pub hostname: String,
    /// Send TCP keepalive probes to idle clients after this long.
    pub keepalive: Duration,
}

/// What a listener's new sessions follow: the part of the configuration a reload may
/// change (README.md, Command line). A session takes the policy in force when it is accepted and keeps it,
/// its pool included, to its end; [`SessionHandler::set_policy`] swaps it for the sessions
/// that come after.
#[derive(Clone, Debug)]
pub struct SessionPolicy {
    /// Timeouts, limits and names. `listener`, `protocol` and `tls` need a restart (the
    /// sockets and the TLS configuration are the listener's): a reload keeps them.
    pub settings: SessionSettings,
    /// The backend's pool.
    pub pool: Arc<Pool>,
    /// `proxy_protocol` / `proxy_from`; `None`: the TCP peer is the client.
    pub proxy: Option<ProxyConfig>,
    /// `allow`: when not empty, only these client networks are served.
    pub allow: NetworkSet,
    /// `deny`: these client networks are refused (deny wins over allow).
    pub deny: NetworkSet,
    /// `[limits]`, process-wide, for the admission checks on the client address.
    pub limits: Arc<LimitsConfig>,
    /// `route = "user"` backends: the director that places each login; `None`: every
    /// connection goes to `pool` by its balancing.
    pub route: Option<UserRouting>,
}

/// Runs sessions for one listener; plugged into the listener crate's workers.
pub struct SessionHandler {
    policy: ArcSwap<SessionPolicy>,
    /// The listener's TLS configuration, its certificate resolver wrapped to learn the SNI.
    tls: Arc<rustls::ServerConfig>,
    metrics: ListenerMetrics,
    /// The listener's byte counters, resolved once for all its sessions.
    counters: Counters,
    refusals: RefusalLog,
    /// Process-wide per-address state, shared with every other listener.
    edge: EdgeState,
}

impl std::fmt::Debug for SessionHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandler")
            .field("policy", &self.policy.load())
            .finish_non_exhaustive()
    }
}

impl SessionHandler {
    /// A handler for one listener.
    pub fn new(
        policy: SessionPolicy,
        tls: Arc<rustls::ServerConfig>,
        metrics: ListenerMetrics,
        edge: EdgeState,
    ) -> Self {
        let counters = Counters {
            up: metrics.bytes_client_to_backend.clone(),
            down: metrics.bytes_backend_to_client.clone(),
        };
        SessionHandler {
            policy: ArcSwap::from_pointee(policy),
            tls: client_tls::recording_sni(tls),
            metrics,
            counters,
            refusals: RefusalLog::new(),
            edge,
        }
    }

    /// The policy new sessions follow.
    pub fn policy(&self) -> Arc<SessionPolicy> {
        self.policy.load_full()
    }

    /// Swaps in a new policy (a config reload): sessions accepted from now on follow it;
    /// open sessions keep the one they started with.
    pub fn set_policy(&self, policy: SessionPolicy) {
        self.policy.store(Arc::new(policy));
    }
}

impl Handler for SessionHandler {
    fn handle(self: Arc<Self>, conn: Connection) -> Pin<Box<dyn Future<Output = ()>>> {
        let policy = self.policy.load_full();
        // Behind a load balancer the client is known only after the PROXY header.
        let span = info_span!(
            "session",
            listener = %policy.settings.listener,
            conn.id = conn.id,
            client.addr = tracing::field::Empty,
            proxy.peer = tracing::field::Empty,
        );
        if policy.proxy.is_some() {
            span.record("proxy.peer", tracing::field::display(conn.peer));
        } else {
            span.record("client.addr", tracing::field::display(conn.peer));
        }
        // Boxed: a value an async fn receives keeps its slot in the future for the session's
        // whole life, even after it is moved on (here, into `admit`).
        Box::pin(self.run(Box::new(conn), policy).instrument(span))
    }
}

/// A session after its TLS handshake (see [`SessionHandler::drive`]).
struct Handshaken {
    tls: ClientTls<TcpStream>,
    tls_facts: TlsFacts,
    client: ClientInfo,
    /// Held to the session's end: its place under the per-address limits.
    edge: Admission,
    /// `limits.prelogin_timeout` from the accept.
    prelogin_deadline: Instant,
}

/// What a balanced session keeps for its whole life: one allocation.
struct Connected {
    hs: Handshaken,
    backend: BackendConn,
}

/// How the setup ended.
enum Setup {
    /// Before a relay: the session's record.
    Ended(SessionRecord),
    /// `route = "user"`: the login decides the server.
    Routed(Box<Handshaken>),
    /// Connected to a backend; the relay is next.
    Relay(Box<Connected>),
}

/// The connection after the client's address is known and admission passed.
struct Admitted {
    stream: TcpStream,
    client: ClientInfo,
    /// Held to the session's end: its place under the per-address limits.
    edge: Admission,
}

impl SessionHandler {
    async fn run(self: Arc<Self>, conn: Box<Connection>, policy: Arc<SessionPolicy>) {
        let started = Instant::now();
        let goodbye = conn.goodbye.clone();
        // Boxed like the setup: the PROXY header and refusal buffers are not kept for the
        // session.
        let Some(admitted) = Box::pin(self.admit(conn, &policy)).await else {
            // Refused: counted and logged (at a bounded rate) instead of a session line.
            return;
        };
        let peer = admitted.client.peer;
        let record = self.drive(admitted, goodbye, &policy, started).await;
        record.report(
            &policy.settings.listener,
            peer,
            started.elapsed(),
            &self.metrics,
        );
    }

    /// Learns the real client address (the PROXY header, when the listener takes one), then
    /// runs the admission checks on it, before postern spends a TLS handshake or a greeting
    /// on the connection. `None`: refused, counted, answered and closed.
    ///
    /// Admission checks that need the client address (`allow`/`deny`, the `[limits]`
    /// per-address limits) belong right here, after [`proxy::read_header`] and before the
    /// first byte postern sends, and read their policy from `policy`.
    async fn admit(&self, conn: Box<Connection>, policy: &SessionPolicy) -> Option<Box<Admitted>> {
        let Connection {
            mut stream,
            peer,
            local,
            ..
        } = *conn;
        let s = &policy.settings;
        tune_client_socket(&stream, s.keepalive);
        let addresses = match &policy.proxy {
            None => Addresses {
                client: peer,
                local,
            },
            Some(proxy) => {
                match proxy::read_header(&mut stream, proxy, peer, local, s.handshake_timeout).await
                {
                    Ok(addresses) => {
                        tracing::Span::current()
                            .record("client.addr", tracing::field::display(addresses.client));
                        addresses
                    }
                    Err(refusal) => {
                        let detail = format!("{peer}: {}", postern_metrics::ErrorChain(&refusal));
                        self.refuse(stream, RejectReason::Proxy, &detail, s).await;
                        return None;
                    }
                }
            }
        };
        let client = addresses.client.ip();
        let denied = policy.deny.contains(client)
            || (!policy.allow.is_empty() && !policy.allow.contains(client));
        if denied {
            let detail = format!(
                "{}: not allowed by the listener's allow/deny",
                addresses.client
            );
            self.refuse(stream, RejectReason::Denied, &detail, s).await;
            return None;
        }
        let edge = match crate::edge::admit(&self.edge, client, &policy.limits) {
            Ok(admission) => admission,
            Err((reason, detail)) => {
                self.refuse(stream, reason, &detail, s).await;
                return None;
            }
        };
        Some(Box::new(Admitted {
            edge,
            stream,
            client: ClientInfo {
                peer: addresses.client,
                local: addresses.local,
            },
        }))
    }

    async fn refuse(
        &self,
        stream: TcpStream,
        reason: RejectReason,
        detail: &dyn std::fmt::Display,
        s: &SessionSettings,
    ) {
        let wire = (s.protocol, s.tls);
        refuse(stream, reason, detail, wire, &self.metrics, &self.refusals).await;
    }

    /// Runs the session to its end and returns its record. `accepted`: when the connection
    /// was accepted, where `limits.prelogin_timeout` counts from.
    ///
    /// An async fn's state is as large as its largest await point, and a value it moved on
    /// keeps its slot: so the setup (plaintext phase, handshake, backend connect) runs in a
    /// box of its own, freed when it ends, and a session keeps for its hours of IDLE only
    /// what it uses, in one allocation ([`Connected`]).
    async fn drive(
        &self,
        admitted: Box<Admitted>,
        goodbye: postern_listener::Goodbye,
        policy: &SessionPolicy,
        accepted: Instant,
    ) -> SessionRecord {
        match Box::pin(self.setup(admitted, &goodbye, policy, accepted)).await {
            Setup::Ended(record) => record,
            Setup::Routed(h) => {
                let Handshaken {
                    tls,
                    tls_facts,
                    client,
                    edge,
                    prelogin_deadline,
                } = *h;
                // `setup` hands over a routed session only when the policy routes.
                let Some(route) = &policy.route else {
                    return SessionRecord::ended(SessionOutcome::Closed);
                };
                let ctx = routed::Context {
                    client,
                    goodbye: &goodbye,
                    policy,
                    route,
                    edge: &edge,
                    prelogin_deadline,
                };
                Box::pin(self.routed(tls, tls_facts, ctx)).await
            }
            Setup::Relay(c) => self.relay_session(c, &goodbye, policy).await,
        }
    }

    /// Everything before the relay: the plaintext phase, the handshake and (unless the
    /// backend routes by user) the backend connection.
    async fn setup(
        &self,
        admitted: Box<Admitted>,
        goodbye: &postern_listener::Goodbye,
        policy: &SessionPolicy,
        accepted: Instant,
    ) -> Setup {
        let Admitted {
            mut stream,
            client,
            edge,
        } = *admitted;
        let s = &policy.settings;
        // Every step before the login (plaintext phase, handshake, relay until the backend
        // confirms it) ends by this deadline.
        let prelogin_deadline = accepted + edge.limits.prelogin_timeout;
        let until_prelogin = || prelogin_deadline.saturating_duration_since(Instant::now());

        if s.tls == TlsMode::Starttls {
            let remaining = until_prelogin();
            let limits = PlainLimits {
                max_line_length: s.max_line_length,
                max_commands: s.max_plaintext_commands,
            };
            // Setup-only futures are boxed: an async fn's state is as large as its largest
            // await point, and these would otherwise stay allocated for hours of IDLE.
            match Box::pin(plaintext_phase(
                &mut stream,
                s.protocol,
                &s.hostname,
                limits,
                s.plaintext_timeout.min(remaining),
                goodbye.requested(),
            ))
            .await
            {
                PlainEnd::Upgrade { discarded: 0 } => {}
                PlainEnd::Upgrade { discarded } => {
                    self.metrics
                        .starttls_discarded_bytes
                        .inc_by(discarded as u64);
                    warn!(discarded, "starttls injection: bytes pipelined after the STARTTLS command were discarded");
                }
                PlainEnd::Closed => {
                    return Setup::Ended(SessionRecord::ended(SessionOutcome::Closed))
                }
                PlainEnd::Timeout if remaining < s.plaintext_timeout => {
                    return Setup::Ended(SessionRecord::ended(SessionOutcome::PreloginTimeout))
                }
                PlainEnd::Timeout => {
                    return Setup::Ended(SessionRecord::ended(SessionOutcome::PlaintextTimeout))
                }
                PlainEnd::Shutdown => {
                    return Setup::Ended(SessionRecord::ended(SessionOutcome::Shutdown))
                }
                PlainEnd::Io(e) => {
                    debug!(error = %e, "client left during the plaintext phase");
                    return Setup::Ended(SessionRecord::ended(SessionOutcome::ClientError));
                }
            }
        }

        let remaining = until_prelogin();
        let handshake_timeout = s.handshake_timeout.min(remaining);
        let mut tls = match Box::pin(self.handshake(stream, handshake_timeout)).await {
            Ok(tls) => tls,
            Err(reason) => {
                self.metrics.handshake_failure(reason);
                if reason == HandshakeFailure::Timeout && remaining < s.handshake_timeout {
                    return Setup::Ended(SessionRecord::ended(SessionOutcome::PreloginTimeout));
                }
                return Setup::Ended(SessionRecord::ended(SessionOutcome::TlsError));
            }
        };
        let tls_facts = TlsFacts::of(&tls);

        if policy.route.is_some() {
            return Setup::Routed(Box::new(Handshaken {
                tls,
                tls_facts,
                client,
                edge,
                prelogin_deadline,
            }));
        }

        let backend = match Box::pin(policy.pool.connect(client)).await {
            Ok(b) => b,
            Err(error) => {
                warn!(%error, "no backend server reachable; sending the goodbye");
                let _ = tls.write_all(s.protocol.unavailable_goodbye()).await;
                let _ = tls.shutdown().await;
                return Setup::Ended(SessionRecord {
                    tls: Some(tls_facts),
                    ..SessionRecord::ended(SessionOutcome::BackendUnavailable)
                });
            }
        };
        Setup::Relay(Box::new(Connected {
            hs: Handshaken {
                tls,
                tls_facts,
                client,
                edge,
                prelogin_deadline,
            },
            backend,
        }))
    }

    /// The relay, from the backend's greeting to the session's end. Uses `c`'s fields in
    /// place (moving them out would give each a second slot in this future).
    async fn relay_session(
        &self,
        mut c: Box<Connected>,
        goodbye: &postern_listener::Goodbye,
        policy: &SessionPolicy,
    ) -> SessionRecord {
        let s = &policy.settings;
        let greeting = std::mem::take(&mut c.backend.greeting);
        let starttls = s.tls == TlsMode::Starttls;
        let filters = Filters {
            guard: Some(Box::new(LoginGuard::new(s.protocol, s.max_line_length))),
            // The client is on TLS already: the backend's STARTTLS advertisements go (T6).
            caps: starttls.then(|| Box::new(CapabilityFilter::new(s.protocol))),
            imap: (s.protocol == Protocol::Imap).then(|| Box::new(ImapState::new())),
            swallow: None,
        };
        let goodbye_line: &'static [u8] = match s.protocol {
            // POP3 has no unsolicited response: it just closes.
            Protocol::Pop3 => b"",
            p => p.shutdown_goodbye(),
        };
        let Connected { hs, backend } = &mut *c;
        let logins = LoginSink {
            listener: &s.listener,
            peer: hs.client.peer,
            backend: &backend.server,
            ok: &self.metrics.logins_ok,
            failed: &self.metrics.logins_failed,
            admission: &hs.edge,
            on_failure: None,
        };
        let prelogin = Prelogin {
            deadline: hs.prelogin_deadline,
            goodbye: s.protocol.prelogin_goodbye(),
        };
        let plan = RelayPlan {
            greeting_len: greeting_len(s.protocol, &greeting),
            greeting,
            // The client already had postern's greeting: the backend's is swallowed, except
            // ManageSieve's, which is its capability list, what RFC 5804 has a server send
            // again after STARTTLS (the capability filter takes STARTTLS out of it).
            swallow_greeting: starttls && s.protocol != Protocol::Sieve,
            replay: b"",
            filters,
            idle_timeout: s.idle_timeout,
            leave: goodbye.requested(),
            goodbye: goodbye_line,
            counters: &self.counters,
            logins: Some(&logins),
            prelogin: Some(prelogin),
        };
        let relayed = relay(&mut hs.tls, &mut backend.stream, plan).await;
        let outcome = finish(&mut hs.tls, relayed.end, &backend.server).await;
        SessionRecord {
            outcome,
            tls: Some(std::mem::take(&mut hs.tls_facts)),
            backend: Some(std::mem::take(&mut backend.server)),
            user: relayed.user,
            totals: relayed.totals,
        }
    }

    async fn handshake(
        &self,
        stream: TcpStream,
        deadline: Duration,
    ) -> Result<ClientTls<TcpStream>, HandshakeFailure> {
        let started = Instant::now();
        match tokio::time::timeout(deadline, client_tls::accept(stream, self.tls.clone())).await {
            Ok(Ok(tls)) => {
                self.metrics
                    .handshake_duration
                    .observe(started.elapsed().as_secs_f64());
                Ok(tls)
            }
            Ok(Err(e)) => {
                let reason = classify_handshake_error(&e);
                debug!(error = %e, reason = reason.as_str(), "TLS handshake failed");
                Err(reason)
            }
            Err(_) => {
                debug!("TLS handshake timed out");
                Err(HandshakeFailure::Timeout)
            }
        }
    }
}

/// Closes the client side the way the relay's end calls for, and names the outcome.
async fn finish(tls: &mut ClientTls<TcpStream>, end: RelayEnd, server: &str) -> SessionOutcome {
    match end {
        RelayEnd::Closed => SessionOutcome::Closed,
        RelayEnd::IdleTimeout => {
            let _ = tokio::time::timeout(CLOSE_GRACE, tls.shutdown()).await;
            SessionOutcome::IdleTimeout
        }
        RelayEnd::Shutdown => {
            let _ = tokio::time::timeout(CLOSE_GRACE, tls.shutdown()).await;
            SessionOutcome::Shutdown
        }
        RelayEnd::PreloginTimeout => {
            debug!("no login within limits.prelogin_timeout");
            let _ = tokio::time::timeout(CLOSE_GRACE, tls.shutdown()).await;
            SessionOutcome::PreloginTimeout
        }
        RelayEnd::ClientError(e) => {
            debug!(error = %e, "client connection failed");
            SessionOutcome::ClientError
        }
        RelayEnd::BackendError(e) => {
            warn!(error = %e, backend = server, "backend connection failed mid-session");
            // The response the client was reading was cut: it must not look complete, so
            // no close_notify, a reset.
            reset(tls);
            SessionOutcome::BackendError
        }
        RelayEnd::GuardClosed(why) => {
            warn!(reason = why.as_str(), "the login guard ended the session");
            let _ = tokio::time::timeout(CLOSE_GRACE, tls.shutdown()).await;
            SessionOutcome::ProtocolError
        }
    }
}

/// How long a closing TLS session may take to flush its close_notify.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

fn greeting_len(protocol: Protocol, greeting: &[u8]) -> usize {
    use postern_proto::greeting::{parse_greeting, Greeting};
    match parse_greeting(protocol, greeting) {
        Greeting::Ok { len } | Greeting::Refused { len } => len,
        Greeting::Incomplete | Greeting::Invalid => greeting.len(),
    }
}

fn classify_handshake_error(e: &io::Error) -> HandshakeFailure {
    if let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return match tls {
            rustls::Error::NoApplicationProtocol => HandshakeFailure::Alpn,
            rustls::Error::General(msg) if msg.contains("certificate") => HandshakeFailure::NoCert,
            _ => HandshakeFailure::Protocol,
        };
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => HandshakeFailure::Eof,
        io::ErrorKind::InvalidData => HandshakeFailure::Protocol,
        _ => HandshakeFailure::Io,
    }
}

/// Makes the close of `tls`'s socket a TCP reset (SO_LINGER 0): nothing more is written,
/// no close_notify.
fn reset(tls: &ClientTls<TcpStream>) {
    let _ = socket2::SockRef::from(tls.get_ref()).set_linger(Some(Duration::ZERO));
}

/// TCP_NODELAY (mail greetings and replies are small; Nagle would delay each by up to
/// 40 ms against a delayed ACK) and keepalive (so dead IDLE clients are noticed).
fn tune_client_socket(stream: &TcpStream, keepalive: Duration) {
    let _ = stream.set_nodelay(true);
    let sock = socket2::SockRef::from(stream);
    let ka = socket2::TcpKeepalive::new()
        .with_time(keepalive)
        .with_interval(Duration::from_secs(30))
        .with_retries(4);
    let _ = sock.set_tcp_keepalive(&ka);
}
