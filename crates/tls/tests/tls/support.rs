//! Certificates, configs and a handshaking client shared by the tests.
#![allow(dead_code, unreachable_pub)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use postern_config::{CertificateConfig, KeyPermissions, TlsConfig, TlsVersion};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SignatureAlgorithm,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A certificate and its key as PEM, plus the leaf DER to recognise it on the wire.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
    pub leaf: Vec<u8>,
}

/// A self-signed ECDSA P-256 certificate for `names`.
pub fn pair(names: &[&str]) -> Pair {
    pair_with(names, &rcgen::PKCS_ECDSA_P256_SHA256)
}

pub fn pair_with(names: &[&str], alg: &'static SignatureAlgorithm) -> Pair {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    let cert = params.self_signed(&key).unwrap();
    Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        leaf: cert.der().to_vec(),
    }
}

/// A leaf issued by an intermediate issued by a root: `cert_pem` holds leaf + intermediate.
pub fn chained(names: &[&str]) -> (Pair, Vec<u8>) {
    let ca = |cn: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        p
    };
    let root = CertifiedIssuer::self_signed(ca("test root"), KeyPair::generate().unwrap()).unwrap();
    let inter =
        CertifiedIssuer::signed_by(ca("test intermediate"), KeyPair::generate().unwrap(), &root)
            .unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let leaf = params.signed_by(&key, &inter).unwrap();
    let pair = Pair {
        cert_pem: format!("{}{}", leaf.pem(), inter.pem()),
        key_pem: key.serialize_pem(),
        leaf: leaf.der().to_vec(),
    };
    (pair, inter.der().to_vec())
}

/// Writes `contents` to `dir/name` with `mode`.
pub fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// Writes a split pair `cert.pem` + `key.pem` (0600) into `dir`.
pub fn write_pair(dir: &Path, pair: &Pair) -> (PathBuf, PathBuf) {
    (
        write(dir, "cert.pem", &pair.cert_pem, 0o644),
        write(dir, "key.pem", &pair.key_pem, 0o600),
    )
}

pub fn config(certs: &[(PathBuf, Option<PathBuf>)]) -> TlsConfig {
    TlsConfig {
        min_version: TlsVersion::V1_2,
        handshake_timeout: Duration::from_secs(10),
        key_permissions: KeyPermissions::Warn,
        watch: true,
        certificates: certs
            .iter()
            .map(|(cert, key)| CertificateConfig {
                cert: cert.clone(),
                key: key.clone(),
            })
            .collect(),
        ticket_key_file: None,
        acme: None,
    }
}

pub fn metrics() -> postern_metrics::Metrics {
    postern_metrics::Metrics::new("test")
}

/// `postern_certificate_reloads_total{result=...}` as exported.
pub fn reloads(metrics: &postern_metrics::Metrics, result: &str) -> u64 {
    let needle = format!("postern_certificate_reloads_total{{result=\"{result}\"}} ");
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&needle).map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0)
}

/// What a client saw in a completed handshake.
#[derive(Debug)]
pub struct Seen {
    pub leaf: Vec<u8>,
    pub chain_len: usize,
    pub alpn: Option<Vec<u8>>,
}

/// A client that accepts any certificate (the tests check *which* one was served), never
/// resumes, and offers `alpn`.
pub fn client(alpn: &[&[u8]]) -> Arc<ClientConfig> {
    client_with(alpn, rustls::DEFAULT_VERSIONS)
}

pub fn client_with(
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// One handshake over an in-memory pipe. `sni = None` sends no server name.
pub async fn handshake(
    server: Arc<rustls::ServerConfig>,
    sni: Option<&str>,
    alpn: &[&[u8]],
) -> Result<Seen, rustls::Error> {
    handshake_with(server, client(alpn), sni).await
}

pub async fn handshake_with(
    server: Arc<rustls::ServerConfig>,
    client: Arc<ClientConfig>,
    sni: Option<&str>,
) -> Result<Seen, rustls::Error> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(server);
    let server_task = tokio::spawn(async move { acceptor.accept(server_io).await.map(drop) });
    let name = server_name(sni);
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        TlsConnector::from(client).connect(name, client_io),
    )
    .await
    .expect("handshake deadline");
    let _ = tokio::time::timeout(Duration::from_secs(10), server_task).await;
    let stream = result.map_err(rustls_error)?;
    let (_, conn) = stream.get_ref();
    let chain = conn.peer_certificates().unwrap_or_default();
    Ok(Seen {
        leaf: chain.first().map(|c| c.to_vec()).unwrap_or_default(),
        chain_len: chain.len(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
    })
}

/// No SNI is sent for an IP address name.
pub fn server_name(sni: Option<&str>) -> ServerName<'static> {
    match sni {
        Some(name) => ServerName::try_from(name.to_owned()).unwrap(),
        None => ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    }
}

pub fn rustls_error(e: std::io::Error) -> rustls::Error {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(err) => err.clone(),
        None => rustls::Error::General(e.to_string()),
    }
}

#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
