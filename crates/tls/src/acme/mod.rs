//! ACME (RFC 8555): postern obtains and renews its certificate itself, from Let's Encrypt or
//! any RFC 8555 CA, with no certbot, no hook and no restart.
//!
//! - `task` is the loop (schedule, order, install, backoff) on the control runtime; `live` its
//!   driver; `order` one order over instant-acme; `http` the HTTPS transport to the CA.
//! - `sockets` binds `challenge_listen` before the privilege drop and serves it with
//!   `alpn` (tls-alpn-01) or `http01`, both answering only from `challenges`, which holds the
//!   open order's challenges and nothing otherwise.
//! - `files` is `state_dir/acme/`: `accounts/<CA>.json`, `fullchain.pem`, `privkey.pem`,
//!   `certificate.json` (which CA and names it was ordered for), all 0600 in a 0700 directory.
//!   The store serves `fullchain.pem` like a `[[tls.certificate]]`, first, once it exists.
//! - `schedule` is the arithmetic: renewal time with jitter, backoff per failure kind.

mod alpn;
mod challenges;
mod error;
mod files;
mod http;
mod http01;
mod live;
mod order;
mod schedule;
mod sockets;
mod task;

use std::sync::Arc;

pub use error::AcmeError;
use postern_config::{AcmeConfig, TlsConfig};
pub use sockets::ChallengeSockets;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::load::{self, Source};
use crate::store::Store;

/// The running ACME task: hand it a reloaded `[tls.acme]` with [`AcmeHandle::update`].
#[derive(Debug)]
pub struct AcmeHandle {
    updates: watch::Sender<Arc<AcmeConfig>>,
    task: tokio::task::JoinHandle<()>,
}

impl AcmeHandle {
    /// Applies a reloaded `[tls.acme]` between orders: names, contact, CA, `ca_roots`,
    /// challenge type and `renew_before`. A certificate for other names or another CA is
    /// ordered at once; the one in service stays until its replacement is installed.
    /// `challenge_listen` needs a restart (the sockets are bound at start). Unchanged settings
    /// are ignored.
    pub fn update(&self, settings: &AcmeConfig) {
        self.updates.send_if_modified(|current| {
            if **current == *settings {
                return false;
            }
            *current = Arc::new(settings.clone());
            true
        });
    }

