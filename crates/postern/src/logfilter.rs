//! The log filter: postern's own level from `[log] level` (or `RUST_LOG`), and quiet
//! defaults for libraries whose lines a peer can cause. rustls warns once per handshake
//! from a client that sends an IP address as the server name (`Illegal SNI extension:
//! ignoring IP address presented as hostname`, several common clients do), which would let
//! any client write postern's log; hyper logs per connection at debug and up.

/// Library targets held at [`LIBRARY_LEVEL`] unless the filter names them itself.
pub const QUIET_LIBRARIES: &[&str] = &["rustls", "tokio_rustls", "hyper", "hyper_util"];

/// The level of [`QUIET_LIBRARIES`] by default.
pub const LIBRARY_LEVEL: &str = "error";

/// `spec` (an `EnvFilter` directive list such as `info` or `postern=debug,warn`) with a
/// `target=error` directive added for each quiet library that `spec` does not mention.
/// More specific directives win in `EnvFilter`, so a bare `debug` leaves these at `error`
/// while `rustls=debug` in `spec` (or in `RUST_LOG`) is kept as written.
pub fn with_library_defaults(spec: &str) -> String {
    let mut out = spec.trim().to_owned();
    for lib in QUIET_LIBRARIES {
        let named = spec.split(',').any(|d| {
            let target = d.trim().split(['=', '[']).next().unwrap_or("");
            target == *lib || target.starts_with(&format!("{lib}::"))
        });
        if !named {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(lib);
            out.push('=');
            out.push_str(LIBRARY_LEVEL);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libraries_default_to_error_unless_named() {
        assert_eq!(
            with_library_defaults("info"),
            "info,rustls=error,tokio_rustls=error,hyper=error,hyper_util=error"
        );
        let s = with_library_defaults("debug,rustls=warn,hyper::proto=trace");
        assert!(s.starts_with("debug,rustls=warn,hyper::proto=trace,"));
        assert!(!s.contains("rustls=error,") || s.contains("tokio_rustls=error"));
        assert!(!s.contains(",rustls=error"));
        assert!(!s.contains(",hyper=error"));
        assert!(s.contains("hyper_util=error"));
        assert_eq!(
            with_library_defaults(""),
            "rustls=error,tokio_rustls=error,hyper=error,hyper_util=error"
        );
    }
}
