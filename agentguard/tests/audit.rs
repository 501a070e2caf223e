//! End-to-end: the audit log and session recordings, with the real eBPF
//! redirect, a real PostgreSQL and psql. `agentguard exec` records into its
//! config's state_dir; the CLI reads it afterwards, and beside a running
//! daemon.

mod common;

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use common::{daemon::*, pg::*, *};
use serde_json::Value;

const CUSTOMERS: &str = "CREATE TABLE customers (id int, name text, email text);
INSERT INTO customers VALUES (1, 'Ann', 'ann.planted@example.com'), (2, 'Bob', 'bob.planted@example.org')";
const EMAILS: [&str; 2] = ["ann.planted@example.com", "bob.planted@example.org"];

fn cli(config: &TestConfig, args: &[&str]) -> (String, String, bool) {
    let mut cmd = Command::new(bin());
    cmd.arg("--config").arg(config.path()).args(args);
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    (stdout(&out), stderr(&out), out.status.success())
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn psql_session_is_audited_and_replayable_without_raw_values() {
    require_root();
    let pg = Pg::start();
    // Planted straight into the server: the guard only ever sees the rows.
    pg.psql_direct(CUSTOMERS);
    let config = TestConfig::new(&format!(
        "approval_timeout_secs = 1\n[[targets]]\nname = \"app-db\"\naddress = \"{}\"\nprotocol = \"postgres\"\n",
        pg.addr()
    ));
    let script = config.dir.path().join("script.sql");
    fs::write(
        &script,
        "SELECT id, name, email FROM customers ORDER BY id;\nDELETE FROM customers;\nSELECT count(*) FROM customers;\n",
    )
    .expect("script");
    let psql = pg_bin("psql");
    let mut argv = vec![psql.display().to_string()];
    argv.extend(psql_args(pg.port));
    argv.extend(["-f".to_owned(), script.display().to_string()]);
    let out = exec(&config, &args(&argv));
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(o.contains("1|Ann|"), "{o}\n{e}");
    assert!(!o.contains(EMAILS[0]), "masked for the client: {o}");
    assert!(e.contains("DELETE without WHERE"), "{e}");

    // The exec process is gone; its records stay.
    let (text, err, ok) = cli(&config, &["audit", "--json", "--limit", "100"]);
    assert!(ok, "{err}");
    let records = json_lines(&text);
    let psql_exe = fs::canonicalize(&psql).expect("psql path");
    let sql = |needle: &str| {
        records
            .iter()
            .find(|r| {
                r["request"]["kind"] == "sql"
                    && r["request"]["sql"]
                        .as_str()
                        .is_some_and(|s| s.contains(needle))
            })
            .unwrap_or_else(|| panic!("no record for {needle}: {text}"))
    };
    let select = sql("SELECT id, name, email");
    assert_eq!(select["action"], "allow", "{select}");
    assert_eq!(select["identity"]["uid"], 0);
    assert_eq!(
        select["identity"]["exe"].as_str().map(PathBuf::from),
        Some(psql_exe.clone()),
        "{select}"
    );
    assert!(
        select["policy_version"]
            .as_str()
            .is_some_and(|v| v.len() == 16),
        "{select}"
    );
    assert_eq!(select["masks"]["email"], 2, "{select}");
    assert_eq!(select["rows"], 2, "{select}");
    assert_eq!(select["target"]["name"], "app-db");
    assert_eq!(select["request"]["database"], "postgres");
    assert!(select["session_id"].as_u64().is_some());
    let delete = sql("DELETE FROM customers");
    assert_eq!(delete["action"], "deny", "{delete}");
    assert!(
        delete["reason"]
            .as_str()
            .is_some_and(|r| r.contains("DELETE without WHERE")),
        "{delete}"
    );
    assert_eq!(delete["session_id"], select["session_id"]);
    let connect = records
        .iter()
        .find(|r| r["request"]["kind"] == "connect")
        .expect("the connect decision");
    assert_eq!(connect["action"], "allow");

    // Filters go through the indexes.
    let (denied, _, ok) = cli(&config, &["audit", "--json", "--action", "deny"]);
    assert!(ok);
    let denied = json_lines(&denied);
    assert_eq!(denied.len(), 1, "{denied:?}");
    let (table, _, ok) = cli(&config, &["audit", "--target", "app-db", "--since", "1h"]);
    assert!(ok);
    assert!(table.starts_with("TIME (UTC)"), "{table}");
    assert!(
        table.contains("DELETE FROM customers") && table.contains("deny"),
        "{table}"
    );

    // One session, with its counts.
    let (sessions, err, ok) = cli(&config, &["sessions", "--json"]);
    assert!(ok, "{err}");
    let sessions = json_lines(&sessions);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let s = &sessions[0];
    assert_eq!(s["counts"]["requests"], 3, "{s}");
    assert_eq!(s["counts"]["allowed"], 2, "{s}");
    assert_eq!(s["counts"]["denied"], 1, "{s}");
    assert_eq!(s["counts"]["rows"], 3, "{s}");
    assert_eq!(s["details"]["db_user"], "postgres");
    assert!(s["end_ns"].as_u64().is_some(), "closed: {s}");

    let id = s["id"].as_u64().expect("id").to_string();
    let (replay, err, ok) = cli(&config, &["replay", &id, "--instant"]);
    assert!(ok, "{err}");
    let select_at = replay.find("> SELECT id, name, email").expect(&replay);
    let delete_at = replay.find("> DELETE FROM customers").expect(&replay);
    assert!(select_at < delete_at, "in order:\n{replay}");
    assert!(replay.contains("DENIED: "), "{replay}");
    assert!(replay.contains("1 | Ann | "), "{replay}");
    assert!(replay.contains("@*******.com"), "masked rows:\n{replay}");
    assert!(replay.contains("(SELECT 2)"), "{replay}");
    for email in EMAILS {
        assert!(!replay.contains(email), "{email} in the replay:\n{replay}");
    }

    // Nothing unmasked anywhere in the file.
    let state = config.dir.path().join("state/agentguard.redb");
    let raw = fs::read(&state).expect("the database file");
    for email in EMAILS {
        assert!(
            !raw.windows(email.len()).any(|w| w == email.as_bytes()),
            "{email} is in {}",
            state.display()
        );
    }
    // Export: OPA decision-log shape.
    let (export, _, ok) = cli(&config, &["audit", "export", "--format", "jsonl"]);
    assert!(ok);
    let export = json_lines(&export);
    assert_eq!(export.len(), records.len());
    assert!(export.iter().all(|e| e["decision_id"].is_string()
        && e["input"]["identity"].is_object()
        && e["result"]["action"].is_string()
        && e["bundles"]["agentguard"]["revision"].is_string()));
}

#[test]
fn audit_reads_beside_a_running_daemon() {
    require_root();
    let server = PeerServer::start("127.0.0.1:0");
    let d = Setup::new("audit", "", true, &target("web", server.addr));
    let (_daemon, _log) = d.start_daemon("daemon.log");

    // Follow mode picks up what is recorded after it started.
    let mut follow = Command::new(bin());
    follow
        .arg("--config")
        .arg(d.config.path())
        .args(["audit", "-f", "--json", "--agent", "agent", "--limit", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut follow = Killed(follow.spawn().expect("audit -f"));
    std::thread::sleep(Duration::from_millis(500));

    let line = d.client_in_cgroup(server.addr.port());
    assert!(line.starts_with("peer=127.0.0.1:"), "{line}");
    let refused = d.client_in_cgroup(1);
    assert!(refused.starts_with("ERR"), "{refused}");

    // Records reach the file within the batch window (50 ms + commit).
    let mut records = Vec::new();
    wait_for("two decisions in the log", Duration::from_secs(10), || {
        let (text, err, ok) = cli(&d.config, &["audit", "--json", "--agent", "agent"]);
        assert!(ok, "audit must read beside the running daemon: {err}");
        records = json_lines(&text);
        records.len() >= 2
    });
    let allow = records
        .iter()
        .find(|r| r["action"] == "allow")
        .expect("allowed connect");
    assert_eq!(allow["target"]["name"], "web");
    assert_eq!(allow["identity"]["agent"], "agent");
    let python = fs::canonicalize(PYTHON).expect("python3");
    assert_eq!(
        allow["identity"]["exe"].as_str().map(PathBuf::from),
        Some(python)
    );
    let deny = records
        .iter()
        .find(|r| r["action"] == "deny")
        .expect("refused connect");
    assert_eq!(deny["target"]["port"], 1);

    let stdout = follow.0.stdout.take().expect("pipe");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().expect("a followed line").expect("read");
    let first: Value = serde_json::from_str(&first).expect("json");
    assert_eq!(first["identity"]["agent"], "agent", "{first}");

    let (status, _, _) = cli(&d.config, &["status"]);
    assert!(status.contains("audit:"), "{status}");
    let (sessions, _, ok) = cli(&d.config, &["sessions"]);
    assert!(ok && sessions.contains("web"), "{sessions}");
}

/// python3's http.server on a folder: a real HTTP server.
fn http_server(dir: &std::path::Path) -> (Killed, u16) {
    let port = free_port();
    let child = Command::new(PYTHON)
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--directory")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("http.server");
    wait_for("http.server", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (Killed(child), port)
}

#[test]
fn http_requests_are_audited_with_the_agents_identity() {
    require_root();
    let www = tempfile::tempdir().expect("www");
    fs::write(
        www.path().join("user.json"),
        r#"{"name": "Ann", "email": "ann.planted@example.com"}"#,
    )
    .expect("file");
    let (_api, api) = http_server(www.path());
    let (_billing, billing) = http_server(www.path());
    let d = Setup::new(
        "audit-http",
        "",
        true,
        &format!(
            "[[targets]]\nname = \"api\"\naddress = \"127.0.0.1:{api}\"\nprotocol = \"http\"\n\
             [[targets]]\nname = \"billing\"\naddress = \"127.0.0.1:{billing}\"\nprotocol = \"http\"\nlabels = [\"production\"]\n"
        ),
    );
    let (_daemon, log) = d.start_daemon("daemon.log");
    let curl = |args: &[&str]| {
        let mut argv: Vec<String> = ["curl", "-sS", "-i", "--max-time", "20"]
            .map(String::from)
            .to_vec();
        argv.extend(args.iter().map(|a| a.to_string()));
        stdout(&run_with_timeout(
            d.in_cgroup(&argv),
            Duration::from_secs(30),
        ))
    };
    let got = curl(&[&format!("http://127.0.0.1:{api}/user.json?view=full")]);
    assert!(
        got.starts_with("HTTP/1.0 200") || got.starts_with("HTTP/1.1 200"),
        "{got}"
    );
    assert!(!got.contains(EMAILS[0]), "masked for the client: {got}");
    let posted = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        "{\"amount\": 5}",
        &format!("http://127.0.0.1:{billing}/charge"),
    ]);
    assert!(posted.contains(" 403 "), "{posted}");

    // No waiting: a reply goes out only once its decision is committed.
    let (text, err, ok) = cli(&d.config, &["audit", "--json", "--agent", "agent"]);
    assert!(ok, "{err}");
    let records = json_lines(&text);
    let http = |method: &str| {
        records
            .iter()
            .find(|r| r["request"]["kind"] == "http" && r["request"]["method"] == method)
            .unwrap_or_else(|| {
                panic!(
                    "no {method} record: {text}\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                )
            })
    };
    let curl_exe = fs::canonicalize("/usr/bin/curl").expect("curl");
    let get = http("GET");
    let post = http("POST");
    for (r, target, action) in [(get, "api", "allow"), (post, "billing", "deny")] {
        assert_eq!(r["action"], action, "{r}");
        assert_eq!(r["target"]["name"], target, "{r}");
        assert_eq!(r["identity"]["agent"], "agent", "{r}");
        assert_eq!(r["identity"]["uid"], 0, "{r}");
        assert_eq!(
            r["identity"]["exe"].as_str().map(PathBuf::from),
            Some(curl_exe.clone()),
            "{r}"
        );
        assert!(r["session_id"].as_u64().is_some(), "{r}");
        assert!(r["latency_us"].as_u64().is_some(), "{r}");
        assert!(
            r["policy_version"].as_str().is_some_and(|v| v.len() == 16),
            "{r}"
        );
    }
    assert_eq!(get["request"]["path"], "/user.json");
    assert_eq!(get["request"]["query"], "view=full");
    assert_eq!(post["request"]["path"], "/charge");
    assert!(
        post["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{post}"
    );

    // The mask count arrives once the body has been sent.
    wait_for("the GET's mask count", Duration::from_secs(10), || {
        let (text, _, _) = cli(&d.config, &["audit", "--json", "--target", "api"]);
        json_lines(&text)
            .iter()
            .any(|r| r["request"]["method"] == "GET" && r["masks"]["email"] == 1)
    });
    let (table, _, ok) = cli(&d.config, &["audit", "--action", "deny"]);
    assert!(
        ok && table.contains("POST") && table.contains("/charge"),
        "{table}"
    );
}

/// Issue 6's crash test: SIGKILL the daemon in the middle of a burst of
/// statements from four psql clients in the agent's cgroup; every
/// statement whose result a client printed has its record after restart.
#[test]
fn killed_daemon_loses_no_record_of_an_answered_statement() {
    use agentguard::audit::store::{Filter, Reader};
    use std::sync::{Arc, Mutex};

    require_root();
    let pg = Pg::start();
    let d = Setup::new(
        "audit-crash",
        "",
        true,
        &format!(
            "[[targets]]\nname = \"app-db\"\naddress = \"{}\"\nprotocol = \"postgres\"\n",
            pg.addr()
        ),
    );
    let (mut daemon, log) = d.start_daemon("daemon1.log");
    const CLIENTS: usize = 4;
    const STATEMENTS: usize = 5000;
    let printed = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let script = d.config.dir.path().join(format!("burst{c}.sql"));
        let sql: String = (0..STATEMENTS)
            .map(|i| format!("SELECT 'burst-{c}-{i}';\n"))
            .collect();
        fs::write(&script, sql).expect("script");
        // Line-buffered: a line is printed as soon as its result arrived.
        let mut argv = vec!["stdbuf".to_owned(), "-oL".to_owned()];
        argv.push(pg_bin("psql").display().to_string());
        argv.extend(psql_args(pg.port));
        argv.extend(["-v", "ON_ERROR_STOP=1", "-f"].map(String::from));
        argv.push(script.display().to_string());
        let mut cmd = d.in_cgroup(&argv);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = Killed(cmd.spawn().expect("psql"));
        let out = child.0.stdout.take().expect("pipe");
        let printed = Arc::clone(&printed);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                printed.lock().expect("lock").push(line);
            }
        });
        clients.push((child, reader));
    }
    wait_for("a burst under way", Duration::from_secs(60), || {
        printed.lock().expect("lock").len() >= 1000
    });
    daemon.0.kill().expect("SIGKILL");
    daemon.0.wait().expect("wait");
    for (mut child, reader) in clients {
        // Their connections died with the daemon.
        let _ = child.0.wait();
        reader.join().expect("reader");
    }
    let answered: Vec<String> = printed.lock().expect("lock").clone();
    assert!(
        answered.iter().all(|l| l.starts_with("burst-")),
        "{answered:?}"
    );
    assert!(
        answered.len() < CLIENTS * STATEMENTS,
        "the kill must land mid-burst ({} answered)",
        answered.len()
    );

    // The restarted daemon opens the same file (it refuses to run without).
    let (_daemon, log2) = d.start_daemon("daemon2.log");
    let (text, err, ok) = cli(
        &d.config,
        &["audit", "--json", "--agent", "agent", "--limit", "1000000"],
    );
    assert!(ok, "{err}");
    let recorded: std::collections::HashSet<String> = json_lines(&text)
        .iter()
        .filter_map(|r| r["request"]["sql"].as_str())
        .filter_map(|s| s.split('\'').nth(1).map(str::to_owned))
        .collect();
    let lost: Vec<&String> = answered.iter().filter(|a| !recorded.contains(*a)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} answered statements have no record, e.g. {:?}\n{}",
        lost.len(),
        answered.len(),
        &lost[..lost.len().min(5)],
        fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(recorded.len() >= answered.len());

    // None is corrupt: everything stored decodes.
    let reader = Reader::open(&d.config.dir.path().join("state")).expect("open the database");
    let (decisions, sessions, frames) = reader.counts().expect("counts");
    let all = reader
        .decisions(&Filter::default(), usize::MAX)
        .expect("decisions");
    assert_eq!(all.len() as u64, decisions, "every decision decodes");
    let all_sessions = reader
        .sessions(&Filter::default(), usize::MAX)
        .expect("sessions");
    assert_eq!(all_sessions.len() as u64, sessions, "every session decodes");
    let decoded_frames: usize = all_sessions
        .iter()
        .map(|s| reader.frames(s.id).expect("frames decode").len())
        .sum();
    assert_eq!(decoded_frames as u64, frames, "every frame decodes");
    drop(reader);

    // And the restarted guard records on.
    let mut argv = vec![pg_bin("psql").display().to_string()];
    argv.extend(psql_args(pg.port));
    argv.extend(["-c".to_owned(), "SELECT 'after-restart'".to_owned()]);
    let out = run_with_timeout(d.in_cgroup(&argv), Duration::from_secs(30));
    assert_eq!(
        stdout(&out).trim(),
        "after-restart",
        "{}\n{}",
        stderr(&out),
        fs::read_to_string(&log2).unwrap_or_default()
    );
    let (text, _, _) = cli(&d.config, &["audit", "--json", "--agent", "agent"]);
    assert!(text.contains("after-restart"), "{text}");
}

