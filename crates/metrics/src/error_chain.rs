//! [`ErrorChain`]: the one way postern prints an error with its causes, on one line.
//!
//! It lives in this crate because every crate that logs or prints an error (listener,
//! backend-pool, tls, session, postern's `main`) already depends on it, and it has no postern
//! dependency of its own: a separate crate for one type would add an edge from each of them.

use std::error::Error;
use std::fmt;

/// Displays an error and its sources as `outer: inner: innermost`, for log lines and the
/// CLI's messages, which show no backtrace or cause list.
///
/// A source whose text already appears in what was written so far is skipped, so an error
/// that quotes its cause in its own message does not print it twice.
#[derive(Clone, Copy, Debug)]
pub struct ErrorChain<'a>(pub &'a dyn Error);

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            source = cause.source();
        }
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;
    use std::fmt;

    use super::ErrorChain;

    /// `message`, caused by `source`.
    #[derive(Debug)]
    struct Wrapped {
        message: String,
        source: Option<std::io::Error>,
    }

    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.message)
        }
    }

    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.source.as_ref().map(|e| e as _)
        }
    }

    fn wrapped(message: &str, caused: bool) -> Wrapped {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        Wrapped {
            message: message.to_owned(),
            source: caused.then_some(io),
        }
    }

    #[test]
    fn joins_every_source_once() {
        let cases = [
            (
                wrapped("reading /etc/x", true),
                "reading /etc/x: no such file",
            ),
            // A message that already quotes its cause does not repeat it.
            (
                wrapped("reading /etc/y: no such file", true),
                "reading /etc/y: no such file",
            ),
            (wrapped("alone", false), "alone"),
        ];
        for (error, want) in cases {
            assert_eq!(ErrorChain(&error).to_string(), want);
        }
    }
}
