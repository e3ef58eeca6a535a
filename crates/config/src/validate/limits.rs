//! `[limits]`.

use std::num::NonZeroU32;
use std::time::Duration;

use super::{hours, minutes, secs, Validator};
use crate::error::ConfigErrorKind as Kind;
use crate::raw::RawLimits;
use crate::LimitsConfig;

impl Validator<'_> {
    pub(super) fn limits(&mut self, raw: RawLimits, handshake_timeout: Duration) -> LimitsConfig {
        let per_ip_connections = self.limit(
            "limits.per_ip_connections",
            raw.per_ip_connections,
            500,
            1_000_000,
            "no limit",
        );
        let per_ip_rate = self.limit(
            "limits.per_ip_rate",
            raw.per_ip_rate,
            50,
            100_000,
            "no limit",
        );
        let prelogin_timeout = self.duration(
            "limits.prelogin_timeout",
            raw.prelogin_timeout.as_deref(),
            secs(60),
            secs(1),
            hours(24),
        );
        // A pre-login deadline inside the handshake deadline would close clients that are
        // still allowed to be finishing TLS, so no one could ever log in.
        if prelogin_timeout < handshake_timeout {
            self.error(
                "limits.prelogin_timeout",
                Kind::PreloginShorterThanHandshake {
                    prelogin: prelogin_timeout,
                    handshake: handshake_timeout,
                },
            );
        }
        let max_prelogin = self.number(
            "limits.max_prelogin",
            raw.max_prelogin,
            20_000,
            1,
            10_000_000,
            "1 to 10000000",
        );
        let auth_failures = self.limit(
            "limits.auth_failures",
            raw.auth_failures,
            10,
            1_000_000,
            "off",
        );
        let auth_failure_window = self.duration(
            "limits.auth_failure_window",
            raw.auth_failure_window.as_deref(),
            minutes(10),
            secs(1),
            hours(24 * 7),
        );
        let exempt = self.networks(
            "limits.exempt",
            raw.exempt.as_deref(),
            &["127.0.0.0/8", "::1/128"],
        );
        LimitsConfig {
            per_ip_connections,
            per_ip_rate,
            prelogin_timeout,
            max_prelogin,
            auth_failures,
            auth_failure_window,
            exempt,
        }
    }

    /// A count where 0 turns the limit off: `None` for 0, `default` when absent.
    fn limit(
        &mut self,
        key: &str,
        value: Option<u64>,
        default: u32,
        max: u32,
        zero: &str,
    ) -> Option<NonZeroU32> {
        let n = self.number(
            key,
            value,
            default as usize,
            0,
            u64::from(max),
            &format!("0 ({zero}) to {max}"),
        );
        u32::try_from(n).ok().and_then(NonZeroU32::new)
    }
}
