//! End-to-end: the real eBPF programs redirect a guarded process's connects
//! to the proxy, which connects on its behalf. Runs as root (CI does).

mod common;

use std::{net::SocketAddr, process::Command, time::Duration};

use common::*;

/// The server saw the proxy, not the client: the peer it reports is exactly
/// the upstream socket the proxy logged for this connection.
fn assert_through_proxy(client_out: &str, log: &str, dst: SocketAddr) -> String {
    let line = client_out.lines().next().unwrap_or_default().to_owned();
    let peer = line
        .strip_prefix("peer=")
        .unwrap_or_else(|| panic!("client got no answer: {client_out}\n{log}"));
    let allowed = allowed_lines(log);
    let entry = allowed
        .iter()
        .find(|l| field(l, "upstream_local") == Some(peer))
        .unwrap_or_else(|| panic!("no allowed log entry with upstream_local={peer}:\n{log}"));
    assert_eq!(
        field(entry, "dst"),
        Some(dst.to_string().as_str()),
        "{entry}"
    );
    entry.to_string()
}

#[test]
fn loopback_v4_is_redirected_and_identified() {
    require_root();
    let server = PeerServer::start("127.0.0.1:0");
    let config = TestConfig::new(&target("web", server.addr));
    let out = exec(&config, &args(&py_client("127.0.0.1", server.addr.port())));
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{o}\n{e}");
    let entry = assert_through_proxy(&o, &e, server.addr);
    assert_eq!(field(&entry, "uid"), Some("0"));
    let pid: u32 = field(&entry, "pid")
        .and_then(|p| p.parse().ok())
        .expect("pid");
    assert!(pid > 1);
    assert!(
        field(&entry, "exe").is_some_and(|x| x.contains("python3")),
        "{entry}"
    );
    assert_eq!(server.peers().len(), 1);
}

#[test]
fn ipv6_loopback_is_redirected() {
    require_root();
    let server = PeerServer::start("[::1]:0");
    let config = TestConfig::new(&target("web6", server.addr));
    let out = exec(&config, &args(&py_client("::1", server.addr.port())));
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{o}\n{e}");
    let entry = assert_through_proxy(&o, &e, server.addr);
    assert!(o.starts_with("peer=[::1]:"), "{o}");
    assert!(entry.contains("allowed"));
}

#[test]
fn v4_mapped_ipv6_is_redirected() {
    require_root();
    let server = PeerServer::start("127.0.0.1:0");
    let config = TestConfig::new(&target("web", server.addr));
    let out = exec(
        &config,
        &args(&py_client("::ffff:127.0.0.1", server.addr.port())),
    );
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{o}\n{e}");
    // The origin is recorded as the plain IPv4 destination, so policy and
    // targets see one address whatever the socket family.
    assert_through_proxy(&o, &e, server.addr);
}

/// A host in a network namespace of this test's own, reached over a veth pair.
struct Netns {
    name: String,
}

impl Netns {
    fn new(subnet: u8) -> Self {
        let name = format!("agtest{}", tag());
        let host_if = format!("agh{}", tag());
        let ns_if = format!("agn{}", tag());
        let _ = sh(&format!("ip netns del {name} 2>/dev/null"));
        let script = format!(
            "set -e; ip netns add {name}; ip link add {host_if} type veth peer name {ns_if}; \
             ip link set {ns_if} netns {name}; ip addr add 10.231.{subnet}.1/24 dev {host_if}; ip link set {host_if} up; \
             ip -n {name} addr add 10.231.{subnet}.2/24 dev {ns_if}; ip -n {name} link set {ns_if} up; ip -n {name} link set lo up"
        );
        let out = sh(&script);
        assert!(
            out.status.success(),
            "netns setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { name }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {}", self.name));
    }
}

