use std::{
    path::Path,
    time::{Duration, Instant},
};

use super::*;
use crate::decide::{Action, Input};

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(path, text).expect("write policy");
}

/// Budget of decisions in tests that are not about time: a debug build on
/// a loaded machine can take more than 50 ms for a real decision.
const SLACK: Duration = Duration::from_secs(2);
/// A hang guard, not a speed claim (those live in benches): the reasons the
/// tests check show which limit stopped an evaluation; this only catches an
/// evaluation that was never stopped, on however busy a machine.
const HANG: Duration = Duration::from_secs(20);

fn engine(dir: &Path) -> Arc<PolicyEngine> {
    PolicyEngine::with_budget(
        Origin::Dir(dir.to_owned()),
        Some(dir.join("state.json")),
        SLACK,
    )
}

/// An engine whose bundles run on the VM (`true`) or the interpreter.
fn engine_on(dir: &Path, vm: bool) -> Arc<PolicyEngine> {
    engine_with(dir, vm, SLACK)
}

fn engine_with(dir: &Path, vm: bool, budget: Duration) -> Arc<PolicyEngine> {
    PolicyEngine::with_options(
        Origin::Dir(dir.to_owned()),
        Some(dir.join("state.json")),
        budget,
        vm,
    )
}

/// The live bundle's evaluator, checked to be the one asked for.
fn live_path(e: &PolicyEngine) -> EvalPath {
    match &**e.live.load() {
        Live::Ready(b) => b.path(),
        Live::Missing(cause) => panic!("no bundle: {cause}"),
    }
}

const PATHS: [(bool, EvalPath); 2] = [(true, EvalPath::Vm), (false, EvalPath::Interpreter)];

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

/// Decides `doc` with `policy` on the VM and on the interpreter (checking
/// that each really ran where asked), timing each.
fn decide_on_both(
    policy: &str,
    doc: &str,
    budget: Duration,
) -> Vec<(EvalPath, Decision, Duration)> {
    PATHS
        .iter()
        .map(|&(vm, path)| {
            let dir = tempfile::tempdir().expect("tempdir");
            write(dir.path(), "p.rego", policy);
            let e = engine_with(dir.path(), vm, budget);
            assert_eq!(live_path(&e), path, "{:?}", e.state());
            let start = Instant::now();
            let d = e.decide_value(input(doc));
            (path, d, start.elapsed())
        })
        .collect()
}

#[test]
fn huge_range_denies_fast() {
    // In a rule body, so the VM must not treat the error as "body failed".
    let policy = "package agentguard\nimport rego.v1\n\
        deny contains \"big\" if count([x | some x in numbers.range(1, 100000000)]) > 0\n\
        decision := {\"action\": \"allow\"} if count(deny) == 0\n\
        decision := {\"action\": \"deny\"} if count(deny) > 0\n";
    for (path, d, took) in decide_on_both(policy, "{}", DEFAULT_BUDGET) {
        assert_eq!(d.action, Action::Deny, "{path:?}");
        assert!(
            d.reason.starts_with("agentguard: policy error: ")
                && d.reason.contains("limit of 100000"),
            "{path:?}: {}",
            d.reason
        );
        assert!(took < HANG, "{path:?} took {took:?}");
    }
}

#[test]
fn looping_policy_denies_within_budget_and_engine_keeps_serving() {
    let policy = "package agentguard\nimport rego.v1\n\
        n := count([x | some x in numbers.range(1, 100000); some y in numbers.range(1, 100000); x == y])\n\
        decision := {\"action\": \"allow\"} if { input.slow; n > 0 }\n\
        decision := {\"action\": \"allow\", \"reason\": \"fast\"} if not input.slow\n";
    for (vm, path) in PATHS {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "p.rego", policy);
        let e = engine_with(dir.path(), vm, DEFAULT_BUDGET);
        assert_eq!(live_path(&e), path);
        let start = Instant::now();
        let d = e.decide_value(input("{\"slow\": true}"));
        let took = start.elapsed();
        assert_eq!(d.action, Action::Deny, "{path:?}");
        // The VM's instruction limit usually stops it first.
        assert!(
            d.reason.contains("time limit") || d.reason.contains("instruction limit"),
            "{path:?}: {}",
            d.reason
        );
        assert!(took < HANG, "{path:?} took {took:?}");
        assert_eq!(
            e.decide_value(input("{}")).action,
            Action::Allow,
            "{path:?}"
        );
    }
}

