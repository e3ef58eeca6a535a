//! The certificate set (one immutable snapshot per load), the store that swaps it, the SNI
//! resolver over it, and the per-listener `ServerConfig` builder.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use postern_config::{KeyPermissions, TlsConfig, TlsVersion};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

use crate::load::{self, Files, Loaded, Source};
use crate::{selfsigned, TlsError};
use postern_metrics::TlsMetrics;

/// All certificates of one successful load; replaced as a whole.
#[derive(Debug)]
pub(crate) struct CertSet {
    entries: Vec<Loaded>,
    /// Lower-case DNS name → index into `entries`; the first entry naming it wins.
    exact: HashMap<String, usize>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, usize>,
    /// SHA-256 of the files this set was built from, to skip reloads that change nothing
    /// (a digest, so no second copy of the private keys stays in memory).
    fingerprint: Vec<u8>,
}

impl CertSet {
    fn new(entries: Vec<Loaded>, fingerprint: Vec<u8>) -> CertSet {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            for name in entry.info.all_names() {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_owned()).or_insert(i),
                    None => exact.entry(name).or_insert(i),
                };
            }
        }
        CertSet {
            entries,
            exact,
            wildcard,
            fingerprint,
        }
    }

    /// Exact SAN, then a wildcard one label deep, then the first configured certificate.
    fn resolve(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let index = server_name.map(load::normalize_name).and_then(|name| {
            self.exact.get(&name).or_else(|| {
                name.split_once('.')
                    .and_then(|(_, parent)| self.wildcard.get(parent))
            })
        });
        let entry = self.entries.get(index.copied().unwrap_or(0))?;
        Some(Arc::clone(&entry.certified))
    }
}

/// What the `Tls` handle shares with resolvers and the watcher.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) sources: Vec<Source>,
    pub(crate) watch: bool,
    /// Provider and protocol versions, checked once at load so per-listener builds cannot fail.
    builder: rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier>,
    policy: KeyPermissions,
    provider: Arc<CryptoProvider>,
    current: Arc<ArcSwap<CertSet>>,
    metrics: TlsMetrics,
    /// Serialises reloads and remembers the last failure (the rejected files' fingerprint, or
    /// the read error's text), so the periodic re-check of a still-broken file does not log
    /// and count the same failure every minute.
    reload: Mutex<Option<Vec<u8>>>,
    /// When validity warnings were last logged; they repeat at most daily.
    expiry_warned: Mutex<std::time::Instant>,
}

