//! The bidirectional relay between a client and its backend.
//!
//! Sized for hundreds of thousands of quiet IMAP IDLE sessions: a session owns no copy
//! buffer. Each read goes into a per-worker-thread scratch buffer and is written straight
//! on; only when the writer cannot take everything (back-pressure) are the remaining bytes
//! copied into a session-owned `Vec`, which is freed again as soon as it drains. Reading
//! stops while such bytes are pending, so no peer can make postern buffer without bound.
//!
//! Half-close: a side's EOF is passed on as a shutdown of the other side's write half (TLS
//! close_notify + FIN toward the client, FIN toward the backend), and the opposite
//! direction keeps flowing until it ends too.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use postern_metrics::IntCounter;
use postern_proto::capfilter::CapabilityFilter;
use postern_proto::imap_state::{Goodbye, ImapState};
use postern_proto::watch::ClientWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Size of the per-worker scratch buffer. 64 KiB rather than one TLS record (16 KiB): a
/// backend read then fills four records, which rustls writes out together; measured A/B
/// (benches/RESULTS.md) it cut CPU per GiB backend→client by about 25 %. It costs 64 KiB per
/// worker thread, not per session; a session under back-pressure may hold up to this much.
const SCRATCH: usize = 64 * 1024;

/// Reads per direction per wake-up before yielding, so one busy session cannot starve
/// the others on its worker.
const MAX_READS_PER_POLL: usize = 16;

/// After one direction has ended, the other gets at most this long without traffic.
const LINGER: Duration = Duration::from_secs(30);

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// How the relay ended.
#[derive(Debug)]
pub(crate) enum RelayEnd {
    /// Both directions reached EOF.
    Closed,
    /// Reading from or writing to the client failed.
    ClientError(io::Error),
    /// Reading from or writing to the backend failed.
    BackendError(io::Error),
    /// No byte either way for the idle timeout.
    IdleTimeout,
    /// The drain asked the session to leave, and it did.
    Shutdown,
}

/// Optional inspection of a session's bytes. Boxed: a session holds 8 bytes for each one
/// that is off (the watch and the capability filter end at login).
pub(crate) struct Filters {
    /// Client→backend command watch (user capture, rule T12) until authentication.
    pub(crate) watch: Option<Box<ClientWatch>>,
    /// Backend→client capability filter after a STARTTLS upgrade.
    pub(crate) caps: Option<Box<CapabilityFilter>>,
    /// IMAP sessions: where a drain goodbye may go (response boundaries, literals, COMPRESS).
    pub(crate) imap: Option<Box<ImapState>>,
}

/// Counters that move with every read.
pub(crate) struct Counters {
    pub(crate) up: IntCounter,
    pub(crate) down: IntCounter,
}

/// Byte totals of one session, for its log line.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Totals {
    pub(crate) up: u64,
    pub(crate) down: u64,
}

/// One direction's state. Holds bytes only while the writer pushes back.
#[derive(Default)]
struct Dir {
    pending: Vec<u8>,
    pos: usize,
    need_flush: bool,
    eof: bool,
    done: bool,
    bytes: u64,
    /// The last byte handed to the writer was a line end (IMAP/SMTP safe point).
    at_line_start: bool,
}

enum Failure {
    Read(io::Error),
    Write(io::Error),
}

/// What the relay needs besides the two streams.
pub(crate) struct RelayPlan<'a, L> {
    /// Written to the client first (the backend greeting of an implicit-TLS session).
    pub(crate) to_client: Vec<u8>,
    /// The inspections active at the start.
    pub(crate) filters: Filters,
    /// The relay ends after this long without a byte either way.
    pub(crate) idle_timeout: Duration,
    /// Resolves when the drain asks the session to leave.
    pub(crate) leave: L,
    /// Sent to the client at the first safe point after `leave` resolves (empty: close
    /// without a word).
    pub(crate) goodbye: &'static [u8],
    /// The listener's byte counters.
    pub(crate) counters: &'a Counters,
}

