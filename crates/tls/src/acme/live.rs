//! The live driver of the ACME task: orders from the CA, then validates the issued pair in
//! memory, writes it under `state_dir/acme/` and reloads the store (the next handshake sees
//! it; reload and expiry metrics move as for a file certificate).

use std::sync::Arc;

use postern_config::{AcmeConfig, KeyPermissions};
use rustls::crypto::CryptoProvider;

use super::challenges::Challenges;
use super::error::AcmeError;
use super::files::{AcmeFiles, Ordered, Stored};
use super::http::CaHttp;
use super::order::{Issued, Orderer};
use super::sockets::ResponderKind;
use super::task::Driver;
use crate::load::{self, Files};
use crate::store::Store;

#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) settings: Arc<AcmeConfig>,
    pub(crate) store: Arc<Store>,
    pub(crate) orderer: Orderer,
    pub(crate) files: AcmeFiles,
    pub(crate) challenges: Arc<Challenges>,
    /// Which challenge the responders on `challenge_listen` answer.
    pub(crate) responder_kind: ResponderKind,
}

impl Driver for Live {
    fn now(&self) -> i64 {
        load::unix_now()
    }

    fn random(&mut self) -> f64 {
        random(self.store.provider())
    }

    fn stored(&self) -> Option<Stored> {
        self.files.stored(self.store.provider())
    }

    fn reconfigure(&mut self, settings: &AcmeConfig) -> Result<(), AcmeError> {
        let settings = Arc::new(settings.clone());
        let provider = Arc::clone(self.store.provider());
        let http = CaHttp::new(settings.ca_roots.as_deref(), Arc::clone(&provider))?;
        self.responder_kind.set(settings.challenge);
        self.orderer = Orderer::new(
            Arc::clone(&settings),
            http,
            Arc::clone(&self.challenges),
            provider,
        );
        self.files = AcmeFiles::new(settings.store.clone());
        self.settings = settings;
        Ok(())
    }

    async fn renew(&mut self) -> Result<(), AcmeError> {
        let issued = self.orderer.obtain().await?;
        let store = Arc::clone(&self.store);
        let files = self.files.clone();
        let ordered = Ordered {
            directory: self.settings.directory.clone(),
            domains: self.settings.domains.clone(),
        };
        // File writes, fsync and key parsing block: not on the control runtime's thread.
        tokio::task::spawn_blocking(move || install(&store, &files, &issued, &ordered))
            .await
            .map_err(|source| AcmeError::Install { source })?
    }
}

/// Validates the issued pair as the store would, refuses one that does not name every
/// configured domain, then writes and reloads with no other reload in between.
fn install(
    store: &Store,
    files: &AcmeFiles,
    issued: &Issued,
    ordered: &Ordered,
) -> Result<(), AcmeError> {
    let source = files.source();
    let in_memory = Files {
        cert: issued.chain_pem.as_bytes().to_vec(),
        key: Some(issued.key_pem.as_bytes().to_vec()),
        key_mode: 0o600,
        key_owner: nix::unistd::getuid().as_raw(),
    };
    let (loaded, _) = load::load(&source, &in_memory, KeyPermissions::Warn, store.provider())
        .map_err(|source| AcmeError::Issued { source })?;
    let missing: Vec<&String> = ordered
        .domains
        .iter()
        .filter(|d| !loaded.info.dns_names.contains(d))
        .collect();
    if !missing.is_empty() {
        return Err(AcmeError::Order {
            domains: ordered.domains.clone(),
            what: format!("the CA issued a certificate without {missing:?}; it was not installed"),
        });
    }
    let reloaded = store.install(|| {
        files.write_certificate(
            issued.chain_pem.as_bytes(),
            issued.key_pem.as_bytes(),
            ordered,
        )
    })?;
    reloaded
        .map(|_| ())
        .map_err(|source| AcmeError::Issued { source })
}

/// Uniform in `[0, 1)` from the crypto provider's generator (no extra RNG crate).
fn random(provider: &CryptoProvider) -> f64 {
    let mut bytes = [0u8; 8];
    if provider.secure_random.fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_be_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}
