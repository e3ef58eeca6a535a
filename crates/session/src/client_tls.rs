//! The client's TLS connection, on rustls' unbuffered API.
//!
//! Why not `tokio_rustls`: its buffered `ServerConnection` keeps a 4 KiB receive buffer for
//! the whole life of a connection once anything was read, and that was the largest single
//! item of an idle IMAP IDLE session (benches/RESULTS.md). Here rustls works on buffers the
//! caller lends it: ciphertext is read straight into a per-worker-thread buffer
//! ([`CIPHER_BUF`]) and decrypted there, application data is encrypted into it and written
//! from it. A session owns bytes only while something is in flight:
//! - `rx`: the start of a record that has not fully arrived (at most one record),
//! - `plain`: decrypted bytes the reader's buffer could not take (at most one read's worth),
//! - `tx`: ciphertext the socket did not take (at most one write's worth, and the small
//!   handshake messages rustls emits after the handshake: tickets, key updates, alerts).
//!
//! Each is freed as soon as it drains, so a quiet session holds none of them. Reading stops
//! while `plain` holds bytes and writing waits while `tx` does, so none grows without bound.
//!
//! Behaviour matches what the session had with `tokio_rustls` (the relay and its tests rely
//! on it): a TCP EOF without close_notify reads as `UnexpectedEof`, a close_notify as EOF;
//! errors are `InvalidData` wrapping the `rustls::Error`; the handshake sends rustls' alert
//! before it fails; `poll_shutdown` sends close_notify, then shuts the TCP write half.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::{ClientHello, ResolvesServerCert, UnbufferedServerConnection};
use rustls::sign::CertifiedKey;
use rustls::unbuffered::{
    AppDataRecord, ConnectionState, EncodeError, EncryptError, InsufficientSizeError,
    ReadEarlyData, ReadTraffic,
};
use rustls::{ProtocolVersion, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The largest TLS record on the wire: 16 KiB of plaintext plus header, padding and tag
/// (TLS 1.2's explicit nonce included).
const MAX_RECORD: usize = 16 * 1024 + 2048 + 5;

/// Plaintext encrypted per `poll_write`: four full records, so a 64 KiB relay read leaves in
/// one socket write.
const MAX_PLAIN_PER_WRITE: usize = 64 * 1024;

/// Ciphertext read per `poll_read` at most (plus an unfinished record left from before).
const MAX_READ: usize = 64 * 1024;

/// Room for one read (or one write's records) plus an unfinished record.
const CIPHER_LEN: usize = MAX_READ + MAX_RECORD + 1024;

/// The handshake's first buffer: a ClientHello, even with post-quantum key shares, fits.
const HANDSHAKE_BUFFER: usize = 4096;

/// The handshake may buffer at most this much ciphertext (a ClientHello with post-quantum
/// key shares is a few KiB; no client certificates are asked for).
const MAX_HANDSHAKE_BUFFER: usize = 64 * 1024;

thread_local! {
    /// Per worker thread, lent to one connection at a time for the length of a poll.
    static CIPHER_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; CIPHER_LEN].into_boxed_slice());
    /// What the certificate resolver saw of the ClientHello being handled on this thread
    /// (see [`SniRecorder`]).
    static RESOLVED_SNI: RefCell<Option<Option<Box<str>>>> = const { RefCell::new(None) };
}

/// Wraps a server configuration so the handshake learns the client's SNI: the unbuffered
/// connection does not expose it (the buffered one does, `ServerConnection::server_name`).
/// rustls asks the resolver for every handshake, resumed ones too, synchronously inside
/// `process_tls_records`, so the name it was asked for is read back right after that call on
/// the same thread.
pub(crate) fn recording_sni(config: Arc<ServerConfig>) -> Arc<ServerConfig> {
    let mut config = (*config).clone();
    config.cert_resolver = Arc::new(SniRecorder(config.cert_resolver.clone()));
    Arc::new(config)
}

#[derive(Debug)]
struct SniRecorder(Arc<dyn ResolvesServerCert>);

impl ResolvesServerCert for SniRecorder {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(Box::from);
        RESOLVED_SNI.with(|cell| *cell.borrow_mut() = Some(sni));
        self.0.resolve(hello)
    }

    fn only_raw_public_keys(&self) -> bool {
        self.0.only_raw_public_keys()
    }
}

