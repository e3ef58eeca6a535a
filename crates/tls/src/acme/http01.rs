//! http-01 (RFC 8555 §8.3): `GET /.well-known/acme-challenge/<token>` answered with the key
//! authorization while the order is open; everything else is 404. Nothing else is served on
//! this port.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::{debug, info};

use super::challenges::Challenges;

const PREFIX: &str = "/.well-known/acme-challenge/";

/// One connection, for at most `deadline`.
pub(crate) async fn serve(stream: TcpStream, challenges: Arc<Challenges>, deadline: Duration) {
    let peer = stream.peer_addr().ok();
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let response = respond(&req, &challenges);
        async move { Ok::<_, Infallible>(response) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(deadline)
        .max_buf_size(MAX_BUF)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(deadline, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => debug!(?peer, %error, "http-01 connection failed"),
        Err(_) => debug!(?peer, "http-01 connection timed out"),
    }
}

pub(crate) fn respond<B>(req: &Request<B>, challenges: &Challenges) -> Response<Full<Bytes>> {
    let found = match *req.method() {
        Method::GET | Method::HEAD => req
            .uri()
            .path()
            .strip_prefix(PREFIX)
            .filter(|token| is_token(token))
            .and_then(|token| challenges.http_response(token)),
        _ => None,
    };
    match found {
        Some(body) => {
            info!(path = req.uri().path(), "answered an http-01 validation");
            reply(StatusCode::OK, body)
        }
        None => reply(StatusCode::NOT_FOUND, String::new()),
    }
}

/// RFC 8555 §8.3: a token is base64url, no padding.
fn is_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// A request line and a few headers; the CA sends nothing more.
const MAX_BUF: usize = 16 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::builder().uri(path).body(()).expect("request")
    }

    #[test]
    fn serves_only_open_tokens_under_the_well_known_path() {
        let challenges = Arc::new(Challenges::default());
        let mut order = challenges.open();
        order.add_http("tok_en-1".into(), "tok_en-1.thumb".into());
        let ok = respond(&get("/.well-known/acme-challenge/tok_en-1"), &challenges);
        assert_eq!(ok.status(), StatusCode::OK);
        for path in [
            "/.well-known/acme-challenge/other",
            "/.well-known/acme-challenge/",
            "/.well-known/acme-challenge/tok_en-1/x",
            "/tok_en-1",
            "/",
        ] {
            assert_eq!(
                respond(&get(path), &challenges).status(),
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
        let post = Request::builder()
            .method(Method::POST)
            .uri("/.well-known/acme-challenge/tok_en-1")
            .body(())
            .expect("request");
        assert_eq!(respond(&post, &challenges).status(), StatusCode::NOT_FOUND);
        drop(order);
        let closed = respond(&get("/.well-known/acme-challenge/tok_en-1"), &challenges);
        assert_eq!(closed.status(), StatusCode::NOT_FOUND);
    }
}
