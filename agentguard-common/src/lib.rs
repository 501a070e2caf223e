//! Map keys and values shared by the kernel programs (agentguard-ebpf) and the
//! daemon. Every type is `#[repr(C)]` with explicit padding fields so the byte
//! layout is identical on both sides and no uninitialised padding reaches a
//! map key (the kernel hashes every byte of a key).
#![no_std]

/// Where the kernel programs find the proxy. The loader overrides these
/// globals; `PROXY_PORT` is in host byte order.
pub const GLOBAL_PROXY_PORT: &str = "PROXY_PORT";

/// Map names, also the file names of the pinned maps under the bpffs folder.
pub const MAP_COOKIE_ORIGINS: &str = "COOKIE_ORIGINS";
pub const MAP_ORIGINS: &str = "ORIGINS";
pub const MAP_DNS_RESOLVERS: &str = "DNS_RESOLVERS";
pub const MAP_COUNTERS: &str = "COUNTERS";

/// Program names (the Rust function names in agentguard-ebpf).
pub const PROG_CONNECT4: &str = "connect4";
pub const PROG_CONNECT6: &str = "connect6";
pub const PROG_SENDMSG4: &str = "sendmsg4";
pub const PROG_SENDMSG6: &str = "sendmsg6";
pub const PROG_SOCK_OPS: &str = "sock_ops";
/// `cgroup/sock_create`: refuses, at `socket()`, every AF_INET/AF_INET6 kind
/// the data path cannot see (ICMP, raw, SCTP, …).
pub const PROG_SOCK_CREATE: &str = "sock_create";
/// Socket kinds the config allows beyond TCP and UDP (`[sockets] allow`).
pub const MAP_SOCKET_ALLOW: &str = "SOCKET_ALLOW";
/// Refused socket creations, UDP sends and other connects, for the audit log.
pub const MAP_SOCKET_REFUSALS: &str = "SOCKET_REFUSALS";
pub const SOCKET_ALLOW_ENTRIES: u32 = 64;

/// The unix-socket guard (kernel 6.7+): its own object (`agentguard-unix`),
/// loaded apart so that older kernels run everything else.
pub const PROG_CONNECT_UNIX: &str = "connect_unix";
pub const PROG_SENDMSG_UNIX: &str = "sendmsg_unix";
/// The one program in that object, loaded once per attach type.
pub const PROG_UNIX_GUARD: &str = "unix_guard";
pub const MAP_UNIX_ALLOW: &str = "UNIX_ALLOW";
pub const MAP_UNIX_REFUSALS: &str = "UNIX_REFUSALS";
pub const UNIX_ALLOW_ENTRIES: u32 = 1024;
/// `sun_path` of `struct sockaddr_un`.
pub const UNIX_PATH_MAX: usize = 108;

/// Bounds of the LRU maps. An LRU map evicts instead of failing an insert, so
/// a flood of connects can never make the hook start refusing (or, worse,
/// passing) connections; 64k in-flight handshakes is far beyond one host's use.
pub const ORIGIN_MAP_ENTRIES: u32 = 65_536;
pub const DNS_RESOLVER_ENTRIES: u32 = 64;

/// An IP address as the kernel stores it: 16 bytes in network order, IPv4 as
/// v4-mapped IPv6 (`::ffff:a.b.c.d`), so one key type serves both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Addr {
    pub words: [u32; 4],
}

/// The client side of a redirected connection as the proxy sees its peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub addr: Addr,
    /// Host byte order.
    pub port: u16,
    /// Explicit padding: a key's every byte is hashed.
    pub _pad: u16,
}

/// What the connect hook learned about a connection: where the agent meant to
/// go and who asked.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub dst: Addr,
    /// Host byte order.
    pub dst_port: u16,
    /// `AF_INET` or `AF_INET6`: the family the agent's socket used (a
    /// v4-mapped destination comes from an `AF_INET6` socket).
    pub family: u16,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
}

/// A unix socket address as the kernel resolves it: a path up to its first
/// NUL, or an abstract name (leading NUL, then exactly `len - 1` bytes).
/// Bytes past `len` are zero, so equal addresses are equal keys.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixPath {
    pub len: u32,
    pub path: [u8; UNIX_PATH_MAX],
}

impl UnixPath {
    pub const EMPTY: Self = Self {
        len: 0,
        path: [0; UNIX_PATH_MAX],
    };

