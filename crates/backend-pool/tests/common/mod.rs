//! Synthetic backends for the pool tests: tiny tokio servers on 127.0.0.1:0.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_backend_pool::{ClientInfo, Pool};
use postern_config::{
    BackendConfig, BackendTarget, Balance, ForwardClient, HealthConfig, Route, ServerAddr,
};
use postern_metrics::Metrics;
use postern_proto::Protocol;
use proxy_header::{ParseConfig, ProxiedAddress, ProxyHeader};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// How a fake server behaves on each connection.
#[derive(Clone, Debug)]
pub struct Behavior {
    pub greeting: Vec<u8>,
    /// Expect a PROXY header (v1 or v2) before greeting.
    pub proxy: bool,
    /// Expect one forwarding command after the greeting and answer it as this protocol.
    pub forward: Option<Protocol>,
    /// Accept but never greet.
    pub silent: bool,
}

impl Behavior {
    pub fn greeting(g: &str) -> Self {
        Behavior {
            greeting: g.as_bytes().to_vec(),
            proxy: false,
            forward: None,
            silent: false,
        }
    }
}

/// What a fake server saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub headers: Vec<Option<ProxiedAddress>>,
    /// Lines received after the greeting, per connection, in order.
    pub lines: Vec<Vec<String>>,
}

pub struct FakeServer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    tasks: JoinSet<()>,
}

impl FakeServer {
    pub async fn spawn(behavior: Behavior) -> Self {
        Self::spawn_on("127.0.0.1:0".parse().unwrap(), behavior).await
    }

    /// Binds `addr` (a port of a previously killed server, to bring it back).
    pub async fn spawn_on(addr: SocketAddr, behavior: Behavior) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind fake server");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut tasks = JoinSet::new();
        let seen2 = Arc::clone(&seen);
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                conns.spawn(serve(stream, behavior.clone(), Arc::clone(&seen2)));
            }
        });
        FakeServer { addr, seen, tasks }
    }

    /// The server label as the pool spells it.
    pub fn label(&self) -> String {
        self.addr.to_string()
    }

    pub fn server_addr(&self) -> ServerAddr {
        ServerAddr::Tcp {
            host: self.addr.ip().to_string(),
            port: self.addr.port(),
        }
    }

    /// Drops the listener and every open connection.
    pub fn kill(mut self) -> SocketAddr {
        self.tasks.abort_all();
        self.addr
    }
}

pub async fn serve<S>(stream: S, behavior: Behavior, seen: Arc<Mutex<Seen>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = BufReader::new(stream);
    if behavior.proxy {
        let mut buf = Vec::new();
        let header = loop {
            match ProxyHeader::parse(&buf, ParseConfig::default()) {
                Ok((h, _len)) => break h.proxied_address().cloned(),
                Err(proxy_header::Error::BufferTooShort) => {
                    let mut byte = [0u8; 1];
                    // Byte by byte so nothing after the header is consumed here.
                    if stream.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    buf.push(byte[0]);
                }
                Err(e) => panic!("bad PROXY header {buf:?}: {e}"),
            }
        };
        seen.lock().unwrap().headers.push(header);
    }
    if behavior.silent {
        let _ = stream.read_to_end(&mut Vec::new()).await;
        return;
    }
    if stream.write_all(&behavior.greeting).await.is_err() {
        return;
    }
    let conn = {
        let mut s = seen.lock().unwrap();
        s.lines.push(Vec::new());
        s.lines.len() - 1
    };
    let mut first = true;
    loop {
        let mut line = String::new();
        match stream.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        seen.lock().unwrap().lines[conn].push(line.trim_end().to_owned());
        let reply: Vec<u8> = match (first, behavior.forward) {
            (true, Some(Protocol::Imap)) => {
                b"* ID (\"name\" \"fake\")\r\npostern-id OK ID completed.\r\n".to_vec()
            }
            (true, Some(Protocol::Pop3)) => b"+OK Updated\r\n".to_vec(),
            (true, Some(Protocol::Smtp)) => {
                b"220-fresh.test ESMTP\r\n220 fresh greeting\r\n".to_vec()
            }
            _ => format!("echo {}\r\n", line.trim_end()).into_bytes(),
        };
        first = false;
        if stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

pub fn health(interval_ms: u64) -> HealthConfig {
    HealthConfig {
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(300),
        fall: 2,
        rise: 2,
    }
}

pub fn backend(name: &str, servers: Vec<ServerAddr>, balance: Balance) -> BackendConfig {
    BackendConfig {
        name: name.to_owned(),
        protocol: Protocol::Imap,
        target: BackendTarget::Servers(servers),
        balance,
        forward_client: ForwardClient::None,
        connect_timeout: Duration::from_millis(500),
        health: health(5000),
        max_connections_per_server: 0,
        warm: 0,
        tls: None,
        resolve_interval: Duration::from_secs(30),
        route: Route::Connection,
    }
}

pub fn pool(config: &BackendConfig, protocol: Protocol) -> (Arc<Pool>, Metrics) {
    let metrics = Metrics::new("test");
    (Pool::new(config, protocol, &metrics).unwrap(), metrics)
}

pub fn client(peer: &str) -> ClientInfo {
    ClientInfo {
        peer: peer.parse().unwrap(),
        local: "127.0.0.1:993".parse().unwrap(),
    }
}

/// Reads from `stream` until `buf` contains `needle` (5 s deadline).
pub async fn read_until_contains<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    needle: &[u8],
) {
    let fut = async {
        while !buf.windows(needle.len()).any(|w| w == needle) {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "EOF before {:?}; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "timeout waiting for {:?}; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(buf)
            )
        });
}

/// Times `n` sequential `connect()` calls (each connection dropped at once), one every `pace`.
pub async fn sample(pool: &postern_backend_pool::Pool, n: usize, pace: Duration) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let start = tokio::time::Instant::now();
        let conn = pool
            .connect(client(&format!("192.0.2.1:{}", 1000 + i)))
            .await
            .unwrap();
        times.push(start.elapsed());
        drop(conn);
        tokio::time::sleep(pace).await; // client arrival rate
    }
    times
}

pub fn summary(times: &[Duration]) -> String {
    let mut t = times.to_vec();
    t.sort();
    let p = |q: f64| t[((t.len() as f64 - 1.0) * q) as usize];
    format!(
        "n={} median={:?} p90={:?} p99={:?} max={:?}",
        t.len(),
        p(0.5),
        p(0.9),
        p(0.99),
        p(1.0)
    )
}
