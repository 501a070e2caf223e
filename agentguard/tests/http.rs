//! End-to-end: the HTTP and HTTPS guard between real clients (curl,
//! python3 urllib, kubectl) inside `agentguard exec` and real servers on
//! loopback (python3's http.server, nginx for HTTP/2), with the shipped
//! policies. Nothing in the clients names a proxy: the eBPF redirect sends
//! their connects to the guard.

mod common;

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::{daemon::free_port, *};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The test server: plain files, JSON and SSE with personal data, a gzip
/// variant, and (see `KUBE`) the few Kubernetes API paths kubectl needs.
const SERVER: &str = r#"
import base64, gzip, hashlib, http.server, json, ssl, sys, time
port = int(sys.argv[1])

POD_TABLE = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {},
    "columnDefinitions": [{"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}],
    "rows": [{"cells": ["web-1"], "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
              "metadata": {"name": "web-1", "namespace": "default"}}}]}
RESOURCES = {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
    {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod", "verbs": ["get", "list", "delete"]},
    {"name": "namespaces", "singularName": "namespace", "namespaced": False, "kind": "Namespace", "verbs": ["get", "list", "delete"]},
    {"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret", "verbs": ["get", "list"]}]}
KUBE = {
    "/api": {"kind": "APIVersions", "versions": ["v1"],
             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
    "/api/v1": RESOURCES,
    "/api/v1/namespaces/default/pods": POD_TABLE,
    "/api/v1/namespaces/default/secrets": {"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": []},
}

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def send(self, code, ctype, body, extra=()):
        self.send_response(code)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        for k, v in extra: self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        path = self.path.split("?")[0]
        if self.headers.get("upgrade"):
            self.upgrade()
        elif "watch=true" in self.path:
            # A Kubernetes watch: one JSON event per line, open-ended.
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("connection", "close")
            self.end_headers()
            for name in ["web-1", "web-2"]:
                ev = {"type": "ADDED", "object": {"kind": "Pod", "metadata": {"name": name,
                      "annotations": {"owner": name + "@example.com"}}}}
                self.wfile.write(json.dumps(ev).encode() + b"\n")
                self.wfile.flush(); time.sleep(0.2)
            self.close_connection = True
        elif path == "/plain":
            self.send(200, "text/plain", b"hello from the server\n")
            # ?drop: close the keep-alive connection without notice, as a
            # server does when its idle timeout fires.
            if "drop" in self.path:
                self.close_connection = True
        elif path == "/json":
            body = json.dumps({"user": {"name": "John", "email": "john.doe@example.com",
                                        "card": "4111 1111 1111 1111"}, "id": 7}).encode()
            self.send(200, "application/json", body)
        elif path == "/json-gz":
            body = gzip.compress(json.dumps({"contact": "jane.roe@example.org"}).encode())
            self.send(200, "application/json", body, [("content-encoding", "gzip")])
        elif path == "/sse":
            # The card number is split across two writes, 200 ms apart.
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("connection", "close")
            self.end_headers()
            self.wfile.write(b"event: token\ndata: card 4111 1111 ")
            self.wfile.flush(); time.sleep(0.2)
            self.wfile.write(b"1111 1111 ok\n\n")
            self.wfile.flush(); time.sleep(0.1)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True
        elif path == "/chat":
            # An OpenAI-style streamed completion: the email and the card
            # number are split across events, one write per event.
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("connection", "close")
            self.end_headers()
            def chunk(delta, finish=None):
                return b"data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).encode() + b"\n\n"
            for tok in ["Mail jo", "hn@exam", "ple.com", ", card 4111 11", "11 1111 ", "1111 ok"]:
                self.wfile.write(chunk({"content": tok}))
                self.wfile.flush(); time.sleep(0.05)
            self.wfile.write(chunk({}, "stop") + b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True
        elif path in KUBE:
            self.send(200, "application/json", json.dumps(KUBE[path]).encode())
        else:
            self.send(404, "text/plain", b"not found\n")
    def upgrade(self):
        if self.headers.get("upgrade", "").lower() == "websocket":
            # A WebSocket server that answers with an extension nobody
            # offered (compressed frames the guard could not read).
            key = self.headers.get("sec-websocket-key", "") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            self.send_response(101)
            self.send_header("upgrade", "websocket")
            self.send_header("connection", "Upgrade")
            self.send_header("sec-websocket-accept", base64.b64encode(hashlib.sha1(key.encode()).digest()).decode())
            self.send_header("sec-websocket-extensions", "permessage-deflate")
            self.end_headers()
            self.wfile.flush()
            self.close_connection = True
            return
        # A minimal Upgrade: 101, then echo raw bytes (what a WebSocket
        # proxy must let through after the handshake).
        self.send_response(101)
        self.send_header("upgrade", "echo")
        self.send_header("connection", "Upgrade")
        self.end_headers()
        self.wfile.flush()
        while True:
            data = self.connection.recv(4096)
            if not data: break
            self.connection.sendall(data)
        self.close_connection = True
    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(n)
        self.send(200, self.headers.get("content-type", "application/octet-stream"), body)
    def do_DELETE(self):
        self.send(200, "application/json", b'{"kind":"Status","apiVersion":"v1","status":"Success"}')

srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
if len(sys.argv) > 3:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

struct Server {
    port: u16,
    _child: Killed,
}

fn start_server(dir: &Path, tls: Option<&Pki>) -> Server {
    let script = dir.join("server.py");
    std::fs::write(&script, SERVER).expect("script");
    let tls: Vec<&Path> = tls.map(|p| vec![&*p.cert, &*p.key]).unwrap_or_default();
    python_server("test server", &script, &tls)
}

/// Runs `python3 script PORT args...` on a free port, until dropped.
fn python_server(what: &str, script: &Path, args: &[&Path]) -> Server {
    let port = free_port();
    let child = Command::new(PYTHON)
        .arg(script)
        .arg(port.to_string())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(what);
    wait_for(what, Duration::from_secs(10), || {
        TcpStream::connect(addr(port)).is_ok()
    });
    Server {
        port,
        _child: Killed(child),
    }
}

/// A test CA and a server certificate for localhost and 127.0.0.1: what a
/// target's `ca_file` trusts (and the system store does not).
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn test_pki(dir: &Path) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "agentguard test upstream CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(params, ca_key);
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("leaf");
    let pki = Pki {
        ca: dir.join("upstream-ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::write(&pki.ca, ca_cert.pem()).expect("write");
    std::fs::write(&pki.cert, leaf.pem()).expect("write");
    std::fs::write(&pki.key, key.serialize_pem()).expect("write");
    pki
}

/// `agentguard ca init` + `ca export` for this config; returns the PEM path.
fn agentguard_ca(config: &TestConfig) -> PathBuf {
    ca_init(config);
    let out = Command::new(bin())
        .arg("--config")
        .arg(config.path())
        .args(["ca", "export"])
        .output()
        .expect("ca export");
    assert!(out.status.success(), "ca export: {}", stderr(&out));
    assert!(stdout(&out).contains("BEGIN CERTIFICATE"));
    let path = config.dir.path().join("agentguard-ca.pem");
    std::fs::write(&path, &out.stdout).expect("write");
    let key = config.dir.path().join("state/ca/ca.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(key).expect("key").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "CA key readable by root only");
    path
}

fn http_target(name: &str, port: u16, extra: &str) -> String {
    format!(
        "[[targets]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\nprotocol = \"http\"\n{extra}"
    )
}

fn curl(config: &TestConfig, args: &[&str]) -> (String, String) {
    let mut argv = vec!["curl", "-sS", "-i", "--max-time", "20"];
    argv.extend_from_slice(args);
    let out = exec(config, &argv);
    (stdout(&out), stderr(&out))
}

#[test]
fn plain_http_get_allowed_post_to_production_denied() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let api = start_server(dir.path(), None);
    let prod = start_server(dir.path(), None);
    let config = TestConfig::new(&format!(
        "{}{}",
        http_target("api", api.port, ""),
        http_target("billing", prod.port, "labels = [\"production\"]\n")
    ));

    let (out, log) = curl(&config, &[&format!("http://127.0.0.1:{}/plain", api.port)]);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}\n{log}");
    assert!(
        out.ends_with("\r\n\r\nhello from the server\n"),
        "body identical: {out}"
    );
    assert!(
        log.contains("agentguard::http::session: allowed") && log.contains("path=\"/plain\""),
        "{log}"
    );

    // Keep-alive: two requests on one connection, one connect decision.
    let url = format!("http://127.0.0.1:{}/plain", api.port);
    let (out, log) = curl(&config, &[&url, &url]);
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
    assert_eq!(allowed_lines(&log).len(), 1, "one connection: {log}");

    // A write to a production target: 403 with the policy's reason, in JSON.
    let (out, log) = curl(
        &config,
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            "{\"amount\": 10}",
            &format!("http://127.0.0.1:{}/v1/invoices", prod.port),
        ],
    );
    assert!(out.starts_with("HTTP/1.1 403"), "{out}\n{log}");
    assert!(
        out.contains("{\"error\":\"agentguard: HTTP: POST /v1/invoices to production target billing is not allowed (only GET and HEAD)\"}"),
        "{out}"
    );
    // Reads from it pass.
    let (out, _) = curl(&config, &[&format!("http://127.0.0.1:{}/plain", prod.port)]);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    // python3 urllib: same decisions.
    let code = r#"
import sys, urllib.request, urllib.error
base = sys.argv[1]
print(urllib.request.urlopen(base + "/plain", timeout=10).read().decode().strip())
try:
    urllib.request.urlopen(urllib.request.Request(sys.argv[2] + "/x", data=b"{}", method="POST",
                           headers={"content-type": "application/json"}), timeout=10)
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"#;
    let out = exec(
        &config,
        &[
            PYTHON,
            "-c",
            code,
            &format!("http://127.0.0.1:{}", api.port),
            &format!("http://127.0.0.1:{}", prod.port),
        ],
    );
    let text = stdout(&out);
    assert!(
        text.starts_with("hello from the server\n403 {\"error\":\"agentguard: HTTP: POST /x"),
        "{text}\n{}",
        stderr(&out)
    );

    // The server drops the idle keep-alive connection; the agent's stays
    // open and its next request still works (the guard dials again).
    let code = r#"
import http.client, sys, time
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
for i in range(2):
    c.request("GET", "/plain?drop")
    r = c.getresponse()
    print(r.status, r.read().decode().strip())
    time.sleep(0.5)
"#;
    let out = exec(&config, &[PYTHON, "-c", code, &api.port.to_string()]);
    assert_eq!(
        stdout(&out),
        "200 hello from the server\n200 hello from the server\n",
        "{}",
        stderr(&out)
    );
    assert_eq!(
        allowed_lines(&stderr(&out)).len(),
        1,
        "one agent connection"
    );

    // Not HTTP on an HTTP target: refused, the guard keeps serving.
    let out = exec(&config, &args(&py_client("127.0.0.1", api.port)));
    assert!(stdout(&out).starts_with("ERR"), "{}", stdout(&out));

    // Bad input: a malformed request line, oversized headers; then a good
    // request on the same guard.
    let code = r#"
import socket, sys
def req(data):
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
    try:
        s.sendall(data)
    except OSError:
        pass
    out = b""
    try:
        while b"\r\n" not in out:
            d = s.recv(65536)
            if not d: break
            out += d
    except OSError as e:
        return "ERR " + type(e).__name__
    return out.split(b"\r\n")[0].decode() or "EOF"
print(req(b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n"))
print(req(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200000 + b"\r\n\r\n"))
print(req(b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
"#;
    let out = exec(&config, &[PYTHON, "-c", code, &api.port.to_string()]);
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3, "{lines:?}\n{}", stderr(&out));
    assert_eq!(lines[0], "HTTP/1.1 400 Bad Request", "{lines:?}");
    assert_eq!(
        lines[1], "HTTP/1.1 431 Request Header Fields Too Large",
        "{lines:?}"
    );
    assert_eq!(lines[2], "HTTP/1.1 200 OK", "{lines:?}");

    // Expect: 100-continue with a 300 KB body, echoed back unchanged.
    let big = config.dir.path().join("big.txt");
    std::fs::write(&big, "lorem ipsum dolor sit amet\n".repeat(12_000)).expect("write");
    let (out, log) = curl(
        &config,
        &[
            "-H",
            "Expect: 100-continue",
            "-H",
            "content-type: text/plain",
            "--data-binary",
            &format!("@{}", big.display()),
            &format!("http://127.0.0.1:{}/echo", api.port),
        ],
    );
    assert!(out.contains("HTTP/1.1 100 Continue"), "{log}");
    assert!(
        out.ends_with(&"lorem ipsum dolor sit amet\n".repeat(12_000)),
        "echoed whole"
    );

    // curl --http2 on cleartext asks for an h2c upgrade: refused quietly
    // (the server never sees it), so every request stays visible.
    let (out, log) = curl(
        &config,
        &["--http2", &format!("http://127.0.0.1:{}/plain", api.port)],
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}\n{log}");
    assert!(out.ends_with("hello from the server\n"), "{out}");

    // Upgrade: decided like a request, then raw bytes both ways.
    let code = r#"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(4096)
print(head.split(b"\r\n")[0].decode())
s.sendall(b"ping over the upgraded connection")
print(s.recv(4096).decode())
"#;
    let out = exec(&config, &[PYTHON, "-c", code, &api.port.to_string()]);
    assert_eq!(
        stdout(&out),
        "HTTP/1.1 101 Switching Protocols\nping over the upgraded connection\n",
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("upgraded"), "{}", stderr(&out));
}

#[test]
fn https_interception_verifies_upstream() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = test_pki(dir.path());
    let trusted = start_server(dir.path(), Some(&pki));
    let untrusted = start_server(dir.path(), Some(&pki));
    let config = TestConfig::new(&format!(
        "{}{}",
        http_target(
            "api",
            trusted.port,
            &format!("ca_file = \"{}\"\n", pki.ca.display())
        ),
        http_target("stranger", untrusted.port, "")
    ));

    // No CA yet: TLS to an HTTP target is refused (fail closed), with a log
    // line that says what to do.
    let (out, log) = curl(
        &config,
        &[&format!("https://localhost:{}/plain", trusted.port)],
    );
    assert!(!out.contains("200"), "{out}");
    assert!(log.contains("agentguard ca init"), "{log}");

    let ca = agentguard_ca(&config);
    let ca_arg = ca.display().to_string();
    let (out, log) = curl(
        &config,
        &[
            "--cacert",
            &ca_arg,
            &format!("https://localhost:{}/plain", trusted.port),
        ],
    );
    assert!(out.contains(" 200"), "{out}\n{log}");
    assert!(out.ends_with("\r\n\r\nhello from the server\n"), "{out}");
    assert!(
        log.contains("minted leaf certificate name=\"localhost\""),
        "{log}"
    );

    // The agent trusting only the server's own CA fails: it sees our leaf.
    let (out, _) = curl(
        &config,
        &[
            "--cacert",
            &pki.ca.display().to_string(),
            &format!("https://localhost:{}/plain", trusted.port),
        ],
    );
    assert!(!out.contains(" 200"), "{out}");

    // A server whose certificate agentguard cannot verify: denied, with why.
    let (out, log) = curl(
        &config,
        &[
            "--cacert",
            &ca_arg,
            &format!("https://localhost:{}/plain", untrusted.port),
        ],
    );
    assert!(out.contains(" 403"), "{out}\n{log}");
    assert!(
        out.contains("upstream TLS to localhost failed: invalid peer certificate: UnknownIssuer"),
        "{out}"
    );

    // An IP in the URL: curl sends no SNI; the target's host is used.
    let (out, log) = curl(
        &config,
        &[
            "--cacert",
            &ca_arg,
            &format!("https://127.0.0.1:{}/plain", trusted.port),
        ],
    );
    assert!(out.contains(" 200"), "{out}\n{log}");
    assert!(log.contains("ClientHello without SNI"), "{log}");

    // python3 urllib trusting the agentguard CA.
    let code = "import ssl,sys,urllib.request\nctx=ssl.create_default_context(cafile=sys.argv[2])\nprint(urllib.request.urlopen(sys.argv[1], context=ctx, timeout=10).read().decode().strip())";
    let out = exec(
        &config,
        &[
            PYTHON,
            "-c",
            code,
            &format!("https://localhost:{}/plain", trusted.port),
            &ca_arg,
        ],
    );
    assert_eq!(
        stdout(&out).trim(),
        "hello from the server",
        "{}",
        stderr(&out)
    );

    // python3 requests (Debian's python3-requests), as agents' tools use it:
    // no proxy named anywhere, only the agentguard CA trusted.
    let code = "import sys, requests\n\
r = requests.get(sys.argv[1], verify=sys.argv[2], timeout=10)\n\
print(r.status_code, r.text.strip())\n\
r = requests.get(sys.argv[3], verify=sys.argv[2], timeout=10)\n\
print(r.status_code, r.json()['error'])";
    let out = exec(
        &config,
        &[
            PYTHON,
            "-c",
            code,
            &format!("https://localhost:{}/plain", trusted.port),
            &ca_arg,
            &format!("https://localhost:{}/plain", untrusted.port),
        ],
    );
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("200 hello from the server"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(
        lines
            .next()
            .is_some_and(|l| l.starts_with("403 agentguard: upstream TLS to localhost failed")),
        "{text}"
    );
}

#[test]
fn passthrough_target_keeps_the_servers_certificate() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = test_pki(dir.path());
    let server = start_server(dir.path(), Some(&pki));
    let config = TestConfig::new(&http_target("pass", server.port, "tls = \"passthrough\"\n"));
    // No agentguard CA exists, and the client trusts only the server's CA:
    // it succeeds only if it sees the server's own certificate.
    let (out, log) = curl(
        &config,
        &[
            "--cacert",
            &pki.ca.display().to_string(),
            &format!("https://localhost:{}/json", server.port),
        ],
    );
    assert!(out.contains(" 200"), "{out}\n{log}");
    assert!(
        out.contains("john.doe@example.com"),
        "not decrypted, so not masked: {out}"
    );
    assert!(
        log.contains("TLS passthrough allowed sni=Some(\"localhost\")"),
        "{log}"
    );
}

#[test]
fn json_gzip_and_sse_responses_are_masked() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(dir.path(), None);
    let config = TestConfig::new(&http_target("api", server.port, ""));
    let base = format!("http://127.0.0.1:{}", server.port);

    let (out, log) = curl(&config, &[&format!("{base}/json")]);
    assert!(out.contains(" 200"), "{out}\n{log}");
    assert!(
        !out.contains("john.doe@example.com") && !out.contains("4111 1111 1111 1111"),
        "{out}"
    );
    assert!(out.contains("\"card\":\"**** **** **** 1111\""), "{out}");
    assert!(
        out.contains("\"name\":\"John\"") && out.contains("\"id\":7"),
        "{out}"
    );
    assert!(
        log.contains("response masked masked=card:1,email:1"),
        "{log}"
    );

    // gzip-encoded: decoded, masked, sent identity-encoded.
    let (out, _) = curl(&config, &["--compressed", &format!("{base}/json-gz")]);
    assert!(
        out.contains(" 200") && !out.contains("jane.roe@example.org"),
        "{out}"
    );
    assert!(
        out.contains("@") && !out.to_ascii_lowercase().contains("content-encoding"),
        "{out}"
    );

    // SSE: the card number arrives in two writes; framing is kept.
    let (out, log) = curl(&config, &["-N", &format!("{base}/sse")]);
    assert!(out.contains("text/event-stream"), "{out}\n{log}");
    let body = out.split("\r\n\r\n").nth(1).expect("body");
    assert_eq!(
        body, "event: token\ndata: card **** **** **** 1111 ok\n\ndata: [DONE]\n\n",
        "{out}"
    );

    // An LLM stream: each entity is split across events (writes). Every
    // event arrives, in order, and the joined text is masked.
    let (out, log) = curl(&config, &["-N", &format!("{base}/chat")]);
    let body = out.split("\r\n\r\n").nth(1).expect("body");
    let events: Vec<&str> = body.split_inclusive("\n\n").collect();
    assert_eq!(events.len(), 8, "{out}");
    let mut text = String::new();
    for ev in &events[..7] {
        let data = ev
            .strip_prefix("data: ")
            .and_then(|d| d.strip_suffix("\n\n"))
            .expect("one data line per event");
        let v: serde_json::Value = serde_json::from_str(data).expect("chunk JSON");
        assert_eq!(v["object"], "chat.completion.chunk", "{ev}");
        text += v["choices"][0]["delta"]["content"].as_str().unwrap_or("");
    }
    assert!(events[6].contains("\"finish_reason\": \"stop\""), "{out}");
    assert_eq!(events[7], "data: [DONE]\n\n");
    assert_eq!(
        text, "Mail j***@*******.com, card **** **** **** 1111 ok",
        "{out}"
    );
    assert!(
        log.contains("response masked masked=card:1,email:1"),
        "{log}"
    );
}

#[test]
fn llm_prompts_with_secrets_denied_pii_masked_before_leaving() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(dir.path(), None);
    let config = TestConfig::new(&format!(
        "[[targets]]\nname = \"openai\"\naddress = \"127.0.0.1:{}\"\nprotocol = \"llm\"\n",
        server.port
    ));
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", server.port);
    let post = |prompt: &str| {
        let body = format!(
            "{{\"model\":\"gpt-4o\",\"messages\":[{{\"role\":\"user\",\"content\":\"{prompt}\"}}]}}"
        );
        curl(
            &config,
            &["-H", "content-type: application/json", "-d", &body, &url],
        )
    };
    let (out, log) = post("deploy with AKIAIOSFODNN7EXAMPLE please");
    assert!(out.contains(" 403"), "{out}\n{log}");
    assert!(
        out.contains("LLM: the prompt carries a secret (aws_access_key)"),
        "{out}"
    );
    // The echo server shows what left the host: the email was masked.
    let (out, log) = post("write to john.doe@example.com");
    assert!(out.contains(" 200"), "{out}\n{log}");
    assert!(
        !out.contains("john.doe@example.com") && out.contains("gpt-4o"),
        "{out}"
    );
    assert!(
        log.contains("prompt masked before forwarding count=1"),
        "{log}"
    );
}

/// nginx serving HTTP/2: cleartext with prior knowledge, and TLS with ALPN.
struct Nginx {
    h2c: u16,
    tls: u16,
    dir: PathBuf,
    _child: Killed,
}

fn start_nginx(dir: &Path, pki: &Pki) -> Nginx {
    let (h2c, tls) = (free_port(), free_port());
    let d = dir.join("nginx");
    std::fs::create_dir_all(d.join("tmp")).expect("dir");
    let body = r#"{"email": "john.doe@example.com", "via": "nginx"}"#;
    let conf = format!(
        r#"daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
  server {{ listen 127.0.0.1:{h2c} http2; location / {{ default_type application/json; return 200 '{body}'; }} }}
  server {{ listen 127.0.0.1:{tls} ssl http2; ssl_certificate {cert}; ssl_certificate_key {key};
           location / {{ default_type application/json; return 200 '{body}'; }} }}
}}
"#,
        d = d.display(),
        cert = pki.cert.display(),
        key = pki.key.display(),
    );
    let path = d.join("nginx.conf");
    std::fs::write(&path, conf).expect("conf");
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(&d)
        .arg("-e")
        .arg(d.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx is installed (scripts/setup.sh)");
    wait_for("nginx", Duration::from_secs(10), || {
        TcpStream::connect(addr(h2c)).is_ok() && TcpStream::connect(addr(tls)).is_ok()
    });
    Nginx {
        h2c,
        tls,
        dir: d,
        _child: Killed(child),
    }
}

