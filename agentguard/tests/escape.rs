//! End-to-end escape attempts (docs/threat-model.md): an agent inside an
//! attached cgroup tries to reach a target without passing the guard. Each
//! attempt is shown redirected or refused, and audited. Runs as root with the
//! real eBPF programs, real servers and real clients (CI does).

mod common;

use std::{net::SocketAddr, process::Command, time::Duration};

use common::{pg::*, *};

const URING_ENV: &str = "AGENTGUARD_TEST_URING_TO";

/// Not a test on its own: the io_uring client that
/// `io_uring_is_refused_in_exec_and_redirected_under_the_daemon` runs in a
/// guard (this same test binary, run again with `--ignored`). Every socket call it makes goes
/// through the ring: connect, then recv.
#[test]
#[ignore = "helper: run by io_uring_is_refused_in_exec_and_redirected_under_the_daemon"]
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

/// The io_uring helper's argv: this test binary, run again.
fn uring_argv() -> Vec<String> {
    let me = std::env::current_exe().expect("test binary");
    let mut argv = vec![me.display().to_string()];
    argv.extend(
        [
            "--ignored",
            "--exact",
            "io_uring_client",
            "--nocapture",
            "--test-threads=1",
        ]
        .map(String::from),
    );
    argv
}

/// Runs the io_uring helper against `dst`; its result line and stderr.
fn uring_connect(mut cmd: Command, dst: SocketAddr) -> (String, String) {
    cmd.env(URING_ENV, dst.to_string());
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

/// Under `exec` a ring cannot even be set up: its IORING_OP_SOCKET would
/// make sockets that exec's seccomp filter on socket families never sees.
/// Under the daemon (no filter: the agent was started by someone else),
/// the ring's connect runs the same cgroup hook as connect(2).
#[test]
fn io_uring_is_refused_in_exec_and_redirected_under_the_daemon() {
    require_root();
    let allowed = PeerServer::start("127.0.0.1:0");
    let other = PeerServer::start("127.0.0.1:0");

    let config = TestConfig::new(&target("web", allowed.addr));
    let mut cmd = Command::new(bin());
    cmd.arg("--config")
        .arg(config.path())
        .args(["exec", "--"])
        .args(uring_argv());
    let (line, log) = uring_connect(cmd, allowed.addr);
    assert_eq!(line, "uring-unavailable 1", "EPERM inside exec: {log}");
    assert!(allowed.peers().is_empty());

    // Outside any guard the ring works here (or the host turned it off,
    // and there is no vector at all).
    let argv = uring_argv();
    let mut outside = Command::new(&argv[0]);
    outside.args(&argv[1..]);
    let (line, _) = uring_connect(outside, allowed.addr);
    if let Some(errno) = line.strip_prefix("uring-unavailable ") {
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

    let setup = common::daemon::Setup::new("uring", "", true, &target("web", allowed.addr));
    let (_daemon, log) = setup.start_daemon("daemon.log");
    let (line, e) = uring_connect(setup.in_cgroup(&uring_argv()), allowed.addr);
    let peer = line
        .strip_prefix("uring-connect peer=")
        .unwrap_or_else(|| panic!("an allowed target must answer: {line}\n{e}"))
        .to_owned();
    wait_for(
        "the daemon logs the ring's connect",
        Duration::from_secs(10),
        || {
            allowed_lines(&std::fs::read_to_string(&log).unwrap_or_default())
                .iter()
                .any(|l| field(l, "upstream_local") == Some(&peer))
        },
    );

    let (line, e) = uring_connect(setup.in_cgroup(&uring_argv()), other.addr);
    assert!(line.starts_with("uring-connect ERR"), "{line}\n{e}");
    assert!(
        other.peers().is_empty(),
        "the unlisted server must never see a connection"
    );
    wait_for(
        "the refused ring connect is audited",
        Duration::from_secs(10),
        || {
            audited_denials(&setup.config, "not a configured target")
                .iter()
                .any(|r| r["target"]["port"] == other.addr.port() && r["identity"]["uid"] == 0)
        },
    );
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

/// Outside every guard: records the payload of each ICMP / ICMPv6 packet
/// that reaches loopback (raw sockets see copies of all of them) into the
/// file named first, one hex line per packet, flushed at once.
const ICMP_LISTENER: &str = r#"
import select, socket, sys
out = open(sys.argv[1], "w")
v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
open(sys.argv[1] + ".ready", "w").close()
while True:
    for s in select.select([v4, v6], [], [])[0]:
        out.write(s.recv(65535).hex() + "\n")
        out.flush()
"#;

/// Sends an ICMP echo request carrying `token` every way a process can:
/// ping sockets (v4, v6), raw sockets (v4, v6), and creates the other
/// non-TCP/UDP kinds. One result line each: `NAME sent|created|ERR errno`.
const ICMP_SENDER: &str = r#"
import errno, socket, struct, sys
token = sys.argv[1].encode()
def cksum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff
def echo(kind):
    body = struct.pack("!HH", 0x4147, 1) + token
    head = struct.pack("!BBH", kind, 0, 0)
    return struct.pack("!BBH", kind, 0, cksum(head + body)) + body
def try_send(name, family, type_, proto, dst, kind):
    try:
        s = socket.socket(family, type_, proto)
        s.sendto(echo(kind), (dst, 0))
        print(name, "sent")
    except OSError as e:
        print(name, "ERR", errno.errorcode.get(e.errno, e.errno))
try_send("ping4", socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP, "127.0.0.1", 8)
try_send("ping6", socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6, "::1", 128)
if sys.argv[2] == "root":
    try_send("raw4", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP, "127.0.0.1", 8)
    try_send("raw6", socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6, "::1", 128)
    for name, args in [
        ("raw-ip", (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)),
        ("udplite", (socket.AF_INET, socket.SOCK_DGRAM, 136)),
        ("udplite6", (socket.AF_INET6, socket.SOCK_DGRAM, 136)),
        ("mptcp", (socket.AF_INET, socket.SOCK_STREAM, 262)),
        ("sctp", (socket.AF_INET, socket.SOCK_STREAM, 132)),
        ("sctp-seq", (socket.AF_INET, socket.SOCK_SEQPACKET, 132)),
        ("dccp", (socket.AF_INET, 6, 33)),
    ]:
        try:
            socket.socket(*args).close()
            print(name, "created")
        except OSError as e:
            print(name, "ERR", errno.errorcode.get(e.errno, e.errno))
"#;

/// `net.ipv4.ping_group_range` widened to every group (systemd's own
/// default), restored on drop. Held by one test at a time: another's
/// restore must not narrow it under this one.
struct PingRange {
    old: String,
    _held: std::sync::MutexGuard<'static, ()>,
}

static PING_RANGE: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl PingRange {
    const PATH: &str = "/proc/sys/net/ipv4/ping_group_range";

    fn widen() -> Self {
        let held = PING_RANGE.lock().unwrap_or_else(|e| e.into_inner());
        let old = std::fs::read_to_string(Self::PATH).expect("ping_group_range");
        std::fs::write(Self::PATH, "0 2147483647").expect("widen ping_group_range");
        Self {
            old: old.split_whitespace().collect::<Vec<_>>().join(" "),
            _held: held,
        }
    }
}

impl Drop for PingRange {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.old);
    }
}

/// The ICMP listener, and what it has seen.
struct IcmpListener {
    _child: Killed,
    file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl IcmpListener {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("icmp.seen");
        let child = Killed(
            Command::new(PYTHON)
                .args(["-c", ICMP_LISTENER])
                .arg(&file)
                .spawn()
                .expect("icmp listener"),
        );
        let ready = dir.path().join("icmp.seen.ready");
        wait_for("icmp listener", Duration::from_secs(10), || ready.exists());
        Self {
            _child: child,
            file,
            _dir: dir,
        }
    }

    /// Whether a packet carrying `token` arrived (waiting a little for it:
    /// loopback delivers at once, so a short wait is plenty).
    fn saw(&self, token: &str) -> bool {
        let hex: String = token.bytes().map(|b| format!("{b:02x}")).collect();
        let deadline = std::time::Instant::now() + Duration::from_millis(1500);
        loop {
            let seen = std::fs::read_to_string(&self.file).unwrap_or_default();
            if seen.contains(&hex) {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn results(out: &str) -> std::collections::BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The sender's argv, as root or as nobody (through setpriv).
fn sender(token: &str, root: bool) -> Vec<String> {
    let mut argv: Vec<String> = Vec::new();
    if !root {
        argv.extend(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ]
            .map(String::from),
        );
    }
    argv.extend([
        PYTHON.to_owned(),
        "-c".to_owned(),
        ICMP_SENDER.to_owned(),
        token.to_owned(),
        if root { "root" } else { "nobody" }.to_owned(),
    ]);
    argv
}

/// `ping` itself (iputils: a ping socket, or a raw one with CAP_NET_RAW),
/// the token as its payload pattern.
fn ping_argv(token: &str) -> Vec<String> {
    let hex: String = token.bytes().take(16).map(|b| format!("{b:02x}")).collect();
    ["ping", "-c", "1", "-W", "1", "-p", &hex, "127.0.0.1"]
        .map(String::from)
        .to_vec()
}

#[test]
fn icmp_and_other_socket_kinds_are_refused_at_creation() {
    require_root();
    let _range = PingRange::widen();
    let listener = IcmpListener::start();
    let t = tag();

    // Outside the guard every attempt gets through, so the checks below
    // can fail.
    let mut outside = std::collections::BTreeMap::new();
    for root in [true, false] {
        let token = format!("ag-out-{}-{t}", if root { "r" } else { "n" });
        let out = Command::new(&sender(&token, root)[0])
            .args(&sender(&token, root)[1..])
            .output()
            .expect("sender");
        let got = results(&stdout(&out));
        for name in ["ping4", "ping6"] {
            assert_eq!(
                got.get(name).map(String::as_str),
                Some("sent"),
                "outside, root={root}: {got:?} {}",
                stderr(&out)
            );
        }
        assert!(
            listener.saw(&token),
            "the listener must see packets from outside the guard ({token})"
        );
        if root {
            outside = got;
        }
    }
    let ping_token = format!("agpo{}", &t[..t.len().min(10)]);
    let ping = Command::new("ping")
        .args(&ping_argv(&ping_token)[1..])
        .output()
        .expect("ping");
    assert!(
        ping.status.success(),
        "ping outside the guard: {}",
        stderr(&ping)
    );
    assert!(listener.saw(&ping_token), "ping's packet outside the guard");

    // Inside `agentguard exec`: every kind but TCP and UDP is refused.
    let config = TestConfig::new("");
    let check_inside = |who: &str, got: &std::collections::BTreeMap<String, String>, log: &str| {
        for (name, outcome) in &outside {
            if who == "nobody" && !got.contains_key(name) {
                continue;
            }
            if outcome == "ERR EPROTONOSUPPORT" || outcome == "ERR ESOCKTNOSUPPORT" {
                // The kernel has no such protocol here (no sctp module,
                // say): nothing to escape through.
                continue;
            }
            assert_eq!(
                got.get(name).map(String::as_str),
                Some("ERR EPERM"),
                "{who}: {name} must be refused inside the guard (outside: {outcome}): {got:?}\n{log}"
            );
        }
    };
    for root in [true, false] {
        let who = if root { "root" } else { "nobody" };
        let token = format!("ag-in-{who}-{t}");
        let argv = sender(&token, root);
        let out = exec(&config, &args(&argv));
        let (o, e) = (stdout(&out), stderr(&out));
        let got = results(&o);
        assert_eq!(
            got.get("ping4").map(String::as_str),
            Some("ERR EPERM"),
            "{who}: {o}\n{e}"
        );
        check_inside(who, &got, &e);
        assert!(
            !listener.saw(&token),
            "{who}: an ICMP packet left the guard: {o}\n{e}"
        );
    }
    let ping_in = format!("agpi{}", &t[..t.len().min(10)]);
    let out = exec(&config, &args(&ping_argv(&ping_in)));
    assert!(
        !out.status.success(),
        "ping inside the guard must fail: {}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("Operation not permitted"),
        "{}",
        stderr(&out)
    );
    assert!(!listener.saw(&ping_in), "ping's packet left the guard");

    // Each refusal is audited with who asked.
    let denied = audited_denials(&config, "socket kind AF_INET SOCK_DGRAM icmp");
    assert!(
        denied.iter().any(|r| r["identity"]["uid"] == 0),
        "root's ping socket audited: {denied:?}"
    );
    assert!(
        denied.iter().any(|r| r["identity"]["uid"] == 65534),
        "nobody's ping socket audited: {denied:?}"
    );
    assert!(
        !audited_denials(&config, "socket kind AF_INET SOCK_RAW icmp").is_empty(),
        "raw socket audited"
    );

    // `[sockets] allow = ["icmp"]` lets ping sockets (only) through.
    let allowing = TestConfig::new("[sockets]\nallow = [\"icmp\"]\n");
    let token = format!("ag-allowed-{t}");
    let out = exec(&allowing, &args(&sender(&token, true)));
    let got = results(&stdout(&out));
    assert_eq!(
        got.get("ping4").map(String::as_str),
        Some("sent"),
        "{got:?}\n{}",
        stderr(&out)
    );
    assert_eq!(
        got.get("raw4").map(String::as_str),
        Some("ERR EPERM"),
        "{got:?}"
    );
    assert!(
        listener.saw(&token),
        "an allowed ping socket reaches the host"
    );
}

#[test]
fn icmp_is_refused_under_the_daemon_too() {
    require_root();
    let _range = PingRange::widen();
    let listener = IcmpListener::start();
    let t = tag();
    let setup = common::daemon::Setup::new("icmp", "", true, "");
    let (_daemon, log) = setup.start_daemon("daemon.log");
    for root in [true, false] {
        let who = if root { "root" } else { "nobody" };
        let token = format!("ag-daemon-{who}-{t}");
        let cmd = setup.in_cgroup(&sender(&token, root));
        let out = run_with_timeout(cmd, Duration::from_secs(30));
        let got = results(&stdout(&out));
        for name in ["ping4", "ping6"] {
            assert_eq!(
                got.get(name).map(String::as_str),
                Some("ERR EPERM"),
                "{who}: {got:?} {}",
                stderr(&out)
            );
        }
        if root {
            assert_eq!(
                got.get("raw4").map(String::as_str),
                Some("ERR EPERM"),
                "{got:?}"
            );
        }
        assert!(
            !listener.saw(&token),
            "{who}: an ICMP packet left the daemon's guard"
        );
    }
    let ping_in = format!("agpd{}", &t[..t.len().min(10)]);
    let out = run_with_timeout(
        setup.in_cgroup(&ping_argv(&ping_in)),
        Duration::from_secs(30),
    );
    assert!(!out.status.success(), "ping in the agent cgroup must fail");
    assert!(
        !listener.saw(&ping_in),
        "ping's packet left the daemon's guard"
    );
    wait_for("audited socket refusal", Duration::from_secs(10), || {
        audited_denials(&setup.config, "socket kind AF_INET SOCK_DGRAM icmp")
            .iter()
            .any(|r| r["identity"]["uid"] == 65534)
    });
    let st = setup.status();
    assert!(
        st.contains("socket_refused"),
        "status counts socket refusals: {st}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// Families no cgroup hook sees. AF_VSOCK reaches the hypervisor on VM
/// hosts (this CI host is one); AF_PACKET and AF_XDP send raw frames as
/// root. Inside `exec` the seccomp filter refuses them.
const FAMILIES: &str = r#"
import errno, socket
for name, family, type_ in [("vsock", 40, socket.SOCK_STREAM), ("packet", 17, socket.SOCK_RAW),
                            ("packet-dgram", 17, socket.SOCK_DGRAM), ("xdp", 44, socket.SOCK_RAW),
                            ("netlink", 16, socket.SOCK_RAW), ("unix", 1, socket.SOCK_STREAM),
                            ("inet", 2, socket.SOCK_STREAM), ("inet6", 10, socket.SOCK_DGRAM)]:
    try:
        socket.socket(family, type_, 0).close()
        print(name, "created")
    except OSError as e:
        print(name, "ERR", errno.errorcode.get(e.errno, e.errno))
"#;

#[test]
fn exec_refuses_socket_families_no_cgroup_hook_sees() {
    require_root();
    let out = Command::new(PYTHON)
        .args(["-c", FAMILIES])
        .output()
        .expect("python");
    let outside = results(&stdout(&out));
    let config = TestConfig::new("");
    let out = exec(&config, &[PYTHON, "-c", FAMILIES]);
    let inside = results(&stdout(&out));
    for kept in ["netlink", "unix", "inet", "inet6"] {
        assert_eq!(
            inside.get(kept).map(String::as_str),
            Some("created"),
            "{inside:?}\n{}",
            stderr(&out)
        );
    }
    let mut checked = 0;
    for refused in ["vsock", "packet", "packet-dgram", "xdp"] {
        if outside.get(refused).map(String::as_str) != Some("created") {
            // Not in this kernel: nothing to escape through.
            eprintln!("{refused}: {:?} outside the guard", outside.get(refused));
            continue;
        }
        assert_eq!(
            inside.get(refused).map(String::as_str),
            Some("ERR EPERM"),
            "{refused}: {inside:?}"
        );
        checked += 1;
    }
    assert!(
        checked >= 2,
        "AF_PACKET is in every Debian kernel: {outside:?}"
    );
}
