//! postern postern
