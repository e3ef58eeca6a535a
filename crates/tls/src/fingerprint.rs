//! The digest of a certificate set's files, so a reload whose bytes did not change does
//! nothing (a digest, so no second copy of the private keys stays in memory).

use crate::load::Files;

/// SHA-256 over every file's bytes and key mode, each part length-prefixed so boundaries
/// count.
pub(crate) fn fingerprint(files: &[Files]) -> Vec<u8> {
    let mut chunks: Vec<([u8; 8], &[u8])> = Vec::new();
    for f in files {
        chunks.push(((f.cert.len() as u64).to_be_bytes(), &f.cert));
        let key = f.key.as_deref().unwrap_or_default();
        chunks.push(((key.len() as u64).to_be_bytes(), key));
        chunks.push((u64::from(f.key_mode).to_be_bytes(), &[]));
    }
    match rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256 {
        rustls::SupportedCipherSuite::Tls13(suite) => {
            let mut ctx = suite.common.hash_provider.start();
            for (frame, bytes) in &chunks {
                ctx.update(frame);
                ctx.update(bytes);
            }
            ctx.finish().as_ref().to_vec()
        }
        // Not reachable (a TLS 1.3 suite constant); the bytes themselves compare exactly.
        _ => chunks
            .iter()
            .flat_map(|(frame, bytes)| frame.iter().chain(bytes.iter()))
            .copied()
            .collect(),
    }
}
