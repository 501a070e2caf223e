# LLM APIs (kind llm, or any http request the proxy scanned): the proxy
# runs its content detectors over the prompt and lists what it found in
# input.request.entities = [{"type": "aws_access_key", "count": 1, "path": "messages[1].content"}].
# A prompt that carries a secret never leaves the host. PII is masked by
# default (main.rego's mask), not denied.
package agentguard.llm

import rego.v1

secret_types := {
	"aws_access_key", "aws_secret_key", "gcp_service_account_key", "azure_storage_key",
	"github_token", "gitlab_token", "slack_token", "stripe_key", "openai_key",
	"anthropic_key", "private_key", "jwt", "password", "api_key", "secret",
	"database_url", "ssh_private_key",
}

# Detector names ending like this are secrets too, so new detectors are
# covered without editing this list.
secret_suffixes := ["_secret", "_token", "_private_key", "_api_key", "_password"]

scanned if input.request.kind in {"llm", "http"}

is_secret(t) if t in secret_types

is_secret(t) if {
	some suffix in secret_suffixes
	endswith(t, suffix)
}

deny contains sprintf("LLM: the prompt carries a secret (%s) and may not leave the host", [e.type]) if {
	scanned
	some e in input.request.entities
	is_string(e.type)
	is_secret(lower(e.type))
}

approve := set()