#[test]
fn vm_time_limit_stops_slow_steps() {
    // Few instructions, each slow (a regex match): the VM's timer, not its
    // instruction limit, has to stop this one. Evaluated inline, without the
    // watchdog, which on a busy machine might otherwise answer first.
    let policy = "package agentguard\nimport rego.v1\n\
        s := concat(\"\", [\"a\" | some _ in numbers.range(1, 100)])\n\
        n := count([x | some x in numbers.range(1, 100000); regex.match(sprintf(\"a+%d\", [x]), s)])\n\
        decision := {\"action\": \"allow\"} if n >= 0\n";
    let files = vec![SourceFile {
        name: "p.rego".into(),
        text: policy.into(),
    }];
    let b = Bundle::compile_with(&files, DEFAULT_BUDGET, true).expect("compile");
    assert_eq!(b.path(), EvalPath::Vm);
    let start = Instant::now();
    let err = b.eval_inline(input("{}")).expect_err("over the budget");
    let took = start.elapsed();
    assert!(err.contains("time limit"), "{err}");
    assert!(took < HANG, "took {took:?}");
}

#[test]
fn vm_instruction_limit_applies() {
    let policy = "package agentguard\nimport rego.v1\n\
        n := count([1 | some x in numbers.range(1, 100000); some y in numbers.range(1, 100)])\n\
        decision := {\"action\": \"allow\"} if n > 0\n";
    let files = vec![SourceFile {
        name: "p.rego".into(),
        text: policy.into(),
    }];
    let mut b = Bundle::compile_with(&files, SLACK, true).expect("compile");
    assert_eq!(
        (b.path(), b.max_instructions),
        (EvalPath::Vm, MAX_INSTRUCTIONS)
    );
    // A smaller limit than the daemon's, so that a debug build on a busy
    // machine reaches it well within the (generous) time budget.
    b.max_instructions = 20_000;
    let start = Instant::now();
    let err = b.eval_inline(input("{}")).expect_err("over the limit");
    assert!(err.contains("instruction limit of 20000"), "{err}");
    assert!(start.elapsed() < SLACK, "took {:?}", start.elapsed());
}

#[test]
fn stuck_builtin_is_cut_off_by_the_watchdog() {
    // One builtin call that runs for a long time without a timer check.
    let policy = "package agentguard\nimport rego.v1\n\
        decision := {\"action\": \"allow\"} if { input.slow; count(sprintf(\"%0200000000d\", [1])) > 0 }\n\
        decision := {\"action\": \"allow\", \"reason\": \"fast\"} if not input.slow\n";
    for (vm, path) in PATHS {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "p.rego", policy);
        let e = engine_with(dir.path(), vm, DEFAULT_BUDGET);
        assert_eq!(live_path(&e), path);
        let start = Instant::now();
        let d = e.decide_value(input("{\"slow\": true}"));
        let took = start.elapsed();
        assert_eq!(d.action, Action::Deny, "{path:?}");
        assert!(d.reason.contains("watchdog"), "{path:?}: {}", d.reason);
        assert!(took < HANG, "{path:?} took {took:?}");
        // Other decisions are still served while the stuck worker finishes.
        let start = Instant::now();
        assert_eq!(
            e.decide_value(input("{}")).action,
            Action::Allow,
            "{path:?}"
        );
        assert!(start.elapsed() < HANG, "{path:?}");
    }
}

