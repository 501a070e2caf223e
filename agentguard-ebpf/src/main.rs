//! Kernel side of agentguard.
//!
//! Attached to an agent's cgroup, these programs make every TCP connect go to
//! the local proxy and refuse UDP other than DNS to the configured resolvers:
//!
//! 1. `connect4`/`connect6` (cgroup/connect): remember the original
//!    destination and who is connecting under the socket cookie, then rewrite
//!    the destination to the proxy's listener on loopback.
//! 2. `sock_ops` at ACTIVE_ESTABLISHED: move that record to `ORIGINS`, keyed
//!    by the client's local address and port, which is what the proxy sees as
//!    the peer of the accepted socket.
//! 3. `sendmsg4`/`sendmsg6` and the UDP branch of connect: DNS only.
//! 4. `sock_create` (cgroup/sock_create): at `socket()`, refuse every
//!    AF_INET/AF_INET6 kind other than TCP and UDP (ICMP "ping" sockets,
//!    raw sockets, SCTP, UDP-Lite, DCCP, MPTCP, …): the hooks above only see
//!    TCP and UDP, so anything else would leave the host unseen. The config
//!    can allow more kinds (`SOCKET_ALLOW`).
//!
//! Every refusal is reported on `SOCKET_REFUSALS` for the audit log.
//!
//! The daemon pins the maps under its bpffs folder, so a restarted daemon keeps the same maps and
//! a dead daemon leaves the redirect in place (connects then get "connection
//! refused": fail closed).
#![no_std]
#![no_main]

use agentguard_common::{
    Addr, DNS_RESOLVER_ENTRIES, ORIGIN_MAP_ENTRIES, Origin, SOCKET_ALLOW_ENTRIES, SockKey,
    SocketKind, SocketRefusal, counter, refusal,
};
use aya_ebpf::{
    EbpfContext, Global,
    bindings::{BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, bpf_sock_addr},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, generated::bpf_get_socket_cookie,
    },
    macros::{cgroup_sock, cgroup_sock_addr, map, sock_ops},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{SockAddrContext, SockContext, SockOpsContext},
};
use aya_log_ebpf::{debug, info};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const DNS_PORT: u16 = 53;

/// cgroup/connect and sendmsg return codes: 1 lets the call go on, 0 fails it
/// with EPERM.
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

/// Overridden by the loader (host byte order).
#[unsafe(no_mangle)]
static PROXY_PORT: Global<u16> = Global::new(0);

/// Socket cookie → origin, from connect until the handshake completes.
#[map]
static COOKIE_ORIGINS: LruHashMap<u64, Origin> =
    LruHashMap::with_max_entries(ORIGIN_MAP_ENTRIES, 0);

/// Client local address+port → origin, read (and removed) by the proxy on accept.
#[map]
static ORIGINS: LruHashMap<SockKey, Origin> = LruHashMap::with_max_entries(ORIGIN_MAP_ENTRIES, 0);

/// Resolver addresses that UDP port 53 may reach.
#[map]
static DNS_RESOLVERS: HashMap<Addr, u8> = HashMap::with_max_entries(DNS_RESOLVER_ENTRIES, 0);

/// Socket kinds beyond TCP and UDP that the config allows.
#[map]
static SOCKET_ALLOW: HashMap<SocketKind, u8> = HashMap::with_max_entries(SOCKET_ALLOW_ENTRIES, 0);

/// Refusals, for the daemon's audit log. A full ring drops the report,
/// never the refusal.
#[map]
static SOCKET_REFUSALS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, nothing else on this CPU touches it concurrently.
        unsafe { *slot += 1 };
    }
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sock_addr for the program's lifetime.
    let sa = unsafe { &mut *ctx.sock_addr };
    let dst = Addr::v4_mapped(sa.user_ip4);
    let port = u16::from_be(sa.user_port as u16);
    match sa.type_ {
        SOCK_STREAM => {
            if redirect(&ctx, sa, dst, port, AF_INET) {
                sa.user_ip4 = u32::from_be(0x7f00_0001);
                sa.user_port = u32::from(proxy_port().to_be());
                count(counter::REDIRECTED_V4);
            }
            ALLOW
        }
        SOCK_DGRAM => udp_verdict(&ctx, sa, dst, port),
        _ => refuse_other(&ctx, sa, dst, port),
    }
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in connect4.
    let sa = unsafe { &mut *ctx.sock_addr };
    let dst = Addr {
        words: read_ip6(sa),
    };
    let port = u16::from_be(sa.user_port as u16);
    match sa.type_ {
        SOCK_STREAM => {
            if redirect(&ctx, sa, dst, port, AF_INET6) {
                // A v4-mapped destination must stay v4-mapped: an IPv6 socket
                // that is only allowed to speak IPv4 (or a v4-only host) cannot
                // reach ::1, and the proxy listens on both.
                let proxy = if dst.is_v4_mapped() {
                    Addr::v4_mapped(u32::from_be(0x7f00_0001)).words
                } else {
                    [0, 0, 0, u32::from_be(1)]
                };
                write_ip6(sa, proxy);
                sa.user_port = u32::from(proxy_port().to_be());
                count(counter::REDIRECTED_V6);
            }
            ALLOW
        }
        SOCK_DGRAM => udp_verdict(&ctx, sa, dst, port),
        _ => refuse_other(&ctx, sa, dst, port),
    }
}

