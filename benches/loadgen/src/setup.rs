//! Setting up one run: the bench certificate, the synthetic backends, postern's config and
//! process, the holder processes. Every child is killed when its handle drops.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::client::SNI;
use crate::BenchError;

/// Sockets one bench process (holder or backend) keeps open at most: below the 20 000
/// open-file limit of these machines with room for the runtime's own descriptors.
pub(crate) const SESSIONS_PER_PROCESS: usize = 9000;
/// Sessions per loopback source address: far below the 28 232 ephemeral ports of
/// `ip_local_port_range` (a source-bound socket takes a port of its own).
pub(crate) const SESSIONS_PER_SOURCE: usize = 5000;

/// The bench CA: a self-signed ECDSA P-256 certificate for [`SNI`], written as PEM.
#[derive(Debug)]
pub(crate) struct Certs {
    /// DER of the certificate (the clients' only root).
    pub(crate) der: Vec<u8>,
    /// PEM certificate file.
    pub(crate) cert: PathBuf,
    /// PEM key file (0600).
    pub(crate) key: PathBuf,
}

/// Writes the certificate and key into `dir`.
pub(crate) fn certs(dir: &Path) -> Result<Certs, BenchError> {
    use std::os::unix::fs::PermissionsExt;
    let made = rcgen::generate_simple_self_signed(vec![SNI.to_string()])
        .map_err(|e| BenchError::Setup(format!("certificate: {e}")))?;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    write(&cert, made.cert.pem().as_bytes())?;
    write(&key, made.signing_key.serialize_pem().as_bytes())?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| BenchError::io(format!("chmod {}", key.display()), e))?;
    Ok(Certs {
        der: made.cert.der().to_vec(),
        cert,
        key,
    })
}

pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<(), BenchError> {
    std::fs::write(path, bytes).map_err(|e| BenchError::io(format!("write {}", path.display()), e))
}

/// `127.0.<net>.<host>` for the bench's address plan (net 1: backends, 2: postern, 3+:
/// client sources; host 1..=250).
pub(crate) fn loopback(net: u8, host: usize) -> IpAddr {
    let net = net.saturating_add(u8::try_from(host / 250).unwrap_or(u8::MAX));
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        net,
        u8::try_from(host % 250 + 1).unwrap_or(1),
    ))
}

/// A running child with its stdin/stdout piped as lines.
#[derive(Debug)]
pub(crate) struct Piped {
    pub(crate) child: Child,
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) stdout: Lines<BufReader<ChildStdout>>,
}

/// Starts this executable with `args` (a sub-command), stdin and stdout piped.
pub(crate) fn spawn_self(args: &[String]) -> Result<Piped, BenchError> {
    let exe = std::env::current_exe().map_err(|e| BenchError::io("current_exe", e))?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::io(format!("spawn {}", args.join(" ")), e))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| BenchError::Setup("no stdout".into()))?;
    Ok(Piped {
        stdin: child.stdin.take(),
        stdout: BufReader::new(stdout).lines(),
        child,
    })
}

/// Reads one line within `deadline`.
pub(crate) async fn line(
    piped: &mut Piped,
    deadline: Duration,
    what: &str,
) -> Result<String, BenchError> {
    match tokio::time::timeout(deadline, piped.stdout.next_line()).await {
        Ok(Ok(Some(line))) => Ok(line),
        Ok(Ok(None)) => Err(BenchError::Setup(format!("{what}: the process ended"))),
        Ok(Err(e)) => Err(BenchError::io(what.to_string(), e)),
        Err(_) => Err(BenchError::Setup(format!(
            "{what}: nothing after {deadline:?}"
        ))),
    }
}

/// Starts `count` backend processes, one loopback address each; returns them and their
/// listen addresses.
pub(crate) async fn backends(count: usize) -> Result<(Vec<Piped>, Vec<SocketAddr>), BenchError> {
    let mut procs = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..count {
        let listen = SocketAddr::new(loopback(1, i), 0);
        let mut p = spawn_self(&["backend".into(), "--listen".into(), listen.to_string()])?;
        let l = line(&mut p, Duration::from_secs(10), "backend start").await?;
        let addr = l
            .strip_prefix("LISTEN ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| BenchError::Setup(format!("backend said {l:?}")))?;
        addrs.push(addr);
        procs.push(p);
    }
    Ok((procs, addrs))
}

/// postern's config for the run.
pub(crate) fn postern_config(
    dir: &Path,
    workers: usize,
    listen: &[SocketAddr],
    backends: &[SocketAddr],
    certs: &Certs,
) -> String {
    let quote = |v: &[SocketAddr]| {
        v.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"[server]
workers = {workers}
max_connections = 200000
shutdown_grace = "2s"
drain_spread = "1s"
state_dir = "{state}"
[admin]
listen = "127.0.0.1:0"
[log]
level = "warn"
[tls]
min_version = "1.3"
watch = false
[[tls.certificate]]
cert = "{cert}"
key = "{key}"
[[listener]]
name = "imaps"
protocol = "imap"
listen = [{listen}]
backend = "imap"
[[backend]]
name = "imap"
servers = [{servers}]
balance = "least-connections"
"#,
        state = dir.join("state").display(),
        cert = certs.cert.display(),
        key = certs.key.display(),
        listen = quote(listen),
        servers = quote(backends),
    )
}

/// A free TCP port on `ip` (bound once and released; the bench owns these addresses).
pub(crate) fn free_port(ip: IpAddr) -> Result<u16, BenchError> {
    let l = std::net::TcpListener::bind(SocketAddr::new(ip, 0))
        .map_err(|e| BenchError::io(format!("bind {ip}:0"), e))?;
    Ok(l.local_addr()
        .map_err(|e| BenchError::io("local_addr", e))?
        .port())
}

/// postern, started and accepting on every address.
#[derive(Debug)]
pub(crate) struct Postern {
    pub(crate) child: Child,
    pub(crate) pid: u32,
}

pub(crate) async fn start_postern(
    binary: &Path,
    config: &Path,
    stderr: &Path,
    listen: &[SocketAddr],
) -> Result<Postern, BenchError> {
    let log = std::fs::File::create(stderr)
        .map_err(|e| BenchError::io(format!("create {}", stderr.display()), e))?;
    let mut child = Command::new(binary)
        .args(["run", "-c"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::io(format!("start {}", binary.display()), e))?;
    let pid = child
        .id()
        .ok_or_else(|| BenchError::Setup("postern exited at once".into()))?;
    let end = Instant::now() + Duration::from_secs(30);
    for addr in listen {
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(BenchError::Setup(format!(
                    "postern exited ({status}); see {}",
                    stderr.display()
                )));
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if Instant::now() > end {
                return Err(BenchError::Setup(format!(
                    "postern does not listen on {addr}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(Postern { child, pid })
}

/// SIGTERM, then SIGKILL after the grace.
pub(crate) async fn stop_postern(mut p: Postern) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if let Ok(pid) = i32::try_from(p.pid) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(15), p.child.wait())
        .await
        .is_err()
    {
        let _ = p.child.kill().await;
    }
}