#[test]
fn destination_in_a_network_namespace() {
    require_root();
    let subnet = (std::process::id() % 200) as u8 + 20;
    let ns = Netns::new(subnet);
    let server_ip = format!("10.231.{subnet}.2");
    let port = 18000 + (std::process::id() % 1000) as u16;
    let dst: SocketAddr = format!("{server_ip}:{port}").parse().expect("addr");
    let code = format!(
        "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('{server_ip}', {port})); s.listen(8)\nwhile True:\n    c,a=s.accept(); c.sendall(('peer=%s:%d\\n' % a).encode()); c.close()\n"
    );
    let server = Killed(
        Command::new("ip")
            .args(["netns", "exec", &ns.name, PYTHON, "-c", &code])
            .spawn()
            .expect("server in netns"),
    );
    wait_for("server in netns", Duration::from_secs(10), || {
        sh(&format!(
            "ip netns exec {} ss -ltn | grep -q {server_ip}:{port}",
            ns.name
        ))
        .status
        .success()
    });
    let config = TestConfig::new(&target("remote", dst));
    let out = exec(&config, &args(&py_client(&server_ip, port)));
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{o}\n{e}");
    let peer = o
        .trim()
        .strip_prefix("peer=")
        .unwrap_or_else(|| panic!("{o}\n{e}"));
    // The namespace host saw the proxy's connection from the host side of the veth.
    assert!(peer.starts_with(&format!("10.231.{subnet}.1:")), "{peer}");
    assert_through_proxy(&o, &e, dst);
    drop(server);
}

#[test]
fn unprivileged_user_is_identified_by_uid() {
    require_root();
    let server = PeerServer::start("127.0.0.1:0");
    let config = TestConfig::new(&target("web", server.addr));
    let mut argv = vec![
        "setpriv".to_owned(),
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
    ];
    argv.extend(py_client("127.0.0.1", server.addr.port()));
    let out = exec(&config, &args(&argv));
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{o}\n{e}");
    let entry = assert_through_proxy(&o, &e, server.addr);
    assert_eq!(field(&entry, "uid"), Some("65534"), "{entry}");
}

#[test]
fn unlisted_destination_is_refused_and_outside_processes_are_untouched() {
    require_root();
    let allowed = PeerServer::start("127.0.0.1:0");
    let other = PeerServer::start("127.0.0.1:0");
    let config = TestConfig::new(&target("web", allowed.addr));
    let out = exec(&config, &args(&py_client("127.0.0.1", other.addr.port())));
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(
        o.starts_with("ERR"),
        "a destination that is not a target must not answer: {o}\n{e}"
    );
    assert!(
        other.peers().is_empty(),
        "the unlisted server must never see a connection"
    );
    let denied = e
        .lines()
        .find(|l| l.contains(" denied "))
        .unwrap_or_else(|| panic!("no denial logged:\n{e}"));
    assert_eq!(field(denied, "dst"), Some(other.addr.to_string().as_str()));
    assert!(denied.contains("not a configured target"), "{denied}");

    // This test process is in no agent cgroup: it reaches the server itself.
    let (line, local) = direct_peer_line(other.addr);
    assert_eq!(line, format!("peer={local}"));
}

#[test]
fn direct_dial_of_the_proxy_port_is_refused() {
    require_root();
    let server = PeerServer::start("127.0.0.1:0");
    let config = TestConfig::new(&target("web", server.addr));
    // The guard's port is only known inside; the agent finds it from its
    // own redirected socket's peer (what a curious agent would do).
    let code = format!(
        r#"
import socket
s = socket.create_connection(("127.0.0.1", {port}), timeout=5)
proxy = s.getpeername()
print("redirected-peer", proxy)
try:
    t = socket.create_connection(("127.0.0.1", {port}), timeout=5)
    t2 = socket.create_connection(("127.0.0.1", 1), timeout=5)
except Exception as e:
    pass
try:
    d = socket.create_connection(proxy[:2], timeout=5)
    print("direct", d.recv(10) or b"EOF")
except Exception as e:
    print("direct ERR", type(e).__name__)
"#,
        port = server.addr.port()
    );
    let out = exec(&config, &[PYTHON, "-c", &code]);
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(
        o.contains("direct ERR") || o.contains("direct b'EOF'"),
        "{o}\n{e}"
    );
    assert!(
        e.contains("direct connection to the agentguard proxy port"),
        "{e}"
    );
}

