package agentguard.redis_test

import rego.v1

import data.agentguard.testing.action
import data.agentguard.testing.decide
import data.agentguard.testing.doc
import data.agentguard.testing.target

cache := target("cache", "redis", [])

prod_cache := target("sessions", "redis", ["production"])

redis(command, args) := {"kind": "redis", "command": command, "args": args, "keys": [], "size": 10}

family(command, sub, args) := object.union(redis(command, args), {"subcommand": sub})

script(command, body) := object.union(redis(command, [body, "0"]), {"script": body})

test_reads_and_writes_allowed if {
	every c in ["GET", "SET", "DEL", "HGETALL", "EXPIRE", "SCAN", "MULTI", "EXEC", "SUBSCRIBE"] {
		action(doc(cache, redis(c, ["k"]))) == "allow"
		action(doc(prod_cache, redis(c, ["k"]))) == "allow"
	}
}

test_admin_commands_denied if {
	every c in ["FLUSHALL", "flushdb", "SHUTDOWN", "DEBUG", "REPLICAOF", "MONITOR", "SWAPDB"] {
		d := decide(doc(cache, redis(c, [])))
		d.action == "deny"
		contains(d.reason, "administrative command")
	}
}

test_admin_families_denied_but_their_reads_allowed if {
	d := decide(doc(cache, family("CONFIG", "SET", ["SET", "dir", "/tmp"])))
	d.action == "deny"
	contains(d.reason, "CONFIG is an administrative command")
	action(doc(cache, family("MODULE", "LOAD", ["LOAD", "/tmp/x.so"]))) == "deny"
	action(doc(cache, family("ACL", "SETUSER", ["SETUSER", "bob"]))) == "deny"
	action(doc(cache, family("CONFIG", "GET", ["GET", "maxmemory"]))) == "allow"
	action(doc(cache, family("ACL", "WHOAMI", ["WHOAMI"]))) == "allow"
}

test_dangerous_subcommands_denied if {
	every c in [["CLIENT", "KILL"], ["CLIENT", "PAUSE"], ["SCRIPT", "FLUSH"], ["FUNCTION", "FLUSH"]] {
		d := decide(doc(cache, family(c[0], c[1], [c[1]])))
		d.action == "deny"
		contains(d.reason, sprintf("%s %s is not allowed", c))
	}
	action(doc(cache, family("CLIENT", "SETNAME", ["SETNAME", "agent"]))) == "allow"
	action(doc(cache, family("CLIENT", "ID", ["ID"]))) == "allow"
}

test_keys_denied_on_production_only if {
	d := decide(doc(prod_cache, redis("KEYS", ["*"])))
	d.action == "deny"
	contains(d.reason, "KEYS on production target sessions")
	action(doc(cache, redis("KEYS", ["*"]))) == "allow"
}

test_scripts_calling_admin_commands_denied if {
	d := decide(doc(cache, script("EVAL", "return redis.call('FLUSHALL')")))
	d.action == "deny"
	contains(d.reason, "the script of EVAL calls FLUSHALL")
	action(doc(cache, script("EVAL", "redis.pcall( \"config\", 'set', 'dir', '/')"))) == "deny"
	action(doc(cache, script("EVAL", "return redis.call('GET', KEYS[1])"))) == "allow"
}

test_scripts_held_on_production if {
	d := decide(doc(prod_cache, script("EVAL", "return redis.call('GET', KEYS[1])")))
	d.action == "approve"
	contains(d.reason, "EVAL on production target sessions needs approval")
	action(doc(prod_cache, redis("FCALL", ["fn", "0"]))) == "approve"
}
