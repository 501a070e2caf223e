//! cgroup v2 plumbing: find the unified mount, make and remove agent cgroups,
//! move processes, map cgroup ids (the directory's inode) to paths.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo); mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NoCgroup2,
    #[error("cgroup {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot resolve the cgroup of unit {unit}: {message}")]
    Unit { unit: String, message: String },
    #[error(
        "cgroup path `{0}` must be absolute within the cgroup2 mount and must not contain `..`"
    )]
    BadPath(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The cgroup2 mount point, read from /proc/self/mountinfo (never assumed:
/// hybrid hosts mount it at /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err(Path::new("/proc/self/mountinfo")))?;
    parse_cgroup2_mount(&info).ok_or(CgroupError::NoCgroup2)
}

fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        (fstype == "cgroup2").then(|| pre.split_whitespace().nth(4).map(unescape_mount_path))?
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(s: &str) -> PathBuf {
    let mut out = Vec::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'\\')
            .then(|| s.get(i + 1..i + 4))
            .flatten()
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        if let Some(v) = escaped {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(String::from_utf8_lossy(&out).into_owned())
}

/// A cgroup, by its path relative to the cgroup2 mount ("/agentguard/coder").
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub rel: String,
    pub dir: PathBuf,
}

impl Cgroup {
    pub fn new(mount: &Path, rel: &str) -> Result<Self, CgroupError> {
        if !rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
            return Err(CgroupError::BadPath(rel.to_owned()));
        }
        let rel = if rel.len() > 1 {
            rel.trim_end_matches('/')
        } else {
            rel
        };
        Ok(Self {
            rel: rel.to_owned(),
            dir: mount.join(rel.trim_start_matches('/')),
        })
    }

    pub fn create(&self) -> Result<(), CgroupError> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))
    }

    pub fn exists(&self) -> bool {
        self.dir.join("cgroup.procs").exists()
    }

    /// The cgroup id the kernel reports (bpf_get_current_cgroup_id) is the
    /// inode number of the cgroup's directory.
    pub fn id(&self) -> Result<u64, CgroupError> {
        Ok(fs::metadata(&self.dir).map_err(io_err(&self.dir))?.ino())
    }

    pub fn open(&self) -> Result<fs::File, CgroupError> {
        fs::File::open(&self.dir).map_err(io_err(&self.dir))
    }

    pub fn procs_path(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    pub fn pids(&self) -> Vec<u32> {
        fs::read_to_string(self.procs_path())
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Kills whatever is left (double-forked daemons included) and removes
    /// the cgroup. Uses cgroup.kill where the kernel has it (5.14+).
    pub fn kill_and_remove(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            if fs::write(self.dir.join("cgroup.kill"), "1").is_err() {
                for pid in pids {
                    // SAFETY: plain kill(2); a pid that already exited only yields ESRCH.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Child cgroups first (a process may have made some).
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let rel = format!("{}/{}", self.rel, entry.file_name().to_string_lossy());
                    let child = Cgroup {
                        rel,
                        dir: entry.path(),
                    };
                    child.kill_and_remove()?;
                }
            }
        }
        fs::remove_dir(&self.dir).map_err(io_err(&self.dir))
    }
}

/// The cgroup v2 path ("/a/b") of a process, from /proc/PID/cgroup.
pub fn path_of_pid(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
}

/// Finds the cgroup path with this id by walking the tree (slow; only for
/// processes that exited before we could read /proc).
pub fn path_of_id(mount: &Path, id: u64) -> Option<String> {
    fn walk(dir: &Path, id: u64, depth: usize) -> Option<PathBuf> {
        if fs::metadata(dir).ok()?.ino() == id {
            return Some(dir.to_owned());
        }
        if depth == 0 {
            return None;
        }
        for entry in fs::read_dir(dir).ok()?.flatten() {
            let found = entry
                .file_type()
                .is_ok_and(|t| t.is_dir())
                .then(|| walk(&entry.path(), id, depth - 1));
            if let Some(Some(found)) = found {
                return Some(found);
            }
        }
        None
    }
    let found = walk(mount, id, 16)?;
    let rel = found.strip_prefix(mount).ok()?;
    Some(format!("/{}", rel.display()))
}

/// The cgroup of a systemd unit (`systemctl show -p ControlGroup`).
pub fn unit_cgroup(unit: &str) -> Result<String, CgroupError> {
    let out = Command::new("systemctl")
        .args(["show", "--property=ControlGroup", "--value", unit])
        .output()
        .map_err(|e| CgroupError::Unit {
            unit: unit.to_owned(),
            message: format!("cannot run systemctl: {e}"),
        })?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || path.is_empty() {
        return Err(CgroupError::Unit {
            unit: unit.to_owned(),
            message: format!(
                "systemctl found no ControlGroup (is the unit running?) {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(path)
}

/// The systemd unit a cgroup path belongs to, if it names one.
pub fn unit_of_path(path: &str) -> Option<String> {
    path.rsplit('/')
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_unified_mount_in_hybrid_layout() {
        let info = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                    40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_cgroup2_mount("1 2 0:1 / /x rw - ext4 /dev/sda rw\n"),
            None
        );
        assert_eq!(unescape_mount_path("/a\\040b"), PathBuf::from("/a b"));
    }

    #[test]
    fn rejects_escaping_paths() {
        assert!(Cgroup::new(Path::new("/cg"), "relative").is_err());
        assert!(Cgroup::new(Path::new("/cg"), "/a/../b").is_err());
        let cg = Cgroup::new(Path::new("/cg"), "/agentguard/coder/").expect("valid");
        assert_eq!(cg.dir, PathBuf::from("/cg/agentguard/coder"));
        assert_eq!(cg.rel, "/agentguard/coder");
    }

    #[test]
    fn unit_from_path() {
        assert_eq!(
            unit_of_path("/system.slice/coder.service"),
            Some("coder.service".into())
        );
        assert_eq!(unit_of_path("/agentguard/coder"), None);
    }
}
