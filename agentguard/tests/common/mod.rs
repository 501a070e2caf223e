//! Helpers for the end-to-end tests: they run the real binary with the real
//! eBPF programs (so they need root, which CI has), real servers on loopback
//! or in a network namespace, and real clients (python3, bash, dig).
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

pub mod daemon;
pub mod pg;

pub const PYTHON: &str = "/usr/bin/python3";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_agentguard")
}

/// These tests load eBPF programs and make cgroups; without root they
/// cannot show anything, so they fail loudly rather than pass vacuously.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the eBPF end-to-end tests must run as root (CI does)"
    );
}

/// A unique-enough tag for names shared across the machine (netns, cgroups,
/// bpffs folders): tests run in parallel processes.
pub fn tag() -> String {
    format!("{}", std::process::id())
}

pub fn cgroup2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .expect("a cgroup2 mount")
}

/// A TCP server that tells each client the peer address it sees, and
/// remembers every peer.
pub struct PeerServer {
    pub addr: SocketAddr,
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
}

impl PeerServer {
    pub fn start(bind: &str) -> Self {
        let listener = TcpListener::bind(bind).expect("bind test server");
        let addr = listener.local_addr().expect("local addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (Arc::clone(&peers), Arc::clone(&stop));
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, peer)) => {
                        p.lock().expect("lock").push(peer);
                        let _ = stream.write_all(format!("peer={peer}\n").as_bytes());
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { addr, peers, stop }
    }

    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().expect("lock").clone()
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads what a PeerServer says to a direct (unguarded) client.
pub fn direct_peer_line(addr: SocketAddr) -> (String, SocketAddr) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("direct connect");
    let local = s.local_addr().expect("local");
    let mut line = String::new();
    s.read_to_string(&mut line).expect("read");
    (line.trim().to_owned(), local)
}

/// A config file plus a private run_dir in a temp folder.
pub struct TestConfig {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TestConfig {
    /// `body` is appended to a header that gives the test its own run_dir
    /// (so a daemon of another test is never mistaken for ours).
    /// Unless `body` names its own `policy_dir`, the shipped policies apply.
    pub fn new(body: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agentguard.toml");
        let policy = if body.contains("policy_dir") {
            String::new()
        } else {
            format!("policy_dir = \"{}\"\n", shipped_policies().display())
        };
        let text = format!(
            "run_dir = \"{}\"\nstate_dir = \"{}\"\n{policy}{body}",
            dir.path().join("run").display(),
            dir.path().join("state").display()
        );
        std::fs::write(&path, text).expect("write config");
        Self { dir, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

pub fn shipped_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

pub fn target(name: &str, addr: SocketAddr) -> String {
    format!("[[targets]]\nname = \"{name}\"\naddress = \"{addr}\"\n")
}

/// Runs `agentguard exec` with the config and returns its output.
pub fn exec(config: &TestConfig, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("--config")
        .arg(config.path())
        .arg("exec")
        .arg("--")
        .args(args);
    run_with_timeout(cmd, Duration::from_secs(60))
}

pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    cmd.env("AGENTGUARD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn");
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let d = Arc::clone(&done);
    thread::spawn(move || {
        let start = Instant::now();
        while !d.load(Ordering::Relaxed) {
            if start.elapsed() > timeout {
                // SAFETY: kill(2) of our own child.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
    });
    let out = child.wait_with_output().expect("wait");
    done.store(true, Ordering::Relaxed);
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Value of `key=value` in a tracing log line (quotes stripped).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!("{key}=");
    let start = line
        .match_indices(&needle)
        .find(|(i, _)| {
            *i == 0
                || !line.as_bytes()[i - 1].is_ascii_alphanumeric() && line.as_bytes()[i - 1] != b'_'
        })?
        .0
        + needle.len();
    let rest = &line[start..];
    if let Some(stripped) = rest.strip_prefix('"') {
        stripped.split('"').next()
    } else {
        rest.split([' ', '}', ',']).next()
    }
}

/// The log lines of allowed connections.
pub fn allowed_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("agentguard::proxy") && l.contains(" allowed "))
        .collect()
}

/// A python3 TCP client: connects, prints the first line the server sends,
/// or `ERR <exception name>`.
pub fn py_client(host: &str, port: u16) -> Vec<String> {
    let code = r#"
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    data = s.makefile().readline().strip()
    print(data if data else "ERR empty")
except Exception as e:
    print("ERR", type(e).__name__)
"#;
    vec![
        PYTHON.into(),
        "-c".into(),
        code.into(),
        host.into(),
        port.to_string(),
    ]
}

pub fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A child process killed on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// `agentguard ca init` for this config; returns the CA certificate's path.
pub fn ca_init(config: &TestConfig) -> PathBuf {
    let out = Command::new(bin())
        .arg("--config")
        .arg(config.path())
        .args(["ca", "init"])
        .output()
        .expect("ca init");
    assert!(out.status.success(), "ca init: {}", stderr(&out));
    config.dir.path().join("state/ca/ca.crt")
}

/// `sh -c LINE` outside any guard, killed after 30 s.
pub fn sh_timed(line: &str) -> Output {
    let mut c = Command::new("sh");
    c.args(["-c", line]);
    run_with_timeout(c, Duration::from_secs(30))
}

pub fn sh(cmd: &str) -> Output {
    Command::new("sh").arg("-c").arg(cmd).output().expect("sh")
}

/// `agentguard audit --json` for the config's state_dir, one value per record.
pub fn audit_records(config: &TestConfig) -> Vec<serde_json::Value> {
    let mut cmd = Command::new(bin());
    cmd.arg("--config")
        .arg(config.path())
        .args(["audit", "--json", "--limit", "1000"]);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert!(out.status.success(), "audit: {}", stderr(&out));
    stdout(&out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// The audited denials whose reason contains `reason`.
pub fn audited_denials(config: &TestConfig, reason: &str) -> Vec<serde_json::Value> {
    audit_records(config)
        .into_iter()
        .filter(|r| {
            r["action"] == "deny" && r["reason"].as_str().is_some_and(|s| s.contains(reason))
        })
        .collect()
}

/// A root-only secret file (mode 0600) holding `secret`.
pub fn secret_file(dir: &Path, name: &str, secret: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).expect("secret");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}
