//! The ACME task on the control runtime: look at the stored certificate, sleep until its
//! renewal is due (waking at least hourly, so a suspended machine or a changed clock is
//! noticed), order, install; on failure log the CA's problem document and back off. The
//! certificate in service stays in service throughout: only a new, validated one replaces it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use postern_config::AcmeConfig;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::error::{AcmeError, FailureKind};
use super::files::Stored;
use super::schedule::{self, Backoff};
use crate::load::format_time;

/// What the loop needs from the world; the live one talks to the CA, the tests' one does not.
pub(crate) trait Driver {
    /// Unix seconds.
    fn now(&self) -> i64;
    /// Uniform in `[0, 1)`.
    fn random(&mut self) -> f64;
    /// The stored certificate, if it loads.
    fn stored(&self) -> Option<Stored>;
    /// One order, installed into the store when it succeeds.
    fn renew(&mut self) -> impl Future<Output = Result<(), AcmeError>> + Send;
    /// Switches to a reloaded `[tls.acme]` (CA client, names, challenge type).
    fn reconfigure(&mut self, settings: &AcmeConfig) -> Result<(), AcmeError>;
}

/// What the loop needs from the configuration.
#[derive(Clone, Debug)]
pub(crate) struct Goal {
    pub(crate) directory: String,
    pub(crate) domains: Vec<String>,
    pub(crate) renew_before: Duration,
}

impl From<&AcmeConfig> for Goal {
    fn from(settings: &AcmeConfig) -> Goal {
        Goal {
            directory: settings.directory.clone(),
            domains: settings.domains.clone(),
            renew_before: settings.renew_before,
        }
    }
}

