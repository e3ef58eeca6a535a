//! `[limits]`: edge protection per client address and process-wide.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::NetworkSet;

/// `[limits]`. Per-address limits count an IPv4 client by its address and an IPv6 client
/// by its /64 (one subscriber's prefix); none of them applies to `exempt` clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// `per_ip_connections`: sessions open at once from one address; `None` = no limit
    /// (`0` in the file). Default 500.
    pub per_ip_connections: Option<NonZeroU32>,
    /// `per_ip_rate`: new connections per second from one address, a token bucket whose
    /// burst is twice this; `None` = no limit (`0`). Default 50.
    pub per_ip_rate: Option<NonZeroU32>,
    /// `prelogin_timeout`: from accept to a confirmed login (or a PREAUTH greeting), after
    /// which the session is closed. Default 60s; at least `tls.handshake_timeout`.
    pub prelogin_timeout: Duration,
    /// `max_prelogin`: sessions not yet logged in, process-wide; over it new connections
    /// are refused. Default 20000.
    pub max_prelogin: usize,
    /// `auth_failures`: failed logins from one address within `auth_failure_window` after
    /// which its new connections are refused until the window has passed; `None` = off
    /// (`0`). Default 10.
    pub auth_failures: Option<NonZeroU32>,
    /// `auth_failure_window`. Default 10m.
    pub auth_failure_window: Duration,
    /// `exempt`: client networks none of the per-address limits apply to. Default
    /// `127.0.0.0/8` and `::1/128`.
    pub exempt: NetworkSet,
}
