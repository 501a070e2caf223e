//! Sample inputs for the shipped policies (`cases.json`): the bench
//! evaluates the ones marked `bench`, and the tests evaluate all of them on
//! both evaluators (VM and interpreter) and check the expected action.

use regorus::Value;

use crate::decide::Action;

const CASES: &str = include_str!("cases.json");

/// The identity every sample input carries.
const IDENTITY: &str = r#"{"uid": 1000, "gid": 1000, "user": "agent", "pid": 4242, "comm": "python3",
    "exe": "/usr/bin/python3", "cmdline": ["python3", "agent.py"], "cgroup": "/agentguard/coder",
    "cgroup_id": 1234, "agent": "coder", "unit": null}"#;

fn target(name: &str) -> &'static str {
    match name {
        "db" => {
            r#"{"ip": "10.0.0.5", "port": 5432, "name": "prod-db", "protocol": "postgres", "host": "db.internal", "labels": ["production"]}"#
        }
        "staging-db" => {
            r#"{"ip": "10.0.0.15", "port": 5432, "name": "staging-db", "protocol": "postgres", "host": "db.staging", "labels": ["staging"]}"#
        }
        "api" => {
            r#"{"ip": "10.0.0.6", "port": 443, "name": "billing-api", "protocol": "http", "host": "api.internal", "labels": ["production"]}"#
        }
        "k8s" => {
            r#"{"ip": "10.0.0.7", "port": 6443, "name": "prod-cluster", "protocol": "k8s", "host": "k8s.internal", "labels": ["production"]}"#
        }
        "llm" => {
            r#"{"ip": "10.0.0.8", "port": 443, "name": "openai", "protocol": "llm", "host": "api.openai.com", "labels": []}"#
        }
        "cache" => {
            r#"{"ip": "10.0.0.10", "port": 6379, "name": "cache", "protocol": "redis", "host": "redis.internal", "labels": []}"#
        }
        _ => {
            r#"{"ip": "203.0.113.9", "port": 22, "name": null, "protocol": "tcp", "host": null, "labels": []}"#
        }
    }
}

pub struct Sample {
    pub name: String,
    /// Benched by `benches/policy.rs`.
    pub bench: bool,
    /// What the shipped policies decide.
    pub expect: Action,
    pub input: Value,
}

/// Every sample, in file order.
pub fn samples() -> Vec<Sample> {
    let cases = Value::from_json_str(CASES).expect("cases.json is valid JSON");
    let mut out = Vec::new();
    for case in cases.as_array().expect("cases.json is an array") {
        let text = |field: &str| {
            case[field]
                .as_string()
                .map(|s| s.to_string())
                .unwrap_or_default()
        };
        let expect = match text("expect").as_str() {
            "allow" => Action::Allow,
            "approve" => Action::Approve,
            _ => Action::Deny,
        };
        let mut input = Value::new_object();
        let map = input.as_object_mut().expect("object");
        map.insert(
            Value::from("identity"),
            Value::from_json_str(IDENTITY).expect("identity"),
        );
        map.insert(
            Value::from("target"),
            Value::from_json_str(target(&text("target"))).expect("target"),
        );
        map.insert(Value::from("request"), case["request"].clone());
        out.push(Sample {
            name: text("name"),
            bench: case["bench"] == Value::Bool(true),
            expect,
            input,
        });
    }
    out
}