#[test]
fn udp_is_refused_except_dns_to_the_configured_resolver() {
    require_root();
    // A real DNS server (dnsmasq) on a loopback address of its own.
    let ip = "127.0.0.153";
    let dns = Killed(
        Command::new("/usr/sbin/dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                &format!("--listen-address={ip}"),
                "--bind-interfaces",
                "--port=53",
                "--no-resolv",
                "--no-hosts",
                "--address=/agentguard.test/192.0.2.7",
                "--user=root",
                "--pid-file=",
            ])
            .spawn()
            .expect("dnsmasq (scripts/setup.sh installs dnsmasq-base)"),
    );
    wait_for("dnsmasq", Duration::from_secs(10), || {
        sh(&format!("ss -lun | grep -q '{ip}:53'")).status.success()
    });
    // Outside the guard, dnsmasq answers: the server works.
    let direct = sh(&format!(
        "dig +short +time=2 +tries=1 @{ip} agentguard.test"
    ));
    assert_eq!(String::from_utf8_lossy(&direct.stdout).trim(), "192.0.2.7");

    let config = TestConfig::new(&format!("[dns]\nresolvers = [\"{ip}\"]\n"));
    let script = format!(
        r#"
import socket, subprocess
def udp(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"x", addr); return "sent"
    except OSError as e:
        return "ERR " + type(e).__name__
print("udp9999", udp(("127.0.0.1", 9999)))
print("udp443", udp(("127.0.0.1", 443)))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    c.connect(("127.0.0.1", 9999)); print("connect9999 ok")
except OSError as e:
    print("connect9999 ERR", type(e).__name__)
print("dns-other", udp(("127.0.0.154", 53)))
r = subprocess.run(["dig", "+short", "+time=2", "+tries=1", "@{ip}", "agentguard.test"], capture_output=True, text=True)
print("dig", r.stdout.strip() or "none")
"#
    );
    let out = exec(&config, &[PYTHON, "-c", &script]);
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(o.contains("udp9999 ERR PermissionError"), "{o}\n{e}");
    assert!(
        o.contains("udp443 ERR PermissionError"),
        "QUIC must not skip the guard: {o}"
    );
    assert!(o.contains("connect9999 ERR PermissionError"), "{o}");
    assert!(
        o.contains("dns-other ERR PermissionError"),
        "DNS to an unlisted resolver: {o}"
    );
    assert!(
        o.contains("dig 192.0.2.7"),
        "DNS to the configured resolver must work: {o}\n{e}"
    );
    drop(dns);
}

#[test]
fn forked_and_double_forked_setsid_children_stay_guarded() {
    require_root();
    let server = PeerServer::start("127.0.0.1:0");
    let config = TestConfig::new(&target("web", server.addr));
    let result = config.dir.path().join("grandchild.txt");
    let code = format!(
        r#"
import os, socket, sys, time
def fetch():
    s = socket.create_connection(("127.0.0.1", {port}), timeout=5)
    return s.makefile().readline().strip()
pid = os.fork()
if pid == 0:
    print("child", fetch(), flush=True); os._exit(0)
os.waitpid(pid, 0)
# A daemon: fork, setsid, fork again; the parent does not wait for it.
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        line = fetch()
        with open("{result}.tmp", "w") as f: f.write(line)
        os.rename("{result}.tmp", "{result}")
    os._exit(0)
for _ in range(250):
    if os.path.exists("{result}"): break
    time.sleep(0.02)
print("grandchild", open("{result}").read())
"#,
        port = server.addr.port(),
        result = result.display()
    );
    let out = exec(&config, &[PYTHON, "-c", &code]);
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{o}\n{e}");
    let allowed = allowed_lines(&e);
    for who in ["child", "grandchild"] {
        let line = o
            .lines()
            .find(|l| l.starts_with(who) && l.contains("peer="))
            .unwrap_or_else(|| panic!("{who}: {o}\n{e}"));
        let peer = line.split("peer=").nth(1).expect("peer");
        assert!(
            allowed
                .iter()
                .any(|l| field(l, "upstream_local") == Some(peer)),
            "{who} bypassed the proxy: {o}\n{e}"
        );
    }
    assert_eq!(server.peers().len(), 2);
}

#[test]
fn exec_returns_the_command_exit_status() {
    require_root();
    let config = TestConfig::new("");
    let out = exec(&config, &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let out = exec(&config, &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15), "{}", stderr(&out));
    // Its cgroup is gone afterwards.
    let e = stderr(&out);
    let cg = e
        .lines()
        .find_map(|l| field(l, "cgroup"))
        .expect("cgroup logged")
        .to_owned();
    assert!(
        !cgroup2_mount().join(cg.trim_start_matches('/')).exists(),
        "{cg} left behind"
    );
}