/// Why an order is placed now.
#[derive(Debug, PartialEq, Eq)]
enum Due {
    /// At this unix time (the plan of the stored certificate).
    At(i64, bool),
    /// Now: there is no usable stored certificate for this CA and these names.
    Now(&'static str),
}

fn due(goal: &Goal, stored: Option<&Stored>, random: f64) -> Due {
    match stored {
        None => Due::Now("no certificate from the ACME server yet"),
        Some(s) if !s.matches(&goal.directory, &goal.domains) => {
            Due::Now("the stored certificate is for other names or another CA")
        }
        Some(s) => {
            let plan = schedule::plan(s.not_before, s.not_after, goal.renew_before, random);
            Due::At(plan.renew_at, plan.clamped)
        }
    }
}

/// A newer `[tls.acme]` from a config reload, or nothing when no reload can come.
pub(crate) type Updates = Option<watch::Receiver<Arc<AcmeConfig>>>;

/// Why a wait ended.
enum Woken {
    Elapsed,
    Reconfigured,
    Shutdown,
}

/// Runs until `shutdown`. A new configuration from `updates` applies at once, between orders:
/// the schedule is recomputed (a certificate for other names or another CA is ordered now)
/// and the backoff starts over; one that cannot be applied (e.g. unusable `ca_roots`) is
/// logged and the running one kept.
pub(crate) async fn run(
    mut driver: impl Driver,
    mut goal: Goal,
    mut updates: Updates,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let mut retry_at: Option<Instant> = None;
    let mut clamp_warned = false;
    loop {
        let pending_retry = retry_at.take();
        let woken = if let Some(at) = pending_retry {
            sleep_until(at, &mut updates, &shutdown).await
        } else {
            let random = driver.random();
            match due(&goal, driver.stored().as_ref(), random) {
                Due::Now(reason) => {
                    info!(domains = %goal.domains.join(","), directory = %goal.directory, "{reason}; ordering one");
                    Woken::Elapsed
                }
                Due::At(at, clamped) => {
                    if clamped && !clamp_warned {
                        clamp_warned = true;
                        warn!(renew_before_secs = goal.renew_before.as_secs(), "tls.acme.renew_before is not shorter than the certificate's lifetime; renewing at half its lifetime instead");
                    }
                    info!(renew_at = %format_time(at), "ACME certificate renewal scheduled");
                    let woken = sleep_until_unix(&driver, at, &mut updates, &shutdown).await;
                    if matches!(woken, Woken::Elapsed) {
                        info!(domains = %goal.domains.join(","), "ACME certificate renewal due; ordering");
                    }
                    woken
                }
            }
        };
        match woken {
            Woken::Elapsed => {}
            Woken::Shutdown => return,
            Woken::Reconfigured => {
                if let Some(next) = apply(&mut driver, &mut updates) {
                    goal = next;
                    backoff.reset();
                    clamp_warned = false;
                } else {
                    // Not applied: the retry that was pending stays pending.
                    retry_at = pending_retry;
                }
                continue;
            }
        }
        let started = Instant::now();
        let result = tokio::select! {
            result = driver.renew() => result,
            () = shutdown.cancelled() => return,
        };
        let failure = match result {
            Ok(()) => {
                backoff.reset();
                info!(
                    domains = %goal.domains.join(","),
                    took_ms = started.elapsed().as_millis() as u64,
                    "ACME certificate obtained and installed"
                );
                // A certificate that is due again at once would make every renewal an order
                // storm: treat it as a failure of the CA.
                match due(&goal, driver.stored().as_ref(), 0.0) {
                    Due::At(at, _) if at >= driver.now() + MIN_REISSUE_GAP => continue,
                    _ => AcmeError::Order {
                        domains: goal.domains.clone(),
                        what: "the CA issued a certificate that is due for renewal at once (too short a lifetime, or other names)".into(),
                    },
                }
            }
            Err(error) => error,
        };
        let wait = backoff.next(failure.kind(), failure.retry_after(), driver.random());
        log_failure(
            &failure,
            wait,
            backoff.failures(),
            driver.stored().is_some(),
        );
        retry_at = Some(Instant::now() + wait);
    }
}

/// Applies the newest configuration; `None` when it cannot be (logged).
fn apply(driver: &mut impl Driver, updates: &mut Updates) -> Option<Goal> {
    let settings = Arc::clone(&updates.as_mut()?.borrow_and_update());
    match driver.reconfigure(&settings) {
        Ok(()) => {
            info!(domains = %settings.domains.join(","), directory = %settings.directory, challenge = settings.challenge.as_str(), "ACME configuration reloaded");
            Some(Goal::from(&*settings))
        }
        Err(error) => {
            warn!(error = %postern_metrics::ErrorChain(&error), "the new [tls.acme] cannot be applied; keeping the previous one");
            None
        }
    }
}

fn log_failure(failure: &AcmeError, wait: Duration, failures: u32, serving: bool) {
    let problem = failure.problem();
    let error = postern_metrics::ErrorChain(failure);
    let kept = if serving {
        "the current ACME certificate"
    } else {
        "the configured or self-signed certificate"
    };
    let problem_type = problem.and_then(|p| p.r#type.as_deref()).unwrap_or("");
    let problem_detail = problem.and_then(|p| p.detail.as_deref()).unwrap_or("");
    let problem_status = problem.and_then(|p| p.status).unwrap_or(0);
    let retry_in_secs = wait.as_secs_f64();
    if failure.kind() == FailureKind::Local {
        error!(%error, problem_type, problem_detail, problem_status, retry_in_secs, failures, still_serving = kept, "ACME order failed");
    } else {
        warn!(%error, problem_type, problem_detail, problem_status, retry_in_secs, failures, still_serving = kept, "ACME order failed");
    }
}

async fn sleep_until(at: Instant, updates: &mut Updates, shutdown: &CancellationToken) -> Woken {
    let reconfigured = async {
        match updates {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    // The sender is gone: no reload can come any more.
                    *updates = None;
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = tokio::time::sleep_until(at) => Woken::Elapsed,
        () = reconfigured => Woken::Reconfigured,
        () = shutdown.cancelled() => Woken::Shutdown,
    }
}

/// Sleeps until the driver's wall clock reaches `at`, in naps of at most an hour.
async fn sleep_until_unix(
    driver: &impl Driver,
    at: i64,
    updates: &mut Updates,
    shutdown: &CancellationToken,
) -> Woken {
    loop {
        let left = at - driver.now();
        if left <= 0 {
            return Woken::Elapsed;
        }
        let nap = Duration::from_secs(left.unsigned_abs()).min(MAX_NAP);
        match sleep_until(Instant::now() + nap, updates, shutdown).await {
            Woken::Elapsed => {}
            other => return other,
        }
    }
}

/// A new certificate due for renewal sooner than this is a failure, not a schedule.
const MIN_REISSUE_GAP: i64 = 2;
/// The longest single sleep: the wall clock is looked at again at least this often.
const MAX_NAP: Duration = Duration::from_secs(3600);

#[cfg(test)]
#[path = "task_tests.rs"]
mod tests;
