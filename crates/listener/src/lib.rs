//! Listening sockets, worker threads, the accept loop, the connection limit and the drain.
//!
//! # Invariants
//! - Never inspects connection bytes and knows nothing of TLS or mail protocols; sessions
//!   are run by a [`Handler`] supplied by the caller.
//! - An accept error never ends or spins an acceptor: an error of one pending connection
//!   (ECONNABORTED, EPROTO, ENETUNREACH, EPERM...) is skipped at once; resource exhaustion
//!   (EMFILE, ENFILE, ENOBUFS, ENOMEM) pauses that acceptor with exponential backoff.
//! - Over `server.max_connections` a connection is closed at once and counted; the limit is
//!   global across workers (one atomic counter).
//! - Stopping closes the listening sockets, so the kernel refuses new connections instead of
//!   queueing them.

mod bind;
mod worker;

pub use bind::{bind_reuseport, BindError};
pub use worker::{Connection, Goodbye, Handler, WorkerListener, Workers};
