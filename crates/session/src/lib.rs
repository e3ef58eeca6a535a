//! postern session
