//! `agentguard policy check|test|eval` against the built binary. No root, no
//! eBPF: these only compile and evaluate Rego.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// Runs the binary with an empty config, so a host's /etc/agentguard does
/// not leak in.
fn agentguard(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let config = dir.join("agentguard.toml");
    std::fs::write(
        &config,
        format!("run_dir = \"{}\"\n", dir.join("run").display()),
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentguard"))
        .arg("--config")
        .arg(&config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run agentguard");
    let mut pipe = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(pipe);
    child.wait_with_output().expect("wait")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_prints_the_version() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = agentguard(
        tmp.path(),
        &["policy", "check", shipped().to_str().expect("utf-8")],
        None,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let version = stdout
        .strip_prefix("version: ")
        .expect("version line")
        .split_whitespace()
        .next()
        .expect("hex");
    assert_eq!(version.len(), 16, "{stdout}");
    assert!(version.chars().all(|c| c.is_ascii_hexdigit()), "{stdout}");
}

#[test]
fn check_refuses_a_broken_folder() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("p");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("x.rego"), "package agentguard\ndecision := {{{\n").expect("write");
    let out = agentguard(
        tmp.path(),
        &["policy", "check", dir.to_str().expect("utf-8")],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("does not compile"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn shipped_policies_pass_their_tests() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = agentguard(
        tmp.path(),
        &["policy", "test", shipped().to_str().expect("utf-8")],
        None,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let last = stdout.lines().last().expect("summary line");
    let passed: usize = last
        .strip_suffix(" passed, 0 failed")
        .expect("summary")
        .parse()
        .expect("count");
    assert!(passed >= 50, "{last}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("PASS ")).count(),
        passed
    );
}

#[test]
fn failing_test_exits_non_zero() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("p");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(
        dir.join("main.rego"),
        "package agentguard\nimport rego.v1\ndefault decision := {\"action\": \"deny\"}\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("main_test.rego"),
        "package agentguard.main_test\nimport rego.v1\ntest_allows if data.agentguard.decision.action == \"allow\"\n",
    )
    .expect("write");
    let out = agentguard(
        tmp.path(),
        &["policy", "test", dir.to_str().expect("utf-8")],
        None,
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL agentguard.main_test.test_allows"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().last(), Some("0 passed, 1 failed"));
}

#[test]
fn eval_prints_the_decision() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let input = tmp.path().join("input.json");
    std::fs::write(
        &input,
        r#"{"identity": {"uid": 1000, "agent": "coder"},
            "target": {"ip": "10.0.0.5", "port": 5432, "name": "prod-db", "protocol": "postgres", "labels": ["production"]},
            "request": {"kind": "sql", "sql": "DELETE FROM users",
                        "statements": [{"operation": "delete", "tables": ["users"], "has_where": false}]}}"#,
    )
    .expect("write");
    let policy = shipped();
    let args = [
        "policy",
        "eval",
        "--policy",
        policy.to_str().expect("utf-8"),
        "--input",
        input.to_str().expect("utf-8"),
    ];
    let out = agentguard(tmp.path(), &args, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let decision: serde_json::Value = serde_json::from_slice(&out.stdout).expect("decision JSON");
    assert_eq!(decision["action"], "deny");
    assert!(
        decision["reason"]
            .as_str()
            .expect("reason")
            .contains("DELETE without WHERE on users"),
        "{decision}"
    );
    assert_eq!(decision["policy_version"].as_str().map(str::len), Some(16));
}

#[test]
fn eval_reads_stdin_and_fails_closed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let policy = shipped();
    let args = [
        "policy",
        "eval",
        "--policy",
        policy.to_str().expect("utf-8"),
        "--input",
        "-",
    ];
    let out = agentguard(
        tmp.path(),
        &args,
        Some(
            r#"{"target": {"ip": "192.0.2.1", "port": 22, "name": null}, "request": {"kind": "connect"}}"#,
        ),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let decision: serde_json::Value = serde_json::from_slice(&out.stdout).expect("decision JSON");
    assert_eq!(decision["action"], "deny");
    assert!(
        decision["reason"]
            .as_str()
            .expect("reason")
            .contains("192.0.2.1:22 is not a configured target"),
        "{decision}"
    );
}

#[test]
fn reload_without_daemon_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = agentguard(tmp.path(), &["policy", "reload"], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no agentguard daemon is running"),
        "{}",
        text(&out.stderr)
    );
}

/// Each cause once, however the error was wrapped.
#[test]
fn a_missing_config_names_its_cause_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nothing-here.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_agentguard"))
        .arg("--config")
        .arg(&missing)
        .arg("status")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "the cause said once: {err}"
    );
}
