//! Why an ACME step failed, classified so the task knows how long to back off.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use instant_acme::Problem;

use crate::TlsError;

/// An ACME failure. Every message says what postern was doing and what the admin can do.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// A `challenge_listen` address could not be bound.
    #[error("cannot listen on tls.acme.challenge_listen = {addr} for the CA's validation connections: {source}; free the port, let postern bind it (start as root with server.user, or give it CAP_NET_BIND_SERVICE), or set challenge_listen to another address that port {port} is forwarded to")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The port the CA connects to for this challenge type.
        port: u16,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// `ca_roots` could not be used.
    #[error("tls.acme.ca_roots = {path} {what}; point it at a PEM bundle holding the certificate(s) that issued the ACME server's HTTPS certificate, or set ca_roots = \"\" for the system roots")]
    Roots {
        /// The file.
        path: PathBuf,
        /// What is wrong with it: "cannot be read", "is not valid PEM", ...
        what: &'static str,
        /// The reader's, parser's or verifier's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// `ca_roots` holds no certificate.
    #[error("tls.acme.ca_roots = {path} holds no `-----BEGIN CERTIFICATE-----` block; point it at a PEM bundle holding the certificate(s) that issued the ACME server's HTTPS certificate, or set ca_roots = \"\" for the system roots")]
    NoRoots {
        /// The file.
        path: PathBuf,
    },

    /// The TLS library refused a configuration postern builds itself (a bug to report).
    #[error("the TLS library refused {what}; report this as a bug")]
    TlsLibrary {
        /// Which configuration.
        what: &'static str,
        /// rustls's error.
        #[source]
        source: rustls::Error,
    },

    /// The blocking task that installs a certificate did not finish (a bug to report).
    #[error("installing the issued certificate did not finish; report this as a bug")]
    Install {
        /// Why the task ended.
        #[source]
        source: tokio::task::JoinError,
    },

    /// No system roots to verify the CA's HTTPS certificate.
    #[error("no system CA roots to verify the ACME server ({source}); install the ca-certificates package or set tls.acme.ca_roots")]
    SystemRoots {
        /// The loader's error.
        #[source]
        source: io::Error,
    },

    /// The CA could not be reached or answered with something that is not ACME.
    #[error("cannot reach the ACME server {directory}: {source}; check the directory URL, DNS, outbound HTTPS and ca_roots; postern keeps the current certificate and retries")]
    Unreachable {
        /// The directory URL.
        directory: String,
        /// What failed.
        #[source]
        source: instant_acme::Error,
    },

    /// The CA answered with a problem document (RFC 7807): it refused a request.
    #[error("the ACME server refused {during}: {problem}")]
    Refused {
        /// Which step.
        during: &'static str,
        /// The CA's problem document.
        problem: Problem,
        /// The CA's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },

    /// The CA could not validate a name.
    #[error("the ACME server could not validate {domain} by {challenge}: {problem}; make sure {domain} resolves to this host and that port {port} reaches postern's challenge_listen")]
    Validation {
        /// The name.
        domain: String,
        /// The challenge type.
        challenge: &'static str,
        /// The port the CA connects to.
        port: u16,
        /// The CA's problem document for the challenge.
        problem: Problem,
    },

    /// The order went wrong in a way the CA did not explain with a problem document.
    #[error("ACME order for {domains:?}: {what}")]
    Order {
        /// The names.
        domains: Vec<String>,
        /// What happened.
        what: String,
    },

    /// The CA did not finish in time.
    #[error("the ACME server did not finish {during} within {secs} s; postern retries later")]
    Timeout {
        /// Which step.
        during: &'static str,
        /// The deadline.
        secs: u64,
    },

    /// A file under `state_dir/acme/` could not be read or written.
    #[error("cannot {action} {path}: {source}; make state_dir/acme writable by the user postern runs as (e.g. `chown -R postern {dir}`)")]
    Storage {
        /// `read`, `write`, `create`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The stored account file is damaged.
    #[error("the ACME account file {path} is damaged ({source}); delete it and postern creates a new account")]
    Account {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },

    /// A key or a challenge certificate could not be generated.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },

    /// The certificate the CA issued does not load (it is not installed).
    #[error("the certificate the ACME server issued is not usable; it was not installed")]
    Issued {
        /// Why it does not load.
        #[source]
        source: TlsError,
    },
}

/// How an error should be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// The CA was not reachable or timed out: retry soon, then back off.
    Unreachable,
    /// The CA refused or validation failed: back off more (failed validations count
    /// against the CA's rate limits).
    Refused,
    /// The CA said to slow down (`rateLimited`, HTTP 429 or 503).
    RateLimited,
    /// Local: the disk, the state directory.
    Local,
}

impl AcmeError {
    /// A `challenge_listen` address could not be bound (a host problem, not the config's).
    pub fn is_bind(&self) -> bool {
        matches!(self, AcmeError::Bind { .. })
    }

    pub(crate) fn kind(&self) -> FailureKind {
        match self {
            AcmeError::Unreachable { .. } | AcmeError::Timeout { .. } => FailureKind::Unreachable,
            AcmeError::Refused { problem, .. } if is_rate_limit(problem) => {
                FailureKind::RateLimited
            }
            AcmeError::Refused { .. } | AcmeError::Validation { .. } | AcmeError::Order { .. } => {
                FailureKind::Refused
            }
            AcmeError::Bind { .. }
            | AcmeError::Roots { .. }
            | AcmeError::NoRoots { .. }
            | AcmeError::TlsLibrary { .. }
            | AcmeError::Install { .. }
            | AcmeError::SystemRoots { .. }
            | AcmeError::Storage { .. }
            | AcmeError::Account { .. }
            | AcmeError::Generate { .. }
            | AcmeError::Issued { .. } => FailureKind::Local,
        }
    }

    /// The CA's `Retry-After`, when the failure carries one.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            AcmeError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The problem document, for the log line's own fields.
    pub(crate) fn problem(&self) -> Option<&Problem> {
        match self {
            AcmeError::Refused { problem, .. } | AcmeError::Validation { problem, .. } => {
                Some(problem)
            }
            _ => None,
        }
    }
}

fn is_rate_limit(problem: &Problem) -> bool {
    problem.r#type.as_deref() == Some("urn:ietf:params:acme:error:rateLimited")
        || matches!(problem.status, Some(429 | 503))
}