#[test]
fn errors_in_rule_bodies_deny_on_both_paths() {
    // regorus's VM, like OPA, would let an erroring body just fail: the
    // `deny` rule would be skipped and the request allowed. Both paths
    // must fail closed instead.
    let wrap = |rule: &str| {
        format!(
            "package agentguard\nimport rego.v1\n{rule}\n\
             decision := {{\"action\": \"allow\", \"reason\": \"ok\"}} if count(deny) == 0\n\
             decision := {{\"action\": \"deny\", \"reason\": concat(\",\", deny)}} if count(deny) > 0\n"
        )
    };
    for (rule, doc, cause) in [
        (
            "deny contains \"n\" if to_number(input.n) > 1",
            "{\"n\": \"abc\"}",
            "to_number",
        ),
        (
            "deny contains \"n\" if input.n + 1 > 1",
            "{\"n\": \"abc\"}",
            "plus",
        ),
        (
            "deny contains \"n\" if input.n * 2 > 1",
            "{\"n\": \"abc\"}",
            "mul",
        ),
        (
            "deny contains \"n\" if 1 / input.n > 0",
            "{\"n\": 0}",
            "div",
        ),
        (
            "deny contains \"n\" if 5 % input.n > 0",
            "{\"n\": 0}",
            "rem",
        ),
        (
            "deny contains \"n\" if regex.match(input.n, \"x\")",
            "{\"n\": \"(\"}",
            "regex.match",
        ),
        (
            "deny contains \"n\" if net.cidr_contains(\"10.0.0.0/8\", input.n)",
            "{\"n\": \"nope\"}",
            "net.cidr_contains",
        ),
    ] {
        for (path, d, _) in decide_on_both(&wrap(rule), doc, SLACK) {
            assert_eq!(d.action, Action::Deny, "{path:?} {rule}: {}", d.reason);
            assert!(
                d.reason.starts_with("agentguard: policy error: "),
                "{path:?} {rule}: {}",
                d.reason
            );
            if path == EvalPath::Vm {
                assert!(d.reason.contains(cause), "{rule}: {}", d.reason);
            }
        }
    }
    // And the same rules decide normally when nothing errors.
    for (rule, doc, action) in [
        (
            "deny contains \"n\" if input.n * 2 > 10",
            "{\"n\": 6}",
            Action::Deny,
        ),
        (
            "deny contains \"n\" if input.n * 2 > 10",
            "{\"n\": 1}",
            Action::Allow,
        ),
        (
            "deny contains \"n\" if count({1, 2} - {input.n}) == 1",
            "{\"n\": 1}",
            Action::Deny,
        ),
        (
            "deny contains \"n\" if 7 % input.n == 1",
            "{\"n\": 3}",
            Action::Deny,
        ),
        (
            "deny contains \"n\" if to_number(input.n) > 1",
            "{\"n\": \"0.5\"}",
            Action::Allow,
        ),
    ] {
        let results = decide_on_both(&wrap(rule), doc, SLACK);
        for (path, d, _) in &results {
            assert_eq!(d.action, action, "{path:?} {rule}: {}", d.reason);
        }
        assert_eq!(results[0].1.reason, results[1].1.reason, "{rule}");
    }
}