/// The audit log holds identities and SQL text: whatever umask agentguard
/// is started with, nothing it keeps is readable by every local user, a
/// folder an earlier run left open is narrowed (and said so), and the
/// guarded command still gets the caller's umask. The command itself lists
/// the modes, while the database and the live journal are open.
#[test]
fn state_files_are_private_whatever_the_umask() {
    require_root();
    use std::os::unix::fs::PermissionsExt as _;
    let config = TestConfig::new("");
    let state = config.dir.path().join("state");
    fs::create_dir_all(&state).expect("state");
    fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).expect("chmod");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "umask 0000; exec '{}' --config '{}' exec -- sh -c 'umask; find \"$0\" -exec stat -c \"%a %n\" {{}} +' '{}'",
        bin(),
        config.path().display(),
        state.display()
    ));
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    let text = stdout(&out);
    assert!(out.status.success(), "{}{text}", stderr(&out));
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("0000"),
        "the command keeps the caller's umask"
    );
    assert!(
        stderr(&out).contains("was mode 0777"),
        "the narrowed folder is reported: {}",
        stderr(&out)
    );
    let modes: Vec<(u32, &str)> = lines
        .filter_map(|l| l.split_once(' '))
        .map(|(m, p)| (u32::from_str_radix(m, 8).expect("octal mode"), p))
        .collect();
    for (mode, path) in &modes {
        assert_eq!(mode & 0o027, 0, "{path} is mode {mode:o}");
    }
    let has = |name: &str| modes.iter().any(|(_, p)| p.contains(name));
    assert!(has("agentguard.redb"), "the database was open: {modes:?}");
    assert!(has("/audit-journal/"), "a journal was open: {modes:?}");
}
