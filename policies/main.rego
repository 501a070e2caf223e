# The decision every connection and request gets: data.agentguard.decision.
#
# Each area (sql.rego, http.rego and its websocket rules, k8s.rego, llm.rego,
# redis.rego) adds reasons to its own `deny` and `approve` sets; this file assembles them.
# Any deny reason wins over approval; no reason at all allows. Whatever is
# not covered here is denied: a target outside the config, a request kind
# without rules, an input without a kind.
package agentguard

import rego.v1

# Request kinds these policies have rules for.
known_kinds := {"connect", "sql", "mysql", "http", "k8s", "redis", "llm", "websocket"}

# PII detectors applied to every response unless settings say otherwise
# (data.json: settings.mask).
default mask := ["card", "email", "phone"]

mask := data.settings.mask if is_array(data.settings.mask)

default decision := {
	"action": "deny",
	"reason": "agentguard: no rule allowed this request (default deny)",
	"mask": [],
}

decision := {"action": "deny", "reason": concat("; ", deny), "mask": mask} if {
	count(deny) > 0
}

decision := {"action": "approve", "reason": concat("; ", approve), "mask": mask} if {
	count(deny) == 0
	count(approve) > 0
}

decision := {"action": "allow", "reason": allow_reason, "mask": mask} if {
	count(deny) == 0
	count(approve) == 0
}

allow_reason := sprintf("%s to configured target %s", [input.request.kind, input.target.name])

# Reasons from every area.
deny contains reason if some reason in target_deny

deny contains reason if some reason in data.agentguard.sql.deny

deny contains reason if some reason in data.agentguard.http.deny

deny contains reason if some reason in data.agentguard.k8s.deny

deny contains reason if some reason in data.agentguard.llm.deny

deny contains reason if some reason in data.agentguard.redis.deny

approve contains reason if some reason in data.agentguard.sql.approve

approve contains reason if some reason in data.agentguard.http.approve

approve contains reason if some reason in data.agentguard.k8s.approve

approve contains reason if some reason in data.agentguard.llm.approve

approve contains reason if some reason in data.agentguard.redis.approve

# Agents reach only the targets named in the config ([[targets]]): the
# proxy sets input.target.name for those and null for anything else.
target_deny contains sprintf("%v:%v is not a configured target", [input.target.ip, input.target.port]) if {
	not is_string(input.target.name)
}

# A target labelled require-injection is reached only with the credential
# agentguard holds ([[credentials]], docs/credentials.md): an agent that
# brings a key of its own has one it should not have.
target_deny contains sprintf("the agent sent a credential of its own to %s, which only agentguard's stored credential may reach (label require-injection)", [input.target.name]) if {
	"require-injection" in input.target.labels
	input.request.credential.agent_sent == true
}

target_deny contains sprintf("%s requires agentguard's stored credential (label require-injection) and none is configured for it", [input.target.name]) if {
	"require-injection" in input.target.labels
	input.request.kind in {"http", "llm", "sql", "mysql"}
	not input.request.credential.injected
}

target_deny contains "request has no kind" if {
	not is_string(input.request.kind)
}

target_deny contains sprintf("no rules for request kind %q", [input.request.kind]) if {
	is_string(input.request.kind)
	not input.request.kind in known_kinds
}

# Helpers for the areas.
production if "production" in input.target.labels