/// The shipped SQL rules read the text's shape, not the text: statements
/// that differ only in their values share one cached decision, and one
/// word more (a file function) is another key and a deny.
#[test]
fn shipped_sql_rules_share_a_decision_across_values() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let e = PolicyEngine::with_options(Origin::Dir(dir), None, SLACK, true);
    let reads = e.state().reads.unwrap_or_default();
    assert!(reads.contains("request.sql_shape"), "{reads}");
    assert!(
        !reads.split(", ").any(|r| r == "request.sql"),
        "the raw text is not read: {reads}"
    );
    let ask = |sql: &str| {
        let analysis = crate::pg::sql::analyze(sql);
        let mut input = sql_input(sql, "app");
        if let crate::decide::Request::Sql(r) = &mut input.request {
            r.sql_shape = analysis.shape;
            r.statements = analysis.statements;
        }
        e.decide(&input)
    };
    for aid in [541_592, 7, 99_999] {
        let d = ask(&format!(
            "SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"
        ));
        assert_eq!(d.action, Action::Allow, "{}", d.reason);
    }
    assert_eq!(e.cached_decisions(), 1, "three values, one shape");
    let d = ask("SELECT abalance FROM pgbench_accounts WHERE aid = 'x';");
    assert_eq!(d.action, Action::Allow, "{}", d.reason);
    assert_eq!(e.cached_decisions(), 2, "a string is another shape");
    let d = ask("SELECT pg_read_file('/etc/passwd')");
    assert_eq!(d.action, Action::Deny, "{}", d.reason);
    // A literal is data: the raw-text rule does not fire on it, and the
    // parser's list of functions is what catches a call.
    let d = ask("SELECT 'pg_read_file(' AS text");
    assert_eq!(d.action, Action::Allow, "{}", d.reason);
}

#[test]
fn shipped_policies_run_on_the_vm() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let files = bundle::read_dir(&dir).expect("read policies/");
    let b = Bundle::compile_with(&files, DEFAULT_BUDGET, true).expect("compile policies/");
    assert_eq!(b.path(), EvalPath::Vm, "{}", b.path_description());
    assert_eq!(b.reads.uncacheable, None);
    assert_eq!(b.inline(), Ok(()));
    // No state file: it would land in the repository's policies/ folder.
    let e = PolicyEngine::with_options(Origin::Dir(dir.clone()), None, SLACK, true);
    let state = e.state();
    assert_eq!(state.engine.as_deref(), Some("rvm (bytecode VM)"));
    assert_eq!(state.connect_cache.as_deref(), Some("on"));
}

/// Every sample input (the bench's included) on both evaluators: the same
/// decision document, and the expected action.
#[test]
fn vm_and_interpreter_agree_on_shipped_policies() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let files = bundle::read_dir(&dir).expect("read policies/");
    let vm = Bundle::compile_with(&files, SLACK, true).expect("compile");
    let interp = Bundle::compile_with(&files, SLACK, false).expect("compile");
    assert_eq!(
        (vm.path(), interp.path()),
        (EvalPath::Vm, EvalPath::Interpreter)
    );
    let mut on_vm = vm.evaluator().expect("vm");
    let mut on_interp = interp.evaluator().expect("interpreter");
    let samples = samples::samples();
    assert!(samples.iter().filter(|s| s.bench).count() >= 5);
    for sample in samples {
        let a = on_vm.eval(sample.input.clone());
        let b = on_interp.eval(sample.input.clone());
        assert_eq!(a, b, "{}: VM and interpreter differ", sample.name);
        let verdict = parse_decision(&a.expect("decision")).expect("well-formed");
        assert_eq!(
            verdict.action, sample.expect,
            "{}: {}",
            sample.name, verdict.reason
        );
        // Twice on the same VM: no state leaks from one run to the next.
        assert_eq!(
            on_vm.eval(sample.input.clone()),
            b,
            "{} (again)",
            sample.name
        );
    }
}

