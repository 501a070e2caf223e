# SQL (PostgreSQL `sql` and MySQL `mysql`): the proxy parses each query
# into input.request.statements[] = {operation, tables, has_where,
# functions, program, file}; input.request.sql is the raw text. Rules look
# at both, so a statement the parser could not classify is still caught by
# the raw text.
package agentguard.sql

import rego.v1

import data.agentguard.production

is_sql if input.request.kind in {"sql", "mysql"}

statements := input.request.statements if {
	is_array(input.request.statements)
} else := []

# Schema and privilege changes: never from an agent.
forbidden_operations := {"drop", "truncate", "alter", "grant", "revoke"}

# Functions that read or write the server's file system or run programs.
file_functions := {
	"pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file",
	"pg_ls_logdir", "pg_ls_waldir", "pg_ls_tmpdir", "pg_ls_archive_statusdir",
	"lo_import", "lo_export", "pg_file_write", "pg_file_rename", "pg_file_unlink",
	"load_file", "sys_exec", "sys_eval",
}

# Statements that only read (or manage the session): everything else is a
# write, including operations the parser does not know.
read_operations := {
	"select", "show", "explain", "describe", "set", "reset", "begin", "start",
	"commit", "rollback", "savepoint", "release", "prepare", "execute",
	"deallocate", "discard", "listen", "unlisten", "fetch", "close", "declare",
	"values", "table", "use",
}

raw := lower(input.request.sql) if {
	is_string(input.request.sql)
} else := ""

deny contains sprintf("SQL: %s is not allowed", [upper(s.operation)]) if {
	is_sql
	some s in statements
	s.operation in forbidden_operations
}

deny contains sprintf("SQL: %s without WHERE on %s", [upper(s.operation), tables(s)]) if {
	is_sql
	some s in statements
	s.operation in {"delete", "update"}
	not s.has_where == true
}

deny contains "SQL: COPY ... PROGRAM runs a program on the database server" if {
	is_sql
	some s in statements
	s.operation == "copy"
	s.program == true
}

deny contains "SQL: COPY ... PROGRAM runs a program on the database server" if {
	is_sql
	contains(raw, "program")
	regex.match(`\bcopy\b[\s\S]*\bprogram\b`, raw)
}

deny contains "SQL: COPY to or from a server-side file" if {
	is_sql
	some s in statements
	s.operation == "copy"
	is_string(s.file)
}

deny contains "SQL: COPY to or from a server-side file" if {
	is_sql
	contains(raw, "copy")
	regex.match(`\bcopy\b[^;]*\b(from|to)\s+'`, raw)
}

deny contains sprintf("SQL: server-side file function %s", [f]) if {
	is_sql
	some s in statements
	some f in s.functions
	lower(f) in file_functions
}

deny contains sprintf("SQL: server-side file function %s", [f]) if {
	is_sql
	some f in file_functions
	contains(raw, f)
	regex.match(sprintf(`\b%s\s*\(`, [f]), raw)
}

approve contains sprintf("SQL: %s on production target %s needs approval", [upper(s.operation), input.target.name]) if {
	is_sql
	production
	some s in statements
	not s.operation in read_operations
	not s.operation in forbidden_operations
}

tables(s) := concat(", ", s.tables) if {
	is_array(s.tables)
	count(s.tables) > 0
} else := "(unknown table)"
