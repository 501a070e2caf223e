//! End-to-end: credential injection. The agent holds no database password
//! and no API key; the guard logs in to a real PostgreSQL (SCRAM-SHA-256 and
//! md5 roles) and sets the key on requests to a real local HTTP server.
//! The agents run as `nobody` inside `agentguard exec` (setpriv), so they
//! cannot read the root-only secret files either.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    pg::{Pg, pg_bin},
    *,
};

/// Runs `argv` inside the guard as uid/gid nobody.
fn as_agent(config: &TestConfig, argv: &[&str]) -> std::process::Output {
    let mut all = vec![
        "/usr/bin/setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--",
    ];
    all.extend_from_slice(argv);
    exec(config, &all)
}

/// Every file under `dir` (the audit database, its journals, the CA).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// None of `secrets` is in the guard's state folder (audit database,
/// journals, CA) or in the logs the runs printed.
fn assert_nowhere(config: &TestConfig, logs: &[String], secrets: &[&str]) {
    let files = files_under(&config.dir.path().join("state"));
    assert!(!files.is_empty(), "no state files to look in");
    for secret in secrets {
        for f in &files {
            let raw = std::fs::read(f).unwrap_or_default();
            assert!(
                !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "the secret is in {}",
                f.display()
            );
        }
        for t in logs {
            assert!(!t.contains(secret), "the secret is in the output:\n{t}");
        }
    }
}

const PG_SECRET: &str = "Inj-scram-7Qe2-s3cret";
const MD5_SECRET: &str = "Inj-md5-4Rt9-s3cret";

fn pg_with_roles() -> Pg {
    let pg = Pg::start();
    pg.psql_direct(&format!(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE app_rw LOGIN PASSWORD '{PG_SECRET}'"
    ));
    pg.psql_direct(&format!(
        "SET password_encryption = 'md5'; CREATE ROLE app_md5 LOGIN PASSWORD '{MD5_SECRET}'"
    ));
    // Host connections as the app roles must authenticate; the superuser
    // keeps trust for setup.
    let hba = pg.dir.path().join("data/pg_hba.conf");
    let rules = "host all app_rw 127.0.0.1/32 scram-sha-256\nhost all app_md5 127.0.0.1/32 md5\n";
    let old = std::fs::read_to_string(&hba).expect("pg_hba");
    std::fs::write(&hba, format!("{rules}{old}")).expect("pg_hba");
    pg.psql_direct("SELECT pg_reload_conf()");
    pg
}

fn pg_config(pg: &Pg, secrets: &Path, rw_file: &Path) -> TestConfig {
    let md5 = secret_file(secrets, "app-md5", MD5_SECRET);
    TestConfig::new(&format!(
        r#"approval_timeout_secs = 1
[[targets]]
name = "app-db"
address = "{}"
protocol = "postgres"
[[credentials]]
name = "app-db-rw"
target = "app-db"
file = "{}"
role = "app_rw"
db_user = "agent"
[[credentials]]
name = "app-db-report"
target = "app-db"
file = "{}"
role = "app_md5"
db_user = "reporter"
"#,
        pg.addr(),
        rw_file.display(),
        md5.display()
    ))
}

/// psql as `user`, with no password (or `password`), never prompting.
fn psql_as(pg: &Pg, user: &str, password: Option<&str>, sql: &str) -> Vec<String> {
    let mut conninfo = format!(
        "host=127.0.0.1 port={} user={user} dbname=postgres",
        pg.port
    );
    if let Some(p) = password {
        conninfo.push_str(&format!(" password={p}"));
    }
    [
        pg_bin("psql").display().to_string(),
        "-X".into(),
        "-w".into(),
        "-A".into(),
        "-t".into(),
        conninfo,
        "-c".into(),
        sql.into(),
    ]
    .into()
}

