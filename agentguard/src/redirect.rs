//! Loading the kernel programs, attaching them to agent cgroups, and reading
//! the origin records they leave for the proxy.
//!
//! Two modes:
//! - pinned (the daemon, `attach`): programs, maps and links live under the
//!   bpffs folder (`bpffs_dir`), so they stay attached when the daemon dies —
//!   connects then hit a closed port and fail (fail closed) — and a restart
//!   swaps the programs inside the existing links (BPF_LINK_UPDATE), leaving
//!   no moment unguarded;
//! - private (`exec` with no daemon): nothing pinned, everything goes away
//!   with the process.

use std::{
    fs, io,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use agentguard_common::{
    self as common, GLOBAL_PROXY_PORT, MAP_COOKIE_ORIGINS, MAP_COUNTERS, MAP_DNS_RESOLVERS,
    MAP_ORIGINS, MAP_SOCKET_ALLOW, MAP_SOCKET_REFUSALS, Origin, PROG_CONNECT4, PROG_CONNECT6,
    PROG_SENDMSG4, PROG_SENDMSG6, PROG_SOCK_CREATE, PROG_SOCK_OPS, SockKey, SocketKind,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, SockOps, links::FdLink},
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    bpfsys,
    cgroup::Cgroup,
    config::Config,
    net,
    refusals::{self, KernelRefusal},
    unixguard::{self, UnixGuard, UnixGuardError},
};

/// The object built by build.rs from agentguard-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agentguard"));

const SOCK_ADDR_PROGRAMS: [&str; 4] = [PROG_CONNECT4, PROG_CONNECT6, PROG_SENDMSG4, PROG_SENDMSG6];
pub const ALL_PROGRAMS: [&str; 6] = [
    PROG_CONNECT4,
    PROG_CONNECT6,
    PROG_SENDMSG4,
    PROG_SENDMSG6,
    PROG_SOCK_OPS,
    PROG_SOCK_CREATE,
];
/// Pinned, so a restarted daemon keeps the same origins, counters and
/// refusal ring (and a dead one leaves the allow lists in force).
const PINNED_MAPS: [&str; 6] = [
    MAP_COOKIE_ORIGINS,
    MAP_ORIGINS,
    MAP_DNS_RESOLVERS,
    MAP_COUNTERS,
    MAP_SOCKET_ALLOW,
    MAP_SOCKET_REFUSALS,
];

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error(
        "loading the eBPF programs failed (agentguard needs root, or CAP_BPF + CAP_NET_ADMIN + CAP_SYS_ADMIN, and a kernel with cgroup BPF): {0}"
    )]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF link of {name}: {source}")]
    Link {
        name: &'static str,
        source: aya::programs::links::LinkError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("the eBPF object has no {0} (build mismatch)")]
    Missing(&'static str),
    #[error("bpffs {path}: {source} (is bpffs mounted? `mount -t bpf bpf /sys/fs/bpf`)")]
    Pin { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error(transparent)]
    Unix(#[from] UnixGuardError),
}

pub struct LoadOptions<'a> {
    pub proxy_port: u16,
    /// Some: pinned mode under this folder.
    pub pin_dir: Option<&'a Path>,
    /// DNS resolvers, `[unix_sockets]` and `[sockets]`.
    pub config: &'a Config,
}

/// The loaded programs and the origin map the proxy reads.
pub struct Redirect {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
    origins: MapData,
    _logger: Option<tokio::task::JoinHandle<()>>,
    /// None: off, or the kernel cannot run it (`unix_status` says which).
    unix: Option<UnixGuard>,
    unix_status: String,
    /// Private mode: the unix guard's links live as long as this value.
    unix_links: Vec<std::os::fd::OwnedFd>,
    /// Taken by the first `kernel_refusals`.
    socket_refusals: std::sync::Mutex<Option<RingBuf<MapData>>>,
}