/// A TLS server connection to one client over `IO` (a `TcpStream` in postern).
pub(crate) struct ClientTls<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    /// The start of a record not fully received (rustls' discard rule: what it did not
    /// consume is handed to it again, in order, before new bytes).
    rx: Vec<u8>,
    /// Decrypted bytes the reader has not taken yet; `plain_pos` of them are taken.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Ciphertext to write before anything else; `tx_pos` of it is written.
    tx: Vec<u8>,
    tx_pos: usize,
    /// The client's close_notify arrived (or the connection failed for reading).
    read_closed: bool,
    /// close_notify is queued (in `tx` or already written).
    close_sent: bool,
    sni: Option<Box<str>>,
}

impl<IO> fmt::Debug for ClientTls<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("rx", &self.rx.len())
            .field("plain", &(self.plain.len() - self.plain_pos))
            .field("tx", &(self.tx.len() - self.tx_pos))
            .field("read_closed", &self.read_closed)
            .field("close_sent", &self.close_sent)
            .finish_non_exhaustive()
    }
}

/// Where a run of rustls over the received bytes stopped.
#[derive(Debug, PartialEq, Eq)]
enum Reached {
    /// Every complete record is processed; more input is needed to go on.
    NeedInput,
    /// As `NeedInput`, and application data may be written.
    Writable,
    /// The peer's close_notify was processed (reported once).
    PeerClosed,
    /// Both close_notify alerts are done.
    Closed,
}

/// Runs rustls over `buf[..*used]` until it needs more input, discarding what it consumed.
/// Handshake messages it emits go to `tx`; decrypted application data to `out` while it has
/// room, the rest to `plain`.
fn pump(
    conn: &mut UnbufferedServerConnection,
    buf: &mut [u8],
    used: &mut usize,
    tx: &mut Vec<u8>,
    mut out: Option<&mut ReadBuf<'_>>,
    plain: &mut Vec<u8>,
) -> Result<Reached, rustls::Error> {
    loop {
        let status = conn.process_tls_records(&mut buf[..*used]);
        let discard = status.discard;
        let reached = match status.state {
            Err(e) => Err(e),
            Ok(ConnectionState::ReadTraffic(mut traffic)) => read_records(
                &mut traffic,
                ReadTraffic::next_record,
                out.as_deref_mut(),
                plain,
            ),
            // postern's configurations accept no early data (max_early_data_size 0); should a
            // client send any anyway, it is read like the rest of the stream.
            Ok(ConnectionState::ReadEarlyData(mut early)) => read_records(
                &mut early,
                ReadEarlyData::next_record,
                out.as_deref_mut(),
                plain,
            ),
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                encode_into(tx, |dst| encode.encode(dst));
                Ok(None)
            }
            // The bytes are in `tx`, which is written before any later ciphertext.
            Ok(ConnectionState::TransmitTlsData(transmit)) => {
                transmit.done();
                Ok(None)
            }
            Ok(ConnectionState::BlockedHandshake) => Ok(Some(Reached::NeedInput)),
            Ok(ConnectionState::WriteTraffic(_)) => Ok(Some(Reached::Writable)),
            Ok(ConnectionState::PeerClosed) => Ok(Some(Reached::PeerClosed)),
            Ok(ConnectionState::Closed) => Ok(Some(Reached::Closed)),
            Ok(_) => Err(rustls::Error::General(
                "unexpected state of the TLS connection".into(),
            )),
        };
        buf.copy_within(discard..*used, 0);
        *used -= discard;
        if let Some(reached) = reached? {
            return Ok(reached);
        }
    }
}

/// Delivers every record `next` yields from `state` (application or early data alike).
fn read_records<S>(
    state: &mut S,
    next: for<'s> fn(&'s mut S) -> Option<Result<AppDataRecord<'s>, rustls::Error>>,
    mut out: Option<&mut ReadBuf<'_>>,
    plain: &mut Vec<u8>,
) -> Result<Option<Reached>, rustls::Error> {
    while let Some(record) = next(state) {
        deliver(record?.payload, out.as_deref_mut(), plain);
    }
    Ok(None)
}

fn deliver(payload: &[u8], out: Option<&mut ReadBuf<'_>>, plain: &mut Vec<u8>) {
    let taken = match out {
        Some(out) => {
            let n = payload.len().min(out.remaining());
            out.put_slice(&payload[..n]);
            n
        }
        None => 0,
    };
    plain.extend_from_slice(&payload[taken..]);
}

