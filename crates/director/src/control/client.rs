//! The client side, for `postern ctl`: a blocking request with a deadline.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::{Request, Response};

/// Why `postern ctl` got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No gateway listens on the socket.
    #[error("cannot reach postern on {}: {source}; is `postern run` running with this server.state_dir (and are you its user or root)?", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed or timed out.
    #[error("no answer from postern on {}: {source}", path.display())]
    Exchange {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The answer was not a control response.
    #[error("postern on {} answered something that is not a control response: {source}", path.display())]
    Answer {
        /// The socket.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

/// Sends `request` to the gateway on `path` and returns its answer, within `deadline` for
/// each step.
pub fn send(path: &Path, request: &Request, deadline: Duration) -> Result<Response, ClientError> {
    let exchange = |source| ClientError::Exchange {
        path: path.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.to_owned(),
        source,
    })?;
    stream.set_read_timeout(Some(deadline)).map_err(exchange)?;
    stream.set_write_timeout(Some(deadline)).map_err(exchange)?;
    let mut line = serde_json::to_vec(request).map_err(|e| exchange(std::io::Error::other(e)))?;
    line.push(b'\n');
    // A gateway that refuses the client answers without reading the request: the write may
    // fail while the refusal waits to be read.
    let wrote = stream.write_all(&line);
    let mut answer = Vec::new();
    let read = BufReader::new(stream).read_until(b'\n', &mut answer);
    if answer.is_empty() {
        wrote.map_err(exchange)?;
        read.map_err(exchange)?;
    }
    serde_json::from_slice(&answer).map_err(|source| ClientError::Answer {
        path: path.to_owned(),
        source,
    })
}