fn pin_err(path: &Path) -> impl FnOnce(io::Error) -> RedirectError + '_ {
    move |source| RedirectError::Pin {
        path: path.to_owned(),
        source,
    }
}

pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// Attaches program `$name` (of aya type `$ty`) to the cgroup; with a links
/// folder, pins its link there.
macro_rules! attach_one {
    ($self:ident, $ty:ty, $name:expr, $cgroup:expr, $link_dir:expr) => {{
        let name: &'static str = $name;
        let prog: &mut $ty = program(&mut $self.ebpf, name)?;
        let link_id = prog
            .attach($cgroup.open()?, CgroupAttachMode::Single)
            .map_err(|source| RedirectError::Program { name, source })?;
        if let Some(dir) = $link_dir {
            let link = prog
                .take_link(link_id)
                .map_err(|source| RedirectError::Program { name, source })?;
            pin_link(
                FdLink::try_from(link).map_err(|e| link_err(name, e))?,
                &dir.join(name),
            )?;
        }
    }};
}

impl Redirect {
    pub fn load(opts: &LoadOptions<'_>) -> Result<Self, RedirectError> {
        let mut loader = EbpfLoader::new();
        #[expect(deprecated, reason = "override_global is not in aya 0.14")]
        loader.set_global(GLOBAL_PROXY_PORT, &opts.proxy_port, true);
        let map_paths: Vec<(&str, PathBuf)> = match opts.pin_dir {
            Some(dir) => {
                let maps = dir.join("maps");
                fs::create_dir_all(&maps).map_err(pin_err(&maps))?;
                PINNED_MAPS.iter().map(|m| (*m, maps.join(m))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;

        for name in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|source| RedirectError::Program { name, source })?;
        }
        let sock_ops: &mut SockOps = program(&mut ebpf, PROG_SOCK_OPS)?;
        sock_ops.load().map_err(|source| RedirectError::Program {
            name: PROG_SOCK_OPS,
            source,
        })?;
        let sock_create: &mut CgroupSock = program(&mut ebpf, PROG_SOCK_CREATE)?;
        sock_create
            .load()
            .map_err(|source| RedirectError::Program {
                name: PROG_SOCK_CREATE,
                source,
            })?;

        let config = opts.config;
        let (unix, unix_status) = match config.unix_sockets.allow_list() {
            None => (None, "off (unix_sockets.guard = false)".to_owned()),
            Some(allow) => match UnixGuard::load(&allow, opts.pin_dir) {
                Ok(guard) => (Some(guard), "active".to_owned()),
                // Everything else still runs on such a kernel; say so loudly.
                Err(e) if e.unavailable() => {
                    warn!("{e}");
                    (None, e.to_string())
                }
                Err(e) => return Err(e.into()),
            },
        };

        // Kernel-side diagnostics (aya-log), shown at debug level.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(spawn_log_reader(logger)),
            Err(e) => {
                warn!("eBPF logs unavailable: {e}");
                None
            }
        };

        let mut resolvers: HashMap<&mut MapData, common::Addr, u8> =
            map(&mut ebpf, MAP_DNS_RESOLVERS)?;
        let stale: Vec<common::Addr> = resolvers.keys().filter_map(Result::ok).collect();
        for key in stale {
            let _ = resolvers.remove(&key);
        }
        for ip in &config.resolvers {
            resolvers
                .insert(net::to_addr(*ip), 1, 0)
                .map_err(|source| RedirectError::Map {
                    name: MAP_DNS_RESOLVERS,
                    source,
                })?;
        }

        let mut allowed: HashMap<&mut MapData, SocketKind, u8> = map(&mut ebpf, MAP_SOCKET_ALLOW)?;
        // A reused (pinned) map is live: add first, then drop the rest.
        for kind in &config.socket_allow {
            allowed
                .insert(kind, 1, 0)
                .map_err(|source| RedirectError::Map {
                    name: MAP_SOCKET_ALLOW,
                    source,
                })?;
        }
        let stale: Vec<SocketKind> = allowed
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !config.socket_allow.contains(k))
            .collect();
        for key in stale {
            let _ = allowed.remove(&key);
        }
        let socket_refusals = ebpf
            .take_map(MAP_SOCKET_REFUSALS)
            .ok_or(RedirectError::Missing(MAP_SOCKET_REFUSALS))
            .and_then(|m| {
                RingBuf::try_from(m).map_err(|source| RedirectError::Map {
                    name: MAP_SOCKET_REFUSALS,
                    source,
                })
            })?;

