package agentguard.http_test

import rego.v1

import data.agentguard.testing.action
import data.agentguard.testing.decide
import data.agentguard.testing.doc
import data.agentguard.testing.target

api := target("billing-api", "http", ["production"])

staging := target("staging-api", "http", [])

http(method, path) := {"kind": "http", "method": method, "host": "api.internal", "path": path, "query": "", "headers": {}}

test_get_to_production_allowed if {
	action(doc(api, http("GET", "/v1/invoices"))) == "allow"
}

test_head_to_production_allowed if {
	action(doc(api, http("HEAD", "/v1/invoices"))) == "allow"
}

test_writes_to_production_denied if {
	every m in ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
		d := decide(doc(api, http(m, "/v1/invoices")))
		d.action == "deny"
		contains(d.reason, sprintf("%s /v1/invoices to production target billing-api", [m]))
	}
}

test_lowercase_method_is_still_a_write if {
	action(doc(api, http("post", "/v1/invoices"))) == "deny"
}

test_missing_method_denied_on_production if {
	action(doc(api, {"kind": "http", "path": "/"})) == "deny"
}

test_writes_outside_production_allowed if {
	action(doc(staging, http("POST", "/v1/invoices"))) == "allow"
}

exceptions := [{"target": "billing-api", "methods": ["post"], "path_prefix": "/v1/drafts"}]

test_write_exception_allows if {
	action(doc(api, http("POST", "/v1/drafts/42"))) == "allow" with data.settings.http.write_exceptions as exceptions
}

test_write_exception_is_limited_to_its_path if {
	action(doc(api, http("POST", "/v1/invoices"))) == "deny" with data.settings.http.write_exceptions as exceptions
}

test_write_exception_is_limited_to_its_methods if {
	action(doc(api, http("DELETE", "/v1/drafts/42"))) == "deny" with data.settings.http.write_exceptions as exceptions
}

test_write_exception_is_limited_to_its_target if {
	other := target("payments-api", "http", ["production"])
	action(doc(other, http("POST", "/v1/drafts/42"))) == "deny" with data.settings.http.write_exceptions as exceptions
}

# TLS passthrough: the proxy decides the ClientHello as kind connect with sni.
test_passthrough_sni_to_configured_target_allowed if {
	action(doc(api, {"kind": "connect", "sni": "api.internal", "alpn": ["h2"], "tls": "passthrough"})) == "allow"
}

test_passthrough_sni_to_unconfigured_target_denied if {
	unknown := {"ip": "203.0.113.9", "port": 443, "name": null, "protocol": "tcp", "host": null, "labels": []}
	action(doc(unknown, {"kind": "connect", "sni": "example.com", "tls": "passthrough"})) == "deny"
}

# The proxy's http input carries scheme, redacted headers and entities.
test_https_get_with_redacted_credentials_allowed if {
	req := object.union(http("GET", "/v1/invoices"), {"scheme": "https", "headers": {"authorization": "Bearer [redacted]"}, "entities": []})
	action(doc(api, req)) == "allow"
}

ws(message, entities) := {
	"kind": "websocket", "method": "GET", "scheme": "http", "host": "chat.internal", "path": "/ws",
	"query": "", "direction": "agent_to_server", "message": message, "size": 42, "text": "hello",
	"entities": entities,
}

test_websocket_message_allowed if {
	d := decide(doc(staging, ws("text", [])))
	d.action == "allow"
	d.reason == "websocket to configured target staging-api"
}

test_websocket_message_with_pii_allowed_and_masked if {
	d := decide(doc(staging, ws("text", [{"type": "email", "count": 1}])))
	d.action == "allow"
	"email" in d.mask
}

test_websocket_message_with_secret_denied if {
	every m in ["text", "binary"] {
		d := decide(doc(staging, ws(m, [{"type": "aws_secret_key", "count": 1, "path": "creds.key"}])))
		d.action == "deny"
		d.reason == "WebSocket: the message carries a secret (aws_secret_key) and may not leave the host"
	}
}

test_websocket_secret_suffix_denied if {
	action(doc(staging, ws("text", [{"type": "vault_token", "count": 1}]))) == "deny"
}

test_websocket_message_to_unknown_target_denied if {
	action(doc(data.agentguard.testing.unknown_target, ws("text", []))) == "deny"
}
