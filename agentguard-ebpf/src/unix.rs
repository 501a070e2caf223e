//! The unix-socket guard: `cgroup/connect_unix` and `cgroup/sendmsg_unix`
//! (kernel 6.7+). An agent may connect (or send a datagram) only to the unix
//! sockets in `UNIX_ALLOW`; anything else fails with EPERM and is reported
//! on `UNIX_REFUSALS` for the audit log.
//!
//! Its own object: aya 0.14 knows neither attach type, and an older kernel
//! must still run the main programs. The daemon loads the one program here
//! twice, once per attach type (`agentguard/src/unixguard.rs`). Its section
//! name is one aya's object parser accepts; the loader ignores it.
//!
//! Allow, not deny: the check is on the address as the agent spelled it,
//! so a deny list falls to a symlink or a relative path, while an unknown
//! spelling of an allowed socket is merely refused.
#![no_std]
#![no_main]

use agentguard_common::{UNIX_ALLOW_ENTRIES, UNIX_PATH_MAX, UnixPath, UnixRefusal};
use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
    },
    macros::map,
    maps::{HashMap, RingBuf},
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
const AF_UNIX: u32 = 1;

#[map]
static UNIX_ALLOW: HashMap<UnixPath, u8> = HashMap::with_max_entries(UNIX_ALLOW_ENTRIES, 0);

#[map]
static UNIX_REFUSALS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// The kernel's `struct bpf_sock_addr_kern` (include/linux/filter.h, 6.7+),
/// which is what the program's context points at. The unix path is not in
/// the UAPI `bpf_sock_addr`, so it is read from here; the loader checks
/// these offsets against the running kernel's BTF before loading.
#[repr(C)]
struct SockAddrKern {
    sk: u64,
    uaddr: u64,
    tmp_reg: u64,
    t_ctx: u64,
    uaddrlen: u32,
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "cgroup/connect4")]
pub fn unix_guard(ctx: *mut bpf_sock_addr) -> i32 {
    // SAFETY: the context is a live bpf_sock_addr for the program's run.
    let family = unsafe { (*ctx).user_family };
    if family != AF_UNIX {
        return REFUSE;
    }
    // SAFETY: probe reads of kernel memory; a failed read refuses.
    let Ok(kern) = (unsafe { bpf_probe_read_kernel(ctx.cast::<SockAddrKern>().cast_const()) })
    else {
        return REFUSE;
    };
    let mut event = UnixRefusal {
        path: UnixPath::EMPTY,
        tgid: 0,
        uid: 0,
        gid: 0,
        _pad: 0,
        cgroup_id: 0,
        comm: [0; 16],
    };
    let key = &mut event.path;
    // sun_path follows the 2-byte sun_family.
    let src = (kern.uaddr + 2) as *const u8;
    // SAFETY: as above; the kernel copied the address into a
    // sockaddr_storage (128 bytes), so 2 + 108 bytes are readable.
    if unsafe { bpf_probe_read_kernel_buf(src, &mut key.path) }.is_err() {
        return REFUSE;
    }
    // What the kernel will resolve: a path ends at its first NUL (or the
    // address length); an abstract name is exactly the address length.
    let given = (kern.uaddrlen as usize)
        .saturating_sub(2)
        .min(UNIX_PATH_MAX);
    let is_abstract = given > 0 && key.path[0] == 0;
    let mut len = 0u32;
    let mut ended = false;
    for (i, b) in key.path.iter_mut().enumerate() {
        if i >= given || (!is_abstract && *b == 0) {
            ended = true;
        }
        if ended {
            *b = 0;
        } else {
            len += 1;
        }
    }
    key.len = len;
    // SAFETY: only read.
    if unsafe { UNIX_ALLOW.get(&event.path) }.is_some() {
        return ALLOW;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    event.tgid = (pid_tgid >> 32) as u32;
    event.uid = uid_gid as u32;
    event.gid = (uid_gid >> 32) as u32;
    // SAFETY: helper without arguments.
    event.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    event.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    // A full ring drops the report, never the refusal.
    let _ = UNIX_REFUSALS.output::<UnixRefusal>(&event, 0);
    REFUSE
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
