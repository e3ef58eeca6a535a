//! The admin HTTP endpoint: `/metrics`, `/healthz`, `/readyz`, nothing else.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::{Metrics, TEXT_CONTENT_TYPE};

mod accept;
mod write_deadline;

pub use accept::accept_bounded;
use write_deadline::WriteDeadline;

/// The readiness check: `Ok` when ready, `Err(reason)` otherwise (the reason is the body of
/// the 503).
pub type ReadyFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Serves GET `/metrics` (text exposition 0.0.4), `/healthz` (200 `ok` while the process
/// runs) and `/readyz` (200 `ready` when `ready()` is `Ok`, else 503 with the reason);
/// 404 for any other path, 405 for any other method. HTTP/1.1 via hyper.
///
/// Each connection has a header-read timeout (which also closes idle keep-alive
/// connections), a write timeout ([`WRITE_TIMEOUT`]: a client that stops reading its
/// responses is dropped, so it cannot hold a place forever) and at most [`MAX_CONNECTIONS`] are served at once; over that, new
/// connections are closed at once. Returns when `shutdown` is cancelled, after open
/// connections finished their current request (bounded by [`DRAIN_TIMEOUT`]).
///
/// Wiring note: the drain (ARCHITECTURE.md) wants `/readyz` to answer 503 *during* the drain, so pass a token
/// that is cancelled after the drain (not the one that starts it) and make `ready()` return
/// `Err("shutting down")` from the first moment of the drain. `/metrics` then stays
/// scrapeable while sessions finish.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: Metrics,
    ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = accept_bounded("admin endpoint", &listener, &permits, &shutdown, |stream| {
        let metrics = metrics.clone();
        let ready = ready.clone();
        let shutdown = shutdown.clone();
        async move {
            let stream = WriteDeadline::new(stream, WRITE_TIMEOUT);
            serve_connection(TokioIo::new(stream), metrics, ready, shutdown).await;
        }
    })
    .await;
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::debug!("admin endpoint: connections still open after the drain timeout");
    }
}

async fn serve_connection(
    io: TokioIo<WriteDeadline<tokio::net::TcpStream>>,
    metrics: Metrics,
    ready: ReadyFn,
    shutdown: CancellationToken,
) {
    let service = service_fn(move |req| {
        let response = respond(&req, &metrics, &ready);
        async move { Ok::<_, Infallible>(response) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF_SIZE)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(DRAIN_TIMEOUT, conn.as_mut()).await {
                Ok(result) => result,
                Err(_) => return,
            }
        }
    };
    if let Err(error) = result {
        // Scrapers disconnecting or timing out are routine, not operator-relevant.
        tracing::debug!(%error, "admin endpoint: connection ended with an error");
    }
}

fn respond(req: &Request<Incoming>, metrics: &Metrics, ready: &ReadyFn) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz or /readyz\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is allowed\n".into(),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(metrics.encode())));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_CONTENT_TYPE));
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        _ => match ready() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
        },
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Concurrent admin connections served at once; Prometheus and a kubelet need a handful.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's headers, and how long an idle
/// keep-alive connection stays open.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a response write may make no progress before the connection is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for in-flight admin requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BUF_SIZE: usize = 16 * 1024;
