//! `route = "user"`: every session of one user on one server, on every postern replica, with
//! no shared state (what Dovecot's director did). This crate decides *where* a user goes and
//! keeps track of who is where; the session crate asks it before connecting, the postern
//! crate runs its loops and its control socket.
//!
//! - [`hrw`]: weighted rendezvous hashing by server host, with a fixed hash (SipHash-2-4,
//!   fixed keys) so that every replica and every version computes the same ranking.
//! - [`user_map`]: users and domains pinned to a host, re-read on change, a bad file refused
//!   whole (every bad line named with file:line) while the last good map stays in use.
//! - [`states`]: `online` / `standby` / `offline` per server, persisted in `state_dir`.
//! - [`placement`]: the pure function from (user, servers, map) to a server.
//! - [`sessions`]: the routed sessions of this instance and the handle that asks one to
//!   leave; the per-server user gauges.
//! - [`Director`]: the above for every backend; `reconcile` (its `run` loop) asks the
//!   sessions of users who now belong elsewhere to leave, spread over `drain_spread`.
//! - [`control`]: the `state_dir/control.sock` server and client behind `postern ctl`.
//!
//! # Invariants
//! - Placement reads only the user, the config, the `user_map`, health and the server
//!   states: never a clock, a random number or another replica. Same inputs, same server.
//! - No user has routed sessions on two servers of one backend on this instance for longer
//!   than `drain_spread` after the change that moved them (plus the one-second poll and, for
//!   a session routed during the change, [`reconcile::SETTLE`]).
//! - The control socket serves only postern's own user and root, one bounded request per
//!   connection, every step under a deadline.
//! - Must not depend on the session or listener crates, nor see a client byte.

pub mod control;
mod director;
pub mod error;
pub mod hrw;
pub mod placement;
pub mod reconcile;
pub mod sessions;
pub mod states;
pub mod user_map;

pub use director::{Director, DirectorError, PlaceError, Routed};
pub use placement::Why;
pub use sessions::{Registration, Registry, RoutedSession, SessionInfo};
pub use states::{ServerState, StateStore};
pub use user_map::UserMap;