#[test]
fn typed_input_converts_like_json() {
    use crate::{
        config::Protocol,
        decide::{Request, Target},
        identity::Identity,
    };
    let typed = Input {
        identity: Identity {
            uid: 1000,
            gid: 7,
            user: Some("agent".into()),
            pid: 42,
            comm: "python3".into(),
            exe: None,
            cmdline: vec!["python3".into(), "ä \"q\"".into()],
            cgroup: Some("/x".into()),
            cgroup_id: u64::MAX,
            agent: None,
            unit: None,
        },
        target: Target {
            ip: "10.0.0.5".into(),
            port: 5432,
            name: Some("db".into()),
            protocol: Protocol::Postgres,
            host: None,
            labels: vec!["production".into()],
        },
        request: Request::Connect,
    };
    let json = Value::from(serde_json::to_value(&typed).expect("json"));
    assert_eq!(to_value(&typed).expect("value"), json);

    #[derive(serde::Serialize)]
    enum E {
        Unit,
        New(u8),
        Tuple(i8, bool),
        Struct { f: f64 },
    }
    #[derive(serde::Serialize)]
    struct All {
        map: std::collections::BTreeMap<u32, Option<String>>,
        es: Vec<E>,
        t: (char, f32),
        nan: f64,
        bytes: serde_bytes_like::Bytes,
        unit: (),
        big: i128,
    }
    mod serde_bytes_like {
        pub struct Bytes(pub Vec<u8>);
        impl serde::Serialize for Bytes {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }
    }
    let all = All {
        map: [(1, Some("a".into())), (2, None)].into_iter().collect(),
        es: vec![E::Unit, E::New(3), E::Tuple(-1, true), E::Struct { f: 1.5 }],
        t: ('x', 0.25),
        nan: f64::NAN,
        bytes: serde_bytes_like::Bytes(vec![1, 2]),
        unit: (),
        big: -5,
    };
    let json = Value::from(serde_json::to_value(&all).expect("json"));
    assert_eq!(to_value(&all).expect("value"), json);
}

fn connect_input(agent: &str, pid: u32) -> Input {
    use crate::{config::Protocol, decide::Target, identity::Identity};
    Input {
        identity: Identity {
            uid: 1000,
            gid: 1000,
            user: None,
            pid,
            comm: "curl".into(),
            exe: Some("/usr/bin/curl".into()),
            cmdline: vec!["curl".into()],
            cgroup: None,
            cgroup_id: 99,
            agent: Some(agent.into()),
            unit: None,
        },
        target: Target {
            ip: "10.0.0.5".into(),
            port: 5432,
            name: Some("db".into()),
            protocol: Protocol::Postgres,
            host: None,
            labels: vec![],
        },
        request: crate::decide::Request::Connect,
    }
}

const BY_AGENT: &str = "package agentguard\nimport rego.v1\n\
    decision := {\"action\": \"allow\", \"reason\": \"coder\"} if input.identity.agent == \"coder\"\n\
    decision := {\"action\": \"deny\", \"reason\": \"not coder\"} if input.identity.agent != \"coder\"\n";

#[test]
fn connect_decisions_are_cached_per_key_and_reload_clears_them() {
    for (vm, path) in PATHS {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "p.rego", BY_AGENT);
        let e = engine_on(dir.path(), vm);
        assert_eq!(live_path(&e), path);
        assert_eq!(e.state().connect_cache.as_deref(), Some("on"));
        let first = e.decide(&connect_input("coder", 1));
        assert_eq!((first.action, e.cached_decisions()), (Action::Allow, 1));
        // Another pid: same key, served from the cache.
        let again = e.decide(&connect_input("coder", 2));
        assert_eq!(
            (again.action, again.reason.as_str()),
            (Action::Allow, "coder")
        );
        assert_eq!(e.cached_decisions(), 1);
        // Another agent: another key, evaluated.
        assert_eq!(e.decide(&connect_input("intruder", 1)).action, Action::Deny);
        assert_eq!(e.cached_decisions(), 2);
        // A new bundle: the cache is emptied and nothing old is replayed.
        write(dir.path(), "p.rego", DENY);
        assert!(matches!(e.reload(), Ok(ReloadOutcome::Loaded(_))));
        assert_eq!(e.cached_decisions(), 0);
        let after = e.decide(&connect_input("coder", 1));
        assert_eq!(after.action, Action::Deny, "{path:?}");
        assert_eq!(after.policy_version, e.version().expect("loaded"));
    }
}

