//! End-to-end: the daemon pins its programs, so killing it leaves agents
//! unable to connect anywhere (fail closed) until it is back.

mod common;

use std::{
    fs,
    net::TcpListener,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use common::*;

struct Setup {
    config: TestConfig,
    cgroup_rel: String,
    cgroup_dir: PathBuf,
    bpffs: PathBuf,
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn start_daemon(setup: &Setup, log_name: &str) -> (Killed, PathBuf) {
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

/// A client placed straight into the agent's cgroup (as a service manager
/// would place an agent), independent of any agentguard process.
fn client_in_cgroup(setup: &Setup, port: u16) -> String {
    run_in_cgroup(setup, &py_client("127.0.0.1", port))
}

fn run_in_cgroup(setup: &Setup, client: &[String]) -> String {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec \"$@\"",
            setup.cgroup_dir.display()
        ))
        .arg("sh")
        .args(client);
    stdout(&run_with_timeout(cmd, Duration::from_secs(30)))
        .trim()
        .to_owned()
}

fn status(setup: &Setup) -> String {
    let out = Command::new(bin())
        .arg("--config")
        .arg(setup.config.path())
        .arg("status")
        .output()
        .expect("status");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn killed_daemon_fails_closed_and_restart_recovers() {
    require_root();
    let server = PeerServer::start("127.0.0.1:0");
    let t = tag();
    let cgroup_rel = format!("/agentguard-test-{t}/agent");
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/agentguard-test-{t}"));
    let port = free_port();
    let config = TestConfig::new(&format!(
        "bpffs_dir = \"{}\"\n[listener]\nport = {port}\n[[agents]]\nname = \"agent\"\ncgroup = \"{cgroup_rel}\"\n{}",
        bpffs.display(),
        target("web", server.addr)
    ));
    let setup = Setup {
        cgroup_dir: cgroup2_mount().join(cgroup_rel.trim_start_matches('/')),
        cgroup_rel,
        bpffs,
        config,
    };

    let (mut daemon, log) = start_daemon(&setup, "daemon1.log");
    let line = client_in_cgroup(&setup, server.addr.port());
    assert!(line.starts_with("peer=127.0.0.1:"), "{line}");
    let peer = line.trim_start_matches("peer=").to_owned();
    wait_for("allowed log line", Duration::from_secs(5), || {
        fs::read_to_string(&log).is_ok_and(|l| {
            allowed_lines(&l)
                .iter()
                .any(|x| field(x, "upstream_local") == Some(&peer))
        })
    });
    let st = status(&setup);
    assert!(st.contains("running (pid"), "{st}");
    assert!(st.contains(&setup.cgroup_rel), "{st}");

    // `exec --agent` joins the running daemon instead of starting its own guard.
    let mut cmd = Command::new(bin());
    cmd.arg("--config")
        .arg(setup.config.path())
        .args(["exec", "--agent", "agent", "--"])
        .args(py_client("127.0.0.1", server.addr.port()));
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert!(
        stderr(&out).contains("using the running daemon"),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).starts_with("peer=127.0.0.1:"),
        "{}",
        stdout(&out)
    );

    // SIGKILL: no cleanup runs, the programs stay attached.
    daemon.0.kill().expect("kill");
    daemon.0.wait().expect("wait");
    let before = server.peers().len();
    let line = client_in_cgroup(&setup, server.addr.port());
    assert_eq!(
        line, "ERR ConnectionRefusedError",
        "with the daemon dead the connect must be refused"
    );
    assert_eq!(
        server.peers().len(),
        before,
        "nothing may reach the server directly"
    );
    let st = status(&setup);
    assert!(st.contains("not running"), "{st}");
    assert!(st.contains(&setup.cgroup_rel), "still attached: {st}");

    let (_daemon, log2) = start_daemon(&setup, "daemon2.log");
    let line = client_in_cgroup(&setup, server.addr.port());
    assert!(
        line.starts_with("peer=127.0.0.1:"),
        "after restart: {line}\n{}",
        fs::read_to_string(&log2).unwrap_or_default()
    );
    assert_eq!(server.peers().len(), before + 1);

    // The restart swapped the unix-socket guard inside its pinned links too.
    let st = status(&setup);
    if !st.contains("NOT guarded") {
        assert!(st.contains("unix sockets: guarded"), "{st}");
        let code = "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect('/run/agentguard-test-nothing.sock'); print('connected')\nexcept OSError as e:\n    print(type(e).__name__)";
        let line = run_in_cgroup(&setup, &[PYTHON.into(), "-c".into(), code.into()]);
        // Without the guard: FileNotFoundError (no such socket).
        assert_eq!(line, "PermissionError");
        // The restarted daemon reads the pinned refusal ring and audits it.
        wait_for("the unix refusal audited", Duration::from_secs(10), || {
            audited_denials(&setup.config, "unix_sockets.allow")
                .iter()
                .any(|r| {
                    r["request"]["summary"] == "unix socket /run/agentguard-test-nothing.sock"
                        && r["identity"]["comm"] == "python3"
                })
        });
    }
}

#[test]
fn bad_config_names_key_and_line() {
    let config = TestConfig::new("[listener]\nport = 15001\nbogus = 1\n");
    let out = Command::new(bin())
        .arg("--config")
        .arg(config.path())
        .arg("status")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("line 6") && err.contains("bogus"), "{err}");
}

