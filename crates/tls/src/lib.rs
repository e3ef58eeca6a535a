//! TLS certificates for postern: loading and validation, the SNI-resolving store handed to
//! rustls, one `ServerConfig` per listener, hot reload, and the `postern cert generate` /
//! `postern cert inspect` commands.
//!
//! Must not depend on: the session, listener or backend crates; it never sees application
//! bytes, only performs handshakes (through the `ServerConfig` it builds).
//!
//! # Invariants
//! - A certificate set becomes visible to handshakes only after every entry parsed, its key
//!   matched the certificate and its key file passed the permission policy. A failed reload
//!   never removes a working certificate: the previous set keeps serving.
//! - Reloads replace the whole set atomically (one `ArcSwap` store); a handshake sees either
//!   the old set or the new one, never a mix. `ServerConfig`s are built once per listener and
//!   survive reloads.
//! - A configured file that is missing is an error; the self-signed certificate in the state
//!   directory is used only when no `[[tls.certificate]]` is configured.
//! - No global state: the store, its metrics and the watcher are values owned by the caller.
//!
//! # Modules
//! `load` (one pair: parse, match, permissions) → `set` (the SNI-indexed snapshot) → `store`
//! (the `ArcSwap` holding it, publish, `check-config`) ← `reload` (retrying, de-duplicated
//! reload) ← `cert_watcher` (on `file_events`: notify on the files' directories, the debounce
//! and the periodic re-check, also used by postern's configuration watcher). `resolver` is what
//! rustls calls per handshake; `listener_config` builds each listener's `ServerConfig`;
//! `fingerprint` digests the files; `tickets` is the process's session-ticket key ring
//! (rotation, `tls.ticket_key_file` reload) over `ticket_keys` (the file format, seal/open).
//!
//! # Reload sequence
//! 1. The certificate file watcher (`notify`/inotify) reports a change in a directory holding
//!    a certificate or key, or in the directory a symlink resolves to (Kubernetes `..data`);
//!    or the 60 s re-check fires.
//! 2. The watcher waits until the directory has been quiet for the debounce (200 ms).
//! 3. All files are read; if their SHA-256 equals the served set's, nothing happens.
//! 4. Every pair is parsed and validated; a failure is re-checked for a replacement still being
//!    written (files changing within ~0.3 s) before it is logged and counted.
//! 5. The new set is swapped in; handshakes from then on use it, open sessions keep theirs.
//! 6. Watched directories are re-resolved (symlinks may now point elsewhere).

pub mod acme;
mod cert_watcher;
mod error;
pub mod file_events;
mod fingerprint;
pub mod generate;
pub mod inspect;
mod listener_config;
mod load;
mod reload;
mod resolver;
mod selfsigned;
mod set;
mod store;
mod ticket_keys;
mod tickets;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use cert_watcher::CertWatcherOptions;
pub use error::TlsError;
use postern_metrics::TlsMetrics;

/// The certificate store and everything built on it. Cheap to share (Arc inside).
#[derive(Clone, Debug)]
pub struct Tls {
    inner: Arc<store::Store>,
}

impl Tls {
    /// Loads every `[[tls.certificate]]` (or, when there is none, loads or generates the
    /// self-signed pair in `<state_dir>/selfsigned/`), validates fully, logs one line per
    /// certificate and every warning, and sets the expiry metrics. With `[tls.acme]`, the
    /// stored ACME certificate, when there is one, is served first and the self-signed pair
    /// steps aside.
    pub fn load(
        config: &postern_config::TlsConfig,
        state_dir: &Path,
        metrics: TlsMetrics,
    ) -> Result<Tls, TlsError> {
        let acme = config.acme.as_ref().map(acme::source);
        store::Store::load(config, state_dir, metrics, acme).map(|inner| Tls {
            inner: Arc::new(inner),
        })
    }

    /// Starts the ACME challenge responders on `sockets` (from [`acme::bind`]) and the ACME
    /// task, on the current runtime, until `shutdown`. The task orders when there is no
    /// certificate for the configured CA and names, renews when less than `renew_before` is
    /// left, and installs each new certificate into this store.
    pub fn spawn_acme(
        &self,
        settings: &postern_config::AcmeConfig,
        sockets: acme::ChallengeSockets,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<acme::AcmeHandle, acme::AcmeError> {
        acme::spawn(Arc::clone(&self.inner), settings, sockets, shutdown)
    }

    /// What is served while no ACME certificate has been issued (for `check-config`).
    pub fn fallback_description(&self) -> &'static str {
        self.inner.fallback_description()
    }

    /// Same validation as [`Tls::load`] without side effects (no generation, no metrics, no
    /// log lines): for `postern check-config`. Returns one line per certificate, then one line
    /// per warning.
    pub fn check(
        config: &postern_config::TlsConfig,
        state_dir: &Path,
    ) -> Result<Vec<String>, TlsError> {
        store::check(config, state_dir)
    }

    /// A rustls `ServerConfig` for one listener: TLS 1.2+1.3 or 1.3 only per
    /// `tls.min_version`, SNI resolution over the shared store, ALPN = `[alpn]` only (a client
    /// that offers ALPN without it gets a fatal `no_application_protocol` alert; a client that
    /// offers none is served). Build once per listener; reloads swap only the store.
    pub fn server_config(&self, alpn: &'static [u8]) -> Arc<rustls::ServerConfig> {
        self.inner.server_config(alpn)
    }

    /// When `tls.watch` is on: watches the certificate files and their directories and
    /// re-checks every 60 s; on a change (debounced) reloads the whole set and swaps it in, or
    /// keeps the old one and counts an error. Runs on the current tokio runtime until
    /// `shutdown` is cancelled. When `tls.watch` is off, or only the self-signed pair from the
    /// state directory is served, the returned task ends at once.
    pub fn spawn_watcher(
        &self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, TlsError> {
        self.spawn_watcher_with(shutdown, CertWatcherOptions::default())
    }

    /// [`Tls::spawn_watcher`] with explicit timing (tests use a short poll and debounce).
    pub fn spawn_watcher_with(
        &self,
        shutdown: tokio_util::sync::CancellationToken,
        options: CertWatcherOptions,
    ) -> Result<tokio::task::JoinHandle<()>, TlsError> {
        cert_watcher::spawn(Arc::clone(&self.inner), shutdown, options)
    }

    /// Forces one reload now. Returns whether a new set was published (`false`: the files are
    /// unchanged). On error the previous set keeps serving.
    pub fn reload_now(&self) -> Result<bool, TlsError> {
        self.inner.reload()
    }
}

/// How long a reload waits for a burst of file events to settle.
pub(crate) const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);
/// The backstop re-check for file systems whose events are lost.
pub(crate) const DEFAULT_POLL: Duration = Duration::from_secs(60);
/// A served certificate that expires sooner than this is logged as a warning.
pub(crate) const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);