    /// Whether the task has ended (only on shutdown).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Binds `challenge_listen`. Call before dropping privileges (ports 80 and 443).
pub fn bind(settings: &AcmeConfig) -> Result<ChallengeSockets, AcmeError> {
    sockets::bind(&settings.challenge_listen, settings.challenge.port())
}

/// Before dropping privileges to `uid:gid`: gives `state_dir/acme/` (created when missing)
/// and its files to that user, so the ACME task can write there after the drop, and lets the
/// user enter `state_dir`. No permissions for the admin to arrange.
pub fn prepare_for_user(settings: &AcmeConfig, uid: u32, gid: u32) -> Result<(), AcmeError> {
    let files = files::AcmeFiles::new(settings.store.clone());
    if files.hand_over(uid, gid)? {
        tracing::info!(dir = %settings.store.display(), uid, "let postern's user enter the state directory (search permission added) for the ACME files");
    }
    Ok(())
}

/// The store source of the ACME certificate.
pub(crate) fn source(settings: &AcmeConfig) -> Source {
    files::AcmeFiles::new(settings.store.clone()).source()
}

/// Whether `cert` is the certificate file of an ACME state directory.
pub(crate) fn is_acme_certificate(cert: &std::path::Path) -> bool {
    cert.parent().is_some_and(|dir| {
        files::AcmeFiles::new(dir.to_path_buf()).cert() == cert
            && files::AcmeFiles::new(dir.to_path_buf()).has_order_record()
    })
}

/// Starts the challenge responders and the ACME task on the current runtime (the control
/// runtime). Fails at once on what the configuration or the host got wrong (`ca_roots`, no
/// system roots); the CA being unreachable is not an error here but a retry in the task.
pub(crate) fn spawn(
    store: Arc<Store>,
    settings: &AcmeConfig,
    sockets: ChallengeSockets,
    shutdown: CancellationToken,
) -> Result<AcmeHandle, AcmeError> {
    let settings = Arc::new(settings.clone());
    let provider = Arc::clone(store.provider());
    let challenges = Arc::new(challenges::Challenges::default());
    let http = http::CaHttp::new(settings.ca_roots.as_deref(), Arc::clone(&provider))?;
    let config =
        alpn::server_config(Arc::clone(&challenges), Arc::clone(&provider)).map_err(|e| {
            AcmeError::Order {
                domains: settings.domains.clone(),
                what: format!("the TLS library refused the tls-alpn-01 responder: {e}"),
            }
        })?;
    let kind = sockets::ResponderKind::new(settings.challenge);
    let responder = sockets::Responder {
        acceptor: tokio_rustls::TlsAcceptor::from(config),
        challenges: Arc::clone(&challenges),
        kind: kind.clone(),
    };
    sockets::spawn(sockets, responder, shutdown.clone())?;
    let files = files::AcmeFiles::new(settings.store.clone());
    if files.stored(&provider).is_none() {
        warn!(
            domains = %settings.domains.join(","),
            directory = %settings.directory,
            serving = store.fallback_description(),
            "no certificate from the ACME server yet; serving the fallback certificate until the CA issues one"
        );
    }
    let goal = task::Goal::from(&*settings);
    let live = live::Live {
        orderer: order::Orderer::new(
            Arc::clone(&settings),
            http,
            Arc::clone(&challenges),
            provider,
        ),
        settings: Arc::clone(&settings),
        store,
        files,
        challenges,
        responder_kind: kind,
    };
    let (updates, rx) = watch::channel(settings);
    let task = tokio::spawn(task::run(live, goal, Some(rx), shutdown));
    Ok(AcmeHandle { updates, task })
}

/// `check-config`'s lines beyond the config summary (which names the CA, the challenge and
/// `challenge_listen`): where the CA connects, the account and the stored certificate, what is
/// served until the first issue. Empty without `[tls.acme]`; fails on an unusable `ca_roots`.
pub fn describe(tls: &TlsConfig) -> Result<Vec<String>, AcmeError> {
    let Some(settings) = &tls.acme else {
        return Ok(Vec::new());
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    if let Some(path) = &settings.ca_roots {
        http::CaHttp::new(Some(path), Arc::clone(&provider))?;
    }
    let port = settings.challenge.port();
    let names = settings.domains.join(", ");
    let mut lines = Vec::new();
    if settings.challenge_listen.iter().all(|a| a.port() == port) {
        lines.push(format!(
            "ACME: the CA validates {names} by connecting to port {port} of each name ({}); postern answers there itself",
            settings.challenge.as_str()
        ));
    } else {
        let listen: Vec<String> = settings
            .challenge_listen
            .iter()
            .map(ToString::to_string)
            .collect();
        lines.push(format!(
            "ACME: the CA validates {names} by connecting to port {port} of each name ({}); forward that port to {}",
            settings.challenge.as_str(),
            listen.join(", ")
        ));
    }
    let files = files::AcmeFiles::new(settings.store.clone());
    let account = files.account(&settings.directory);
    lines.push(if account.exists() {
        format!("ACME: account {}", account.display())
    } else {
        format!(
            "ACME: a new account (contact: {}) will be created and kept in {}; configuring [tls.acme] accepts the CA's terms of service",
            if settings.contact.is_empty() { "none".to_owned() } else { settings.contact.join(", ") },
            account.display()
        )
    });
    let fallback = if tls.certificates.is_empty() {
        "the self-signed certificate"
    } else {
        "the configured certificate"
    };
    lines.push(match files.stored(&provider) {
        Some(stored) if stored.matches(&settings.directory, &settings.domains) => {
            let plan =
                schedule::plan(stored.not_before, stored.not_after, settings.renew_before, 0.0);
            format!(
                "ACME: certificate {} is served first; it expires {}; renewal from {}",
                files.cert().display(),
                load::format_time(stored.not_after),
                load::format_time(plan.renew_at)
            )
        }
        Some(_) => format!(
            "ACME: the certificate in {} is for other names or another CA: postern serves it and orders a new one at start",
            files.cert().display()
        ),
        None => format!(
            "ACME: no certificate yet: postern orders one at start and serves {fallback} until the CA issues it"
        ),
    });
    Ok(lines)
}
