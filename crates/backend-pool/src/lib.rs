//! The backend side of postern: one [`Pool`] per `[[backend]]` (docs/configuration.md), which picks a
//! server for each session, connects to it, checks its greeting, tells it the client's
//! address (`forward_client`) and hands the session a ready [`BackendConn`].
//!
//! What it does:
//! - Balancing over several TCP / unix-socket servers: least-connections (ties broken by
//!   rotation), round-robin, or client-hash (rendezvous hashing of the client IP: stable
//!   across restarts and across postern instances; a server leaving moves only its share).
//! - Health: active probes (connect + greeting within `health.timeout`, every
//!   `health.interval`) and passive results (every real session connect) feed one
//!   counter per server; `fall` consecutive failures mark it down, `rise` consecutive
//!   successes bring it back. A server starts *up* (optimistic) so a fresh start serves at
//!   once; a dead server is found by the first `fall` probes or sessions.
//! - Failover: a failed connect, a timeout, or a refusing greeting (`* BYE`, `-ERR`, `421`)
//!   moves on to the next eligible server; each server is tried at most once per session
//!   and the whole attempt is bounded by 2 × `connect_timeout`.
//! - Exec backends: one child per session on stdin/stdout, inetd/ucspi-tcp environment,
//!   stderr to the log, killed and reaped when the session ends, `max_children` cap.
//! - Warm connections (`warm`): pre-connected, pre-greeted spares per server, only with
//!   `forward_client = "none"` (a PROXY header or the ID/XCLIENT exchange needs the client
//!   address, which is unknown before the session exists). Spares are refilled every
//!   100 ms, used at most 30 s after their greeting, dropped when the server goes down, and
//!   do not count toward `max_connections_per_server` (they do occupy backend login
//!   processes). Each worker runtime keeps its own share and only its sessions take them
//!   ([`Pool::spawn_background_on`]). Measured time from `connect()` to greeting (debug build, loopback, 200
//!   sessions): Dovecot 2.3 imap-login median 5.9 ms cold vs 0.055 ms warm; a minimal
//!   tokio server 0.40-0.49 ms cold vs 0.056 ms warm (tests/warm.rs, tests/dovecot.rs).
//! - Session failures count toward passive health only while [`Pool::spawn_background`]
//!   runs, since only probes can bring a server back.
//!
//! - TLS to the servers (`tls = "implicit"` / `"starttls"`, `tls_ca`, `tls_name`): session
//!   connects, health probes and warm spares all verify the server's certificate
//!   (rustls); STARTTLS follows rules B1–B4 (docs/starttls.md). A server that fails
//!   verification or the upgrade is a failed connect like any other.
//!
//! - DNS-discovered pools (`resolve_interval`, `discover.rs`): each address a host name in
//!   `servers` resolves to is a server of its own; an address that disappears takes no new
//!   sessions and its open ones run on; a failed resolution keeps the last good set.
//!
//! Must not depend on: the session or listener crates. It never sees client bytes: what
//! the client sends after [`Pool::connect`] returns is the session's business.
//!
//! # Invariants
//! - Every wait has a deadline (connect, greeting, forwarding reply, probe).
//! - A server's connection count is held by the [`BackendConn`] and released on drop; the
//!   `postern_backend_connections_active` gauge moves with it.
//! - `postern_backend_up` always equals the server's current health state.
//! - An exec child never outlives its session unreaped.

mod balance;
mod caps;
mod dial;
mod discover;
mod error;
mod exec;
mod health;
mod pool;
mod server;
mod stream;
mod tls;
mod upgrade;
mod warm;

pub use error::{BuildError, PoolError, ServerError};
pub use pool::{BackendConn, ClientInfo, Pool, ServerStatus};
pub use stream::{BackendStream, ExecStream};
pub use tls::check as check_tls;