#[test]
fn killing_exec_leaves_its_processes_cut_off() {
    require_root();
    let server = PeerServer::start("127.0.0.1:0");
    let config = TestConfig::new(&target("web", server.addr));
    let dir = config.dir.path().to_owned();
    // A grandchild that outlives everything: it reports its cgroup, waits
    // for "go", then tries the (allowed) server.
    let code = format!(
        r#"
import os, socket, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open("{d}/cgroup", "w").write(open("/proc/self/cgroup").read())
        while not os.path.exists("{d}/go"): time.sleep(0.02)
        try:
            s = socket.create_connection(("127.0.0.1", {port}), timeout=5)
            r = s.makefile().readline().strip() or "ERR empty"
        except Exception as e:
            r = "ERR " + type(e).__name__
        open("{d}/result.tmp", "w").write(r); os.rename("{d}/result.tmp", "{d}/result")
    os._exit(0)
time.sleep(60)
"#,
        d = dir.display(),
        port = server.addr.port()
    );
    let mut guard = Command::new(bin())
        .arg("--config")
        .arg(config.path())
        .args(["exec", "--", PYTHON, "-c", &code])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("exec");
    let exec_pid = guard.id();
    wait_for("grandchild ready", Duration::from_secs(20), || {
        dir.join("cgroup").exists()
    });
    guard.kill().expect("SIGKILL exec");
    guard.wait().expect("reap");
    std::fs::write(dir.join("go"), "").expect("go");
    wait_for("grandchild result", Duration::from_secs(20), || {
        dir.join("result").exists()
    });
    let result = std::fs::read_to_string(dir.join("result")).expect("result");

    // Clean up what the killed exec could not.
    let cg_rel = std::fs::read_to_string(dir.join("cgroup")).expect("cgroup");
    let cg = cgroup2_mount().join(
        cg_rel
            .lines()
            .find_map(|l| l.strip_prefix("0::/"))
            .expect("v2 line"),
    );
    let _ = std::fs::write(cg.join("cgroup.kill"), "1");
    wait_for("cgroup empty", Duration::from_secs(5), || {
        std::fs::read_to_string(cg.join("cgroup.procs"))
            .map(|p| p.trim().is_empty())
            .unwrap_or(true)
    });
    let _ = std::fs::remove_dir(&cg);
    let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/agentguard-exec-{exec_pid}"));

    assert_eq!(
        result, "ERR ConnectionRefusedError",
        "a process outliving a killed exec must stay cut off"
    );
    assert!(server.peers().is_empty(), "nothing may reach the server");
}

#[test]
fn tcp_fast_open_is_redirected_too() {
    require_root();
    let allowed = PeerServer::start("127.0.0.1:0");
    let other = PeerServer::start("127.0.0.1:0");
    let config = TestConfig::new(&target("web", allowed.addr));
    // sendto(MSG_FASTOPEN) connects inside the send: the same cgroup hook runs.
    let code = format!(
        r#"
import socket
def tfo(port):
    s = socket.socket()
    try:
        s.sendto(b"hello", socket.MSG_FASTOPEN, ("127.0.0.1", port))
        return s.makefile().readline().strip() or "ERR empty"
    except Exception as e:
        return "ERR " + type(e).__name__
print("allowed", tfo({a}))
print("other", tfo({o}))
"#,
        a = allowed.addr.port(),
        o = other.addr.port()
    );
    let out = exec(&config, &[PYTHON, "-c", &code]);
    let (o, e) = (stdout(&out), stderr(&out));
    let line = o
        .lines()
        .find(|l| l.starts_with("allowed "))
        .unwrap_or_else(|| panic!("{o}\n{e}"));
    let peer = line.trim_start_matches("allowed peer=");
    assert!(
        allowed_lines(&e)
            .iter()
            .any(|l| field(l, "upstream_local") == Some(peer)),
        "a TCP Fast Open connect must go through the proxy: {o}\n{e}"
    );
    assert!(o.contains("other ERR"), "{o}\n{e}");
    assert!(
        other.peers().is_empty(),
        "the unlisted server must never see a connection"
    );
}
