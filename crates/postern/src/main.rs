//! The `postern` command line (README.md, Command line): parses arguments, installs logging and signal
//! handling, runs the library, and maps outcomes to exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use postern::{Exit, Gateway, LogLevelHook};
use postern_config::{Config, LogFormat};
use postern_metrics::ErrorChain;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    name = "postern",
    version,
    about = "TLS edge gateway for IMAP, POP3 and SMTP submission"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway in the foreground until SIGTERM/SIGINT.
    Run {
        /// Configuration file (default: $POSTERN_CONFIG, else /etc/postern/postern.toml, else the embedded default).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Load and validate the configuration (certificates included, ports not bound).
    CheckConfig {
        /// Configuration file (same resolution as `run`).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// The embedded default configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Certificate tools.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Talk to the running gateway over state_dir/control.sock.
    Ctl {
        /// Configuration file, for server.state_dir (same resolution as `run`).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// The control socket (default: state_dir/control.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print the answer as JSON (for scripts).
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: CtlCommand,
    },
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Every backend's servers: state, health, sessions, users.
    Servers,
    /// Set a server's state: standby (no new users placed there, sessions stay), offline
    /// (no new sessions; its sessions get the goodbye spread over drain_spread), online.
    Server {
        /// The [[backend]] name.
        backend: String,
        /// The server, as `ctl servers` shows it (e.g. 10.0.0.5:143).
        server: String,
        /// The new state.
        #[arg(value_enum)]
        state: StateArg,
    },
    /// The server USER is routed to, and USER's open sessions on this instance.
    User {
        /// The login name.
        user: String,
    },
    /// USER's sessions on this instance get the protocol's goodbye.
    Kick {
        /// The login name.
        user: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum StateArg {
    Online,
    Standby,
    Offline,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the embedded default configuration, commented.
    Default,
}

#[derive(Subcommand)]
enum CertCommand {
    /// Write a self-signed fullchain.pem and an unencrypted privkey.pem (mode 0600).
    Generate {
        /// A DNS name or IP address for the certificate (repeatable; the first is the subject).
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        /// Output directory.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Key algorithm.
        #[arg(long, value_enum, default_value_t = KeyTypeArg::EcdsaP256)]
        key_type: KeyTypeArg,
    },
    /// Report what a certificate (and key) holds and every problem with its fix.
    Inspect {
        /// PEM certificate chain (may also hold the key).
        path: PathBuf,
        /// PEM private key, when not in the certificate file.
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum KeyTypeArg {
    EcdsaP256,
    Rsa2048,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run { config } => run(config.as_deref()),
        Command::CheckConfig { config } => check_config(config.as_deref()),
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{}", postern_config::DEFAULT_TOML);
            Exit::Clean
        }
        Command::Cert { command } => cert(command),
        Command::Ctl {
            config,
            socket,
            json,
            command,
        } => ctl(config.as_deref(), socket, json, command),
    };
    ExitCode::from(code)
}

fn load_config(cli: Option<&Path>) -> Result<Config, Exit> {
    let loaded = match postern_config::resolve_path(cli) {
        Some(path) => postern_config::load(&path),
        None => postern_config::embedded_default(),
    };
    loaded.map_err(|errors| {
        eprintln!("postern: invalid configuration:\n{errors}");
        Exit::BadConfig
    })
}

fn check_config(cli: Option<&Path>) -> Exit {
    let config = match load_config(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    for b in &config.backends {
        if let Err(e) = postern_backend_pool::check_tls(b) {
            eprintln!("postern: {}: {}", config.source, ErrorChain(&e));
            return Exit::BadConfig;
        }
        if let postern_config::Route::User(route) = &b.route {
            if let Some(path) = &route.user_map {
                if let Err(e) = postern_director::UserMap::load(path) {
                    eprintln!(
                        "postern: {}: backend {}: {}",
                        config.source,
                        b.name,
                        ErrorChain(&e)
                    );
                    return Exit::BadConfig;
                }
            }
        }
    }
    let acme = match postern_tls::acme::describe(&config.tls) {
        Ok(lines) => lines,
        Err(e) => {
            eprintln!("postern: {}: {}", config.source, ErrorChain(&e));
            return Exit::BadConfig;
        }
    };
    match postern_tls::Tls::check(&config.tls, &config.server.state_dir) {
        Ok(mut lines) => {
            lines.extend(acme);
            println!("{} is valid", config.source);
            print!("{}", config.summary());
            for line in lines {
                println!("  {line}");
            }
            Exit::Clean
        }
        Err(e) => {
            eprintln!("postern: {}: {}", config.source, ErrorChain(&e));
            Exit::BadConfig
        }
    }
}

fn run(cli: Option<&Path>) -> Exit {
    let config = match load_config(cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let log_level = init_logging(&config);
    if config.source == postern_config::ConfigSource::Embedded {
        warn!("no configuration file found (-c, $POSTERN_CONFIG, /etc/postern/postern.toml); using the embedded default (`postern config default` prints it)");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the control runtime");
            return Exit::Failure;
        }
    };
    runtime.block_on(async move {
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            _ => {
                error!("cannot install signal handlers");
                return Exit::Failure;
            }
        };
        let source = config.source.to_string();
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(h) => h,
            Err(_) => {
                error!("cannot install signal handlers");
                return Exit::Failure;
            }
        };
        let config_file = match &config.source {
            postern_config::ConfigSource::File(path) => Some(path.clone()),
            postern_config::ConfigSource::Embedded => None,
        };
        let mut gateway = match Gateway::start(config).await {
            Ok(g) => g,
            Err(e) => {
                error!(config = %source, "{}", ErrorChain(&e));
                return e.exit_code();
            }
        };
        if let Some(hook) = log_level {
            gateway.set_log_level_hook(hook);
        }
        let watch_stop = tokio_util::sync::CancellationToken::new();
        // The file watcher, when it can run, wakes the same reload as SIGHUP.
        let mut file_changed = config_file.and_then(|path| {
            match postern::watch_config(&path, watch_stop.clone()) {
                Ok(rx) => Some(rx),
                Err(e) => {
                    warn!(error = %ErrorChain(&e), "configuration changes are applied on SIGHUP only");
                    None
                }
            }
        });
        info!("ready");
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("serving"),
        ]);
        if let Some(every) = sd_notify::watchdog_enabled() {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every / 2);
                loop {
                    tick.tick().await;
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
            });
        }
        loop {
            let changed = async {
                match file_changed.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = term.recv() => { info!(signal = "SIGTERM", "shutdown requested"); break; }
                _ = int.recv() => { info!(signal = "SIGINT", "shutdown requested"); break; }
                _ = hup.recv() => {
                    info!(signal = "SIGHUP", "configuration reload requested");
                    let _ = gateway.reload("SIGHUP").await;
                }
                got = changed => match got {
                    Some(()) => {
                        info!("configuration file changed");
                        let _ = gateway.reload("file change").await;
                    }
                    None => file_changed = None,
                },
            }
        }
        watch_stop.cancel();
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status("draining"),
        ]);
        let second = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        let report = gateway.drain(second).await;
        info!(
            sessions_left = report.left,
            interrupted = report.interrupted,
            "exit"
        );
        Exit::Clean
    })
}

