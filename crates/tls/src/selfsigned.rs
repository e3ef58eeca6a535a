//! The self-signed pair in the state directory, used when no `[[tls.certificate]]` is
//! configured: generated on first start, reused afterwards, regenerated when near expiry.

use std::path::{Path, PathBuf};

use postern_config::KeyPermissions;
use rustls::crypto::CryptoProvider;
use tracing::{info, warn};

use crate::generate::{self, KeyType};
use crate::load::{self, Source, SourceKind};
use crate::TlsError;

/// `<state_dir>/selfsigned`
pub(crate) fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("selfsigned")
}

/// The existing pair, `None` when neither file exists. One file without the other is an
/// error: postern does not overwrite what it cannot explain.
pub(crate) fn existing(state_dir: &Path) -> Result<Option<Source>, TlsError> {
    let dir = dir(state_dir);
    let cert = dir.join(CERT_FILE);
    let key = dir.join(KEY_FILE);
    match (cert.exists(), key.exists()) {
        (true, true) => Ok(Some(Source {
            cert,
            key: Some(key),
            kind: SourceKind::SelfSigned,
        })),
        (false, false) => Ok(None),
        (true, false) | (false, true) => Err(TlsError::SelfSignedHalfPair {
            dir: dir.clone(),
            cert_file: CERT_FILE,
            key_file: KEY_FILE,
        }),
    }
}

/// The pair to serve, generating it when missing, unusable (damaged files) or when it expires
/// within 30 days: postern owns these files, so replacing them is safe.
pub(crate) fn ensure(state_dir: &Path, provider: &CryptoProvider) -> Result<Source, TlsError> {
    let dir = dir(state_dir);
    if let Some(source) = existing(state_dir)? {
        match still_good(&source, provider) {
            Ok(()) => return Ok(source),
            Err(reason) => {
                warn!(dir = %dir.display(), %reason, "replacing the self-signed certificate")
            }
        }
    }
    let names = host_names();
    create_private_dir(&dir)?;
    let (cert, key) = generate::write_self_signed(&names, &dir, VALID_DAYS, KeyType::EcdsaP256)
        .map_err(|e| TlsError::SelfSigned {
            dir: dir.clone(),
            source: Box::new(e),
        })?;
    info!(dir = %dir.display(), names = %names.join(","), "generated a self-signed certificate");
    Ok(Source {
        cert,
        key: Some(key),
        kind: SourceKind::SelfSigned,
    })
}

/// The host name (kernel's, else gethostname) plus `localhost`, lower-case, de-duplicated.
pub(crate) fn host_names() -> Vec<String> {
    let from_proc = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let host = from_proc
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
        })
        .map(|h| load::normalize_name(&h))
        .filter(|h| !h.is_empty() && h != "localhost");
    let mut names: Vec<String> = host.into_iter().collect();
    names.push("localhost".to_owned());
    names
}

pub(crate) fn still_good(source: &Source, provider: &CryptoProvider) -> Result<(), String> {
    let files = load::read_files(source).map_err(|e| e.to_string())?;
    let (loaded, _) =
        load::load(source, &files, KeyPermissions::Warn, provider).map_err(|e| e.to_string())?;
    if loaded.info.not_after - load::unix_now() < RENEW_BEFORE_SECS {
        return Err(format!(
            "it expires on {}",
            load::format_time(loaded.info.not_after)
        ));
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| TlsError::SelfSigned {
            dir: dir.to_path_buf(),
            source: Box::new(e),
        })
}

const CERT_FILE: &str = "fullchain.pem";
const KEY_FILE: &str = "privkey.pem";
/// 825 days: the longest validity Apple clients accept for a TLS server certificate.
const VALID_DAYS: u32 = 825;
const RENEW_BEFORE_SECS: i64 = 30 * 86_400;
