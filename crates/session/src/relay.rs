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
use postern_proto::imap_state::{Goodbye, ImapState};
use postern_proto::login_guard::GuardClose;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

pub(crate) use filters::Filters;

use crate::logins::LoginSink;
use filters::Chunk;

mod filters;

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

/// After the pre-login deadline, how long the goodbye may wait for a safe point (an IMAP
/// response boundary, a client that reads) before the session is closed without it.
const PRELOGIN_GRACE: Duration = Duration::from_secs(2);

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
    /// The login guard ended the session; its goodbye was written.
    GuardClosed(GuardClose),
    /// No login by the pre-login deadline; the goodbye was written (or, when no safe point
    /// came within [`PRELOGIN_GRACE`], the session is closed without it).
    PreloginTimeout,
}

/// `limits.prelogin_timeout` as the relay applies it: until the backend confirms a login
/// (or greets PREAUTH), the session must have logged in by `deadline`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Prelogin {
    /// From the session's accept plus `prelogin_timeout`.
    pub(crate) deadline: Instant,
    /// Sent to the client at the first safe point after the deadline.
    pub(crate) goodbye: &'static [u8],
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
    /// `pending` holds postern's own replies (the login guard's): while it does, the other
    /// direction reads nothing, so a client that never reads cannot make them pile up.
    own_pending: bool,
    /// EOF seen, but bytes read before it still wait in the login guard for a backend
    /// answer: the EOF is passed on after them.
    eof_held: bool,
    /// The last poll stopped reading because the filter asked to pause (postern's own
    /// replies wait to be written): the caller wakes the task once reading may go on.
    paused: bool,
}

/// What a filter did with one read.
struct Filtered {
    /// The bytes to write were put into the output (else the input goes on unchanged).
    rewritten: bool,
    /// Read no more until the caller says so (see [`Dir::paused`]).
    pause: bool,
}

enum Failure {
    Read(io::Error),
    Write(io::Error),
}

/// What the relay needs besides the two streams.
pub(crate) struct RelayPlan<'a, L> {
    /// What the backend sent before the relay: its greeting and any bytes after it.
    pub(crate) greeting: Vec<u8>,
    /// How many bytes of `greeting` are the greeting itself.
    pub(crate) greeting_len: usize,
    /// The client already had postern's own greeting (STARTTLS): the backend's is not
    /// written (the filters still see it).
    pub(crate) swallow_greeting: bool,
    /// `route = "user"`: the client's login bytes postern read before the backend was
    /// chosen; they go through the filters first, as if just read (empty otherwise).
    pub(crate) replay: &'a [u8],
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
    /// Where login outcomes go (`None` in relay tests).
    pub(crate) logins: Option<&'a LoginSink<'a>>,
    /// The pre-login deadline; `None`: none (relay tests).
    pub(crate) prelogin: Option<Prelogin>,
}

/// What the relay hands back for the session record.
#[derive(Debug)]
pub(crate) struct Relayed {
    /// How it ended.
    pub(crate) end: RelayEnd,
    /// Bytes relayed each way, the backend greeting included.
    pub(crate) totals: Totals,
    /// The login name the backend confirmed, if the mechanism shows it.
    pub(crate) user: Option<String>,
}