/// `postern ctl`: 0 done, 1 refused or no answer, 2 bad configuration.
fn ctl(config: Option<&Path>, socket: Option<PathBuf>, json: bool, command: CtlCommand) -> Exit {
    use postern_director::control::{self, protocol::Request};
    let socket = match socket {
        Some(s) => s,
        None => match load_config(config) {
            Ok(c) => control::socket_path(&c.server.state_dir),
            Err(code) => return code,
        },
    };
    let request = match command {
        CtlCommand::Servers => Request::Servers,
        CtlCommand::Server {
            backend,
            server,
            state,
        } => Request::Server {
            backend,
            server,
            state: match state {
                StateArg::Online => "online",
                StateArg::Standby => "standby",
                StateArg::Offline => "offline",
            }
            .to_owned(),
        },
        CtlCommand::User { user } => Request::User { user },
        CtlCommand::Kick { user } => Request::Kick { user },
    };
    match control::client::send(&socket, &request, control::DEADLINE) {
        Ok(answer) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&answer).unwrap_or_default()
            );
            if answer.ok {
                Exit::Clean
            } else {
                Exit::Failure
            }
        }
        Ok(answer) if answer.ok => {
            println!("{}", answer.text);
            Exit::Clean
        }
        Ok(answer) => {
            eprintln!("postern ctl: {}", answer.error);
            Exit::Failure
        }
        Err(e) => {
            eprintln!("postern ctl: {}", ErrorChain(&e));
            Exit::Failure
        }
    }
}

fn cert(command: CertCommand) -> Exit {
    match command {
        CertCommand::Generate {
            names,
            out,
            days,
            key_type,
        } => {
            let kt = match key_type {
                KeyTypeArg::EcdsaP256 => postern_tls::generate::KeyType::EcdsaP256,
                KeyTypeArg::Rsa2048 => postern_tls::generate::KeyType::Rsa2048,
            };
            match postern_tls::generate::write_self_signed(&names, &out, days, kt) {
                Ok((cert, key)) => {
                    println!("wrote {} and {} (mode 0600)", cert.display(), key.display());
                    Exit::Clean
                }
                Err(e) => {
                    eprintln!("postern: {}", ErrorChain(&e));
                    Exit::Failure
                }
            }
        }
        CertCommand::Inspect { path, key } => {
            let report = postern_tls::inspect::inspect(&path, key.as_deref());
            print!("{report}");
            if report.usable {
                Exit::Clean
            } else {
                Exit::Failure
            }
        }
    }
}

/// Installs the subscriber. Returns how a reload changes `[log] level`, unless `RUST_LOG`
/// is set (it overrides the file, at start and on reload).
fn init_logging(config: &Config) -> Option<LogLevelHook> {
    use tracing_subscriber::EnvFilter;
    // RUST_LOG, else [log] level; either way rustls and hyper stay at `error` unless named.
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let overridden = from_env.is_some();
    let spec = from_env.unwrap_or_else(|| config.log.level.clone());
    let filter = EnvFilter::try_new(postern::logfilter::with_library_defaults(&spec))
        .unwrap_or_else(|_| EnvFilter::new(postern::logfilter::with_library_defaults("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // The two formats are two subscriber types; each hands out its own reload handle.
    macro_rules! hook {
        ($handle:expr) => {{
            let handle = $handle;
            LogLevelHook(Box::new(move |level: &str| {
                let filter = EnvFilter::try_new(postern::logfilter::with_library_defaults(level))
                    .map_err(|e| e.to_string())?;
                handle.reload(filter).map_err(|e| e.to_string())
            }))
        }};
    }
    let hook = match config.log.format {
        LogFormat::Json => {
            let builder = builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_filter_reloading();
            let hook = hook!(builder.reload_handle());
            builder.init();
            hook
        }
        LogFormat::Text => {
            let builder = builder.with_ansi(false).with_filter_reloading();
            let hook = hook!(builder.reload_handle());
            builder.init();
            hook
        }
    };
    (!overridden).then_some(hook)
}
