//! Weighted rendezvous hashing (highest random weight, HRW): the score of one user on one
//! server host.
//!
//! Every replica must compute the same scores from the same inputs, today and after an
//! upgrade, so the hash is fixed here and pinned by tests (`known_scores_never_change`):
//! **SipHash-2-4 with the keys [`KEY0`], [`KEY1`]** (the `siphasher` crate) over the
//! normalised user name, one `0xff` byte (a byte no UTF-8 text contains, so `("ab", "c")`
//! and `("a", "bc")` differ) and the host, lower-cased. Rust's `DefaultHasher` is never used:
//! its keys are random per process.
//!
//! Weights follow the logarithmic method (Schindelhauer and Schomaker, "Weighted
//! distributed hash tables", 2005; also used by Ceph's straw2): the 64-bit hash becomes a
//! uniform `u` in (0, 1), and the score is `weight / -ln(u)`. The server with the highest
//! score wins; a server of weight 2 wins for twice as many users as one of weight 1, and
//! removing a server moves only the users it had won.

use std::hash::Hasher;

use siphasher::sip::SipHasher24;

/// First SipHash key: "postern-" in ASCII, little-endian. Part of the placement contract.
pub const KEY0: u64 = 0x2d6e_7265_7473_6f70;
/// Second SipHash key: "director" in ASCII, little-endian. Part of the placement contract.
pub const KEY1: u64 = 0x726f_7463_6572_6964;

/// The name the hash sees: surrounding blanks removed and ASCII letters lower-cased, so
/// that `Alice` and `alice` (one mailbox on a backend that folds case, two harmless
/// neighbours on one that does not) are placed together.
pub fn normalise_user(user: &str) -> String {
    user.trim().to_ascii_lowercase()
}

/// The 64-bit hash of a (normalised) user on a host.
pub fn hash(user: &str, host: &str) -> u64 {
    let mut h = SipHasher24::new_with_keys(KEY0, KEY1);
    h.write(user.as_bytes());
    h.write_u8(0xff);
    for b in host.bytes() {
        h.write_u8(b.to_ascii_lowercase());
    }
    h.finish()
}

/// The weighted score of `user` (normalised) on `host`; higher wins.
pub fn score(user: &str, host: &str, weight: u32) -> f64 {
    // The top 53 bits fill an f64 mantissa exactly; +0.5 keeps u strictly inside (0, 1),
    // so ln(u) is finite and negative.
    let u = ((hash(user, host) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight.max(1)) / -u.ln()
}

/// Indices of `hosts` (with their weights) from the highest score for `user` to the
/// lowest. Equal scores (practically impossible) are ordered by host, then by index, so the
/// order is total and the same everywhere.
pub fn rank(user: &str, hosts: &[(&str, u32)]) -> Vec<usize> {
    let mut scored: Vec<(f64, usize)> = hosts
        .iter()
        .enumerate()
        .map(|(i, (host, weight))| (score(user, host, *weight), i))
        .collect();
    scored.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| hosts[a.1].0.cmp(hosts[b.1].0))
            .then_with(|| a.1.cmp(&b.1))
    });
    scored.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_scores_never_change() {
        // Replicas of different versions must agree: a change here is a breaking change
        // (every user would move at the upgrade). Update only with a CHANGELOG entry.
        assert_eq!(hash("alice", "10.0.0.5"), 0x73d8_3695_5fb9_44da);
        assert_eq!(
            hash("bob@example.org", "mail1.example.org"),
            0x65a5_df35_f748_d970
        );
        assert_eq!(hash("", ""), 0x9d4d_a88b_1b8c_cd5b);
    }

    #[test]
    fn host_case_does_not_matter_and_user_is_normalised() {
        assert_eq!(
            hash("alice", "MAIL1.example.org"),
            hash("alice", "mail1.example.org")
        );
        assert_eq!(normalise_user("  Alice@Example.ORG "), "alice@example.org");
    }

    #[test]
    fn separator_keeps_user_and_host_apart() {
        assert_ne!(hash("ab", "c"), hash("a", "bc"));
    }

    #[test]
    fn higher_weight_wins_more() {
        let hosts = [("a", 1), ("b", 3)];
        let wins_b = (0..4000)
            .filter(|i| rank(&format!("user{i}"), &hosts)[0] == 1)
            .count();
        assert!((2800..3200).contains(&wins_b), "b won {wins_b} of 4000");
    }
}
