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
    let d = Setup::new("audit", "", &target("web", server.addr));
    let (_daemon, _log) = start_daemon(&d, "daemon.log");

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

    let line = client_in_cgroup(&d, server.addr.port());
    assert!(line.starts_with("peer=127.0.0.1:"), "{line}");
    let refused = client_in_cgroup(&d, 1);
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
