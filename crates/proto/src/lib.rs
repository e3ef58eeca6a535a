//! Sans-I/O edge logic for IMAP, POP3, SMTP submission and ManageSieve.
//!
//! Fed bytes, returns decisions and bytes to write. Owns every wire string postern
//! sends on its own behalf (greetings, refusals, goodbyes).
//!
//! # Invariants
//! - No sockets, no clock, no TLS, no logging, no dependency on another postern crate
//!   (nor on tokio, rustls or tracing): every state machine is tested without a runtime.
//! - No input panics; every buffer this crate keeps is bounded.
//! - Every lexical helper lives in [`lex`]: one line splitter (CRLF, or a bare LF, ends a
//!   line), one literal parser (checked arithmetic), one keyword reader, so no two parts of
//!   postern can disagree on where a command ends or what it is.
//!
//! # Module map
//! - [`protocol`](Protocol): the `Protocol` enum and its fixed goodbye lines.
//! - [`lex`]: line splitting with a hard limit, keywords, IMAP tags and literal
//!   announcements, case-insensitive matching, decimal numbers.
//! - [`greeting`]: recognising a backend's greeting (pool health checks and connects).
//! - [`capabilities`]: a backend's pre-login capabilities, learned by the health probe of a
//!   `route = "user"` backend (postern answers the pre-login commands itself).
//! - [`forward`]: the IMAP `ID` / `XCLIENT` command that tells a backend the client address.
//! - [`starttls`]: [`starttls::PlainPhase`], the plaintext dialogue of a STARTTLS listener up
//!   to the upgrade.
//! - [`login_guard`]: [`login_guard::LoginGuard`], every client byte of a session and the
//!   backend's replies: refuses client-supplied address claims in any spelling for the whole
//!   session, and reports each login outcome (the name tried, never a password). Also the
//!   pure login-name extractor ([`login_guard::login_line`]) for routing by user.
//! - [`prelogin`]: [`prelogin::Prelogin`], the pre-login dialogue of a `route = "user"`
//!   session (postern answers it, reads the login name with the guard's parser, and hands
//!   the client's login bytes over for the user's server); [`prelogin::ReplySwallow`] drops
//!   the server's answers the client already had from postern.
//! - [`imap_state`]: [`imap_state::ImapState`], IMAP response boundaries, literals and
//!   COMPRESS in both directions: where a drain goodbye may be written, if at all.
//! - [`capfilter`]: [`capfilter::CapabilityFilter`], backend->client bytes after an upgrade:
//!   STARTTLS/STLS removed from capability lists.
//!
//! # STARTTLS rules (T1-T13) covered here, and where they are tested
//! - T1 (bytes after STARTTLS never interpreted), T2 (read-ahead reset): `PlainStep::Upgrade`
//!   drops and counts everything buffered after the command line. `starttls::tests::t1_*`, `t2_*`.
//! - T3 (no race): structural: `step` has returned `Upgrade` before the caller writes the
//!   go-ahead, and the phase reads nothing after it; the caller must start TLS on bytes read
//!   after that point only (session crate).
//! - T4 (auth refused pre-TLS, STARTTLS only once): `PlainPhase` refuses LOGIN/AUTHENTICATE,
//!   USER/PASS/APOP/AUTH, AUTH/MAIL, ManageSieve AUTHENTICATE; the phase ends at `Upgrade`; `LoginGuard` refuses
//!   STARTTLS/STLS inside TLS. `starttls::tests::t4_*`,
//!   `login_guard::tests::imap::t4_starttls_and_compress_before_login_are_refused`.
//! - T5 (state discarded after upgrade): structural: nothing of `PlainPhase` survives the
//!   upgrade; the session goes to a fresh backend connection that needs a new EHLO.
//! - T6 (capability hygiene): `PlainPhase` greetings/CAPABILITY/CAPA/EHLO (snapshot tests
//!   `starttls::tests::t6_*`); `CapabilityFilter` post-TLS, with no byte bound
//!   (`capfilter::tests::t6_*`).
//! - T7 (no PREAUTH/ALERT, own greeting): `PlainPhase::greeting`, `t6_t7_greetings_snapshot`.
//! - T8 (exact grammar, no parser differential, literals, NUL, bare LF): `starttls::tests::t8_*`;
//!   binary input (a TLS ClientHello) before STARTTLS closes at once.
//! - T9 (line length, command count; the timeout is the caller's, with
//!   `PlainPhase::timeout_goodbye`): `starttls::tests::t9_*`.
//! - T10 (ALPN), T11 (no plaintext fallback): TLS and listener crates; nothing here.
//! - T12 (client-supplied address claims): `LoginGuard` refuses IMAP `ID` reserved fields in
//!   any spelling (quoted escapes, literals, atoms, case), POP3/SMTP/ManageSieve `XCLIENT`, SMTP
//!   `XFORWARD`, before and after login, whatever `forward_client` is.
//!   `login_guard::tests::claims::t12_*`, `::smtp::t12_*`, `::post_login::t12_*`,
//!   `::sieve::t12_*`.
//! - T13 (SMTP DATA smuggling): the guard reads message text only to find its end, which it
//!   takes at the earliest point any backend could (`.` after CRLF or a bare LF), so no line
//!   after it passes unread. `login_guard::tests::smtp::t13_*`.
//!
//! Property tests (`tests/prop.rs`) and the cargo-fuzz targets in `fuzz/` (not part of the
//! workspace; `cargo +nightly fuzz run <target>` from `crates/proto`, seeds in
//! `fuzz/seeds/<target>/`) check every parser and state machine for panics, buffer bounds
//! and read-split invariance.

pub mod capabilities;
pub mod capfilter;
pub mod forward;
pub mod greeting;
pub mod imap_state;
pub mod lex;
pub mod login_guard;
pub mod prelogin;
mod protocol;
pub mod starttls;

pub use protocol::Protocol;
