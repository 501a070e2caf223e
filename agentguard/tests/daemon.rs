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
        .env("AGENTGUARD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("daemon");
    let info = setup.config.dir.path().join("run/daemon.json");
    let daemon = Killed(child);
    wait_for("daemon ready", Duration::from_secs(20), || info.exists());
    (daemon, log)
}

/// A client placed straight into the agent's cgroup (as a service manager
/// would place an agent), independent of any agentguard process.
fn client_in_cgroup(setup: &Setup, port: u16) -> String {
    let client = py_client("127.0.0.1", port);
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec \"$@\"",
            setup.cgroup_dir.display()
        ))
        .arg("sh")
        .args(&client);
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
    assert!(err.contains("line 5") && err.contains("bogus"), "{err}");
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