#[test]
fn cache_is_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Reads the port and the uid: every input below has its own key.
    write(
        dir.path(),
        "p.rego",
        "package agentguard\nimport rego.v1\ndecision := {\"action\": \"allow\"} if input.target.port + input.identity.uid >= 0\n",
    );
    let e = engine(dir.path());
    for i in 0..(DECISION_CACHE_CAPACITY + 500) {
        let mut input = connect_input("coder", 1);
        input.target.port = (i % 60_000) as u16;
        input.identity.uid = (i / 60_000) as u32;
        e.decide(&input);
        assert!(e.cached_decisions() <= DECISION_CACHE_CAPACITY);
    }
    assert!(e.cached_decisions() > DECISION_CACHE_CAPACITY / 4);
}

#[test]
fn only_connect_decisions_are_cached() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "p.rego", ALLOW);
    let e = engine(dir.path());
    // Protocol requests come as values (or typed, non-connect): not cached.
    e.decide_value(input("{\"request\": {\"kind\": \"sql\"}}"));
    assert_eq!(e.cached_decisions(), 0);
    e.decide(&connect_input("coder", 1));
    assert_eq!(e.cached_decisions(), 1);
}

#[test]
fn policy_errors_and_timeouts_are_not_cached() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "p.rego",
        "package agentguard\nimport rego.v1\ndecision := {\"action\": \"allow\"} if input.identity.agent == \"x\"\n",
    );
    let e = engine(dir.path());
    let d = e.decide(&connect_input("coder", 1));
    assert_eq!(d.action, Action::Deny);
    assert!(d.reason.contains("undefined"), "{}", d.reason);
    assert_eq!(e.cached_decisions(), 0);
}

#[test]
fn fields_the_bundle_reads_are_in_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "p.rego",
        "package agentguard\nimport rego.v1\ndecision := {\"action\": \"allow\", \"reason\": sprintf(\"%d\", [input.identity.pid])}\n",
    );
    let e = engine(dir.path());
    assert_eq!(e.state().reads.as_deref(), Some("identity.pid"));
    // pid is read, so two pids are two keys, each with its own answer.
    assert_eq!(e.decide(&connect_input("coder", 1)).reason, "1");
    assert_eq!(e.decide(&connect_input("coder", 2)).reason, "2");
    assert_eq!(e.decide(&connect_input("other", 1)).reason, "1");
    assert_eq!(e.cached_decisions(), 2);
}

#[test]
fn impure_bundles_are_not_cached() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "p.rego",
        "package agentguard\nimport rego.v1\ndecision := {\"action\": \"allow\"} if time.now_ns() > 1\n",
    );
    let e = engine(dir.path());
    assert!(
        e.state()
            .connect_cache
            .as_deref()
            .is_some_and(|s| s.starts_with("off (p.rego: calls time.now_ns")),
        "{:?}",
        e.state()
    );
    e.decide(&connect_input("coder", 2));
    assert_eq!(e.cached_decisions(), 0);
}

fn sql_input(sql: &str, database: &str) -> Input {
    Input {
        request: crate::decide::Request::Sql(crate::pg::SqlRequest {
            sql: sql.into(),
            sql_shape: sql.to_lowercase(),
            statements: Vec::new(),
            parse_error: None,
            database: Some(database.into()),
            db_user: None,
            application_name: None,
            protocol: "simple",
            credential: None,
        }),
        ..connect_input("coder", 1)
    }
}

