use std::time::Duration;

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

use super::*;
use postern_proto::watch::ClientWatch;

fn counters() -> Counters {
    let m = postern_metrics::Metrics::new("test").listener("t");
    Counters { up: m.bytes_client_to_backend.clone(), down: m.bytes_backend_to_client.clone() }
}

fn no_filters() -> Filters {
    Filters { watch: None, caps: None, imap: None }
}

#[tokio::test]
async fn relays_both_ways_and_passes_half_close_on() {
    let (mut client, mut client_side) = duplex(64);
    let (mut backend_side, mut backend) = duplex(64);
    let task = tokio::spawn(async move {
        let mut totals = Totals::default();
        let mut user = None;
        let end = relay(&mut client_side, &mut backend_side, b"* OK hi\r\n".to_vec(), no_filters(), Duration::from_secs(60), std::future::pending(), b"", &counters(), &mut totals, &mut user).await;
        (end, totals)
    });
    let mut greeting = [0u8; 9];
    client.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"* OK hi\r\n");
    // 100 KiB through a 64-byte pipe: back-pressure on every write, nothing lost or reordered.
    let payload: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
    let p2 = payload.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&p2).await.unwrap();
        client.shutdown().await.unwrap(); // half-close: the backend must see EOF
        client
    });
    let mut got = Vec::new();
    backend.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, payload);
    // The other direction still flows after the client's half-close.
    backend.write_all(b"* BYE done\r\n").await.unwrap();
    backend.shutdown().await.unwrap();
    let mut client = writer.await.unwrap();
    let mut tail = Vec::new();
    client.read_to_end(&mut tail).await.unwrap();
    assert_eq!(tail, b"* BYE done\r\n");
    let (end, totals) = task.await.unwrap();
    assert!(matches!(end, RelayEnd::Closed), "{end:?}");
    assert_eq!(totals.up, payload.len() as u64);
    assert_eq!(totals.down, 9 + 12); // greeting + BYE
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_fires_exactly() {
    let (_client, mut client_side) = duplex(64);
    let (mut backend_side, _backend) = duplex(64);
    let started = tokio::time::Instant::now();
    let mut totals = Totals::default();
    let mut user = None;
    let end = relay(&mut client_side, &mut backend_side, Vec::new(), no_filters(), Duration::from_secs(600), std::future::pending(), b"", &counters(), &mut totals, &mut user).await;
    assert!(matches!(end, RelayEnd::IdleTimeout), "{end:?}");
    assert_eq!(started.elapsed(), Duration::from_secs(600));
}

#[tokio::test]
async fn goodbye_waits_for_a_line_boundary() {
    let (mut client, mut client_side) = duplex(1024);
    let (mut backend_side, mut backend) = duplex(1024);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut totals = Totals::default();
        let mut user = None;
        let leave = async move {
            let _ = rx.await;
        };
        relay(&mut client_side, &mut backend_side, Vec::new(), no_filters(), Duration::from_secs(60), leave, b"* BYE [UNAVAILABLE] shutting down\r\n", &counters(), &mut totals, &mut user).await
    });
    backend.write_all(b"* 1 FETCH (partial").await.unwrap();
    let mut buf = [0u8; 18];
    client.read_exact(&mut buf).await.unwrap();
    tx.send(()).unwrap();
    // Mid-line: no goodbye yet. Finish the line; then the goodbye follows and the client sees EOF.
    backend.write_all(b")\r\n").await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b")\r\n* BYE [UNAVAILABLE] shutting down\r\n");
    assert!(matches!(task.await.unwrap(), RelayEnd::Shutdown));
}

#[tokio::test]
async fn watch_captures_the_user_once_the_backend_confirms_the_login() {
    let (mut client, mut client_side) = duplex(1024);
    let (mut backend_side, mut backend) = duplex(1024);
    let task = tokio::spawn(async move {
        let mut totals = Totals::default();
        let mut user = None;
        let mut watch = ClientWatch::strict(postern_proto::Protocol::Imap, 4096);
        watch.backend(b"* OK ready\r\n");
        let filters = Filters { watch: Some(Box::new(watch)), caps: None, imap: None };
        let end = relay(&mut client_side, &mut backend_side, Vec::new(), filters, Duration::from_secs(60), std::future::pending(), b"", &counters(), &mut totals, &mut user).await;
        (end, user)
    });
    client.write_all(b"a LOGIN alice Pw-Secret\r\n").await.unwrap();
    let mut login = vec![0u8; 25];
    backend.read_exact(&mut login).await.unwrap();
    // The user counts once the backend confirms the login.
    backend.write_all(b"a OK Logged in\r\n").await.unwrap();
    let mut ok = vec![0u8; 16];
    client.read_exact(&mut ok).await.unwrap();
    client.write_all(b"b NOOP").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    backend.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"b NOOP");
    backend.shutdown().await.unwrap();
    let (end, user) = task.await.unwrap();
    assert!(matches!(end, RelayEnd::Closed), "{end:?}");
    assert_eq!(user.as_deref(), Some("alice"));
}

