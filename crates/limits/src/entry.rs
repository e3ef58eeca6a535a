//! What the table keeps for one client address: open sessions, the connection-rate token
//! bucket, and the failed-login window with its block. Pure arithmetic on milliseconds
//! since the table's epoch; the table supplies the clock and the lock.

use std::net::IpAddr;

use postern_config::LimitsConfig;

/// The client an entry stands for: an IPv4 address, or an IPv6 /64.
///
/// IPv4 (and IPv4-mapped IPv6, what a dual-stack socket reports for an IPv4 client) is
/// kept as `::ffff:a.b.c.d`; IPv6 as its first 64 bits with the rest zero. The two never
/// collide: a mapped address has the /64 `::`, which no real IPv6 client key can hold
/// with bits set in the low half.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key(u128);

impl Key {
    pub(crate) fn of(ip: IpAddr) -> Key {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Key(u128::from(v4.to_ipv6_mapped())),
            // One subscriber gets a /64 (RFC 6177): counting per address would let one
            // host use 2^64 of them.
            IpAddr::V6(v6) => Key(u128::from(v6) & !u128::from(u64::MAX)),
        }
    }
}

/// Why a new connection from an address is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The address is blocked after `auth_failures` failed logins (reason `auth_failures`).
    AuthFailures,
    /// `per_ip_connections` sessions are already open from it (reason `per_ip`).
    PerIp,
    /// It connects faster than `per_ip_rate` allows (reason `rate`).
    Rate,
}

/// How much an entry is worth keeping when the table is full; the lowest goes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Worth {
    /// Nothing that differs from a fresh entry: dropping it changes nothing.
    Nothing,
    /// Only a partly spent token bucket: dropping it gives the address a fresh burst.
    Bucket,
    /// Failed logins counted towards a block: dropping it forgets them.
    Failures,
    /// Open sessions (their count is needed when they end) or an active block: never
    /// dropped, or a flood of new addresses could lift a block.
    Pinned,
}

#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) key: Key,
    /// When `tokens` was last brought up to date.
    refilled_ms: u64,
    /// New connections are refused until then (0: not blocked).
    blocked_until_ms: u64,
    /// Failed logins counted in the current and the previous window (a sliding-window
    /// estimate: two counters instead of one timestamp per failure).
    failures_prev: u32,
    failures_cur: u32,
    /// Index of the current failure window (`now / auth_failure_window`).
    window: u64,
    tokens: f32,
    pub(crate) conns: u32,
}

impl Entry {
    /// A fresh entry: no session, a full bucket, no failure.
    pub(crate) fn new(key: Key, now_ms: u64, limits: &LimitsConfig) -> Entry {
        Entry {
            key,
            refilled_ms: now_ms,
            blocked_until_ms: 0,
            failures_prev: 0,
            failures_cur: 0,
            window: 0,
            tokens: burst(limits),
            conns: 0,
        }
    }

    /// Admits one new connection (counting it) or says why not. A refused connection
    /// spends nothing but, past the block check, a token: the rate counts attempts.
    pub(crate) fn admit(&mut self, now_ms: u64, limits: &LimitsConfig) -> Result<(), Refusal> {
        if limits.auth_failures.is_some() && self.blocked_until_ms > now_ms {
            return Err(Refusal::AuthFailures);
        }
        if limits.per_ip_rate.is_some() {
            self.refill(now_ms, limits);
            if self.tokens < 1.0 {
                return Err(Refusal::Rate);
            }
            self.tokens -= 1.0;
        }
        if let Some(max) = limits.per_ip_connections {
            if self.conns >= max.get() {
                return Err(Refusal::PerIp);
            }
        }
        self.conns = self.conns.saturating_add(1);
        Ok(())
    }

    /// One session from this address ended.
    pub(crate) fn release(&mut self) {
        self.conns = self.conns.saturating_sub(1);
    }

    /// Counts one failed login; at `auth_failures` within the window the address is
    /// blocked for one window from now. Each failure while blocked (a session opened
    /// before the block goes on trying) starts the window again.
    pub(crate) fn login_failed(&mut self, now_ms: u64, limits: &LimitsConfig) {
        let Some(max) = limits.auth_failures else {
            return;
        };
        let window_ms = window_ms(limits);
        self.roll(now_ms, window_ms);
        self.failures_cur = self.failures_cur.saturating_add(1);
        // The previous window's failures count for the part of it that is still within
        // one window of now.
        let into = (now_ms % window_ms) as f64 / window_ms as f64;
        let estimate = f64::from(self.failures_prev) * (1.0 - into) + f64::from(self.failures_cur);
        if estimate >= f64::from(max.get()) {
            self.blocked_until_ms = now_ms.saturating_add(window_ms);
        }
    }

    /// What dropping this entry would lose (see [`Worth`]).
    pub(crate) fn worth(&mut self, now_ms: u64, limits: &LimitsConfig) -> Worth {
        if self.conns > 0 || self.blocked_until_ms > now_ms {
            return Worth::Pinned;
        }
        self.roll(now_ms, window_ms(limits));
        if self.failures_prev > 0 || self.failures_cur > 0 {
            return Worth::Failures;
        }
        self.refill(now_ms, limits);
        if self.tokens < burst(limits) {
            Worth::Bucket
        } else {
            Worth::Nothing
        }
    }

    fn refill(&mut self, now_ms: u64, limits: &LimitsConfig) {
        let rate = limits.per_ip_rate.map_or(0.0, |r| r.get() as f32);
        let elapsed = now_ms.saturating_sub(self.refilled_ms);
        if elapsed > 0 {
            // Clamped to the burst: a reload that lowers the rate also lowers what is saved.
            let add = (elapsed as f64 * f64::from(rate) / 1000.0).min(f64::from(u32::MAX)) as f32;
            self.tokens = (self.tokens + add).min(burst(limits));
            self.refilled_ms = now_ms;
        }
    }

    fn roll(&mut self, now_ms: u64, window_ms: u64) {
        let window = now_ms / window_ms;
        if window == self.window {
            return;
        }
        self.failures_prev = if window == self.window + 1 {
            self.failures_cur
        } else {
            0
        };
        self.failures_cur = 0;
        self.window = window;
    }
}

/// The bucket holds twice the rate (`per_ip_rate`, docs/configuration.md: burst 2x).
fn burst(limits: &LimitsConfig) -> f32 {
    limits.per_ip_rate.map_or(0.0, |r| 2.0 * r.get() as f32)
}

fn window_ms(limits: &LimitsConfig) -> u64 {
    (limits.auth_failure_window.as_millis() as u64).max(1)
}