#[test]
fn http2_prior_knowledge_and_alpn() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = test_pki(dir.path());
    let nginx = start_nginx(dir.path(), &pki);
    let config = TestConfig::new(&format!(
        "{}{}",
        http_target("h2c", nginx.h2c, ""),
        http_target(
            "h2tls",
            nginx.tls,
            &format!("ca_file = \"{}\"\n", pki.ca.display())
        )
    ));
    let (out, log) = curl(
        &config,
        &[
            "--http2-prior-knowledge",
            &format!("http://127.0.0.1:{}/", nginx.h2c),
        ],
    );
    assert!(
        out.starts_with("HTTP/2 200"),
        "{out}\n{log}\n{:?}",
        std::fs::read_to_string(nginx.dir.join("error.log"))
    );
    assert!(
        out.contains("\"via\":\"nginx\"") && !out.contains("john.doe@example.com"),
        "{out}"
    );

    let ca = agentguard_ca(&config);
    let (out, log) = curl(
        &config,
        &[
            "--http2",
            "--cacert",
            &ca.display().to_string(),
            &format!("https://localhost:{}/", nginx.tls),
        ],
    );
    assert!(
        out.starts_with("HTTP/2 200"),
        "ALPN h2 end to end: {out}\n{log}"
    );
    assert!(
        out.contains("\"via\":\"nginx\"") && !out.contains("john.doe@example.com"),
        "{out}"
    );
    // And HTTP/1.1 over the same TLS target when the client asks for it.
    let (out, _) = curl(
        &config,
        &[
            "--http1.1",
            "--cacert",
            &ca.display().to_string(),
            &format!("https://localhost:{}/", nginx.tls),
        ],
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

fn kubectl() -> String {
    let out = sh("command -v kubectl");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        !path.is_empty(),
        "kubectl is installed (scripts/setup.sh: kubernetes-client)"
    );
    path
}

