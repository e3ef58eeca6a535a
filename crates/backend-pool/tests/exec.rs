//! Exec backends: one child per session, inetd-style environment, no zombies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use postern_backend_pool::{BackendStream, PoolError};
use postern_config::{BackendConfig, BackendTarget, Balance};
use postern_proto::Protocol;
use postern_testkit::wait_for;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SCRIPT: &str = r#"#!/bin/sh
printf '* OK exec ready\r\n'
printf '* ENV %s %s %s %s %s %s %s\r\n' "$PROTO" "$TCPREMOTEIP" "$TCPREMOTEPORT" "$TCPLOCALIP" "$TCPLOCALPORT" "$REMOTE_HOST" "$REMOTE_PORT"
echo "stderr line from the child" >&2
cat
"#;

fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn exec_backend(name: &str, script: &Path, max_children: usize) -> BackendConfig {
    let mut cfg = backend(name, Vec::new(), Balance::RoundRobin);
    cfg.target = BackendTarget::Exec {
        argv: vec![script.display().to_string()],
        max_children,
    };
    cfg
}

#[tokio::test]
async fn child_gets_the_client_address_in_its_environment_and_relays() {
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(dir.path(), "imapd-env", SCRIPT);
    let (pool, _m) = pool(&exec_backend("exec", &script, 10), Protocol::Imap);
    assert!(pool.any_up());
    let mut conn = pool.connect(client("192.0.2.7:50123")).await.unwrap();
    assert_eq!(conn.server, format!("exec:{}", script.display()));
    assert!(conn.greeting.starts_with(b"* OK exec ready\r\n"));
    let mut buf = conn.greeting.clone();
    read_until_contains(&mut conn.stream, &mut buf, b"* ENV ").await;
    read_until_contains(
        &mut conn.stream,
        &mut buf,
        b"\r\n* ENV TCP 192.0.2.7 50123 127.0.0.1 993 192.0.2.7 50123\r\n",
    )
    .await;
    conn.stream.write_all(b"a1 NOOP\r\n").await.unwrap();
    let mut echo = Vec::new();
    read_until_contains(&mut conn.stream, &mut echo, b"a1 NOOP\r\n").await;
    // Half-close: the child's stdin ends, `cat` exits, its stdout reaches EOF.
    conn.stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.stream.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn max_children_caps_concurrent_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(dir.path(), "imapd-cap", SCRIPT);
    let (pool, _m) = pool(&exec_backend("cap", &script, 2), Protocol::Imap);
    let a = pool.connect(client("192.0.2.1:1")).await.unwrap();
    let _b = pool.connect(client("192.0.2.1:2")).await.unwrap();
    let err = pool.connect(client("192.0.2.1:3")).await.unwrap_err();
    assert!(
        matches!(err, PoolError::TooManyChildren { max: 2, .. }),
        "{err}"
    );
    drop(a);
    pool.connect(client("192.0.2.1:4")).await.unwrap();
}

#[tokio::test]
async fn missing_program_and_silent_child_are_errors() {
    let (pool, _m) = pool(
        &exec_backend("missing", Path::new("/nonexistent/imapd"), 2),
        Protocol::Imap,
    );
    let err = pool.connect(client("192.0.2.1:1")).await.unwrap_err();
    assert!(matches!(err, PoolError::Spawn { .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let script = write_script(
        dir.path(),
        "imapd-bye",
        "#!/bin/sh\nprintf '* BYE no\\r\\n'\n",
    );
    let (bye, _m) = common::pool(&exec_backend("bye", &script, 2), Protocol::Imap);
    let err = bye.connect(client("192.0.2.1:1")).await.unwrap_err();
    assert!(
        matches!(err, PoolError::NoServerAvailable { tried: 1, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_hundred_sessions_leave_no_zombie() {
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(dir.path(), "imapd-zombie", SCRIPT);
    let (pool, _m) = pool(&exec_backend("zombie", &script, 1000), Protocol::Imap);
    let ours = std::process::id();
    let children = || children_named(ours, "imapd-zombie");
    // The probe itself works: a held session is one visible child.
    let held = pool.connect(client("192.0.2.1:999")).await.unwrap();
    assert_eq!(children().len(), 1, "{:?}", children());
    drop(held);
    for i in 0..100 {
        let mut conn = pool
            .connect(client(&format!("192.0.2.1:{}", 1000 + i)))
            .await
            .unwrap();
        assert!(matches!(conn.stream, BackendStream::Exec(_)));
        if i % 2 == 0 {
            // Half the sessions end cleanly (child exits by itself), half are cut (child killed).
            conn.stream.shutdown().await.unwrap();
        }
        drop(conn);
    }
    let done = wait_for(Duration::from_secs(10), || children().is_empty()).await;
    assert!(done, "children left (pid, state): {:?}", children());
}

/// Children of `parent` whose command name is `comm`, with their state letter (`Z` = zombie).
fn children_named(parent: u32, comm: &str) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..."; comm may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let mut rest = stat[close + 1..].split_whitespace();
        let state = rest.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid: u32 = rest.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        // A script run via its shebang shows the script's name as comm (truncated to 15).
        if ppid == parent && (name == comm || comm.starts_with(name)) {
            out.push((pid, state));
        }
    }
    out
}