#[tokio::test]
async fn client_address_claims_are_answered_by_postern_not_forwarded() {
    let (mut client, mut client_side) = duplex(1024);
    let (mut backend_side, mut backend) = duplex(1024);
    tokio::spawn(async move {
        let mut totals = Totals::default();
        let mut user = None;
        let filters = Filters { watch: Some(Box::new(ClientWatch::strict(postern_proto::Protocol::Imap, 4096))), caps: None, imap: None };
        relay(&mut client_side, &mut backend_side, Vec::new(), filters, Duration::from_secs(60), std::future::pending(), b"", &counters(), &mut totals, &mut user).await
    });
    client.write_all(b"a ID (\"x-originating-ip\" \"1.2.3.4\")\r\nb NOOP\r\n").await.unwrap();
    let mut line = vec![0u8; 7];
    backend.read_exact(&mut line).await.unwrap();
    assert_eq!(line, b"b NOOP\r");
    let mut reply = [0u8; 6];
    client.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"a BAD ");
}

#[tokio::test]
async fn a_line_held_by_the_watch_is_flushed_at_eof() {
    let (mut client, mut client_side) = duplex(1024);
    let (mut backend_side, mut backend) = duplex(1024);
    tokio::spawn(async move {
        let mut totals = Totals::default();
        let mut user = None;
        let mut watch = ClientWatch::strict(postern_proto::Protocol::Imap, 4096);
        watch.backend(b"* OK ready\r\n");
        let filters = Filters { watch: Some(Box::new(watch)), caps: None, imap: None };
        relay(&mut client_side, &mut backend_side, Vec::new(), filters, Duration::from_secs(60), std::future::pending(), b"", &counters(), &mut totals, &mut user).await
    });
    client.write_all(b"a NOOP\r\nb NOO").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    backend.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"a NOOP\r\nb NOO");
}

fn imap_filters() -> Filters {
    Filters { watch: None, caps: None, imap: Some(Box::new(postern_proto::imap_state::ImapState::new())) }
}

#[tokio::test]
async fn goodbye_never_lands_inside_an_imap_literal() {
    let (mut client, mut client_side) = duplex(1024);
    let (mut backend_side, mut backend) = duplex(1024);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut totals = Totals::default();
        let mut user = None;
        let leave = async move {
            let _ = rx.await;
        };
        relay(&mut client_side, &mut backend_side, Vec::new(), imap_filters(), Duration::from_secs(60), leave, b"* BYE [UNAVAILABLE] shutting down\r\n", &counters(), &mut totals, &mut user).await
    });
    // A literal whose body is made of lines: every "\r\n" in it is no boundary.
    let head = b"* 1 FETCH (BODY[] {8}\r\nab\r\ncd\r\n";
    backend.write_all(head).await.unwrap();
    let mut buf = vec![0u8; head.len()];
    client.read_exact(&mut buf).await.unwrap();
    tx.send(()).unwrap();
    tokio::task::yield_now().await;
    backend.write_all(b"ef").await.unwrap();
    backend.write_all(b")\r\n").await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"ef)\r\n* BYE [UNAVAILABLE] shutting down\r\n");
    assert!(matches!(task.await.unwrap(), RelayEnd::Shutdown));
}

#[tokio::test]
async fn a_compressed_imap_session_closes_without_a_word() {
    let (mut client, mut client_side) = duplex(1024);
    let (mut backend_side, mut backend) = duplex(1024);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut totals = Totals::default();
        let mut user = None;
        let leave = async move {
            let _ = rx.await;
        };
        relay(&mut client_side, &mut backend_side, Vec::new(), imap_filters(), Duration::from_secs(60), leave, b"* BYE [UNAVAILABLE] shutting down\r\n", &counters(), &mut totals, &mut user).await
    });
    client.write_all(b"z COMPRESS DEFLATE\r\n").await.unwrap();
    let mut cmd = vec![0u8; 20];
    backend.read_exact(&mut cmd).await.unwrap();
    backend.write_all(b"z OK Begin compression.\r\n\x78\x9c\x01\x02").await.unwrap();
    let mut got = vec![0u8; 29];
    client.read_exact(&mut got).await.unwrap();
    tx.send(()).unwrap();
    assert!(matches!(task.await.unwrap(), RelayEnd::Shutdown));
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest).await;
    assert!(!rest.windows(5).any(|w| w == b"* BYE"), "{rest:?}");
}

/// A backend stream that delivers its bytes, then fails with a reset.
struct ResettingBackend {
    data: Vec<u8>,
    sent: bool,
}

impl tokio::io::AsyncRead for ResettingBackend {
    fn poll_read(mut self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> std::task::Poll<std::io::Result<()>> {
        if self.sent {
            return std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()));
        }
        self.sent = true;
        let data = std::mem::take(&mut self.data);
        buf.put_slice(&data);
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for ResettingBackend {
    fn poll_write(self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_backend_reset_after_its_goodbye_is_a_close() {
    let (mut client, mut client_side) = duplex(1024);
    let mut backend = ResettingBackend { data: b"221 2.0.0 Bye\r\n".to_vec(), sent: false };
    let task = tokio::spawn(async move {
        let mut totals = Totals::default();
        let mut user = None;
        relay(&mut client_side, &mut backend, Vec::new(), no_filters(), Duration::from_secs(60), std::future::pending(), b"", &counters(), &mut totals, &mut user).await
    });
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"221 2.0.0 Bye\r\n");
    drop(client);
    assert!(matches!(task.await.unwrap(), RelayEnd::Closed));
}
