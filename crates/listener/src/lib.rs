//! postern listener
