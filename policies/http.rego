# HTTP APIs (kind http: method, host, path, query, headers, body). Targets
# labelled "production" are read-only for agents: GET and HEAD pass, any
# other method is denied unless data.settings.http.write_exceptions lists
# it: [{"target": "billing-api", "methods": ["POST"], "path_prefix": "/v1/drafts"}].
package agentguard.http

import rego.v1

import data.agentguard.llm
import data.agentguard.production

read_methods := {"GET", "HEAD"}

method := upper(input.request.method) if {
	is_string(input.request.method)
} else := ""

path := input.request.path if {
	is_string(input.request.path)
} else := "/"

deny contains sprintf("HTTP: %s %s to production target %s is not allowed (only GET and HEAD)", [method, path, input.target.name]) if {
	input.request.kind == "http"
	production
	not method in read_methods
	not excepted
}

excepted if {
	some e in data.settings.http.write_exceptions
	e.target == input.target.name
	method in {upper(m) | some m in e.methods}
	startswith(path, e.path_prefix)
}

# WebSocket messages the agent sends (kind websocket: the upgrade's method,
# host and path, direction, message "text" or "binary", size, text, body
# when the text is JSON, entities found over the whole message). A message
# that carries a secret is not forwarded: the agent gets close 1008 with
# the reason. The rest pass; what the server sends back is masked.
deny contains sprintf("WebSocket: the message carries a secret (%s) and may not leave the host", [e.type]) if {
	input.request.kind == "websocket"
	some e in input.request.entities
	is_string(e.type)
	llm.is_secret(lower(e.type))
}

# Nothing needs approval over HTTP yet; the set exists so main.rego can
# collect from every area the same way.
approve := set()
