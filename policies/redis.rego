# Redis (kind redis: command, args). Administrative commands that wipe,
# reconfigure, replicate or stop the server are not for agents.
package agentguard.redis

import rego.v1

admin_commands := {
	"flushall", "flushdb", "config", "shutdown", "debug", "module", "slaveof",
	"replicaof", "acl", "failover", "cluster", "bgrewriteaof", "bgsave", "save",
	"monitor", "sync", "psync", "migrate", "restore",
}

command := lower(input.request.command) if {
	is_string(input.request.command)
} else := ""

deny contains sprintf("Redis: %s is an administrative command", [upper(command)]) if {
	input.request.kind == "redis"
	command in admin_commands
}

approve := set()
