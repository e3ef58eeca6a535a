//! The renewal loop under tokio's paused clock: the attempts land exactly where the schedule
//! and the backoff put them, without a real sleep.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use instant_acme::Problem;
use postern_config::{AcmeChallenge, AcmeConfig};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{run, Driver, Goal};
use crate::acme::error::AcmeError;
use crate::acme::files::{Ordered, Stored};

const DAY: i64 = 86_400;
const BASE: i64 = 1_800_000_000;
const DIRECTORY: &str = "https://ca.test/dir";

/// What the fake CA does on each attempt.
enum Outcome {
    Unreachable,
    RateLimited(Duration),
    /// Issues a certificate valid this long from now.
    Issue(i64),
}

struct Fake {
    start: Instant,
    stored: Arc<Mutex<Option<Stored>>>,
    script: VecDeque<Outcome>,
    attempts: mpsc::UnboundedSender<i64>,
}

fn goal() -> Goal {
    Goal {
        directory: DIRECTORY.into(),
        domains: vec!["mail.test".into()],
        renew_before: Duration::from_secs(30 * 86_400),
    }
}

fn certificate(not_before: i64, not_after: i64) -> Stored {
    Stored {
        not_before,
        not_after,
        names: vec!["mail.test".into()],
        ordered: Some(Ordered {
            directory: DIRECTORY.into(),
            domains: vec!["mail.test".into()],
        }),
    }
}

impl Driver for Fake {
    fn now(&self) -> i64 {
        BASE + self.start.elapsed().as_secs() as i64
    }

    fn random(&mut self) -> f64 {
        0.0
    }

    fn stored(&self) -> Option<Stored> {
        self.stored.lock().expect("lock").clone()
    }

    fn renew(&mut self) -> impl std::future::Future<Output = Result<(), AcmeError>> + Send {
        let now = self.now();
        let _ = self.attempts.send(now - BASE);
        let outcome = self.script.pop_front().unwrap_or(Outcome::Unreachable);
        let result = match outcome {
            Outcome::Unreachable => Err(AcmeError::Timeout {
                during: "a new order",
                secs: 30,
            }),
            Outcome::RateLimited(after) => Err(AcmeError::Refused {
                during: "a new order",
                problem: Problem {
                    r#type: Some("urn:ietf:params:acme:error:rateLimited".into()),
                    detail: Some("too many certificates".into()),
                    status: Some(429),
                    subproblems: Vec::new(),
                },
                retry_after: Some(after),
            }),
            Outcome::Issue(lifetime) => {
                *self.stored.lock().expect("lock") = Some(certificate(now, now + lifetime));
                Ok(())
            }
        };
        async move { result }
    }

    fn reconfigure(&mut self, settings: &AcmeConfig) -> Result<(), AcmeError> {
        if settings.ca_roots.is_some() {
            return Err(AcmeError::NoRoots {
                path: "/nowhere".into(),
            });
        }
        Ok(())
    }
}

/// Starts the loop with `stored` and `script`; returns the attempt times (seconds from the
/// start) as they happen.
fn start(
    stored: Option<Stored>,
    script: Vec<Outcome>,
) -> (mpsc::UnboundedReceiver<i64>, CancellationToken) {
    let (rx, shutdown, _updates) = start_with_updates(stored, script);
    (rx, shutdown)
}

fn settings(domains: &[&str]) -> AcmeConfig {
    AcmeConfig {
        domains: domains.iter().map(|d| d.to_string()).collect(),
        contact: Vec::new(),
        directory: DIRECTORY.into(),
        challenge: AcmeChallenge::TlsAlpn01,
        challenge_listen: Vec::new(),
        ca_roots: None,
        renew_before: Duration::from_secs(30 * 86_400),
        store: "/nowhere".into(),
    }
}

fn start_with_updates(
    stored: Option<Stored>,
    script: Vec<Outcome>,
) -> (
    mpsc::UnboundedReceiver<i64>,
    CancellationToken,
    watch::Sender<Arc<AcmeConfig>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let fake = Fake {
        start: Instant::now(),
        stored: Arc::new(Mutex::new(stored)),
        script: script.into(),
        attempts: tx,
    };
    let shutdown = CancellationToken::new();
    let (updates, updates_rx) = watch::channel(Arc::new(settings(&["mail.test"])));
    tokio::spawn(run(fake, goal(), Some(updates_rx), shutdown.clone()));
    (rx, shutdown, updates)
}

