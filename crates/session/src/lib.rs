//! One client connection's life: TLS (implicit or after the STARTTLS dialogue), the
//! backend connection, the relay, timeouts, the goodbye, and the session log line.
//!
//! # Invariants
//! - Never binds a socket; receives accepted connections from the listener crate.
//! - Every wait has a deadline: TLS handshake, plaintext phase, backend connect (the pool's),
//!   idle relay.
//! - Bytes received after a STARTTLS command line and before the handshake are dropped
//!   and counted, never fed to TLS (rule T1/T2); the TLS engine only ever reads the socket.
//! - A password or token never reaches a log line: the only user fields come from
//!   `proto::login_guard`, which keeps login names only.
//! - One `login failed` line per login attempt the backend refused.
//! - postern's own replies to a client count against the relay's bound: while they are not
//!   written, the client is not read.
//! - A backend failure that cut a response (a reset that follows no goodbye, no EOF) is
//!   passed on to the client as a reset, never as a clean TLS close.
//! - Exactly one `session ended` log line per connection that was admitted; a refused one
//!   (PROXY protocol, `allow`/`deny`, limits) is counted in
//!   `postern_connections_rejected_total{reason}` and logged at a bounded rate instead.
//! - The client address is the real one everywhere (log lines, balancing, forwarding, exec
//!   environment): behind a load balancer it comes from the PROXY header, read before any
//!   admission check, TLS byte or greeting.

mod client_tls;
mod edge;
mod handler;
mod logins;
mod proxy;
mod record;
mod refusal;
mod relay;
mod starttls;

pub use edge::EdgeState;
pub use handler::{SessionHandler, SessionPolicy, SessionSettings, UserRouting};
