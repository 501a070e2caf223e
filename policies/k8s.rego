# Kubernetes API (kind k8s: verb, group, resource, namespace, name,
# subresource — derived by the proxy from the API path and method).
package agentguard.k8s

import rego.v1

is_k8s if input.request.kind == "k8s"

verb := lower(input.request.verb) if {
	is_string(input.request.verb)
} else := ""

resource := input.request.resource if {
	is_string(input.request.resource)
} else := ""

subresource := input.request.subresource if {
	is_string(input.request.subresource)
} else := ""

rbac_resources := {"roles", "rolebindings", "clusterroles", "clusterrolebindings"}

deny contains sprintf("Kubernetes: deleting namespaces is not allowed (%v)", [object_name]) if {
	is_k8s
	resource == "namespaces"
	verb in {"delete", "deletecollection"}
}

deny contains sprintf("Kubernetes: reading secrets is not allowed (%s %v)", [verb, object_name]) if {
	is_k8s
	resource == "secrets"
	verb in {"get", "list", "watch"}
}

# A shell in a pod is a shell on whatever the pod can reach.
approve contains sprintf("Kubernetes: pods/%s into %v needs approval", [subresource, object_name]) if {
	is_k8s
	resource == "pods"
	subresource in {"exec", "attach", "portforward"}
}

approve contains sprintf("Kubernetes: changing RBAC (%s %s) needs approval", [verb, resource]) if {
	is_k8s
	resource in rbac_resources
	not verb in {"get", "list", "watch"}
}

object_name := sprintf("%s/%s", [input.request.namespace, input.request.name]) if {
	is_string(input.request.namespace)
	is_string(input.request.name)
} else := input.request.name if {
	is_string(input.request.name)
} else := "(all)"
