use std::{
    path::Path,
    time::{Duration, Instant},
};

use super::*;
use crate::decide::Action;

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(path, text).expect("write policy");
}

fn engine(dir: &Path) -> Arc<PolicyEngine> {
    PolicyEngine::with_budget(
        Origin::Dir(dir.to_owned()),
        Some(dir.join("state.json")),
        DEFAULT_BUDGET,
    )
}

fn input(json: &str) -> Value {
    Value::from_json_str(json).expect("json")
}

const ALLOW: &str = "package agentguard\nimport rego.v1\ndecision := {\"action\": \"allow\", \"reason\": \"ok\", \"mask\": [\"email\"]}\n";
const DENY: &str =
    "package agentguard\nimport rego.v1\ndecision := {\"action\": \"deny\", \"reason\": \"no\"}\n";

fn decide_with(policy: &str, doc: &str) -> Decision {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "p.rego", policy);
    engine(dir.path()).decide_value(input(doc))
}

#[test]
fn allow_carries_reason_mask_and_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "p.rego", ALLOW);
    let e = engine(dir.path());
    let d = e.decide_value(input("{}"));
    assert_eq!(d.action, Action::Allow);
    assert_eq!(d.reason, "ok");
    assert_eq!(d.mask, vec!["email".to_owned()]);
    assert_eq!(Some(d.policy_version), e.version());
}

#[test]
fn compile_error_denies_with_cause() {
    let d = decide_with(
        "package agentguard\ndecision := {\"action\": \"allow\"} if {\n",
        "{}",
    );
    assert_eq!(d.action, Action::Deny);
    assert!(
        d.reason
            .starts_with("agentguard: no valid policy loaded: policy does not compile"),
        "{}",
        d.reason
    );
    assert!(
        d.reason.contains("p.rego"),
        "the cause names the file: {}",
        d.reason
    );
}

#[test]
fn unsafe_variable_denies() {
    // regorus reports this one at evaluation, not at load: still a deny.
    let d = decide_with(
        "package agentguard\nimport rego.v1\ndecision := {\"action\": x}\n",
        "{}",
    );
    assert_eq!(d.action, Action::Deny);
    assert!(d.reason.contains("var x is unsafe"), "{}", d.reason);
}

#[test]
fn missing_folder_denies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = engine(&dir.path().join("nope")).decide_value(input("{}"));
    assert_eq!(d.action, Action::Deny);
    assert!(
        d.reason.contains("no valid policy loaded: cannot read"),
        "{}",
        d.reason
    );
}

#[test]
fn missing_entrypoint_denies() {
    let d = decide_with("package other\nimport rego.v1\nx := 1\n", "{}");
    assert!(
        d.reason
            .contains("no rule `decision` in package agentguard"),
        "{}",
        d.reason
    );
}

#[test]
fn undefined_decision_denies() {
    let policy =
        "package agentguard\nimport rego.v1\ndecision := {\"action\": \"allow\"} if input.x == 1\n";
    let d = decide_with(policy, "{}");
    assert_eq!(d.action, Action::Deny);
    assert!(d.reason.contains("undefined"), "{}", d.reason);
    assert!(
        !d.policy_version.is_empty(),
        "a loaded bundle still stamps its version"
    );
}

#[test]
fn malformed_decisions_deny() {
    for (decision, cause) in [
        ("{\"action\": \"yes\"}", "unknown action"),
        ("{\"action\": 1}", "action is not a string"),
        ("{\"reason\": \"x\"}", "no action"),
        ("\"allow\"", "not an object"),
        (
            "{\"action\": \"allow\", \"mask\": \"email\"}",
            "mask is not an array",
        ),
        (
            "{\"action\": \"allow\", \"mask\": [1]}",
            "mask entry is not a string",
        ),
        (
            "{\"action\": \"allow\", \"reason\": 3}",
            "reason is not a string",
        ),
    ] {
        let d = decide_with(
            &format!("package agentguard\nimport rego.v1\ndecision := {decision}\n"),
            "{}",
        );
        assert_eq!(d.action, Action::Deny, "{decision}");
        assert!(d.reason.contains(cause), "{decision}: {}", d.reason);
    }
}

#[test]
fn evaluation_error_denies() {
    // Conflicting values of a complete rule are an evaluation error.
    let policy = "package agentguard\nimport rego.v1\ndecision := {\"action\": \"allow\"} if input.a\ndecision := {\"action\": \"deny\"} if input.b\n";
    let d = decide_with(policy, "{\"a\": true, \"b\": true}");
    assert_eq!(d.action, Action::Deny);
    assert!(
        d.reason.starts_with("agentguard: policy error:"),
        "{}",
        d.reason
    );
}