#[test]
fn postgres_logs_in_with_the_stored_credential() {
    require_root();
    let pg = pg_with_roles();
    let secrets = tempfile::tempdir().expect("tempdir");
    let rw = secret_file(secrets.path(), "app-rw", PG_SECRET);
    let config = pg_config(&pg, secrets.path(), &rw);
    let mut logs = Vec::new();

    // psql with no password, then with a wrong one: logged in as the role.
    for password in [None, Some("wrong-guess")] {
        let argv = psql_as(&pg, "agent", password, "SELECT current_user, 40 + 2");
        let out = as_agent(&config, &args(&argv));
        let (o, e) = (stdout(&out), stderr(&out));
        assert!(out.status.success(), "{o}\n{e}");
        assert_eq!(o.trim(), "app_rw|42", "{e}");
        logs.push(e);
    }
    // A Python driver (psycopg2, libpq) as the md5 role's agent user.
    let code = format!(
        "import psycopg2\nc = psycopg2.connect(host='127.0.0.1', port={}, user='reporter', dbname='postgres')\n\
         cur = c.cursor(); cur.execute('SELECT current_user'); print(cur.fetchone()[0])\n\
         cur.execute('SELECT 1 + 1'); print(cur.fetchone()[0])",
        pg.port
    );
    let out = as_agent(&config, &[PYTHON, "-c", &code]);
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{o}\n{e}");
    assert_eq!(o.trim(), "app_md5\n2", "{e}");
    logs.push(e);

    // The agent cannot read the secret itself.
    let out = as_agent(&config, &["/bin/cat", &rw.display().to_string()]);
    assert!(!out.status.success(), "nobody read the secret file");
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );

    // A user no credential maps is refused by the guard, in protocol terms.
    let argv = psql_as(&pg, "mallory", None, "SELECT 1");
    let out = as_agent(&config, &args(&argv));
    let e = stderr(&out);
    assert!(!out.status.success(), "{e}");
    assert!(
        e.contains("agentguard: target `app-db` is logged in to with stored credentials and none is for db user `mallory`"),
        "{e}"
    );
    logs.push(e);

    // Without the guard the same connections are refused by the server.
    for (user, why) in [
        ("app_rw", "no password supplied"),
        ("agent", "role \"agent\" does not exist"),
    ] {
        let argv = psql_as(&pg, user, None, "SELECT 1");
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .output()
            .expect("psql");
        assert!(!out.status.success(), "direct {user} logged in");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(why),
            "{user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Policy saw the role and the credential's name; the audit shows who.
    let records = audit_records(&config);
    let sql: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["request"]["sql"].as_str() == Some("SELECT current_user, 40 + 2"))
        .collect();
    assert_eq!(sql.len(), 2, "{records:?}");
    assert!(
        sql.iter()
            .all(|r| r["request"]["db_user"] == "app_rw" && r["action"] == "allow"),
        "{sql:?}"
    );
    assert!(!audited_denials(&config, "none is for db user `mallory`").is_empty());

    assert_nowhere(&config, &logs, &[PG_SECRET, MD5_SECRET]);
}