impl Shared {
    pub(crate) fn load(
        config: &TlsConfig,
        state_dir: &Path,
        metrics: TlsMetrics,
    ) -> Result<Shared, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let sources = if config.certificates.is_empty() {
            vec![selfsigned::ensure(state_dir, &provider)?]
        } else {
            configured_sources(config)
        };
        let files = read_all(&sources)?;
        let (set, warnings) = build(&sources, &files, config.key_permissions, &provider)?;
        log_set(&set, &warnings, "certificate loaded");
        for entry in &set.entries {
            metrics.set_expiry(&entry.info.name(), entry.info.not_after);
        }
        let versions: &[&'static rustls::SupportedProtocolVersion] = match config.min_version {
            TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::V1_3 => &[&rustls::version::TLS13],
        };
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .map_err(|e| TlsError::Provider {
                reason: e.to_string(),
            })?;
        Ok(Shared {
            sources,
            watch: config.watch,
            builder,
            policy: config.key_permissions,
            provider,
            current: Arc::new(ArcSwap::from_pointee(set)),
            metrics,
            reload: Mutex::new(None),
            expiry_warned: Mutex::new(std::time::Instant::now()),
        })
    }

    pub(crate) fn server_config(&self, alpn: &'static [u8]) -> Arc<rustls::ServerConfig> {
        let resolver = Arc::new(SniResolver {
            current: Arc::clone(&self.current),
        });
        let mut config = self
            .builder
            .clone()
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = vec![alpn.to_vec()];
        // Mail clients reconnect often (several IMAP connections per account), so stateful
        // resumption pays; a bounded cache keeps memory flat under connection floods.
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
        config.send_tls13_tickets = 1;
        Arc::new(config)
    }

    /// Reloads every source; `Ok(false)` when the bytes on disk are what is already served.
    pub(crate) fn reload(&self) -> Result<bool, TlsError> {
        self.reload_logged(None).map_err(|(error, _)| error)
    }

    /// Like `reload`, and also tells whether a failure repeats the previous one (same bytes),
    /// in which case it was neither logged nor counted again. With `settle`, a failure is
    /// first re-checked after that long (blocking): if the files changed meanwhile, the read
    /// caught a replacement half-way (new key, old certificate) and is retried, unreported.
    pub(crate) fn reload_logged(&self, settle: Option<Duration>) -> Result<bool, (TlsError, bool)> {
        let mut last_failed = match self.reload.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut retries = if settle.is_some() {
            TORN_READ_RETRIES
        } else {
            0
        };
        loop {
            let (files, result) = match read_all(&self.sources) {
                Ok(files) => {
                    if self.current.load().fingerprint == fingerprint(&files) {
                        *last_failed = None;
                        return Ok(false);
                    }
                    let built = build(&self.sources, &files, self.policy, &self.provider);
                    (Some(files), built)
                }
                Err(error) => (None, Err(error)),
            };
            let error = match result {
                Ok((set, warnings)) => {
                    *last_failed = None;
                    self.publish(set, &warnings);
                    return Ok(true);
                }
                Err(error) => error,
            };
            if let Some(wait) = settle {
                // Wait for the writer to finish: poll for changed bytes a few times.
                let wait = wait.max(TORN_READ_MIN_WAIT);
                let mut changed = false;
                while retries > 0 && !changed {
                    retries -= 1;
                    std::thread::sleep(wait);
                    changed = read_all(&self.sources).ok() != files;
                }
                if changed {
                    continue;
                }
            }
            // The same bytes failing again (or the same file unreadable for the same reason,
            // e.g. after a privilege drop) is one failure, not one per minute.
            let failed = match files.as_deref() {
                Some(files) => fingerprint(files),
                None => error.chain().into_bytes(),
            };
            let repeated = last_failed.as_ref() == Some(&failed);
            if !repeated {
                self.reject(&error);
                *last_failed = Some(failed);
            }
            return Err((error, repeated));
        }
    }

    fn publish(&self, set: CertSet, warnings: &[String]) {
        log_set(&set, warnings, "certificate reloaded");
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
            .flat_map(|e| e.info.validity_warnings(&e.source.cert, now))
            .collect();
        for warning in &warnings {
            warn!("{warning}");
        }
        if !warnings.is_empty() {
            *last = std::time::Instant::now();
        }
    }

    fn reject(&self, error: &TlsError) {
        self.metrics.reload_error();
        warn!(error = %error.chain(), "certificate reload rejected; still serving the previous certificates");
    }

    /// Directories to watch: each file's directory and, through symlinks, its target's
    /// directory (Kubernetes `..data` layouts). Re-resolved after every event.
    pub(crate) fn watch_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        for source in &self.sources {
            for file in [Some(source.cert.as_path()), source.key.as_deref()]
                .into_iter()
                .flatten()
            {
                dirs.extend(file.parent().map(Path::to_path_buf));
                if let Ok(real) = std::fs::canonicalize(file) {
                    dirs.extend(real.parent().map(Path::to_path_buf));
                }
            }
        }
        let mut seen = HashSet::new();
        dirs.retain(|d| !d.as_os_str().is_empty() && seen.insert(d.clone()));
        dirs
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
    let files = read_all(&sources)?;
    let (set, warnings) = build(&sources, &files, config.key_permissions, &provider)?;
    let mut lines: Vec<String> = set.entries.iter().map(describe).collect();
    lines.extend(warnings.into_iter().map(|w| format!("warning: {w}")));
    Ok(lines)
}

#[derive(Debug)]
struct SniResolver {
    current: Arc<ArcSwap<CertSet>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().resolve(hello.server_name())
    }
}

