use std::time::Duration;

use postern_proto::imap_state::ImapState;
use postern_proto::login_guard::{LoginGuard, MAX_REFUSED_CLAIMS};
use postern_proto::Protocol;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;

const BYE: &[u8] = b"* BYE [UNAVAILABLE] shutting down\r\n";

fn counters() -> Counters {
    let m = postern_metrics::Metrics::new("test").listener("t");
    Counters {
        up: m.bytes_client_to_backend.clone(),
        down: m.bytes_backend_to_client.clone(),
    }
}

fn no_filters() -> Filters {
    Filters {
        guard: None,
        caps: None,
        imap: None,
        swallow: None,
    }
}

fn imap_filters() -> Filters {
    Filters {
        guard: None,
        caps: None,
        imap: Some(Box::new(ImapState::new())),
        swallow: None,
    }
}

/// What a session has: the guard, and for IMAP the response tracker.
fn guard_filters(p: Protocol) -> Filters {
    Filters {
        guard: Some(Box::new(LoginGuard::new(p, 4096))),
        caps: None,
        imap: (p == Protocol::Imap).then(|| Box::new(ImapState::new())),
        swallow: None,
    }
}

const GREETING: &[u8] = b"* OK ready\r\n";

/// A plan that writes `greeting` to the client first.
fn plan<'a, L>(
    greeting: &[u8],
    filters: Filters,
    leave: L,
    goodbye: &'static [u8],
    counters: &'a Counters,
) -> RelayPlan<'a, L> {
    RelayPlan {
        greeting: greeting.to_vec(),
        greeting_len: greeting
            .iter()
            .position(|&b| b == b'\n')
            .map_or(0, |i| i + 1),
        swallow_greeting: false,
        replay: b"",
        filters,
        idle_timeout: Duration::from_secs(60),
        leave,
        goodbye,
        counters,
        logins: None,
        prelogin: None,
    }
}

/// A relay between two in-memory pipes of `pipe` bytes each.
struct Harness {
    /// The client's end.
    client: DuplexStream,
    /// The backend's end.
    backend: DuplexStream,
    /// Fire to ask the session to leave (the drain's goodbye).
    leave: Option<oneshot::Sender<()>>,
    /// The relay's end, byte totals and captured user.
    task: JoinHandle<Relayed>,
}

fn spawn_relay(pipe: usize, to_client: &[u8], filters: Filters, goodbye: &'static [u8]) -> Harness {
    let (client, client_side) = duplex(pipe);
    let (backend_side, backend) = duplex(pipe);
    let (tx, rx) = oneshot::channel::<()>();
    let task = run_relay(client_side, backend_side, to_client, filters, goodbye, rx);
    Harness {
        client,
        backend,
        leave: Some(tx),
        task,
    }
}

fn run_relay<C, B>(
    mut client: C,
    mut backend: B,
    to_client: &[u8],
    filters: Filters,
    goodbye: &'static [u8],
    leave: oneshot::Receiver<()>,
) -> JoinHandle<Relayed>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let to_client = to_client.to_vec();
    tokio::spawn(async move {
        let leave = async move {
            // A dropped sender means "never".
            if leave.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let counters = counters();
        let plan = plan(&to_client, filters, leave, goodbye, &counters);
        relay(&mut client, &mut backend, plan).await
    })
}

#[tokio::test]
async fn relays_both_ways_and_passes_half_close_on() {
    // 64-byte pipes: back-pressure on every write; nothing may be lost or reordered.
    let Harness {
        mut client,
        mut backend,
        task,
        ..
    } = spawn_relay(64, b"* OK hi\r\n", no_filters(), b"");
    let mut greeting = [0u8; 9];
    client.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"* OK hi\r\n");
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
    let Relayed { end, totals, .. } = task.await.unwrap();
    assert!(matches!(end, RelayEnd::Closed), "{end:?}");
    assert_eq!(totals.up, payload.len() as u64);
    assert_eq!(totals.down, 9 + 12); // greeting + BYE
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_fires_exactly() {
    let (_client, mut client_side) = duplex(64);
    let (mut backend_side, _backend) = duplex(64);
    let started = tokio::time::Instant::now();
    let counters = counters();
    let plan = RelayPlan {
        idle_timeout: Duration::from_secs(600),
        ..plan(b"", no_filters(), std::future::pending(), b"", &counters)
    };
    let end = relay(&mut client_side, &mut backend_side, plan).await.end;
    assert!(matches!(end, RelayEnd::IdleTimeout), "{end:?}");
    assert_eq!(started.elapsed(), Duration::from_secs(600));
}

