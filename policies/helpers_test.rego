# Input builders shared by the *_test.rego files.
package agentguard.testing

import rego.v1

identity := {
	"uid": 1000, "gid": 1000, "user": "agent", "pid": 4242, "comm": "python3",
	"exe": "/usr/bin/python3", "cmdline": ["python3", "agent.py"],
	"cgroup": "/agentguard/coder", "cgroup_id": 1234, "agent": "coder", "unit": null,
}

target(name, protocol, labels) := {
	"ip": "10.0.0.5", "port": 5432, "name": name, "protocol": protocol,
	"host": "db.internal", "labels": labels,
}

unknown_target := {
	"ip": "203.0.113.9", "port": 443, "name": null, "protocol": "tcp",
	"host": null, "labels": [],
}

prod(protocol) := target("prod-db", protocol, ["production"])

dev(protocol) := target("dev-db", protocol, [])

doc(tgt, req) := {"identity": identity, "target": tgt, "request": req}

decide(doc) := d if {
	d := data.agentguard.decision with input as doc
}

action(doc) := decide(doc).action
