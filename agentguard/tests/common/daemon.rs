//! A daemon of the test's own: its cgroup, bpffs folder, listener port and
//! config, removed (and detached) on drop.

use std::{
    fs,
    net::TcpListener,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use super::*;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub struct Setup {
    pub config: TestConfig,
    pub cgroup_rel: String,
    pub cgroup_dir: PathBuf,
    pub bpffs: PathBuf,
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

impl Setup {
    /// `top`: top-level config keys; with `agent`, the cgroup is agent
    /// "agent"'s; `tables`: targets and the like.
    pub fn new(kind: &str, top: &str, agent: bool, tables: &str) -> Self {
        let t = tag();
        let cgroup_rel = format!("/agentguard-{kind}-{t}/agent");
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/agentguard-{kind}-{t}"));
        let agents = if agent {
            format!("[[agents]]\nname = \"agent\"\ncgroup = \"{cgroup_rel}\"\n")
        } else {
            String::new()
        };
        let config = TestConfig::new(&format!(
            "bpffs_dir = \"{}\"\n{top}[listener]\nport = {}\n{agents}{tables}",
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

    /// Starts `agentguard run` and waits until it is serving; its log goes
    /// to `log_name` in the test's folder.
    pub fn start_daemon(&self, log_name: &str) -> (Killed, PathBuf) {
        let log = self.config.dir.path().join(log_name);
        let child = Command::new(bin())
            .arg("--config")
            .arg(self.config.path())
            .arg("run")
            .env("AGENTGUARD_LOG", "info,agentguard::policy=debug")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("daemon");
        let info = self.config.dir.path().join("run/daemon.json");
        let pid = child.id();
        let daemon = Killed(child);
        // A killed daemon leaves its daemon.json behind: wait for this one's.
        let ready = || {
            fs::read_to_string(&info)
                .ok()
                .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
                .is_some_and(|v| v["pid"].as_u64() == Some(u64::from(pid)))
        };
        // Generous: a restart after SIGKILL repairs the redb file first
        // (7.5 s seen on a quiet 2-core host, over 20 s under load).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !ready() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for daemon ready; its log:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        (daemon, log)
    }

    /// `argv` run straight inside the agent's cgroup (as a service manager
    /// would place an agent), independent of any agentguard process.
    pub fn in_cgroup(&self, argv: &[String]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec \"$@\"",
                self.cgroup_dir.display()
            ))
            .arg("sh")
            .args(argv);
        cmd
    }

    /// A python3 client in the cgroup: the first line the server sent.
    pub fn client_in_cgroup(&self, port: u16) -> String {
        let cmd = self.in_cgroup(&py_client("127.0.0.1", port));
        stdout(&run_with_timeout(cmd, Duration::from_secs(30)))
            .trim()
            .to_owned()
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(bin());
        cmd.arg("--config").arg(self.config.path()).args(args);
        run_with_timeout(cmd, Duration::from_secs(30))
    }

    pub fn status(&self) -> String {
        stdout(&self.cli(&["status"]))
    }
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
