//! Open-file limit: every session holds two descriptors (client and backend), and the
//! common soft default of 1024 would cap postern at about 500 sessions while the hard
//! limit allows far more.

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

/// What [`raise_nofile`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit before.
    pub before: u64,
    /// The soft limit now (the hard limit, when raising worked).
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (no privilege needed for that).
pub fn raise_nofile() -> Result<NofileLimit, nix::Error> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (now, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(NofileLimit {
        before: soft,
        soft: now,
        hard,
    })
}

/// Descriptors `max_connections` sessions need: two each, plus [`SLACK`] for listening
/// sockets, the admin endpoint, certificate watches, health probes and exec pipes.
pub fn needed(max_connections: usize) -> u64 {
    (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(SLACK)
}

/// Whether `limit` falls short of what `max_connections` needs.
pub fn short_of(limit: u64, max_connections: usize) -> bool {
    limit != RLIM_INFINITY && limit < needed(max_connections)
}

/// Descriptors beyond two per session.
pub const SLACK: u64 = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_the_soft_limit_to_the_hard_one() {
        let got = raise_nofile().unwrap();
        assert_eq!(got.soft, got.hard);
        assert!(got.soft >= got.before);
    }

    #[test]
    fn two_descriptors_per_session_plus_slack() {
        assert_eq!(needed(100_000), 200_256);
        assert!(short_of(20_000, 100_000));
        assert!(!short_of(200_256, 100_000));
        assert!(!short_of(RLIM_INFINITY, usize::MAX));
    }
}
