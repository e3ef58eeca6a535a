//! One ACME order, start to finish: the account (loaded from `state_dir/acme/accounts/` or
//! created and stored first), the order, one challenge per name published to the responders,
//! validation, the CSR for a fresh key, and the issued chain.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, Problem, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::crypto::CryptoProvider;
use tracing::{info, warn};

use super::challenges::Challenges;
use super::error::AcmeError;
use super::files::AcmeFiles;
use super::http::CaHttp;
use postern_config::{AcmeChallenge, AcmeConfig};

use super::alpn;

/// What the CA issued: PEM chain (leaf first) and the PEM key it was issued for.
#[derive(Debug)]
pub(crate) struct Issued {
    pub(crate) chain_pem: String,
    pub(crate) key_pem: String,
}

/// Places orders for one configuration; keeps the account between orders.
pub(crate) struct Orderer {
    settings: Arc<AcmeConfig>,
    http: CaHttp,
    files: AcmeFiles,
    challenges: Arc<Challenges>,
    provider: Arc<CryptoProvider>,
    account: Option<Account>,
}

impl std::fmt::Debug for Orderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orderer")
            .field("directory", &self.settings.directory)
            .field("account", &self.account.as_ref().map(Account::id))
            .finish_non_exhaustive()
    }
}

impl Orderer {
    pub(crate) fn new(
        settings: Arc<AcmeConfig>,
        http: CaHttp,
        challenges: Arc<Challenges>,
        provider: Arc<CryptoProvider>,
    ) -> Orderer {
        Orderer {
            files: AcmeFiles::new(settings.store.clone()),
            settings,
            http,
            challenges,
            provider,
            account: None,
        }
    }

