//! The unix-socket guard (kernel 6.7+): `cgroup/connect_unix` and
//! `cgroup/sendmsg_unix` refuse an agent's connects and datagrams to any
//! unix socket outside `[unix_sockets] allow`, so a local service (the
//! PostgreSQL socket, the Docker socket, D-Bus, agentguard's own control
//! socket) cannot be reached around the proxy.
//!
//! aya 0.14 knows neither attach type, so the program (agentguard-ebpf's
//! `agentguard-unix` object) is parsed and relocated with aya-obj, its maps
//! made with aya, and it is loaded and linked with raw bpf(2) calls
//! (`bpfsys`). A kernel without the attach types (before 6.7) runs
//! everything else; `status` then says unix sockets are not guarded.

use std::{
    collections::HashSet,
    io,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::Mutex,
};

use agentguard_common::{
    MAP_UNIX_ALLOW, MAP_UNIX_REFUSALS, PROG_CONNECT_UNIX, PROG_SENDMSG_UNIX, PROG_UNIX_GUARD,
    UnixPath,
};
use aya::maps::{HashMap, Map, MapData, RingBuf};
use tokio::sync::mpsc;

use crate::{
    bpfsys,
    refusals::{self, KernelRefusal},
};

static UNIX_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agentguard-unix"));

const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
/// enum bpf_attach_type values (include/uapi/linux/bpf.h, 6.7+).
const BPF_CGROUP_UNIX_CONNECT: u32 = 49;
const BPF_CGROUP_UNIX_SENDMSG: u32 = 50;
pub const PROGRAMS: [(&str, u32); 2] = [
    (PROG_CONNECT_UNIX, BPF_CGROUP_UNIX_CONNECT),
    (PROG_SENDMSG_UNIX, BPF_CGROUP_UNIX_SENDMSG),
];
/// Offsets (bits) of `uaddr` and `uaddrlen` in the kernel's
/// `struct bpf_sock_addr_kern` that the program reads.
const LAYOUT: [(&str, u32); 2] = [("uaddr", 64), ("uaddrlen", 256)];

/// Sockets agents need for ordinary tools and cannot misuse to reach
/// a guarded service: name-service caching and logging.
pub const DEFAULT_ALLOW: [&str; 5] = [
    "/run/nscd/socket",
    "/var/run/nscd/socket",
    "/run/systemd/journal/socket",
    "/run/systemd/journal/dev-log",
    "/dev/log",
];

#[derive(Debug, thiserror::Error)]
pub enum UnixGuardError {
    #[error(
        "the kernel lacks cgroup/connect_unix (Linux 6.7+): agents' unix-socket connects are NOT guarded"
    )]
    Unsupported,
    #[error(
        "cannot check the kernel's bpf_sock_addr_kern layout ({0}): agents' unix-socket connects are NOT guarded"
    )]
    Layout(String),
    #[error("unix-socket guard: {0}")]
    Load(String),
}

impl UnixGuardError {
    /// The kernel cannot run the guard (as opposed to a failure to load it).
    pub fn unavailable(&self) -> bool {
        matches!(self, Self::Unsupported | Self::Layout(_))
    }
}

pub struct UnixGuard {
    progs: Vec<(&'static str, u32, OwnedFd)>,
    _allow: HashMap<MapData, UnixPath, u8>,
    refusals: Mutex<Option<RingBuf<MapData>>>,
}

fn load_err(what: &str) -> impl FnOnce(io::Error) -> UnixGuardError + '_ {
    move |e| UnixGuardError::Load(format!("{what}: {e}"))
}

