//! TLS from postern to a backend's servers (`tls`, `tls_ca`, `tls_name`): the client
//! configuration a pool builds once, the name each server's certificate must carry, and
//! the handshake. Used alike by session connects, health probes and warm spares, so a
//! server is only ever used over the TLS it is configured with.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use postern_config::{BackendTls, ServerAddr, TlsMode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use tokio_rustls::TlsConnector;

use crate::error::{BuildError, ServerError};
use crate::stream::BackendStream;

/// A backend's TLS settings, ready to connect with.
#[derive(Clone)]
pub(crate) struct TlsClient {
    pub(crate) mode: TlsMode,
    connector: TlsConnector,
    /// `tls_name`, parsed; `None` = each server's own host.
    name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("mode", &self.mode)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Reads `tls_ca` (or the system roots) and builds the client configuration. Blocking
    /// (file reads): the caller builds pools off the runtime threads or at start.
    pub(crate) fn new(backend: &str, tls: &BackendTls) -> Result<TlsClient, BuildError> {
        let roots = match &tls.ca {
            Some(path) => load_ca(backend, path)?,
            None => system_roots(backend)?,
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| BuildError::TlsLibrary {
                backend: backend.to_owned(),
                source,
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = match &tls.name {
            Some(n) => Some(parse_name(n).ok_or_else(|| BuildError::TlsName {
                backend: backend.to_owned(),
                name: n.clone(),
            })?),
            None => None,
        };
        Ok(TlsClient {
            mode: tls.mode,
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }

    /// The name `addr`'s certificate must carry: `tls_name`, else the configured host
    /// (`host` is the name as written in `servers`, which for a DNS-discovered address is
    /// the name it was resolved from, not the address).
    pub(crate) fn server_name(
        &self,
        host: Option<&str>,
        label: &str,
    ) -> Result<ServerName<'static>, ServerError> {
        if let Some(name) = &self.name {
            return Ok(name.clone());
        }
        host.and_then(parse_name)
            .ok_or_else(|| ServerError::TlsName {
                server: label.to_owned(),
                name: host.unwrap_or("").to_owned(),
            })
    }

    /// The TLS handshake on `stream`; a certificate that does not verify is an error and
    /// nothing else is written.
    pub(crate) async fn handshake(
        &self,
        stream: BackendStream,
        name: ServerName<'static>,
        label: &str,
    ) -> Result<BackendStream, ServerError> {
        match self.connector.connect(name, stream).await {
            Ok(tls) => Ok(BackendStream::Tls(Box::new(tls))),
            Err(source) => Err(ServerError::Tls {
                server: label.to_owned(),
                source,
            }),
        }
    }
}

/// Loads a backend's TLS material as [`crate::Pool::new`] would (`check-config`): `tls_ca`
/// or the system roots, `tls_name`. Blocking.
pub fn check(config: &postern_config::BackendConfig) -> Result<(), BuildError> {
    match &config.tls {
        Some(tls) => TlsClient::new(&config.name, tls).map(drop),
        None => Ok(()),
    }
}

/// The host part of a configured address (None for a unix socket).
pub(crate) fn host_of(addr: &ServerAddr) -> Option<&str> {
    match addr {
        ServerAddr::Tcp { host, .. } => Some(host),
        ServerAddr::Unix(_) => None,
    }
}

fn parse_name(name: &str) -> Option<ServerName<'static>> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Some(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(name.to_owned()).ok()
}

fn load_ca(backend: &str, path: &Path) -> Result<RootCertStore, BuildError> {
    let bad = |what: &'static str, detail: String| BuildError::Ca {
        backend: backend.to_owned(),
        path: PathBuf::from(path),
        what,
        detail,
    };
    let bytes = std::fs::read(path).map_err(|e| bad("cannot be read", e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| bad("is not valid PEM", e.to_string()))?;
        roots.add(cert).map_err(|e| {
            bad(
                "holds a certificate that is not usable as a CA",
                e.to_string(),
            )
        })?;
    }
    if roots.is_empty() {
        return Err(bad(
            "holds no certificate",
            "expected one or more -----BEGIN CERTIFICATE----- blocks".into(),
        ));
    }
    Ok(roots)
}

fn system_roots(backend: &str) -> Result<RootCertStore, BuildError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    // Unusable entries of a distribution bundle are skipped, as every TLS client does.
    let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let detail = found
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(BuildError::NoSystemRoots {
            backend: backend.to_owned(),
            detail,
        });
    }
    Ok(roots)
}
