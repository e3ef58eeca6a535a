//! When to renew and how long to wait after a failure: pure functions of the certificate's
//! validity, the configuration and a random number, so they are tested exactly.

use std::time::Duration;

use super::error::FailureKind;

/// When the renewal of a certificate valid `[not_before, not_after]` (unix seconds) starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Unix seconds.
    pub(crate) renew_at: i64,
    /// `renew_before` is not shorter than the certificate's lifetime (e.g. 30 days for a
    /// 6-day certificate): renewal starts at half the lifetime instead of at once after every
    /// issuance, which would only hammer the CA.
    pub(crate) clamped: bool,
}

/// `renew_at = not_after - renew_before`, minus a random share of the jitter window so that
/// many instances restarted together do not all ask the CA at the same second. `random` is
/// in `[0, 1)`.
pub(crate) fn plan(not_before: i64, not_after: i64, renew_before: Duration, random: f64) -> Plan {
    let lifetime = (not_after - not_before).max(0);
    let configured = i64::try_from(renew_before.as_secs()).unwrap_or(i64::MAX);
    let (window, clamped) = if configured >= lifetime {
        (lifetime / 2, true)
    } else {
        (configured, false)
    };
    let jitter_max = (window / JITTER_SHARE).min(MAX_JITTER_SECS);
    let jitter = (jitter_max as f64 * random.clamp(0.0, 1.0)) as i64;
    Plan {
        renew_at: not_after - window - jitter,
        clamped,
    }
}

/// Consecutive failures and the wait before the next attempt.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The wait after one more failure: exponential from the kind's first step to its cap,
    /// never shorter than the CA's `Retry-After` (capped at a week), plus up to a quarter
    /// more at random.
    pub(crate) fn next(
        &mut self,
        kind: FailureKind,
        retry_after: Option<Duration>,
        random: f64,
    ) -> Duration {
        let (first, cap) = match kind {
            FailureKind::Unreachable => (UNREACHABLE_FIRST, UNREACHABLE_CAP),
            FailureKind::Refused => (REFUSED_FIRST, REFUSED_CAP),
            FailureKind::RateLimited => (RATE_LIMITED_FIRST, REFUSED_CAP),
            FailureKind::Local => (LOCAL_FIRST, UNREACHABLE_CAP),
        };
        let doublings = self.failures.min(30);
        self.failures = self.failures.saturating_add(1);
        let step = first.saturating_mul(1u32 << doublings.min(20)).min(cap);
        let step = step + step.mul_f64(random.clamp(0.0, 1.0) / 4.0);
        match retry_after {
            Some(after) => step.max(after.min(MAX_RETRY_AFTER)),
            None => step,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }
}

/// The jitter window is this fraction of the renewal window ...
const JITTER_SHARE: i64 = 10;
/// ... and at most 8 hours.
const MAX_JITTER_SECS: i64 = 8 * 3600;
/// CA unreachable: a retry costs one HTTPS request, so start soon.
const UNREACHABLE_FIRST: Duration = Duration::from_secs(2);
const UNREACHABLE_CAP: Duration = Duration::from_secs(3600);
/// Refused or failed validation: these count against the CA's limits (Let's Encrypt: 5
/// failed validations per name per hour), so the second try is 10 min later, then 20, 40...
const REFUSED_FIRST: Duration = Duration::from_secs(600);
const REFUSED_CAP: Duration = Duration::from_secs(6 * 3600);
/// Rate limited without a `Retry-After`.
const RATE_LIMITED_FIRST: Duration = Duration::from_secs(3600);
/// Disk or state-directory problems: the admin has to act; check again now and then.
const LOCAL_FIRST: Duration = Duration::from_secs(60);
/// A `Retry-After` further away than this is treated as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn renewal_starts_renew_before_ahead_of_expiry_minus_jitter() {
        let nb = 1_000 * DAY;
        let na = nb + 90 * DAY;
        let thirty = Duration::from_secs(30 * 86_400);
        let p = plan(nb, na, thirty, 0.0);
        assert_eq!(
            p,
            Plan {
                renew_at: na - 30 * DAY,
                clamped: false
            }
        );
        // The jitter only moves the renewal earlier, by at most 8 hours here.
        let p = plan(nb, na, thirty, 0.999_999);
        assert!(
            p.renew_at < na - 30 * DAY && p.renew_at >= na - 30 * DAY - 8 * 3600,
            "{p:?}"
        );
    }

    #[test]
    fn renew_before_longer_than_the_lifetime_renews_at_half_life() {
        // A 6-day certificate with the default 30 days: renew with 3 days left.
        let p = plan(0, 6 * DAY, Duration::from_secs(30 * 86_400), 0.0);
        assert_eq!(
            p,
            Plan {
                renew_at: 3 * DAY,
                clamped: true
            }
        );
        // pebble in the tests: 10 s certificates; the jitter stays within a tenth.
        let p = plan(100, 110, Duration::from_secs(3600), 0.99);
        assert!(p.clamped);
        assert_eq!(p.renew_at, 105);
        let p = plan(100, 140, Duration::from_secs(3600), 0.99);
        assert_eq!(p.renew_at, 140 - 20 - 1);
    }

    #[test]
    fn a_certificate_without_lifetime_is_due_at_once() {
        let p = plan(500, 400, Duration::from_secs(10), 0.5);
        assert!(p.renew_at <= 400);
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..14)
            .map(|_| b.next(FailureKind::Unreachable, None, 0.0).as_secs())
            .collect();
        assert_eq!(
            waits,
            [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3600, 3600, 3600]
        );
        assert_eq!(b.failures(), 14);
        b.reset();
        assert_eq!(
            b.next(FailureKind::Refused, None, 0.0),
            Duration::from_secs(600)
        );
        assert_eq!(
            b.next(FailureKind::Refused, None, 0.0),
            Duration::from_secs(1200)
        );
        // Random spread: up to a quarter more.
        let mut b = Backoff::default();
        assert_eq!(
            b.next(FailureKind::Unreachable, None, 0.5),
            Duration::from_millis(2250)
        );
    }

    #[test]
    fn retry_after_is_a_floor_but_not_an_unbounded_one() {
        let mut b = Backoff::default();
        let hour = Duration::from_secs(3600);
        assert_eq!(
            b.next(FailureKind::RateLimited, Some(hour * 3), 0.0),
            hour * 3
        );
        let mut b = Backoff::default();
        assert_eq!(
            b.next(FailureKind::Unreachable, Some(Duration::from_secs(1)), 0.0)
                .as_secs(),
            2
        );
        let mut b = Backoff::default();
        let far = b.next(FailureKind::RateLimited, Some(hour * 24 * 365), 0.0);
        assert_eq!(far, MAX_RETRY_AFTER);
        let mut b = Backoff::default();
        assert_eq!(b.next(FailureKind::RateLimited, None, 0.0), hour);
    }
}
