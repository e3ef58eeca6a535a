//! Helpers shared by postern's Rust tests. A dev-dependency only: nothing here is linked into
//! the postern binary.
//!
//! Tests never sleep to wait for something to happen: they poll the condition until a
//! deadline with [`wait_for`] (or [`wait_for_async`] when checking needs I/O, or
//! [`wait_for_blocking`] on a plain thread), and assert on the result.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is checked again.
pub const POLL_EVERY: Duration = Duration::from_millis(10);

/// Polls `cond` every [`POLL_EVERY`] until it holds or `deadline` has passed; returns whether
/// it held. The condition is checked once more after the deadline, so a slow machine that
/// wakes late still sees the final state. Follows the runtime's clock: under paused time the
/// deadline passes without real waiting.
pub async fn wait_for_async<F, Fut>(deadline: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// [`wait_for_async`] for a condition that needs no I/O.
pub async fn wait_for(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    wait_for_async(deadline, || std::future::ready(cond())).await
}

/// [`wait_for`] from a plain thread (a test whose code under test runs its own threads):
/// blocks the calling thread on a runtime of its own.
///
/// # Panics
/// If the runtime cannot be built (out of file descriptors): a broken test machine.
pub fn wait_for_blocking(deadline: Duration, cond: impl FnMut() -> bool) -> bool {
    #[allow(clippy::expect_used)] // see # Panics
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime for wait_for_blocking");
    runtime.block_on(wait_for(deadline, cond))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn returns_as_soon_as_the_condition_holds() {
        let calls = Cell::new(0);
        let started = Instant::now();
        let held = wait_for(Duration::from_secs(5), || {
            calls.set(calls.get() + 1);
            calls.get() == 3
        })
        .await;
        assert!(held);
        assert_eq!(calls.get(), 3);
        assert_eq!(started.elapsed(), 2 * POLL_EVERY);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_deadline_having_checked_at_it() {
        let started = Instant::now();
        let last_check = Cell::new(started);
        let held = wait_for(Duration::from_secs(1), || {
            last_check.set(Instant::now());
            false
        })
        .await;
        assert!(!held);
        assert!(last_check.get() - started >= Duration::from_secs(1));
        assert!(started.elapsed() < Duration::from_secs(1) + 2 * POLL_EVERY);
    }

    #[tokio::test(start_paused = true)]
    async fn an_async_condition_is_awaited() {
        let calls = Cell::new(0);
        let held = wait_for_async(Duration::from_secs(1), || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                tokio::task::yield_now().await;
                n == 2
            }
        })
        .await;
        assert!(held);
    }

    #[test]
    fn blocking_works_without_a_runtime() {
        let calls = Cell::new(0);
        assert!(wait_for_blocking(Duration::from_secs(5), || {
            calls.set(calls.get() + 1);
            calls.get() == 2
        }));
        assert!(!wait_for_blocking(Duration::from_millis(30), || false));
    }
}