#[test]
fn huge_range_denies_fast() {
    let policy = "package agentguard\nimport rego.v1\nn := count([x | some x in numbers.range(1, 100000000)])\ndecision := {\"action\": \"allow\"} if n > 0\n";
    let start = Instant::now();
    let d = decide_with(policy, "{}");
    assert_eq!(d.action, Action::Deny);
    assert!(d.reason.contains("limit"), "{}", d.reason);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn looping_policy_denies_within_budget_and_engine_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = "package agentguard\nimport rego.v1\n\
        n := count([x | some x in numbers.range(1, 100000); some y in numbers.range(1, 100000); x == y])\n\
        decision := {\"action\": \"allow\"} if { input.slow; n > 0 }\n\
        decision := {\"action\": \"allow\", \"reason\": \"fast\"} if not input.slow\n";
    write(dir.path(), "p.rego", policy);
    let e = engine(dir.path());
    let start = Instant::now();
    let d = e.decide_value(input("{\"slow\": true}"));
    let took = start.elapsed();
    assert_eq!(d.action, Action::Deny);
    assert!(d.reason.contains("time limit"), "{}", d.reason);
    assert!(
        took < DEFAULT_BUDGET + Duration::from_millis(200),
        "took {took:?}"
    );
    assert_eq!(e.decide_value(input("{}")).action, Action::Allow);
}

#[test]
fn stuck_builtin_is_cut_off_by_the_watchdog() {
    let dir = tempfile::tempdir().expect("tempdir");
    // One builtin call that runs for a long time without a timer check.
    let policy = "package agentguard\nimport rego.v1\n\
        decision := {\"action\": \"allow\"} if { input.slow; count(sprintf(\"%0200000000d\", [1])) > 0 }\n\
        decision := {\"action\": \"allow\", \"reason\": \"fast\"} if not input.slow\n";
    write(dir.path(), "p.rego", policy);
    let e = engine(dir.path());
    let start = Instant::now();
    let d = e.decide_value(input("{\"slow\": true}"));
    let took = start.elapsed();
    assert_eq!(d.action, Action::Deny);
    assert!(d.reason.contains("watchdog"), "{}", d.reason);
    assert!(took < Duration::from_millis(500), "took {took:?}");
    // Other decisions are still served while the stuck worker finishes.
    let start = Instant::now();
    assert_eq!(e.decide_value(input("{}")).action, Action::Allow);
    assert!(start.elapsed() < Duration::from_millis(500));
}

#[test]
fn broken_edit_keeps_last_good_bundle() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "p.rego", ALLOW);
    let e = engine(dir.path());
    let v1 = e.version().expect("loaded");
    write(
        dir.path(),
        "p.rego",
        "package agentguard\ndecision := {{{\n",
    );
    let err = e.reload().expect_err("broken bundle must be refused");
    assert!(matches!(err, PolicyError::Compile(_)), "{err}");
    let d = e.decide_value(input("{}"));
    assert_eq!(d.action, Action::Allow);
    assert_eq!(d.policy_version, v1);
    let state = read_state_file(&dir.path().join("state.json"));
    assert_eq!(state.version.as_deref(), Some(v1.as_str()));
    assert!(
        state
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("does not compile")),
        "{state:?}"
    );
    write(dir.path(), "p.rego", DENY);
    assert!(matches!(e.reload(), Ok(ReloadOutcome::Loaded(_))));
    let d = e.decide_value(input("{}"));
    assert_eq!(d.action, Action::Deny);
    assert_ne!(d.policy_version, v1);
    assert_eq!(
        read_state_file(&dir.path().join("state.json")).last_error,
        None
    );
}

fn read_state_file(path: &Path) -> PolicyState {
    serde_json::from_slice(&fs::read(path).expect("state file")).expect("state json")
}

#[test]
fn failing_policy_test_blocks_the_bundle() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "p.rego", ALLOW);
    let e = engine(dir.path());
    let v1 = e.version().expect("loaded");
    write(dir.path(), "p.rego", DENY);
    write(
        dir.path(),
        "p_test.rego",
        "package agentguard.p_test\nimport rego.v1\ntest_allows if data.agentguard.decision.action == \"allow\"\ntest_ok if true\n",
    );
    match e.reload() {
        Err(PolicyError::TestsFailed {
            failed: 1,
            total: 2,
            names,
        }) => {
            assert_eq!(names, "agentguard.p_test.test_allows")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(e.version(), Some(v1));
}

#[test]
fn reload_of_same_content_is_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "p.rego", ALLOW);
    let e = engine(dir.path());
    assert!(matches!(e.reload(), Ok(ReloadOutcome::Unchanged(_))));
    assert_eq!(e.state().attempts, 2);
}

