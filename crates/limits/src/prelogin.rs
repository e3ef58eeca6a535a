//! `max_prelogin`: sessions not yet logged in, process-wide.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The count of sessions between accept and a confirmed login, shared by every worker.
#[derive(Debug, Default)]
pub struct PreloginBudget {
    open: AtomicUsize,
}

/// One session counted in the [`PreloginBudget`] until it logs in or ends.
#[derive(Debug)]
#[must_use = "the session counts as not logged in only while the permit lives"]
pub struct PreloginPermit {
    budget: Option<Arc<PreloginBudget>>,
}

impl PreloginBudget {
    /// An empty budget.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one more session not yet logged in, unless `max` are already open.
    pub fn try_enter(self: &Arc<Self>, max: usize) -> Option<PreloginPermit> {
        // A reload may lower `max` below the count: then nobody enters until enough left.
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(PreloginPermit {
            budget: Some(Arc::clone(self)),
        })
    }

    /// Sessions not yet logged in right now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl PreloginPermit {
    /// The session logged in (or was greeted PREAUTH): it no longer counts. Idempotent.
    pub fn logged_in(&mut self) {
        if let Some(budget) = self.budget.take() {
            budget.open.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Whether the session still counts as not logged in.
    pub fn is_counted(&self) -> bool {
        self.budget.is_some()
    }
}

impl Drop for PreloginPermit {
    fn drop(&mut self) {
        self.logged_in();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_up_to_max_and_releases_at_login_or_drop() {
        let b = Arc::new(PreloginBudget::new());
        let mut first = b.try_enter(2).unwrap();
        let second = b.try_enter(2).unwrap();
        assert!(b.try_enter(2).is_none(), "the third is over max_prelogin");
        assert_eq!(b.open(), 2);
        first.logged_in();
        first.logged_in();
        assert_eq!(b.open(), 1, "logged_in releases once");
        assert!(!first.is_counted());
        drop(first);
        assert_eq!(
            b.open(),
            1,
            "dropping a logged-in permit releases nothing more"
        );
        let third = b.try_enter(2).unwrap();
        drop(second);
        drop(third);
        assert_eq!(b.open(), 0);
    }

    #[test]
    fn a_lower_max_after_a_reload_admits_no_one_until_enough_left() {
        let b = Arc::new(PreloginBudget::new());
        let held: Vec<_> = (0..3).map(|_| b.try_enter(10).unwrap()).collect();
        assert!(b.try_enter(2).is_none());
        drop(held);
        assert!(b.try_enter(2).is_some());
    }
}
