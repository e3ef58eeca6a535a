//! Builds the rustls `ServerConfig` of each listener: protocol versions, ALPN, resumption,
//! and the SNI resolver over the shared store.

use std::sync::Arc;

use arc_swap::ArcSwap;
use postern_config::TlsVersion;
use rustls::crypto::CryptoProvider;
use rustls::server::ServerSessionMemoryCache;

use crate::resolver::SniResolver;
use crate::set::CertSet;
use crate::tickets::Ticketer;
use crate::TlsError;

/// Provider and protocol versions, checked once at load so per-listener builds cannot fail.
#[derive(Debug)]
pub(crate) struct ListenerTlsBuilder {
    builder: rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier>,
    /// One per process: every listener and worker seals and opens with the same keys.
    ticketer: Arc<Ticketer>,
}

impl ListenerTlsBuilder {
    pub(crate) fn new(
        provider: Arc<CryptoProvider>,
        min_version: TlsVersion,
        ticketer: Arc<Ticketer>,
    ) -> Result<ListenerTlsBuilder, TlsError> {
        let versions: &[&'static rustls::SupportedProtocolVersion] = match min_version {
            TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::V1_3 => &[&rustls::version::TLS13],
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| TlsError::Provider { source: e })?;
        Ok(ListenerTlsBuilder { builder, ticketer })
    }

    pub(crate) fn build(
        &self,
        current: &Arc<ArcSwap<CertSet>>,
        alpn: &'static [u8],
    ) -> Arc<rustls::ServerConfig> {
        let resolver = Arc::new(SniResolver {
            current: Arc::clone(current),
        });
        let mut config = self
            .builder
            .clone()
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = vec![alpn.to_vec()];
        // Mail clients reconnect often (several IMAP connections per account), so resumption
        // pays. TLS 1.3 (and 1.2 clients that support tickets) get stateless tickets: nothing
        // per session stays in memory and any worker or replica with the keys resumes; the
        // bounded cache serves TLS 1.2 clients without ticket support.
        config.ticketer = Arc::clone(&self.ticketer) as Arc<dyn rustls::server::ProducesTickets>;
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
        config.send_tls13_tickets = 1;
        Arc::new(config)
    }
}

/// Resumption cache size per listener.
const SESSION_CACHE_ENTRIES: usize = 1024;
