//! (being written) IMAP response-boundary and COMPRESS tracking for safe drain goodbyes.