#[test]
fn kubectl_against_a_stub_api_server() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = test_pki(dir.path());
    // No kube-apiserver can run here: `SERVER` answers the handful of paths
    // kubectl requests (discovery, pods, secrets, a namespace delete) and
    // stands in for a real API server. The guard does not know the
    // difference: it sees kubectl's real requests over TLS.
    let api = start_server(dir.path(), Some(&pki));
    let config = TestConfig::new(&format!(
        "[[targets]]\nname = \"prod-cluster\"\naddress = \"127.0.0.1:{}\"\nprotocol = \"k8s\"\nlabels = [\"production\"]\nca_file = \"{}\"\n",
        api.port,
        pki.ca.display()
    ));
    let ca = agentguard_ca(&config);
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: test-token\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n    namespace: default\ncurrent-context: x\n",
            api.port,
            ca.display()
        ),
    )
    .expect("kubeconfig");
    let kubectl = kubectl();
    let cache = dir.path().join("kcache").display().to_string();
    let kc = kubeconfig.display().to_string();
    let run = |args: &[&str]| {
        let mut argv = vec![kubectl.as_str(), "--kubeconfig", &kc, "--cache-dir", &cache];
        argv.extend_from_slice(args);
        let out = exec(&config, &argv);
        (stdout(&out), stderr(&out), out.status.success())
    };

    let (out, log, ok) = run(&["get", "pods"]);
    assert!(ok && out.contains("web-1"), "{out}\n{log}");

    let (out, log, ok) = run(&["delete", "namespace", "x"]);
    assert!(!ok, "{out}\n{log}");
    assert!(
        log.contains("Kubernetes: deleting namespaces is not allowed (x)"),
        "kubectl shows the reason: {log}"
    );

    let (out, log, ok) = run(&["get", "secrets"]);
    assert!(!ok, "{out}\n{log}");
    assert!(
        log.contains("Kubernetes: reading secrets is not allowed"),
        "{log}"
    );
}