/// What the relay hands back for the session record.
#[derive(Debug)]
pub(crate) struct Relayed {
    /// How it ended.
    pub(crate) end: RelayEnd,
    /// Bytes relayed each way, the backend greeting included.
    pub(crate) totals: Totals,
    /// The login name the command watch saw, if any.
    pub(crate) user: Option<String>,
}

/// Relays until both sides are done, an error, the idle timeout or a completed goodbye.
pub(crate) async fn relay<C, B, L>(
    client: &mut C,
    backend: &mut B,
    plan: RelayPlan<'_, L>,
) -> Relayed
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    L: Future<Output = ()>,
{
    let RelayPlan {
        to_client,
        mut filters,
        idle_timeout,
        leave,
        goodbye,
        counters,
    } = plan;
    let mut user = None;
    let mut up = Dir {
        at_line_start: true,
        ..Dir::default()
    };
    let mut down = Dir {
        at_line_start: to_client.is_empty() || to_client.ends_with(b"\n"),
        ..Dir::default()
    };
    // The greeting handed over by the pool is relayed backend data: it counts.
    down.bytes = to_client.len() as u64;
    counters.down.inc_by(down.bytes);
    down.pending = to_client;
    let mut last_activity = Instant::now();
    let mut idle = std::pin::pin!(tokio::time::sleep(idle_timeout));
    // Bytes already added to the metrics; the rest is added when the relay ends, so that the
    // last poll's bytes are counted even when it is also the one that finishes the session.
    let mut counted = (up.bytes, down.bytes);
    let mut leave = std::pin::pin!(leave);
    let mut leaving = false;
    let mut goodbye_queued = false;

    let end = poll_fn(|cx| {
        if !up.done {
            match poll_up(
                cx,
                client,
                backend,
                &mut up,
                &mut down.pending,
                &mut filters,
                &mut user,
            ) {
                Poll::Ready(Ok(())) => up.done = true,
                Poll::Ready(Err(Failure::Read(e))) if ends_quietly(&e, &up, &down) => {
                    up.done = true
                }
                Poll::Ready(Err(Failure::Read(e))) => return Poll::Ready(RelayEnd::ClientError(e)),
                Poll::Ready(Err(Failure::Write(e))) => {
                    return Poll::Ready(RelayEnd::BackendError(e))
                }
                Poll::Pending => {}
            }
        }
        // Authentication confirmed: the capability filter's job (pre-login capability lists)
        // is over too; after login the stream may turn binary (COMPRESS), so stop holding lines.
        if filters.watch.is_none() {
            if let Some(mut caps) = filters.caps.take() {
                caps.flush(&mut down.pending);
            }
        }
        if !leaving && !goodbye_queued && leave.as_mut().poll(cx).is_ready() {
            leaving = true;
        }
        // The goodbye goes out at a safe point: nothing half-written toward the client. A
        // read below may create one, so check again after it.
        for _ in 0..2 {
            if leaving && down.done {
                return Poll::Ready(RelayEnd::Shutdown);
            }
            let safe = match filters.imap.as_deref().map(ImapState::goodbye) {
                Some(Goodbye::Now) => down.pending.is_empty(),
                Some(Goodbye::Wait) => false,
                // A compressed (or unparseable) IMAP stream: no readable goodbye is possible,
                // so the session just closes at its turn.
                Some(Goodbye::Close) if leaving => return Poll::Ready(RelayEnd::Shutdown),
                Some(Goodbye::Close) => false,
                None => down.pending.is_empty() && down.at_line_start,
            };
            if leaving && !goodbye_queued && safe {
                if goodbye.is_empty() {
                    return Poll::Ready(RelayEnd::Shutdown);
                }
                down.pending.extend_from_slice(goodbye);
                down.eof = true; // stop reading the backend; shut the client down after the goodbye
                goodbye_queued = true;
            }
            if !down.done {
                match poll_down(cx, backend, client, &mut down, &mut filters, &mut user) {
                    Poll::Ready(Ok(())) => down.done = true,
                    // A backend that resets instead of closing has still closed: Dovecot's
                    // submission service resets after its `221` to QUIT. Everything read before
                    // the reset was relayed; pass the close on. The client is shut down on the
                    // next round, which must come even when this was the last pass here.
                    Poll::Ready(Err(Failure::Read(e)))
                        if e.kind() == io::ErrorKind::ConnectionReset =>
                    {
                        down.eof = true;
                        cx.waker().wake_by_ref();
                    }
                    Poll::Ready(Err(Failure::Read(e))) => {
                        return Poll::Ready(RelayEnd::BackendError(e))
                    }
                    Poll::Ready(Err(Failure::Write(e))) if ends_quietly(&e, &up, &down) => {
                        down.done = true
                    }
                    Poll::Ready(Err(Failure::Write(e))) => {
                        return Poll::Ready(RelayEnd::ClientError(e))
                    }
                    Poll::Pending => {}
                }
            }
        }
        if goodbye_queued && down.done {
            return Poll::Ready(RelayEnd::Shutdown);
        }
        if up.done && down.done {
            return Poll::Ready(RelayEnd::Closed);
        }
        if (up.bytes, down.bytes) != counted {
            counters.up.inc_by(up.bytes - counted.0);
            counters.down.inc_by(down.bytes - counted.1);
            counted = (up.bytes, down.bytes);
            last_activity = Instant::now();
        }
        let limit = if up.done || down.done {
            idle_timeout.min(LINGER)
        } else {
            idle_timeout
        };
        let deadline = last_activity + limit;
        if idle.deadline() != deadline {
            idle.as_mut().reset(deadline);
        }
        if idle.as_mut().poll(cx).is_ready() {
            return Poll::Ready(RelayEnd::IdleTimeout);
        }
        Poll::Pending
    })
    .await;
    counters.up.inc_by(up.bytes - counted.0);
    counters.down.inc_by(down.bytes - counted.1);
    Relayed {
        end,
        totals: Totals {
            up: up.bytes,
            down: down.bytes,
        },
        user,
    }
}