/// Only UDP reaches the sendmsg hooks.
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in connect4.
    let sa = unsafe { &*ctx.sock_addr };
    udp_verdict(
        &ctx,
        sa,
        Addr::v4_mapped(sa.user_ip4),
        u16::from_be(sa.user_port as u16),
    )
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in connect4.
    let sa = unsafe { &*ctx.sock_addr };
    udp_verdict(
        &ctx,
        sa,
        Addr {
            words: read_ip6(sa),
        },
        u16::from_be(sa.user_port as u16),
    )
}

// The verifier only allows 4-byte ctx accesses at fixed offsets; a plain
// array copy of user_ip6 is rejected with
// "dereference of modified ctx ptr R2 off=8 disallowed".
#[inline(always)]
fn read_ip6(sa: &bpf_sock_addr) -> [u32; 4] {
    // SAFETY: fields of the live ctx, read one word at a time.
    unsafe {
        [
            core::ptr::read_volatile(&sa.user_ip6[0]),
            core::ptr::read_volatile(&sa.user_ip6[1]),
            core::ptr::read_volatile(&sa.user_ip6[2]),
            core::ptr::read_volatile(&sa.user_ip6[3]),
        ]
    }
}

#[inline(always)]
fn write_ip6(sa: &mut bpf_sock_addr, words: [u32; 4]) {
    // SAFETY: as in read_ip6.
    unsafe {
        core::ptr::write_volatile(&mut sa.user_ip6[0], words[0]);
        core::ptr::write_volatile(&mut sa.user_ip6[1], words[1]);
        core::ptr::write_volatile(&mut sa.user_ip6[2], words[2]);
        core::ptr::write_volatile(&mut sa.user_ip6[3], words[3]);
    }
}

#[inline(always)]
fn proxy_port() -> u16 {
    PROXY_PORT.load()
}

#[inline(always)]
fn is_proxy(dst: &Addr, port: u16) -> bool {
    port == proxy_port()
        && (*dst == Addr::v4_mapped(u32::from_be(0x7f00_0001))
            || dst.words == [0, 0, 0, u32::from_be(1)])
}

