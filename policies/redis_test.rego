package agentguard.redis_test

import rego.v1

import data.agentguard.testing.action
import data.agentguard.testing.decide
import data.agentguard.testing.doc
import data.agentguard.testing.target

cache := target("cache", "redis", [])

redis(command, args) := {"kind": "redis", "command": command, "args": args}

test_reads_and_writes_allowed if {
	every c in ["GET", "SET", "DEL", "HGETALL", "EXPIRE"] {
		action(doc(cache, redis(c, ["k"]))) == "allow"
	}
}

test_admin_commands_denied if {
	every c in ["FLUSHALL", "flushdb", "CONFIG", "SHUTDOWN", "DEBUG", "MODULE", "REPLICAOF", "ACL"] {
		d := decide(doc(cache, redis(c, [])))
		d.action == "deny"
		contains(d.reason, "administrative command")
	}
}
