//! Faults around a running daemon (real eBPF, real servers on loopback):
//! backends that die mid-query and mid-response, a backend that is not
//! there, the daemon SIGKILLed under load, the policy folder deleted or
//! corrupted while live, and the state disk filling up. Each must end in a
//! clear error for the agent and in the log, no panic, and no acknowledged
//! audit record lost. (daemon.rs covers a plain kill/restart and broken
//! single-file policy edits.)

mod common;

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use common::{
    daemon::*,
    pg::{Pg, pg_bin, psql_args},
    *,
};

fn assert_no_panic(log: &Path) {
    let text = fs::read_to_string(log).unwrap_or_default();
    assert!(!text.contains("panicked"), "the daemon panicked:\n{text}");
}

fn assert_alive(setup: &Setup) {
    let st = setup.status();
    assert!(st.contains("running (pid"), "daemon not running:\n{st}");
}

/// Decision ids in the audit log (read with the CLI, beside the daemon).
fn audit_ids(setup: &Setup) -> BTreeSet<String> {
    let out = setup.cli(&["audit", "--json", "--limit", "1000000"]);
    assert!(out.status.success(), "audit: {}", stderr(&out));
    stdout(&out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["decision_id"].as_str().map(str::to_owned))
        .collect()
}

/// The audit writer's counters (run_dir/audit.json, refreshed every 2 s).
fn audit_stats(setup: &Setup) -> serde_json::Value {
    fs::read_to_string(setup.config.dir.path().join("run/audit.json"))
        .ok()
        .and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or_default()
}

/// `program args…` inside the agent's cgroup.
fn in_cgroup(setup: &Setup, program: &str, args: &[&str]) -> Command {
    let argv: Vec<String> = std::iter::once(program)
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect();
    setup.in_cgroup(&argv)
}

fn sigkill(pid: i32) {
    // SAFETY: kill(2) of a process this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

#[test]
fn postgres_backend_terminated_mid_query() {
    require_root();
    let pg = Pg::start();
    let setup = Setup::new(
        "fault-pg",
        "",
        true,
        &format!(
            "[[targets]]\nname = \"db\"\naddress = \"{}\"\nprotocol = \"postgres\"\n",
            pg.addr()
        ),
    );
    let (_daemon, log) = setup.start_daemon("daemon.log");
    let psql = pg_bin("psql").display().to_string();
    let mut sleep_args = psql_args(pg.port);
    sleep_args.extend(["-c".into(), "SELECT pg_sleep(60)".into()]);
    let cmd = in_cgroup(&setup, &psql, &args(&sleep_args));
    let sleeper = thread::spawn(move || run_with_timeout(cmd, Duration::from_secs(30)));

    let sleeping = "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'";
    wait_for("the query on the server", Duration::from_secs(15), || {
        pg.psql_direct(sleeping) == "1"
    });
    let killed = pg.psql_direct(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'",
    );
    assert_eq!(killed, "1");
    let out = sleeper.join().expect("psql thread");
    assert!(!out.status.success(), "psql must fail: {}", stdout(&out));
    // The server's own FATAL reaches the agent through the guard.
    assert!(
        stderr(&out).contains("terminating connection due to administrator command"),
        "{}\n{}",
        stderr(&out),
        fs::read_to_string(&log).unwrap_or_default()
    );

    // The guard goes on serving.
    let mut one = psql_args(pg.port);
    one.extend(["-c".into(), "SELECT 41 + 1".into()]);
    let out = run_with_timeout(
        in_cgroup(&setup, &psql, &args(&one)),
        Duration::from_secs(30),
    );
    assert_eq!(stdout(&out).trim(), "42", "{}", stderr(&out));
    assert_alive(&setup);
    assert_no_panic(&log);
}

#[test]
fn http_server_killed_mid_body() {
    require_root();
    // Far larger than every socket buffer on the way can hold (loopback
    // receive buffers autotune up to net.ipv4.tcp_rmem's max, 32 MiB here),
    // so the server is still sending when it dies. Sparse: no disk used.
    const SIZE: usize = 512 << 20;
    let docroot = tempfile::tempdir().expect("docroot");
    fs::File::create(docroot.path().join("big.bin"))
        .and_then(|f| f.set_len(SIZE as u64))
        .expect("body");
    let port = free_port();
    // A real server (python3's http.server) that is SIGKILLed while sending.
    let mut server = Command::new(PYTHON)
        .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
        .arg(docroot.path())
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("http.server");
    let server_log = BufReader::new(server.stderr.take().expect("stderr"));
    let (got_request, requested) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in server_log.lines().map_while(Result::ok) {
            if line.contains("GET /big.bin") {
                let _ = got_request.send(());
            }
        }
    });
    wait_for("http.server up", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let server = Killed(server);
    let setup = Setup::new(
        "fault-http",
        "",
        true,
        &format!(
            "[[targets]]\nname = \"files\"\naddress = \"127.0.0.1:{port}\"\nprotocol = \"http\"\n"
        ),
    );
    let (_daemon, log) = setup.start_daemon("daemon.log");
    let url = format!("http://127.0.0.1:{port}/big.bin");
    // Slow enough that the server is still sending when it dies.
    let cmd = in_cgroup(
        &setup,
        "curl",
        &[
            "-sS",
            "--limit-rate",
            "2M",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            &url,
        ],
    );
    let client = thread::spawn(move || run_with_timeout(cmd, Duration::from_secs(60)));
    requested
        .recv_timeout(Duration::from_secs(20))
        .expect("the request reached the server");
    thread::sleep(Duration::from_millis(500));
    sigkill(server.0.id() as i32);
    drop(server);
    let out = client.join().expect("curl thread");
    let (code, size) = stdout(&out)
        .split_once(' ')
        .map(|(c, s)| (c.to_owned(), s.trim().parse::<usize>().unwrap_or(0)))
        .unwrap_or_default();
    // The agent must not take a cut-off body for a whole one.
    assert!(
        !out.status.success(),
        "curl must fail, got {code} with {size} bytes: {}",
        stderr(&out)
    );
    assert!(
        size < SIZE,
        "a short body must not look complete ({size} bytes)"
    );
    eprintln!(
        "curl: {} ({code}, {size} of {SIZE} bytes)",
        stderr(&out).trim()
    );
    assert_alive(&setup);
    assert_no_panic(&log);
}