#[test]
fn postgres_secret_rotation_needs_no_restart() {
    require_root();
    let pg = pg_with_roles();
    let secrets = tempfile::tempdir().expect("tempdir");
    let rw = secret_file(secrets.path(), "app-rw", PG_SECRET);
    let config = pg_config(&pg, secrets.path(), &rw);
    // Where the agent (nobody) and the test meet.
    let meet = tempfile::tempdir().expect("tempdir");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(meet.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
    }
    let d = meet.path().display().to_string();
    let code = format!(
        r#"import os, time, psycopg2
def connect():
    return psycopg2.connect(host='127.0.0.1', port={port}, user='agent', dbname='postgres')
old = connect(); cur = old.cursor(); cur.execute('SELECT 1')
open('{d}/ready', 'w').close()
for _ in range(400):
    if os.path.exists('{d}/go'): break
    time.sleep(0.05)
cur.execute('SELECT current_user'); print('open session', cur.fetchone()[0])
new = connect().cursor(); new.execute('SELECT current_user'); print('new session', new.fetchone()[0])
"#,
        port = pg.port
    );
    let agent = {
        let config_path = config.path().to_owned();
        std::thread::spawn(move || {
            let mut cmd = Command::new(bin());
            cmd.arg("--config").arg(config_path).args([
                "exec",
                "--",
                "/usr/bin/setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "--",
                PYTHON,
                "-c",
                &code,
            ]);
            run_with_timeout(cmd, Duration::from_secs(60))
        })
    };
    wait_for("the agent's first session", Duration::from_secs(30), || {
        meet.path().join("ready").exists()
    });
    // The operator rotates: a new password on the role, a new file
    // renamed over the old one, no restart.
    const ROTATED: &str = "Rotated-9Kp3-s3cret";
    pg.psql_direct(&format!("ALTER ROLE app_rw PASSWORD '{ROTATED}'"));
    let next = secret_file(secrets.path(), "app-rw.next", ROTATED);
    std::fs::rename(&next, &rw).expect("rename");
    // The file is looked at again at most once a second.
    std::thread::sleep(Duration::from_millis(1200));
    std::fs::write(meet.path().join("go"), "").expect("go");
    let out = agent.join().expect("agent thread");
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{o}\n{e}");
    assert_eq!(o.trim(), "open session app_rw\nnew session app_rw", "{e}");
    assert!(e.contains("secret rotated"), "{e}");
    assert_nowhere(&config, &[e], &[PG_SECRET, ROTATED, MD5_SECRET]);
}

#[test]
fn postgres_bad_secrets_are_clear_errors() {
    require_root();
    let pg = pg_with_roles();
    let secrets = tempfile::tempdir().expect("tempdir");

    // A stored secret the server rejects: 28P01 with agentguard's words,
    // and an audit record.
    let wrong = secret_file(secrets.path(), "app-rw", "not-the-password");
    let config = pg_config(&pg, secrets.path(), &wrong);
    let mut argv = psql_as(&pg, "agent", None, "SELECT 1");
    argv.insert(1, "-v".into());
    argv.insert(2, "VERBOSITY=verbose".into());
    let out = as_agent(&config, &args(&argv));
    let e = stderr(&out);
    assert!(!out.status.success(), "{e}");
    assert!(e.contains("28P01"), "{e}");
    assert!(
        e.contains("agentguard: credential `app-db-rw`: the server refused the login as `app_rw`: password authentication failed"),
        "{e}"
    );
    let denials = audited_denials(&config, "the server refused the login as `app_rw`");
    assert_eq!(denials.len(), 1, "{:?}", audit_records(&config));

    // Missing, then world-readable: the guard does not start, and says
    // which credential and what to do.
    let missing = secrets.path().join("nope");
    let config = pg_config(&pg, secrets.path(), &missing);
    let out = exec(&config, &["/bin/true"]);
    let e = stderr(&out);
    assert!(!out.status.success());
    assert!(
        e.contains(&format!(
            "credential `app-db-rw`: cannot read {}",
            missing.display()
        )),
        "{e}"
    );
    let open = secret_file(secrets.path(), "open", PG_SECRET);
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let config = pg_config(&pg, secrets.path(), &open);
    let out = exec(&config, &["/bin/true"]);
    let e = stderr(&out);
    assert!(!out.status.success());
    assert!(
        e.contains("credential `app-db-rw`")
            && e.contains("readable by group or others (mode 0644)")
            && e.contains(&format!("chmod 600 {}", open.display())),
        "{e}"
    );
    assert!(!e.contains(PG_SECRET), "{e}");
}