/// A client that resets the connection once either side has already said goodbye (EOF) is
/// just closing: mail clients commonly close their socket after `* BYE` / `+OK` / `221`
/// without reading postern's close_notify, and the kernel answers that with a reset.
fn ends_quietly(e: &io::Error, up: &Dir, down: &Dir) -> bool {
    let reset_like = matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    );
    reset_like && (up.eof || down.eof)
}

/// Client → backend, through the command watch while it is active.
fn poll_up<C, B>(
    cx: &mut Context<'_>,
    client: &mut C,
    backend: &mut B,
    d: &mut Dir,
    reply_to_client: &mut Vec<u8>,
    filters: &mut Filters,
    user: &mut Option<String>,
) -> Poll<Result<(), Failure>>
where
    C: AsyncRead + Unpin,
    B: AsyncWrite + Unpin,
{
    let Filters { watch, imap, .. } = filters;
    poll_dir(cx, client, backend, d, |input, out, eof| {
        let Some(w) = watch.as_mut() else {
            if let Some(state) = imap.as_mut() {
                state.client(input);
            }
            return false;
        };
        if eof {
            w.flush(out);
            *watch = None;
        } else {
            w.feed(input, out, reply_to_client);
            note_user(w, user);
            if w.is_done() {
                *watch = None; // steady state: a plain copy
            }
        }
        if let Some(state) = imap.as_mut() {
            state.client(out);
        }
        true
    })
}

/// Backend → client: observed by the command watch (login outcomes), rewritten by the
/// capability filter while each is active.
fn poll_down<B, C>(
    cx: &mut Context<'_>,
    backend: &mut B,
    client: &mut C,
    d: &mut Dir,
    filters: &mut Filters,
    user: &mut Option<String>,
) -> Poll<Result<(), Failure>>
where
    B: AsyncRead + Unpin,
    C: AsyncWrite + Unpin,
{
    let Filters { watch, caps, imap } = filters;
    poll_dir(cx, backend, client, d, |input, out, eof| {
        // Observed before it is written: the goodbye decision must never lag the stream.
        if let Some(state) = imap.as_mut() {
            state.backend(input);
        }
        if let Some(w) = watch.as_mut() {
            w.backend(input);
            note_user(w, user);
            if w.is_done() {
                *watch = None;
            }
        }
        let Some(f) = caps.as_mut() else { return false };
        if eof {
            f.flush(out);
            *caps = None;
            return true;
        }
        f.feed(input, out);
        if f.is_done() {
            *caps = None;
        }
        true
    })
}