const PRELOGIN_BYE: &[u8] = Protocol::Imap.prelogin_goodbye();

/// An IMAP session under the guard whose pre-login deadline is `after` from now.
fn spawn_prelogin(
    greeting: &'static [u8],
    after: Duration,
) -> (DuplexStream, DuplexStream, JoinHandle<Relayed>) {
    let (client, mut client_side) = duplex(1024);
    let (mut backend_side, backend) = duplex(1024);
    let deadline = tokio::time::Instant::now() + after;
    let task = tokio::spawn(async move {
        let counters = counters();
        let plan = RelayPlan {
            prelogin: Some(Prelogin {
                deadline,
                goodbye: PRELOGIN_BYE,
            }),
            ..plan(
                greeting,
                guard_filters(Protocol::Imap),
                std::future::pending(),
                BYE,
                &counters,
            )
        };
        relay(&mut client_side, &mut backend_side, plan).await
    });
    (client, backend, task)
}

#[tokio::test(start_paused = true)]
async fn a_session_not_logged_in_by_the_prelogin_deadline_gets_the_goodbye() {
    let started = tokio::time::Instant::now();
    let (mut client, mut backend, task) = spawn_prelogin(GREETING, Duration::from_secs(20));
    // Traffic does not extend the deadline (the idle timeout is 60 s).
    client.write_all(b"a CAPABILITY\r\n").await.unwrap();
    let mut cmd = [0u8; 14];
    backend.read_exact(&mut cmd).await.unwrap();
    backend
        .write_all(b"* CAPABILITY IMAP4rev1\r\na OK done\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    client.read_to_end(&mut seen).await.unwrap();
    assert_eq!(
        seen,
        [
            GREETING,
            b"* CAPABILITY IMAP4rev1\r\na OK done\r\n",
            PRELOGIN_BYE
        ]
        .concat()
    );
    assert!(matches!(task.await.unwrap().end, RelayEnd::PreloginTimeout));
    assert_eq!(started.elapsed(), Duration::from_secs(20));
}

#[tokio::test(start_paused = true)]
async fn the_prelogin_goodbye_waits_for_a_response_boundary_then_gives_up() {
    let started = tokio::time::Instant::now();
    let (mut client, mut backend, task) = spawn_prelogin(GREETING, Duration::from_secs(20));
    client.write_all(b"a CAPABILITY\r\n").await.unwrap();
    backend.write_all(b"* CAPABILITY IMAP4rev1").await.unwrap();
    // Mid-response at the deadline: no goodbye inside it; closed after the grace.
    let mut seen = Vec::new();
    client.read_to_end(&mut seen).await.unwrap();
    assert_eq!(seen, [GREETING, b"* CAPABILITY IMAP4rev1"].concat());
    assert!(matches!(task.await.unwrap().end, RelayEnd::PreloginTimeout));
    assert_eq!(started.elapsed(), Duration::from_secs(20) + PRELOGIN_GRACE);
}

#[tokio::test(start_paused = true)]
async fn a_confirmed_login_or_a_preauth_greeting_lifts_the_prelogin_deadline() {
    let (mut client, mut backend, task) = spawn_prelogin(GREETING, Duration::from_secs(20));
    client.write_all(b"a LOGIN alice secret\r\n").await.unwrap();
    let mut cmd = [0u8; 22];
    backend.read_exact(&mut cmd).await.unwrap();
    backend.write_all(b"a OK logged in\r\n").await.unwrap();
    let mut reply = vec![0u8; GREETING.len() + 16];
    client.read_exact(&mut reply).await.unwrap();
    tokio::time::sleep(Duration::from_secs(40)).await;
    client.write_all(b"b NOOP\r\n").await.unwrap();
    let mut noop = [0u8; 8];
    backend.read_exact(&mut noop).await.unwrap();
    drop(client);
    drop(backend);
    assert!(matches!(
        task.await.unwrap().end,
        RelayEnd::Closed | RelayEnd::ClientError(_)
    ));

    let preauth: &[u8] = b"* PREAUTH [CAPABILITY IMAP4rev1] logged in\r\n";
    let (mut client, _backend, task) = spawn_prelogin(preauth, Duration::from_secs(20));
    let mut greeting = vec![0u8; preauth.len()];
    client.read_exact(&mut greeting).await.unwrap();
    // Only the idle timeout (60 s) ends it, never the pre-login deadline.
    let started = tokio::time::Instant::now();
    assert!(matches!(task.await.unwrap().end, RelayEnd::IdleTimeout));
    assert_eq!(started.elapsed(), Duration::from_secs(60));
}

#[tokio::test]
async fn goodbye_waits_for_a_line_boundary() {
    let Harness {
        mut client,
        mut backend,
        mut leave,
        task,
    } = spawn_relay(1024, b"", no_filters(), BYE);
    backend.write_all(b"* 1 FETCH (partial").await.unwrap();
    let mut buf = [0u8; 18];
    client.read_exact(&mut buf).await.unwrap();
    leave.take().unwrap().send(()).unwrap();
    // Mid-line: no goodbye yet. Finish the line; then the goodbye follows and the client sees EOF.
    backend.write_all(b")\r\n").await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, [&b")\r\n"[..], BYE].concat());
    assert!(matches!(task.await.unwrap().end, RelayEnd::Shutdown));
}

