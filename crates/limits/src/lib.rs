//! Edge protection that needs state about client addresses (`[limits]`, docs/configuration.md):
//! `per_ip_connections`, `per_ip_rate`, the brute-force brake (`auth_failures` within
//! `auth_failure_window`) and the process-wide pre-login budget (`max_prelogin`).
//!
//! One [`AddressTable`] and one [`PreloginBudget`] per gateway, shared by every worker
//! thread: SO_REUSEPORT spreads one address's connections over all of them, so a
//! per-worker count would let each address have `workers` times its limit. The limits
//! themselves ([`postern_config::LimitsConfig`]) are passed to every call, so a config
//! reload applies to the next connection while the counts, buckets and blocks live on.
//!
//! An IPv4 client is counted by its address, an IPv6 client by its /64; `exempt` networks
//! are never counted. The caller supplies the clock (`now`, a `tokio::time::Instant`):
//! nothing here sleeps or reads the time, so tests drive buckets and windows with a paused
//! clock.
//!
//! # The bound
//! The table holds at most [`AddressTable::capacity`] addresses: `max_connections` +
//! [`SPARE_ENTRIES`] in the gateway (16 shards of slots that are reused, never freed; about
//! 64 bytes per address with the index, measured by [`AddressTable::memory_bytes`]). It is
//! filled as addresses are seen; when a shard is full, a new address takes the slot of the
//! entry least worth keeping among the next [`EVICTION_SCAN`] slots, in this order:
//! 1. an entry that differs in nothing from a fresh one (no session, full bucket, no
//!    failed login in the window): nothing is lost;
//! 2. an entry with only a partly spent bucket: that address gets a fresh burst;
//! 3. an entry with failed logins that did not reach a block yet: they are forgotten.
//!
//! Entries with open sessions (their count is needed when the sessions end) and blocked
//! entries (a flood of new addresses must not lift a block) are never taken. If all
//! [`EVICTION_SCAN`] slots are such entries, the new connection is admitted *untracked*:
//! served under the process-wide limits (`max_connections`, `max_prelogin`) only, and
//! counted in [`AddressTable::untracked`]. A flood of distinct addresses therefore never
//! grows memory past the bound and never refuses a client because the table is full; its
//! cost is that some addresses' partial state is forgotten, as if they were new.
//!
//! # Invariants
//! - Memory is bounded by the capacity fixed at construction, whatever clients do.
//! - A permit's release always finds its entry (entries with open sessions are pinned).
//! - No lock is held across an await or a system call; each critical section is a lookup
//!   and a few arithmetic steps.

mod entry;
mod prelogin;
mod table;

pub use entry::Refusal;
pub use prelogin::{PreloginBudget, PreloginPermit};
pub use table::{AddressPermit, AddressTable, EVICTION_SCAN, SPARE_ENTRIES};