/// Appends what `encode` writes to `tx`, growing it to the size rustls asks for.
fn encode_into(tx: &mut Vec<u8>, mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>) {
    let start = tx.len();
    let mut room = 1024;
    loop {
        tx.resize(start + room, 0);
        match encode(&mut tx[start..]) {
            Ok(n) => {
                tx.truncate(start + n);
                return;
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                room = required_size;
            }
            Err(_) => {
                tx.truncate(start);
                return;
            }
        }
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// After a failure, rustls has queued the alert that describes it: take it into `tx`.
fn take_alert(conn: &mut UnbufferedServerConnection, tx: &mut Vec<u8>) {
    // Bounded: each round takes one queued message or stops.
    for _ in 0..8 {
        match conn.process_tls_records(&mut []).state {
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                encode_into(tx, |dst| encode.encode(dst));
            }
            Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
            _ => return,
        }
    }
}

/// Runs the server side of a TLS handshake on `io`. The caller bounds it in time.
pub(crate) async fn accept<IO>(io: IO, config: Arc<ServerConfig>) -> io::Result<ClientTls<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut io = io;
    let mut conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    // The handshake's own buffer lives only as long as this (boxed, short) future, but a
    // reconnect storm has thousands of handshakes in flight at once: start at what a
    // ClientHello needs (as rustls' buffered API does) and grow only for a larger one.
    let mut buf = vec![0u8; HANDSHAKE_BUFFER];
    let mut used = 0;
    let mut tx = Vec::new();
    let mut plain = Vec::new();
    let mut sni = None;
    loop {
        RESOLVED_SNI.with(|cell| cell.borrow_mut().take());
        let reached = pump(&mut conn, &mut buf, &mut used, &mut tx, None, &mut plain);
        if let Some(seen) = RESOLVED_SNI.with(|cell| cell.borrow_mut().take()) {
            sni = seen;
        }
        let reached = match reached {
            Ok(reached) => reached,
            Err(e) => {
                take_alert(&mut conn, &mut tx);
                // A last word for the client; the handshake's failure is what counts.
                let _ = io.write_all(&tx).await;
                return Err(tls_error(e));
            }
        };
        if !tx.is_empty() {
            io.write_all(&tx).await?;
            io.flush().await?;
            tx.clear();
        }
        match reached {
            Reached::Writable if !conn.is_handshaking() => break,
            Reached::Writable | Reached::NeedInput => {
                if used == buf.len() {
                    if buf.len() >= MAX_HANDSHAKE_BUFFER {
                        return Err(tls_error(rustls::Error::General(
                            "handshake messages too large".into(),
                        )));
                    }
                    buf.resize(buf.len() * 2, 0);
                }
                let n = io.read(&mut buf[used..]).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "tls handshake eof",
                    ));
                }
                used += n;
            }
            Reached::PeerClosed | Reached::Closed => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tls handshake eof",
                ));
            }
        }
    }
    let rx = buf[..used].to_vec();
    Ok(ClientTls {
        io,
        conn,
        rx,
        plain,
        plain_pos: 0,
        tx: Vec::new(),
        tx_pos: 0,
        read_closed: false,
        close_sent: false,
        sni,
    })
}

impl<IO> ClientTls<IO> {
    /// The name the client asked for (SNI), if it sent one.
    pub(crate) fn server_name(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// The negotiated TLS version.
    pub(crate) fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// The connection underneath.
    pub(crate) fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Bytes this connection holds on the heap beyond rustls' own state (0 while quiet).
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        self.rx.capacity() + self.plain.capacity() + self.tx.capacity()
    }
}