/// The cache rule: requests that differ in a field the live bundle reads
/// never get each other's decision, also after a reload that starts reading
/// a new field.
#[test]
fn cache_never_serves_a_decision_across_a_read_field() {
    let v1 = "package agentguard\nimport rego.v1\n\
        default decision := {\"action\": \"allow\", \"reason\": \"v1\"}\n\
        decision := {\"action\": \"deny\", \"reason\": \"drop\"} if contains(input.request.sql, \"drop\")\n";
    let v2 = "package agentguard\nimport rego.v1\n\
        default decision := {\"action\": \"allow\", \"reason\": \"v2\"}\n\
        decision := {\"action\": \"deny\", \"reason\": \"drop\"} if contains(input.request.sql, \"drop\")\n\
        decision := {\"action\": \"deny\", \"reason\": \"prod\"} if { not contains(input.request.sql, \"drop\"); input.request.database == \"prod\" }\n";
    for (vm, path) in PATHS {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "p.rego", v1);
        let e = engine_on(dir.path(), vm);
        assert_eq!(live_path(&e), path);
        assert_eq!(e.state().reads.as_deref(), Some("request.sql"));
        let answer = |sql: &str, db: &str| {
            let d = e.decide(&sql_input(sql, db));
            (d.action, d.reason)
        };
        let allow = |r: &str| (Action::Allow, r.to_owned());
        let deny = |r: &str| (Action::Deny, r.to_owned());
        // v1 does not read the database: one key for both.
        assert_eq!(answer("select 1", "dev"), allow("v1"), "{path:?}");
        assert_eq!(answer("select 1", "prod"), allow("v1"), "{path:?}");
        assert_eq!(e.cached_decisions(), 1);
        // The text is read: another text is another key.
        assert_eq!(answer("drop table t", "dev"), deny("drop"), "{path:?}");
        assert_eq!(answer("select 1", "dev"), allow("v1"), "{path:?}");
        assert_eq!(e.cached_decisions(), 2);
        // v2 reads the database too.
        write(dir.path(), "p.rego", v2);
        assert!(matches!(e.reload(), Ok(ReloadOutcome::Loaded(_))));
        assert_eq!(e.cached_decisions(), 0);
        assert_eq!(
            e.state().reads.as_deref(),
            Some("request.database, request.sql")
        );
        for _ in 0..2 {
            assert_eq!(answer("select 1", "dev"), allow("v2"), "{path:?}");
            assert_eq!(answer("select 1", "prod"), deny("prod"), "{path:?}");
            assert_eq!(answer("drop table t", "prod"), deny("drop"), "{path:?}");
        }
        assert_eq!(e.cached_decisions(), 3);
    }
}

