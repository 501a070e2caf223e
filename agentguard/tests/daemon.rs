//! End-to-end: the daemon pins its programs, so killing it leaves agents
//! unable to connect anywhere (fail closed) until it is back.

mod common;

use std::{fs, process::Command, time::Duration};

use common::{daemon::*, *};

#[test]
fn killed_daemon_fails_closed_and_restart_recovers() {
    require_root();
    let server = PeerServer::start("127.0.0.1:0");
    let setup = Setup::new("test", "", true, &target("web", server.addr));

    let (mut daemon, log) = setup.start_daemon("daemon1.log");
    let line = setup.client_in_cgroup(server.addr.port());
    assert!(line.starts_with("peer=127.0.0.1:"), "{line}");
    let peer = line.trim_start_matches("peer=").to_owned();
    wait_for("allowed log line", Duration::from_secs(5), || {
        fs::read_to_string(&log).is_ok_and(|l| {
            allowed_lines(&l)
                .iter()
                .any(|x| field(x, "upstream_local") == Some(&peer))
        })
    });
    let st = setup.status();
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
    let line = setup.client_in_cgroup(server.addr.port());
    assert_eq!(
        line, "ERR ConnectionRefusedError",
        "with the daemon dead the connect must be refused"
    );
    assert_eq!(
        server.peers().len(),
        before,
        "nothing may reach the server directly"
    );
    let st = setup.status();
    assert!(st.contains("not running"), "{st}");
    assert!(st.contains(&setup.cgroup_rel), "still attached: {st}");

    let (_daemon, log2) = setup.start_daemon("daemon2.log");
    let line = setup.client_in_cgroup(server.addr.port());
    assert!(
        line.starts_with("peer=127.0.0.1:"),
        "after restart: {line}\n{}",
        fs::read_to_string(&log2).unwrap_or_default()
    );
    assert_eq!(server.peers().len(), before + 1);

    // The restart swapped the unix-socket guard inside its pinned links too.
    let st = setup.status();
    if !st.contains("NOT guarded") {
        assert!(st.contains("unix sockets: guarded"), "{st}");
        let code = "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect('/run/agentguard-test-nothing.sock'); print('connected')\nexcept OSError as e:\n    print(type(e).__name__)";
        let cmd = setup.in_cgroup(&[PYTHON.into(), "-c".into(), code.into()]);
        let line = stdout(&run_with_timeout(cmd, Duration::from_secs(30)))
            .trim()
            .to_owned();
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
    let setup = Setup::new("attach", "", false, &target("web", server.addr));
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
    let st = setup.status();
    assert!(
        st.contains("not running") && st.contains(&setup.cgroup_rel),
        "{st}"
    );

    // Attached, no daemon: nothing gets out.
    assert_eq!(
        setup.client_in_cgroup(server.addr.port()),
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
    let line = setup.client_in_cgroup(server.addr.port());
    assert!(line.starts_with("peer=127.0.0.1:"), "{line}");
    assert_eq!(server.peers().len(), 1);
    assert!(!setup.status().contains(&setup.cgroup_rel));
    let out = cli(&["detach", "--cgroup", &setup.cgroup_rel]);
    assert!(
        !out.status.success(),
        "detaching twice must say it is not attached"
    );
}

#[test]
fn policy_edits_apply_live_and_a_broken_edit_keeps_the_last_good() {
    require_root();
    let server = PeerServer::start("127.0.0.1:0");
    let policy_dir = tempfile::tempdir().expect("policy dir");
    let policy_file = policy_dir.path().join("agentguard.rego");
    fs::write(&policy_file, ALLOW_WEB).expect("policy");
    let setup = Setup::new(
        "policy",
        &format!("policy_dir = \"{}\"\n", policy_dir.path().display()),
        true,
        &target("web", server.addr),
    );
    let (_daemon, log) = setup.start_daemon("daemon.log");
    let port = server.addr.port();
    assert!(
        setup.client_in_cgroup(port).starts_with("peer="),
        "v1 allows"
    );

    // Edit on disk, no restart: denied within 2 s.
    fs::write(&policy_file, DENY_ALL).expect("edit");
    let start = std::time::Instant::now();
    let mut denied = false;
    while start.elapsed() < Duration::from_secs(2) {
        if setup.client_in_cgroup(port).starts_with("ERR") {
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
        || setup.status().contains("FAILED"),
    );
    assert!(
        setup.client_in_cgroup(port).starts_with("ERR"),
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
        setup.client_in_cgroup(port).starts_with("peer=")
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
    assert!(setup.client_in_cgroup(port).starts_with("peer="));
}
