//! Socket kinds the kernel side refuses at `socket()` (cgroup/sock_create):
//! every AF_INET/AF_INET6 kind other than TCP and UDP, unless `[sockets]
//! allow` names it. The proxy only ever sees TCP (redirected) and UDP
//! (DNS to a resolver, nothing else), so any other kind — an ICMP "ping"
//! socket, a raw socket, SCTP — would carry data off the host unseen.

use agentguard_common::SocketKind;

const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;
const STREAM: u16 = libc::SOCK_STREAM as u16;
const DGRAM: u16 = libc::SOCK_DGRAM as u16;
const RAW: u16 = libc::SOCK_RAW as u16;
const SEQPACKET: u16 = libc::SOCK_SEQPACKET as u16;
const DCCP: u16 = 6;
const ANY: u32 = SocketKind::ANY_PROTOCOL;

const fn kind(family: u16, type_: u16, protocol: u32) -> SocketKind {
    SocketKind {
        family,
        type_,
        protocol,
    }
}

/// Names `[sockets] allow` accepts, and the kinds each lets through. Each
/// one is a way around the proxy: allow only what a host's agents need.
pub const NAMES: &[(&str, &[SocketKind])] = &[
    // Ping sockets (needs net.ipv4.ping_group_range to cover the agent).
    ("icmp", &[kind(AF_INET, DGRAM, libc::IPPROTO_ICMP as u32)]),
    (
        "icmpv6",
        &[kind(AF_INET6, DGRAM, libc::IPPROTO_ICMPV6 as u32)],
    ),
    // Raw IP sockets of any protocol (needs CAP_NET_RAW).
    ("raw", &[kind(AF_INET, RAW, ANY), kind(AF_INET6, RAW, ANY)]),
    (
        "sctp",
        &[
            kind(AF_INET, STREAM, libc::IPPROTO_SCTP as u32),
            kind(AF_INET, SEQPACKET, libc::IPPROTO_SCTP as u32),
            kind(AF_INET6, STREAM, libc::IPPROTO_SCTP as u32),
            kind(AF_INET6, SEQPACKET, libc::IPPROTO_SCTP as u32),
        ],
    ),
    (
        "udplite",
        &[
            kind(AF_INET, DGRAM, libc::IPPROTO_UDPLITE as u32),
            kind(AF_INET6, DGRAM, libc::IPPROTO_UDPLITE as u32),
        ],
    ),
    (
        "dccp",
        &[
            kind(AF_INET, DCCP, libc::IPPROTO_DCCP as u32),
            kind(AF_INET6, DCCP, libc::IPPROTO_DCCP as u32),
        ],
    ),
];

/// The kinds a configured name allows; `None` for an unknown name.
pub fn allowed_by(name: &str) -> Option<&'static [SocketKind]> {
    NAMES.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

/// `AF_INET SOCK_DGRAM icmp` — what the audit log and the logs show.
pub fn describe(kind: &SocketKind) -> String {
    let family = match kind.family {
        AF_INET => "AF_INET".to_owned(),
        AF_INET6 => "AF_INET6".to_owned(),
        f => format!("family {f}"),
    };
    let type_ = match kind.type_ {
        STREAM => "SOCK_STREAM".to_owned(),
        DGRAM => "SOCK_DGRAM".to_owned(),
        RAW => "SOCK_RAW".to_owned(),
        SEQPACKET => "SOCK_SEQPACKET".to_owned(),
        DCCP => "SOCK_DCCP".to_owned(),
        t => format!("type {t}"),
    };
    let protocol = match kind.protocol as i32 {
        libc::IPPROTO_IP => "ip".to_owned(),
        libc::IPPROTO_ICMP => "icmp".to_owned(),
        libc::IPPROTO_IGMP => "igmp".to_owned(),
        libc::IPPROTO_TCP => "tcp".to_owned(),
        libc::IPPROTO_UDP => "udp".to_owned(),
        libc::IPPROTO_DCCP => "dccp".to_owned(),
        libc::IPPROTO_ICMPV6 => "icmpv6".to_owned(),
        libc::IPPROTO_SCTP => "sctp".to_owned(),
        libc::IPPROTO_UDPLITE => "udplite".to_owned(),
        libc::IPPROTO_RAW => "raw".to_owned(),
        libc::IPPROTO_MPTCP => "mptcp".to_owned(),
        p => format!("protocol {p}"),
    };
    format!("{family} {type_} {protocol}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_descriptions() {
        assert_eq!(
            allowed_by("icmp"),
            Some(&[kind(AF_INET, DGRAM, 1)][..]),
            "a ping socket is SOCK_DGRAM with IPPROTO_ICMP"
        );
        assert!(allowed_by("tcp").is_none(), "TCP needs no allowing");
        assert!(allowed_by("ICMP").is_none());
        assert_eq!(
            describe(&kind(AF_INET6, RAW, 58)),
            "AF_INET6 SOCK_RAW icmpv6"
        );
        assert_eq!(
            describe(&kind(AF_INET, STREAM, 262)),
            "AF_INET SOCK_STREAM mptcp"
        );
        assert_eq!(describe(&kind(99, 42, 7)), "family 99 type 42 protocol 7");
    }
}
