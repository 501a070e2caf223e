//! End-to-end: the MySQL guard between real clients (the `mariadb` CLI,
//! PyMySQL) and a real MariaDB (Debian's mariadb-server) started once for
//! this test binary on loopback, with the shipped policies. The clients run
//! inside `agentguard exec` and name no proxy.
//!
//! Prepared statements: neither the CLI nor PyMySQL prepares on the
//! server, and Debian has no packaged driver that does, so that test drives
//! COM_STMT_PREPARE / EXECUTE itself over a PyMySQL connection (PyMySQL
//! does the handshake and auth, the script sends the commands and decodes
//! the binary rows).

mod common;

use std::{
    net::{SocketAddr, TcpListener},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::Command,
    sync::{OnceLock, mpsc},
    time::Duration,
};

use common::*;

struct Maria {
    port: u16,
    socket: PathBuf,
}

/// The one mariadbd of this binary: a fresh datadir (mariadb-install-db),
/// loopback only, killed with the test process (PR_SET_PDEATHSIG).
fn maria() -> &'static Maria {
    static M: OnceLock<Maria> = OnceLock::new();
    M.get_or_init(|| {
        let dir = Box::leak(Box::new(tempfile::tempdir().expect("tempdir")));
        let data = dir.path().join("data");
        let socket = dir.path().join("sock");
        let out = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=root", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .arg("--auth-root-authentication-method=normal")
            .output()
            .expect("mariadb-install-db (scripts/setup.sh installs mariadb-server)");
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // TLS on the server (for targets with tls = "require").
        let key = dir.path().join("server.key");
        let cert = dir.path().join("server.crt");
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=mariadb-test",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl (scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let (tx, rx) = mpsc::channel();
        let args = vec![
            "--no-defaults".to_owned(),
            "--user=root".into(),
            format!("--datadir={}", data.display()),
            format!("--socket={}", socket.display()),
            format!("--port={port}"),
            "--bind-address=127.0.0.1".into(),
            "--skip-log-bin".into(),
            "--innodb-buffer-pool-size=16M".into(),
            "--local-infile=1".into(),
            format!("--ssl-cert={}", cert.display()),
            format!("--ssl-key={}", key.display()),
            format!("--pid-file={}", dir.path().join("pid").display()),
            format!("--log-error={}", dir.path().join("err.log").display()),
        ];
        std::thread::spawn(move || {
            let mut cmd = Command::new("mariadbd");
            cmd.args(&args).stdout(std::process::Stdio::null());
            // SAFETY: prctl in the child before exec; async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd.spawn().expect("mariadbd");
            let _ = tx.send(());
            let _keep = Killed(child);
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("mariadbd started");
        let m = Maria { port, socket };
        wait_for("mariadbd", Duration::from_secs(30), || {
            root_sql(&m, "SELECT 1").is_ok()
        });
        root_sql(
            &m,
            "CREATE USER agent@'%' IDENTIFIED BY 'pw'; GRANT ALL ON *.* TO agent@'%';
             INSTALL SONAME 'auth_ed25519';
             CREATE USER ed@'%' IDENTIFIED VIA ed25519 USING PASSWORD('edpw');
             GRANT ALL ON *.* TO ed@'%';",
        )
        .expect("users");
        m
    })
}

/// SQL as root over the unix socket (outside any guard): setup and checks.
fn root_sql(m: &Maria, sql: &str) -> Result<String, String> {
    let out = Command::new("mariadb")
        .args(["--no-defaults", "--batch", "--skip-column-names", "-uroot"])
        .arg(format!("--socket={}", m.socket.display()))
        .args(["-e", sql])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn root(sql: &str) -> String {
    root_sql(maria(), sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", maria().port).parse().expect("addr")
}

fn config() -> TestConfig {
    config_with("")
}

/// `extra`: more keys of the target.
fn config_with(extra: &str) -> TestConfig {
    TestConfig::new(&format!(
        "[[targets]]\nname = \"shop-db\"\naddress = \"{}\"\nprotocol = \"mysql\"\n{extra}",
        addr()
    ))
}

/// A fresh database `name` with a customers table.
fn database(name: &str) {
    root(&format!(
        "DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name};
         CREATE TABLE {name}.customers (id INT PRIMARY KEY, name TEXT, email VARCHAR(100), note TEXT);
         INSERT INTO {name}.customers VALUES
           (1, 'Ann', 'ann.lee@example.com', 'call after 5'),
           (2, 'Bob', 'bob@example.org', 'order 12345 shipped');"
    ));
}

/// The mariadb CLI over TCP running `script` (`--force`: on past errors),
/// inside the guard when `config` is given. Returns stdout, stderr.
fn cli(
    config: Option<&TestConfig>,
    user: &str,
    password: &str,
    db: &str,
    script: &str,
) -> (String, String) {
    cli_with(config, "", user, password, db, script)
}

/// [`cli`] with more options (`extra`).
fn cli_with(
    config: Option<&TestConfig>,
    extra: &str,
    user: &str,
    password: &str,
    db: &str,
    script: &str,
) -> (String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("script.sql");
    std::fs::write(&file, script).expect("script");
    let line = format!(
        "mariadb --no-defaults --batch --force --local-infile=1 {extra} -h127.0.0.1 -P{} -u{user} -p{password} {db} < {}",
        maria().port,
        file.display()
    );
    let out = match config {
        Some(c) => exec(c, &["sh", "-c", &line]),
        None => sh_timed(&line),
    };
    (stdout(&out), stderr(&out))
}

/// python3 with PyMySQL inside the guard; `conn(**kw)` connects as agent.
fn guarded_py(config: &TestConfig, code: &str) -> (String, String) {
    let code = format!(
        "import pymysql, struct, sys\nfrom pymysql.constants import CLIENT, COMMAND\n\
         def conn(**kw):\n    return pymysql.connect(host='127.0.0.1', port={}, user='agent', password='pw', **kw)\n{code}",
        maria().port
    );
    let out = exec(config, &[PYTHON, "-c", &code]);
    (
        stdout(&out),
        format!("{}\nexit: {:?}", stderr(&out), out.status),
    )
}

const SESSION: &str = "SELECT id, name, note FROM customers ORDER BY id;
SHOW TABLES;
CREATE TABLE t (a INT, b VARCHAR(20));
INSERT INTO t VALUES (1, 'x'), (2, NULL), (3, 'zzz');
UPDATE t SET b = 'y' WHERE a = 2;
DELETE FROM t WHERE a = 3;
SELECT * FROM t ORDER BY a;
SELECT COUNT(*), SUM(a), MAX(b) FROM t;
SELECT nope FROM t;
BEGIN;
INSERT INTO t VALUES (4, 'tx');
ROLLBACK;
SELECT * FROM t ORDER BY a;
SELECT REPEAT('ab', 5000) AS long_value;
USE mysql_e2e_session;
SELECT 1;
";

#[test]
fn cli_session_matches_direct() {
    require_root();
    let config = config();
    database("mysql_e2e_session");
    let (direct, direct_err) = cli(None, "agent", "pw", "mysql_e2e_session", SESSION);
    database("mysql_e2e_session");
    let (guarded, guarded_err) = cli(Some(&config), "agent", "pw", "mysql_e2e_session", SESSION);
    assert!(
        direct.contains("order 12345 shipped"),
        "{direct}\n{direct_err}"
    );
    assert_eq!(guarded, direct, "guarded stderr:\n{guarded_err}");
    // The server's own error for the bad column, as direct.
    assert!(guarded_err.contains("ERROR 1054 (42S22)"), "{guarded_err}");
}

#[test]
fn destructive_statements_are_refused_and_the_table_is_intact() {
    require_root();
    let config = config();
    database("mysql_e2e_destroy");
    let (out, err) = cli(
        Some(&config),
        "agent",
        "pw",
        "mysql_e2e_destroy",
        "DROP TABLE customers;\nDELETE FROM customers;\nUPDATE customers SET email = 'x';\n\
         DROP DATABASE mysql_e2e_destroy;\nTRUNCATE customers;\nSELECT 1 /*!50000 , (SELECT 1) */;\n\
         SELECT COUNT(*) AS n FROM customers;\n",
    );
    for reason in [
        "agentguard: SQL: DROP is not allowed",
        "agentguard: SQL: DELETE without WHERE on customers",
        "agentguard: SQL: UPDATE without WHERE on customers",
        "agentguard: SQL: TRUNCATE is not allowed",
        "agentguard: SQL that agentguard cannot parse is not allowed (executable comments",
    ] {
        assert!(
            err.lines()
                .any(|l| l.starts_with("ERROR 1142 (42000) at line") && l.contains(reason)),
            "{reason} missing:\n{err}"
        );
    }
    // The session went on after the refusals.
    assert!(out.contains("n\n2"), "{out}\n{err}");
    assert_eq!(
        root("SELECT COUNT(*) FROM mysql_e2e_destroy.customers"),
        "2"
    );
    assert_eq!(
        root("SELECT email FROM mysql_e2e_destroy.customers WHERE id = 1"),
        "ann.lee@example.com"
    );
    let denials = audited_denials(&config, "DELETE without WHERE");
    assert_eq!(denials.len(), 1, "{denials:?}");
}

#[test]
fn multi_statements_are_decided_as_a_whole() {
    require_root();
    let config = config();
    database("mysql_e2e_multi");
    let (out, err) = guarded_py(
        &config,
        "c = conn(database='mysql_e2e_multi', client_flag=CLIENT.MULTI_STATEMENTS)
cur = c.cursor()
cur.execute('SELECT 1; SELECT name FROM customers WHERE id = 2; SELECT 3')
sets = [cur.fetchall()]
while cur.nextset():
    sets.append(cur.fetchall())
print('sets', sets)
try:
    cur.execute('SELECT 1; DROP TABLE customers; SELECT 2')
    print('not refused')
except pymysql.err.OperationalError as e:
    print('refused', e.args[0], e.args[1])
cur.execute('SELECT COUNT(*) FROM customers')
print('count', cur.fetchone()[0])",
    );
    assert!(
        out.contains("sets [((1,),), (('Bob',),), ((3,),)]"),
        "{out}\n{err}"
    );
    assert!(
        out.contains("refused 1142 agentguard: SQL: DROP is not allowed"),
        "{out}\n{err}"
    );
    assert!(out.contains("count 2"), "{out}\n{err}");
    assert_eq!(root("SELECT COUNT(*) FROM mysql_e2e_multi.customers"), "2");
}

#[test]
fn refusal_inside_a_transaction_then_commit() {
    require_root();
    let config = config();
    database("mysql_e2e_tx");
    let (out, err) = guarded_py(
        &config,
        "c = conn(database='mysql_e2e_tx', autocommit=False)
cur = c.cursor()
cur.execute('BEGIN')
cur.execute(\"INSERT INTO customers VALUES (3, 'Cy', 'cy@example.net', '')\")
try:
    cur.execute('DELETE FROM customers')
except pymysql.err.OperationalError as e:
    print('refused', e.args[0])
cur.execute('SELECT @@in_transaction')
print('in_transaction', cur.fetchone()[0])
c.commit()
print('committed')",
    );
    assert!(out.contains("refused 1142"), "{out}\n{err}");
    assert!(out.contains("in_transaction 1"), "{out}\n{err}");
    assert!(out.contains("committed"), "{out}\n{err}");
    assert_eq!(root("SELECT COUNT(*) FROM mysql_e2e_tx.customers"), "3");
}

#[test]
fn prepared_statements_are_decided_at_prepare_and_execute_and_masked() {
    require_root();
    // The shipped policies, plus a rule on an execute's parameters.
    let policies = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(shipped_policies()).expect("policies") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, policies.path().join(path.file_name().expect("name"))).expect("copy");
    }
    std::fs::write(
        policies.path().join("params.rego"),
        "package agentguard.sql\nimport rego.v1\ndeny contains \"test: parameter 666\" if {\n\tinput.request.command == \"stmt_execute\"\n\t\"666\" in input.request.params\n}\n",
    )
    .expect("rule");
    let config = TestConfig::new(&format!(
        "policy_dir = \"{}\"\n[[targets]]\nname = \"shop-db\"\naddress = \"{}\"\nprotocol = \"mysql\"\n",
        policies.path().display(),
        addr()
    ));
    database("mysql_e2e_prep");
    let (out, err) = guarded_py(
        &config,
        r#"c = conn(database='mysql_e2e_prep')
eof = not (c.client_flag & (1 << 24))
def read_defs(n):
    for _ in range(n): c._read_packet()
    if n and eof: c._read_packet()
def prepare(sql):
    c._execute_command(COMMAND.COM_STMT_PREPARE, sql)
    data = c._read_packet().get_all_data()
    sid, ncols, nparams = struct.unpack("<IHH", data[1:9])
    read_defs(nparams); read_defs(ncols)
    return sid
def lenenc(d, i):
    n = d[i]
    if n < 0xfb: return n, i + 1
    if n == 0xfc: return struct.unpack("<H", d[i+1:i+3])[0], i + 3
    return int.from_bytes(d[i+1:i+4], "little"), i + 4
def execute(sid, params):
    body = struct.pack("<IBI", sid, 0, 1)
    if params:
        body += b"\0" * ((len(params) + 7) // 8) + b"\1" + b"\x08\0" * len(params)
        body += b"".join(struct.pack("<q", p) for p in params)
    c._execute_command(COMMAND.COM_STMT_EXECUTE, body)
    ncols, _ = lenenc(c._read_packet().get_all_data(), 0)
    read_defs(ncols)
    rows = []
    while True:
        p = c._read_packet().get_all_data()
        if p[0] == 0xfe and len(p) < 9: break
        i = 1 + (ncols + 9) // 8
        rid = struct.unpack("<i", p[i:i+4])[0]; i += 4
        n, i = lenenc(p, i)
        rows.append((rid, p[i:i+n].decode()))
    return rows
sid = prepare("SELECT id, email FROM customers WHERE id > ? ORDER BY id")
print("rows", execute(sid, [0]))
print("rows", execute(sid, [1]))
try:
    execute(sid, [666])
    print("666 accepted")
except pymysql.err.OperationalError as e:
    print("params", e.args[0], e.args[1])
for bad in ["DELETE FROM customers", "DROP TABLE customers"]:
    try:
        prepare(bad)
        print("accepted", bad)
    except pymysql.err.OperationalError as e:
        print("refused", e.args[0], e.args[1])
try:
    execute(4242, [])
except pymysql.err.OperationalError as e:
    print("unknown", e.args[0], e.args[1])
c._execute_command(COMMAND.COM_STMT_CLOSE, struct.pack("<I", sid))
cur = c.cursor(); cur.execute("SELECT COUNT(*) FROM customers"); print("count", cur.fetchone()[0])"#,
    );
    // Binary rows: the email column masked, ids untouched.
    assert!(
        out.contains("rows [(1, 'a**.***@*******.com'), (2, 'b**@*******.org')]"),
        "{out}\n{err}"
    );
    assert!(
        out.contains("rows [(2, 'b**@*******.org')]"),
        "{out}\n{err}"
    );
    assert!(
        out.contains("params 1142 agentguard: test: parameter 666"),
        "execute decided with its parameters: {out}\n{err}"
    );
    assert!(
        out.contains("refused 1142 agentguard: SQL: DELETE without WHERE on customers"),
        "{out}\n{err}"
    );
    assert!(
        out.contains("refused 1142 agentguard: SQL: DROP is not allowed"),
        "{out}\n{err}"
    );
    assert!(
        out.contains("unknown 1142 agentguard: unknown prepared statement"),
        "{out}\n{err}"
    );
    assert!(out.contains("count 2"), "{out}\n{err}");
}

#[test]
fn auth_plugins_pass_through_with_right_and_wrong_passwords() {
    require_root();
    let config = config();
    let cases = [
        ("agent", "pw"),
        ("agent", "nope"),
        ("ed", "edpw"),
        ("ed", "nope"),
    ];
    // One guarded shell for every case (each exec sets up a cgroup).
    let line = |user: &str, password: &str| {
        format!(
            "echo '== {user} {password}'; mariadb --no-defaults --batch -h127.0.0.1 -P{} -u{user} -p{password} -e 'SELECT CURRENT_USER() AS who' 2>&1",
            maria().port
        )
    };
    let script: Vec<String> = cases.iter().map(|(u, p)| line(u, p)).collect();
    let script = script.join("; ");
    let guarded = stdout(&exec(&config, &["sh", "-c", &script]));
    let direct = stdout(&sh_timed(&script));
    assert!(direct.contains("who\nagent@%"), "{direct}");
    assert!(direct.contains("who\ned@%"), "{direct}");
    assert_eq!(
        direct
            .matches("ERROR 1045 (28000): Access denied for user")
            .count(),
        2,
        "{direct}"
    );
    assert_eq!(
        guarded, direct,
        "the same logins and the server's own errors"
    );
}

#[test]
fn load_data_local_infile_is_refused() {
    require_root();
    let config = config();
    database("mysql_e2e_load");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rows.csv");
    std::fs::write(&file, "9,Zed,z@example.com,x\n").expect("file");
    let (out, err) = cli(
        Some(&config),
        "agent",
        "pw",
        "mysql_e2e_load",
        &format!(
            "LOAD DATA LOCAL INFILE '{}' INTO TABLE customers FIELDS TERMINATED BY ',';\nSELECT COUNT(*) AS n FROM customers;\n",
            file.display()
        ),
    );
    assert!(
        err.contains("ERROR 1142 (42000)")
            && err.contains("agentguard: MySQL: LOAD DATA LOCAL INFILE")
            && err.contains(&file.display().to_string()),
        "{err}"
    );
    assert!(out.contains("n\n2"), "the session goes on: {out}\n{err}");
    assert_eq!(root("SELECT COUNT(*) FROM mysql_e2e_load.customers"), "2");
    // Without the guard the same load works (the refusal is the guard's).
    let (_, direct_err) = cli(
        None,
        "agent",
        "pw",
        "mysql_e2e_load",
        &format!(
            "LOAD DATA LOCAL INFILE '{}' INTO TABLE customers FIELDS TERMINATED BY ',';\n",
            file.display()
        ),
    );
    assert_eq!(
        root("SELECT COUNT(*) FROM mysql_e2e_load.customers"),
        "3",
        "{direct_err}"
    );
}

#[test]
fn text_rows_are_masked_in_flight() {
    require_root();
    let config = config();
    database("mysql_e2e_mask");
    let (out, err) = cli(
        Some(&config),
        "agent",
        "pw",
        "mysql_e2e_mask",
        "SELECT id, name, email AS contact, note FROM customers ORDER BY id;\n",
    );
    assert!(!out.contains("ann.lee@example.com"), "{out}");
    assert!(!out.contains("bob@example.org"), "{out}");
    assert!(
        out.contains("1\tAnn\ta**.***@*******.com\tcall after 5"),
        "{out}\n{err}"
    );
    assert!(out.contains("order 12345 shipped"), "{out}");
    assert_eq!(
        root("SELECT email FROM mysql_e2e_mask.customers WHERE id = 1"),
        "ann.lee@example.com"
    );
    // The audit record counts what was masked and the rows forwarded.
    let records = audit_records(&config);
    let r = records
        .iter()
        .find(|r| {
            r["request"]["sql"]
                .as_str()
                .is_some_and(|s| s.contains("email AS contact"))
        })
        .expect("the select's record");
    assert_eq!(r["request"]["protocol"], "mysql", "{r}");
    assert_eq!(r["masks"]["email"], 2, "{r}");
    assert_eq!(r["rows"], 2, "{r}");
}

#[test]
fn malformed_packets_and_unknown_commands_get_clear_errors() {
    require_root();
    let config = config();
    let (out, err) = guarded_py(
        &config,
        "def raw_error(c, payload):
    c._next_seq_id = 0
    c._write_bytes(struct.pack('<I', len(payload))[:3] + b'\\0' + payload)
    c._next_seq_id = 1
    try:
        c._read_packet()
        return 'no error'
    except Exception as e:
        return e.args
c = conn()
print('debug', raw_error(c, b'\\x0d'))
print('binlog', raw_error(c, b'\\x12' + struct.pack('<IHI', 4, 0, 1) + b'bin.000001'))
cur = c.cursor(); cur.execute('SELECT 40+1'); print('same session', cur.fetchone()[0])
print('empty', raw_error(c, b''))
c2 = conn()
cur = c2.cursor(); cur.execute('SELECT 41+1'); print('other session', cur.fetchone()[0])",
    );
    assert!(
        out.contains(
            "debug (1142, 'agentguard: MySQL command 0x0d is not supported by agentguard')"
        ),
        "{out}\n{err}"
    );
    assert!(
        out.contains("binlog (1142, 'agentguard: MySQL: replication commands"),
        "{out}\n{err}"
    );
    assert!(out.contains("same session 41"), "{out}\n{err}");
    assert!(
        out.contains(
            "empty (1835, 'agentguard: protocol error: empty packet where a command was due')"
        ),
        "{out}\n{err}"
    );
    assert!(out.contains("other session 42"), "{out}\n{err}");
}

#[test]
fn tls_towards_the_agent_and_the_server() {
    require_root();
    let script = "SHOW SESSION STATUS LIKE 'Ssl_version';\n";
    // No agentguard CA, no TLS to the server: TLS is not offered to the
    // agent, so one that insists fails; plaintext on both hops otherwise.
    let config = config();
    let (out, err) = cli(Some(&config), "agent", "pw", "", script);
    assert!(
        out.contains("Ssl_version\t\n"),
        "plaintext to the server: {out}\n{err}"
    );
    let (out, err) = cli_with(
        Some(&config),
        "--ssl --ssl-verify-server-cert",
        "agent",
        "pw",
        "",
        script,
    );
    assert!(!out.contains("Ssl_version"), "{out}");
    assert!(
        err.contains("ERROR 2026"),
        "the client refuses plaintext: {err}"
    );

    // The agentguard CA terminates the agent's TLS (verified against that
    // CA) and tls = "require" encrypts the hop to the server.
    let config = config_with("tls = \"require\"\n");
    let ca = ca_init(&config);
    let (out, err) = cli_with(
        Some(&config),
        &format!("--ssl --ssl-verify-server-cert --ssl-ca={}", ca.display()),
        "agent",
        "pw",
        "",
        &format!("{script}status\n"),
    );
    assert!(
        out.contains("Ssl_version\tTLSv1."),
        "TLS to the server: {out}\n{err}"
    );
    assert!(
        out.contains("Cipher in use is"),
        "TLS from the agent: {out}\n{err}"
    );
    // ed25519 through two TLS hops (sequence ids renumbered both ways).
    let (out, err) = cli_with(
        Some(&config),
        &format!("--ssl --ssl-ca={}", ca.display()),
        "ed",
        "edpw",
        "",
        "SELECT CURRENT_USER() AS who;\n",
    );
    assert!(out.contains("ed@%"), "{out}\n{err}");
    // Statements are still decided inside TLS.
    database("mysql_e2e_tls");
    let (_, err) = cli_with(
        Some(&config),
        &format!("--ssl --ssl-ca={}", ca.display()),
        "agent",
        "pw",
        "mysql_e2e_tls",
        "DELETE FROM customers;\n",
    );
    assert!(
        err.contains("agentguard: SQL: DELETE without WHERE"),
        "{err}"
    );
    assert_eq!(root("SELECT COUNT(*) FROM mysql_e2e_tls.customers"), "2");
}

#[test]
fn change_user_is_decided_and_reauthenticated() {
    require_root();
    root(
        "CREATE USER IF NOT EXISTS other@'%' IDENTIFIED BY 'opw'; GRANT SELECT ON *.* TO other@'%';",
    );
    let config = config();
    // PyMySQL has no change_user: the script sends COM_CHANGE_USER and
    // answers the server's auth switch with mysql_native_password.
    let (out, err) = guarded_py(
        &config,
        r#"from pymysql import _auth
c = conn()
def change_user(user, password):
    attrs = b"\0" if c.client_flag & (1 << 20) else b""
    payload = user.encode() + b"\0\0\0" + struct.pack("<H", 45) + b"mysql_native_password\0" + attrs
    c._execute_command(COMMAND.COM_CHANGE_USER, payload)
    try:
        data = c._read_packet().get_all_data()
        if data[0] == 0xfe:
            salt = data[data.index(b"\0", 1) + 1:].rstrip(b"\0")
            c.write_packet(_auth.scramble_native_password(password.encode(), salt))
            c._read_packet()
        return "ok"
    except pymysql.err.MySQLError as e:
        return e.args
print("change", change_user("other", "opw"))
cur = c.cursor(); cur.execute("SELECT CURRENT_USER() AS cu"); print("now", cur.fetchone()[0])
print("wrong", change_user("agent", "bad"))"#,
    );
    assert!(out.contains("change ok"), "{out}\n{err}");
    assert!(out.contains("now other@%"), "{out}\n{err}");
    assert!(
        out.contains("wrong (1045, \"Access denied for user 'agent'@"),
        "the server's own error: {out}\n{err}"
    );
    let records = audit_records(&config);
    let change = records
        .iter()
        .find(|r| r["request"]["sql"] == "CHANGE USER other")
        .expect("the change_user decision");
    assert_eq!(change["action"], "allow", "{change}");
    assert_eq!(change["request"]["db_user"], "other", "{change}");
    let select = records
        .iter()
        .find(|r| {
            r["request"]["sql"]
                .as_str()
                .is_some_and(|s| s.contains("AS cu"))
        })
        .expect("the select's record");
    assert_eq!(select["request"]["db_user"], "other", "{select}");
}

const APP_SECRET: &str = "Maria-inj-5Hd8-s3cret";

/// A target whose logins the guard makes with the credential in `file`
/// as `role`; `extra`: more keys of the target.
fn credential_config(file: &std::path::Path, role: &str, extra: &str) -> TestConfig {
    config_with(&format!(
        "{extra}\n[[credentials]]\nname = \"shop-rw\"\ntarget = \"shop-db\"\nfile = \"{}\"\nrole = \"{role}\"\n",
        file.display()
    ))
}

#[test]
fn stored_credential_logs_in_for_the_agent() {
    require_root();
    root(&format!(
        "CREATE USER IF NOT EXISTS app_rw@'%' IDENTIFIED BY '{APP_SECRET}'; GRANT SELECT ON *.* TO app_rw@'%';"
    ));
    database("mysql_e2e_cred");
    let secrets = tempfile::tempdir().expect("tempdir");
    let file = secret_file(secrets.path(), "app", APP_SECRET);
    let config = credential_config(&file, "app_rw", "");
    // The CLI with a wrong password, PyMySQL with none: both are app_rw.
    let (o, e) = cli(
        Some(&config),
        "whoever",
        "wrong-guess",
        "mysql_e2e_cred",
        "SELECT CURRENT_USER() AS who, COUNT(*) FROM customers;",
    );
    assert_eq!(o, "who\tCOUNT(*)\napp_rw@%\t2\n", "{e}");
    let code = format!(
        "import pymysql\nc = pymysql.connect(host='127.0.0.1', port={}, user='agent', database='mysql_e2e_cred')\n\
         cur = c.cursor(); cur.execute('SELECT CURRENT_USER()'); print(cur.fetchone()[0])",
        maria().port
    );
    let out = exec(&config, &[PYTHON, "-c", &code]);
    assert_eq!(stdout(&out).trim(), "app_rw@%", "{}", stderr(&out));
    let mut logs = vec![e, stderr(&out)];
    // TLS towards the server: the guard's login goes over it.
    let tls = credential_config(&file, "app_rw", "tls = \"require\"");
    let (o, e) = cli(
        Some(&tls),
        "x",
        "y",
        "",
        "SELECT CURRENT_USER(), @@have_ssl;",
    );
    assert!(o.contains("app_rw@%"), "{o}\n{e}");
    logs.push(e);
    // Without the guard, the agent has nothing that logs in.
    let (_, e) = cli(None, "app_rw", "wrong-guess", "", "SELECT 1;");
    assert!(e.contains("ERROR 1045 (28000)"), "{e}");
    // COM_CHANGE_USER would switch to a login the guard did not make.
    let (o, e) = guarded_py(
        &config,
        r#"c = conn()
payload = b"root\0\0\0" + struct.pack("<H", 45) + b"mysql_native_password\0"
c._execute_command(COMMAND.COM_CHANGE_USER, payload)
try:
    c._read_packet()
except pymysql.err.MySQLError as e:
    print("refused", e.args[0], e.args[1])
cur = c.cursor(); cur.execute("SELECT CURRENT_USER()"); print(cur.fetchone()[0])"#,
    );
    assert!(
        o.contains("refused 1142 agentguard: COM_CHANGE_USER cannot switch users"),
        "{o}\n{e}"
    );
    assert!(
        o.trim_end().ends_with("app_rw@%"),
        "the session goes on: {o}"
    );
    logs.push(e);

    // The secret is in no state file and no log.
    let state = config.dir.path().join("state");
    for entry in std::fs::read_dir(&state).expect("state").flatten() {
        let raw = std::fs::read(entry.path()).unwrap_or_default();
        assert!(
            !raw.windows(APP_SECRET.len())
                .any(|w| w == APP_SECRET.as_bytes()),
            "the secret is in {}",
            entry.path().display()
        );
    }
    assert!(logs.iter().all(|l| !l.contains(APP_SECRET)));
}

#[test]
fn stored_credential_rejected_or_unanswerable_is_a_clean_error() {
    require_root();
    let secrets = tempfile::tempdir().expect("tempdir");
    let wrong = secret_file(secrets.path(), "wrong", "not-the-password");
    let config = credential_config(&wrong, "agent", "");
    let (_, e) = cli(Some(&config), "agent", "pw", "", "SELECT 1;");
    assert!(
        e.contains("ERROR 1045 (28000)")
            && e.contains("agentguard: credential `shop-rw`: the server refused the login as `agent`: Access denied"),
        "{e}"
    );
    assert_eq!(
        audited_denials(&config, "the server refused the login as `agent`").len(),
        1
    );
    // An ed25519 account: no stored password can answer it.
    let ed = secret_file(secrets.path(), "ed", "edpw");
    let config = credential_config(&ed, "ed", "");
    let (_, e) = cli(Some(&config), "ed", "edpw", "", "SELECT 1;");
    assert!(
        e.contains("auth plugin client_ed25519, which agentguard cannot answer"),
        "{e}"
    );
}