fn configured_sources(config: &TlsConfig) -> Vec<Source> {
    config
        .certificates
        .iter()
        .map(|c| Source {
            cert: c.cert.clone(),
            key: c.key.clone(),
            self_signed: false,
        })
        .collect()
}

/// SHA-256 over every file's bytes and key mode, each part length-prefixed so boundaries
/// count.
fn fingerprint(files: &[Files]) -> Vec<u8> {
    let mut chunks: Vec<([u8; 8], &[u8])> = Vec::new();
    for f in files {
        chunks.push(((f.cert.len() as u64).to_be_bytes(), &f.cert));
        let key = f.key.as_deref().unwrap_or_default();
        chunks.push(((key.len() as u64).to_be_bytes(), key));
        chunks.push((u64::from(f.key_mode).to_be_bytes(), &[]));
    }
    match rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256 {
        rustls::SupportedCipherSuite::Tls13(suite) => {
            let mut ctx = suite.common.hash_provider.start();
            for (frame, bytes) in &chunks {
                ctx.update(frame);
                ctx.update(bytes);
            }
            ctx.finish().as_ref().to_vec()
        }
        // Not reachable (a TLS 1.3 suite constant); the bytes themselves compare exactly.
        _ => chunks
            .iter()
            .flat_map(|(frame, bytes)| frame.iter().chain(bytes.iter()))
            .copied()
            .collect(),
    }
}

fn read_all(sources: &[Source]) -> Result<Vec<Files>, TlsError> {
    sources.iter().map(load::read_files).collect()
}

fn build(
    sources: &[Source],
    files: &[Files],
    policy: KeyPermissions,
    provider: &CryptoProvider,
) -> Result<(CertSet, Vec<String>), TlsError> {
    let mut entries = Vec::with_capacity(sources.len());
    let mut warnings = Vec::new();
    for (source, bytes) in sources.iter().zip(files) {
        let (loaded, mut w) = load::load(source, bytes, policy, provider)?;
        if source.self_signed {
            w.push(format!(
                "serving the self-signed certificate {} generated by postern: mail clients will not trust it and will warn or refuse; configure [[tls.certificate]] with a certificate from your CA or ACME client (certbot: cert = \"/etc/letsencrypt/live/HOST/fullchain.pem\", key = \"/etc/letsencrypt/live/HOST/privkey.pem\")",
                source.cert.display()
            ));
        }
        entries.push(loaded);
        warnings.extend(w);
    }
    Ok((CertSet::new(entries, fingerprint(files)), warnings))
}

fn log_set(set: &CertSet, warnings: &[String], message: &str) {
    for entry in &set.entries {
        info!(
            file = %entry.source.cert.display(),
            key = %entry.source.key_file().display(),
            sans = %entry.info.all_names().join(","),
            not_after = %load::format_time(entry.info.not_after),
            "{message}"
        );
    }
    for warning in warnings {
        warn!("{warning}");
    }
}

fn describe(entry: &Loaded) -> String {
    let days = (entry.info.not_after - load::unix_now()) / 86_400;
    format!(
        "certificate {} (key {}): {} [{}], expires {} ({} days){}",
        entry.source.cert.display(),
        entry.source.key_file().display(),
        entry.info.all_names().join(", "),
        entry.info.key_type,
        load::format_time(entry.info.not_after),
        days,
        if entry.source.self_signed {
            ", self-signed"
        } else {
            ""
        }
    )
}

/// How often, and how far apart at least, a failed reload under the watcher is re-checked for
/// a replacement still being written (a failure is reported after ~0.3 s of unchanged files).
const TORN_READ_RETRIES: u32 = 3;
const TORN_READ_MIN_WAIT: Duration = Duration::from_millis(100);
/// How often a served certificate's expiry warning is repeated.
const EXPIRY_WARNING_EVERY: Duration = Duration::from_secs(24 * 3600);
/// Resumption cache size per listener.
const SESSION_CACHE_ENTRIES: usize = 1024;