/// An OpenAI- and Anthropic-compatible API that wants its key: 401 without
/// it. Logs the credential headers it received (one JSON line a request)
/// and echoes them back, in the body and a header, as debug endpoints do.
const API: &str = r#"
import http.server, json, sys
port, key, log = int(sys.argv[1]), open(sys.argv[2]).read().strip(), sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def reply(self, code, obj, extra=()):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for k, v in extra: self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
    def handle_any(self):
        n = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(n)
        seen = {h: self.headers.get(h) for h in ("authorization", "x-api-key", "api-key")}
        with open(log, "a") as f:
            f.write(json.dumps({"path": self.path, **seen}) + "\n")
        if key not in (self.headers.get("authorization") or "") + (self.headers.get("x-api-key") or ""):
            return self.reply(401, {"error": {"message": "Incorrect API key provided: " + str(seen)}})
        if self.path.startswith("/echo"):
            return self.reply(200, {"headers": seen}, [("x-echo-auth", str(seen["authorization"] or seen["x-api-key"]))])
        if self.path == "/v1/messages":
            return self.reply(200, {"type": "message", "content": [{"type": "text", "text": "hi from claude"}]})
        return self.reply(200, {"object": "chat.completion", "choices": [{"index": 0,
            "message": {"role": "assistant", "content": "hi from the model"}, "finish_reason": "stop"}]})
    do_GET = do_POST = handle_any
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

struct Api {
    port: u16,
    log: PathBuf,
    _child: Killed,
}

fn start_api(dir: &Path, name: &str, key_file: &Path) -> Api {
    let script = dir.join("api.py");
    std::fs::write(&script, API).expect("script");
    let log = dir.join(format!("{name}.log"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let child = Command::new(PYTHON)
        .arg(&script)
        .arg(port.to_string())
        .arg(key_file)
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("api server");
    wait_for("the API server", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Api {
        port,
        log,
        _child: Killed(child),
    }
}

const OPENAI_KEY: &str = "sk-proj-InjectedOpenAiKey0123456789";
const ANTHROPIC_KEY: &str = "sk-ant-api03-InjectedAnthropicKey987";

#[test]
fn http_api_keys_are_set_by_the_guard() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = tempfile::tempdir().expect("tempdir");
    let openai_key = secret_file(secrets.path(), "openai", OPENAI_KEY);
    let anthropic_key = secret_file(secrets.path(), "anthropic", ANTHROPIC_KEY);
    let openai = start_api(dir.path(), "openai", &openai_key);
    let anthropic = start_api(dir.path(), "anthropic", &anthropic_key);
    let config = TestConfig::new(&format!(
        r#"[[targets]]
name = "openai"
address = "127.0.0.1:{}"
protocol = "llm"
[[targets]]
name = "anthropic"
address = "127.0.0.1:{}"
protocol = "llm"
labels = ["require-injection"]
[[credentials]]
name = "openai-key"
target = "openai"
file = "{}"
[[credentials]]
name = "anthropic-key"
target = "anthropic"
file = "{}"
inject = "header"
header = "x-api-key"
"#,
        openai.port,
        anthropic.port,
        openai_key.display(),
        anthropic_key.display()
    ));
    let mut logs = Vec::new();

    // An OpenAI-style client with a placeholder key (SDKs insist on one)
    // and an Anthropic-style one with none: both get answers.
    let code = format!(
        r#"import json, os, requests
chat = {{"model": "gpt-4o", "messages": [{{"role": "user", "content": "hello"}}]}}
r = requests.post("http://127.0.0.1:{o}/v1/chat/completions", json=chat,
                  headers={{"authorization": "Bearer sk-agent-placeholder"}})
print(r.status_code, r.json()["choices"][0]["message"]["content"])
r = requests.post("http://127.0.0.1:{a}/v1/messages", json={{"model": "claude", "max_tokens": 8,
                  "messages": [{{"role": "user", "content": "hello"}}]}})
print(r.status_code, r.json()["content"][0]["text"])
# A debug endpoint that echoes the credential back, in the body and a header.
r = requests.get("http://127.0.0.1:{o}/echo")
print(r.status_code, r.text, r.headers.get("x-echo-auth"))
# The key is in no environment variable and no file the agent can read.
env = open("/proc/self/environ", "rb").read()
print("env-clean", b"sk-proj-" not in env and b"sk-ant-" not in env)
for path in ["{of}", "{af}"]:
    try:
        open(path).read(); print("read", path)
    except PermissionError:
        print("unreadable")
"#,
        o = openai.port,
        a = anthropic.port,
        of = openai_key.display(),
        af = anthropic_key.display(),
    );
    let out = as_agent(&config, &[PYTHON, "-c", &code]);
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{o}\n{e}");
    let lines: Vec<&str> = o.lines().collect();
    assert_eq!(lines[0], "200 hi from the model", "{o}\n{e}");
    assert_eq!(lines[1], "200 hi from claude", "{o}\n{e}");
    assert!(
        lines[2].starts_with("200 ")
            && lines[2].contains("[agentguard: redacted credential]")
            && lines[2].ends_with("Bearer [agentguard: redacted credential]"),
        "{o}"
    );
    assert_eq!(
        &lines[3..],
        ["env-clean True", "unreadable", "unreadable"],
        "{o}"
    );
    logs.push(e);

    // The servers got the real keys, never the agent's placeholder.
    let seen = std::fs::read_to_string(&openai.log).expect("openai log");
    assert!(
        seen.lines()
            .all(|l| l.contains(&format!("Bearer {OPENAI_KEY}")) && !l.contains("placeholder")),
        "{seen}"
    );
    let seen = std::fs::read_to_string(&anthropic.log).expect("anthropic log");
    assert!(seen.lines().all(|l| l.contains(ANTHROPIC_KEY)), "{seen}");

    // On a target labelled require-injection, an agent that brings a key
    // of its own is refused (the shipped policy), and the server never
    // sees the request.
    let before = std::fs::read_to_string(&anthropic.log)
        .expect("log")
        .lines()
        .count();
    let url = format!("http://127.0.0.1:{}/v1/messages", anthropic.port);
    let out = as_agent(
        &config,
        &[
            "curl",
            "-sS",
            "-i",
            "-H",
            "x-api-key: sk-ant-stolen",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"model":"claude","messages":[]}"#,
            &url,
        ],
    );
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(o.contains(" 403"), "{o}\n{e}");
    assert!(
        o.contains("agentguard: the agent sent a credential of its own"),
        "{o}"
    );
    let after = std::fs::read_to_string(&anthropic.log)
        .expect("log")
        .lines()
        .count();
    assert_eq!(before, after, "the refused request reached the server");
    logs.push(e);

    // Policy input named the credential, never its value.
    let records = audit_records(&config);
    assert!(
        records.iter().any(|r| r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("agent sent a credential"))),
        "{records:?}"
    );
    assert_nowhere(&config, &logs, &[OPENAI_KEY, ANTHROPIC_KEY]);
}

