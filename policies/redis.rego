# Redis (kind redis: command, subcommand, keys, args, size, script,
# function, in_transaction, db). Administrative commands that wipe,
# reconfigure, replicate, load code into or stop the server are not for
# agents; production targets also refuse keyspace scans (KEYS), bulk
# deletes of patterns, and hold scripts for a person.
package agentguard.redis

import rego.v1

import data.agentguard.production

admin_commands := {
	"flushall", "flushdb", "config", "shutdown", "debug", "module", "slaveof",
	"replicaof", "acl", "failover", "cluster", "bgrewriteaof", "bgsave", "save",
	"monitor", "sync", "psync", "migrate", "restore", "swapdb",
}

# Family commands whose other subcommands are harmless (CONFIG GET, ACL WHOAMI…).
read_subcommands := {
	"config": {"GET"},
	"acl": {"WHOAMI", "CAT", "LIST", "USERS", "GETUSER", "HELP"},
	"cluster": {"INFO", "NODES", "SLOTS", "SHARDS", "MYID", "KEYSLOT", "COUNTKEYSINSLOT", "HELP"},
	"module": {"LIST", "HELP"},
}

# CLIENT, SCRIPT and FUNCTION subcommands that act on other clients or
# wipe server-side code.
dangerous_subcommands := {
	"client": {"KILL", "PAUSE", "UNPAUSE", "NO-EVICT"},
	"script": {"FLUSH", "KILL"},
	"function": {"FLUSH", "DELETE", "RESTORE", "KILL"},
}

command := lower(input.request.command) if {
	is_string(input.request.command)
} else := ""

subcommand := upper(input.request.subcommand) if {
	is_string(input.request.subcommand)
} else := ""

redis if input.request.kind == "redis"

deny contains sprintf("Redis: %s is an administrative command", [upper(command)]) if {
	redis
	command in admin_commands
	not subcommand in object.get(read_subcommands, command, set())
}

deny contains sprintf("Redis: %s %s is not allowed", [upper(command), subcommand]) if {
	redis
	subcommand in object.get(dangerous_subcommands, command, set())
}

deny contains sprintf("Redis: KEYS on production target %s scans the whole keyspace (use SCAN)", [input.target.name]) if {
	redis
	command == "keys"
	production
}

# A script that calls an administrative command does it out of sight of
# the rules above.
deny contains sprintf("Redis: the script of %s calls %s", [upper(command), upper(called)]) if {
	redis
	is_string(input.request.script)
	some called in admin_commands
	regex.match(sprintf(`(?i)redis\.p?call\s*\(\s*['"]%s['"]`, [called]), input.request.script)
}

approve contains sprintf("Redis: %s on production target %s needs approval", [upper(command), input.target.name]) if {
	redis
	command in {"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"}
	production
}

approve contains sprintf("Redis: FUNCTION %s on production target %s needs approval", [subcommand, input.target.name]) if {
	redis
	command == "function"
	subcommand == "LOAD"
	production
}
