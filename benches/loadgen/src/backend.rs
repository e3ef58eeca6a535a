//! The synthetic IMAP backend: as cheap per session as a server can be (one task, a 512-byte
//! line buffer), answering just what an idle mail client says: greeting, CAPABILITY, ID,
//! LOGIN, SELECT, IDLE/DONE, NOOP, LOGOUT. Everything else tagged gets `OK`.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::BenchError;

const GREETING: &[u8] = b"* OK [CAPABILITY IMAP4rev1 IDLE LITERAL+ ID] synthetic backend ready\r\n";

/// Binds every address in `listen` (port 0 picks one), prints `LISTEN <addr>` for each on
/// stdout, then serves until killed.
pub(crate) async fn run(listen: &[SocketAddr]) -> Result<(), BenchError> {
    let mut listeners = Vec::new();
    for addr in listen {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(*addr),
            socket2::Type::STREAM,
            None,
        )
        .map_err(|e| BenchError::io(format!("socket for {addr}"), e))?;
        socket
            .set_reuse_address(true)
            .map_err(|e| BenchError::io("SO_REUSEADDR", e))?;
        socket
            .bind(&(*addr).into())
            .map_err(|e| BenchError::io(format!("bind {addr}"), e))?;
        // A reconnect storm brings every backend connection back at once.
        socket
            .listen(4096)
            .map_err(|e| BenchError::io(format!("listen {addr}"), e))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| BenchError::io("O_NONBLOCK", e))?;
        let listener = TcpListener::from_std(socket.into())
            .map_err(|e| BenchError::io(format!("register {addr}"), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| BenchError::io("local_addr", e))?;
        println!("LISTEN {local}");
        listeners.push(listener);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        tasks.spawn(accept_loop(listener));
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| BenchError::Setup(format!("backend accept loop ended: {e}")))??;
    }
    Ok(())
}

async fn accept_loop(listener: TcpListener) -> Result<(), BenchError> {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(async move {
                    // A session's end (the proxy closed, reset) is not the bench's failure.
                    let _ = session(stream).await;
                });
            }
            // EMFILE and friends: the bench sized the processes so this does not happen;
            // if it does, back off instead of spinning.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

async fn session(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::with_capacity(512, read);
    write.write_all(GREETING).await?;
    let mut line = Vec::with_capacity(128);
    let mut idle_tag: Vec<u8> = b"*".to_vec();
    loop {
        line.clear();
        if read.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let text = line.trim_ascii();
        let mut words = text.splitn(3, |b| *b == b' ');
        let tag = words.next().unwrap_or_default();
        let command = words.next().unwrap_or_default().to_ascii_uppercase();
        let reply: Vec<u8> = match (tag.to_ascii_uppercase().as_slice(), command.as_slice()) {
            (b"DONE", _) => [&idle_tag[..], b" OK IDLE terminated\r\n"].concat(),
            (_, b"") => b"* BAD missing command\r\n".to_vec(),
            (_, b"CAPABILITY") => [
                b"* CAPABILITY IMAP4rev1 IDLE LITERAL+ ID\r\n",
                tag,
                b" OK done\r\n",
            ]
            .concat(),
            (_, b"LOGIN") => [tag, b" OK [CAPABILITY IMAP4rev1 IDLE] logged in\r\n"].concat(),
            (_, b"IDLE") => {
                idle_tag = tag.to_vec();
                b"+ idling\r\n".to_vec()
            }
            (_, b"NOOP") => [tag, b" OK NOOP completed\r\n"].concat(),
            (_, b"LOGOUT") => {
                write
                    .write_all(&[b"* BYE logging out\r\n", tag, b" OK done\r\n"].concat())
                    .await?;
                return Ok(());
            }
            _ => [tag, b" OK done\r\n"].concat(),
        };
        write.write_all(&reply).await?;
    }
}