    /// A configured name: `/a/path`, or `@name` for an abstract socket.
    /// `None`: too long, empty, or a path with a NUL in it.
    pub fn parse(name: &str) -> Option<Self> {
        let mut key = Self::EMPTY;
        let bytes = name.as_bytes();
        let (at, raw) = match bytes.split_first() {
            Some((b'@', rest)) => (1, rest),
            Some(_) if !bytes.contains(&0) => (0, bytes),
            _ => return None,
        };
        let len = at + raw.len();
        if len > UNIX_PATH_MAX || raw.is_empty() {
            return None;
        }
        key.path[at..len].copy_from_slice(raw);
        key.len = len as u32;
        Some(key)
    }
}

/// A refused unix-socket connect or send, for the audit log.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnixRefusal {
    pub path: UnixPath,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
}

/// An AF_INET/AF_INET6 socket kind as `socket(2)` resolves it. `protocol`
/// is [`SocketKind::ANY_PROTOCOL`] in an allow entry that covers every
/// protocol of that family and type (`raw`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SocketKind {
    pub family: u16,
    /// `SOCK_STREAM`, `SOCK_DGRAM`, … (without SOCK_NONBLOCK/SOCK_CLOEXEC:
    /// the kernel strips them before the hook).
    pub type_: u16,
    pub protocol: u32,
}

impl SocketKind {
    pub const ANY_PROTOCOL: u32 = u32::MAX;
}

/// Why the kernel refused: at `socket()`, a UDP datagram or connect that is
/// not DNS to a resolver, or a connect of some other socket type.
pub mod refusal {
    pub const SOCKET_CREATE: u32 = 1;
    pub const UDP: u32 = 2;
    pub const OTHER_CONNECT: u32 = 3;
}

/// A refusal the main programs report on `SOCKET_REFUSALS`. Fields are
/// ordered so that there is no implicit padding (the verifier rejects a
/// helper reading uninitialised stack).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SocketRefusal {
    pub cgroup_id: u64,
    /// One of [`refusal`].
    pub what: u32,
    pub tgid: u32,
    /// The socket's kind (`protocol` is 0 where the hook does not see it).
    pub kind: SocketKind,
    /// Destination, for UDP and connects (zero for a refused `socket()`).
    pub dst: Addr,
    /// Host byte order.
    pub dst_port: u16,
    pub _pad: u16,
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; 16],
    pub _pad2: u32,
}

/// Indexes into the per-CPU `COUNTERS` array.
pub mod counter {
    pub const REDIRECTED_V4: u32 = 0;
    pub const REDIRECTED_V6: u32 = 1;
    pub const ORIGIN_HANDED_OFF: u32 = 2;
    pub const UDP_REFUSED: u32 = 3;
    pub const DNS_ALLOWED: u32 = 4;
    pub const OTHER_REFUSED: u32 = 5;
    pub const SOCKET_REFUSED: u32 = 6;
    pub const COUNT: u32 = 7;
    pub const NAMES: [&str; COUNT as usize] = [
        "redirected_v4",
        "redirected_v6",
        "origin_handed_off",
        "udp_refused",
        "dns_allowed",
        "other_refused",
        "socket_refused",
    ];
}

impl Addr {
    /// `::ffff:0:0/96` prefix word, in network byte order.
    pub const V4_MAPPED_PREFIX: u32 = u32::from_be(0x0000_ffff);

    /// `ip` is in network byte order, as the kernel hands it out.
    pub const fn v4_mapped(ip: u32) -> Self {
        Self {
            words: [0, 0, Self::V4_MAPPED_PREFIX, ip],
        }
    }

    pub const fn is_v4_mapped(&self) -> bool {
        self.words[0] == 0 && self.words[1] == 0 && self.words[2] == Self::V4_MAPPED_PREFIX
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` data with explicit padding; any byte pattern is valid.
    unsafe impl aya::Pod for super::Addr {}
    unsafe impl aya::Pod for super::SockKey {}
    unsafe impl aya::Pod for super::Origin {}
    unsafe impl aya::Pod for super::UnixPath {}
    unsafe impl aya::Pod for super::UnixRefusal {}
    unsafe impl aya::Pod for super::SocketKind {}
    unsafe impl aya::Pod for super::SocketRefusal {}
}