#[tokio::test]
async fn the_guard_reports_the_user_once_the_backend_confirms_the_login() {
    let Harness {
        mut client,
        mut backend,
        task,
        ..
    } = spawn_relay(1024, GREETING, guard_filters(Protocol::Imap), b"");
    let mut greeting = vec![0u8; GREETING.len()];
    client.read_exact(&mut greeting).await.unwrap();
    client
        .write_all(b"a LOGIN alice Pw-Secret\r\n")
        .await
        .unwrap();
    let mut login = vec![0u8; 25];
    backend.read_exact(&mut login).await.unwrap();
    backend.write_all(b"a OK Logged in\r\n").await.unwrap();
    let mut ok = vec![0u8; 16];
    client.read_exact(&mut ok).await.unwrap();
    client.write_all(b"b NOOP\r\n").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    backend.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"b NOOP\r\n");
    backend.shutdown().await.unwrap();
    let Relayed { end, user, .. } = task.await.unwrap();
    assert!(matches!(end, RelayEnd::Closed), "{end:?}");
    assert_eq!(user.as_deref(), Some("alice"));
}

#[tokio::test]
async fn client_address_claims_are_answered_by_postern_not_forwarded() {
    let Harness {
        mut client,
        mut backend,
        ..
    } = spawn_relay(1024, GREETING, guard_filters(Protocol::Imap), b"");
    client
        .write_all(b"a ID (\"x-originating-ip\" \"1.2.3.4\")\r\nb NOOP\r\n")
        .await
        .unwrap();
    let mut line = vec![0u8; 8];
    backend.read_exact(&mut line).await.unwrap();
    assert_eq!(line, b"b NOOP\r\n");
    let mut reply = vec![0u8; GREETING.len() + 6];
    client.read_exact(&mut reply).await.unwrap();
    assert!(reply.ends_with(b"a BAD "), "{reply:?}");
}

#[tokio::test]
async fn a_partial_line_held_by_the_guard_is_dropped_at_eof() {
    let Harness {
        mut client,
        mut backend,
        ..
    } = spawn_relay(1024, GREETING, guard_filters(Protocol::Imap), b"");
    client.write_all(b"a NOOP\r\nb NOO").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    backend.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"a NOOP\r\n");
}

#[tokio::test(start_paused = true)]
async fn postern_s_replies_hold_back_a_client_that_does_not_read() {
    // Refusals that are not claims (STARTTLS inside TLS) do not end a session, so a client
    // could ask for them forever. It gets them only as fast as it reads them: while they
    // wait, postern reads nothing more from it. (Paused time: the timeout fires only once
    // the runtime has nothing else to do, so no wall clock is measured.)
    let Harness {
        mut client,
        mut backend,
        task,
        ..
    } = spawn_relay(4096, GREETING, guard_filters(Protocol::Imap), b"");
    let spray = b"a STARTTLS\r\n".repeat(200_000);
    let wrote = tokio::time::timeout(Duration::from_secs(5), client.write_all(&spray)).await;
    assert!(
        wrote.is_err(),
        "postern kept reading a client that never reads"
    );
    // Nothing reached the backend, and the client's replies are a bounded few.
    let mut probe = [0u8; 1];
    let none = tokio::time::timeout(Duration::from_secs(1), backend.read(&mut probe)).await;
    assert!(none.is_err());
    drop(client);
    drop(backend);
    let _ = task.await;
}

