//! Exec backends: one child process per session, the session on its stdin/stdout
//! (inetd `nowait`, stunnel `exec`, ucspi-tcp `tcpserver` style).
//!
//! A child gets a defined environment only: `PATH`, `PROTO`, `TCPREMOTEIP`,
//! `TCPREMOTEPORT`, `TCPLOCALIP`, `TCPLOCALPORT`, `REMOTE_HOST`, `REMOTE_PORT`; nothing
//! inherited from postern. It runs as postern's user with no capabilities: the gateway
//! clears its ambient and inheritable sets before any worker starts.

use std::process::Stdio;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::process::{ChildStderr, Command};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::PoolError;
use crate::pool::ClientInfo;
use crate::stream::ExecStream;

#[derive(Debug)]
pub(crate) struct ExecTarget {
    pub(crate) argv: Vec<String>,
    /// `exec:<argv[0]>`, the `server` label.
    pub(crate) label: String,
    pub(crate) max_children: usize,
    pub(crate) children: Arc<Semaphore>,
}

impl ExecTarget {
    pub(crate) fn new(argv: Vec<String>, max_children: usize) -> Self {
        let label = format!("exec:{}", argv.first().map(String::as_str).unwrap_or(""));
        let permits = max_children.min(Semaphore::MAX_PERMITS);
        Self {
            argv,
            label,
            max_children,
            children: Arc::new(Semaphore::new(permits)),
        }
    }

    /// Starts one child for `client`. The permit is the child's place under `max_children`.
    pub(crate) fn spawn(
        &self,
        backend: &str,
        client: &ClientInfo,
    ) -> Result<(ExecStream, OwnedSemaphorePermit), PoolError> {
        let permit = Arc::clone(&self.children)
            .try_acquire_owned()
            .map_err(|_| PoolError::TooManyChildren {
                backend: backend.to_owned(),
                max: self.max_children,
            })?;
        let program = self.argv.first().cloned().unwrap_or_default();
        let spawn_err = |source| PoolError::Spawn {
            backend: backend.to_owned(),
            program: program.clone(),
            source,
        };

        let peer_ip = client.peer.ip().to_canonical().to_string();
        let peer_port = client.peer.port().to_string();
        let local_ip = client.local.ip().to_canonical().to_string();
        let local_port = client.local.port().to_string();
        let mut command = Command::new(&program);
        command
            .args(self.argv.iter().skip(1))
            // A defined environment only: nothing of postern's own (NOTIFY_SOCKET would let
            // the child speak for postern to systemd; credentials in the service's
            // environment are not the child's business).
            .env_clear()
            .env("PATH", CHILD_PATH)
            // ucspi-tcp (tcpserver) names, which UW-imapd and qmail-style servers read ...
            .env("PROTO", "TCP")
            .env("TCPREMOTEIP", &peer_ip)
            .env("TCPREMOTEPORT", &peer_port)
            .env("TCPLOCALIP", &local_ip)
            .env("TCPLOCALPORT", &local_port)
            // ... and the stunnel / inetd-wrapper names.
            .env("REMOTE_HOST", &peer_ip)
            .env("REMOTE_PORT", &peer_port)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Backstop only: ExecStream's Drop kills and reaps explicitly.
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(spawn_err)?;
        let missing = || spawn_err(std::io::Error::other("child stdio pipe missing"));
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward_stderr(stderr, backend.to_owned(), child.id()));
        }
        Ok((ExecStream::new(child, stdin, stdout), permit))
    }
}

/// Copies the child's stderr to the log, one warn line per line (long lines are split).
async fn forward_stderr(mut stderr: ChildStderr, backend: String, pid: Option<u32>) {
    let mut buf = Vec::with_capacity(MAX_STDERR_LINE);
    loop {
        let read = stderr.read_buf(&mut buf).await;
        let eof = !matches!(read, Ok(n) if n > 0);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            log_line(&backend, pid, &line);
        }
        if buf.len() >= MAX_STDERR_LINE || (eof && !buf.is_empty()) {
            log_line(&backend, pid, &buf);
            buf.clear();
        }
        if eof {
            return;
        }
        buf.reserve(MAX_STDERR_LINE.saturating_sub(buf.len()));
    }
}

fn log_line(backend: &str, pid: Option<u32>, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end();
    if !text.is_empty() {
        tracing::warn!(backend, pid, stderr = %text, "exec backend stderr");
    }
}

/// `PATH` of exec children (Debian's default for root's login shell).
pub(crate) const CHILD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Longest stderr line logged as one; longer output is split into several lines.
const MAX_STDERR_LINE: usize = 4096;