impl UnixGuard {
    /// `pin_dir`: the maps are pinned under `maps/` and reused by the next
    /// load, so the daemon's reader keeps draining the same refusal ring
    /// whoever reloads the programs (a restart, `agentguard attach`).
    pub fn load(allow: &[String], pin_dir: Option<&Path>) -> Result<Self, UnixGuardError> {
        probe()?;

        let mut obj = aya_obj::Object::parse(UNIX_OBJECT)
            .map_err(|e| UnixGuardError::Load(format!("object: {e}")))?;
        let mut maps: Vec<(String, MapData)> = Vec::new();
        for (name, def) in &obj.maps {
            let map_err =
                |e: &dyn std::fmt::Display| UnixGuardError::Load(format!("map {name}: {e}"));
            let pin = pin_dir.map(|d| d.join("maps").join(name));
            let data = match pin {
                Some(path) if path.exists() => MapData::from_pin(&path).map_err(|e| map_err(&e))?,
                _ => {
                    let data = MapData::create(def.clone(), name, None).map_err(|e| map_err(&e))?;
                    if let Some(path) = pin {
                        data.pin(&path).map_err(|e| map_err(&e))?;
                    }
                    data
                }
            };
            maps.push((name.clone(), data));
        }
        let defs = obj.maps.clone();
        let text: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
        obj.relocate_maps(
            maps.iter().filter_map(|(name, data)| {
                Some((
                    name.as_str(),
                    data.fd().as_fd().as_raw_fd(),
                    defs.get(name)?,
                ))
            }),
            &text,
        )
        .map_err(|e| UnixGuardError::Load(format!("relocation: {e}")))?;
        obj.relocate_calls(&text)
            .map_err(|e| UnixGuardError::Load(format!("relocation: {e}")))?;
        let prog = obj
            .programs
            .get(PROG_UNIX_GUARD)
            .ok_or_else(|| UnixGuardError::Load(format!("no {PROG_UNIX_GUARD} in the object")))?;
        let insns: Vec<[u8; 8]> = obj
            .functions
            .get(&prog.function_key())
            .ok_or_else(|| UnixGuardError::Load("no program body".into()))?
            .instructions
            .iter()
            // SAFETY: bpf_insn is the kernel's 8-byte instruction, plain data.
            .map(|i| unsafe { std::mem::transmute_copy::<_, [u8; 8]>(i) })
            .collect();

        let mut progs = Vec::new();
        for (name, attach_type) in PROGRAMS {
            let fd = bpfsys::prog_load(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, attach_type, &insns, name)
                .map_err(load_err(name))?;
            progs.push((name, attach_type, fd));
        }

        let mut take = |name: &str| {
            let i = maps.iter().position(|(n, _)| n == name);
            i.map(|i| maps.swap_remove(i).1)
                .ok_or_else(|| UnixGuardError::Load(format!("no map {name}")))
        };
        let allow_data = take(MAP_UNIX_ALLOW)?;
        let refusals = RingBuf::try_from(Map::RingBuf(take(MAP_UNIX_REFUSALS)?))
            .map_err(|e| UnixGuardError::Load(format!("{MAP_UNIX_REFUSALS}: {e}")))?;
        let mut allowed: HashMap<MapData, UnixPath, u8> =
            HashMap::try_from(Map::HashMap(allow_data))
                .map_err(|e| UnixGuardError::Load(format!("{MAP_UNIX_ALLOW}: {e}")))?;
        // Config::resolve checked every entry.
        let wanted = allow
            .iter()
            .map(|name| {
                UnixPath::parse(name).ok_or_else(|| {
                    UnixGuardError::Load(format!("bad unix_sockets.allow entry `{name}`"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A reused map is live: add first, then drop what is no longer
        // listed, so an allowed socket is never refused in between.
        for key in &wanted {
            allowed
                .insert(key, 1, 0)
                .map_err(|e| UnixGuardError::Load(format!("{MAP_UNIX_ALLOW}: {e}")))?;
        }
        let stale: Vec<UnixPath> = allowed
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(k))
            .collect();
        for key in stale {
            let _ = allowed.remove(&key);
        }
        Ok(Self {
            progs,
            _allow: allowed,
            refusals: Mutex::new(Some(refusals)),
        })
    }

    /// (name, program) pairs, for pinning and link updates.
    pub fn programs(&self) -> impl Iterator<Item = (&'static str, BorrowedFd<'_>)> {
        self.progs.iter().map(|(name, _, fd)| (*name, fd.as_fd()))
    }

    /// Links both programs to the cgroup.
    pub fn attach(&self, cgroup: &impl AsFd) -> io::Result<Vec<(&'static str, OwnedFd)>> {
        self.progs
            .iter()
            .map(|(name, attach_type, fd)| {
                Ok((*name, bpfsys::link_create(fd, cgroup, *attach_type)?))
            })
            .collect()
    }

    /// The refusals the kernel reports, once (the proxy audits them).
    pub fn refusals(&self, tx: mpsc::Sender<KernelRefusal>) {
        if let Some(ring) = self.refusals.lock().ok().and_then(|mut r| r.take()) {
            refusals::spawn_ring_reader(ring, tx, KernelRefusal::Unix);
        }
    }
}

/// Whether this kernel can run the guard.
pub fn probe() -> Result<(), UnixGuardError> {
    // Does the kernel know the attach type at all? A two-instruction
    // program (r0 = 1; exit) answers without the verifier's opinion.
    let probe = [[0xb7, 0, 0, 0, 1, 0, 0, 0], [0x95, 0, 0, 0, 0, 0, 0, 0]];
    match bpfsys::prog_load(
        BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        BPF_CGROUP_UNIX_CONNECT,
        &probe,
        "ag_unix_probe",
    ) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            return Err(UnixGuardError::Unsupported);
        }
        Err(e) => return Err(UnixGuardError::Load(format!("probe: {e}"))),
    }
    check_layout()?;
    Ok(())
}

/// The program reads two fields of a kernel-internal struct; refuse to run
/// it on a kernel whose BTF says they moved (or that has no BTF).
fn check_layout() -> Result<(), UnixGuardError> {
    let layout = |e: &dyn std::fmt::Display| UnixGuardError::Layout(e.to_string());
    let btf = btf_rs::Btf::from_file("/sys/kernel/btf/vmlinux").map_err(|e| layout(&e))?;
    let types = btf
        .resolve_types_by_name("bpf_sock_addr_kern")
        .map_err(|e| layout(&e))?;
    let Some(btf_rs::Type::Struct(st)) = types
        .into_iter()
        .find(|t| matches!(t, btf_rs::Type::Struct(_)))
    else {
        return Err(layout(&"no struct bpf_sock_addr_kern"));
    };
    for (field, bits) in LAYOUT {
        let found = st
            .members
            .iter()
            .find(|m| btf.resolve_name(*m).is_ok_and(|n| n == field))
            .map(btf_rs::Member::bit_offset);
        if found != Some(bits) {
            return Err(layout(&format!(
                "{field} at bit {found:?}, expected {bits}"
            )));
        }
    }
    Ok(())
}

/// `<path>` of a refusal as configured names are written (`@` for abstract).
pub fn display_path(p: &UnixPath) -> String {
    let len = (p.len as usize).min(p.path.len());
    let bytes = &p.path[..len];
    match bytes.split_first() {
        Some((0, name)) => format!("@{}", String::from_utf8_lossy(name)),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Pinned programs of the guard, where the daemon keeps its programs.
pub fn pin_path(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join("progs").join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_names_become_the_kernels_keys() {
        let p = UnixPath::parse("/run/nscd/socket").expect("path");
        assert_eq!(p.len, 16);
        assert_eq!(&p.path[..16], b"/run/nscd/socket");
        assert!(p.path[16..].iter().all(|&b| b == 0));
        assert_eq!(display_path(&p), "/run/nscd/socket");

        let a = UnixPath::parse("@agent").expect("abstract");
        assert_eq!(a.len, 6);
        assert_eq!(&a.path[..6], b"\0agent");
        assert_eq!(display_path(&a), "@agent");

        assert!(UnixPath::parse("").is_none());
        assert!(UnixPath::parse("@").is_none());
        assert!(UnixPath::parse("/a\0b").is_none());
        assert!(UnixPath::parse(&"x".repeat(108)).is_some());
        assert!(UnixPath::parse(&"x".repeat(109)).is_none());
        assert!(UnixPath::parse(&format!("@{}", "x".repeat(107))).is_some());
        assert!(UnixPath::parse(&format!("@{}", "x".repeat(108))).is_none());
    }

    #[test]
    fn defaults_are_valid() {
        for p in DEFAULT_ALLOW {
            assert!(UnixPath::parse(p).is_some(), "{p}");
        }
    }
}