#[tokio::test]
async fn the_guard_ends_a_session_after_too_many_claims() {
    let Harness {
        mut client,
        mut backend,
        task,
        ..
    } = spawn_relay(1024, b"+OK ready\r\n", guard_filters(Protocol::Pop3), b"");
    let claims = b"XCLIENT ADDR=192.0.2.1\r\n".repeat(MAX_REFUSED_CLAIMS as usize + 2);
    client.write_all(&claims).await.unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    let text = String::from_utf8_lossy(&got);
    assert_eq!(
        text.matches("-ERR XCLIENT").count(),
        MAX_REFUSED_CLAIMS as usize
    );
    assert!(text.ends_with("-ERR Too many refused commands, closing connection\r\n"));
    let end = task.await.unwrap().end;
    assert!(matches!(end, RelayEnd::GuardClosed(_)), "{end:?}");
    let mut seen = Vec::new();
    let _ = backend.read_to_end(&mut seen).await;
    assert!(seen.is_empty(), "{seen:?}");
}

#[tokio::test]
async fn bytes_after_the_greeting_go_through_the_filters() {
    // STARTTLS listener: the backend's greeting is swallowed, and the capability list it
    // sent right after it is filtered like any later reply (T6).
    let (mut client, mut client_side) = duplex(1024);
    let (mut backend_side, backend) = duplex(1024);
    drop(backend);
    let task = tokio::spawn(async move {
        let counters = counters();
        let mut filters = guard_filters(Protocol::Imap);
        filters.caps = Some(Box::new(postern_proto::capfilter::CapabilityFilter::new(
            Protocol::Imap,
        )));
        let plan = RelayPlan {
            swallow_greeting: true,
            ..plan(
                b"* OK ready\r\n* CAPABILITY IMAP4rev1 STARTTLS IDLE\r\n",
                filters,
                std::future::pending(),
                b"",
                &counters,
            )
        };
        relay(&mut client_side, &mut backend_side, plan).await
    });
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"* CAPABILITY IMAP4rev1 IDLE\r\n");
    drop(client);
    let _ = task.await;
}

#[tokio::test]
async fn goodbye_never_lands_inside_an_imap_literal() {
    let Harness {
        mut client,
        mut backend,
        mut leave,
        task,
    } = spawn_relay(1024, b"", imap_filters(), BYE);
    // A literal whose body is made of lines: every "\r\n" in it is no boundary.
    let head = b"* 1 FETCH (BODY[] {8}\r\nab\r\ncd\r\n";
    backend.write_all(head).await.unwrap();
    let mut buf = vec![0u8; head.len()];
    client.read_exact(&mut buf).await.unwrap();
    leave.take().unwrap().send(()).unwrap();
    tokio::task::yield_now().await;
    backend.write_all(b"ef").await.unwrap();
    backend.write_all(b")\r\n").await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, [&b"ef)\r\n"[..], BYE].concat());
    assert!(matches!(task.await.unwrap().end, RelayEnd::Shutdown));
}

#[tokio::test]
async fn goodbye_never_lands_inside_a_sieve_script() {
    let bye = Protocol::Sieve.shutdown_goodbye();
    let Harness {
        mut client,
        mut backend,
        mut leave,
        task,
    } = spawn_relay(1024, b"", guard_filters(Protocol::Sieve), bye);
    let greeting = b"\"SASL\" \"PLAIN\"\r\nOK \"ready\"\r\n";
    backend.write_all(greeting).await.unwrap();
    client.write_all(b"GETSCRIPT \"s\"\r\n").await.unwrap();
    let mut cmd = [0u8; 15];
    backend.read_exact(&mut cmd).await.unwrap();
    // A script is a literal made of lines: a line start in it is no place for a BYE.
    let head = b"{8}\r\nab\r\ncd\r\n";
    backend.write_all(head).await.unwrap();
    let mut buf = vec![0u8; greeting.len() + head.len()];
    client.read_exact(&mut buf).await.unwrap();
    leave.take().unwrap().send(()).unwrap();
    tokio::task::yield_now().await;
    backend.write_all(b"ef\r\nOK \"done\"\r\n").await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, [&b"ef\r\nOK \"done\"\r\n"[..], bye].concat());
    assert!(matches!(task.await.unwrap().end, RelayEnd::Shutdown));
}

