package agentguard.k8s_test

import rego.v1

import data.agentguard.testing.action
import data.agentguard.testing.decide
import data.agentguard.testing.doc
import data.agentguard.testing.target

cluster := target("prod-cluster", "k8s", ["production"])

k8s(verb, resource, namespace, name, subresource) := {
	"kind": "k8s", "verb": verb, "group": "", "resource": resource,
	"namespace": namespace, "name": name, "subresource": subresource,
}

test_delete_namespace_denied if {
	d := decide(doc(cluster, k8s("delete", "namespaces", null, "payments", null)))
	d.action == "deny"
	contains(d.reason, "deleting namespaces is not allowed (payments)")
}

test_deletecollection_namespaces_denied if {
	action(doc(cluster, k8s("deletecollection", "namespaces", null, null, null))) == "deny"
}

test_get_namespace_allowed if {
	action(doc(cluster, k8s("get", "namespaces", null, "payments", null))) == "allow"
}

test_delete_pod_allowed if {
	action(doc(cluster, k8s("delete", "pods", "default", "web-1", null))) == "allow"
}

test_reading_secrets_denied if {
	every verb in ["get", "list", "watch", "GET"] {
		d := decide(doc(cluster, k8s(verb, "secrets", "default", "db-password", null)))
		d.action == "deny"
		contains(d.reason, "reading secrets is not allowed")
	}
}

test_list_secrets_in_all_namespaces_denied if {
	action(doc(cluster, k8s("list", "secrets", null, null, null))) == "deny"
}

test_reading_configmaps_allowed if {
	action(doc(cluster, k8s("get", "configmaps", "default", "app", null))) == "allow"
}

test_pod_exec_needs_approval if {
	d := decide(doc(cluster, k8s("create", "pods", "default", "web-1", "exec")))
	d.action == "approve"
	contains(d.reason, "pods/exec into default/web-1 needs approval")
}

test_pod_attach_and_portforward_need_approval if {
	every sub in ["attach", "portforward"] {
		action(doc(cluster, k8s("create", "pods", "default", "web-1", sub))) == "approve"
	}
}

test_pod_logs_allowed if {
	action(doc(cluster, k8s("get", "pods", "default", "web-1", "log"))) == "allow"
}

test_rbac_change_needs_approval if {
	action(doc(cluster, k8s("create", "clusterrolebindings", null, "agent-admin", null))) == "approve"
}

test_rbac_read_allowed if {
	action(doc(cluster, k8s("list", "rolebindings", "default", null, null))) == "allow"
}

# The proxy's full k8s input (version, resource_request, method, path).
test_full_proxy_input_for_namespace_delete if {
	req := {
		"kind": "k8s", "verb": "delete", "group": "", "version": "v1", "resource": "namespaces",
		"subresource": null, "namespace": null, "name": "x", "resource_request": true,
		"method": "DELETE", "path": "/api/v1/namespaces/x",
	}
	d := decide(doc(cluster, req))
	d.action == "deny"
	contains(d.reason, "deleting namespaces is not allowed (x)")
}

test_discovery_allowed if {
	req := {"kind": "k8s", "verb": "get", "group": "", "version": "v1", "resource": null, "resource_request": false, "method": "GET", "path": "/api/v1"}
	action(doc(cluster, req)) == "allow"
}
