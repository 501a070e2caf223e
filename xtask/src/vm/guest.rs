//! The checks that run inside the test guest (`vmcheck vm-guest`, started by
//! vm-tests/init as the guest's only job). Each prints one `VMCHECK name:
//! PASS|FAIL detail` line and the run ends with `VM-TEST RESULT: PASS|FAIL`;
//! the host reads nothing else.
//!
//! The daemon runs as in production (pinned programs, an agent cgroup); the
//! agent is this same binary (`vm-client`) moved into the cgroup. A server
//! that reports the peer it sees tells a redirected connect (the peer is the
//! proxy's upstream socket) from a direct one (the peer is the client).

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

const AGENTGUARD: &str = "/bin/agentguard";
const WORK: &str = "/tmp/ag";
const CGROUP_REL: &str = "agentguard-vm/agent";
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

const POLICY: &str = r#"package agentguard
import rego.v1
default decision := {"action": "deny", "reason": "vm test: not a declared target"}
decision := {"action": "allow", "reason": "vm test"} if input.target.name in {"web", "web6"}
"#;

/// A server that tells each client the peer it sees, and remembers them.
struct PeerServer {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl PeerServer {
    fn start(bind: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(bind).with_context(|| format!("bind {bind}"))?;
        let addr = listener.local_addr()?;
        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&peers);
        thread::spawn(move || {
            for (mut stream, peer) in listener.incoming().flatten().filter_map(|s| {
                let peer = s.peer_addr().ok()?;
                Some((s, peer))
            }) {
                if let Ok(mut p) = seen.lock() {
                    p.push(peer);
                }
                let _ = stream.write_all(format!("peer={peer}\n").as_bytes());
            }
        });
        Ok(Self { addr, peers })
    }

    fn seen(&self) -> Vec<SocketAddr> {
        self.peers.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

/// What one client connect came to.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// The server answered: the peer it saw and the client's own address.
    Answered {
        peer: String,
        local: String,
    },
    Failed(String),
}

/// `vm-client`: join the cgroup (if any), connect (or send an ICMP echo),
/// print what happened.
pub fn client(cgroup: Option<&Path>, icmp: Option<&str>, addr: SocketAddr) -> anyhow::Result<()> {
    if let Some(dir) = cgroup {
        fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("cannot join {}", dir.display()))?;
    }
    if let Some(kind) = icmp {
        println!("{}", icmp_echo(kind, addr));
        return Ok(());
    }
    let line = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Err(e) => format!("ERR {:?}", e.kind()),
        Ok(stream) => {
            let local = stream
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut answer = String::new();
            match BufReader::new(stream).read_line(&mut answer) {
                Ok(0) => "ERR closed".to_owned(),
                Ok(_) => format!("{} local={local}", answer.trim()),
                Err(e) => format!("ERR {:?}", e.kind()),
            }
        }
    };
    println!("{line}");
    Ok(())
}

/// An ICMP echo request to `addr`'s IPv4 address from a ping socket or a
/// raw one: `sent`, or `ERR errno` (at socket() or sendto()).
fn icmp_echo(kind: &str, addr: SocketAddr) -> String {
    let (type_, proto) = match kind {
        "raw" => (libc::SOCK_RAW, libc::IPPROTO_ICMP),
        _ => (libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
    };
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        return "ERR not an IPv4 address".to_owned();
    };
    let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // SAFETY: plain socket(2); the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, type_, proto) };
    if fd < 0 {
        return format!("ERR {}", errno());
    }
    // Echo request, id/seq 1, checksum filled in (the kernel fills it for
    // ping sockets, not for raw ones).
    let mut packet = *b"\x08\0\0\0\0\x01\0\x01agentguard-vm-check";
    let sum = packet
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum::<u32>();
    let sum = !(((sum >> 16) + (sum & 0xffff)) as u16);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: the buffer and address outlive the call; fd is ours.
    let sent = unsafe {
        libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            std::ptr::from_ref(&dst).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let result = if sent < 0 {
        format!("ERR {}", errno())
    } else {
        "sent".to_owned()
    };
    // SAFETY: closing our own descriptor once.
    unsafe { libc::close(fd) };
    result
}

fn run_client(in_cgroup: bool, addr: SocketAddr) -> anyhow::Result<Outcome> {
    run_client_with(in_cgroup, None, addr)
}

fn run_client_with(
    in_cgroup: bool,
    icmp: Option<&str>,
    addr: SocketAddr,
) -> anyhow::Result<Outcome> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("vm-client");
    if in_cgroup {
        cmd.arg("--cgroup")
            .arg(Path::new(CGROUP_MOUNT).join(CGROUP_REL));
    }
    if let Some(kind) = icmp {
        cmd.arg("--icmp").arg(kind);
    }
    let out = cmd.arg(addr.to_string()).output()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() {
        bail!(
            "vm-client failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(match text.strip_prefix("peer=") {
        Some(rest) => {
            let (peer, local) = rest.split_once(" local=").unwrap_or((rest, ""));
            Outcome::Answered {
                peer: peer.to_owned(),
                local: local.to_owned(),
            }
        }
        None => Outcome::Failed(text),
    })
}

struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(config: &Path, log: &Path) -> anyhow::Result<Self> {
        let child = Command::new(AGENTGUARD)
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("AGENTGUARD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log)?)
            .spawn()
            .context("cannot start agentguard run")?;
        let mut daemon = Self { child };
        let info = Path::new(WORK).join("run/daemon.json");
        let pid = daemon.child.id().to_string();
        let start = Instant::now();
        loop {
            if fs::read_to_string(&info).is_ok_and(|j| j.contains(&format!("\"pid\":{pid}"))) {
                return Ok(daemon);
            }
            if let Some(status) = daemon.child.try_wait()? {
                bail!("agentguard run exited ({status}):\n{}", tail(log));
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("agentguard run not ready after 30 s:\n{}", tail(log));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

struct Report {
    failed: usize,
}

impl Report {
    fn check(&mut self, name: &str, result: anyhow::Result<String>) {
        match result {
            Ok(detail) => println!("VMCHECK {name}: PASS {detail}"),
            Err(e) => {
                self.failed += 1;
                println!("VMCHECK {name}: FAIL {e:#}");
            }
        }
    }
}

/// Redirected: the server saw someone other than the client, and it was
/// exactly one new peer.
fn expect_redirected(server: &PeerServer, addr: SocketAddr) -> anyhow::Result<String> {
    let before = server.seen().len();
    match run_client(true, addr)? {
        Outcome::Answered { peer, local } if peer != local => {
            let seen = server.seen();
            if seen.len() != before + 1 || seen.last().map(|p| p.to_string()) != Some(peer.clone())
            {
                bail!("server peers {seen:?} do not end with {peer}");
            }
            Ok(format!("client {local} -> server saw {peer}"))
        }
        other => bail!("not redirected: {other:?}"),
    }
}

/// Refused: no answer, and the server saw nothing.
fn expect_refused(server: &PeerServer, addr: SocketAddr) -> anyhow::Result<String> {
    let before = server.seen().len();
    match run_client(true, addr)? {
        Outcome::Failed(why) if server.seen().len() == before => Ok(why),
        other => bail!("not refused: {other:?}, server peers {:?}", server.seen()),
    }
}

pub fn guest() -> anyhow::Result<()> {
    let work = PathBuf::from(WORK);
    fs::create_dir_all(work.join("policy"))?;
    fs::write(work.join("policy/agentguard.rego"), POLICY)?;
    let web = PeerServer::start("127.0.0.1:0")?;
    let web6 = PeerServer::start("[::1]:0")?;
    let other = PeerServer::start("127.0.0.1:0")?;
    let config = work.join("agentguard.toml");
    fs::write(
        &config,
        format!(
            "state_dir = \"{w}/state\"\nrun_dir = \"{w}/run\"\npolicy_dir = \"{w}/policy\"\n\
             bpffs_dir = \"/sys/fs/bpf/agentguard\"\n[listener]\nport = 15001\n\
             [[agents]]\nname = \"agent\"\ncgroup = \"/{CGROUP_REL}\"\n\
             [[targets]]\nname = \"web\"\naddress = \"{}\"\n\
             [[targets]]\nname = \"web6\"\naddress = \"{}\"\n",
            web.addr,
            web6.addr,
            w = work.display(),
        ),
    )?;
    let mut report = Report { failed: 0 };
    let log1 = work.join("daemon1.log");
    let daemon = match Daemon::start(&config, &log1) {
        Ok(d) => d,
        Err(e) => {
            report.check("daemon-starts", Err(e));
            println!("VM-TEST RESULT: FAIL");
            return Ok(());
        }
    };
    report.check("daemon-starts", Ok(String::new()));
    let status = Command::new(AGENTGUARD)
        .arg("--config")
        .arg(&config)
        .arg("status")
        .output()?;
    for line in String::from_utf8_lossy(&status.stdout).lines() {
        println!("VM-STATUS {line}");
    }
    report.check(
        "direct-is-not-redirected",
        match run_client(false, web.addr)? {
            Outcome::Answered { peer, local } if peer == local => Ok(peer),
            other => Err(anyhow::anyhow!("outside the cgroup: {other:?}")),
        },
    );
    report.check("redirect-v4", expect_redirected(&web, web.addr));
    report.check("redirect-v6", expect_redirected(&web6, web6.addr));
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{}", web.addr.port()).parse()?;
    report.check("redirect-v4-mapped", expect_redirected(&web, mapped));
    report.check("undeclared-denied", expect_refused(&other, other.addr));
    // ICMP: with ping sockets open to every group (systemd's default), a
    // ping socket and a raw socket work outside the cgroup and are refused
    // at socket() inside it.
    fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")?;
    for kind in ["ping", "raw"] {
        let outside = run_client_with(false, Some(kind), web.addr)?;
        let inside = run_client_with(true, Some(kind), web.addr)?;
        let eperm = format!("ERR {}", libc::EPERM);
        report.check(
            &format!("{kind}-socket-refused"),
            match (&outside, &inside) {
                (Outcome::Failed(o), Outcome::Failed(i)) if o == "sent" && *i == eperm => {
                    Ok(format!("outside: {o}, inside: {i}"))
                }
                _ => Err(anyhow::anyhow!("outside: {outside:?}, inside: {inside:?}")),
            },
        );
    }
    let proxy: SocketAddr = "127.0.0.1:15001".parse()?;
    report.check(
        "proxy-port-direct",
        match run_client(true, proxy)? {
            Outcome::Answered { peer, .. } => Err(anyhow::anyhow!("answered as {peer}")),
            Outcome::Failed(why) => Ok(why),
        },
    );
    daemon.kill()?;
    report.check("fail-closed-daemon-killed", expect_refused(&web, web.addr));
    let log2 = work.join("daemon2.log");
    match Daemon::start(&config, &log2) {
        Ok(daemon) => {
            report.check("restart-redirects", expect_redirected(&web, web.addr));
            daemon.kill()?;
        }
        Err(e) => report.check("restart-redirects", Err(e)),
    }
    if report.failed > 0 {
        for (name, log) in [("first", &log1), ("second", &log2)] {
            println!("--- {name} daemon log (tail)\n{}", tail(log));
        }
        println!("VM-TEST RESULT: FAIL ({} checks failed)", report.failed);
    } else {
        println!("VM-TEST RESULT: PASS");
    }
    Ok(())
}