#[tokio::test]
async fn a_compressed_imap_session_closes_without_a_word() {
    let Harness {
        mut client,
        mut backend,
        mut leave,
        task,
    } = spawn_relay(1024, b"", imap_filters(), BYE);
    client.write_all(b"z COMPRESS DEFLATE\r\n").await.unwrap();
    let mut cmd = vec![0u8; 20];
    backend.read_exact(&mut cmd).await.unwrap();
    backend
        .write_all(b"z OK Begin compression.\r\n\x78\x9c\x01\x02")
        .await
        .unwrap();
    let mut got = vec![0u8; 29];
    client.read_exact(&mut got).await.unwrap();
    leave.take().unwrap().send(()).unwrap();
    assert!(matches!(task.await.unwrap().end, RelayEnd::Shutdown));
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest).await;
    assert!(!rest.windows(5).any(|w| w == b"* BYE"), "{rest:?}");
}

/// A backend stream that delivers its bytes, then fails with a reset.
struct ResettingBackend {
    data: Vec<u8>,
}

impl AsyncRead for ResettingBackend {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.data.is_empty() {
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        let data = std::mem::take(&mut self.data);
        buf.put_slice(&data);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ResettingBackend {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_backend_reset_after_its_goodbye_is_a_close() {
    let (mut client, client_side) = duplex(1024);
    let (_never, rx) = oneshot::channel::<()>();
    let task = run_relay(
        client_side,
        ResettingBackend {
            data: b"221 2.0.0 Bye\r\n".to_vec(),
        },
        b"220 mx ready\r\n",
        guard_filters(Protocol::Smtp),
        b"",
        rx,
    );
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"220 mx ready\r\n221 2.0.0 Bye\r\n");
    drop(client);
    assert!(matches!(task.await.unwrap().end, RelayEnd::Closed));
}

#[tokio::test]
async fn a_backend_reset_mid_session_is_a_backend_error() {
    // No goodbye, no EOF: the reset cut a response, and the client must learn it was cut.
    let (mut client, client_side) = duplex(1024);
    let (_never, rx) = oneshot::channel::<()>();
    let task = run_relay(
        client_side,
        ResettingBackend {
            data: b"* 1 FETCH (BODY[] {100}\r\npartial".to_vec(),
        },
        GREETING,
        guard_filters(Protocol::Imap),
        b"",
        rx,
    );
    let end = task.await.unwrap().end;
    assert!(
        matches!(&end, RelayEnd::BackendError(e) if e.kind() == io::ErrorKind::ConnectionReset),
        "{end:?}"
    );
    let mut got = Vec::new();
    let _ = client.read_to_end(&mut got).await;
}

#[tokio::test]
async fn bytes_of_the_final_poll_reach_the_metrics() {
    // The backend's last bytes and its EOF arrive together: the poll that moves them is the
    // one that ends the relay, and the metric must still equal the log line's totals.
    let m = postern_metrics::Metrics::new("test").listener("t");
    let counters = Counters {
        up: m.bytes_client_to_backend.clone(),
        down: m.bytes_backend_to_client.clone(),
    };
    let (mut client, mut client_side) = duplex(1024);
    let (mut backend_side, mut backend) = duplex(1024);
    client.shutdown().await.unwrap();
    backend.write_all(b"* BYE bye\r\n").await.unwrap();
    backend.shutdown().await.unwrap();
    let plan = plan(
        b"* OK\r\n",
        no_filters(),
        std::future::pending(),
        b"",
        &counters,
    );
    let Relayed { end, totals, .. } = relay(&mut client_side, &mut backend_side, plan).await;
    assert!(matches!(end, RelayEnd::Closed), "{end:?}");
    assert_eq!(totals.down, 6 + 11);
    assert_eq!(m.bytes_backend_to_client.get(), totals.down);
    assert_eq!(m.bytes_client_to_backend.get(), totals.up);
}