/// Relays until both sides are done, an error, the idle timeout or a completed goodbye.
pub(crate) fn relay<'a, C, B, L>(
    client: &'a mut C,
    backend: &'a mut B,
    plan: RelayPlan<'a, L>,
) -> impl Future<Output = Relayed> + 'a
where
    C: AsyncRead + AsyncWrite + Unpin + 'a,
    B: AsyncRead + AsyncWrite + Unpin + 'a,
    L: Future<Output = ()> + 'a,
{
    let RelayPlan {
        greeting,
        greeting_len,
        swallow_greeting,
        replay,
        mut filters,
        idle_timeout,
        leave,
        mut goodbye,
        counters,
        logins,
        mut prelogin,
    } = plan;
    // Not an async fn: its arguments would keep their slots in the future beside the
    // fields taken out of them, for the whole session (an idle session's memory).
    async move {
        let mut up = Dir {
            at_line_start: true,
            ..Dir::default()
        };
        let mut down = Dir::default();
        start(
            &greeting,
            greeting_len,
            swallow_greeting,
            &mut filters,
            &mut up,
            &mut down,
            logins,
        );
        if !replay.is_empty() {
            let mut out = Vec::new();
            let mut own = Vec::new();
            match filters.client(replay, &mut out, &mut own) {
                Chunk::Unchanged => up.pending.extend_from_slice(replay),
                Chunk::Rewritten => up.pending.append(&mut out),
            }
            if !own.is_empty() {
                down.pending.extend_from_slice(&own);
                down.own_pending = true;
            }
            up.bytes = replay.len() as u64;
        }
        // The greeting handed over by the pool is relayed backend data: it counts. Its buffer
        // (the pool reads with at least 1 KiB of room) is freed now, not held by the relay's
        // future for the whole session: an idle session keeps nothing it no longer needs.
        down.bytes = greeting.len() as u64;
        drop(greeting);
        counters.down.inc_by(down.bytes);
        let mut last_activity = Instant::now();
        let mut idle = std::pin::pin!(tokio::time::sleep(idle_timeout));
        // Bytes already added to the metrics; the rest is added when the relay ends, so that the
        // last poll's bytes are counted even when it is also the one that finishes the session.
        let mut counted = (up.bytes, down.bytes);
        let mut leave = std::pin::pin!(leave);
        let mut leaving = false;
        let mut goodbye_queued = false;
        let mut guard_closing = None;
        // The pre-login deadline passed: `leaving` was set with its goodbye.
        let mut prelogin_expired = false;

        let end = poll_fn(|cx| {
            // The client is read only while the guard takes bytes and postern's own replies
            // have been written (they count against the same bound as relayed bytes).
            let up_may_read =
                filters.wants_client() && !down.own_pending && guard_closing.is_none();
            let up_queued = up.pending.len();
            up.eof_held = filters
                .guard
                .as_ref()
                .is_some_and(|g| g.holds_client_bytes());
            if !up.done {
                match poll_up(
                    cx,
                    client,
                    backend,
                    &mut up,
                    up_may_read,
                    &mut down,
                    &mut filters,
                ) {
                    Poll::Ready(Ok(())) => up.done = true,
                    Poll::Ready(Err(Failure::Read(e))) if ends_quietly(&e, &up, &down) => {
                        up.done = true
                    }
                    Poll::Ready(Err(Failure::Read(e))) => {
                        return Poll::Ready(RelayEnd::ClientError(e))
                    }
                    Poll::Ready(Err(Failure::Write(e))) => {
                        return Poll::Ready(RelayEnd::BackendError(e))
                    }
                    Poll::Pending => {}
                }
            }
            if !leaving && !goodbye_queued && leave.as_mut().poll(cx).is_ready() {
                leaving = true;
            }
            // The goodbye goes out at a safe point: nothing half-written toward the client. A
            // read below may create one, so check again after it.
            for _ in 0..2 {
                if leaving && down.done {
                    return Poll::Ready(left(prelogin_expired));
                }
                let safe = match filters.imap.as_deref().map(ImapState::goodbye) {
                    Some(Goodbye::Now) => down.pending.is_empty(),
                    Some(Goodbye::Wait) => false,
                    // A compressed (or unparseable) IMAP stream: no readable goodbye is possible,
                    // so the session just closes at its turn.
                    Some(Goodbye::Close) if leaving => return Poll::Ready(left(prelogin_expired)),
                    Some(Goodbye::Close) => false,
                    None => {
                        down.pending.is_empty()
                            && down.at_line_start
                            && !filters.backend_in_literal()
                    }
                };
                if leaving && !goodbye_queued && safe {
                    if goodbye.is_empty() {
                        return Poll::Ready(left(prelogin_expired));
                    }
                    down.pending.extend_from_slice(goodbye);
                    down.eof = true; // stop reading the backend; shut the client down after the goodbye
                    goodbye_queued = true;
                }
                if !down.done {
                    match poll_down(
                        cx,
                        backend,
                        client,
                        &mut down,
                        &mut up,
                        &mut filters,
                        logins,
                    ) {
                        Poll::Ready(Ok(())) => down.done = true,
                        // A backend that resets after its goodbye, or after either side's EOF,
                        // has still closed: Dovecot's submission service resets after its `221`
                        // to QUIT. Everything read before the reset was relayed; pass the close
                        // on. The client is shut down on the next round, which must come even
                        // when this was the last pass here. Any other reset cut a response: a
                        // backend error, passed on to the client as a reset.
                        Poll::Ready(Err(Failure::Read(e)))
                            if e.kind() == io::ErrorKind::ConnectionReset
                                && (up.eof || down.eof || filters.backend_said_goodbye()) =>
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
                return Poll::Ready(left(prelogin_expired));
            }
            // The guard ended the session: its goodbye is in `down.pending`; stop reading the
            // backend, write it, then shut the client down.
            if guard_closing.is_none() {
                if let Some(why) = filters
                    .guard
                    .as_ref()
                    .and_then(|g| g.closing().filter(|_| g.finished()))
                {
                    guard_closing = Some(why);
                    down.eof = true;
                    cx.waker().wake_by_ref();
                }
            }
            if let (Some(why), true) = (guard_closing, down.done) {
                return Poll::Ready(RelayEnd::GuardClosed(why));
            }
            // postern's replies were written: the guard goes on with the client bytes it
            // parked behind them (their bytes to the backend join `up.pending`, its new replies
            // wait in `down.pending` like the first ones).
            if !down.own_pending && guard_closing.is_none() && filters.own_replies_unwritten() {
                let mut own = Vec::new();
                filters.own_replies_written(&mut up.pending, &mut own);
                if !own.is_empty() {
                    down.pending.extend_from_slice(&own);
                    down.own_pending = true;
                    cx.waker().wake_by_ref();
                }
            }
            // Bytes the guard held for the backend's answer were released into `up.pending`, or
            // the client may be read again: poll the up direction once more.
            let up_may_read_now =
                filters.wants_client() && !down.own_pending && guard_closing.is_none();
            if !up.done
                && (up.pending.len() > up_queued
                    || (up_may_read_now && (!up_may_read || up.paused)))
            {
                cx.waker().wake_by_ref();
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
            // A confirmed login (or a PREAUTH greeting) ends the pre-login phase: the session
            // leaves the budget and its deadline is off.
            if prelogin.is_some() && filters.guard.as_ref().is_some_and(|g| g.logged_in()) {
                prelogin = None;
                if let Some(sink) = logins {
                    sink.logged_in();
                }
            }
            let limit = if up.done || down.done {
                idle_timeout.min(LINGER)
            } else {
                idle_timeout
            };
            // One timer for both deadlines: a session holds no second one for hours of IDLE.
            let mut deadline = last_activity + limit;
            if let Some(p) = &prelogin {
                let at = if prelogin_expired {
                    p.deadline + PRELOGIN_GRACE
                } else {
                    p.deadline
                };
                deadline = deadline.min(at);
            }
            if idle.deadline() != deadline {
                idle.as_mut().reset(deadline);
            }
            if idle.as_mut().poll(cx).is_ready() {
                match &prelogin {
                    Some(p) if Instant::now() >= p.deadline => {
                        if prelogin_expired {
                            // No safe point for the goodbye within the grace: close without it.
                            return Poll::Ready(RelayEnd::PreloginTimeout);
                        }
                        prelogin_expired = true;
                        if !leaving {
                            leaving = true;
                            goodbye = p.goodbye;
                        }
                        // The goodbye is queued at the next safe point, checked on the next poll.
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    _ => return Poll::Ready(RelayEnd::IdleTimeout),
                }
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
            user: filters
                .guard
                .as_ref()
                .and_then(|g| g.user().map(str::to_owned)),
        }
    }
}

/// How a relay that was asked to leave ended: the drain's, or the pre-login deadline's.
fn left(prelogin_expired: bool) -> RelayEnd {
    if prelogin_expired {
        RelayEnd::PreloginTimeout
    } else {
        RelayEnd::Shutdown
    }
}

/// Hands the pool's bytes to the filters: the greeting (written unless swallowed), then
/// whatever the backend sent after it, like any later read.
fn start(
    greeting: &[u8],
    greeting_len: usize,
    swallow: bool,
    filters: &mut Filters,
    up: &mut Dir,
    down: &mut Dir,
    logins: Option<&LoginSink<'_>>,
) {
    let (head, rest) = greeting.split_at(greeting_len.min(greeting.len()));
    // The guard must see the greeting (also one swallowed) before any reply; the response
    // tracker and the capability filter see what the client sees.
    let mut ignored = Vec::new();
    if let Some(g) = filters.guard.as_mut() {
        let _ = g.backend(head, &mut ignored, &mut up.pending);
        while let Some(v) = g.next_verdict() {
            if let Some(sink) = logins {
                sink.record(&v);
            }
        }
    }
    if !swallow {
        if let Some(state) = filters.imap.as_mut() {
            state.backend(head);
        }
        match filters.caps.as_mut() {
            // A greeting relayed after an upgrade (ManageSieve's capability list): filtered.
            Some(f) => f.feed(head, &mut down.pending),
            None => down.pending.extend_from_slice(head),
        }
    }
    // What the backend sent after its greeting goes through every filter, like any read.
    let mut out = Vec::new();
    match filters.backend(rest, &mut out, &mut up.pending, logins) {
        Chunk::Unchanged => down.pending.extend_from_slice(rest),
        Chunk::Rewritten => down.pending.append(&mut out),
    }
    down.at_line_start = down.pending.is_empty() || down.pending.ends_with(b"\n");
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

/// Client → backend, through the filters.
fn poll_up<C, B>(
    cx: &mut Context<'_>,
    client: &mut C,
    backend: &mut B,
    d: &mut Dir,
    may_read: bool,
    down: &mut Dir,
    filters: &mut Filters,
) -> Poll<Result<(), Failure>>
where
    C: AsyncRead + Unpin,
    B: AsyncWrite + Unpin,
{
    poll_dir(cx, client, backend, d, may_read, |input, out, eof| {
        if eof {
            // Bytes held for an incomplete command are never passed on.
            if let Some(g) = filters.guard.as_mut() {
                g.client_eof();
            }
            return Filtered {
                rewritten: false,
                pause: false,
            };
        }
        let mut own = Vec::new();
        let chunk = filters.client(input, out, &mut own);
        if !own.is_empty() {
            down.pending.extend_from_slice(&own);
            down.own_pending = true;
        }
        // postern's replies count against the same bound as relayed bytes: no further read
        // of this poll may add to them before they are written.
        Filtered {
            rewritten: matches!(chunk, Chunk::Rewritten),
            pause: down.own_pending || !filters.wants_client(),
        }
    })
}

/// Backend → client, through the filters; client bytes the guard releases go to `up`.
fn poll_down<B, C>(
    cx: &mut Context<'_>,
    backend: &mut B,
    client: &mut C,
    d: &mut Dir,
    up: &mut Dir,
    filters: &mut Filters,
    logins: Option<&LoginSink<'_>>,
) -> Poll<Result<(), Failure>>
where
    B: AsyncRead + Unpin,
    C: AsyncWrite + Unpin,
{
    poll_dir(cx, backend, client, d, true, |input, out, eof| {
        let rewritten = if eof {
            filters.backend_eof(out)
        } else {
            matches!(
                filters.backend(input, out, &mut up.pending, logins),
                Chunk::Rewritten
            )
        };
        Filtered {
            rewritten,
            pause: false,
        }
    })
}

/// Moves bytes from `r` to `w` until `r` would block, `w` pushes back, or EOF has been
/// passed on (then returns `Ready(Ok)`).
///
/// `filter(input, out, eof)` may rewrite a chunk: it says `rewritten` after putting the bytes
/// to write into `out`, else `input` is written unchanged; `pause` stops reading after this
/// read (the direction's `paused` is set). At EOF it is called once with `eof = true` and no
/// input, to flush whatever it still holds.
fn poll_dir<R, W, F>(
    cx: &mut Context<'_>,
    r: &mut R,
    w: &mut W,
    d: &mut Dir,
    may_read: bool,
    mut filter: F,
) -> Poll<Result<(), Failure>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    F: FnMut(&[u8], &mut Vec<u8>, bool) -> Filtered,
{
    d.paused = false;
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
        d.own_pending = false;
        if d.need_flush {
            ready!(Pin::new(&mut *w).poll_flush(cx)).map_err(Failure::Write)?;
            d.need_flush = false;
        }
        // 2. EOF seen and everything written: pass the EOF on (once nothing read before it
        // waits any more; the caller wakes the task when that changes).
        if d.eof && d.eof_held {
            return Poll::Pending;
        }
        if d.eof {
            // The peer may already be gone; a failed shutdown changes nothing for us.
            let _ = ready!(Pin::new(&mut *w).poll_shutdown(cx));
            return Poll::Ready(Ok(()));
        }
        // 3. Read into the worker's scratch buffer and write straight on, unless the other
        // direction holds this one back (the caller wakes the task when that changes).
        if !may_read {
            return Poll::Pending;
        }
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
                if filter(&[], &mut held, true).rewritten {
                    d.pending.extend_from_slice(&held);
                }
                return Poll::Ready(Ok(()));
            }
            d.bytes += n as u64;
            let mut rewritten = Vec::new();
            let filtered = filter(&scratch[..n], &mut rewritten, false);
            d.paused = filtered.pause;
            let data: &[u8] = if filtered.rewritten {
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
        if d.paused {
            // The caller wakes the task when reading may go on (see `Dir::paused`); what
            // this read left in `pending` is written then.
            return Poll::Pending;
        }
    }
    // Budget used up with data still flowing: yield, and ask to be polled again.
    cx.waker().wake_by_ref();
    Poll::Pending
}

#[cfg(test)]
mod tests;