#[test]
fn k8s_exec_is_held_for_approval_then_denied() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let api = start_server(dir.path(), None);
    let config = TestConfig::new(&format!(
        "approval_timeout_secs = 1\n[[targets]]\nname = \"cluster\"\naddress = \"127.0.0.1:{}\"\nprotocol = \"k8s\"\n",
        api.port
    ));
    let start = std::time::Instant::now();
    let url = format!(
        "http://127.0.0.1:{}/api/v1/namespaces/default/pods/web-1/exec?command=sh",
        api.port
    );
    let (out, log) = curl(&config, &["-X", "POST", &url]);
    assert!(start.elapsed() >= Duration::from_secs(1), "held");
    assert!(out.contains(" 403"), "{out}\n{log}");
    assert!(
        out.contains("approval required (Kubernetes: pods/exec into default/web-1 needs approval), none given within 1s"),
        "{out}"
    );
    assert!(out.contains("\"kind\":\"Status\""), "{out}");

    // A watch streams line by line, each event masked.
    let url = format!(
        "http://127.0.0.1:{}/api/v1/namespaces/default/pods?watch=true",
        api.port
    );
    let (out, log) = curl(&config, &["-N", &url]);
    assert!(out.contains(" 200"), "{out}\n{log}");
    let body = out.split("\r\n\r\n").nth(1).expect("body");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 2, "{body}");
    assert!(
        lines[0].contains("\"name\":\"web-1\"") && lines[1].contains("\"name\":\"web-2\""),
        "{body}"
    );
    assert!(!body.contains("@example.com"), "{body}");
}

