#![allow(clippy::unwrap_used)] // test helpers: a failed setup should panic loudly

//! Workers over real loopback sockets: the connection limit, closing the listeners, and
//! the order of goodbyes in a drain.

use std::future::Future;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_listener::{bind_reuseport, Connection, Handler, WorkerListener, Workers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Greets, then waits for EOF or the drain's goodbye; records goodbye order by conn id.
struct Hold {
    goodbyes: Arc<Mutex<Vec<u64>>>,
}

impl Handler for Hold {
    fn handle(self: Arc<Self>, conn: Connection) -> Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(async move {
            let Connection {
                mut stream,
                goodbye,
                id,
                ..
            } = conn;
            let _ = stream.write_all(format!("hello {id}\n").as_bytes()).await;
            let mut buf = [0u8; 64];
            tokio::select! {
                _ = stream.read(&mut buf) => {}
                () = goodbye.requested() => {
                    self.goodbyes.lock().unwrap().push(id);
                    let _ = stream.write_all(b"bye\n").await;
                }
            }
        })
    }
}

fn start(
    max: usize,
    workers: usize,
) -> (
    Workers,
    SocketAddr,
    postern_metrics::Metrics,
    Arc<Mutex<Vec<u64>>>,
) {
    let metrics = postern_metrics::Metrics::new("test");
    let sockets = bind_reuseport("t", "127.0.0.1:0".parse().unwrap(), workers).unwrap();
    let addr = sockets[0].local_addr().unwrap();
    let goodbyes = Arc::new(Mutex::new(Vec::new()));
    let l = WorkerListener {
        name: "t".into(),
        sockets,
        handler: Arc::new(Hold {
            goodbyes: goodbyes.clone(),
        }),
        metrics: metrics.listener("t"),
    };
    (
        Workers::spawn(workers, vec![l], max).unwrap(),
        addr,
        metrics,
        goodbyes,
    )
}

fn connect_and_greet(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"hello"), "{:?}", &buf[..n]);
    s
}

fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    assert!(
        postern_testkit::wait_for_blocking(Duration::from_secs(5), cond),
        "timed out waiting for {what}"
    );
}

#[test]
fn over_the_limit_is_closed_at_once_and_counted() {
    let (workers, addr, metrics, _) = start(2, 2);
    let _a = connect_and_greet(addr);
    let _b = connect_and_greet(addr);
    wait_for("two active sessions", || workers.active() == 2);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 8];
    match c.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected a close, got {other:?}"),
    }
    assert_eq!(metrics.listener("t").rejected_limit.get(), 1);
    assert_eq!(metrics.listener("t").accepted.get(), 3);
    drop(_a);
    wait_for("a slot to free up", || workers.active() == 1);
    let _d = connect_and_greet(addr);
    workers.shutdown();
}

#[test]
fn stop_accepting_makes_the_kernel_refuse() {
    let (workers, addr, _, _) = start(100, 2);
    let mut open = connect_and_greet(addr);
    workers.stop_accepting();
    wait_for(
        "connections to be refused",
        || matches!(TcpStream::connect(addr), Err(e) if e.kind() == ErrorKind::ConnectionRefused),
    );
    // The session accepted before keeps working.
    open.write_all(b"x").unwrap();
    wait_for("the session to end", || workers.active() == 0);
    workers.shutdown();
}

#[test]
fn goodbyes_go_oldest_first_and_are_spread() {
    let (workers, addr, _, goodbyes) = start(100, 1);
    let mut clients: Vec<TcpStream> = (0..5).map(|_| connect_and_greet(addr)).collect();
    wait_for("five sessions", || workers.active() == 5);
    let started = Instant::now();
    workers.request_goodbyes(Duration::from_millis(400));
    for c in &mut clients {
        let mut buf = [0u8; 8];
        let n = c.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"bye\n");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "goodbyes not spread: all within {took:?}"
    );
    let order = goodbyes.lock().unwrap().clone();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "oldest (lowest id) first");
    workers.shutdown();
}
