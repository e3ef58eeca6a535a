//! postern tls