#[test]
fn unreachable_backend_is_a_clear_refusal() {
    require_root();
    let closed = free_port();
    let setup = Setup::new(
        "fault-unreach",
        "",
        true,
        &format!("[[targets]]\nname = \"closed\"\naddress = \"127.0.0.1:{closed}\"\n"),
    );
    let (_daemon, log) = setup.start_daemon("daemon.log");
    // A reset at once, not a hang and not an accepted-then-closed stream.
    assert_eq!(setup.client_in_cgroup(closed), "ERR ConnectionResetError");
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("upstream connect failed: Connection refused"),
        "{text}"
    );
    // Recorded as a session that ended with the reason.
    wait_for("session recorded", Duration::from_secs(10), || {
        stdout(&setup.cli(&["sessions", "--json"])).contains("upstream connect failed")
    });
    assert_alive(&setup);
    assert_no_panic(&log);
}

/// Connects from `threads` threads, `count` times each (0: until `stop`
/// exists); prints `ok=N err=M`.
const CONNECT_LOOP: &str = r#"
import os, socket, sys, threading, time
port, threads, count, stop = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
# Bounded even when the test that started it dies first: at most 120 s,
# and not past its test's folder.
deadline = time.monotonic() + 120
ok = err = 0
lock = threading.Lock()
def running():
    return (not os.path.exists(stop) and os.path.isdir(os.path.dirname(stop))
            and time.monotonic() < deadline)
def run():
    global ok, err
    n = 0
    while (count == 0 or n < count) and running():
        n += 1
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            good = s.makefile().readline().startswith("peer=")
            s.close()
        except Exception:
            good = False
        with lock:
            if good: ok += 1
            else: err += 1