/// A WebSocket server (python3-websockets): on connect it sends personal
/// data as JSON, text and binary, then echoes; it notes what it received
/// and how it was closed in a file, so the test sees what left the host.
const WS_SERVER: &str = r#"
import asyncio, json, ssl, sys, websockets
port, log = int(sys.argv[1]), sys.argv[2]

def note(s):
    with open(log, "a") as f:
        f.write(s + "\n")

async def handler(ws, path=None):
    path = path or ws.path
    if path == "/big":
        await ws.send("x" * (17 << 20))
        await ws.wait_closed()
        return
    await ws.send(json.dumps({"user": {"name": "John", "email": "john.doe@example.com",
                                       "card": "4111 1111 1111 1111"}, "id": 7}))
    await ws.send("mail jane.roe@example.org, card 4111 1111 1111 1111")
    await ws.send(b"\x00\x01 bob@example.com \xff")
    try:
        async for m in ws:
            note(f"recv {m!r}")
            if m == "close-please":
                await ws.close(4000, "bye from server")
                break
            await ws.send(m)
    finally:
        note(f"closed {ws.close_code} {ws.close_reason}")

async def main():
    ctx = None
    if len(sys.argv) > 4:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    async with websockets.serve(handler, "127.0.0.1", port, ssl=ctx, max_size=None):
        await asyncio.Future()

