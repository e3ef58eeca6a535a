//! Login outcomes the backend gave, as the login guard reports them: counted in
//! `postern_logins_total{listener,result}`, and each failed attempt logged as one `login
//! failed` line with `listener`, `peer`, `user` (the name tried) and `backend` (text or JSON
//! like the `session ended` line, ready for fail2ban). Both: docs/metrics.md. A failed
//! attempt also counts towards the brute-force brake of the client's address
//! (`limits.auth_failures`), under the limits the session was admitted with; a login takes
//! the session out of the pre-login budget (`limits.max_prelogin`).

use std::net::SocketAddr;

use postern_metrics::IntCounter;
use postern_proto::login_guard::LoginVerdict;
use tracing::info;

use crate::edge::Admission;

/// Where one session's login outcomes go.
#[derive(Debug)]
pub(crate) struct LoginSink<'a> {
    pub(crate) listener: &'a str,
    /// The client's address (the one the listener reports: also behind a PROXY header).
    pub(crate) peer: SocketAddr,
    /// The server the session is relayed to.
    pub(crate) backend: &'a str,
    pub(crate) ok: &'a IntCounter,
    pub(crate) failed: &'a IntCounter,
    /// The session's place in the address table, where failed logins are counted.
    pub(crate) admission: &'a Admission,
    /// Told of each refused login (a routed session then ends: see `handler::routed`).
    pub(crate) on_failure: Option<&'a tokio::sync::Notify>,
}

impl LoginSink<'_> {
    /// The backend confirmed a login, or greeted PREAUTH (seen by the relay, which also
    /// stops the pre-login deadline).
    pub(crate) fn logged_in(&self) {
        self.admission.logged_in();
    }

    /// Counts `verdict`, and logs it when it is a failure.
    pub(crate) fn record(&self, verdict: &LoginVerdict) {
        match verdict {
            LoginVerdict::LoggedIn { .. } => {
                self.ok.inc();
                self.admission.logged_in();
            }
            LoginVerdict::Failed { user } => {
                self.failed.inc();
                // Counted before the line is logged: by the time fail2ban (or a test) reads
                // it, the address's next connection already meets the brake.
                self.admission
                    .address
                    .login_failed(&self.admission.limits, tokio::time::Instant::now());
                info!(
                    listener = %self.listener,
                    peer = %self.peer,
                    user = user.as_deref().unwrap_or(""),
                    backend = self.backend,
                    "login failed"
                );
                if let Some(n) = self.on_failure {
                    n.notify_one();
                }
            }
        }
    }
}