ts = [threading.Thread(target=run) for _ in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
print(f"ok={ok} err={err}")
"#;

#[test]
fn daemon_sigkilled_under_load_fails_closed_and_keeps_its_audit() {
    require_root();
    let server = PeerServer::start("127.0.0.1:0");
    let setup = Setup::new("fault-kill", "", true, &target("web", server.addr));
    let (mut daemon, _log) = setup.start_daemon("daemon1.log");
    let stop = setup.config.dir.path().join("stop-load");
    let port = server.addr.port().to_string();
    let stop_arg = stop.display().to_string();
    let mut load = in_cgroup(
        &setup,
        PYTHON,
        &["-c", CONNECT_LOOP, &port, "16", "0", stop_arg.as_str()],
    );
    load.stdout(Stdio::piped()).stderr(Stdio::piped());
    let load = load.spawn().expect("load");

    wait_for("traffic through the guard", Duration::from_secs(30), || {
        server.peers().len() >= 300
    });
    wait_for("records on disk", Duration::from_secs(10), || {
        audit_ids(&setup).len() >= 100
    });
    let acknowledged = audit_ids(&setup);
    daemon.0.kill().expect("kill");
    daemon.0.wait().expect("wait");

    // Down: the load keeps trying, nothing gets through.
    thread::sleep(Duration::from_millis(200));
    let peers_down = server.peers().len();
    assert_eq!(
        setup.client_in_cgroup(server.addr.port()),
        "ERR ConnectionRefusedError"
    );
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        server.peers().len(),
        peers_down,
        "nothing may reach the server while down"
    );

    let (_daemon2, log2) = setup.start_daemon("daemon2.log");
    wait_for("traffic again", Duration::from_secs(30), || {
        server.peers().len() >= peers_down + 100
    });
    fs::write(&stop, "").expect("stop file");
    let out = load.wait_with_output().expect("load output");
    let counts = stdout(&out);
    assert!(counts.starts_with("ok="), "{counts}{}", stderr(&out));
    assert!(
        !counts.contains("err=0"),
        "the down window must show as refusals: {counts}"
    );

    // The database opened again (the restart needed it) and every record
    // acknowledged before the kill is still there.
    // Records of the new daemon appear within the writer's batch window.
    let mut after = audit_ids(&setup);
    for _ in 0..50 {
        if after.len() > acknowledged.len() {
            break;
        }
        thread::sleep(Duration::from_millis(100));
        after = audit_ids(&setup);
    }
    let lost: Vec<_> = acknowledged.difference(&after).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged records lost: {lost:?}",
        lost.len()
    );
    assert!(
        after.len() > acknowledged.len(),
        "records after the restart: {} (before: {}), writer: {}\n{}",
        after.len(),
        acknowledged.len(),
        audit_stats(&setup),
        fs::read_to_string(&log2).unwrap_or_default()
    );
    eprintln!(
        "load: {}; records before the kill {}, after the restart {}",
        counts.trim(),
        acknowledged.len(),
        after.len()
    );
    assert_no_panic(&log2);
}

#[test]
fn policy_folder_deleted_or_corrupted_keeps_the_last_good() {
    require_root();
    let server = PeerServer::start("127.0.0.1:0");
    let parent = tempfile::tempdir().expect("policy parent");
    let policy_dir = parent.path().join("policies");
    fs::create_dir(&policy_dir).expect("policy dir");
    fs::write(policy_dir.join("agentguard.rego"), ALLOW_WEB).expect("policy");
    let setup = Setup::new(
        "fault-policy",
        &format!("policy_dir = \"{}\"\n", policy_dir.display()),
        true,
        &target("web", server.addr),
    );
    let (_daemon, log) = setup.start_daemon("daemon.log");
    let port = server.addr.port();
    assert!(setup.client_in_cgroup(port).starts_with("peer="));

    // The whole folder goes away: v1 stays, status says why.
    fs::remove_dir_all(&policy_dir).expect("delete");
    wait_for(
        "the failed reload in status",
        Duration::from_secs(5),
        || setup.status().contains("FAILED"),
    );
    let st = setup.status();
    assert!(st.contains(&policy_dir.display().to_string()), "{st}");
    assert!(
        setup.client_in_cgroup(port).starts_with("peer="),
        "the last good policy stays live"
    );

    // Back, with a new policy: picked up without a restart.
    fs::create_dir(&policy_dir).expect("recreate");
    fs::write(policy_dir.join("agentguard.rego"), DENY_ALL).expect("v2");
    wait_for(
        "v2 live after the folder came back",
        Duration::from_secs(10),
        || setup.client_in_cgroup(port).starts_with("ERR"),
    );

    // Garbage bytes, then an empty (truncated) file: v2 stays.
    for (what, bytes) in [
        ("binary garbage", &b"\xff\xfe\x00rego\x80"[..]),
        ("empty file", b""),
    ] {
        fs::write(policy_dir.join("agentguard.rego"), bytes).expect("corrupt");
        wait_for(what, Duration::from_secs(5), || {
            setup.status().contains("FAILED")
        });
        assert!(
            setup.client_in_cgroup(port).starts_with("ERR"),
            "{what}: v2 must stay live"
        );
        fs::write(policy_dir.join("agentguard.rego"), DENY_ALL).expect("v2 again");
        wait_for("v2 reloaded", Duration::from_secs(5), || {
            !setup.status().contains("FAILED")
        });
    }
    assert_alive(&setup);
    assert_no_panic(&log);
}

