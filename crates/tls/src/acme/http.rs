//! The HTTPS transport to the CA: hyper + rustls with the configured (or the system) roots, a
//! deadline on every request including its body, a cap on the body size, and the CA's
//! `Retry-After` on refusals kept for the backoff (instant-acme drops the headers of error
//! responses).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::Request;
use http_body_util::{BodyExt, Limited};
use hyper_rustls::{ConfigBuilderExt, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::error::AcmeError;

/// Cheap to clone; clones share the connection pool and the `Retry-After` slot.
#[derive(Clone)]
pub(crate) struct CaHttp {
    client: Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    retry_after: Arc<Mutex<Option<SystemTime>>>,
}

impl std::fmt::Debug for CaHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaHttp").finish_non_exhaustive()
    }
}

impl CaHttp {
    /// `ca_roots`: a PEM bundle; `None`: the system roots.
    pub(crate) fn new(
        ca_roots: Option<&Path>,
        provider: Arc<CryptoProvider>,
    ) -> Result<CaHttp, AcmeError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| AcmeError::TlsLibrary {
                what: "the HTTPS client for the ACME server",
                source,
            })?;
        let config = match ca_roots {
            Some(path) => builder
                .with_root_certificates(load_roots(path)?)
                .with_no_client_auth(),
            None => builder
                .with_native_roots()
                .map_err(|source| AcmeError::SystemRoots { source })?
                .with_no_client_auth(),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        Ok(CaHttp {
            client,
            retry_after: Arc::default(),
        })
    }

    /// The `Retry-After` of the last refusal since the previous call, as a delay from now.
    pub(crate) fn take_retry_after(&self) -> Option<Duration> {
        let at = lock(&self.retry_after).take()?;
        Some(at.duration_since(SystemTime::now()).unwrap_or_default())
    }
}

impl HttpClient for CaHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let response = self.client.request(req);
        let slot = Arc::clone(&self.retry_after);
        Box::pin(async move {
            let exchange = async {
                let response = response
                    .await
                    .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, MAX_BODY)
                    .collect()
                    .await
                    .map_err(instant_acme::Error::Other)?
                    .to_bytes();
                Ok::<_, instant_acme::Error>((parts, body))
            };
            let (parts, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
                .await
                .map_err(|_| {
                    instant_acme::Error::Other(
                        format!("no complete answer within {} s", REQUEST_TIMEOUT.as_secs()).into(),
                    )
                })??;
            if !parts.status.is_success() {
                if let Some(at) = parts
                    .headers
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after)
                {
                    *lock(&slot) = Some(at);
                }
            }
            Ok(BytesResponse {
                parts,
                body: Box::new(body),
            })
        })
    }
}

/// `Retry-After: 120` or `Retry-After: Fri, 31 Dec 1999 23:59:59 GMT` (RFC 9110 §10.2.3).
pub(crate) fn parse_retry_after(value: &str) -> Option<SystemTime> {
    let value = value.trim();
    match value.parse::<u64>() {
        Ok(secs) => SystemTime::now().checked_add(Duration::from_secs(secs)),
        Err(_) => httpdate::parse_http_date(value).ok(),
    }
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, AcmeError> {
    let bad =
        |what: &'static str, source: Box<dyn std::error::Error + Send + Sync>| AcmeError::Roots {
            path: path.to_path_buf(),
            what,
            source,
        };
    let bytes = std::fs::read(path).map_err(|e| bad("cannot be read", Box::new(e)))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| bad("is not valid PEM", Box::new(e)))?;
        roots.add(cert).map_err(|e| {
            bad(
                "holds a certificate that is not usable as a root",
                Box::new(e),
            )
        })?;
    }
    if roots.is_empty() {
        return Err(AcmeError::NoRoots {
            path: path.to_path_buf(),
        });
    }
    Ok(roots)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Connect, TLS, request and the whole body: an ACME exchange is small.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest body read from the CA (a certificate chain is a few KiB).
const MAX_BODY: usize = 1 << 20;
/// Keep the connection between the steps of one order, not between renewals.
const POOL_IDLE: Duration = Duration::from_secs(30);
