//! End-to-end: the Redis guard between real clients (redis-cli, redis-py)
//! and a real redis-server (Debian's package) started once for this test
//! binary on loopback, with the shipped policies.

mod common;

use std::{
    net::{SocketAddr, TcpListener},
    os::unix::process::CommandExt as _,
    process::Command,
    sync::{OnceLock, mpsc},
    time::Duration,
};

use common::*;

/// The one redis-server of this binary. Started from a thread that never
/// ends, with PR_SET_PDEATHSIG, so it dies with the test process.
fn redis_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut cmd = Command::new("redis-server");
            cmd.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                "/tmp",
            ])
            .stdout(std::process::Stdio::null());
            // SAFETY: prctl in the child before exec; async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd
                .spawn()
                .expect("redis-server (scripts/setup.sh installs it)");
            let _ = tx.send(());
            let _keep = Killed(child);
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("redis-server started");
        wait_for("redis-server", Duration::from_secs(10), || {
            direct(port, &["PING"]) == "PONG"
        });
        port
    })
}

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", redis_port()).parse().expect("addr")
}

/// redis-cli straight to the server (outside any guard).
fn direct(port: u16, cmd: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(cmd)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn config(labels: &str) -> TestConfig {
    TestConfig::new(&format!(
        "[[targets]]\nname = \"cache\"\naddress = \"{}\"\nprotocol = \"redis\"\nlabels = [{labels}]\n",
        addr()
    ))
}

/// redis-cli reading a script of commands from stdin, inside the guard
/// (`guarded`) or straight to the server.
fn cli_script(config: Option<&TestConfig>, extra: &str, script: &str) -> (String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("script.redis");
    std::fs::write(&file, script).expect("script");
    let line = format!("redis-cli -p {} {extra} < {}", redis_port(), file.display());
    let out = match config {
        Some(c) => exec(c, &["sh", "-c", &line]),
        None => sh_timed(&line),
    };
    (
        stdout(&out),
        format!("{}\nexit: {:?}", stderr(&out), out.status),
    )
}

/// python3 with redis-py inside the guard; prints what the code prints.
fn guarded_py(config: &TestConfig, code: &str) -> (String, String) {
    let code = format!(
        "import redis\nr = redis.Redis(host='127.0.0.1', port={}, db=2)\n{code}",
        redis_port()
    );
    let out = exec(config, &[PYTHON, "-c", &code]);
    (
        stdout(&out),
        format!("{}\nexit: {:?}", stderr(&out), out.status),
    )
}

const SESSION: &str = "DEL s:str s:list s:hash s:n s:tx
SET s:str hello
GET s:str
APPEND s:str \" world\"
INCRBY s:n 41
INCR s:n
RPUSH s:list a b c
LRANGE s:list 0 -1
HSET s:hash f1 v1 f2 v2
HGETALL s:hash
HMGET s:hash f2 nope
MULTI
SET s:tx 1
INCR s:tx
EXEC
MGET s:str s:n s:missing
TYPE s:list
EXISTS s:str s:missing
CLIENT SETNAME tester
CLIENT GETNAME
EVAL \"return redis.call('GET', KEYS[1])\" 1 s:str
GETRANGE s:str 0 4
DEL s:str s:list s:hash s:n s:tx
";

#[test]
fn redis_cli_session_matches_direct_resp2_and_resp3() {
    require_root();
    let config = config("");
    for proto in ["-2", "-3"] {
        let (guarded, err) = cli_script(Some(&config), proto, SESSION);
        let (plain, _) = cli_script(None, proto, SESSION);
        assert!(guarded.contains("hello world"), "{guarded}\n{err}");
        assert_eq!(guarded, plain, "guarded and direct differ ({proto})\n{err}");
    }
}

#[test]
fn admin_commands_refused_on_production_and_data_intact() {
    require_root();
    direct(redis_port(), &["SET", "prod:keep", "still-here"]);
    let before_dir = direct(redis_port(), &["CONFIG", "GET", "dir"]);
    let config = config("\"production\"");
    let script = "GET prod:keep
FLUSHALL
FLUSHDB
CONFIG SET dir /var/tmp
MODULE LOAD /tmp/nope.so
KEYS *
EVAL \"return redis.call('FLUSHALL')\" 0
MONITOR
GET prod:keep
";
    let (out, err) = cli_script(Some(&config), "", script);
    // redis-cli follows an error with a blank line.
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.first(), Some(&"still-here"), "{out}\n{err}");
    assert_eq!(lines.last(), Some(&"still-here"), "{out}\n{err}");
    for (i, word) in [
        (1, "FLUSHALL is an administrative command"),
        (2, "FLUSHDB is an administrative command"),
        (3, "CONFIG is an administrative command"),
        (4, "MODULE is an administrative command"),
        (5, "KEYS on production target cache"),
        (6, "the script of EVAL calls FLUSHALL"),
        (7, "MONITOR is an administrative command"),
    ] {
        assert!(
            lines
                .get(i)
                .is_some_and(|l| l.starts_with("NOPERM agentguard: ") && l.contains(word)),
            "line {i} should refuse with {word:?}:\n{out}\n{err}"
        );
    }
    assert_eq!(direct(redis_port(), &["GET", "prod:keep"]), "still-here");
    assert_eq!(direct(redis_port(), &["CONFIG", "GET", "dir"]), before_dir);
    let denied = audited_denials(&config, "FLUSHALL is an administrative command");
    assert!(!denied.is_empty(), "FLUSHALL refusal is audited");
    assert_eq!(
        denied[0]["request"]["command"], "FLUSHALL",
        "{:?}",
        denied[0]
    );
}

