//! tls-alpn-01 (RFC 8737): the CA connects to port 443 with ALPN `acme-tls/1` and the SNI
//! name it validates; postern answers with a self-signed certificate for that name carrying
//! the critical `acmeIdentifier` extension (the SHA-256 of the key authorization), completes
//! the handshake and closes. Without an open challenge for the name there is no certificate
//! and the handshake fails.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

use super::challenges::Challenges;
use super::error::AcmeError;

/// The ALPN protocol of the validation connection.
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The validation certificate for `name` and the key authorization digest.
pub(crate) fn challenge_certificate(
    name: &str,
    digest: &[u8; 32],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, AcmeError> {
    let generate = |source| AcmeError::Generate {
        what: "the tls-alpn-01 validation certificate",
        source,
    };
    let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(generate)?;
    params
        .custom_extensions
        .push(CustomExtension::new_acme_identifier(digest));
    let key = KeyPair::generate().map_err(generate)?;
    let cert = params.self_signed(&key).map_err(generate)?;
    let der = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|source| AcmeError::TlsLibrary {
            what: "the tls-alpn-01 certificate's key",
            source,
        })?;
    Ok(CertifiedKey::new(
        vec![CertificateDer::from(cert.der().to_vec())],
        signing,
    ))
}

/// The rustls config of the challenge listener: `acme-tls/1` only, certificates only from the
/// open challenges.
pub(crate) fn server_config(
    challenges: Arc<Challenges>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(AlpnResolver { challenges }));
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    // Validation connections are one-shot: nothing to resume.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct AlpnResolver {
    challenges: Arc<Challenges>,
}

impl ResolvesServerCert for AlpnResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let offers_acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if !offers_acme {
            return None;
        }
        self.challenges.alpn_certificate(hello.server_name()?)
    }
}

/// One validation connection: the handshake, then close_notify.
pub(crate) async fn serve(stream: TcpStream, acceptor: TlsAcceptor, deadline: Duration) {
    let peer = stream.peer_addr().ok();
    let answered = tokio::time::timeout(deadline, async {
        let mut tls = acceptor.accept(stream).await?;
        tls.shutdown().await
    })
    .await;
    match answered {
        Ok(Ok(())) => info!(?peer, "answered a tls-alpn-01 validation"),
        Ok(Err(error)) => debug!(?peer, %error, "tls-alpn-01 connection failed"),
        Err(_) => debug!(?peer, "tls-alpn-01 connection timed out"),
    }
}
