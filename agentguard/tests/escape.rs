//! End-to-end escape attempts (docs/threat-model.md): an agent inside an
//! attached cgroup tries to reach a target without passing the guard. Each
//! attempt is shown redirected or refused, and audited. Runs as root with the
//! real eBPF programs, real servers and real clients (CI does).

mod common;

use std::{net::SocketAddr, process::Command, time::Duration};

use common::{pg::*, *};

const URING_ENV: &str = "AGENTGUARD_TEST_URING_TO";

/// Not a test on its own: the io_uring client that
/// `io_uring_connect_is_redirected` runs inside `agentguard exec` (this same
/// test binary, run again with `--ignored`). Every socket call it makes goes
/// through the ring: connect, then recv.
#[test]
#[ignore = "helper: run inside the guard by io_uring_connect_is_redirected"]
fn io_uring_client() {
    use io_uring::{IoUring, opcode, types};
    use std::os::fd::AsRawFd as _;

    let dst: SocketAddr = std::env::var(URING_ENV)
        .expect("run by io_uring_connect_is_redirected")
        .parse()
        .expect("an address");
    let mut ring = match IoUring::new(8) {
        Ok(ring) => ring,
        Err(e) => {
            println!("uring-unavailable {}", e.raw_os_error().unwrap_or(0));
            return;
        }
    };
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let addr = socket2::SockAddr::from(dst);
    let mut run = |entry: io_uring::squeue::Entry| -> i32 {
        // SAFETY: the entry's buffers (addr, buf) outlive the wait below.
        unsafe { ring.submission().push(&entry).expect("queue") };
        ring.submit_and_wait(1).expect("submit");
        ring.completion().next().expect("a completion").result()
    };
    let fd = types::Fd(socket.as_raw_fd());
    let res = run(opcode::Connect::new(fd, addr.as_ptr().cast(), addr.len()).build());
    if res < 0 {
        println!("uring-connect ERR {}", -res);
        return;
    }
    let mut buf = [0u8; 256];
    let n = run(opcode::Recv::new(fd, buf.as_mut_ptr(), buf.len() as u32).build());
    match n {
        n if n > 0 => println!(
            "uring-connect {}",
            String::from_utf8_lossy(&buf[..n as usize]).trim()
        ),
        0 => println!("uring-connect ERR empty"),
        n => println!("uring-connect ERR {}", -n),
    }
}

