//! postern backend-pool
