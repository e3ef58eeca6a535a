//! postern metrics
