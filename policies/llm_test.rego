package agentguard.llm_test

import rego.v1

import data.agentguard.testing.action
import data.agentguard.testing.decide
import data.agentguard.testing.doc
import data.agentguard.testing.target

openai := target("openai", "llm", [])

llm(entities) := {
	"kind": "llm", "provider": "openai", "model": "gpt-4o", "method": "POST",
	"host": "api.openai.com", "path": "/v1/chat/completions", "entities": entities,
}

test_prompt_without_entities_allowed if {
	action(doc(openai, llm([]))) == "allow"
}

test_prompt_without_entity_list_allowed if {
	action(doc(openai, {"kind": "llm", "model": "gpt-4o"})) == "allow"
}

test_prompt_with_pii_allowed_and_masked if {
	d := decide(doc(openai, llm([{"type": "email", "count": 2}, {"type": "phone", "count": 1}])))
	d.action == "allow"
	"email" in d.mask
}

test_prompt_with_secret_denied if {
	d := decide(doc(openai, llm([{"type": "email", "count": 1}, {"type": "aws_access_key", "count": 1, "path": "messages[1].content"}])))
	d.action == "deny"
	contains(d.reason, "carries a secret (aws_access_key)")
}

test_every_listed_secret_type_denied if {
	every t in data.agentguard.llm.secret_types {
		action(doc(openai, llm([{"type": t, "count": 1}]))) == "deny"
	}
}

test_secret_suffixes_denied if {
	every t in ["vault_token", "twilio_api_key", "custom_secret", "CI_PASSWORD"] {
		action(doc(openai, llm([{"type": t, "count": 1}]))) == "deny"
	}
}

test_secret_in_plain_http_body_denied if {
	api := target("search-api", "http", [])
	req := {"kind": "http", "method": "POST", "path": "/q", "entities": [{"type": "github_token", "count": 1}]}
	action(doc(api, req)) == "deny"
}

test_plain_http_without_entities_allowed if {
	api := target("search-api", "http", [])
	action(doc(api, {"kind": "http", "method": "POST", "path": "/q"})) == "allow"
}

test_malformed_entity_ignored if {
	action(doc(openai, llm([{"count": 1}, "aws_access_key"]))) == "allow"
}