/// Records the origin under the socket cookie. Returns whether the caller
/// should rewrite the destination.
#[inline(always)]
fn redirect(ctx: &SockAddrContext, _sa: &bpf_sock_addr, dst: Addr, port: u16, family: u16) -> bool {
    // SAFETY: bpf_get_socket_cookie is allowed for cgroup/connect programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // When two of our programs run for one connect (nested attached cgroups),
    // the first already rewrote to the proxy and recorded the real origin:
    // keep that record. A direct dial of the proxy port with no record is
    // recorded as such, and the proxy refuses it.
    // SAFETY: the value is only read, and copied before the map changes.
    if is_proxy(&dst, port) && unsafe { COOKIE_ORIGINS.get(&cookie) }.is_some() {
        return false;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let origin = Origin {
        dst,
        dst_port: port,
        family,
        tgid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        // SAFETY: helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    // An LRU insert evicts rather than fails; if it did fail the connection
    // reaches the proxy without a record and is refused there.
    let _ = COOKIE_ORIGINS.insert(&cookie, &origin, 0);
    debug!(
        ctx,
        "connect redirected: tgid {} to port {}", origin.tgid, port
    );
    true
}

#[inline(always)]
fn udp_verdict(ctx: &SockAddrContext, sa: &bpf_sock_addr, dst: Addr, port: u16) -> i32 {
    // SAFETY: only read.
    if port == DNS_PORT && unsafe { DNS_RESOLVERS.get(&dst) }.is_some() {
        count(counter::DNS_ALLOWED);
        return ALLOW;
    }
    count(counter::UDP_REFUSED);
    report(refusal::UDP, kind_of(sa), dst, port);
    info!(
        ctx,
        "udp refused: tgid {} to port {}",
        (bpf_get_current_pid_tgid() >> 32) as u32,
        port
    );
    REFUSE
}

/// Raw and other socket types that reach connect: nothing an agent needs.
/// (`sock_create` refuses them first; this stays for kinds the config allows.)
#[inline(always)]
fn refuse_other(ctx: &SockAddrContext, sa: &bpf_sock_addr, dst: Addr, port: u16) -> i32 {
    count(counter::OTHER_REFUSED);
    report(refusal::OTHER_CONNECT, kind_of(sa), dst, port);
    info!(
        ctx,
        "non-TCP/UDP connect refused: tgid {}",
        (bpf_get_current_pid_tgid() >> 32) as u32
    );
    REFUSE
}

#[inline(always)]
fn kind_of(sa: &bpf_sock_addr) -> SocketKind {
    SocketKind {
        family: sa.family as u16,
        type_: sa.type_ as u16,
        protocol: sa.protocol,
    }
}

/// Runs at the end of `socket()` for AF_INET and AF_INET6 only (the kernel
/// calls this hook from inet_create/inet6_create); other families are
/// covered, or not, as docs/threat-model.md says. `protocol` is already
/// resolved (0 has become IPPROTO_TCP / IPPROTO_UDP), so the allow list is
/// exact: a ping socket is SOCK_DGRAM with IPPROTO_ICMP, and is refused.
#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sock for the program's lifetime.
    let sk = unsafe { &*ctx.sock };
    let kind = SocketKind {
        family: sk.family as u16,
        type_: sk.type_ as u16,
        protocol: sk.protocol,
    };
    if socket_allowed(&kind) {
        return ALLOW;
    }
    count(counter::SOCKET_REFUSED);
    report(refusal::SOCKET_CREATE, kind, Addr::default(), 0);
    REFUSE
}

#[inline(always)]
fn socket_allowed(kind: &SocketKind) -> bool {
    if kind.family != AF_INET && kind.family != AF_INET6 {
        // Not reached today; never break AF_UNIX should a kernel start
        // running the hook for it (the unix guard decides those).
        return true;
    }
    match (u32::from(kind.type_), kind.protocol) {
        (SOCK_STREAM, IPPROTO_TCP) | (SOCK_DGRAM, IPPROTO_UDP) => return true,
        _ => {}
    }
    let any = SocketKind {
        protocol: SocketKind::ANY_PROTOCOL,
        ..*kind
    };
    // SAFETY: only read.
    unsafe { SOCKET_ALLOW.get(kind).is_some() || SOCKET_ALLOW.get(&any).is_some() }
}

#[inline(always)]
fn report(what: u32, kind: SocketKind, dst: Addr, dst_port: u16) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let event = SocketRefusal {
        // SAFETY: helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        what,
        tgid: (pid_tgid >> 32) as u32,
        kind,
        dst,
        dst_port,
        _pad: 0,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        _pad2: 0,
    };
    let _ = SOCKET_REFUSALS.output::<SocketRefusal>(&event, 0);
}

#[sock_ops]
pub fn sock_ops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        hand_off(&ctx);
    }
    // sock_ops' return value only matters for ops that ask for a reply.
    1
}

/// Client side handshake done: the local port is final now. The proxy's
/// accept cannot return before this runs, since the client's final ACK is
/// sent after this callback.
#[inline(always)]
fn hand_off(ctx: &SockOpsContext) {
    // SAFETY: bpf_get_socket_cookie is allowed for sock_ops.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out before the map changes.
    let Some(origin) = (unsafe { COOKIE_ORIGINS.get(&cookie) }).copied() else {
        return;
    };
    let addr = if ctx.family() == u32::from(AF_INET) {
        Addr::v4_mapped(ctx.local_ip4())
    } else {
        // SAFETY: as in read_ip6, word by word.
        let ops = unsafe { &*ctx.ops };
        Addr {
            words: unsafe {
                [
                    core::ptr::read_volatile(&ops.local_ip6[0]),
                    core::ptr::read_volatile(&ops.local_ip6[1]),
                    core::ptr::read_volatile(&ops.local_ip6[2]),
                    core::ptr::read_volatile(&ops.local_ip6[3]),
                ]
            },
        }
    };
    let key = SockKey {
        addr,
        port: ctx.local_port() as u16,
        _pad: 0,
    };
    if ORIGINS.insert(&key, &origin, 0).is_ok() {
        count(counter::ORIGIN_HANDED_OFF);
    }
    let _ = COOKIE_ORIGINS.remove(&cookie);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