        let origins = ebpf
            .take_map(MAP_ORIGINS)
            .ok_or(RedirectError::Missing(MAP_ORIGINS))?;
        let aya::maps::Map::LruHashMap(origins) = origins else {
            return Err(RedirectError::Missing(MAP_ORIGINS));
        };

        let mut redirect = Self {
            ebpf,
            pin_dir: opts.pin_dir.map(Path::to_owned),
            origins,
            _logger: logger,
            unix,
            unix_status,
            unix_links: Vec::new(),
            socket_refusals: std::sync::Mutex::new(Some(socket_refusals)),
        };
        if let Some(dir) = opts.pin_dir {
            redirect.pin_programs(dir)?;
            redirect.refresh_pinned_links(dir)?;
        }
        Ok(redirect)
    }

    /// Replaces the pinned programs with the ones just loaded.
    fn pin_programs(&mut self, dir: &Path) -> Result<(), RedirectError> {
        let progs = dir.join("progs");
        fs::create_dir_all(&progs).map_err(pin_err(&progs))?;
        for name in ALL_PROGRAMS {
            let path = progs.join(name);
            if path.exists() {
                fs::remove_file(&path).map_err(pin_err(&path))?;
            }
            let prog = self
                .ebpf
                .program_mut(name)
                .ok_or(RedirectError::Missing(name))?;
            prog.pin(&path).map_err(|e| RedirectError::Pin {
                path: path.clone(),
                source: io::Error::other(e),
            })?;
        }
        for (name, _) in unixguard::PROGRAMS {
            let _ = fs::remove_file(unixguard::pin_path(dir, name));
        }
        if let Some(unix) = &self.unix {
            for (name, fd) in unix.programs() {
                let path = unixguard::pin_path(dir, name);
                bpfsys::obj_pin(&fd, &path).map_err(pin_err(&path))?;
            }
        }
        Ok(())
    }

    /// Every link pinned by an earlier load now runs this load's programs.
    fn refresh_pinned_links(&mut self, dir: &Path) -> Result<(), RedirectError> {
        let links = links_dir(dir);
        let Ok(entries) = fs::read_dir(&links) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            for name in ALL_PROGRAMS {
                let path = entry.path().join(name);
                if !path.exists() {
                    continue;
                }
                let link = bpfsys::obj_get(&path).map_err(pin_err(&path))?;
                let prog = self
                    .ebpf
                    .program(name)
                    .ok_or(RedirectError::Missing(name))?;
                let fd = prog
                    .fd()
                    .map_err(|source| RedirectError::Program { name, source })?;
                bpfsys::link_update(&link, fd).map_err(pin_err(&path))?;
            }
            for (name, fd) in self.unix.iter().flat_map(UnixGuard::programs) {
                let path = entry.path().join(name);
                if let Ok(link) = bpfsys::obj_get(&path) {
                    bpfsys::link_update(&link, &fd).map_err(pin_err(&path))?;
                }
            }
            debug!(cgroup_id = %entry.file_name().to_string_lossy(), "pinned links now run the new programs");
        }
        Ok(())
    }

    /// Attaches every program to the cgroup. Pinned mode pins the links under
    /// links/CGROUP_ID/ (an existing set is left as is: it was refreshed at
    /// load); private mode keeps them until this value is dropped.
    pub fn attach(&mut self, cgroup: &Cgroup) -> Result<(), RedirectError> {
        let id = cgroup.id()?;
        let link_dir = self
            .pin_dir
            .as_deref()
            .map(|d| links_dir(d).join(id.to_string()));
        let unix_names: Vec<&str> = self
            .unix
            .iter()
            .flat_map(|u| u.programs().map(|(n, _)| n))
            .collect();
        if let Some(dir) = &link_dir {
            if ALL_PROGRAMS
                .iter()
                .chain(&unix_names)
                .all(|p| dir.join(p).exists())
            {
                info!(cgroup = %cgroup.rel, "already attached");
                return Ok(());
            }
            fs::create_dir_all(dir).map_err(pin_err(dir))?;
        }
        // Links (kernel 5.7+) always coexist with other programs on the cgroup
        // and its descendants; BPF_F_ALLOW_MULTI on bpf_link_create is EINVAL,
        // so `Single` (flags 0) is the right mode here. sock_create goes first:
        // from then on no socket the data path cannot see can be opened.
        let link_dir = link_dir.as_deref();
        attach_one!(self, CgroupSock, PROG_SOCK_CREATE, cgroup, link_dir);
        for name in SOCK_ADDR_PROGRAMS {
            attach_one!(self, CgroupSockAddr, name, cgroup, link_dir);
        }
        attach_one!(self, SockOps, PROG_SOCK_OPS, cgroup, link_dir);
        if let Some(unix) = &self.unix {
            let links = unix
                .attach(&cgroup.open()?)
                .map_err(|e| UnixGuardError::Load(format!("attaching to {}: {e}", cgroup.rel)))?;
            for (name, link) in links {
                match link_dir {
                    Some(dir) => {
                        let path = dir.join(name);
                        let _ = fs::remove_file(&path);
                        bpfsys::obj_pin(&link, &path).map_err(pin_err(&path))?;
                    }
                    None => self.unix_links.push(link),
                }
            }
        }
        info!(cgroup = %cgroup.rel, cgroup_id = id, unix_sockets = %self.unix_status, "attached");
        Ok(())
    }

    /// What the kernel programs refused (socket kinds, UDP, unix sockets),
    /// for the audit log; `None` after the first call.
    pub fn kernel_refusals(&self) -> Option<mpsc::Receiver<KernelRefusal>> {
        let ring = self.socket_refusals.lock().ok()?.take()?;
        let (tx, rx) = mpsc::channel(1024);
        refusals::spawn_ring_reader(ring, tx.clone(), KernelRefusal::Socket);
        if let Some(unix) = &self.unix {
            unix.refusals(tx);
        }
        Some(rx)
    }

    /// The origin the hook recorded for this accepted connection, removed so
    /// that a later connection from the same address and port can never
    /// inherit it.
    pub fn take_origin(&self, peer: SocketAddr) -> Option<Origin> {
        let key: SockKey = net::sock_key(peer);
        match bpfsys::map_take::<SockKey, Origin>(self.origins.fd(), &key) {
            Ok(origin) => origin,
            Err(e) => {
                warn!("origin lookup failed: {e}");
                None
            }
        }
    }
}

