//! Address conversions between the kernel's map layout and std types.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use agentguard_common::{Addr, SockKey};

/// v4-mapped IPv6 addresses as plain IPv4, so one destination compares equal
/// whichever socket family the agent used.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

pub fn to_addr(ip: IpAddr) -> Addr {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let o = v6.octets();
    let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
    Addr {
        words: [word(0), word(4), word(8), word(12)],
    }
}

pub fn from_addr(addr: &Addr) -> IpAddr {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(addr.words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    canonical_ip(IpAddr::V6(Ipv6Addr::from(octets)))
}

/// The key the sock_ops program stored the origin under, from the peer
/// address of an accepted connection.
pub fn sock_key(peer: SocketAddr) -> SockKey {
    SockKey {
        addr: to_addr(peer.ip()),
        port: peer.port(),
        _pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for ip in ["127.0.0.1", "10.1.2.3", "::1", "2001:db8::7"] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(from_addr(&to_addr(ip)), ip);
        }
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        assert_eq!(
            from_addr(&to_addr(mapped)),
            "127.0.0.1".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(
            to_addr(mapped),
            Addr::v4_mapped(u32::from_ne_bytes([127, 0, 0, 1]))
        );
        assert!(to_addr(mapped).is_v4_mapped());
    }
}
