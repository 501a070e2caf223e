//! Who is behind a connection: the kernel's record (tgid, uid, gid, cgroup
//! id, comm) enriched from /proc and the config (exe, cmdline, user name,
//! cgroup path, agent name, systemd unit).

use std::{collections::HashMap, fs, path::Path, sync::RwLock};

use agentguard_common::Origin;
use serde::{Deserialize, Serialize};

use crate::{cgroup, config::Config};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
    pub cgroup: Option<String>,
    pub cgroup_id: u64,
    pub agent: Option<String>,
    pub unit: Option<String>,
}

/// Agent names of cgroups that `exec` or `attach` registered by id (their
/// paths are not in the config).
#[derive(Default)]
pub struct AgentRegistry {
    by_cgroup_id: RwLock<HashMap<u64, String>>,
}

impl AgentRegistry {
    pub fn register(&self, cgroup_id: u64, agent: &str) {
        self.by_cgroup_id
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cgroup_id, agent.to_owned());
    }

    fn get(&self, cgroup_id: u64) -> Option<String> {
        self.by_cgroup_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&cgroup_id)
            .cloned()
    }
}

impl Identity {
    pub fn resolve(
        origin: &Origin,
        config: &Config,
        agents: &AgentRegistry,
        cgroup_mount: Option<&Path>,
    ) -> Self {
        let pid = origin.tgid;
        let comm_len = origin
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(origin.comm.len());
        let comm = String::from_utf8_lossy(&origin.comm[..comm_len]).into_owned();
        let exe = fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| p.display().to_string());
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|raw| {
                raw.split(|&b| b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .map(redact_cmdline)
            .unwrap_or_default();
        let cgroup = cgroup_path(pid, origin.cgroup_id, cgroup_mount);
        let agent = agents.get(origin.cgroup_id).or_else(|| {
            let path = cgroup.as_deref()?;
            config
                .agents
                .iter()
                .filter_map(|a| a.cgroup.as_deref().map(|c| (a, c)))
                .filter(|(_, c)| {
                    path == *c
                        || path
                            .strip_prefix(*c)
                            .is_some_and(|rest| rest.starts_with('/'))
                })
                .max_by_key(|(_, c)| c.len())
                .map(|(a, _)| a.name.clone())
        });
        let unit = cgroup.as_deref().and_then(cgroup::unit_of_path);
        Self {
            uid: origin.uid,
            gid: origin.gid,
            user: user_name(origin.uid),
            pid,
            comm,
            exe,
            cmdline,
            cgroup,
            cgroup_id: origin.cgroup_id,
            agent,
            unit,
        }
    }
}

/// The path of the cgroup a connect came from. Cached by cgroup id: ids are
/// 64-bit and not reused, and a path lookup costs a /proc read and a stat on
/// every connection otherwise. exe and cmdline are never cached: an execve
/// changes them under the same pid.
fn cgroup_path(pid: u32, cgroup_id: u64, mount: Option<&Path>) -> Option<String> {
    const MAX_ENTRIES: usize = 4096;
    static CACHE: std::sync::OnceLock<RwLock<HashMap<u64, String>>> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&cgroup_id)
    {
        return Some(hit.clone());
    }
    // /proc may show a later cgroup (or none, if the process is gone); the
    // kernel's cgroup id is the one the connect came from.
    let path = cgroup::path_of_pid(pid)
        .filter(|p| {
            mount.and_then(|m| cgroup::Cgroup::new(m, p).ok()?.id().ok()) == Some(cgroup_id)
        })
        .or_else(|| mount.and_then(|m| cgroup::path_of_id(m, cgroup_id)))?;
    let mut cache = cache.write().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= MAX_ENTRIES {
        cache.clear();
    }
    cache.insert(cgroup_id, path.clone());
    Some(path)
}

/// User names by uid, read from /etc/passwd once per uid: a connection's
/// hot path should not parse the file each time.
fn user_name(uid: u32) -> Option<String> {
    static CACHE: std::sync::OnceLock<RwLock<HashMap<u32, Option<String>>>> =
        std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.read().unwrap_or_else(|p| p.into_inner()).get(&uid) {
        return hit.clone();
    }
    let name = fs::read_to_string("/etc/passwd").ok().and_then(|passwd| {
        passwd.lines().find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let id: u32 = fields.nth(1)?.parse().ok()?;
            (id == uid).then(|| name.to_owned())
        })
    });
    cache
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(uid, name.clone());
    name
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_is_root() {
        assert_eq!(super::user_name(0).as_deref(), Some("root"));
    }
}

/// Command lines carry secrets (`psql "password=…"`, `curl -H
/// "Authorization: Bearer …"`, `postgres://user:pass@host`, `--token X`);
/// they reach policy input, the audit log and approvers, so the values go.
pub fn redact_cmdline(args: Vec<String>) -> Vec<String> {
    use std::sync::OnceLock;
    static RES: OnceLock<Vec<(regex::Regex, &'static str)>> = OnceLock::new();
    let res = RES.get_or_init(|| {
        [
            (r"(?i)(authorization\s*:\s*(?:[a-z]+\s+)?)\S+", "${1}***"),
            (r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key)(\s*[=:]\s*)[^\s&;]+", "${1}${2}***"),
            (r"([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", "${1}***@"),
        ]
        .into_iter()
        .filter_map(|(re, to)| regex::Regex::new(re).ok().map(|r| (r, to)))
        .collect()
    });
    const VALUE_FLAGS: [&str; 8] = [
        "--password",
        "--passwd",
        "--token",
        "--api-key",
        "--apikey",
        "--secret",
        "--auth-token",
        "--access-key",
    ];
    let mut out = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for arg in args {
        if hide_next {
            hide_next = false;
            out.push("***".to_owned());
            continue;
        }
        if VALUE_FLAGS.iter().any(|f| arg.eq_ignore_ascii_case(f)) {
            hide_next = true;
        }
        let mut arg = arg;
        for (re, to) in res {
            if re.is_match(&arg) {
                arg = re.replace_all(&arg, *to).into_owned();
            }
        }
        out.push(arg);
    }
    out
}

#[cfg(test)]
mod redaction_tests {
    use super::redact_cmdline;

    #[test]
    fn secrets_leave_command_lines() {
        let v = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let out = redact_cmdline(v(&[
            "psql",
            "host=db user=app password=hunter2 dbname=x",
            "postgres://app:hunter2@db/x",
            "-H",
            "Authorization: Bearer eyJhbGciOi.abc.def",
            "--token",
            "tok-123",
            "--api-key=sk-live-1",
            "SELECT 1",
        ]));
        let joined = out.join(" ");
        for secret in ["hunter2", "eyJhbGciOi", "tok-123", "sk-live-1"] {
            assert!(!joined.contains(secret), "{joined}");
        }
        assert_eq!(out[1], "host=db user=app password=*** dbname=x");
        assert_eq!(out[2], "postgres://app:***@db/x");
        assert_eq!(out[8], "SELECT 1");
    }
}
