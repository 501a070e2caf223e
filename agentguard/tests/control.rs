//! The control socket end to end, with the real eBPF redirect, a real
//! PostgreSQL and psql: approvals (approve, deny, `--for` grants, restarts),
//! who may use the socket (agents never; other users by group), the
//! metrics endpoint (checked with the Prometheus project's own OpenMetrics
//! parser), and the systemd unit (`systemd-analyze verify`).

mod common;

use std::{
    fs,
    net::TcpListener,
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use common::{daemon::Setup, pg::*, *};
use serde_json::Value;

/// A daemon of the test's own (tests/common/daemon.rs), restartable.
struct Daemon {
    setup: Setup,
    child: Option<Killed>,
    log: PathBuf,
    runs: usize,
}

impl Daemon {
    /// `top`: top-level config keys; `tables`: targets, `[control]`.
    fn start(name: &str, top: &str, tables: &str) -> Self {
        let mut d = Self {
            setup: Setup::new(name, top, true, tables),
            child: None,
            log: PathBuf::new(),
            runs: 0,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        self.runs += 1;
        let (child, log) = self
            .setup
            .start_daemon(&format!("daemon-{}.log", self.runs));
        self.child = Some(child);
        self.log = log;
    }

    fn kill9(&mut self) {
        // Killed's Drop sends SIGKILL and reaps.
        drop(self.child.take());
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.setup.cli(args)
    }

    fn pending(&self) -> Vec<Value> {
        pending(self.config())
    }

    fn wait_pending(&self, needle: &str) -> String {
        wait_pending(self.config(), needle)
    }

    /// A command started inside the agent cgroup, output captured.
    fn in_agent(&self, argv: &[String]) -> Command {
        let mut cmd = self.setup.in_cgroup(argv);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn psql(&self, pg: &Pg, sql: &str) -> Child {
        let mut argv = vec![pg_bin("psql").display().to_string()];
        argv.extend(psql_args(pg.port));
        argv.extend(["-c".to_owned(), sql.to_owned()]);
        self.in_agent(&argv).spawn().expect("psql")
    }

    /// This run's log.
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn config(&self) -> &TestConfig {
        &self.setup.config
    }
}

fn cli(config: &TestConfig, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("--config").arg(config.path()).args(args);
    run_with_timeout(cmd, Duration::from_secs(30))
}

/// `agentguard approvals --json`, pending part.
fn pending(config: &TestConfig) -> Vec<Value> {
    let out = cli(config, &["approvals", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).expect("json");
    v["pending"].as_array().cloned().unwrap_or_default()
}

/// Waits for a hold whose request contains `needle`; returns its id.
fn wait_pending(config: &TestConfig, needle: &str) -> String {
    let mut id = None;
    wait_for(
        &format!("a hold for {needle}"),
        Duration::from_secs(20),
        || {
            id = pending(config)
                .iter()
                .find(|p| p["request"].as_str().is_some_and(|r| r.contains(needle)))
                .and_then(|p| p["id"].as_str().map(str::to_owned));
            id.is_some()
        },
    );
    id.expect("pending id")
}

fn finish(child: Child) -> (String, String, bool) {
    let out = child.wait_with_output().expect("wait");
    (stdout(&out), stderr(&out), out.status.success())
}

/// Parsed with prometheus_client's OpenMetrics parser (python3): sample
/// name + sorted labels → value. A format error fails the test.
fn scrape(d: &Daemon) -> std::collections::BTreeMap<String, f64> {
    let out = d.cli(&["metrics"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("parser");
    assert!(
        out.status.success(),
        "not valid OpenMetrics: {}\n{text}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).expect("parser output")
}

fn metric(m: &std::collections::BTreeMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[test]
fn approvals_hold_psql_until_a_person_answers() {
    require_root();
    let pg = Pg::start();
    pg.psql_direct(
        "CREATE TABLE accounts (id int primary key, balance int, owner text);
         INSERT INTO accounts VALUES (1, 100, 'ann'), (2, 200, 'bob'), (3, 300, 'cy')",
    );
    let notified = tempfile::NamedTempFile::new().expect("tmp");
    // On kernels with cgroup/connect_unix, the unix-socket guard keeps agents
    // off the control socket before it can even answer; the socket is
    // allowed here so that the daemon's own refusal (by peer credentials,
    // what older kernels rely on) is what this test shows.
    let sock = format!("/run/agentguard-control-{}.sock", tag());
    let mut d = Daemon::start(
        "approve",
        &format!(
            "approval_timeout_secs = 60\napproval_command = [\"sh\", \"-c\", \"cat >> {}\"]\n",
            notified.path().display(),
        ),
        &format!(
            "[[targets]]\nname = \"prod-db\"\naddress = \"{}\"\nprotocol = \"postgres\"\nlabels = [\"production\"]\n\
             [control]\nsocket = \"{sock}\"\n\
             [unix_sockets]\nallow = [\"{sock}\"]\n",
            pg.addr()
        ),
    );
    let before = scrape(&d);

    // Approve: the held UPDATE goes through and psql prints its result.
    let child = d.psql(
        &pg,
        "UPDATE accounts SET balance = 110 WHERE id = 1 RETURNING balance",
    );
    let id = d.wait_pending("UPDATE accounts SET balance = 110");
    let pending = d.pending();
    assert_eq!(pending.len(), 1, "{pending:?}");
    let p = &pending[0];
    assert_eq!(p["agent"], "agent");
    assert_eq!(p["target"]["name"], "prod-db");
    assert!(
        p["reason"]
            .as_str()
            .is_some_and(|r| r.contains("production")),
        "{p}"
    );
    let table = d.cli(&["approvals"]);
    assert!(
        stdout(&table).contains(&id) && stdout(&table).contains("prod-db"),
        "{}",
        stdout(&table)
    );
    let out = d.cli(&["approve", &id, "--reason", "ticket 42"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (o, e, ok) = finish(child);
    assert!(ok, "{o}\n{e}");
    assert_eq!(o.trim(), "110", "{e}");
    assert_eq!(
        pg.psql_direct("SELECT balance FROM accounts WHERE id = 1"),
        "110"
    );
    assert!(d.pending().is_empty());
    let hook = fs::read_to_string(notified.path()).expect("approval_command output");
    assert!(
        hook.contains(&format!("\"id\":\"{id}\"")) && hook.contains("UPDATE accounts"),
        "approval_command got: {hook}"
    );

    // Deny: psql gets the error, the row is untouched, the session goes on.
    let child = d.psql(
        &pg,
        "UPDATE accounts SET balance = 220 WHERE id = 2 RETURNING balance",
    );
    let id = d.wait_pending("UPDATE accounts SET balance = 220");
    let out = d.cli(&["deny", &id, "--reason", "not during the freeze"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (o, e, ok) = finish(child);
    assert!(!ok, "{o}");
    assert!(
        e.contains("agentguard:")
            && e.contains("denied by root")
            && e.contains("not during the freeze"),
        "{e}"
    );
    assert_eq!(
        pg.psql_direct("SELECT balance FROM accounts WHERE id = 2"),
        "200"
    );

    // An agent (root, inside the guarded cgroup) cannot answer its own hold.
    let child = d.psql(
        &pg,
        "UPDATE accounts SET owner = 'cy2' WHERE id = 3 RETURNING owner",
    );
    let id = d.wait_pending("UPDATE accounts SET owner");
    let mut argv = vec![bin().to_owned(), "--config".to_owned()];
    argv.push(d.config().path().display().to_string());
    argv.extend(["approve".to_owned(), id.clone()]);
    let agent_try = d.in_agent(&argv).output().expect("agent approve");
    assert!(!agent_try.status.success());
    assert!(
        stderr(&agent_try).contains("agents cannot use the control socket"),
        "{}",
        stderr(&agent_try)
    );
    assert_eq!(d.pending().len(), 1, "still waiting");

    // Approve for 10 minutes: the same statement shape passes at once...
    let out = d.cli(&["approve", &id, "--for", "10m"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (o, e, ok) = finish(child);
    assert!(ok && o.trim() == "cy2", "{o}\n{e}");
    let (o, e, ok) = finish(d.psql(
        &pg,
        "update accounts set owner = 'cy3' where id = 3 returning owner",
    ));
    // Nobody answered: had it been held, it would have waited 60 s and
    // then been refused.
    assert!(ok && o.trim() == "cy3", "{o}\n{e}");
    let grants = d.cli(&["approvals", "--json"]);
    let grants: Value = serde_json::from_str(&stdout(&grants)).expect("json");
    assert_eq!(
        grants["grants"].as_array().map(Vec::len),
        Some(1),
        "{grants}"
    );
    // ...while a different statement still waits.
    let child = d.psql(
        &pg,
        "UPDATE accounts SET balance = 0 WHERE id = 3 RETURNING balance",
    );
    let id = d.wait_pending("UPDATE accounts SET balance = 0");
    assert!(d.cli(&["deny", &id]).status.success());
    let (_, e, ok) = finish(child);
    assert!(!ok && e.contains("denied by root"), "{e}");

    // The audit log names the approver of each answered hold.
    let audit = d.cli(&["audit", "--json", "--limit", "100"]);
    let records: Vec<Value> = stdout(&audit)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let approved = records
        .iter()
        .find(|r| {
            r["request"]["sql"]
                .as_str()
                .is_some_and(|s| s.contains("balance = 110"))
        })
        .unwrap_or_else(|| panic!("no record: {}", stdout(&audit)));
    assert_eq!(approved["action"], "allow", "{approved}");
    assert_eq!(approved["approver"], "root (uid 0)", "{approved}");
    assert!(
        approved["reason"]
            .as_str()
            .is_some_and(|r| r.contains("ticket 42")),
        "{approved}"
    );
    let denied = records
        .iter()
        .find(|r| {
            r["request"]["sql"]
                .as_str()
                .is_some_and(|s| s.contains("balance = 220"))
        })
        .expect("deny record");
    assert_eq!(denied["action"], "deny");
    assert_eq!(denied["approver"], "root (uid 0)");

    // Metrics moved with the traffic, and parse as OpenMetrics.
    let after = scrape(&d);
    let allowed_sql = "agentguard_decisions_total{action=allow,kind=sql}";
    assert!(
        metric(&after, allowed_sql) >= metric(&before, allowed_sql) + 2.0,
        "{after:?}"
    );
    assert_eq!(
        metric(
            &after,
            "agentguard_approvals_answered_total{outcome=approved}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &after,
            "agentguard_approvals_answered_total{outcome=denied}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &after,
            "agentguard_approvals_answered_total{outcome=granted}"
        ),
        1.0
    );
    assert!(
        metric(
            &after,
            "agentguard_connections_total{agent=agent,protocol=postgres}"
        ) >= 5.0
    );
    assert!(metric(&after, "agentguard_policy_evaluation_seconds_count{}") > 0.0);
    assert!(
        after
            .keys()
            .any(|k| k.starts_with("agentguard_policy_info{version=")),
        "{after:?}"
    );

    // A hold survives a daemon crash as a record; its client is cut off.
    let child = d.psql(&pg, "DELETE FROM accounts WHERE id = 1");
    let id = d.wait_pending("DELETE FROM accounts");
    d.kill9();
    let (_, _, ok) = finish(child);
    assert!(!ok, "the held client cannot survive the daemon");
    d.spawn();
    assert!(d.pending().is_empty());
    assert!(
        d.log()
            .lines()
            .any(|l| l.contains("dropped by a daemon restart") && l.contains(&id)),
        "restart names the dropped hold: {}",
        d.log()
    );
    let audit = d.cli(&["audit", "--json", "--action", "deny"]);
    assert!(
        stdout(&audit).contains("when the daemon stopped")
            && stdout(&audit).contains("DELETE FROM accounts"),
        "{}",
        stdout(&audit)
    );
    assert_eq!(pg.psql_direct("SELECT count(*) FROM accounts"), "3");
    drop(d);
    let _ = fs::remove_file(&sock);
}

/// With no daemon, each `agentguard exec` serves its own control socket:
/// `approvals` lists the holds of every exec, `approve`/`deny` reach the one
/// holding the id, and the command inside exec is refused like any agent.
#[test]
fn exec_without_daemon_answers_approvals_from_another_shell() {
    require_root();
    let pg = Pg::start();
    pg.psql_direct(
        "CREATE TABLE accounts (id int primary key, balance int); INSERT INTO accounts VALUES (1, 100), (2, 200)",
    );
    // The unix-socket guard would stop the agent's connect before the
    // socket can refuse it; off, the refusal by peer credentials shows.
    let config = TestConfig::new(&format!(
        "approval_timeout_secs = 60\n[[targets]]\nname = \"prod-db\"\naddress = \"{}\"\nprotocol = \"postgres\"\nlabels = [\"production\"]\n[unix_sockets]\nguard = false\n",
        pg.addr()
    ));
    let exec_psql = |sql: &str| {
        let mut cmd = Command::new(bin());
        cmd.arg("--config")
            .arg(config.path())
            .args(["exec", "--"])
            .arg(pg_bin("psql"))
            .args(psql_args(pg.port))
            .args(["-c", sql])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().expect("exec")
    };
    let first = exec_psql("UPDATE accounts SET balance = 110 WHERE id = 1 RETURNING balance");
    let second = exec_psql("UPDATE accounts SET balance = 220 WHERE id = 2 RETURNING balance");
    let first_pid = first.id();
    let sockets = config.dir.path().join("run/exec");
    wait_for("both exec sockets", Duration::from_secs(20), || {
        fs::read_dir(&sockets).is_ok_and(|d| d.count() == 2)
    });
    let id1 = wait_pending(&config, "SET balance = 110");
    let id2 = wait_pending(&config, "SET balance = 220");
    assert_ne!(id1, id2);
    let table = stdout(&cli(&config, &["approvals"]));
    assert!(
        table.contains(&id1) && table.contains(&id2) && table.contains("prod-db"),
        "{table}"
    );
    let status = stdout(&cli(&config, &["status"]));
    assert!(
        status.contains("exec:      2 in-process guard(s)"),
        "{status}"
    );

    // The command inside exec (root, in exec's cgroup) cannot answer.
    let cgroup = cgroup2_mount().join(format!("agentguard/exec-{first_pid}"));
    for args in [vec!["approve", id1.as_str()], vec!["approvals"]] {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec \"$@\"",
                cgroup.display()
            ))
            .arg("sh")
            .arg(bin())
            .arg("--config")
            .arg(config.path())
            .args(&args);
        let out = run_with_timeout(cmd, Duration::from_secs(30));
        assert!(!out.status.success(), "{}", stdout(&out));
        assert!(
            stderr(&out).contains("agents cannot use the control socket"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(pending(&config).len(), 2, "both still waiting");

    // Each answer reaches the exec that holds it.
    let out = cli(&config, &["approve", &id1, "--reason", "ticket 7"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("SET balance = 110"),
        "{}",
        stdout(&out)
    );
    let out = cli(&config, &["deny", &id2, "--reason", "not now"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (o, e, ok) = finish(first);
    assert!(ok && o.trim() == "110", "{o}\n{e}");
    let (o, e, ok) = finish(second);
    assert!(!ok, "{o}");
    assert!(e.contains("denied by root") && e.contains("not now"), "{e}");
    assert_eq!(
        pg.psql_direct("SELECT balance FROM accounts ORDER BY id"),
        "110\n200"
    );
    // Both execs are done: their sockets went with them.
    let out = cli(&config, &["approvals"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no `agentguard exec` is guarding a command"),
        "{}",
        stderr(&out)
    );
    let audit = audit_records(&config);
    let approved = audit
        .iter()
        .find(|r| {
            r["request"]["sql"]
                .as_str()
                .is_some_and(|s| s.contains("balance = 110"))
        })
        .unwrap_or_else(|| panic!("no record: {audit:?}"));
    assert_eq!(approved["approver"], "root (uid 0)", "{approved}");
}

fn group_gid(name: &str) -> u32 {
    let out = Command::new("groupadd")
        .args(["--system", "-f", name])
        .output()
        .expect("groupadd");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = Command::new("getent")
        .args(["group", name])
        .output()
        .expect("getent");
    stdout(&out)
        .split(':')
        .nth(2)
        .and_then(|g| g.parse().ok())
        .expect("gid")
}

#[test]
fn control_socket_authorizes_by_peer_credentials() {
    require_root();
    // What `cargo xtask install` creates; the daemon gives the socket to the
    // first group at start.
    let readers = group_gid("agentguard");
    let approvers = group_gid("agentguard-approvers");
    let d = Daemon::start("authz", "", "");
    let sock = d.config().dir.path().join("run/agentguard.sock");
    let meta = fs::metadata(&sock).expect("socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(meta.gid(), readers);
    // The user `nobody` must be able to read the config and reach the socket
    // folder; the socket itself is what is being tested.
    for p in [
        d.config().dir.path().to_owned(),
        d.config().dir.path().join("run"),
    ] {
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    fs::set_permissions(d.config().path(), fs::Permissions::from_mode(0o644)).expect("chmod");
    let as_nobody = |groups: &str, args: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534"]);
        if groups.is_empty() {
            cmd.arg("--clear-groups");
        } else {
            cmd.arg(format!("--groups={groups}"));
        }
        cmd.arg(bin())
            .arg("--config")
            .arg(d.config().path())
            .args(args);
        run_with_timeout(cmd, Duration::from_secs(30))
    };
    // Not in any group: the socket's mode keeps it out.
    let out = as_nobody("", &["approvals"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("permission denied") && stderr(&out).contains("agentguard"),
        "{}",
        stderr(&out)
    );
    // A reader lists, but cannot answer.
    let out = as_nobody(&readers.to_string(), &["approvals"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("no requests waiting"),
        "{}",
        stdout(&out)
    );
    let out = as_nobody(&readers.to_string(), &["deny", "abc123"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("neither root nor in the group `agentguard-approvers`"),
        "{}",
        stderr(&out)
    );
    let out = as_nobody(&readers.to_string(), &["policy", "reload"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    // An approver may answer (there is nothing to answer: the id is unknown).
    let out = as_nobody(&format!("{readers},{approvers}"), &["deny", "abc123"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no pending approval abc123"),
        "{}",
        stderr(&out)
    );
    // An agent (root, in the guarded cgroup) is kept out: by the unix-socket
    // guard where the kernel has cgroup/connect_unix, else by the daemon.
    let argv = [
        bin().to_owned(),
        "--config".to_owned(),
        d.config().path().display().to_string(),
        "approvals".to_owned(),
    ];
    let out = d.in_agent(&argv).output().expect("agent");
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("agents cannot use the control socket")
            || stderr(&out).contains("Operation not permitted")
            || stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );
    // And root reads status through the socket.
    let out = d.cli(&["status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(status["running"], true);
    assert_eq!(status["daemon"]["approvals_pending"], 0, "{status}");
    assert!(d.log().contains("refused: uid 65534"), "{}", d.log());
}

#[test]
fn metrics_on_loopback_tcp_when_configured() {
    require_root();
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let d = Daemon::start(
        "metrics",
        "",
        &format!("[control]\nmetrics_listen = \"127.0.0.1:{port}\"\n"),
    );
    let out = Command::new("curl")
        .args(["-sS", "-i", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .expect("curl");
    let text = stdout(&out);
    assert!(
        text.contains("application/openmetrics-text")
            && text.contains("# TYPE agentguard_approvals_pending gauge"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .arg(format!("http://127.0.0.1:{port}/v1/approvals/x/approve"))
        .output()
        .expect("curl");
    assert_eq!(stdout(&out), "404", "nothing but metrics on TCP");
    drop(d);
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    // The unit as `cargo xtask install` writes it: the binary path is the
    // only thing it rewrites (here: to this build's binary).
    let unit = fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/agentguard.service"),
    )
    .expect("unit");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/agentguard "),
        "{unit}"
    );
    assert!(unit.contains("Type=notify"));
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("agentguard.service");
    fs::write(&path, unit.replace("/usr/local/bin/agentguard", bin())).expect("write");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    assert!(
        out.status.success() && stderr(&out).trim().is_empty(),
        "{}",
        stderr(&out)
    );
}

#[test]
fn completions_and_man_page_are_generated() {
    let out = Command::new(bin())
        .args(["completions", "bash"])
        .output()
        .expect("completions");
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("approvals"),
        "completions name the subcommands"
    );
    let out = Command::new(bin()).arg("man").output().expect("man");
    assert!(out.status.success());
    let man = stdout(&out);
    assert!(
        man.starts_with(".ie") || man.contains(".TH agentguard"),
        "{man}"
    );
    assert!(man.contains("approve"));
}