    /// Runs one order to the end; the challenges are withdrawn however it ends.
    pub(crate) async fn obtain(&mut self) -> Result<Issued, AcmeError> {
        let account = self.account().await?;
        let result = self.order(&account).await;
        if let Err(AcmeError::Refused { problem, .. }) = &result {
            if problem.r#type.as_deref() == Some(ACCOUNT_GONE) {
                // Deactivated at the CA, or a CA that forgot it: register again next time.
                warn!(directory = %self.settings.directory, "the ACME server no longer knows postern's account; a new one is created on the next attempt");
                self.account = None;
                let path = self.files.account(&self.settings.directory);
                let _ = std::fs::rename(&path, path.with_extension("json.gone"));
            }
        }
        result
    }

    async fn account(&mut self) -> Result<Account, AcmeError> {
        if let Some(account) = &self.account {
            return Ok(account.clone());
        }
        let directory = self.settings.directory.clone();
        let builder = Account::builder_with_http(Box::new(self.http.clone()));
        let account = match self.files.read_account(&directory)? {
            Some(bytes) => {
                let credentials: AccountCredentials =
                    serde_json::from_slice(&bytes).map_err(|source| AcmeError::Account {
                        path: self.files.account(&directory),
                        source,
                    })?;
                builder
                    .from_credentials(credentials)
                    .await
                    .map_err(|e| self.classify("loading the account", e))?
            }
            None => {
                let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
                let new = NewAccount {
                    contact: &contact,
                    // Configuring [tls.acme] is the admin's agreement (certbot: --agree-tos).
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, credentials) = builder
                    .create(&new, directory.clone(), None)
                    .await
                    .map_err(|e| self.classify("creating an account", e))?;
                let json = serde_json::to_vec_pretty(&credentials).map_err(|source| {
                    AcmeError::Account {
                        path: self.files.account(&directory),
                        source,
                    }
                })?;
                self.files.write_account(&directory, &json)?;
                info!(
                    directory = %directory,
                    account = %account.id(),
                    file = %self.files.account(&directory).display(),
                    "created an ACME account"
                );
                account
            }
        };
        self.account = Some(account.clone());
        Ok(account)
    }

    async fn order(&self, account: &Account) -> Result<Issued, AcmeError> {
        let settings = &self.settings;
        let identifiers: Vec<Identifier> = settings
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| self.classify("a new order", e))?;
        let challenge_type = match settings.challenge {
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            AcmeChallenge::Http01 => ChallengeType::Http01,
        };
        let mut open = self.challenges.open();
        let mut authorizations = order.authorizations();
        while let Some(next) = authorizations.next().await {
            let mut authz = next.map_err(|e| self.classify("fetching an authorization", e))?;
            let name = authz.identifier().to_string();
            match authz.status {
                AuthorizationStatus::Pending => {}
                // Validated recently enough that the CA reuses it.
                AuthorizationStatus::Valid => continue,
                status => {
                    return Err(
                        self.order_error(format!("the authorization for {name} is {status:?}"))
                    )
                }
            }
            let Some(mut challenge) = authz.challenge(challenge_type.clone()) else {
                return Err(self.order_error(format!(
                    "the CA offers no {} challenge for {name}; set tls.acme.challenge to the other type",
                    settings.challenge.as_str()
                )));
            };
            let key_authorization = challenge.key_authorization();
            match settings.challenge {
                AcmeChallenge::Http01 => open.add_http(
                    challenge.token.clone(),
                    key_authorization.as_str().to_owned(),
                ),
                AcmeChallenge::TlsAlpn01 => {
                    // SHA-256: always 32 bytes (rcgen asserts it).
                    let digest = <[u8; 32]>::try_from(key_authorization.digest().as_ref())
                        .map_err(|_| {
                            self.order_error("the key authorization digest is not SHA-256".into())
                        })?;
                    open.add_alpn(
                        &name,
                        alpn::challenge_certificate(&name, &digest, &self.provider)?,
                    )
                }
            }
            challenge
                .set_ready()
                .await
                .map_err(|e| self.classify("starting the validation", e))?;
        }
        let validated = order
            .poll_ready(&poll_policy(VALIDATION_TIMEOUT))
            .await
            .map_err(|e| self.classify("the validation", e));
        let status = match validated {
            Ok(status) => status,
            Err(error @ AcmeError::Refused { .. })
                if error.kind() == super::error::FailureKind::RateLimited =>
            {
                return Err(error)
            }
            Err(AcmeError::Refused { problem, .. }) => {
                return Err(self.validation_error(&mut order, problem).await)
            }
            Err(error) => return Err(error),
        };
        if status != OrderStatus::Ready {
            let problem = Problem {
                r#type: None,
                detail: Some(format!("the order became {status:?}")),
                status: None,
                subproblems: Vec::new(),
            };
            return Err(self.validation_error(&mut order, problem).await);
        }
        drop(open);

        let key = KeyPair::generate().map_err(|source| AcmeError::Generate {
            what: "the certificate's private key",
            source,
        })?;
        let csr = csr(&settings.domains, &key)?;
        order
            .finalize_csr(&csr)
            .await
            .map_err(|e| self.classify("finalizing the order", e))?;
        let chain_pem = order
            .poll_certificate(&poll_policy(ISSUE_TIMEOUT))
            .await
            .map_err(|e| self.classify("issuing the certificate", e))?;
        Ok(Issued {
            chain_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// The failed challenge's own problem document, which says what the CA saw; else the
    /// order's.
    async fn validation_error(
        &self,
        order: &mut instant_acme::Order,
        fallback: Problem,
    ) -> AcmeError {
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut authz)) = authorizations.next().await {
            if authz.refresh().await.is_err() {
                continue;
            }
            if authz.status != AuthorizationStatus::Invalid {
                continue;
            }
            let domain = authz.identifier().to_string();
            let problem = authz
                .challenges
                .iter()
                .find_map(|c| c.error.clone())
                .unwrap_or_else(|| fallback.clone());
            return AcmeError::Validation {
                domain,
                challenge: self.settings.challenge.as_str(),
                port: self.settings.challenge.port(),
                problem,
            };
        }
        AcmeError::Refused {
            during: "the validation",
            problem: fallback,
            retry_after: self.http.take_retry_after(),
        }
    }

    fn classify(&self, during: &'static str, error: instant_acme::Error) -> AcmeError {
        match error {
            instant_acme::Error::Api(problem) => AcmeError::Refused {
                during,
                problem,
                retry_after: self.http.take_retry_after(),
            },
            instant_acme::Error::Timeout(_) => AcmeError::Timeout {
                during,
                secs: VALIDATION_TIMEOUT.as_secs(),
            },
            instant_acme::Error::Str(what) => self.order_error(format!("{during}: {what}")),
            instant_acme::Error::Unsupported(what) => {
                self.order_error(format!("{during}: the CA does not support {what}"))
            }
            other => AcmeError::Unreachable {
                directory: self.settings.directory.clone(),
                source: other,
            },
        }
    }

    fn order_error(&self, what: String) -> AcmeError {
        AcmeError::Order {
            domains: self.settings.domains.clone(),
            what,
        }
    }
}

/// A CSR for `domains` (SANs; the first is also the CN, which some CAs still show).
fn csr(domains: &[String], key: &KeyPair) -> Result<Vec<u8>, AcmeError> {
    let generate = |source| AcmeError::Generate {
        what: "the certificate signing request",
        source,
    };
    let mut params = CertificateParams::new(domains.to_vec()).map_err(generate)?;
    let mut name = DistinguishedName::new();
    if let Some(first) = domains.first() {
        name.push(DnType::CommonName, first.as_str());
    }
    params.distinguished_name = name;
    let request = params.serialize_request(key).map_err(generate)?;
    Ok(request.der().to_vec())
}

fn poll_policy(timeout: Duration) -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(POLL_FIRST)
        .backoff(1.5)
        .timeout(timeout)
}

const ACCOUNT_GONE: &str = "urn:ietf:params:acme:error:accountDoesNotExist";
/// The first look at the order after the challenges are ready; pebble without its sleeps
/// validates in milliseconds, Let's Encrypt in a few seconds.
const POLL_FIRST: Duration = Duration::from_millis(100);
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(120);
const ISSUE_TIMEOUT: Duration = Duration::from_secs(120);