fn link_err(name: &'static str, source: aya::programs::links::LinkError) -> RedirectError {
    RedirectError::Link { name, source }
}

fn pin_link(link: FdLink, path: &Path) -> Result<(), RedirectError> {
    if path.exists() {
        fs::remove_file(path).map_err(pin_err(path))?;
    }
    link.pin(path).map(drop).map_err(|e| RedirectError::Pin {
        path: path.to_owned(),
        source: io::Error::other(e),
    })
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, RedirectError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(RedirectError::Missing(name))?;
    prog.try_into()
        .map_err(|source| RedirectError::Program { name, source })
}

fn map<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, RedirectError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let m = ebpf.map_mut(name).ok_or(RedirectError::Missing(name))?;
    T::try_from(m).map_err(|source| RedirectError::Map { name, source })
}

fn spawn_log_reader(
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // SAFETY: the logger owns its ring buffer fd and keeps it open for as
        // long as it is registered here.
        let Ok(mut fd) = (unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        }) else {
            return;
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    })
}

/// Removes a cgroup's pinned links (detaching them).
pub fn detach_pinned(pin_dir: &Path, cgroup_id: u64) -> Result<bool, RedirectError> {
    let dir = links_dir(pin_dir).join(cgroup_id.to_string());
    if !dir.exists() {
        return Ok(false);
    }
    let unix = unixguard::PROGRAMS.map(|(name, _)| name);
    for name in ALL_PROGRAMS.iter().chain(&unix) {
        let path = dir.join(name);
        if let Ok(link) = bpfsys::obj_get(&path) {
            bpfsys::link_detach(&link).map_err(pin_err(&path))?;
        }
        let _ = fs::remove_file(&path);
    }
    fs::remove_dir(&dir).map_err(pin_err(&dir))?;
    Ok(true)
}