impl<IO: AsyncWrite + Unpin> ClientTls<IO> {
    /// Writes `tx` out; `Ready(Ok)` once it is empty (and its memory given back).
    fn poll_drain_tx(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tx_pos < self.tx.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.tx[self.tx_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.tx_pos += n;
        }
        if self.tx.capacity() > 0 {
            self.tx = Vec::new();
            self.tx_pos = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Brings rustls to where application data may be written: processes what `rx` holds
    /// and queues what it emits (post-handshake messages) in `tx`.
    fn make_writable(&mut self) -> io::Result<()> {
        let mut used = self.rx.len();
        let reached = pump(
            &mut self.conn,
            &mut self.rx,
            &mut used,
            &mut self.tx,
            None,
            &mut self.plain,
        );
        self.rx.truncate(used);
        match reached {
            Ok(Reached::Writable) => Ok(()),
            Ok(Reached::PeerClosed) => {
                self.read_closed = true;
                self.make_writable()
            }
            Ok(Reached::NeedInput | Reached::Closed) => Err(io::ErrorKind::BrokenPipe.into()),
            Err(e) => {
                take_alert(&mut self.conn, &mut self.tx);
                Err(tls_error(e))
            }
        }
    }

    /// Writes what is in `cipher[..len]`, keeping what the socket does not take in `tx`.
    fn send(&mut self, cx: &mut Context<'_>, cipher: &[u8]) -> io::Result<()> {
        let mut off = 0;
        while off < cipher.len() {
            match Pin::new(&mut self.io).poll_write(cx, &cipher[off..]) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => off += n,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        self.tx.extend_from_slice(&cipher[off..]);
        Ok(())
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientTls<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.plain_pos < this.plain.len() {
            let n = (this.plain.len() - this.plain_pos).min(out.remaining());
            out.put_slice(&this.plain[this.plain_pos..this.plain_pos + n]);
            this.plain_pos += n;
            if this.plain_pos == this.plain.len() {
                this.plain = Vec::new();
                this.plain_pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if this.read_closed {
            return Poll::Ready(Ok(()));
        }
        // Messages rustls emitted while reading (a key update's answer) go out first; a
        // socket that pushes back keeps them in `tx` for the next write or flush.
        if this.tx_pos < this.tx.len() {
            if let Poll::Ready(Err(e)) = this.poll_drain_tx(cx) {
                return Poll::Ready(Err(e));
            }
        }
        let before = out.filled().len();
        let step = CIPHER_BUF.with(|cell| {
            let mut guard = cell.borrow_mut();
            let buf: &mut [u8] = &mut guard;
            let mut used = this.rx.len();
            buf[..used].copy_from_slice(&this.rx);
            let result = loop {
                let reached = pump(
                    &mut this.conn,
                    buf,
                    &mut used,
                    &mut this.tx,
                    Some(out),
                    &mut this.plain,
                );
                match reached {
                    Err(e) => {
                        this.read_closed = true;
                        take_alert(&mut this.conn, &mut this.tx);
                        break Poll::Ready(Err(tls_error(e)));
                    }
                    Ok(Reached::PeerClosed | Reached::Closed) => {
                        this.read_closed = true;
                        break Poll::Ready(Ok(()));
                    }
                    Ok(Reached::NeedInput | Reached::Writable) => {}
                }
                if out.filled().len() > before || !this.plain.is_empty() {
                    break Poll::Ready(Ok(()));
                }
                // Read no more than the reader can take once decrypted (plaintext is never
                // longer than its ciphertext), so `plain` stays empty in the relay.
                let room = out
                    .remaining()
                    .saturating_sub(used)
                    .clamp(MAX_RECORD, MAX_READ)
                    .min(buf.len() - used);
                let mut rb = ReadBuf::new(&mut buf[used..used + room]);
                match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                    Poll::Pending => break Poll::Pending,
                    Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                        // What tokio-rustls reports too: the relay takes it as the client's
                        // close (a truncation attack cannot make a cut response look whole:
                        // the reader sees an error, not EOF).
                        break Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "peer closed connection without sending TLS close_notify",
                        )));
                    }
                    Poll::Ready(Ok(())) => used += rb.filled().len(),
                }
            };
            // A fresh, exact allocation: `rx` must not keep a large capacity between reads.
            this.rx = buf[..used].to_vec();
            result
        });
        if this.tx_pos < this.tx.len() {
            let _ = this.poll_drain_tx(cx);
        }
        step
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientTls<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain_tx(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        this.make_writable()?;
        if this.tx_pos < this.tx.len() {
            // Post-handshake messages go before the data.
            ready!(this.poll_drain_tx(cx))?;
        }
        CIPHER_BUF.with(|cell| {
            let mut guard = cell.borrow_mut();
            let cipher: &mut [u8] = &mut guard;
            let mut take = data.len().min(MAX_PLAIN_PER_WRITE);
            loop {
                let status = this.conn.process_tls_records(&mut this.rx);
                // `make_writable` processed every complete record of `rx`: nothing is
                // consumed here (applied anyway, so the discard rule holds whatever rustls does).
                let discard = status.discard;
                let encrypted = match status.state {
                    Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                        Some(traffic.encrypt(&data[..take], cipher))
                    }
                    _ => None,
                };
                this.rx.drain(..discard);
                match encrypted {
                    None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                    Some(Ok(n)) => {
                        this.send(cx, &cipher[..n])?;
                        return Poll::Ready(Ok(take));
                    }
                    Some(Err(EncryptError::InsufficientSize(_))) if take > 1 => take /= 2,
                    Some(Err(e)) => {
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)))
                    }
                }
            }
        })
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain_tx(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain_tx(cx))?;
        if !this.close_sent {
            this.close_sent = true;
            if this.make_writable().is_ok() {
                let mut alert = [0u8; 64];
                let status = this.conn.process_tls_records(&mut this.rx);
                let discard = status.discard;
                if let Ok(ConnectionState::WriteTraffic(mut traffic)) = status.state {
                    if let Ok(n) = traffic.queue_close_notify(&mut alert) {
                        this.tx.extend_from_slice(&alert[..n]);
                    }
                }
                this.rx.drain(..discard);
            }
            ready!(this.poll_drain_tx(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
