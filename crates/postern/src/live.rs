//! What a configuration reload replaces: the configuration in force, one pool per backend
//! (with the background tasks it runs) and each listener's [`SessionPolicy`]. Built the
//! same way at start and on reload.

use std::sync::Arc;
use std::time::Duration;

use postern_backend_pool::{BuildError, Pool};
use postern_config::{BackendConfig, Config, Route};
use postern_director::Director;
use postern_metrics::Metrics;
use postern_session::{SessionPolicy, SessionSettings, UserRouting};
use tokio_util::sync::CancellationToken;

/// TCP keepalive idle time on client sockets: a dead IDLE client is noticed after about
/// this plus 4 probes 30 s apart.
const CLIENT_KEEPALIVE: Duration = Duration::from_secs(120);

/// One backend's pool and the token that stops its background tasks (health checks, DNS,
/// warm spares).
#[derive(Clone, Debug)]
pub(crate) struct PoolEntry {
    pub(crate) config: BackendConfig,
    pub(crate) pool: Arc<Pool>,
    pub(crate) background: CancellationToken,
    /// Carried over unchanged from the previous configuration: its tasks already run.
    pub(crate) reused: bool,
}

/// The configuration in force and its pools; `pools[i]` serves `config.backends[i]`.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) config: Arc<Config>,
    pub(crate) pools: Vec<PoolEntry>,
}

impl Live {
    /// Builds the pools of `config`. A backend whose configuration did not change keeps its
    /// pool from `previous` (health state, session counts and background tasks go on); the
    /// others get a new pool whose tasks [`Live::start`] starts. Nothing is started or
    /// stopped here, so a failure (a backend's `tls_ca` that does not load) leaves
    /// everything as it was. Blocking (it reads `tls_ca` files and the system roots).
    pub(crate) fn build(
        config: Config,
        previous: &[PoolEntry],
        metrics: &Metrics,
        control: &CancellationToken,
    ) -> Result<Live, BuildError> {
        let mut pools = Vec::with_capacity(config.backends.len());
        for backend in &config.backends {
            let entry = match previous.iter().find(|p| p.config == *backend) {
                Some(old) => PoolEntry {
                    config: old.config.clone(),
                    pool: Arc::clone(&old.pool),
                    background: old.background.clone(),
                    reused: true,
                },
                None => PoolEntry {
                    config: backend.clone(),
                    pool: Pool::new(backend, backend.protocol, metrics)?,
                    background: control.child_token(),
                    reused: false,
                },
            };
            pools.push(entry);
        }
        Ok(Live {
            config: Arc::new(config),
            pools,
        })
    }

    /// Starts the background tasks of every pool that is new: health checks and DNS on the
    /// current (control) runtime, warm spares on each worker's runtime.
    pub(crate) fn start(&self, workers: &[tokio::runtime::Handle]) {
        for entry in self.pools.iter().filter(|p| !p.reused) {
            entry
                .pool
                .spawn_background_on(entry.background.clone(), workers);
        }
    }

    /// Stops the background tasks of every pool of `self` that `next` does not keep. Their
    /// open sessions run on: each holds its pool and its server slot until it ends.
    pub(crate) fn retire(&self, next: &Live) {
        for entry in &self.pools {
            if !next.pools.iter().any(|p| Arc::ptr_eq(&p.pool, &entry.pool)) {
                entry.background.cancel();
            }
        }
    }

    /// Every pool, for `/readyz`.
    pub(crate) fn pool_list(&self) -> Vec<Arc<Pool>> {
        self.pools.iter().map(|p| Arc::clone(&p.pool)).collect()
    }

    /// The policy of listener `index` of this configuration.
    pub(crate) fn policy(
        &self,
        index: usize,
        hostname: &str,
        director: &Arc<Director>,
    ) -> SessionPolicy {
        let config = &self.config;
        let l = &config.listeners[index];
        let backend = &config.backends[l.backend];
        SessionPolicy {
            settings: SessionSettings {
                listener: l.name.clone(),
                protocol: l.protocol,
                tls: l.tls,
                handshake_timeout: config.tls.handshake_timeout,
                plaintext_timeout: l.plaintext_timeout,
                idle_timeout: l.idle_timeout,
                max_line_length: l.max_line_length,
                max_plaintext_commands: l.max_plaintext_commands,
                hostname: hostname.to_owned(),
                keepalive: CLIENT_KEEPALIVE,
            },
            pool: Arc::clone(&self.pools[l.backend].pool),
            proxy: l.proxy.clone(),
            allow: l.allow.clone(),
            deny: l.deny.clone(),
            limits: Arc::new(config.limits.clone()),
            route: matches!(backend.route, Route::User(_)).then(|| UserRouting {
                director: Arc::clone(director),
                backend: backend.name.clone(),
            }),
        }
    }
}
