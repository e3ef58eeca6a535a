//! Admission by the client's address under `[limits]` (docs/configuration.md): the per-address checks
//! (`per_ip_connections`, `per_ip_rate`, the `auth_failures` brake) on the process-wide
//! [`AddressTable`], and the process-wide pre-login budget (`max_prelogin`, every client,
//! exempt ones too: it is not a per-address limit). Runs in the admission step, once the
//! real client address is known and before any byte is sent or handshake spent.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use postern_config::LimitsConfig;
use postern_limits::{AddressPermit, AddressTable, PreloginBudget, PreloginPermit, Refusal};
use postern_metrics::RejectReason;

/// The per-address state behind every listener's admission: one per gateway, shared by
/// every handler and worker, and kept across config reloads (a reload swaps the
/// [`LimitsConfig`] in each listener's policy; counts, buckets and blocks stay).
#[derive(Clone, Debug)]
pub struct EdgeState {
    /// Open sessions, connection rates and failed logins per client address.
    pub table: Arc<AddressTable>,
    /// Sessions not yet logged in, process-wide.
    pub prelogin: Arc<PreloginBudget>,
}

impl EdgeState {
    /// The state for a gateway of `max_connections` (which sizes the table's bound).
    pub fn new(max_connections: usize) -> Self {
        EdgeState {
            table: Arc::new(AddressTable::for_max_connections(max_connections)),
            prelogin: Arc::new(PreloginBudget::new()),
        }
    }
}

/// What an admitted session holds from admission: its place under its address's limits
/// (released when the session ends), its place in the pre-login budget (released at the
/// login, or when the session ends), and the limits it was admitted under, which its failed
/// logins are counted with and its pre-login deadline comes from (a reload does not change
/// them for an open session).
#[derive(Debug)]
pub(crate) struct Admission {
    pub(crate) address: AddressPermit,
    /// `None` once the session logged in. Behind a lock because the login verdict arrives
    /// through a shared reference (the relay's `LoginSink`); only the session's own task
    /// takes it, once, so it is never contended (a `Cell` would make the relay `!Send`).
    prelogin: Mutex<Option<PreloginPermit>>,
    pub(crate) limits: Arc<LimitsConfig>,
}

impl Admission {
    /// The session logged in (or was greeted PREAUTH): it leaves the pre-login budget.
    pub(crate) fn logged_in(&self) {
        let permit = self
            .prelogin
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(permit);
    }
}

/// Runs the per-address checks for `client`; `Err` names the reason of the refusal.
pub(crate) fn admit(
    edge: &EdgeState,
    client: IpAddr,
    limits: &Arc<LimitsConfig>,
) -> Result<Admission, (RejectReason, String)> {
    let now = tokio::time::Instant::now();
    let address = edge.table.admit(client, limits, now).map_err(|refusal| {
        let (reason, why) = match refusal {
            Refusal::AuthFailures => (
                RejectReason::AuthFailures,
                format!(
                    "blocked after {} failed logins within {:?}",
                    limits.auth_failures.map_or(0, |n| n.get()),
                    limits.auth_failure_window
                ),
            ),
            Refusal::PerIp => (
                RejectReason::PerIp,
                format!(
                    "limits.per_ip_connections = {} reached",
                    limits.per_ip_connections.map_or(0, |n| n.get())
                ),
            ),
            Refusal::Rate => (
                RejectReason::Rate,
                format!(
                    "over limits.per_ip_rate = {}/s",
                    limits.per_ip_rate.map_or(0, |n| n.get())
                ),
            ),
        };
        (reason, format!("{client}: {why}"))
    })?;
    // Past the per-address checks, so that one address over its limits cannot spend the
    // budget; refused here, the address permit is released again.
    let Some(prelogin) = edge.prelogin.try_enter(limits.max_prelogin) else {
        return Err((
            RejectReason::Prelogin,
            format!(
                "{client}: limits.max_prelogin = {} sessions have not logged in yet",
                limits.max_prelogin
            ),
        ));
    };
    Ok(Admission {
        address,
        prelogin: Mutex::new(Some(prelogin)),
        limits: Arc::clone(limits),
    })
}
