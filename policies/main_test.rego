package agentguard.main_test

import rego.v1

import data.agentguard.testing.action
import data.agentguard.testing.decide
import data.agentguard.testing.dev
import data.agentguard.testing.doc
import data.agentguard.testing.prod
import data.agentguard.testing.unknown_target

test_connect_to_configured_target_allowed if {
	d := decide(doc(dev("postgres"), {"kind": "connect"}))
	d.action == "allow"
	d.reason == "connect to configured target dev-db"
}

test_connect_to_production_target_allowed if {
	action(doc(prod("postgres"), {"kind": "connect"})) == "allow"
}

test_connect_to_unknown_target_denied if {
	d := decide(doc(unknown_target, {"kind": "connect"}))
	d.action == "deny"
	contains(d.reason, "203.0.113.9:443 is not a configured target")
}

test_unknown_target_denied_for_every_kind if {
	every kind in ["sql", "http", "k8s", "llm", "redis", "mysql"] {
		action(doc(unknown_target, {"kind": kind})) == "deny"
	}
}

test_unknown_kind_denied if {
	d := decide(doc(dev("ssh"), {"kind": "ssh", "command": "ls"}))
	d.action == "deny"
	contains(d.reason, `no rules for request kind "ssh"`)
}

test_missing_kind_denied if {
	d := decide(doc(dev("tcp"), {}))
	d.action == "deny"
	contains(d.reason, "request has no kind")
}

test_missing_request_denied if {
	action({"target": dev("tcp")}) == "deny"
}

test_allow_masks_pii_by_default if {
	decide(doc(dev("postgres"), {"kind": "connect"})).mask == ["card", "email", "phone"]
}

test_mask_follows_settings if {
	d := decide(doc(dev("postgres"), {"kind": "connect"})) with data.settings.mask as ["email"]
	d.mask == ["email"]
}

test_mask_default_without_settings if {
	d := decide(doc(dev("postgres"), {"kind": "connect"})) with data.settings as {}
	d.mask == ["card", "email", "phone"]
}

test_deny_wins_over_approve if {
	req := {"kind": "sql", "sql": "DROP TABLE t; INSERT INTO t VALUES (1)", "statements": [
		{"operation": "drop", "tables": ["t"], "has_where": false},
		{"operation": "insert", "tables": ["t"], "has_where": false},
	]}
	d := decide(doc(prod("postgres"), req))
	d.action == "deny"
	contains(d.reason, "DROP is not allowed")
}

test_several_deny_reasons_are_joined if {
	req := {"kind": "sql", "sql": "DROP TABLE a; TRUNCATE b", "statements": [
		{"operation": "drop", "tables": ["a"]},
		{"operation": "truncate", "tables": ["b"]},
	]}
	d := decide(doc(dev("postgres"), req))
	d.reason == "SQL: DROP is not allowed; SQL: TRUNCATE is not allowed"
}

# require-injection: only agentguard's stored credential reaches the target.
injected_target := {"name": "openai", "ip": "127.0.0.1", "port": 443, "protocol": "llm", "host": "api.openai.com", "labels": ["require-injection"]}

test_require_injection_allows_the_injected_credential if {
	req := {"kind": "http", "method": "GET", "path": "/v1/models", "query": "", "headers": {}, "entities": [], "credential": {"name": "openai-key", "injected": true, "agent_sent": false}}
	action(doc(injected_target, req)) == "allow"
}

test_require_injection_denies_an_agents_own_key if {
	req := {"kind": "http", "method": "GET", "path": "/v1/models", "query": "", "headers": {}, "entities": [], "credential": {"name": "openai-key", "injected": true, "agent_sent": true}}
	d := decide(doc(injected_target, req))
	d.action == "deny"
	contains(d.reason, "the agent sent a credential of its own to openai")
}

test_require_injection_denies_a_target_without_a_credential if {
	req := {"kind": "http", "method": "GET", "path": "/v1/models", "query": "", "headers": {}, "entities": []}
	d := decide(doc(injected_target, req))
	d.action == "deny"
	contains(d.reason, "requires agentguard's stored credential")
}
