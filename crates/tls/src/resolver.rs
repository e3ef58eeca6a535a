//! The SNI resolver rustls calls on every handshake: one lock-free load of the current set.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::set::CertSet;

/// Resolves through whatever set the store holds at the moment of the handshake.
#[derive(Debug)]
pub(crate) struct SniResolver {
    pub(crate) current: Arc<ArcSwap<CertSet>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().resolve(hello.server_name())
    }
}