#[test]
fn attach_without_daemon_refuses_and_detach_releases() {
    require_root();
    let server = PeerServer::start("127.0.0.1:0");
    let t = tag();
    let cgroup_rel = format!("/agentguard-attach-{t}/agent");
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/agentguard-attach-{t}"));
    let config = TestConfig::new(&format!(
        "bpffs_dir = \"{}\"\n[listener]\nport = {}\n{}",
        bpffs.display(),
        free_port(),
        target("web", server.addr)
    ));
    let setup = Setup {
        cgroup_dir: cgroup2_mount().join(cgroup_rel.trim_start_matches('/')),
        cgroup_rel,
        bpffs,
        config,
    };
    fs::create_dir_all(&setup.cgroup_dir).expect("make cgroup");

    let cli = |args: &[&str]| {
        Command::new(bin())
            .arg("--config")
            .arg(setup.config.path())
            .args(args)
            .output()
            .expect("run agentguard")
    };
    let out = cli(&["attach", "--cgroup", &setup.cgroup_rel]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = status(&setup);
    assert!(
        st.contains("not running") && st.contains(&setup.cgroup_rel),
        "{st}"
    );

    // Attached, no daemon: nothing gets out.
    assert_eq!(
        client_in_cgroup(&setup, server.addr.port()),
        "ERR ConnectionRefusedError"
    );
    assert!(server.peers().is_empty());

    let out = cli(&["detach", "--cgroup", &setup.cgroup_rel]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Detached: the process connects directly (it sees its own address as peer).
    let line = client_in_cgroup(&setup, server.addr.port());
    assert!(line.starts_with("peer=127.0.0.1:"), "{line}");
    assert_eq!(server.peers().len(), 1);
    assert!(!status(&setup).contains(&setup.cgroup_rel));
    let out = cli(&["detach", "--cgroup", &setup.cgroup_rel]);
    assert!(
        !out.status.success(),
        "detaching twice must say it is not attached"
    );
}

const ALLOW_WEB: &str = r#"package agentguard
import rego.v1
default decision := {"action": "deny", "reason": "test policy: default deny"}
decision := {"action": "allow", "reason": "test policy v1 allows web"} if input.target.name == "web"
"#;

const DENY_ALL: &str = r#"package agentguard
import rego.v1
decision := {"action": "deny", "reason": "test policy v2 denies everything"}
"#;

#[test]
fn policy_edits_apply_live_and_a_broken_edit_keeps_the_last_good() {
    require_root();
    let server = PeerServer::start("127.0.0.1:0");
    let t = tag();
    let cgroup_rel = format!("/agentguard-policy-{t}/agent");
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/agentguard-policy-{t}"));
    let policy_dir = tempfile::tempdir().expect("policy dir");
    let policy_file = policy_dir.path().join("agentguard.rego");
    fs::write(&policy_file, ALLOW_WEB).expect("policy");
    let config = TestConfig::new(&format!(
        "bpffs_dir = \"{}\"\npolicy_dir = \"{}\"\n[listener]\nport = {}\n[[agents]]\nname = \"agent\"\ncgroup = \"{cgroup_rel}\"\n{}",
        bpffs.display(),
        policy_dir.path().display(),
        free_port(),
        target("web", server.addr)
    ));
    let setup = Setup {
        cgroup_dir: cgroup2_mount().join(cgroup_rel.trim_start_matches('/')),
        cgroup_rel,
        bpffs,
        config,
    };
    let (_daemon, log) = start_daemon(&setup, "daemon.log");
    let port = server.addr.port();
    assert!(
        client_in_cgroup(&setup, port).starts_with("peer="),
        "v1 allows"
    );

    // Edit on disk, no restart: denied within 2 s.
    fs::write(&policy_file, DENY_ALL).expect("edit");
    let start = std::time::Instant::now();
    let mut denied = false;
    while start.elapsed() < Duration::from_secs(2) {
        if client_in_cgroup(&setup, port).starts_with("ERR") {
            denied = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        denied,
        "the edited policy must apply within 2 s:\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    let daemon_log = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        daemon_log.contains("test policy v2 denies everything"),
        "{daemon_log}"
    );

    // A broken edit: the last good policy (v2) stays live and is reported.
    fs::write(&policy_file, "package agentguard\nthis is not rego\n").expect("broken edit");
    wait_for(
        "the failed reload in status",
        Duration::from_secs(5),
        || status(&setup).contains("FAILED"),
    );
    assert!(
        client_in_cgroup(&setup, port).starts_with("ERR"),
        "v2 still denies"
    );
    let cli = |args: &[&str]| {
        Command::new(bin())
            .arg("--config")
            .arg(setup.config.path())
            .args(args)
            .output()
            .expect("cli")
    };
    let out = cli(&["policy", "reload"]);
    assert!(
        !out.status.success(),
        "reload of a broken bundle fails: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Fixed again, and `policy reload` and SIGHUP both reach the daemon.
    fs::write(&policy_file, ALLOW_WEB).expect("fix");
    wait_for("v1 live again", Duration::from_secs(5), || {
        client_in_cgroup(&setup, port).starts_with("peer=")
    });
    let out = cli(&["policy", "reload"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = fs::read_to_string(setup.config.dir.path().join("run/daemon.json"))
        .ok()
        .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
        .and_then(|v| v["pid"].as_i64())
        .expect("daemon pid");
    let sighups = || {
        fs::read_to_string(&log)
            .map(|l| l.matches("SIGHUP").count())
            .unwrap_or(0)
    };
    let before = sighups();
    // SAFETY: kill(2) to the daemon this test started.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    wait_for("SIGHUP reload logged", Duration::from_secs(5), || {
        sighups() > before
    });
    assert!(client_in_cgroup(&setup, port).starts_with("peer="));
}
