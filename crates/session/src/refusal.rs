//! Refusing a connection before it becomes a session (ARCHITECTURE.md, Path of one session): the protocol's refusal on a
//! STARTTLS listener (an implicit-TLS listener closes at once, no handshake spent), the
//! `postern_connections_rejected_total{reason}` count, and a log line at a bounded rate.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use postern_config::TlsMode;
use postern_metrics::{ListenerMetrics, RejectReason};
use postern_proto::Protocol;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// At most this many refusal lines per listener per [`WINDOW`]; the rest are counted and
/// the next line that is written says how many were left out. A flood of refused
/// connections (a scan, a misconfigured load balancer) must not flood the log.
const LINES_PER_WINDOW: u32 = 10;
const WINDOW: Duration = Duration::from_secs(10);
/// The refusal line must not hold the worker: a peer that does not read gets closed.
const WRITE_DEADLINE: Duration = Duration::from_secs(1);

/// One listener's refusal log budget.
#[derive(Debug)]
pub(crate) struct RefusalLog {
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl RefusalLog {
    pub(crate) fn new() -> Self {
        RefusalLog {
            state: Mutex::new(Window {
                start: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when this refusal may be logged, `n` being how many were left out since the
    /// last line; `None` when the budget of the current window is spent.
    pub(crate) fn admit_line(&self) -> Option<u64> {
        let mut w = self.lock();
        let now = Instant::now();
        if w.start
            .is_none_or(|start| now.duration_since(start) >= WINDOW)
        {
            w.start = Some(now);
            w.logged = 0;
        }
        if w.logged >= LINES_PER_WINDOW {
            w.suppressed = w.suppressed.saturating_add(1);
            return None;
        }
        w.logged += 1;
        Some(std::mem::take(&mut w.suppressed))
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        // Each update is one step; a panicking holder leaves it consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Counts, logs (within the budget) and answers one refused connection, then closes it.
pub(crate) async fn refuse(
    mut stream: TcpStream,
    reason: RejectReason,
    detail: &dyn std::fmt::Display,
    (protocol, tls): (Protocol, TlsMode),
    metrics: &ListenerMetrics,
    log: &RefusalLog,
) {
    metrics.rejected(reason);
    if let Some(suppressed) = log.admit_line() {
        tracing::warn!(
            reason = reason.as_str(),
            detail = %detail,
            suppressed,
            "connection refused"
        );
    }
    if tls == TlsMode::Starttls {
        let goodbye = async {
            stream.write_all(protocol.refused_goodbye()).await?;
            stream.shutdown().await
        };
        let _ = tokio::time::timeout(WRITE_DEADLINE, goodbye).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn log_lines_are_bounded_per_window_and_report_what_was_left_out() {
        let log = RefusalLog::new();
        for _ in 0..LINES_PER_WINDOW {
            assert_eq!(log.admit_line(), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(log.admit_line(), None);
        }
        tokio::time::advance(WINDOW).await;
        assert_eq!(log.admit_line(), Some(1000));
        assert_eq!(log.admit_line(), Some(0));
    }
}
