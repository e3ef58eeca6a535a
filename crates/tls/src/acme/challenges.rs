//! The challenges of the order in progress: http-01 tokens and tls-alpn-01 certificates. The
//! responders answer only from here, so outside an order they answer nothing. Bounded by the
//! configured names: one order at a time, one entry per name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rustls::sign::CertifiedKey;

/// Shared by the order and the responders.
#[derive(Debug, Default)]
pub(crate) struct Challenges {
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    /// http-01: token → key authorization.
    http: HashMap<String, String>,
    /// tls-alpn-01: lower-case name → the `acme-tls/1` certificate.
    alpn: HashMap<String, Arc<CertifiedKey>>,
}

impl Challenges {
    /// The body for `GET /.well-known/acme-challenge/<token>`.
    pub(crate) fn http_response(&self, token: &str) -> Option<String> {
        self.lock().http.get(token).cloned()
    }

    /// The validation certificate for a tls-alpn-01 connection naming `server_name`.
    pub(crate) fn alpn_certificate(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        let name = crate::load::normalize_name(server_name);
        self.lock().alpn.get(&name).cloned()
    }

    /// Whether an order has challenges out.
    #[cfg(test)]
    pub(crate) fn is_open(&self) -> bool {
        let open = self.lock();
        !open.http.is_empty() || !open.alpn.is_empty()
    }

    /// Opens the challenges of one order; everything added through the guard is withdrawn
    /// when it drops, whatever way the order ends.
    pub(crate) fn open(self: &Arc<Self>) -> OpenChallenges {
        OpenChallenges {
            challenges: Arc::clone(self),
            tokens: Vec::new(),
            names: Vec::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        match self.open.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// The challenges one order has published.
#[derive(Debug)]
pub(crate) struct OpenChallenges {
    challenges: Arc<Challenges>,
    tokens: Vec<String>,
    names: Vec<String>,
}

impl OpenChallenges {
    pub(crate) fn add_http(&mut self, token: String, key_authorization: String) {
        self.challenges
            .lock()
            .http
            .insert(token.clone(), key_authorization);
        self.tokens.push(token);
    }

    pub(crate) fn add_alpn(&mut self, name: &str, certificate: CertifiedKey) {
        let name = crate::load::normalize_name(name);
        self.challenges
            .lock()
            .alpn
            .insert(name.clone(), Arc::new(certificate));
        self.names.push(name);
    }
}

impl Drop for OpenChallenges {
    fn drop(&mut self) {
        let mut open = self.challenges.lock();
        for token in &self.tokens {
            open.http.remove(token);
        }
        for name in &self.names {
            open.alpn.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_served_only_while_the_order_is_open() {
        let challenges = Arc::new(Challenges::default());
        assert_eq!(challenges.http_response("t1"), None);
        {
            let mut order = challenges.open();
            order.add_http("t1".into(), "t1.thumb".into());
            assert_eq!(challenges.http_response("t1").as_deref(), Some("t1.thumb"));
            assert_eq!(challenges.http_response("t2"), None);
            assert!(challenges.is_open());
        }
        assert_eq!(challenges.http_response("t1"), None);
        assert!(!challenges.is_open());
    }
}
