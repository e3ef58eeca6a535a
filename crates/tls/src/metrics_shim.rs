//! Stand-in for `postern_metrics::TlsMetrics` until that crate lands; same method names.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// Certificate metrics (shim).
#[derive(Clone, Debug, Default)]
pub struct TlsMetrics {
    inner: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    ok: AtomicU64,
    error: AtomicU64,
    last_expiry: AtomicI64,
}

impl TlsMetrics {
    pub(crate) fn set_expiry(&self, _name: &str, not_after_unix: i64) {
        self.inner.last_expiry.store(not_after_unix, Ordering::Relaxed);
    }
    pub(crate) fn remove_expiry(&self, _name: &str) {}
    pub(crate) fn reload_ok(&self) {
        self.inner.ok.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn reload_error(&self) {
        self.inner.error.fetch_add(1, Ordering::Relaxed);
    }
}
