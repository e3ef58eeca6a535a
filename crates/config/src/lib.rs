//! postern's configuration: the TOML schema and the validated model.
//!
//! # Invariants
//! - No tokio, no rustls, no I/O beyond reading the config file and checking that the
//!   files it names exist.
//! - A [`Config`] is valid by construction: listener→backend references resolve, names are
//!   unique, durations and sizes are in range, defaults are applied in one place.

mod model;

pub use model::*;
