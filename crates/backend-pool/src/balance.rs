//! Server selection: the order in which a session tries the eligible servers.

use std::net::IpAddr;
use std::sync::Arc;

use postern_config::Balance;

use crate::server::Server;

/// The servers that are up and below `limit`, in the order a session should try them.
/// `rotation` is a per-pool counter that advances on every call.
pub(crate) fn order(
    balance: Balance,
    servers: &[Arc<Server>],
    limit: usize,
    client_ip: IpAddr,
    rotation: usize,
) -> Vec<Arc<Server>> {
    let mut eligible: Vec<Arc<Server>> = servers
        .iter()
        .filter(|s| s.is_up() && !s.is_full(limit))
        .cloned()
        .collect();
    if eligible.is_empty() {
        return eligible;
    }
    let start = rotation % eligible.len();
    match balance {
        Balance::RoundRobin => eligible.rotate_left(start),
        Balance::LeastConnections => {
            // Rotate first so that the stable sort breaks ties in turn: equal servers share.
            eligible.rotate_left(start);
            eligible.sort_by_key(|s| s.active());
        }
        Balance::ClientHash => {
            // Rendezvous (highest random weight) hashing: each server's score depends only on
            // the client and that server, so removing a server moves only the clients whose
            // top score it had. The hash is fixed (not SipHash with random keys), so every
            // postern instance and every restart sends a client to the same server.
            let key = ip_bytes(client_ip);
            eligible.sort_by_cached_key(|s| std::cmp::Reverse(score(&key, s.label.as_bytes())));
        }
    }
    eligible
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// FNV-1a over client and server, finished with the murmur3 64-bit mixer so that similar
/// inputs (neighbouring IPs) give unrelated scores.
fn score(client: &[u8], server: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in client.iter().chain([0xffu8].iter()).chain(server) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_spread_clients() {
        let servers = ["10.0.0.1:143", "10.0.0.2:143", "10.0.0.3:143"];
        let mut counts = [0usize; 3];
        for i in 0..3000u32 {
            let key = ip_bytes(IpAddr::from(std::net::Ipv4Addr::from(0xc000_0200 + i)));
            let best = (0..3)
                .max_by_key(|&j| score(&key, servers[j].as_bytes()))
                .unwrap();
            counts[best] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven: {counts:?}");
        }
    }
}
