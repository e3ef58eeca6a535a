//! Learning a server's pre-login capabilities on a probe connection (`route = "user"`
//! backends: postern answers the pre-login commands itself, with what the servers offer).

use std::sync::{Arc, Mutex};

use postern_proto::capabilities::{self, Capabilities, Probe, Reply, MAX_REPLY};
use postern_proto::Protocol;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The last capabilities a server showed; kept when a later probe cannot read them.
#[derive(Debug, Default)]
pub(crate) struct LearnedCaps(Mutex<Option<Arc<Capabilities>>>);

impl LearnedCaps {
    pub(crate) fn get(&self) -> Option<Arc<Capabilities>> {
        self.lock().clone()
    }

    pub(crate) fn set(&self, caps: Capabilities) {
        let mut held = self.lock();
        if held.as_deref() != Some(&caps) {
            *held = Some(Arc::new(caps));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Capabilities>>> {
        // A plain value swap: consistent even after a panic elsewhere.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Asks for the capabilities after `greeting` (the caller bounds the time). None when the
/// server refused, closed, or sent more than [`MAX_REPLY`] bytes.
pub(crate) async fn learn<S>(
    stream: &mut S,
    protocol: Protocol,
    greeting: &[u8],
) -> Option<Capabilities>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let command = match capabilities::probe(protocol, greeting) {
        Probe::Known(caps) => return Some(caps),
        Probe::Ask(command) => command,
    };
    stream.write_all(command).await.ok()?;
    stream.flush().await.ok()?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        match capabilities::parse_reply(protocol, &buf) {
            Reply::Done(caps) => return Some(caps),
            Reply::Refused => return None,
            Reply::Incomplete if buf.len() >= MAX_REPLY => return None,
            Reply::Incomplete => {}
        }
        buf.reserve(1024);
        if stream.read_buf(&mut buf).await.ok()? == 0 {
            return None;
        }
    }
}