asyncio.run(main())
"#;

/// The agent: python3-websockets' client, no proxy named. Arguments: the
/// base URL, then a CA file for wss (or "-").
const WS_CLIENT: &str = r#"
import asyncio, ssl, sys, websockets
base = sys.argv[1]
ctx = ssl.create_default_context(cafile=sys.argv[2]) if sys.argv[2] != "-" else None

async def greeted(ws):
    return [await ws.recv() for _ in range(3)]

async def closed(ws):
    try:
        print("unexpected", repr(await ws.recv()))
    except websockets.ConnectionClosed:
        pass
    print("closed", ws.close_code, ws.close_reason)

async def main():
    async with websockets.connect(base + "/chat", ssl=ctx) as ws:
        for m in await greeted(ws):
            print("got", repr(m))
        await ws.send("hello plain")
        print("echo", repr(await ws.recv()))
        await ws.send(b"\x02bin carol@example.com")
        print("echo", repr(await ws.recv()))
        await asyncio.wait_for(await ws.ping(), 5)
        print("pong")
        await ws.send('{"creds": {"key": "AKIAIOSFODNN7EXAMPLE"}}')
        await closed(ws)
    async with websockets.connect(base + "/chat", ssl=ctx) as ws:
        await greeted(ws)
        await ws.send("close-please")
        await closed(ws)
    async with websockets.connect(base + "/chat", ssl=ctx) as ws:
        await greeted(ws)
        await ws.close(4001, "bye from agent")
        print("closed", ws.close_code, ws.close_reason)
    async with websockets.connect(base + "/big", ssl=ctx) as ws:
        await closed(ws)
    async with websockets.connect(base + "/chat", ssl=ctx) as ws:
        await greeted(ws)
        try:
            await ws.send("y" * (17 << 20))
        except websockets.ConnectionClosed:
            pass
        await closed(ws)