#[test]
fn http_rejected_key_is_a_502_and_a_record() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = tempfile::tempdir().expect("tempdir");
    let real = secret_file(secrets.path(), "real", OPENAI_KEY);
    let stale = secret_file(secrets.path(), "stale", "sk-proj-RevokedKey");
    let api = start_api(dir.path(), "openai", &real);
    let config = TestConfig::new(&format!(
        "[[targets]]\nname = \"openai\"\naddress = \"127.0.0.1:{}\"\nprotocol = \"llm\"\n\
         [[credentials]]\nname = \"openai-key\"\ntarget = \"openai\"\nfile = \"{}\"\n",
        api.port,
        stale.display()
    ));
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", api.port);
    let out = as_agent(
        &config,
        &[
            "curl",
            "-sS",
            "-i",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
            &url,
        ],
    );
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(o.contains(" 502"), "{o}\n{e}");
    assert!(
        o.contains("agentguard: the server refused credential `openai-key` (401 Unauthorized)"),
        "{o}"
    );
    // The server's 401 body (which quotes what it got) never reaches the agent.
    assert!(
        !o.contains("RevokedKey") && !e.contains("RevokedKey"),
        "{o}\n{e}"
    );
    assert_eq!(
        audited_denials(&config, "the server refused credential `openai-key`").len(),
        1
    );
}
