//! The control socket's protocol: one JSON request line, one JSON response line, then the
//! server closes. Simple enough for `socat` and scripts:
//!
//! ```text
//! {"command":"servers"}
//! {"command":"server","backend":"imap","server":"10.0.0.5:143","state":"offline"}
//! {"command":"user","user":"alice@example.org"}
//! {"command":"kick","user":"alice@example.org"}
//! ```
//!
//! A response is `{"ok":true,"text":"...","data":{...}}` (`text` for people, `data` for
//! scripts) or `{"ok":false,"error":"..."}`.

use serde::{Deserialize, Serialize};

/// Longest request line the server reads.
pub const MAX_REQUEST: usize = 4096;

/// One request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Every backend's servers: state, health, sessions, users.
    Servers,
    /// Set a server's state.
    Server {
        /// The `[[backend]]` name.
        backend: String,
        /// The server label as `ctl servers` shows it.
        server: String,
        /// `online`, `standby` or `offline`.
        state: String,
    },
    /// Where a user is routed, and the user's sessions on this instance.
    User {
        /// The login name.
        user: String,
    },
    /// Ask every session of a user on this instance to leave.
    Kick {
        /// The login name.
        user: String,
    },
}

/// One response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// The answer for people (on success).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
    /// The answer for scripts (on success).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
    /// What went wrong (on failure).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

impl Response {
    /// A success.
    pub fn done(text: String, data: serde_json::Value) -> Response {
        Response {
            ok: true,
            text,
            data,
            error: String::new(),
        }
    }

    /// A refusal or failure.
    pub fn failed(error: impl std::fmt::Display) -> Response {
        Response {
            ok: false,
            text: String::new(),
            data: serde_json::Value::Null,
            error: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_documented() {
        let r: Request = serde_json::from_str(
            r#"{"command":"server","backend":"imap","server":"10.0.0.5:143","state":"offline"}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::Server {
                backend: "imap".into(),
                server: "10.0.0.5:143".into(),
                state: "offline".into()
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Servers).unwrap(),
            r#"{"command":"servers"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"reboot"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"command":"kick","user":"a","x":1}"#).is_err());
    }
}