/// Runs the io_uring helper inside the guard against `dst`; its result line.
fn uring_connect(config: &TestConfig, dst: SocketAddr) -> (String, String) {
    let me = std::env::current_exe().expect("test binary");
    let mut cmd = Command::new(bin());
    cmd.arg("--config")
        .arg(config.path())
        .args(["exec", "--"])
        .arg(me)
        .args([
            "--ignored",
            "--exact",
            "io_uring_client",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(URING_ENV, dst.to_string());
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    let (o, e) = (stdout(&out), stderr(&out));
    // The harness prints "test io_uring_client ... " on the same line.
    let line = o
        .lines()
        .find_map(|l| l.find("uring-").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("the helper printed nothing: {o}\n{e}"))
        .to_owned();
    (line, e)
}

#[test]
fn io_uring_connect_is_redirected() {
    require_root();
    let allowed = PeerServer::start("127.0.0.1:0");
    let other = PeerServer::start("127.0.0.1:0");
    let config = TestConfig::new(&target("web", allowed.addr));

    let (line, log) = uring_connect(&config, allowed.addr);
    if let Some(errno) = line.strip_prefix("uring-unavailable ") {
        // No ring, no vector: only acceptable when the host turned io_uring off.
        let disabled =
            std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").unwrap_or_default();
        assert!(
            matches!(disabled.trim(), "1" | "2"),
            "io_uring_setup failed (errno {errno}) although kernel.io_uring_disabled={disabled}"
        );
        eprintln!(
            "io_uring is disabled here (kernel.io_uring_disabled={disabled}): nothing to escape through"
        );
        return;
    }
    let peer = line
        .strip_prefix("uring-connect peer=")
        .unwrap_or_else(|| panic!("an allowed target must answer: {line}\n{log}"));
    assert!(
        allowed_lines(&log)
            .iter()
            .any(|l| field(l, "upstream_local") == Some(peer)),
        "an io_uring connect must go through the proxy: {line}\n{log}"
    );

    let (line, log) = uring_connect(&config, other.addr);
    assert!(line.starts_with("uring-connect ERR"), "{line}\n{log}");
    assert!(
        other.peers().is_empty(),
        "the unlisted server must never see a connection"
    );
    let denied = audited_denials(&config, "not a configured target");
    let record = denied
        .iter()
        .find(|r| r["target"]["port"] == other.addr.port())
        .unwrap_or_else(|| panic!("no audited denial for {}: {denied:?}", other.addr));
    assert_eq!(record["identity"]["uid"], 0, "{record}");
    assert!(record["identity"]["pid"].as_u64() > Some(1), "{record}");
}

/// A cgroup of the test's own beside the guarded one, removed on drop.
struct Sibling(std::path::PathBuf);

impl Sibling {
    fn new(owner: Option<u32>) -> Self {
        let path = cgroup2_mount().join(format!("agentguard/escape-sibling-{}", tag()));
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir_all(&path).expect("sibling cgroup");
        if let Some(uid) = owner {
            // Delegated to the agent's uid, as systemd does for a user's
            // own slice: the agent may write this cgroup.procs.
            for p in [path.clone(), path.join("cgroup.procs")] {
                std::os::unix::fs::chown(&p, Some(uid), Some(uid)).expect("chown");
            }
        }
        Self(path)
    }
}

impl Drop for Sibling {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Tries to move itself into each cgroup.procs given, then prints its
/// cgroup and what a connect to `port` gets.
const MOVE_SELF: &str = r#"
import errno, os, socket, sys
port = int(sys.argv[1])
for path in sys.argv[2:]:
    try:
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        print("move", path, "moved")
    except OSError as e:
        print("move", path, "ERR", errno.errorcode.get(e.errno, e.errno))
print("cgroup", [l for l in open("/proc/self/cgroup").read().splitlines() if l.startswith("0::")][0])
try:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    print("connect", s.makefile().readline().strip() or "ERR empty")
except Exception as e:
    print("connect ERR", type(e).__name__)
"#;

#[test]
fn unprivileged_agent_cannot_move_itself_to_another_cgroup() {
    require_root();
    let allowed = PeerServer::start("127.0.0.1:0");
    let other = PeerServer::start("127.0.0.1:0");
    let config = TestConfig::new(&target("web", allowed.addr));
    let nobody = 65534;
    let sibling = Sibling::new(Some(nobody));
    let mount = cgroup2_mount();
    let root_procs = mount.join("cgroup.procs");
    let parent_procs = mount.join("agentguard/cgroup.procs");
    let sibling_procs = sibling.0.join("cgroup.procs");
    let mut argv: Vec<String> = vec![
        "setpriv".into(),
        format!("--reuid={nobody}"),
        format!("--regid={nobody}"),
        "--clear-groups".into(),
        PYTHON.into(),
        "-c".into(),
        MOVE_SELF.into(),
        other.addr.port().to_string(),
    ];
    for p in [&root_procs, &parent_procs, &sibling_procs] {
        argv.push(p.display().to_string());
    }
    let out = exec(&config, &args(&argv));
    let (o, e) = (stdout(&out), stderr(&out));
    for p in [&root_procs, &parent_procs, &sibling_procs] {
        let line = o
            .lines()
            .find(|l| l.starts_with(&format!("move {} ", p.display())))
            .unwrap_or_else(|| panic!("{}: {o}\n{e}", p.display()));
        // Open fails (EACCES) where the file is root's; for the delegated
        // sibling the write fails: moving needs write access to the common
        // ancestor's cgroup.procs too.
        assert!(
            line.ends_with("ERR EACCES") || line.ends_with("ERR EPERM"),
            "an unprivileged agent must not leave its cgroup: {line}\n{o}\n{e}"
        );
    }
    let cgroup = o
        .lines()
        .find_map(|l| l.strip_prefix("cgroup 0::"))
        .unwrap_or_else(|| panic!("{o}\n{e}"));
    assert!(
        cgroup.starts_with("/agentguard/exec-"),
        "still in the guarded cgroup: {cgroup}"
    );
    assert!(o.contains("connect ERR"), "still guarded: {o}\n{e}");
    assert!(other.peers().is_empty());
    let denied = audited_denials(&config, "not a configured target");
    assert!(
        denied
            .iter()
            .any(|r| r["identity"]["uid"] == nobody && r["target"]["port"] == other.addr.port()),
        "the connect after the attempt is audited with the agent's uid: {denied:?}"
    );
}

/// Out of scope, shown so the threat model's claim is checked: root inside
/// the cgroup can leave it, and then nothing guards it.
#[test]
fn root_agent_can_leave_its_cgroup_which_is_why_agents_must_not_be_root() {
    require_root();
    let allowed = PeerServer::start("127.0.0.1:0");
    let other = PeerServer::start("127.0.0.1:0");
    let config = TestConfig::new(&target("web", allowed.addr));
    let sibling = Sibling::new(None);
    let procs = sibling.0.join("cgroup.procs").display().to_string();
    let port = other.addr.port().to_string();
    let out = exec(&config, &[PYTHON, "-c", MOVE_SELF, &port, &procs]);
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(o.contains(&format!("move {procs} moved")), "{o}\n{e}");
    assert!(o.contains("connect peer="), "{o}\n{e}");
    assert_eq!(other.peers().len(), 1, "root reached it unguarded");
}

/// A unix-socket server outside the guard that answers "unix-ok".
const UNIX_SERVER: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1]); s.listen(8)
while True:
    c, _ = s.accept(); c.sendall(b"unix-ok\n"); c.close()
"#;

/// A unix datagram server outside the guard: appends what it gets to a file.
const UNIX_DGRAM_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
while True:
    data = s.recv(100)
    with open(sys.argv[2], "ab") as f: f.write(data + b"\n")
"#;

/// Connects to each unix address given (`@name`: abstract; `dgram:PATH`:
/// a datagram with sendto, no connect) and prints what it got, then tries
/// a symlink to the first.
const UNIX_CLIENT: &str = r#"
import os, socket, sys
def talk(addr):
    if addr.startswith("dgram:"):
        d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            d.sendto(b"inside", addr[6:]); return "sent"
        except OSError as e:
            return "ERR " + type(e).__name__
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(addr.replace("@", "\0", 1) if addr.startswith("@") else addr)
        return s.makefile().readline().strip() or "ERR empty"
    except OSError as e:
        return "ERR " + type(e).__name__
for addr in sys.argv[2:]:
    print("unix", addr, talk(addr))
link = sys.argv[1]
os.symlink(sys.argv[2], link)
print("symlink", talk(link))
"#;

#[test]
fn unix_socket_connects_are_refused_unless_allowed() {
    require_root();
    let unavailable = {
        let out = Command::new(bin()).arg("status").output().expect("status");
        let text = stdout(&out);
        let line = text
            .lines()
            .find(|l| l.starts_with("unix sockets:"))
            .unwrap_or_else(|| panic!("status must say whether unix sockets are guarded: {text}"))
            .to_owned();
        line.contains("NOT guarded").then_some(line)
    };
    if let Some(line) = unavailable {
        // Before 6.7 the vector stays open; status must say so (it did).
        let release = sh("uname -r");
        eprintln!("{line} (kernel {})", stdout(&release).trim());
        return;
    }
    let pg = Pg::start();
    let socket = pg
        .dir
        .path()
        .join("data")
        .join(format!(".s.PGSQL.{}", pg.port));
    assert!(
        socket.exists(),
        "PostgreSQL's unix socket {}",
        socket.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let allowed = dir.path().join("allowed.sock");
    let _server = Killed(
        Command::new(PYTHON)
            .args(["-c", UNIX_SERVER])
            .arg(&allowed)
            .spawn()
            .expect("unix server"),
    );
    wait_for("unix server", Duration::from_secs(10), || allowed.exists());
    let dgram = dir.path().join("dgram.sock");
    let got = dir.path().join("dgram.got");
    let _dgram_server = Killed(
        Command::new(PYTHON)
            .args(["-c", UNIX_DGRAM_SERVER])
            .arg(&dgram)
            .arg(&got)
            .spawn()
            .expect("unix datagram server"),
    );
    wait_for("unix datagram server", Duration::from_secs(10), || {
        dgram.exists()
    });
    let config = TestConfig::new(&format!(
        "[[targets]]\nname = \"app-db\"\naddress = \"{}\"\nprotocol = \"postgres\"\n\
         [unix_sockets]\nallow = [\"{}\"]\n",
        pg.addr(),
        allowed.display()
    ));
    // psql over the socket: refused. psql over TCP: through the guard.
    let psql = pg_bin("psql").display().to_string();
    let socket_dir = socket.parent().expect("dir").display().to_string();
    let port = pg.port.to_string();
    let script = format!(
        "{psql} -X -A -t -h {socket_dir} -p {port} -U postgres -c \"select 'over-unix'\" 2>&1; \
         {psql} -X -A -t -h 127.0.0.1 -p {port} -U postgres -c \"select 'over-tcp'\" 2>&1"
    );
    let out = exec(&config, &["sh", "-c", &script]);
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(
        !o.contains("over-unix"),
        "psql reached PostgreSQL over its unix socket: {o}\n{e}"
    );
    assert!(o.contains("Operation not permitted"), "{o}\n{e}");
    assert!(
        o.contains("over-tcp"),
        "TCP through the guard must work: {o}\n{e}"
    );
    assert!(
        allowed_lines(&e)
            .iter()
            .any(|l| l.contains("app-db") || l.contains(&pg.addr().to_string())),
        "{e}"
    );

    // Allow-listed: works. A symlink to it, an abstract name, the database
    // socket from Python: refused.
    let link = dir.path().join("link.sock").display().to_string();
    let out = exec(
        &config,
        &[
            PYTHON,
            "-c",
            UNIX_CLIENT,
            &link,
            &allowed.display().to_string(),
            &socket.display().to_string(),
            "@agentguard-test-abstract",
            &format!("dgram:{}", dgram.display()),
        ],
    );
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(
        o.contains(&format!("unix {} unix-ok", allowed.display())),
        "{o}\n{e}"
    );
    assert!(
        o.contains(&format!("unix {} ERR PermissionError", socket.display())),
        "{o}\n{e}"
    );
    assert!(
        o.contains("unix @agentguard-test-abstract ERR PermissionError"),
        "{o}\n{e}"
    );
    assert!(o.contains("symlink ERR PermissionError"), "{o}\n{e}");
    // A datagram (sendto, cgroup/sendmsg_unix) too; the server itself works.
    assert!(
        o.contains(&format!(
            "unix dgram:{} ERR PermissionError",
            dgram.display()
        )),
        "{o}\n{e}"
    );
    let outside = std::os::unix::net::UnixDatagram::unbound().expect("socket");
    outside
        .send_to(b"outside", &dgram)
        .expect("send outside the guard");
    wait_for("the datagram from outside", Duration::from_secs(10), || {
        got.exists()
    });
    assert_eq!(
        std::fs::read_to_string(&got).expect("got"),
        "outside\n",
        "nothing from inside the guard may arrive"
    );

    // Each refusal is audited with who asked and where to.
    let denied = audited_denials(&config, "unix socket not in unix_sockets.allow");
    let to = |what: &str| {
        denied
            .iter()
            .filter(|r| r["request"]["summary"] == format!("unix socket {what}"))
            .collect::<Vec<_>>()
    };
    // comm comes from the kernel's report; exe from /proc, gone once psql
    // has exited.
    let db = to(&socket.display().to_string());
    for who in ["psql", "python3"] {
        assert!(
            db.iter().any(|r| r["identity"]["comm"] == who),
            "{who}'s attempt: {denied:?}"
        );
    }
    assert_eq!(to(&link).len(), 1, "{denied:?}");
    assert_eq!(to("@agentguard-test-abstract").len(), 1, "{denied:?}");
    assert_eq!(to(&dgram.display().to_string()).len(), 1, "{denied:?}");
    assert!(to(&allowed.display().to_string()).is_empty(), "{denied:?}");
    for r in &denied {
        assert_eq!(r["identity"]["uid"], 0, "{r}");
        assert!(r["identity"]["pid"].as_u64() > Some(1), "{r}");
    }
}
