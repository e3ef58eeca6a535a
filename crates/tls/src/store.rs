//! The store: which files make up the certificate set, the `ArcSwap` that holds the served
//! set, publishing a new set (log lines, metrics) and the `check-config` dry run.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use postern_config::{KeyPermissions, TlsConfig};
use rustls::crypto::CryptoProvider;
use tracing::warn;

use crate::listener_config::ListenerTlsBuilder;
use crate::load::{self, Files, Source, SourceKind};
use crate::reload::Reloader;
use crate::set::{self, CertSet};
use crate::tickets::Ticketer;
use crate::{selfsigned, TlsError};
use postern_metrics::TlsMetrics;

/// The sources of one read and their bytes, in the order of the set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) sources: Vec<Source>,
    pub(crate) files: Vec<Files>,
}

/// What the `Tls` handle shares with resolvers, the watcher and the ACME task.
#[derive(Debug)]
pub(crate) struct Store {
    /// The configured certificates, or the self-signed pair when there are none.
    pub(crate) sources: Vec<Source>,
    /// The ACME certificate's files when `[tls.acme]` is on. Served first (the default for
    /// clients without SNI) once they exist; the self-signed pair then steps aside.
    acme: Option<Source>,
    /// The stored ACME pair did not load: left out until the ACME task installs a new one.
    acme_broken: AtomicBool,
    pub(crate) watch: bool,
    listener_tls: ListenerTlsBuilder,
    policy: KeyPermissions,
    provider: Arc<CryptoProvider>,
    current: Arc<ArcSwap<CertSet>>,
    metrics: TlsMetrics,
    reloader: Reloader,
    /// When validity warnings were last logged; they repeat at most daily.
    expiry_warned: Mutex<tokio::time::Instant>,
}

impl Store {
    pub(crate) fn load(
        config: &TlsConfig,
        state_dir: &Path,
        metrics: TlsMetrics,
        acme: Option<Source>,
    ) -> Result<Store, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let sources = if config.certificates.is_empty() {
            vec![selfsigned::ensure(state_dir, &provider)?]
        } else {
            configured_sources(config)
        };
        let acme_broken = AtomicBool::new(false);
        let with_acme = choose(&sources, acme.as_ref(), false);
        let built = read_snapshot(&with_acme).and_then(|snapshot| {
            set::build(
                &snapshot.sources,
                &snapshot.files,
                config.key_permissions,
                &provider,
            )
        });
        let (set, warnings) = match built {
            Ok(built) => built,
            // postern's own ACME files are replaceable: serve without them, order anew.
            Err(error) if with_acme.iter().any(|s| s.kind == SourceKind::Acme) => {
                warn!(error = %error.chain(), "the stored ACME certificate does not load; serving without it until the ACME server issues a new one");
                acme_broken.store(true, Ordering::Release);
                let snapshot = read_snapshot(&sources)?;
                set::build(
                    &snapshot.sources,
                    &snapshot.files,
                    config.key_permissions,
                    &provider,
                )?
            }
            Err(error) => return Err(error),
        };
        set.log(&warnings, "certificate loaded");
        for entry in &set.entries {
            metrics.set_expiry(&entry.info.name(), entry.info.not_after);
        }
        let ticketer = Ticketer::new(config.ticket_key_file.as_deref())?;
        let listener_tls =
            ListenerTlsBuilder::new(Arc::clone(&provider), config.min_version, ticketer)?;
        Ok(Store {
            sources,
            acme,
            acme_broken,
            watch: config.watch,
            listener_tls,
            policy: config.key_permissions,
            provider,
            current: Arc::new(ArcSwap::from_pointee(set)),
            metrics,
            reloader: Reloader::default(),
            expiry_warned: Mutex::new(tokio::time::Instant::now()),
        })
    }

    pub(crate) fn server_config(&self, alpn: &'static [u8]) -> Arc<rustls::ServerConfig> {
        self.listener_tls.build(&self.current, alpn)
    }

    /// Reloads every source; `Ok(false)` when the bytes on disk are what is already served.
    pub(crate) fn reload(&self) -> Result<bool, TlsError> {
        self.reload_logged(None).map_err(|(error, _)| error)
    }

    /// See [`Reloader::reload`].
    pub(crate) fn reload_logged(&self, settle: Option<Duration>) -> Result<bool, (TlsError, bool)> {
        self.reloader.reload(self, settle)
    }

    /// Reads the files of every source that is served now.
    pub(crate) fn read_snapshot(&self) -> Result<Snapshot, TlsError> {
        let broken = self.acme_broken.load(Ordering::Acquire);
        read_snapshot(&choose(&self.sources, self.acme.as_ref(), broken))
    }

    pub(crate) fn current_fingerprint(&self) -> Vec<u8> {
        self.current.load().fingerprint.clone()
    }

    pub(crate) fn build(&self, snapshot: &Snapshot) -> Result<(CertSet, Vec<String>), TlsError> {
        set::build(
            &snapshot.sources,
            &snapshot.files,
            self.policy,
            &self.provider,
        )
    }

    /// Runs `write` (the ACME task replacing its files) and then a reload, with no other
    /// reload in between, so none reads a half-written pair.
    pub(crate) fn install<E>(
        &self,
        write: impl FnOnce() -> Result<(), E>,
    ) -> Result<Result<bool, TlsError>, E> {
        self.reloader.write_then_reload(self, || {
            write()?;
            self.acme_broken.store(false, Ordering::Release);
            Ok(())
        })
    }

    /// What is served while there is no ACME certificate, for log lines.
    pub(crate) fn fallback_description(&self) -> &'static str {
        if self.sources.iter().all(Source::self_signed) {
            "the self-signed certificate"
        } else {
            "the configured certificate"
        }
    }

    pub(crate) fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    pub(crate) fn publish(&self, set: CertSet, warnings: &[String]) {
        set.log(warnings, "certificate reloaded");
        let old = self.current.load();
        let new_names: HashSet<String> = set.entries.iter().map(|e| e.info.name()).collect();
        for entry in &old.entries {
            if !new_names.contains(&entry.info.name()) {
                self.metrics.remove_expiry(&entry.info.name());
            }
        }
        for entry in &set.entries {
            self.metrics
                .set_expiry(&entry.info.name(), entry.info.not_after);
        }
        self.current.store(Arc::new(set));
        self.metrics.reload_ok();
    }

    pub(crate) fn reject(&self, error: &TlsError) {
        self.metrics.reload_error();
        warn!(error = %error.chain(), "certificate reload rejected; still serving the previous certificates");
    }

    /// Repeats the expiry warnings of the served set at most once a day, so a certificate that
    /// nears its end without any reload still shows up in the logs.
    pub(crate) fn warn_expiring(&self) {
        let mut last = match self.expiry_warned.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if last.elapsed() < EXPIRY_WARNING_EVERY {
            return;
        }
        let now = load::unix_now();
        let set = self.current.load();
        let warnings: Vec<String> = set
            .entries
            .iter()
            .flat_map(|e| e.info.validity_warnings(&e.source.cert, now, e.source.kind))
            .collect();
        for warning in &warnings {
            warn!("{warning}");
        }
        if !warnings.is_empty() {
            *last = tokio::time::Instant::now();
        }
    }
}