fn note_user(w: &ClientWatch, user: &mut Option<String>) {
    if let Some(u) = w.user() {
        if user.as_deref() != Some(u) {
            *user = Some(u.to_owned());
        }
    }
}

/// Moves bytes from `r` to `w` until `r` would block, `w` pushes back, or EOF has been
/// passed on (then returns `Ready(Ok)`).
///
/// `filter(input, out, eof)` may rewrite a chunk: it returns `true` after putting the bytes
/// to write into `out`, or `false` to write `input` unchanged. At EOF it is called once with
/// `eof = true` and no input, to flush whatever it still holds.
fn poll_dir<R, W, F>(
    cx: &mut Context<'_>,
    r: &mut R,
    w: &mut W,
    d: &mut Dir,
    mut filter: F,
) -> Poll<Result<(), Failure>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    F: FnMut(&[u8], &mut Vec<u8>, bool) -> bool,
{
    for _ in 0..MAX_READS_PER_POLL {
        // 1. Bytes left over from an earlier write go first.
        while d.pos < d.pending.len() {
            let n = ready!(Pin::new(&mut *w).poll_write(cx, &d.pending[d.pos..]))
                .map_err(Failure::Write)?;
            if n == 0 {
                return Poll::Ready(Err(Failure::Write(io::ErrorKind::WriteZero.into())));
            }
            d.pos += n;
            d.need_flush = true;
        }
        if !d.pending.is_empty() {
            d.pending = Vec::new(); // give the memory back: a quiet session holds nothing
            d.pos = 0;
        }
        if d.need_flush {
            ready!(Pin::new(&mut *w).poll_flush(cx)).map_err(Failure::Write)?;
            d.need_flush = false;
        }
        // 2. EOF seen and everything written: pass the EOF on.
        if d.eof {
            // The peer may already be gone; a failed shutdown changes nothing for us.
            let _ = ready!(Pin::new(&mut *w).poll_shutdown(cx));
            return Poll::Ready(Ok(()));
        }
        // 3. Read into the worker's scratch buffer and write straight on.
        let step = SCRATCH_BUF.with(|cell| -> Poll<Result<(), Failure>> {
            let mut guard = cell.borrow_mut();
            let scratch: &mut [u8] = &mut guard;
            let mut rb = ReadBuf::new(scratch);
            match Pin::new(&mut *r).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                // A client that drops TCP without close_notify is just a close here.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    d.eof = true;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::Read(e))),
                Poll::Ready(Ok(())) => {}
            }
            let n = rb.filled().len();
            if n == 0 {
                d.eof = true;
                let mut held = Vec::new();
                if filter(&[], &mut held, true) {
                    d.pending.extend_from_slice(&held);
                }
                return Poll::Ready(Ok(()));
            }
            d.bytes += n as u64;
            let mut rewritten = Vec::new();
            let data: &[u8] = if filter(&scratch[..n], &mut rewritten, false) {
                &rewritten
            } else {
                &scratch[..n]
            };
            if let Some(&last) = data.last() {
                d.at_line_start = last == b'\n';
            }
            let mut off = 0;
            while off < data.len() {
                match Pin::new(&mut *w).poll_write(cx, &data[off..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(Failure::Write(io::ErrorKind::WriteZero.into())))
                    }
                    Poll::Ready(Ok(k)) => off += k,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::Write(e))),
                    Poll::Pending => break,
                }
            }
            if off > 0 {
                d.need_flush = true;
            }
            if off < data.len() {
                d.pending.extend_from_slice(&data[off..]);
            }
            Poll::Ready(Ok(()))
        });
        ready!(step)?;
    }
    // Budget used up with data still flowing: yield, and ask to be polled again.
    cx.waker().wake_by_ref();
    Poll::Pending
}

#[cfg(test)]
mod tests;