#[test]
fn interpreter_fallback_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "p.rego", ALLOW);
    let e = engine_on(dir.path(), false);
    let state = read_state_file(&dir.path().join("state.json"));
    assert!(
        state
            .engine
            .as_deref()
            .is_some_and(|s| s.starts_with("interpreter (")),
        "{state:?}"
    );
    assert_eq!(e.decide_value(input("{}")).action, Action::Allow);
    fs::copy(dir.path().join("state.json"), dir.path().join(STATE_FILE)).expect("copy");
    let lines = status_lines(dir.path(), true);
    assert!(
        lines.last().is_some_and(|l| l
            .starts_with("policy:    evaluated by interpreter (VM turned off")
            && l.ends_with("decision cache on (key: bundle, nothing from input)")),
        "{lines:?}"
    );
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
        engine: Some("rvm (bytecode VM)".into()),
        connect_cache: Some("on".into()),
        reads: None,
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
    assert_eq!(
        lines[2],
        "policy:    evaluated by rvm (bytecode VM); decision cache on"
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

#[test]
fn conflicting_values_deny_on_both_paths() {
    let wrap = |rule: &str| {
        format!(
            "package agentguard\nimport rego.v1\n{rule}\n\
             decision := {{\"action\": \"allow\", \"reason\": \"ok\"}} if count(deny) == 0\n\
             decision := {{\"action\": \"deny\", \"reason\": concat(\",\", deny)}} if count(deny) > 0\n"
        )
    };
    for (rule, doc) in [
        (
            "level := \"a\" if input.a\nlevel := \"b\" if input.b\ndeny contains \"x\" if level == \"a\"",
            "{\"a\": true, \"b\": true}",
        ),
        (
            "f(x) := 1 if x > 0\nf(x) := 2 if x > 1\ndeny contains \"y\" if f(input.n) == 1",
            "{\"n\": 5}",
        ),
        (
            "v := x if { some x in input.xs }\ndeny contains \"z\" if v == 1",
            "{\"xs\": [1, 2]}",
        ),
        (
            "o[k] := v if { some [k, v] in input.kv }\ndeny contains \"w\" if o.a == 1",
            "{\"kv\": [[\"a\", 1], [\"a\", 2]]}",
        ),
        (
            "o := {k: v | some [k, v] in input.kv}\ndeny contains \"w\" if o.a == 1",
            "{\"kv\": [[\"a\", 1], [\"a\", 2]]}",
        ),
    ] {
        // Such bundles are not run on the VM (it would make the conflicting
        // rule undefined, and allow): both engines are the interpreter.
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "p.rego", &wrap(rule));
        let e = engine_on(dir.path(), true);
        assert_eq!(live_path(&e), EvalPath::Interpreter, "{rule}");
        assert!(
            e.state()
                .engine
                .as_deref()
                .is_some_and(|s| s.contains("the VM would treat such a conflict as undefined")),
            "{rule}: {:?}",
            e.state().engine
        );
        let d = e.decide_value(input(doc));
        assert_eq!(d.action, Action::Deny, "{rule}: {}", d.reason);
        assert!(
            d.reason.starts_with("agentguard: policy error: "),
            "{rule}: {}",
            d.reason
        );
    }
    // Shapes that cannot conflict stay on the VM.
    for rule in [
        "deny contains \"x\" if { some x in input.xs; x > 1 }",
        "ok if { some x in input.xs; x > 1 }\ndeny contains \"x\" if ok",
        "f(x) if x > 1\nf(x) if x < 0\ndeny contains \"x\" if f(input.n)",
        "s := {x | some x in input.xs}\ndeny contains \"x\" if count(s) > 5",
        "v := lower(input.s) if is_string(input.s) else := \"\"\ndeny contains v if v == \"x\"",
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "p.rego", &wrap(rule));
        let e = engine_on(dir.path(), true);
        assert_eq!(
            live_path(&e),
            EvalPath::Vm,
            "{rule}: {:?}",
            e.state().engine
        );
    }
}

#[test]
fn prepared_inputs_are_the_same_document() {
    // The reason shows the whole input: both encodings must give it alike.
    let policy = "package agentguard\nimport rego.v1\n\
        decision := {\"action\": \"allow\", \"reason\": json.marshal(input)}\n";
    let reason = |prepared: Option<&crate::decide::Prepared>, input: &Input| {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "p.rego", policy);
        let e = engine(dir.path());
        let d = match prepared {
            Some(p) => e.decide_prepared(input, p),
            None => e.decide(input),
        };
        assert_eq!(d.action, Action::Allow, "{}", d.reason);
        d.reason
    };
    let prepared = crate::decide::Prepared::default();
    // One connection: the same identity and target, two requests.
    for input in [connect_input("coder", 1), sql_input("select 1", "dev")] {
        assert_eq!(reason(Some(&prepared), &input), reason(None, &input));
    }
}

#[test]
fn a_cache_that_never_hits_is_only_sampled() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "p.rego",
        "package agentguard\nimport rego.v1\ndecision := {\"action\": \"allow\"} if contains(input.request.sql, \"s\")\n",
    );
    let e = engine(dir.path());
    // Every text its own: past the warm-up only one in 64 is stored.
    for i in 0..8192 {
        e.decide(&sql_input(&format!("select {i}"), "dev"));
    }
    let puts = e.cache_puts();
    assert!((4096..=4096 + 4096 / 64 + 1).contains(&puts), "{puts}");
    // Answers never depend on it.
    assert_eq!(e.decide(&sql_input("no", "dev")).action, Action::Deny);
    assert_eq!(
        e.decide(&sql_input("select 1", "dev")).action,
        Action::Allow
    );
}