/// A small tmpfs mounted over the config's state_dir, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> Self {
        fs::create_dir_all(at).expect("mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "agentguard-test",
            ])
            .arg(at)
            .output()
            .expect("mount");
        assert!(out.status.success(), "mount tmpfs: {}", stderr(&out));
        Self(at.to_owned())
    }

    /// Takes every free byte.
    fn fill(&self) {
        let out = Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", self.0.join("filler").display()))
            .output()
            .expect("dd");
        assert!(stderr(&out).contains("No space left"), "{}", stderr(&out));
    }

    fn free(&self) {
        fs::remove_file(self.0.join("filler")).expect("remove filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// `count` connects, one after the other, from the agent cgroup: (ok, failed).
fn burst(setup: &Setup, port: u16, count: usize) -> (usize, usize) {
    let (p, c) = (port.to_string(), count.to_string());
    let out = run_with_timeout(
        in_cgroup(
            setup,
            PYTHON,
            &["-c", CONNECT_LOOP, &p, "1", &c, "/nonexistent"],
        ),
        Duration::from_secs(120),
    );
    let text = stdout(&out);
    let num = |key: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("burst: {text}{}", stderr(&out)))
    };
    (num("ok="), num("err="))
}

#[test]
fn state_disk_full_denies_with_a_clear_error_and_keeps_the_records() {
    require_root();
    let server = PeerServer::start("127.0.0.1:0");
    let setup = Setup::new(
        "fault-disk",
        "",
        true,
        &format!(
            "{}[audit]\nqueue = 256\non_overload = \"deny\"\n",
            target("web", server.addr)
        ),
    );
    let disk = SmallDisk::mount(&setup.config.dir.path().join("state"), "4m");
    let (_daemon, log) = setup.start_daemon("daemon.log");
    let port = server.addr.port();
    assert_eq!(burst(&setup, port, 20), (20, 0));
    wait_for("records on disk", Duration::from_secs(10), || {
        audit_ids(&setup).len() >= 20
    });
    let acknowledged = audit_ids(&setup);

    disk.fill();
    // redb has some room left inside its file; keep going until commits
    // need more and the queue (256) fills: then on_overload = "deny" refuses.
    let mut denied = 0;
    for _ in 0..20 {
        let (_, err) = burst(&setup, port, 200);
        denied += err;
        if denied > 0 {
            break;
        }
    }
    assert!(
        denied > 0,
        "a full disk must end in refusals (on_overload = deny)"
    );
    let before_peers = server.peers().len();
    assert_eq!(burst(&setup, port, 5), (0, 5), "still full: refused");
    assert_eq!(
        server.peers().len(),
        before_peers,
        "refused before reaching the server"
    );
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("No space left on device"), "{text}");
    assert!(text.contains("audit queue full"), "{text}");
    wait_for("write errors counted", Duration::from_secs(5), || {
        audit_stats(&setup)["write_errors"].as_u64() > Some(0)
    });
    assert_alive(&setup);

    // Room again: the writer catches up and traffic flows.
    disk.free();
    wait_for(
        "traffic after the disk has room",
        Duration::from_secs(30),
        || burst(&setup, port, 1) == (1, 0),
    );
    let after = audit_ids(&setup);
    let lost: Vec<_> = acknowledged.difference(&after).collect();
    assert!(lost.is_empty(), "acknowledged records lost: {lost:?}");
    assert_no_panic(&log);
}
