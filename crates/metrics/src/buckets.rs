//! Histogram bucket bounds, chosen for what each histogram measures.

/// TLS handshakes and backend connects: loopback connects take ~100 µs, a TLS 1.3 handshake
/// on a LAN ~1 ms, a slow mobile client seconds; the handshake timeout defaults to 10 s, so
/// nothing is observed above it. Roughly 1-2.5-5 per decade.
pub const FAST_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Session lifetimes: a failed login ends within a second, a POP3 fetch or SMTP submission
/// within a minute, an IMAP IDLE session lives for hours (up to the idle timeout renewals).
pub const SESSION_SECONDS: &[f64] = &[
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
    86400.0,
];