/// Whether agentguard's redirect runs for processes in `cgroup_dir`: one of
/// the connect4 programs pinned under `pin_dir` (the daemon's) or under a
/// sibling `*-exec-PID` folder (`exec`'s private guards) is effective there.
pub fn guarded_by_us(pin_dir: &Path, cgroup_dir: &Path) -> io::Result<bool> {
    let mut ours = Vec::new();
    let mut dirs = vec![pin_dir.to_owned()];
    if let (Some(parent), Some(name)) = (pin_dir.parent(), pin_dir.file_name()) {
        let prefix = format!("{}-exec-", name.to_string_lossy());
        if let Ok(entries) = fs::read_dir(parent) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .map(|e| e.path()),
            );
        }
    }
    for dir in dirs {
        if let Ok(info) =
            aya::programs::ProgramInfo::from_pin(dir.join("progs").join(PROG_CONNECT4))
        {
            ours.push(info.id());
        }
    }
    let cgroup = fs::File::open(cgroup_dir)?;
    let effective = bpfsys::prog_query_effective(&cgroup, bpfsys::BPF_CGROUP_INET4_CONNECT)?;
    Ok(effective.iter().any(|id| ours.contains(id)))
}

/// What `status` shows about the pinned state.
pub struct PinnedState {
    pub attached: Vec<u64>,
    /// The unix-socket guard's programs are pinned (so loaded and attached
    /// with the rest).
    pub unix_guard: bool,
    pub programs: Vec<(&'static str, Option<u32>)>,
    pub counters: Vec<(&'static str, u64)>,
}

pub fn pinned_state(pin_dir: &Path) -> PinnedState {
    let attached = fs::read_dir(links_dir(pin_dir))
        .map(|it| {
            it.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let programs = ALL_PROGRAMS
        .iter()
        .map(|name| {
            let path = pin_dir.join("progs").join(name);
            let id = aya::programs::ProgramInfo::from_pin(&path)
                .ok()
                .map(|i| i.id());
            (*name, id)
        })
        .collect();
    let mut counters = Vec::new();
    let array = MapData::from_pin(pin_dir.join("maps").join(MAP_COUNTERS))
        .ok()
        .and_then(|data| PerCpuArray::<_, u64>::try_from(aya::maps::Map::PerCpuArray(data)).ok());
    if let Some(array) = array {
        for (i, name) in common::counter::NAMES.iter().enumerate() {
            let total = array
                .get(&(i as u32), 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0);
            counters.push((*name, total));
        }
    }
    PinnedState {
        attached,
        unix_guard: unixguard::PROGRAMS
            .iter()
            .all(|(name, _)| unixguard::pin_path(pin_dir, name).exists()),
        programs,
        counters,
    }
}