#[test]
fn version_follows_content_not_order() {
    let f = |name: &str, text: &str| SourceFile {
        name: name.into(),
        text: text.into(),
    };
    let a = bundle::version_of(&[f("a.rego", "x"), f("b.rego", "y")]);
    assert_eq!(a, bundle::version_of(&[f("a.rego", "x"), f("b.rego", "y")]));
    assert_ne!(a, bundle::version_of(&[f("a.rego", "x"), f("b.rego", "z")]));
    assert_ne!(
        a,
        bundle::version_of(&[f("a.rego", "xy"), f("b.rego", "")]),
        "boundaries count"
    );
    assert_eq!(a.len(), 16);
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "b.rego", "y");
    write(dir.path(), "a.rego", "x");
    write(dir.path(), ".a.rego.swp", "junk");
    write(dir.path(), "README.md", "not policy");
    let files = bundle::read_dir(dir.path()).expect("read");
    assert_eq!(
        files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        ["a.rego", "b.rego"]
    );
    assert_eq!(bundle::version_of(&files), a);
}

#[test]
fn data_files_are_nested_by_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "p.rego",
        "package agentguard\nimport rego.v1\ndecision := {\"action\": data.settings.action, \"reason\": data.extra.more.note}\n",
    );
    write(
        dir.path(),
        "data.json",
        "{\"settings\": {\"action\": \"approve\"}}",
    );
    write(dir.path(), "extra/more/data.yaml", "note: from yaml\n");
    let d = engine(dir.path()).decide_value(input("{}"));
    assert_eq!(d.action, Action::Approve, "{}", d.reason);
    assert_eq!(d.reason, "from yaml");
}

#[test]
fn bad_data_file_is_refused() {
    let d = {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "p.rego", ALLOW);
        write(dir.path(), "data.json", "[1, 2]");
        engine(dir.path()).decide_value(input("{}"))
    };
    assert!(
        d.reason.contains("invalid data file data.json"),
        "{}",
        d.reason
    );
}

#[test]
fn tests_are_discovered_per_package() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "p.rego", ALLOW);
    write(
        dir.path(),
        "a_test.rego",
        "package a_test\nimport rego.v1\ntest_one if true\ntest_one if false\ntest_two if false\ntest_fn(x) if x\nhelper if true\n",
    );
    let files = bundle::read_dir(dir.path()).expect("read");
    let b = Bundle::compile(&files, DEFAULT_BUDGET).expect("compile");
    let results = b.run_tests(TEST_BUDGET);
    let summary: Vec<(String, bool)> = results.into_iter().map(|r| (r.name, r.passed)).collect();
    assert_eq!(
        summary,
        vec![
            ("a_test.test_one".into(), true),
            ("a_test.test_two".into(), false)
        ]
    );
}

#[test]
fn shipped_policies_compile_and_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let files = bundle::read_dir(&dir).expect("read policies/");
    let b = Bundle::compile(&files, DEFAULT_BUDGET).expect("compile policies/");
    let results = b.run_tests(TEST_BUDGET);
    assert!(results.len() >= 50, "{} tests", results.len());
    let failed: Vec<_> = results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| &r.name)
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
}

#[test]
fn status_lines_show_failure_and_live_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = PolicyState {
        source: "/p".into(),
        version: Some("abc".into()),
        files: vec!["a.rego".into()],
        tests: 3,
        loaded_at: Some(0),
        attempts: 2,
        last_attempt_at: Some(86_400 + 3661),
        last_error: Some("policy does not compile: x".into()),
    };
    write_state(&dir.path().join(STATE_FILE), &state).expect("write");
    let lines = status_lines(dir.path(), true);
    assert_eq!(
        lines[0],
        "policy:    version abc (1 files, 3 tests) from /p, loaded 1970-01-01T00:00:00Z"
    );
    assert_eq!(
        lines[1],
        "policy:    last reload FAILED at 1970-01-02T01:01:01Z (version abc stays live): policy does not compile: x"
    );
    assert_eq!(format_time(1_700_000_000), "2023-11-14T22:13:20Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_change_reloads_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "p.rego", ALLOW);
    let e = engine(dir.path());
    let _reloader = Reloader::spawn(Arc::clone(&e), false);
    let v1 = e.version().expect("loaded");
    write(dir.path(), "p.rego", DENY);
    let deadline = Instant::now() + Duration::from_secs(2);
    while e.version().as_deref() == Some(v1.as_str()) {
        assert!(Instant::now() < deadline, "no reload within 2 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(e.decide_value(input("{}")).action, Action::Deny);
    // A broken edit is noticed, refused and reported; the last good stays.
    let v2 = e.version().expect("loaded");
    write(
        dir.path(),
        "p.rego",
        "package agentguard\ndecision := {{{\n",
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while e.state().last_error.is_none() {
        assert!(
            Instant::now() < deadline,
            "broken edit not reported within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(e.version(), Some(v2));
}