async fn attempts(rx: &mut mpsc::UnboundedReceiver<i64>, n: usize) -> Vec<i64> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(rx.recv().await.expect("the loop ended"));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_down_ca_is_retried_with_growing_waits_then_the_renewal_is_scheduled() {
    let script = vec![
        Outcome::Unreachable,
        Outcome::Unreachable,
        Outcome::Unreachable,
        Outcome::Issue(90 * DAY),
    ];
    let (mut rx, shutdown) = start(None, script);
    // At once, then 2 s, 4 s and 8 s later; then 60 days after the issue (90 - 30).
    assert_eq!(attempts(&mut rx, 5).await, [0, 2, 6, 14, 14 + 60 * DAY]);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_stored_certificate_is_renewed_only_when_due() {
    let now = BASE;
    let stored = certificate(now - 10 * DAY, now + 80 * DAY);
    let (mut rx, shutdown) = start(Some(stored), vec![Outcome::Issue(90 * DAY)]);
    assert_eq!(attempts(&mut rx, 1).await, [50 * DAY]);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_certificate_for_other_names_is_replaced_at_once() {
    let mut stored = certificate(BASE, BASE + 80 * DAY);
    stored.names = vec!["old.test".into()];
    let (mut rx, shutdown) = start(Some(stored), vec![Outcome::Issue(90 * DAY)]);
    assert_eq!(attempts(&mut rx, 1).await, [0]);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn the_cas_retry_after_is_respected() {
    let three_hours = Duration::from_secs(3 * 3600);
    let script = vec![Outcome::RateLimited(three_hours), Outcome::Issue(90 * DAY)];
    let (mut rx, shutdown) = start(None, script);
    assert_eq!(attempts(&mut rx, 2).await, [0, 3 * 3600]);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_short_lived_certificate_is_renewed_at_half_life_not_in_a_loop() {
    // renew_before (30 days) is longer than the 10 s lifetime: renew 5 s after each issue.
    let script = vec![Outcome::Issue(10), Outcome::Issue(10), Outcome::Issue(10)];
    let (mut rx, shutdown) = start(None, script);
    assert_eq!(attempts(&mut rx, 3).await, [0, 5, 10]);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_certificate_due_at_once_backs_off_instead_of_ordering_again() {
    // A lifetime of 1 s: half of it rounds to nothing, the plan is due at once.
    let script = vec![Outcome::Issue(1), Outcome::Issue(90 * DAY)];
    let (mut rx, shutdown) = start(None, script);
    assert_eq!(attempts(&mut rx, 2).await, [0, 600]);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_the_loop_while_it_waits() {
    let stored = certificate(BASE, BASE + 80 * DAY);
    let (mut rx, shutdown) = start(Some(stored), Vec::new());
    tokio::time::sleep(Duration::from_secs(3600 * 5)).await;
    shutdown.cancel();
    assert_eq!(rx.recv().await, None, "no attempt, and the loop is gone");
}

#[tokio::test(start_paused = true)]
async fn a_reload_with_other_names_orders_at_once_and_a_bad_one_changes_nothing() {
    let stored = certificate(BASE, BASE + 80 * DAY);
    let script = vec![Outcome::Issue(90 * DAY)];
    let (mut rx, shutdown, updates) = start_with_updates(Some(stored), script);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    // Unusable: refused, the schedule (50 days away) stands.
    let mut bad = settings(&["mail.test", "imap.test"]);
    bad.ca_roots = Some("/nowhere".into());
    updates.send_replace(Arc::new(bad));
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(rx.try_recv().is_err(), "a refused reload placed an order");
    // Usable, with a new name: the stored certificate no longer matches, order now.
    updates.send_replace(Arc::new(settings(&["mail.test", "imap.test"])));
    assert_eq!(attempts(&mut rx, 1).await, [2 * 3600]);
    shutdown.cancel();
}
