//! `forward_client = "protocol"` against a real Dovecot (IMAP ID, POP3 XCLIENT, submission
//! XCLIENT): Dovecot must log the forwarded client address, not postern's.
//!
//! Needs `dovecot` (2.3) installed and root (Dovecot drops to `nobody` for mail).
//! Run: `cargo test -p postern-backend-pool --test dovecot -- --ignored --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use postern_backend_pool::{BackendConn, ClientInfo};
use postern_config::{Balance, ForwardClient, ServerAddr};
use postern_proto::Protocol;
use postern_testkit::wait_for;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

struct Dovecot {
    root: tempfile::TempDir,
    imap: u16,
    pop3: u16,
    submission: u16,
    _child: Child,
}

impl Dovecot {
    async fn start() -> Dovecot {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::set_permissions(r, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(r.join("mail")).unwrap();
        std::fs::create_dir_all(r.join("state")).unwrap();
        std::process::Command::new("chown")
            .arg("nobody:nogroup")
            .arg(r.join("mail"))
            .status()
            .unwrap();
        std::fs::write(r.join("passwd"), "alice:{PLAIN}secret1\n").unwrap();
        let (imap, pop3, submission) = (free_port(), free_port(), free_port());
        let conf = format!(
            r#"protocols = imap pop3 submission
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
instance_name = pool-dovetest-{pid}
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8
mail_location = maildir:{root}/mail/%u/Maildir
hostname = dovetest.local
submission_relay_host = 127.0.0.1
submission_relay_port = 9
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = {submission}
  }}
}}
"#,
            root = r.display(),
            pid = std::process::id(),
        );
        std::fs::write(r.join("dovecot.conf"), conf).unwrap();
        let child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(r.join("dovecot.conf"))
            .spawn()
            .unwrap();
        let d = Dovecot {
            root,
            imap,
            pop3,
            submission,
            _child: child,
        };
        for port in [imap, pop3, submission] {
            let up = postern_testkit::wait_for_async(Duration::from_secs(10), || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            })
            .await;
            assert!(up, "dovecot did not listen on {port}; log: {}", d.log());
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("dovecot.log")).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("dovecot.log")
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its login, auth and mail processes (about 1 s); a
        // SIGKILL would orphan them. tokio reaps the master once it exits.
        if let Some(pid) = self._child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn connect(port: u16, protocol: Protocol) -> BackendConn {
    let addr = ServerAddr::Tcp {
        host: "127.0.0.1".into(),
        port,
    };
    let mut cfg = backend("dovecot", vec![addr], Balance::RoundRobin);
    cfg.forward_client = ForwardClient::Protocol;
    let (pool, _m) = pool(&cfg, protocol);
    let info = ClientInfo {
        peer: "192.0.2.7:50123".parse().unwrap(),
        local: "127.0.0.1:993".parse().unwrap(),
    };
    pool.connect(info)
        .await
        .expect("dovecot accepts the forwarding command")
}

async fn say(conn: &mut BackendConn, line: &str, until: &str) -> String {
    conn.stream
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    read_until_contains(&mut conn.stream, &mut buf, until.as_bytes()).await;
    String::from_utf8_lossy(&buf).into_owned()
}

async fn log_shows(log: &Path, needle: &str) -> bool {
    let log = log.to_owned();
    let needle = needle.to_owned();
    wait_for(Duration::from_secs(5), move || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&needle)
    })
    .await
}

/// Waits until one log line contains every needle.
async fn log_line_with(log: &Path, needles: &[&str]) -> bool {
    let log = log.to_owned();
    wait_for(Duration::from_secs(5), move || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    })
    .await
}

#[tokio::test]
#[ignore = "needs dovecot installed and root; run with --ignored"]
async fn dovecot_logs_the_forwarded_client_address() {
    let d = Dovecot::start().await;

    let mut imap = connect(d.imap, Protocol::Imap).await;
    assert!(
        imap.greeting.starts_with(b"* OK"),
        "{:?}",
        String::from_utf8_lossy(&imap.greeting)
    );
    say(&mut imap, "a LOGIN alice secret1", "a OK").await;
    say(&mut imap, "b LOGOUT", "b OK").await;
    assert!(
        log_shows(
            &d.log_path(),
            "imap-login: Info: Login: user=<alice>, method=PLAIN, rip=192.0.2.7, lip=127.0.0.1"
        )
        .await,
        "{}",
        d.log()
    );

    let mut pop3 = connect(d.pop3, Protocol::Pop3).await;
    assert!(
        pop3.greeting.starts_with(b"+OK"),
        "{:?}",
        String::from_utf8_lossy(&pop3.greeting)
    );
    say(&mut pop3, "USER alice", "+OK").await;
    say(&mut pop3, "PASS secret1", "+OK").await;
    say(&mut pop3, "QUIT", "+OK").await;
    assert!(
        log_shows(
            &d.log_path(),
            "pop3-login: Info: Login: user=<alice>, method=PLAIN, rip=192.0.2.7"
        )
        .await,
        "{}",
        d.log()
    );

    let mut smtp = connect(d.submission, Protocol::Smtp).await;
    let greeting = String::from_utf8_lossy(&smtp.greeting).into_owned();
    assert!(greeting.starts_with("220"), "{greeting:?}");
    let ehlo = say(&mut smtp, "EHLO client.test", "\r\n250 ").await;
    assert!(
        ehlo.starts_with("250"),
        "the XCLIENT reply was consumed: {ehlo:?}"
    );
    say(&mut smtp, "QUIT", "221").await;
    assert!(
        log_line_with(&d.log_path(), &["submission-login: ", "rip=192.0.2.7"]).await,
        "{}",
        d.log()
    );
    let log = d.log();
    println!("{log}");
}

/// Time from `connect()` to greeting against Dovecot's imap-login, cold vs warm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dovecot; measurement, prints figures"]
async fn measure_dovecot_time_to_greeting_cold_vs_warm() {
    let d = Dovecot::start().await;
    for warm in [0, 4] {
        let addr = ServerAddr::Tcp {
            host: "127.0.0.1".into(),
            port: d.imap,
        };
        let mut cfg = backend("dovecot", vec![addr], Balance::RoundRobin);
        cfg.warm = warm;
        cfg.health = health(60_000);
        let (pool, _m) = pool(&cfg, Protocol::Imap);
        let shutdown = tokio_util::sync::CancellationToken::new();
        pool.spawn_background(shutdown.clone());
        tokio::time::sleep(Duration::from_millis(300)).await; // let the spares fill (pacing, not an event)
        let times = sample(&pool, 200, Duration::from_millis(30)).await;
        println!("dovecot imap-login, warm={warm}: {}", summary(&times));
        shutdown.cancel();
    }
}
