//! The bpf(2) commands aya 0.14 does not expose for pinned links: open a
//! pinned object, swap a link's program atomically, force-detach; and the
//! effective-program query the control socket uses to spot agents.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

// Values of enum bpf_cmd (include/uapi/linux/bpf.h).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_LINK_UPDATE: libc::c_long = 29;
/// The kernel-internal ENOTSUPP, which bpf(2) can return as is.
const KERNEL_ENOTSUPP: i32 = 524;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_PROG_QUERY: libc::c_long = 16;
/// enum bpf_attach_type.
pub const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_F_QUERY_EFFECTIVE: u64 = 1;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 4]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-initialised buffer at least as large as the
    // union member each command reads; its size is passed along.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens a pinned program, map or link.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // union bpf_attr { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; ... }
    let mut attr = [c.as_ptr() as u64, 0, 0, 0];
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Atomically replaces the program behind a link: no moment where the
/// cgroup runs without a redirect.
pub fn link_update(link: &impl AsFd, new_prog: &impl AsFd) -> io::Result<()> {
    // { __u32 link_fd; __u32 new_prog_fd; __u32 flags; __u32 old_prog_fd; }
    let lo = link.as_fd().as_raw_fd() as u32 as u64;
    let hi = (new_prog.as_fd().as_raw_fd() as u32 as u64) << 32;
    let mut attr = [lo | hi, 0, 0, 0];
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// Detaches a link even while other references to it exist.
pub fn link_detach(link: &impl AsFd) -> io::Result<()> {
    let mut attr = [link.as_fd().as_raw_fd() as u32 as u64, 0, 0, 0];
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

/// Looks a key up and deletes it in one step (hash maps: kernel 5.14+), so
/// the proxy's origin lookup costs one syscall and needs no lock. Falls back
/// to lookup + delete where the kernel lacks it. `Ok(None)`: no such key.
pub fn map_take<K: Copy, V: Copy>(map: &impl AsFd, key: &K) -> io::Result<Option<V>> {
    let mut value = std::mem::MaybeUninit::<V>::uninit();
    // { __u32 map_fd; __aligned_u64 key; __aligned_u64 value; __u64 flags; }
    let mut attr = [
        map.as_fd().as_raw_fd() as u32 as u64,
        std::ptr::from_ref(key) as u64,
        value.as_mut_ptr() as u64,
        0,
    ];
    let found = match bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) {
        Ok(_) => true,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | KERNEL_ENOTSUPP | libc::EOPNOTSUPP)
            ) =>
        {
            match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
                Ok(_) => {
                    let mut del = [attr[0], attr[1], 0, 0];
                    let _ = bpf(BPF_MAP_DELETE_ELEM, &mut del);
                    true
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    // SAFETY: the kernel wrote a whole value of the map's value size, which is
    // size_of::<V>() (both sides use the same #[repr(C)] type).
    Ok(found.then(|| unsafe { value.assume_init() }))
}

/// Ids of the programs that run for `cgroup` (an open cgroup directory) on
/// `attach_type`, its ancestors' included.
pub fn prog_query_effective(cgroup: &impl AsFd, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    // { __u32 target_fd; __u32 attach_type; __u32 query_flags;
    //   __u32 attach_flags; __aligned_u64 prog_ids; __u32 prog_cnt; }
    let mut attr = [
        u64::from(cgroup.as_fd().as_raw_fd() as u32) | (u64::from(attach_type) << 32),
        BPF_F_QUERY_EFFECTIVE,
        ids.as_mut_ptr() as u64,
        ids.len() as u64,
    ];
    bpf(BPF_PROG_QUERY, &mut attr)?;
    let count = (attr[3] & 0xffff_ffff) as usize;
    ids.truncate(count.min(64));
    Ok(ids)
}
