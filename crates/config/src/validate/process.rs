//! `[server]`, `[admin]` and `[log]`.

use std::num::NonZeroUsize;
use std::time::Duration;

use super::{hours, secs, Validator};
use crate::error::ConfigErrorKind as Kind;
use crate::raw::{RawAdmin, RawLog, RawServer};
use crate::{AdminConfig, LogConfig, LogFormat, ProcessConfig};

impl Validator<'_> {
    pub(super) fn server(&mut self, raw: RawServer) -> ProcessConfig {
        let workers = match raw.workers {
            None | Some(0) => std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
            Some(n) => {
                let n = self.number(
                    "server.workers",
                    Some(n),
                    1,
                    1,
                    MAX_WORKERS,
                    "0 (one per CPU) to 1024",
                );
                NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
            }
        };
        let max_connections = self.number(
            "server.max_connections",
            raw.max_connections,
            100_000,
            1,
            10_000_000,
            "1 to 10000000",
        );
        let shutdown_grace = self.duration(
            "server.shutdown_grace",
            raw.shutdown_grace.as_deref(),
            secs(30),
            Duration::ZERO,
            hours(24),
        );
        // An unset drain_spread follows a short explicit grace rather than failing on it.
        let spread_default = secs(5).min(shutdown_grace);
        let drain_spread = self.duration(
            "server.drain_spread",
            raw.drain_spread.as_deref(),
            spread_default,
            Duration::ZERO,
            hours(24),
        );
        if drain_spread > shutdown_grace {
            self.error(
                "server.drain_spread",
                Kind::DrainSpreadTooLong {
                    spread: drain_spread,
                    grace: shutdown_grace,
                },
            );
        }
        let user = self.non_empty("server.user", raw.user);
        let group = self.non_empty("server.group", raw.group);
        let state_dir = match self.non_empty("server.state_dir", raw.state_dir) {
            Some(dir) => self.resolve(&dir),
            None => crate::state_dir::default_state_dir(),
        };
        ProcessConfig {
            workers,
            max_connections,
            shutdown_grace,
            drain_spread,
            user,
            group,
            state_dir,
        }
    }

    pub(super) fn admin(&mut self, raw: RawAdmin) -> AdminConfig {
        let listen = match raw.listen {
            None => std::net::SocketAddr::from(([127, 0, 0, 1], 9190)),
            Some(value) => self.listen_addr("admin.listen", &value),
        };
        AdminConfig { listen }
    }

    pub(super) fn log(&mut self, raw: RawLog) -> LogConfig {
        let format = self.choice(
            "log.format",
            raw.format.as_deref(),
            LogFormat::Text,
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        );
        let level = self
            .non_empty("log.level", raw.level)
            .unwrap_or_else(|| "info".to_owned());
        LogConfig { format, level }
    }
}

const MAX_WORKERS: u64 = 1024;
