# SQL (PostgreSQL `sql` and MySQL `mysql`): the proxy parses each query
# into input.request.statements[] = {operation, operations, tables,
# tables_read, tables_written, has_where, functions, copy_program,
# copy_file}; input.request.sql is the raw text and parse_error is set when
# the parser gave up. `operations` lists every operation inside a statement
# (a data-modifying CTE `WITH d AS (DELETE …) SELECT …` is a select that
# also deletes), so rules look at all of them. Rules also look at the raw
# text, so a statement the parser could not classify is still caught.
package agentguard.sql

import rego.v1

import data.agentguard.production

is_sql if input.request.kind in {"sql", "mysql"}

statements := input.request.statements if {
	is_array(input.request.statements)
} else := []

# Schema and privilege changes, and DO blocks (arbitrary code the parser
# cannot see into): never from an agent.
forbidden_operations := {"drop", "truncate", "alter", "grant", "revoke", "do"}

# Every operation of a statement, the top-level one included.
ops(s) := {lower(op) | some op in array.concat([s.operation], object.get(s, "operations", []))}

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

deny contains sprintf("SQL that agentguard cannot parse is not allowed (%s)", [input.request.parse_error]) if {
	is_sql
	is_string(input.request.parse_error)
}

deny contains sprintf("SQL: %s is not allowed", [upper(op)]) if {
	is_sql
	some s in statements
	some op in ops(s)
	op in forbidden_operations
}

deny contains sprintf("SQL: %s without WHERE on %s", [upper(op), written(s)]) if {
	is_sql
	some s in statements
	some op in ops(s)
	op in {"delete", "update"}
	not s.has_where == true
}

deny contains "SQL: COPY ... PROGRAM runs a program on the database server" if {
	is_sql
	some s in statements
	s.copy_program == true
}

deny contains "SQL: COPY ... PROGRAM runs a program on the database server" if {
	is_sql
	contains(raw, "program")
	regex.match(`\bcopy\b[\s\S]*\bprogram\b`, raw)
}

deny contains "SQL: COPY to or from a server-side file" if {
	is_sql
	some s in statements
	s.copy_file == true
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

approve contains sprintf("SQL: %s on production target %s needs approval", [upper(op), input.target.name]) if {
	is_sql
	production
	some s in statements
	some op in ops(s)
	not op in read_operations
	not op in forbidden_operations
}

# MySQL commands that are not SQL (input.request.command; `query`,
# `stmt_prepare` and `stmt_execute` carry SQL and meet the rules above).
is_mysql if input.request.kind == "mysql"

deny contains "MySQL: replication commands (binlog dump, replica registration) are not allowed" if {
	is_mysql
	input.request.command in {"binlog_dump", "binlog_dump_gtid", "register_slave"}
}

# The server asking the agent's host for a file (LOAD DATA LOCAL INFILE).
local_file := input.request.file if {
	is_string(input.request.file)
} else := "a file"

deny contains sprintf("MySQL: LOAD DATA LOCAL INFILE (the server reading %s from the agent's host) is not allowed", [local_file]) if {
	is_mysql
	input.request.command == "local_infile"
}

deny contains "SQL: SELECT ... INTO OUTFILE / DUMPFILE writes a server-side file" if {
	is_sql
	contains(raw, "into")
	regex.match(`\binto\s+(outfile|dumpfile)\b`, raw)
}

written(s) := concat(", ", s.tables_written) if {
	is_array(s.tables_written)
	count(s.tables_written) > 0
} else := concat(", ", s.tables) if {
	is_array(s.tables)
	count(s.tables) > 0
} else := "(unknown table)"
