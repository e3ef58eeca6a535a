//! The admin endpoint over a real loopback socket, with hand-written HTTP/1.1 requests.

// Helpers outside #[test] fns: a failed expectation is a test failure, which is the point.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_metrics::{serve_admin, Metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(5);

struct Admin {
    addr: SocketAddr,
    metrics: Metrics,
    not_ready: Arc<Mutex<Option<String>>>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

async fn start() -> Admin {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let metrics = Metrics::new("9.9.9");
    let not_ready: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let ready = {
        let not_ready = not_ready.clone();
        Arc::new(move || match not_ready.lock().expect("lock").clone() {
            None => Ok(()),
            Some(reason) => Err(reason),
        })
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve_admin(
        listener,
        metrics.clone(),
        ready,
        shutdown.clone(),
    ));
    Admin {
        addr,
        metrics,
        not_ready,
        shutdown,
        task,
    }
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends one request with `Connection: close` and reads the reply to EOF.
async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    tokio::time::timeout(DEADLINE, async {
        let mut stream = TcpStream::connect(addr)
            .await
            .expect("connect to admin endpoint");
        let req = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .expect("write request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read reply");
        let raw = String::from_utf8(raw).expect("utf-8 reply");
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no header end in {raw:?}"));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line in {head:?}"));
        Reply {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{method} {path}: no complete reply within {DEADLINE:?}"))
}

#[tokio::test]
async fn metrics_endpoint_serves_the_text_exposition() {
    let admin = start().await;
    admin.metrics.listener("imaps").accepted.inc_by(7);
    let reply = request(admin.addr, "GET", "/metrics").await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(
        reply
            .body
            .contains("postern_connections_accepted_total{listener=\"imaps\"} 7\n"),
        "{}",
        reply.body
    );
    assert!(
        reply
            .body
            .contains("postern_build_info{version=\"9.9.9\"} 1\n"),
        "{}",
        reply.body
    );
    assert!(
        reply
            .body
            .contains("# HELP postern_tls_handshake_duration_seconds "),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn healthz_and_readyz_flip_with_the_readiness_check() {
    let admin = start().await;
    let health = request(admin.addr, "GET", "/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    let ready = request(admin.addr, "GET", "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

    *admin.not_ready.lock().expect("lock") = Some("backend imap: no server up".to_owned());
    let not_ready = request(admin.addr, "GET", "/readyz").await;
    assert_eq!(not_ready.status, 503, "{}", not_ready.head);
    assert_eq!(not_ready.body, "backend imap: no server up\n");
    // Liveness does not depend on readiness.
    assert_eq!(request(admin.addr, "GET", "/healthz").await.status, 200);

    *admin.not_ready.lock().expect("lock") = None;
    assert_eq!(request(admin.addr, "GET", "/readyz").await.status, 200);
}

#[tokio::test]
async fn unknown_paths_are_404_and_other_methods_405() {
    let admin = start().await;
    for path in ["/", "/metrics/", "/admin", "/healthz/x"] {
        assert_eq!(request(admin.addr, "GET", path).await.status, 404, "{path}");
    }
    for method in ["POST", "PUT", "DELETE"] {
        let reply = request(admin.addr, method, "/metrics").await;
        assert_eq!(reply.status, 405, "{method}");
        assert_eq!(reply.header("allow"), Some("GET, HEAD"));
    }
}

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let admin = start().await;
    let mut stream = TcpStream::connect(admin.addr).await.expect("connect");
    let req = "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = String::new();
    tokio::time::timeout(DEADLINE, stream.read_to_string(&mut raw))
        .await
        .expect("both replies within the deadline")
        .expect("read");
    assert_eq!(raw.matches("HTTP/1.1 200 OK").count(), 2, "{raw}");
    assert!(
        raw.contains("\r\n\r\nok\n") && raw.ends_with("ready\n"),
        "{raw}"
    );
}

#[tokio::test]
async fn shutdown_returns_even_with_an_idle_connection_open() {
    let admin = start().await;
    // A client that connected and never sent a request must not hold up shutdown.
    let _idle = TcpStream::connect(admin.addr).await.expect("connect");
    assert_eq!(request(admin.addr, "GET", "/healthz").await.status, 200);
    admin.shutdown.cancel();
    tokio::time::timeout(DEADLINE, admin.task)
        .await
        .expect("serve_admin returns within the deadline after cancel")
        .expect("serve_admin did not panic");
    // The listener was dropped with the task: nothing accepts any more.
    assert!(TcpStream::connect(admin.addr).await.is_err());
}

#[tokio::test]
async fn a_client_that_sends_no_complete_request_is_disconnected() {
    let admin = start().await;
    let mut stream = TcpStream::connect(admin.addr).await.expect("connect");
    // Half a request line, then silence (slowloris).
    stream.write_all(b"GET /metr").await.expect("write");
    let deadline = postern_metrics::admin::HEADER_READ_TIMEOUT + Duration::from_secs(5);
    let mut sink = Vec::new();
    let read = tokio::time::timeout(deadline, stream.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "connection still open after {deadline:?}");
    // The endpoint still serves others afterwards.
    assert_eq!(request(admin.addr, "GET", "/healthz").await.status, 200);
}
