//! A daemon (`agentguard run`) with its own cgroup, bpffs folder, run_dir and
//! state_dir, and clients placed in its agent cgroup (daemon.rs, faults.rs).

use std::{
    fs,
    net::TcpListener,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use super::*;

pub struct Setup {
    pub config: TestConfig,
    pub cgroup_rel: String,
    pub cgroup_dir: PathBuf,
    pub bpffs: PathBuf,
}

impl Setup {
    /// One agent (`agent`) in a cgroup named after `name`. `top` holds
    /// top-level keys; `tables` follows `[listener]` (so it may start with
    /// listener keys) and holds targets and other tables.
    pub fn new(name: &str, top: &str, tables: &str) -> Self {
        let t = tag();
        let cgroup_rel = format!("/agentguard-{name}-{t}/agent");
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/agentguard-{name}-{t}"));
        let config = TestConfig::new(&format!(
            "bpffs_dir = \"{}\"\n{top}[listener]\nport = {}\n{tables}[[agents]]\nname = \"agent\"\ncgroup = \"{cgroup_rel}\"\n",
            bpffs.display(),
            free_port(),
        ));
        Self {
            cgroup_dir: cgroup2_mount().join(cgroup_rel.trim_start_matches('/')),
            cgroup_rel,
            bpffs,
            config,
        }
    }

    pub fn daemon_pid(&self) -> Option<i32> {
        fs::read_to_string(self.config.dir.path().join("run/daemon.json"))
            .ok()
            .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
            .and_then(|v| v["pid"].as_i64())
            .and_then(|p| i32::try_from(p).ok())
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin())
            .arg("--config")
            .arg(self.config.path())
            .args(args)
            .output()
            .expect("run agentguard")
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = Command::new(bin())
            .args(["--config"])
            .arg(self.config.path())
            .args(["detach", "--cgroup", &self.cgroup_rel])
            .output();
        let _ = fs::remove_dir_all(&self.bpffs);
        let _ = fs::remove_dir(&self.cgroup_dir);
        if let Some(parent) = self.cgroup_dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn start_daemon(setup: &Setup, log_name: &str) -> (Killed, PathBuf) {
    let log = setup.config.dir.path().join(log_name);
    let child = Command::new(bin())
        .arg("--config")
        .arg(setup.config.path())
        .arg("run")
        .env("AGENTGUARD_LOG", "info,agentguard::policy=debug")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("daemon");
    let info = setup.config.dir.path().join("run/daemon.json");
    let pid = child.id();
    let daemon = Killed(child);
    // A killed daemon leaves its daemon.json behind: wait for this one's.
    wait_for("daemon ready", Duration::from_secs(20), || {
        fs::read_to_string(&info)
            .ok()
            .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
            .is_some_and(|v| v["pid"].as_u64() == Some(u64::from(pid)))
    });
    (daemon, log)
}

/// `program args…` placed straight into the agent's cgroup (as a service
/// manager would place an agent), independent of any agentguard process.
pub fn in_cgroup(setup: &Setup, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec \"$@\"",
            setup.cgroup_dir.display()
        ))
        .arg("sh")
        .arg(program)
        .args(args);
    cmd
}

/// A python client in the agent's cgroup: the first line the server sent,
/// or `ERR <exception>`.
pub fn client_in_cgroup(setup: &Setup, port: u16) -> String {
    let client = py_client("127.0.0.1", port);
    let cmd = in_cgroup(setup, &client[0], &args(&client[1..]));
    stdout(&run_with_timeout(cmd, Duration::from_secs(30)))
        .trim()
        .to_owned()
}

pub fn status(setup: &Setup) -> String {
    stdout(&setup.cli(&["status"]))
}

/// A policy that allows the target named `web`, and one that denies all.
pub const ALLOW_WEB: &str = r#"package agentguard
import rego.v1
default decision := {"action": "deny", "reason": "test policy: default deny"}
decision := {"action": "allow", "reason": "test policy v1 allows web"} if input.target.name == "web"
"#;

pub const DENY_ALL: &str = r#"package agentguard
import rego.v1
decision := {"action": "deny", "reason": "test policy v2 denies everything"}
"#;