/// `Tls::check`: full validation, no generation, no metrics, no logs.
pub(crate) fn check(config: &TlsConfig, state_dir: &Path) -> Result<Vec<String>, TlsError> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let sources = if config.certificates.is_empty() {
        match selfsigned::existing(state_dir)? {
            Some(source) => match selfsigned::still_good(&source, &provider) {
                Ok(()) => vec![source],
                Err(reason) => {
                    return Ok(vec![format!(
                        "self-signed certificate in {} will be replaced at start: {reason}",
                        selfsigned::dir(state_dir).display()
                    )])
                }
            },
            None => {
                return Ok(vec![format!(
                    "self-signed certificate will be generated in {}",
                    selfsigned::dir(state_dir).display()
                )])
            }
        }
    } else {
        configured_sources(config)
    };
    let snapshot = read_snapshot(&sources)?;
    let (set, warnings) = set::build(
        &snapshot.sources,
        &snapshot.files,
        config.key_permissions,
        &provider,
    )?;
    let mut lines = set.describe();
    if let Some(path) = &config.ticket_key_file {
        let keys = crate::tickets::check(path)?;
        lines.push(format!("session ticket keys: {keys} in {}", path.display()));
    }
    lines.extend(warnings.into_iter().map(|w| format!("warning: {w}")));
    Ok(lines)
}

fn configured_sources(config: &TlsConfig) -> Vec<Source> {
    config
        .certificates
        .iter()
        .map(|c| Source {
            cert: c.cert.clone(),
            key: c.key.clone(),
            kind: SourceKind::Configured,
        })
        .collect()
}

fn read_snapshot(sources: &[Source]) -> Result<Snapshot, TlsError> {
    Ok(Snapshot {
        sources: sources.to_vec(),
        files: sources
            .iter()
            .map(load::read_files)
            .collect::<Result<_, _>>()?,
    })
}

/// The ACME certificate first once its file exists, then the configured certificates; the
/// self-signed pair only while there is no ACME certificate.
fn choose(sources: &[Source], acme: Option<&Source>, acme_broken: bool) -> Vec<Source> {
    match acme {
        Some(acme) if !acme_broken && acme.cert.exists() => std::iter::once(acme.clone())
            .chain(sources.iter().filter(|s| !s.self_signed()).cloned())
            .collect(),
        _ => sources.to_vec(),
    }
}

/// How often a served certificate's expiry warning is repeated.
const EXPIRY_WARNING_EVERY: Duration = Duration::from_secs(24 * 3600);
