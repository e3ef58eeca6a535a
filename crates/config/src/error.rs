//! Configuration errors: every one names the file, the dotted key path and, where the
//! parser knows it, the line; its message says what to fix.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Every problem found in one configuration, in the order found.
///
/// Problems are collected so an operator can fix a file in one pass: every unknown key and
/// every semantic problem. A TOML syntax error, a value of the wrong type or a missing
/// required key stops parsing there (with the unknown keys found before it).
#[derive(Debug)]
pub struct ConfigErrors {
    errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// The individual errors (never empty).
    pub fn errors(&self) -> &[ConfigError] {
        &self.errors
    }

    pub(crate) fn one(error: ConfigError) -> Self {
        ConfigErrors {
            errors: vec![error],
        }
    }

    pub(crate) fn from_vec(errors: Vec<ConfigError>) -> Self {
        ConfigErrors { errors }
    }
}

impl fmt::Display for ConfigErrors {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// One configuration problem.
///
/// Variants caused by another error keep it as their `#[source]` and also show its text
/// in their message, because the message is what `check-config` prints as one line per
/// problem; the workspace's error-chain formatter skips a cause whose text is already
/// shown.
///
/// Displays as `FILE:LINE: KEY: MESSAGE`, e.g.
/// `postern.toml:12: listener[1].backend: backend "imapx" is not defined; ...`.
/// `LINE` is left out when unknown, `KEY` when the problem concerns the whole file.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}{}{kind}", LineDisplay(*line), KeyDisplay(key))]
pub struct ConfigError {
    /// The config file as given (or `<embedded default>`).
    pub file: String,
    /// Dotted key path such as `listener[0].tls` or `backend[1].health.interval`; empty
    /// when the problem concerns the whole file.
    pub key: String,
    /// 1-based line of the key in the file, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub kind: ConfigErrorKind,
}

/// What is wrong with a key (or the file).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The file could not be read.
    #[error("cannot read the configuration file: {error}; check the path given with -c or $POSTERN_CONFIG")]
    Read {
        /// The OS error.
        #[source]
        error: io::Error,
    },
    /// The file is not valid TOML.
    #[error("TOML syntax error: {}", source.message().trim_end())]
    Syntax {
        /// The parser's error (its span gave the line).
        #[source]
        source: toml::de::Error,
    },
    /// A key the schema does not know (often a typo).
    #[error("unknown key `{name}`; valid keys here: {expected}")]
    UnknownKey {
        /// The unknown key.
        name: String,
        /// The keys allowed in this table, comma-separated.
        expected: String,
    },
    /// A required key is absent.
    #[error("required key `{name}` is missing; add it")]
    MissingKey {
        /// The missing key.
        name: String,
    },
    /// A value of the wrong TOML type or shape.
    #[error("{}{hint}", wrong_type(source))]
    WrongType {
        /// The deserializer's error: what was expected and found.
        #[source]
        source: toml::de::Error,
        /// How to write it instead (`; write the value in quotes`), or empty.
        hint: &'static str,
    },
    /// A value postern cannot use, with what to do instead.
    #[error("{message}")]
    InvalidValue {
        /// What is wrong and what to do.
        message: String,
    },
    /// A value outside a closed set.
    #[error("{value:?} is not allowed; use one of: {allowed}")]
    BadEnum {
        /// The value given.
        value: String,
        /// The allowed spellings, quoted and comma-separated.
        allowed: String,
    },
    /// A duration that does not parse.
    #[error("{value:?} is not a duration ({source}); expected a duration like \"10s\", \"500ms\" or \"30m\"")]
    BadDuration {
        /// The value given.
        value: String,
        /// The parser's reason.
        #[source]
        source: humantime::DurationError,
    },
    /// A number or duration out of its sensible range.
    #[error("{value} is out of range: {reason}")]
    OutOfRange {
        /// The value given, as written.
        value: String,
        /// The allowed range and why.
        reason: String,
    },
    /// A listen address that is not `ip:port`.
    #[error("{value:?} is not a socket address ({reason}); use ip:port, e.g. \"0.0.0.0:993\" or \"[::]:993\"")]
    BadListenAddress {
        /// The value given.
        value: String,
        /// The parser's reason.
        reason: String,
    },
    /// A backend server address that is not `host:port`, `[v6]:port` or `unix:/abs/path`.
    #[error("{value:?} is not a server address ({reason}); use \"host:port\", \"[v6addr]:port\" or \"unix:/absolute/path\"")]
    BadServerAddress {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No `[[listener]]` at all.
    #[error(
        "no [[listener]] is defined; add at least one (`postern config default` prints an example)"
    )]
    NoListeners,
    /// Two tables of the same kind share a name.
    #[error("{what} name {name:?} is already used by {what}[{first}]; names must be unique")]
    DuplicateName {
        /// `listener` or `backend`.
        what: &'static str,
        /// The repeated name.
        name: String,
        /// Index of the first table with that name.
        first: usize,
    },
    /// A listener names a backend that is not defined.
    #[error("backend {name:?} is not defined; define a [[backend]] with name = {name:?} or fix the name (defined: {defined})")]
    UnknownBackend {
        /// The name given.
        name: String,
        /// The defined backend names, comma-separated (or `none`).
        defined: String,
    },
    /// One address bound by two listeners (or twice by one).
    #[error("{addr} is also bound by listener {first:?}; each address may appear once")]
    DuplicateListen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The listener that binds it first.
        first: String,
    },
    /// A wildcard and a specific address of the same family on the same port.
    #[error("{addr} overlaps {other} of listener {listener:?}: both would bind (SO_REUSEPORT) and split the connections between them; drop one or use another port")]
    OverlappingListen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The address it overlaps.
        other: std::net::SocketAddr,
        /// The listener that binds `other`.
        listener: String,
    },
    /// A backend with neither `servers` nor `exec`.
    #[error("backend {name:?} has neither `servers` nor `exec`; set one, e.g. servers = [\"127.0.0.1:143\"]")]
    NoTarget {
        /// The backend name.
        name: String,
    },
    /// A backend with both `servers` and `exec`.
    #[error("backend {name:?} sets both `servers` and `exec`; keep exactly one")]
    BothTargets {
        /// The backend name.
        name: String,
    },
    /// `servers = []` or `exec = []`.
    #[error("is empty; list at least one entry")]
    Empty,
    /// `exec` whose program is not an absolute path.
    #[error("program {program:?} is not an absolute path; write the full path, e.g. \"/usr/sbin/imapd\"")]
    ExecNotAbsolute {
        /// `argv[0]` as given.
        program: String,
    },
    /// `exec` names a program that does not exist or cannot be run.
    #[error("{program} {problem}; install the server or fix the path (every session would otherwise get the \"no server available\" goodbye)")]
    ExecNotRunnable {
        /// `argv[0]` as given.
        program: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// Listeners with different protocols share one backend.
    #[error("listener {listener:?} speaks {protocol} but shares backend {backend:?} with listener {first:?}, which speaks {first_protocol}; give each protocol its own [[backend]]")]
    ProtocolMismatch {
        /// The backend name.
        backend: String,
        /// The listener that disagrees.
        listener: String,
        /// Its protocol.
        protocol: &'static str,
        /// The first listener using the backend.
        first: String,
        /// Its protocol.
        first_protocol: &'static str,
    },
    /// `server.drain_spread` longer than `server.shutdown_grace`.
    #[error("{} is longer than server.shutdown_grace ({}); make it at most the grace", humantime::format_duration(*spread), humantime::format_duration(*grace))]
    DrainSpreadTooLong {
        /// drain_spread.
        spread: Duration,
        /// shutdown_grace.
        grace: Duration,
    },
    /// `health.timeout` longer than `health.interval`.
    #[error("{} is longer than the probe interval ({}); make the timeout at most the interval", humantime::format_duration(*timeout), humantime::format_duration(*interval))]
    HealthTimeoutTooLong {
        /// health.timeout.
        timeout: Duration,
        /// health.interval.
        interval: Duration,
    },
    /// A file named by the configuration does not exist.
    #[error("{} does not exist; {hint}", path.display())]
    FileMissing {
        /// The path, after resolving a relative one against the config file's directory.
        path: PathBuf,
        /// What to do.
        hint: &'static str,
    },
    /// A file named by the configuration is a directory.
    #[error("{} is a directory; name the file in it", path.display())]
    IsDirectory {
        /// The path.
        path: PathBuf,
    },
    /// A file named by the configuration cannot be looked at.
    #[error("{} cannot be checked ({source}); check the permissions of its directories", path.display())]
    FileUnchecked {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An entry that may appear once in its list appears again.
    #[error("{value:?} is listed twice; remove the duplicate")]
    ListedTwice {
        /// The repeated entry.
        value: String,
    },
    /// A client network that is not CIDR.
    #[error("{value:?} is not a network ({reason}); use CIDR such as \"10.0.0.0/8\" or \"2001:db8::/32\", or one address")]
    BadNetwork {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `proxy_protocol` set without `proxy_from`.
    #[error("a PROXY header is only taken from the peers in proxy_from, and it lists none; set proxy_from to the networks of your load balancers, e.g. [\"10.0.0.0/8\"]")]
    ProxyWithoutFrom,
    /// `proxy_from` set while `proxy_protocol` is `none`.
    #[error("has no effect while proxy_protocol is \"none\"; set proxy_protocol = \"v1\", \"v2\" or \"any\", or remove proxy_from")]
    ProxyFromWithoutProxy,
    /// `proxy_from` holds `0.0.0.0/0` or `::/0`.
    #[error("trusts every address: any client could claim to be any other and pass allow/deny and the limits; list only your load balancers' networks")]
    ProxyFromEverywhere,
    /// `tls` other than `none` on an exec backend.
    #[error("applies to `servers` backends only: an exec backend is a local pipe; remove tls")]
    TlsWithExec,
    /// `tls_name` that is neither a DNS name nor an IP literal.
    #[error("{value:?} is not a name to verify ({reason}); use the DNS name (or IP address) in the servers' certificates")]
    BadTlsName {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// TLS to a `unix:` server with no `tls_name`.
    #[error(
        "a unix: server has no host name to verify; set tls_name to the name in its certificate"
    )]
    TlsNameNeededForUnix,
    /// `route = "user"` on an exec backend.
    #[error("route = \"user\" picks one of several servers; an exec backend has none. Use servers, or route = \"connection\"")]
    RouteUserWithExec,
    /// A `weights` key that is not one of the backend's servers.
    #[error("{server:?} is not one of this backend's servers ({servers}); weigh a server listed in `servers`, written the same way")]
    UnknownWeightServer {
        /// The key given.
        server: String,
        /// The backend's servers, quoted and comma-separated.
        servers: String,
    },
    /// `limits.prelogin_timeout` shorter than `tls.handshake_timeout`.
    #[error("{} is shorter than tls.handshake_timeout ({}): clients would be closed before they can log in; make it longer", humantime::format_duration(*prelogin), humantime::format_duration(*handshake))]
    PreloginShorterThanHandshake {
        /// prelogin_timeout.
        prelogin: Duration,
        /// tls.handshake_timeout.
        handshake: Duration,
    },
    /// An ACME name that is not a valid DNS name for a certificate.
    #[error("{value:?} {reason}")]
    BadDomain {
        /// The value given.
        value: String,
        /// What is wrong with it and what to do.
        reason: String,
    },
    /// An ACME contact that is not `mailto:`.
    #[error("{value:?} is not a contact the CA accepts; write \"mailto:postmaster@example.org\"")]
    BadContact {
        /// The value given.
        value: String,
    },
    /// An ACME directory that is not an https URL.
    #[error("{value:?} is not an ACME directory URL ({reason}); e.g. \"https://acme-v02.api.letsencrypt.org/directory\"")]
    BadDirectoryUrl {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An ACME `challenge_listen` address that a listener or the admin endpoint binds.
    #[error("{addr} is also bound by {owner} ({other}); the CA's validation connections (port {port} by default) need an address of their own: change challenge_listen or that address")]
    ChallengeListenTaken {
        /// The challenge address.
        addr: std::net::SocketAddr,
        /// The address it collides with.
        other: std::net::SocketAddr,
        /// `listener "NAME"` or `admin`.
        owner: String,
        /// The challenge's standard port.
        port: u16,
    },
}

/// serde's message for a wrong type, in the admin's words rather than Rust's.
fn wrong_type(e: &toml::de::Error) -> String {
    e.message()
        .trim_end()
        .replace("expected u64", "expected a whole number of 0 or more")
}

struct LineDisplay(Option<usize>);

impl fmt::Display for LineDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(line) => write!(f, ":{line}: "),
            None => f.write_str(": "),
        }
    }
}

struct KeyDisplay<'a>(&'a str);

impl fmt::Display for KeyDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "{}: ", self.0)
        }
    }
}
