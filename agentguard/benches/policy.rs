//! One decision with the shipped policies (`policies/`) per request kind.
//!
//! `cargo bench -p agentguard --bench policy` runs Criterion twice per kind:
//! `eval/KIND` is the evaluation itself on the calling thread (what one core
//! sustains), `decide/KIND` is the daemon's full path (input encoding, hand-off
//! to a policy worker under the watchdog, decision checks). Afterwards it
//! prints p50/p99 per kind from a plain sample, since Criterion reports means
//! and medians only.

use std::{
    hint::black_box,
    path::Path,
    time::{Duration, Instant},
};

use agentguard::{
    config::Protocol,
    decide::{Action, Decide as _, Input, Request, Target},
    identity::Identity,
    policy::{self, ENTRYPOINT, PolicyEngine},
};
use criterion::Criterion;
use regorus::Value;

const IDENTITY: &str = r#""identity": {"uid": 1000, "gid": 1000, "user": "agent", "pid": 4242, "comm": "python3",
    "exe": "/usr/bin/python3", "cmdline": ["python3", "agent.py"], "cgroup": "/agentguard/coder",
    "cgroup_id": 1234, "agent": "coder", "unit": null}"#;

fn kinds() -> Vec<(&'static str, String, Action)> {
    let doc = |target: &str, request: &str| {
        format!("{{{IDENTITY}, \"target\": {target}, \"request\": {request}}}")
    };
    let db = r#"{"ip": "10.0.0.5", "port": 5432, "name": "prod-db", "protocol": "postgres", "host": "db.internal", "labels": ["production"]}"#;
    let api = r#"{"ip": "10.0.0.6", "port": 443, "name": "billing-api", "protocol": "http", "host": "api.internal", "labels": ["production"]}"#;
    let k8s = r#"{"ip": "10.0.0.7", "port": 6443, "name": "prod-cluster", "protocol": "k8s", "host": "k8s.internal", "labels": ["production"]}"#;
    let llm = r#"{"ip": "10.0.0.8", "port": 443, "name": "openai", "protocol": "llm", "host": "api.openai.com", "labels": []}"#;
    vec![
        ("connect", doc(db, r#"{"kind": "connect"}"#), Action::Allow),
        (
            "sql",
            doc(
                db,
                r#"{"kind": "sql", "sql": "UPDATE users SET email = $1 WHERE id = $2", "database": "app", "db_user": "agent",
                    "statements": [{"operation": "update", "tables": ["users"], "has_where": true, "functions": []}]}"#,
            ),
            Action::Approve,
        ),
        (
            "http",
            doc(
                api,
                r#"{"kind": "http", "method": "GET", "host": "api.internal", "path": "/v1/invoices/42", "query": "expand=lines",
                    "headers": {"accept": "application/json"}}"#,
            ),
            Action::Allow,
        ),
        (
            "k8s",
            doc(
                k8s,
                r#"{"kind": "k8s", "verb": "list", "group": "", "resource": "secrets", "namespace": "payments", "name": null, "subresource": null}"#,
            ),
            Action::Deny,
        ),
        (
            "llm",
            doc(
                llm,
                r#"{"kind": "llm", "provider": "openai", "model": "gpt-4o", "method": "POST", "host": "api.openai.com",
                    "path": "/v1/chat/completions", "entities": [{"type": "email", "count": 1}, {"type": "phone", "count": 1}]}"#,
            ),
            Action::Allow,
        ),
    ]
}

fn connect_input() -> Input {
    Input {
        identity: Identity {
            uid: 1000,
            gid: 1000,
            user: Some("agent".into()),
            pid: 4242,
            comm: "python3".into(),
            exe: Some("/usr/bin/python3".into()),
            cmdline: vec!["python3".into(), "agent.py".into()],
            cgroup: Some("/agentguard/coder".into()),
            cgroup_id: 1234,
            agent: Some("coder".into()),
            unit: None,
        },
        target: Target {
            ip: "10.0.0.5".into(),
            port: 5432,
            name: Some("prod-db".into()),
            protocol: Protocol::Postgres,
            host: Some("db.internal".into()),
            labels: vec!["production".into()],
        },
        request: Request::Connect,
    }
}

fn policies() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn benches(c: &mut Criterion) {
    let bundle = policy::compile_dir(&policies()).expect("shipped policies compile");
    let engine = PolicyEngine::from_dir(&policies(), None);
    for (kind, json, expected) in kinds() {
        let input = Value::from_json_str(&json).expect("input");
        let d = engine.decide_value(input.clone());
        assert_eq!(d.action, expected, "{kind}: {}", d.reason);
        let mut local = bundle.engine.clone();
        c.bench_function(&format!("eval/{kind}"), |b| {
            b.iter(|| {
                local.set_input(input.clone());
                black_box(local.eval_rule(ENTRYPOINT.to_owned()).expect("eval"))
            })
        });
        c.bench_function(&format!("decide/{kind}"), |b| {
            b.iter(|| black_box(engine.decide_value(input.clone())))
        });
    }
    let typed = connect_input();
    c.bench_function("decide/connect-typed", |b| {
        b.iter(|| black_box(engine.decide(&typed)))
    });
}

/// p50 / p99 from single timed calls.
fn percentiles() {
    let bundle = policy::compile_dir(&policies()).expect("shipped policies compile");
    let engine = PolicyEngine::from_dir(&policies(), None);
    println!(
        "\n{:<10} {:>12} {:>12} {:>14}   {:>12} {:>12}",
        "kind", "eval p50", "eval p99", "eval/s (1 core)", "decide p50", "decide p99"
    );
    for (kind, json, _) in kinds() {
        let input = Value::from_json_str(&json).expect("input");
        let mut local = bundle.engine.clone();
        let n = 20_000;
        let mut eval = Vec::with_capacity(n);
        let mut decide = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            local.set_input(input.clone());
            black_box(local.eval_rule(ENTRYPOINT.to_owned()).expect("eval"));
            eval.push(t.elapsed());
            let t = Instant::now();
            black_box(engine.decide_value(input.clone()));
            decide.push(t.elapsed());
        }
        let per_sec = n as f64 / eval.iter().sum::<Duration>().as_secs_f64();
        eval.sort();
        decide.sort();
        let p = |v: &[Duration], q: usize| v[v.len() * q / 100];
        println!(
            "{kind:<10} {:>12.1?} {:>12.1?} {per_sec:>14.0}   {:>12.1?} {:>12.1?}",
            p(&eval, 50),
            p(&eval, 99),
            p(&decide, 50),
            p(&decide, 99)
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    percentiles();
}