asyncio.run(main())
"#;

fn start_ws_server(dir: &Path, name: &str, tls: Option<&Pki>) -> (Server, PathBuf) {
    let script = dir.join("ws_server.py");
    std::fs::write(&script, WS_SERVER).expect("script");
    let log = dir.join(format!("{name}.log"));
    let mut args = vec![&*log];
    if let Some(p) = tls {
        args.extend([&*p.cert, &*p.key]);
    }
    (python_server("websocket server", &script, &args), log)
}

/// What the agent printed over one run of the client, checked the same way
/// for ws and wss.
fn check_ws_session(out: &str, log: &str, server_log: &Path) {
    let lines: Vec<&str> = out.lines().collect();
    // JSON: masked as a tree (field rules apply, other fields untouched).
    let json = lines.first().copied().unwrap_or_default();
    assert!(
        json.contains(r#"\"card\": \"**** **** **** 1111\""#)
            || json.contains(r#""card":"**** **** **** 1111""#),
        "{out}\n{log}"
    );
    assert!(json.contains("John") && json.contains("\"id\":7"), "{out}");
    // Text and binary: the detectors.
    assert!(
        lines
            .get(1)
            .is_some_and(|l| l.starts_with("got 'mail ") && l.contains("**** **** **** 1111")),
        "{out}"
    );
    assert!(
        lines
            .get(2)
            .is_some_and(|l| l.starts_with("got b'\\x00\\x01 ")),
        "{out}"
    );
    for secret in [
        "john.doe@example.com",
        "jane.roe@example.org",
        "bob@example.com",
    ] {
        assert!(!out.contains(secret), "{secret} reached the agent: {out}");
    }
    // A plain message is echoed unchanged; a binary one comes back masked.
    assert_eq!(lines.get(3), Some(&"echo 'hello plain'"), "{out}");
    assert!(
        lines
            .get(4)
            .is_some_and(|l| l.starts_with("echo b'\\x02bin ") && !l.contains("carol@example.com")),
        "{out}"
    );
    assert_eq!(lines.get(5), Some(&"pong"), "{out}");
    // The secret: close 1008 with the reason; the server never saw it.
    assert_eq!(
        lines.get(6),
        Some(
            &"closed 1008 agentguard: WebSocket: the message carries a secret (aws_access_key) and may not leave the host"
        ),
        "{out}\n{log}"
    );
    // Close codes and reasons cross both ways.
    assert_eq!(lines.get(7), Some(&"closed 4000 bye from server"), "{out}");
    assert_eq!(lines.get(8), Some(&"closed 4001 bye from agent"), "{out}");
    // Over 16 MiB, either way: 1009, not a panic.
    for at in [9, 10] {
        assert!(
            lines
                .get(at)
                .is_some_and(|l| l.starts_with("closed 1009 agentguard: websocket message of ")),
            "{out}\n{log}"
        );
    }
    let seen = std::fs::read_to_string(server_log).expect("server log");
    assert!(seen.contains("recv 'hello plain'"), "{seen}");
    assert!(seen.contains("carol@example.com"), "{seen}");
    assert!(
        !seen.contains("AKIAIOSFODNN7EXAMPLE") && !seen.contains("yyyy"),
        "{seen}"
    );
    assert!(seen.contains("closed 4001 bye from agent"), "{seen}");
}

#[test]
fn websocket_messages_are_masked_and_decided() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = test_pki(dir.path());
    let (chat, chat_log) = start_ws_server(dir.path(), "chat", None);
    let (chat_tls, chat_tls_log) = start_ws_server(dir.path(), "chat-tls", Some(&pki));
    let api = start_server(dir.path(), None);
    let config = TestConfig::new(&format!(
        "{}{}{}",
        http_target("chat", chat.port, ""),
        http_target(
            "chat-tls",
            chat_tls.port,
            &format!("ca_file = \"{}\"\n", pki.ca.display())
        ),
        http_target("api", api.port, ""),
    ));

    let base = format!("ws://127.0.0.1:{}", chat.port);
    let out = exec(&config, &[PYTHON, "-c", WS_CLIENT, &base, "-"]);
    let (text, log) = (stdout(&out), stderr(&out));
    check_ws_session(&text, &log, &chat_log);
    // In the connection's span: the log line names the agent's process.
    let denied_line = log
        .lines()
        .find(|l| l.contains("websocket message denied"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        field(denied_line, "exe").is_some_and(|e| e.starts_with(PYTHON)),
        "{denied_line}"
    );
    assert!(log.contains("websocket messages masked masked="), "{log}");
    let denied = audited_denials(&config, "WebSocket: the message carries a secret");
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["request"]["kind"], "websocket", "{denied:?}");
    let oversized = audited_denials(&config, "over the 16 MiB limit");
    assert_eq!(oversized.len(), 2, "one each way: {oversized:?}");

    // wss: intercepted with the agentguard CA, the same inspection.
    let ca = agentguard_ca(&config);
    let base = format!("wss://localhost:{}", chat_tls.port);
    let out = exec(
        &config,
        &[PYTHON, "-c", WS_CLIENT, &base, &ca.display().to_string()],
    );
    check_ws_session(&stdout(&out), &stderr(&out), &chat_tls_log);

    // A server that answers with an extension it was not offered: 502.
    let code = r#"
import asyncio, sys, websockets
async def main():
    try:
        async with websockets.connect(sys.argv[1]):
            print("unexpected: connected")
    except websockets.InvalidStatusCode as e:
        print("refused", e.status_code)
asyncio.run(main())
"#;
    let url = format!("ws://127.0.0.1:{}/deflate", api.port);
    let out = exec(&config, &[PYTHON, "-c", code, &url]);
    assert_eq!(stdout(&out), "refused 502\n", "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot inspect compressed frames"),
        "{}",
        stderr(&out)
    );
}