#[test]
fn redis_py_pipeline_keeps_order_and_multi_with_refusal_is_aborted() {
    require_root();
    let config = config("");
    let code = r#"
p = r.pipeline(transaction=False)
p.set('py:a', '1'); p.get('py:a'); p.flushall(); p.incr('py:a'); p.execute_command('DEBUG', 'SLEEP', '0'); p.get('py:a')
for x in p.execute(raise_on_error=False):
    print(type(x).__name__, x)
t = r.pipeline(transaction=True)
t.set('py:t1', 'x'); t.flushdb(); t.set('py:t2', 'y')
try:
    t.execute()
    print('executed')
except Exception as e:
    print('aborted', type(e).__name__, e)
print('after', r.get('py:t1'), r.get('py:t2'), r.ping())
"#;
    let (out, err) = guarded_py(&config, code);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 8, "{out}\n{err}");
    assert_eq!(lines[0], "bool True");
    assert_eq!(lines[1], "bytes b'1'");
    assert!(
        lines[2].starts_with("NoPermissionError") && lines[2].contains("FLUSHALL"),
        "{out}"
    );
    assert_eq!(lines[3], "int 2");
    assert!(
        lines[4].contains("DEBUG is an administrative command"),
        "{out}"
    );
    assert_eq!(lines[5], "bytes b'2'");
    assert!(lines[6].starts_with("aborted"), "{out}\n{err}");
    assert!(lines[6].contains("FLUSHDB"), "{out}");
    assert_eq!(lines[7], "after None None True", "{out}");
    assert_eq!(
        direct(redis_port(), &["-n", "2", "EXISTS", "py:t1", "py:t2"]),
        "0"
    );
}

#[test]
fn replies_are_masked_get_hgetall_resp2_and_resp3() {
    require_root();
    let config = config("");
    let code = r#"
r.set('m:contact', 'write to ann@example.com today')
r.hset('m:user', mapping={'name': 'Ann', 'email': 'ann@example.com', 'password': 'hunter2'})
print(r.get('m:contact').decode())
print(sorted((k.decode(), v.decode()) for k, v in r.hgetall('m:user').items()))
"#;
    let (out, err) = guarded_py(&config, code);
    assert!(
        !out.contains("ann@example.com"),
        "email masked: {out}\n{err}"
    );
    assert!(
        out.contains("write to ") && out.contains(" today"),
        "{out}\n{err}"
    );
    assert!(out.contains("('name', 'Ann')"), "{out}");
    assert!(!out.contains("hunter2"), "secret field masked: {out}");
    // Stored unmasked: masking is on the way out only.
    assert_eq!(
        direct(redis_port(), &["-n", "2", "HGET", "m:user", "email"]),
        "ann@example.com"
    );
    // RESP3: HGETALL is a map.
    let (out, err) = cli_script(Some(&config), "-3 -n 2", "HGETALL m:user\n");
    assert!(
        out.contains("Ann") && !out.contains("ann@example.com"),
        "{out}\n{err}"
    );
}

#[test]
fn pubsub_messages_pass_and_malformed_resp_gets_an_error() {
    require_root();
    let config = config("");
    let code = r#"
import socket, threading, time
ps = r.pubsub()
ps.subscribe('news')
print(ps.get_message(timeout=5)['type'])
threading.Thread(target=lambda: (time.sleep(0.2), redis.Redis(host='127.0.0.1', port=r.connection_pool.connection_kwargs['port']).publish('news', 'hi'))).start()
m = ps.get_message(timeout=5)
print(m['type'], m['data'])
ps.unsubscribe('news')
print(ps.get_message(timeout=5)['type'])
s = socket.create_connection(('127.0.0.1', r.connection_pool.connection_kwargs['port']), timeout=5)
s.sendall(b'PING\r\n*1\r\n$abc\r\n')
data = b''
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(data)
print(r.ping())
"#;
    let (out, err) = guarded_py(&config, code);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"subscribe"), "{out}\n{err}");
    assert_eq!(lines.get(1), Some(&"message b'hi'"), "{out}\n{err}");
    assert_eq!(lines.get(2), Some(&"unsubscribe"), "{out}\n{err}");
    assert_eq!(
        lines.get(3),
        Some(&"b'+PONG\\r\\n-ERR agentguard: protocol error: invalid length \"abc\"\\r\\n'"),
        "{out}\n{err}"
    );
    assert_eq!(lines.get(4), Some(&"True"), "{out}\n{err}");
}
